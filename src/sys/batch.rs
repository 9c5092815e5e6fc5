//! Batched datagram I/O: `recvmmsg`/`sendmmsg` on Linux, a `recvmsg`/`sendto` loop on
//! other Unix systems, behind one interface.
//!
//! Both batches are built once and reused: reading or sending a datagram allocates
//! nothing. The kernel's headers point into the batch's own vectors, whose heap blocks do
//! not move while the batch lives (they are only replaced, with every pointer rebuilt, by
//! [`RecvBatch::reserve`]); the pointers are refreshed before every call anyway, which
//! costs a few stores per datagram and keeps the invariants local.

use std::io;
use std::mem;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use super::unix::{sockaddr_to_std, std_to_sockaddr};
use imp::Mmsg;

/// A reusable set of receive buffers (`capacity` slots of `slot` bytes each), filled by one
/// `recvmmsg` call. Empty by default: [`reserve`](Self::reserve) gives it room.
#[derive(Default)]
pub struct RecvBatch {
    bufs: Vec<u8>,
    slot: usize,
    /// The `iov_len` every header carries now.
    max: usize,
    /// Headers the last call handed the kernel, whose `msg_namelen` it overwrote.
    used: usize,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<Mmsg>,
}

/// One datagram of a [`RecvBatch`].
#[derive(Debug)]
pub struct Datagram<'a> {
    /// The bytes received (cut short when `truncated`).
    pub data: &'a [u8],
    /// The datagram was longer than the slot; `data` is cut short.
    pub truncated: bool,
    /// The sender, or `None` for an address that is neither IPv4 nor IPv6.
    pub from: Option<SocketAddr>,
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.capacity())
            .field("slot", &self.slot)
            .finish()
    }
}

/// The room for a sender's address.
const NAME_LEN: libc::socklen_t = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;

/// An all-zero value of a plain C struct.
fn zeroed<T: Copy>() -> T {
    // SAFETY: only called with libc's plain-old-data structs (sockaddr_storage, iovec,
    // mmsghdr), for which all-zero bytes are a valid value (null pointers, zero lengths).
    unsafe { mem::zeroed() }
}

impl RecvBatch {
    /// How many datagrams one call can read.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Grows the batch to at least `capacity` slots of at least `slot` bytes (never
    /// shrinks). Allocates only when it grows.
    pub fn reserve(&mut self, capacity: usize, slot: usize) {
        if capacity <= self.capacity() && slot <= self.slot {
            return;
        }
        let capacity = capacity.max(self.capacity());
        self.slot = slot.max(self.slot);
        self.bufs = vec![0; capacity * self.slot];
        self.names = vec![zeroed(); capacity];
        self.iovs = vec![zeroed(); capacity];
        self.hdrs = vec![zeroed(); capacity];
        // Every header points at its own name and iovec, and every iovec at its own slot,
        // for as long as these vectors live; `recv` only resets what the kernel changed.
        let base = self.bufs.as_mut_ptr();
        for i in 0..capacity {
            self.iovs[i] = libc::iovec {
                // SAFETY: i < capacity, so slot i lies inside `bufs` (capacity * slot bytes).
                iov_base: unsafe { base.add(i * self.slot) }.cast(),
                iov_len: self.slot,
            };
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = NAME_LEN;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
        }
        self.max = self.slot;
        self.used = 0;
    }

    /// Reads up to `count` datagrams (at most the capacity) of up to `max` bytes each (at
    /// most the slot size) without blocking; returns how many were read. `EINTR` is
    /// retried; `EAGAIN` and every other error are returned as they are.
    pub fn recv(&mut self, fd: &impl AsRawFd, count: usize, max: usize) -> io::Result<usize> {
        let count = count.min(self.capacity());
        let max = max.min(self.slot);
        if max != self.max {
            for iov in &mut self.iovs {
                iov.iov_len = max;
            }
            self.max = max;
        }
        for hdr in &mut self.hdrs[..self.used] {
            hdr.msg_hdr.msg_namelen = NAME_LEN;
        }
        self.used = 0;
        let got = imp::recv(fd.as_raw_fd(), &mut self.hdrs[..count])?;
        self.used = got;
        Ok(got)
    }

    /// Datagram `i` of the last [`recv`](Self::recv) (`i` below what it returned).
    #[inline]
    pub fn get(&self, i: usize) -> Datagram<'_> {
        let start = i * self.slot;
        datagram(
            &self.hdrs[i],
            &self.names[i],
            &self.bufs[start..start + self.slot],
        )
    }

    /// The datagrams of the last [`recv`](Self::recv), in order: [`get`](Self::get) for
    /// each, without an index to check per datagram.
    #[inline]
    pub fn datagrams(&self) -> impl Iterator<Item = Datagram<'_>> {
        let used = self.used;
        self.hdrs[..used]
            .iter()
            .zip(&self.names[..used])
            .zip(self.bufs.chunks_exact(self.slot.max(1)))
            .map(|((m, name), buf)| datagram(m, name, buf))
    }
}

/// The datagram the kernel described in `m`, received into `buf` (its slot) from `name`.
#[inline(always)]
fn datagram<'a>(m: &Mmsg, name: &libc::sockaddr_storage, buf: &'a [u8]) -> Datagram<'a> {
    Datagram {
        data: &buf[..(m.msg_len as usize).min(buf.len())],
        truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        // SAFETY: the kernel wrote `msg_namelen` bytes of the sender's address into `name`
        // (zeroed at creation, so the rest is initialised).
        from: unsafe { sockaddr_to_std(name, m.msg_hdr.msg_namelen) },
    }
}

/// Datagrams gathered to be sent together: their bytes one after another in one buffer,
/// and where each goes. Cleared, not freed, after each send.
pub struct SendBatch {
    data: Vec<u8>,
    /// (end offset in `data`, destination) per datagram.
    entries: Vec<(usize, SocketAddr)>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<Mmsg>,
}

impl std::fmt::Debug for SendBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SendBatch")
            .field("datagrams", &self.entries.len())
            .field("bytes", &self.data.len())
            .finish()
    }
}

impl SendBatch {
    /// A batch with room for `capacity` datagrams of `bytes` bytes in all before it grows.
    pub fn with_capacity(capacity: usize, bytes: usize) -> SendBatch {
        SendBatch {
            data: Vec::with_capacity(bytes),
            entries: Vec::with_capacity(capacity),
            names: vec![zeroed(); capacity],
            iovs: vec![zeroed(); capacity],
            hdrs: vec![zeroed(); capacity],
        }
    }

    /// How many datagrams one send hands the kernel.
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Datagrams waiting.
    #[inline]
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// Whether no datagram is waiting.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Adds a datagram (a copy of `data`) for `addr`.
    #[inline]
    pub fn push(&mut self, data: &[u8], addr: SocketAddr) {
        self.data.extend_from_slice(data);
        self.entries.push((self.data.len(), addr));
    }

    /// Datagram `i`: its bytes and destination.
    pub fn get(&self, i: usize) -> (&[u8], SocketAddr) {
        let start = if i == 0 { 0 } else { self.entries[i - 1].0 };
        let (end, addr) = self.entries[i];
        (&self.data[start..end], addr)
    }

    /// The bytes of datagrams `from..to`.
    pub fn bytes(&self, from: usize, to: usize) -> usize {
        if from >= to {
            return 0;
        }
        let start = if from == 0 {
            0
        } else {
            self.entries[from - 1].0
        };
        self.entries[to - 1].0 - start
    }

    /// Forgets every datagram, keeping the memory.
    pub fn clear(&mut self) {
        self.data.clear();
        self.entries.clear();
    }

    /// Sends datagrams `from..` (at most the capacity at once) without blocking; returns
    /// how many the kernel took, or the error met by datagram `from` (`EINTR` retried).
    /// With `connected`, no destination is given (the socket's peer is used).
    pub fn send(&mut self, fd: &impl AsRawFd, from: usize, connected: bool) -> io::Result<usize> {
        let count = (self.entries.len() - from).min(self.capacity());
        let base = self.data.as_mut_ptr();
        for k in 0..count {
            let i = from + k;
            let start = if i == 0 { 0 } else { self.entries[i - 1].0 };
            let (end, addr) = self.entries[i];
            self.iovs[k] = libc::iovec {
                // SAFETY: start <= end <= data.len(), so the offset stays inside `data`.
                iov_base: unsafe { base.add(start) }.cast(),
                iov_len: end - start,
            };
            if connected {
                let hdr = &mut self.hdrs[k].msg_hdr;
                hdr.msg_name = std::ptr::null_mut();
                hdr.msg_namelen = 0;
            } else if k > 0 && self.entries[i - 1].1 == addr {
                // The same destination as the one before (the common case of replies to
                // one client): share its converted address.
                let (name, len) = (
                    self.hdrs[k - 1].msg_hdr.msg_name,
                    self.hdrs[k - 1].msg_hdr.msg_namelen,
                );
                let hdr = &mut self.hdrs[k].msg_hdr;
                hdr.msg_name = name;
                hdr.msg_namelen = len;
            } else {
                let hdr = &mut self.hdrs[k].msg_hdr;
                hdr.msg_namelen = std_to_sockaddr(&addr, &mut self.names[k]);
                hdr.msg_name = (&mut self.names[k] as *mut libc::sockaddr_storage).cast();
            }
            let hdr = &mut self.hdrs[k].msg_hdr;
            hdr.msg_iov = &mut self.iovs[k];
            hdr.msg_iovlen = 1;
        }
        imp::send(fd.as_raw_fd(), &mut self.hdrs[..count])
    }
}

#[cfg(target_os = "linux")]
mod imp {
    use std::io;
    use std::os::fd::RawFd;

    /// The kernel's `struct mmsghdr`.
    pub(super) type Mmsg = libc::mmsghdr;

    /// `recvmmsg` into the prepared headers.
    pub(super) fn recv(fd: RawFd, hdrs: &mut [Mmsg]) -> io::Result<usize> {
        loop {
            // SAFETY: every header points at a live name buffer and one live iovec over a
            // slot of the batch's buffer, with their lengths; `hdrs.len()` headers exist.
            let n = unsafe {
                libc::recvmmsg(
                    fd,
                    hdrs.as_mut_ptr(),
                    hdrs.len() as libc::c_uint,
                    0,
                    std::ptr::null_mut(),
                )
            };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }

    /// `sendmmsg` of the prepared headers.
    pub(super) fn send(fd: RawFd, hdrs: &mut [Mmsg]) -> io::Result<usize> {
        loop {
            // SAFETY: every header points at a live iovec over the batch's data (and a
            // live address or none), with their lengths; `hdrs.len()` headers exist.
            let n = unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, 0) };
            if n >= 0 {
                return Ok(n as usize);
            }
            let err = io::Error::last_os_error();
            if err.kind() != io::ErrorKind::Interrupted {
                return Err(err);
            }
        }
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    //! One `recvmsg`/`sendmsg` per datagram, with the semantics of the Linux calls: the
    //! count done so far, or the error if the first one failed.

    use std::io;
    use std::os::fd::RawFd;

    /// Linux's `struct mmsghdr`, for the same preparation code.
    #[repr(C)]
    #[derive(Clone, Copy)]
    pub(super) struct Mmsg {
        pub(super) msg_hdr: libc::msghdr,
        pub(super) msg_len: libc::c_uint,
    }

    fn one(ret: isize) -> io::Result<usize> {
        if ret >= 0 {
            Ok(ret as usize)
        } else {
            Err(io::Error::last_os_error())
        }
    }

    fn each(
        hdrs: &mut [Mmsg],
        mut call: impl FnMut(&mut libc::msghdr) -> isize,
    ) -> io::Result<usize> {
        let mut done = 0;
        while done < hdrs.len() {
            match one(call(&mut hdrs[done].msg_hdr)) {
                Ok(n) => {
                    hdrs[done].msg_len = n as libc::c_uint;
                    done += 1;
                }
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) if done == 0 => return Err(e),
                Err(_) => break,
            }
        }
        Ok(done)
    }

    pub(super) fn recv(fd: RawFd, hdrs: &mut [Mmsg]) -> io::Result<usize> {
        // SAFETY: each header is prepared as for recvmmsg (see RecvBatch::recv).
        each(hdrs, |h| unsafe { libc::recvmsg(fd, h, 0) })
    }

    pub(super) fn send(fd: RawFd, hdrs: &mut [Mmsg]) -> io::Result<usize> {
        // SAFETY: each header is prepared as for sendmmsg (see SendBatch::send).
        each(hdrs, |h| unsafe { libc::sendmsg(fd, h, 0) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::UdpSocket;

    fn pair() -> (UdpSocket, UdpSocket) {
        let rx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        let tx = UdpSocket::bind("127.0.0.1:0").expect("bind");
        rx.set_nonblocking(true).expect("nonblocking");
        (rx, tx)
    }

    #[test]
    fn reads_a_batch_with_senders_and_truncation() {
        let (rx, tx) = pair();
        let to = rx.local_addr().expect("addr");
        for payload in [&[7u8; 100][..], &[8u8; 10], b""] {
            tx.send_to(payload, to).expect("send");
        }
        let mut ring = RecvBatch::default();
        ring.reserve(4, 64);
        assert_eq!(ring.recv(&rx, 4, 50).expect("recv"), 3);
        let got: Vec<(usize, bool, Option<SocketAddr>)> = (0..3)
            .map(|i| ring.get(i))
            .map(|d| (d.data.len(), d.truncated, d.from))
            .collect();
        let from = Some(tx.local_addr().expect("addr"));
        assert_eq!(got, [(50, true, from), (10, false, from), (0, false, from)]);
        assert_eq!(ring.get(1).data, &[8u8; 10]);
        let iterated: Vec<(&[u8], bool, Option<SocketAddr>)> = ring
            .datagrams()
            .map(|d| (d.data, d.truncated, d.from))
            .collect();
        let indexed: Vec<(&[u8], bool, Option<SocketAddr>)> = (0..3)
            .map(|i| ring.get(i))
            .map(|d| (d.data, d.truncated, d.from))
            .collect();
        assert_eq!(iterated, indexed);
        let err = ring.recv(&rx, 4, 50).expect_err("drained");
        assert_eq!(err.kind(), io::ErrorKind::WouldBlock);
        assert_eq!(
            ring.datagrams().count(),
            0,
            "a failed call leaves no datagrams"
        );
    }

    #[test]
    fn sends_a_batch_in_order_to_each_destination() {
        let (a, tx) = pair();
        let (b, _) = pair();
        let mut out = SendBatch::with_capacity(2, 16);
        out.push(b"one", a.local_addr().expect("addr"));
        out.push(b"", b.local_addr().expect("addr"));
        out.push(b"three", a.local_addr().expect("addr"));
        // Capacity 2: the first call takes two, the next the rest.
        assert_eq!(out.send(&tx, 0, false).expect("send"), 2);
        assert_eq!(out.send(&tx, 2, false).expect("send"), 1);
        let mut ring = RecvBatch::default();
        ring.reserve(4, 16);
        assert_eq!(ring.recv(&a, 4, 16).expect("recv"), 2);
        assert_eq!(
            (ring.get(0).data, ring.get(1).data),
            (&b"one"[..], &b"three"[..])
        );
        assert_eq!(ring.recv(&b, 4, 16).expect("recv"), 1);
        assert_eq!(ring.get(0).data, b"");
        out.clear();
        assert_eq!(out.len(), 0);
    }

    #[test]
    fn converts_addresses_both_ways() {
        for text in ["127.0.0.1:9", "[::1]:65535", "[fe80::1%3]:7"] {
            let addr: SocketAddr = text.parse().expect("addr");
            let mut storage = zeroed();
            let len = std_to_sockaddr(&addr, &mut storage);
            // SAFETY: std_to_sockaddr wrote `len` bytes of address.
            assert_eq!(unsafe { sockaddr_to_std(&storage, len) }, Some(addr));
        }
    }
}
