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

use super::cmsg::{ControlMessages, ControlSpace, ControlWriter, SEND_CONTROL_WORDS, SendMeta};
use super::platform::{self as imp, Mmsg};
use super::unix::{sockaddr_to_std, std_to_sockaddr};

/// A reusable set of receive buffers, filled by one `recvmmsg` call: one buffer cut into
/// slots of the size each call asks for, so that it holds `capacity` datagrams of `slot`
/// bytes for the largest such product asked for, not for the largest capacity times the
/// largest slot. Empty by default: [`reserve`](Self::reserve) gives it room.
#[derive(Default)]
pub struct RecvBatch {
    bufs: Vec<u8>,
    /// The slot size the iovecs are laid out for now (each iovec's `iov_len`, and the
    /// stride between them); 0 when they must be laid out again.
    max: usize,
    /// Headers the last call handed the kernel, whose `msg_namelen` it overwrote.
    used: usize,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<Mmsg>,
    /// Per header: room for the control messages the kernel attaches, `control_words`
    /// words each (as many as the options on need, see [`ControlSpace`]; 8-byte words, so
    /// that each header's room is aligned for a `cmsghdr`).
    controls: Vec<u64>,
    control_words: usize,
    /// Reads of the last call whose control messages the kernel cut short (`MSG_CTRUNC`).
    control_truncated: usize,
    /// The drop count an in-memory socket attached to the last datagram it filled in
    /// (see [`fill`](Self::fill)); the kernel's comes in the control messages.
    filled_drops: Option<u32>,
}

/// One datagram [`RecvBatch::fill`] copies in: its sender, its bytes, the drop count the
/// socket had when it was queued, and the address it was sent to, if the socket tells it.
#[derive(Debug, Clone, Copy)]
pub struct Filled<'d> {
    pub from: SocketAddr,
    pub data: &'d [u8],
    pub drops: u32,
    pub destination: Option<std::net::IpAddr>,
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
    /// The datagram's whole length as sent (on Linux; elsewhere the length of `data`).
    /// For a coalesced read (receive offload), the length of all its datagrams together.
    pub len: usize,
    /// The control messages the kernel attached (none if it wrote past the room).
    pub control: &'a [u8],
}

impl std::fmt::Debug for RecvBatch {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RecvBatch")
            .field("capacity", &self.capacity())
            .field("bytes", &self.bufs.len())
            .finish()
    }
}

/// The room for a sender's address.
const NAME_LEN: libc::socklen_t = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;

/// An all-zero value of a plain C struct.
fn zeroed<T: Copy>() -> T {
    // SAFETY: only called with libc's plain-old-data structs (sockaddr_storage, iovec,
    // mmsghdr), for which all-zero bytes are a
    // valid value (null pointers, zero lengths).
    unsafe { mem::zeroed() }
}

impl RecvBatch {
    /// How many datagrams one call can read at most (fewer of a slot size larger than
    /// what [`reserve`](Self::reserve) was given with that many).
    pub fn capacity(&self) -> usize {
        self.hdrs.len()
    }

    /// Grows the batch to read at least `capacity` datagrams of up to `slot` bytes in one
    /// call (never shrinks). Allocates only when it grows.
    pub fn reserve(&mut self, capacity: usize, slot: usize) {
        let bytes = capacity.saturating_mul(slot);
        if bytes > self.bufs.len() {
            self.bufs = vec![0; bytes];
            // The iovecs pointed into the old buffer.
            self.max = 0;
        }
        self.grow(capacity, self.control_words);
    }

    /// Grows each datagram's room for control messages to what `control` names (never
    /// shrinks). Allocates only when it grows.
    pub fn reserve_control(&mut self, control: ControlSpace) {
        self.grow(self.capacity(), control.bytes().div_ceil(8));
    }

    fn grow(&mut self, capacity: usize, words: usize) {
        let words = words.max(1);
        if capacity <= self.capacity() && words <= self.control_words {
            return;
        }
        let capacity = capacity.max(self.capacity());
        self.control_words = words.max(self.control_words);
        self.names = vec![zeroed(); capacity];
        self.iovs = vec![zeroed(); capacity];
        self.hdrs = vec![zeroed(); capacity];
        self.controls = vec![0; capacity * self.control_words];
        let room = self.control_room();
        // Every header points at its own name, iovec and control room for as long as these
        // vectors live; `recv` lays the iovecs out over the buffer and only resets what
        // the kernel changed.
        for i in 0..capacity {
            let hdr = &mut self.hdrs[i].msg_hdr;
            hdr.msg_name = (&mut self.names[i] as *mut libc::sockaddr_storage).cast();
            hdr.msg_namelen = NAME_LEN;
            hdr.msg_iov = &mut self.iovs[i];
            hdr.msg_iovlen = 1;
            hdr.msg_control = self.controls[i * self.control_words..].as_mut_ptr().cast();
            hdr.msg_controllen = room as _;
        }
        self.max = 0;
        self.used = 0;
    }

    /// The bytes of control room each header has.
    fn control_room(&self) -> usize {
        self.control_words * 8
    }

    /// The control bytes the kernel wrote for header `i` (none if it wrote more than the
    /// room: a length the walk could not trust).
    #[inline(always)]
    fn control_of(&self, i: usize) -> &[u8] {
        let words = &self.controls[i * self.control_words..(i + 1) * self.control_words];
        control_bytes(words, &self.hdrs[i])
    }

    /// Reads up to `count` datagrams (at most the capacity, and at most as many slots of
    /// `max` bytes as the buffer holds) of up to `max` bytes each without blocking;
    /// returns how many were read. `EINTR` is retried; `EAGAIN` and every other error are
    /// returned as they are.
    pub fn recv(&mut self, fd: &impl AsRawFd, count: usize, max: usize) -> io::Result<usize> {
        let count = self.lay_out(count, max);
        self.used = 0;
        self.filled_drops = None;
        self.control_truncated = 0;
        let got = imp::recv_mmsg(fd.as_raw_fd(), &mut self.hdrs[..count])?;
        self.used = got;
        // One pass over the flags for the whole call (four headers a step); counted only
        // if any was cut.
        let mut four = self.hdrs[..got].chunks_exact(4);
        let mut flags = 0;
        for h in &mut four {
            flags |= h[0].msg_hdr.msg_flags
                | h[1].msg_hdr.msg_flags
                | h[2].msg_hdr.msg_flags
                | h[3].msg_hdr.msg_flags;
        }
        for h in four.remainder() {
            flags |= h.msg_hdr.msg_flags;
        }
        self.control_truncated = if flags & libc::MSG_CTRUNC != 0 {
            self.hdrs[..got]
                .iter()
                .filter(|h| h.msg_hdr.msg_flags & libc::MSG_CTRUNC != 0)
                .count()
        } else {
            0
        };
        Ok(got)
    }

    /// Lays the iovecs out as consecutive slots of `max` bytes (if they are not already)
    /// and resets what the last call changed; returns how many datagrams one call may read.
    fn lay_out(&mut self, count: usize, max: usize) -> usize {
        let max = max.max(1);
        let room = self.bufs.len() / max;
        let count = count.min(self.capacity()).min(room);
        if max != self.max {
            let base = self.bufs.as_mut_ptr();
            for (i, iov) in self.iovs.iter_mut().enumerate().take(room) {
                *iov = libc::iovec {
                    // SAFETY: i < room = bufs.len() / max, so slot i (i * max .. (i + 1) *
                    // max) lies inside `bufs`.
                    iov_base: unsafe { base.add(i * max) }.cast(),
                    iov_len: max,
                };
            }
            self.max = max;
        }
        let room = self.control_room();
        for hdr in &mut self.hdrs[..self.used] {
            hdr.msg_hdr.msg_namelen = NAME_LEN;
            hdr.msg_hdr.msg_controllen = room as _;
        }
        count
    }

    /// Fills the batch as a read of up to `count` datagrams of up to `max` bytes would,
    /// from `next` instead of a socket (the in-memory socket of [`crate::testing`]): each
    /// datagram `next` yields is copied in, cut to `max` bytes and marked truncated if
    /// longer, with its address message (as `IP_PKTINFO` writes it, on interface 1) where
    /// it names a destination and the room holds it. Returns how many were filled in.
    pub fn fill<'d>(
        &mut self,
        count: usize,
        max: usize,
        mut next: impl FnMut() -> Option<Filled<'d>>,
    ) -> usize {
        let count = self.lay_out(count, max);
        let slot = self.max;
        self.used = 0;
        self.filled_drops = None;
        self.control_truncated = 0;
        while self.used < count {
            let Some(Filled {
                from,
                data,
                drops,
                destination,
            }) = next()
            else {
                break;
            };
            let i = self.used;
            let kept = data.len().min(slot);
            self.bufs[i * slot..i * slot + kept].copy_from_slice(&data[..kept]);
            let hdr = &mut self.hdrs[i];
            hdr.msg_hdr.msg_namelen = std_to_sockaddr(&from, &mut self.names[i]);
            hdr.msg_hdr.msg_flags = if data.len() > slot {
                libc::MSG_TRUNC
            } else {
                0
            };
            hdr.msg_hdr.msg_controllen = 0;
            if let Some(destination) = destination {
                let words = self.control_words;
                let room = &mut self.controls[i * words..(i + 1) * words];
                let mut w = ControlWriter::new(room);
                if imp::write_arrival(&mut w, destination) {
                    hdr.msg_hdr.msg_controllen = w.len() as _;
                }
            }
            hdr.msg_len = data.len() as _;
            // As the kernel does, a count is attached only once something was dropped.
            self.filled_drops = (drops != 0).then_some(drops);
            self.used += 1;
        }
        self.used
    }

    /// Datagram `i` of the last [`recv`](Self::recv) (`i` below what it returned).
    #[inline]
    pub fn get(&self, i: usize) -> Datagram<'_> {
        let start = i * self.max;
        datagram(
            &self.hdrs[i],
            &self.names[i],
            &self.bufs[start..start + self.max],
            self.control_of(i),
        )
    }

    /// How many reads of the last [`recv`](Self::recv) had more control messages than
    /// their room held (`MSG_CTRUNC`): counted once per call, so that the path of each
    /// datagram need not look.
    pub fn control_truncated_count(&self) -> usize {
        self.control_truncated
    }

    /// Whether the kernel had more control messages for read `i` of the last
    /// [`recv`](Self::recv) than its room held, and dropped the rest (`MSG_CTRUNC`).
    pub fn control_truncated(&self, i: usize) -> bool {
        i < self.used && self.hdrs[i].msg_hdr.msg_flags & libc::MSG_CTRUNC != 0
    }

    /// The segment size of read `i` of the last [`recv`](Self::recv) if the kernel
    /// coalesced it (receive offload, `UDP_GRO`): its data is then several datagrams of
    /// the sender's, each of this size but the last, which may be shorter. `None` for a
    /// read of one datagram (or `i` past the last read).
    pub fn segment_size(&self, i: usize) -> Option<usize> {
        if !imp::RECEIVE_OFFLOAD || i >= self.used {
            return None;
        }
        ControlMessages::new(self.control_of(i))
            .find(|m| m.level == libc::IPPROTO_UDP && m.kind == imp::UDP_GRO)
            .and_then(|m| m.u32())
            .map(|size| size as usize)
            .filter(|&size| size > 0)
    }

    /// The datagrams of the last [`recv`](Self::recv), in order: [`get`](Self::get) for
    /// each, without an index to check per datagram.
    #[cfg(any(test, feature = "bench-support"))]
    #[inline]
    pub fn datagrams(&self) -> impl Iterator<Item = Datagram<'_>> {
        self.datagrams_from(0)
    }

    /// [`datagrams`](Self::datagrams) from datagram `from` on (none if `from` is past the
    /// last).
    #[inline]
    pub fn datagrams_from(&self, from: usize) -> impl Iterator<Item = Datagram<'_>> {
        let (used, slot) = (self.used, self.max.max(1));
        let from = from.min(used);
        let words = self.control_words.max(1);
        self.hdrs[from..used]
            .iter()
            .zip(&self.names[from..used])
            .zip(self.bufs[(from * slot).min(self.bufs.len())..].chunks_exact(slot))
            .zip(self.controls[(from * words).min(self.controls.len())..].chunks_exact(words))
            .map(|(((m, name), slot), words)| datagram(m, name, slot, control_bytes(words, m)))
    }

    /// The socket's receive-queue drop count as the kernel attached it to the last
    /// datagram of the last [`recv`](Self::recv) (`SO_RXQ_OVFL`, once enabled on the
    /// socket): `None` if it attached none (nothing dropped yet, or not enabled). The
    /// count only grows, so the last datagram's is the newest.
    #[inline]
    pub fn drop_count(&self) -> Option<u32> {
        if self.filled_drops.is_some() {
            return self.filled_drops;
        }
        let name = imp::SO_RXQ_OVFL?;
        let last = self.used.checked_sub(1)?;
        if self.hdrs[last].msg_hdr.msg_controllen == 0 {
            return None;
        }
        ControlMessages::new(self.control_of(last))
            .filter(|m| m.level == libc::SOL_SOCKET && m.kind == name)
            .find_map(|m| m.u32())
    }
}

/// The control bytes the kernel wrote into a header's room `words` (none if the length
/// it reports is past the room).
#[inline(always)]
fn control_bytes<'a>(words: &'a [u64], m: &Mmsg) -> &'a [u8] {
    #[allow(clippy::unnecessary_cast)]
    let len = m.msg_hdr.msg_controllen as usize;
    if len == 0 {
        return &[];
    }
    let bytes: &[u8] = words_as_bytes(words);
    bytes.get(..len).unwrap_or(&[])
}

/// The bytes of a slice of words.
#[inline(always)]
fn words_as_bytes(words: &[u64]) -> &[u8] {
    // SAFETY: any u64's bytes are valid u8s; the slice covers exactly the words' memory,
    // which lives as long as `words`.
    unsafe { std::slice::from_raw_parts(words.as_ptr().cast::<u8>(), mem::size_of_val(words)) }
}

/// The datagram the kernel described in `m`, received into `buf` (its slot, cut to the
/// length the kernel was offered) from `name`. `msg_len` is the whole length (MSG_TRUNC),
/// so the data is the shorter of the two.
#[inline(always)]
fn datagram<'a>(
    m: &Mmsg,
    name: &'a libc::sockaddr_storage,
    buf: &'a [u8],
    control: &'a [u8],
) -> Datagram<'a> {
    Datagram {
        data: &buf[..(m.msg_len as usize).min(buf.len())],
        truncated: m.msg_hdr.msg_flags & libc::MSG_TRUNC != 0,
        // SAFETY: the kernel wrote `msg_namelen` bytes of the sender's address into `name`
        // (zeroed at creation, so the rest is initialised).
        from: unsafe { sockaddr_to_std(name, m.msg_hdr.msg_namelen) },
        len: m.msg_len as usize,
        control,
    }
}

/// Datagrams gathered to be sent together: their bytes one after another in one buffer,
/// and where each goes. Cleared, not freed, after each send.
pub struct SendBatch {
    data: Vec<u8>,
    /// (end offset in `data`, destination) per datagram.
    entries: Vec<(usize, SocketAddr)>,
    /// The datagrams that carry a source address or a TOS byte, by index, in order: the
    /// common case, none, costs a plain push nothing.
    metas: Vec<(usize, SendMeta)>,
    names: Vec<libc::sockaddr_storage>,
    iovs: Vec<libc::iovec>,
    hdrs: Vec<Mmsg>,
    /// Per header: its control messages (`UDP_SEGMENT`, the source, the TOS byte), and
    /// how many datagrams it carries.
    controls: Vec<[u64; SEND_CONTROL_WORDS]>,
    segments: Vec<usize>,
    /// The last send took fewer messages than it was handed.
    short: bool,
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
            metas: Vec::new(),
            names: vec![zeroed(); capacity],
            iovs: vec![zeroed(); capacity],
            hdrs: vec![zeroed(); capacity],
            controls: vec![[0; SEND_CONTROL_WORDS]; capacity],
            segments: vec![0; capacity],
            short: false,
        }
    }

    /// Grows the batch to hand the kernel at least `capacity` messages per send (never
    /// shrinks). Allocates only when it grows.
    pub fn reserve(&mut self, capacity: usize) {
        if capacity <= self.capacity() {
            return;
        }
        // Every header's pointers are set again by each send (`prepare`): growing moves
        // nothing that a header still points at.
        self.names.resize(capacity, zeroed());
        self.iovs.resize(capacity, zeroed());
        self.hdrs.resize(capacity, zeroed());
        self.controls.resize(capacity, [0; SEND_CONTROL_WORDS]);
        self.segments.resize(capacity, 0);
    }

    /// How many messages one send hands the kernel (each one datagram, or with
    /// [`send_segmented`](Self::send_segmented) a run of them).
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

    /// Adds a datagram (a copy of `data`) for `addr`, sent from `meta.source` with TOS
    /// byte `meta.tos` where given.
    pub fn push_with(&mut self, data: &[u8], addr: SocketAddr, meta: SendMeta) {
        if meta.is_empty() {
            return self.push(data, addr);
        }
        self.metas.push((self.entries.len(), meta));
        self.data.extend_from_slice(data);
        self.entries.push((self.data.len(), addr));
    }

    /// What datagram `i` carries besides its bytes.
    #[inline]
    pub fn meta(&self, i: usize) -> SendMeta {
        if self.metas.is_empty() {
            return SendMeta::default();
        }
        match self.metas.binary_search_by_key(&i, |&(at, _)| at) {
            Ok(found) => self.metas[found].1,
            Err(_) => SendMeta::default(),
        }
    }

    /// How many datagrams waiting carry a source address or a TOS byte.
    #[inline]
    pub fn meta_count(&self) -> usize {
        self.metas.len()
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
        self.metas.clear();
    }

    /// Sends datagrams `from..` (at most the capacity at once) without blocking; returns
    /// how many the kernel took, or the error met by datagram `from` (`EINTR` retried).
    /// With `connected`, no destination is given (the socket's peer is used).
    pub fn send(&mut self, fd: &impl AsRawFd, from: usize, connected: bool) -> io::Result<usize> {
        let messages = self.prepare(from, connected, false, 1);
        let sent = imp::send_mmsg(fd.as_raw_fd(), &mut self.hdrs[..messages])?;
        self.short = sent < messages;
        Ok(sent)
    }

    /// Whether the kernel took fewer messages than it was handed by the last successful
    /// send: the next one failed, and its error was not returned (`sendmmsg` reports only
    /// the count). On a socket with an error queue this is where an ICMP error raised by an
    /// earlier message of the same call is consumed.
    pub fn was_short(&self) -> bool {
        self.short
    }

    /// The payload bytes of every datagram waiting.
    #[inline]
    pub fn total_bytes(&self) -> usize {
        self.data.len()
    }

    #[cfg(any(test, feature = "bench-support"))]
    /// [`send`](Self::send), with each run of datagrams to one destination, all of one
    /// length (the run's last may be shorter), handed the kernel as one message that it
    /// cuts back into those datagrams (UDP generic segmentation offload, Linux's
    /// `UDP_SEGMENT`): the stack is walked once per run instead of once per datagram. The
    /// receiver sees the same datagrams. Elsewhere than on Linux it is `send`.
    ///
    /// An error met by the first message is returned as the error of datagram `from`
    /// (sending again from `from + 1` learns the others' fate); a kernel, route or device
    /// that cannot segment answers `EMSGSIZE`, `EIO` or `EINVAL` (see
    /// [`segmentation_refused`]).
    pub fn send_segmented(
        &mut self,
        fd: &impl AsRawFd,
        from: usize,
        connected: bool,
    ) -> io::Result<usize> {
        self.send_segmented_lead(fd, from, connected, MAX_SEGMENTS)
    }

    /// [`send_segmented`](Self::send_segmented) with the first message carrying at most
    /// `lead` datagrams (at least one): the receiver of a run is woken by its first
    /// message, so a short lead reaches it while the rest is still being sent.
    pub fn send_segmented_lead(
        &mut self,
        fd: &impl AsRawFd,
        from: usize,
        connected: bool,
        lead: usize,
    ) -> io::Result<usize> {
        let segment = imp::SEGMENTATION;
        let messages = self.prepare(from, connected, segment, lead);
        let sent = imp::send_mmsg(fd.as_raw_fd(), &mut self.hdrs[..messages])?;
        self.short = sent < messages;
        Ok(self.segments[..sent].iter().sum())
    }

    /// How many messages a send from datagram `from` hands over at most (the capacity
    /// bounds one call).
    pub fn messages_from(&self, from: usize) -> usize {
        self.entries.len().saturating_sub(from).min(self.capacity())
    }

    /// Records a send done without the kernel (the in-memory socket of
    /// [`crate::testing`]): `sent` of the `handed` datagrams were taken, one per message.
    pub fn note_sent(&mut self, handed: usize, sent: usize) {
        self.short = sent < handed;
        let sent = sent.min(self.capacity());
        for s in &mut self.segments[..sent] {
            *s = 1;
        }
    }

    /// How many datagrams the first message of the last send carried (more than one only
    /// for a segmented run).
    pub fn first_run(&self) -> usize {
        self.segments.first().copied().unwrap_or(0)
    }

    /// Fills the headers for datagrams `from..`; returns how many headers are ready. With
    /// `segment`, runs to one destination of one length share a header (and `segments`
    /// says how many datagrams each header carries), the first at most `lead` of them.
    #[inline]
    fn prepare(&mut self, from: usize, connected: bool, segment: bool, lead: usize) -> usize {
        if self.metas.is_empty() {
            self.prepare_as::<true>(from, connected, segment, lead)
        } else {
            self.prepare_as::<false>(from, connected, segment, lead)
        }
    }

    /// [`prepare`](Self::prepare), with `PLAIN` when no datagram carries a source or a TOS
    /// byte (the common case, compiled without any of their work).
    #[inline(always)]
    fn prepare_as<const PLAIN: bool>(
        &mut self,
        from: usize,
        connected: bool,
        segment: bool,
        lead: usize,
    ) -> usize {
        let base = self.data.as_mut_ptr();
        let mut i = from;
        let mut k = 0;
        // Where in `metas` the datagrams from `i` on are (they are walked in order).
        let mut cursor = if PLAIN {
            0
        } else {
            self.metas.partition_point(|&(at, _)| at < from)
        };
        while i < self.entries.len() && k < self.hdrs.len() {
            let start = if i == 0 { 0 } else { self.entries[i - 1].0 };
            let (mut end, addr) = self.entries[i];
            let size = end - start;
            let meta = if PLAIN {
                SendMeta::default()
            } else {
                meta_at(&self.metas, &mut cursor, i)
            };
            let mut run = 1;
            if segment && size > 0 && size <= MAX_SEGMENT {
                // Extend while the next has the same destination and the same length (a
                // shorter one, not empty, ends the run), within the kernel's limits.
                let most = MAX_SEGMENTS.min(MAX_SEGMENTED_BYTES / size);
                let most = if k == 0 { most.min(lead.max(1)) } else { most };
                let last = self.entries.len().min(i + most);
                // One message has one source and one TOS byte: a run of datagrams that
                // carry them ends where they change.
                let last = if PLAIN {
                    last
                } else {
                    let mut ahead = cursor;
                    (i + 1..last)
                        .find(|&j| meta_at(&self.metas, &mut ahead, j) != meta)
                        .unwrap_or(last)
                };
                for (next_end, next_addr) in &self.entries[i + 1..last] {
                    let next_size = next_end - end;
                    if *next_addr != addr || next_size == 0 || next_size > size {
                        break;
                    }
                    end = *next_end;
                    run += 1;
                    if next_size < size {
                        break;
                    }
                }
            }
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
            if run > 1 || (!PLAIN && !meta.is_empty()) {
                let room = &mut self.controls[k];
                let mut w = ControlWriter::new(room);
                if run > 1 {
                    // Only runs of size <= MAX_SEGMENT are made.
                    let segment = (size as u16).to_ne_bytes();
                    w.push(libc::IPPROTO_UDP, UDP_SEGMENT, &segment);
                }
                if !PLAIN {
                    imp::write_send_meta(&mut w, &meta, &addr);
                }
                hdr.msg_controllen = w.len() as _;
                hdr.msg_control = room.as_mut_ptr().cast();
            } else {
                hdr.msg_control = std::ptr::null_mut();
                hdr.msg_controllen = 0;
            }
            self.segments[k] = run;
            i += run;
            k += 1;
        }
        k
    }
}

/// What datagram `i` carries, from `metas` (by index, in order) read on from `cursor`,
/// which moves past the entries before `i`: datagrams asked for in order cost a step
/// each.
#[inline(always)]
fn meta_at(metas: &[(usize, SendMeta)], cursor: &mut usize, i: usize) -> SendMeta {
    while metas.get(*cursor).is_some_and(|&(at, _)| at < i) {
        *cursor += 1;
    }
    match metas.get(*cursor) {
        Some(&(at, meta)) if at == i => meta,
        _ => SendMeta::default(),
    }
}

/// Sends one datagram to `to` (to the connected peer with `None`), carrying `meta`'s
/// source address and TOS byte: one `sendmsg`; `EINTR` retried.
pub fn send_with(
    fd: &impl AsRawFd,
    data: &[u8],
    to: Option<&SocketAddr>,
    peer: SocketAddr,
    meta: &SendMeta,
) -> io::Result<usize> {
    let mut name: libc::sockaddr_storage = zeroed();
    let mut room = [0u64; SEND_CONTROL_WORDS];
    let mut w = ControlWriter::new(&mut room);
    imp::write_send_meta(&mut w, meta, to.unwrap_or(&peer));
    let controllen = w.len();
    let mut iov = libc::iovec {
        iov_base: data.as_ptr().cast_mut().cast(),
        iov_len: data.len(),
    };
    let mut msg: libc::msghdr = zeroed();
    if let Some(to) = to {
        msg.msg_namelen = std_to_sockaddr(to, &mut name);
        msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    }
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    if controllen > 0 {
        msg.msg_control = room.as_mut_ptr().cast();
        msg.msg_controllen = controllen as _;
    }
    let sent = super::unix::retrying(|| {
        // SAFETY: `msg` points at a live iovec over `data` (only read by the kernel), a live
        // address or none, and `controllen` bytes of control messages in `room`.
        unsafe { libc::sendmsg(fd.as_raw_fd(), &msg, 0) }
    })?;
    Ok(sent as usize)
}

/// The most datagrams one segmented message carries (the kernel's `UDP_MAX_SEGMENTS` of
/// older kernels; newer ones allow more).
const MAX_SEGMENTS: usize = 64;
/// The longest datagram sent segmented: one that fits an Ethernet frame with IPv6 and UDP
/// headers, since a segment longer than the route's MTU is refused (`EMSGSIZE`, or
/// `EINVAL` on older kernels) where a plain datagram would be fragmented. Longer ones go
/// one per message.
const MAX_SEGMENT: usize = 1452;
/// The most bytes of one segmented message (the IP length field's bound, with headers).
const MAX_SEGMENTED_BYTES: usize = 65_000;

/// Linux's `UDP_SEGMENT` (`linux/udp.h`); the value is only used on Linux.
const UDP_SEGMENT: libc::c_int = 103;

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

    /// SO_RXQ_OVFL: once the kernel has dropped datagrams for a full buffer, the next
    /// datagram queued carries the socket's drop count.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_drop_count_comes_with_the_next_datagram_after_drops() {
        use std::os::fd::AsRawFd;
        let (rx, tx) = pair();
        socket2::SockRef::from(&rx)
            .set_recv_buffer_size(16 * 1024)
            .expect("rcvbuf");
        super::super::platform::enable_drop_count(rx.as_raw_fd()).expect("SO_RXQ_OVFL");
        let to = rx.local_addr().expect("addr");
        let mut ring = RecvBatch::default();
        ring.reserve(64, 512);
        ring.reserve_control(ControlSpace {
            drop_count: true,
            ..ControlSpace::default()
        });
        tx.send_to(b"first", to).expect("send");
        assert_eq!(ring.recv(&rx, 64, 512).expect("recv"), 1);
        assert_eq!(ring.drop_count(), None, "nothing dropped yet");
        const BURST: usize = 500;
        for _ in 0..BURST {
            tx.send_to(&[1u8; 256], to).expect("send");
        }
        let mut queued = 0;
        while let Ok(got) = ring.recv(&rx, 64, 512) {
            queued += got;
        }
        assert!(
            queued < BURST,
            "a 16 KiB buffer holds fewer than {BURST} datagrams"
        );
        tx.send_to(b"after", to).expect("send");
        assert_eq!(ring.recv(&rx, 64, 512).expect("recv"), 1);
        assert_eq!(ring.drop_count(), Some((BURST - queued) as u32));
        let meminfo = super::super::platform::socket_drops(rx.as_raw_fd()).expect("SO_MEMINFO");
        assert_eq!(meminfo as usize, BURST - queued);
    }

    /// A control message the room cannot hold is cut (`MSG_CTRUNC`), and said so per
    /// datagram; room sized for it holds it.
    #[cfg(target_os = "linux")]
    #[test]
    fn a_control_room_too_small_is_reported_per_datagram() {
        use std::os::fd::AsRawFd;
        let (rx, tx) = pair();
        socket2::SockRef::from(&rx)
            .set_recv_buffer_size(4096)
            .expect("rcvbuf");
        super::super::platform::enable_drop_count(rx.as_raw_fd()).expect("SO_RXQ_OVFL");
        let to = rx.local_addr().expect("addr");
        for _ in 0..200 {
            tx.send_to(&[1u8; 256], to).expect("send");
        }
        let mut small = RecvBatch::default();
        small.reserve(64, 512);
        while small.recv(&rx, 64, 512).is_ok() {}
        // Dropped by now: every datagram from here on carries the count.
        tx.send_to(b"after", to).expect("send");
        assert_eq!(small.recv(&rx, 64, 512).expect("recv"), 1);
        let d = small.get(0);
        assert_eq!(d.data, b"after");
        assert!(
            small.control_truncated(0) && small.control_truncated_count() == 1,
            "8 bytes cannot hold SO_RXQ_OVFL's message"
        );
        assert_eq!(small.drop_count(), None);
        small.reserve_control(ControlSpace {
            drop_count: true,
            ..ControlSpace::default()
        });
        tx.send_to(b"again", to).expect("send");
        assert_eq!(small.recv(&rx, 64, 512).expect("recv"), 1);
        assert!(!small.control_truncated(0));
        assert!(small.drop_count().is_some_and(|n| n > 0));
    }

    /// The arrival address, the TOS byte and the timestamp together need more room than
    /// the drop count's: with room for the drop count alone the kernel cuts them
    /// (`MSG_CTRUNC`, counted per read); with the room sized for every option on, every
    /// message arrives and tells its part.
    #[cfg(target_os = "linux")]
    #[test]
    fn the_room_sized_from_the_options_on_holds_every_message() {
        use std::os::fd::AsRawFd;
        let (rx, tx) = pair();
        let fd = rx.as_raw_fd();
        use super::super::platform as p;
        p::set_arrival(fd, false, true).expect("IP_PKTINFO");
        p::set_recv_tos(fd, false, true).expect("IP_RECVTOS");
        p::set_timestamps(fd, true).expect("SO_TIMESTAMPNS");
        socket2::SockRef::from(&tx).set_tos_v4(0x2e).expect("tos");
        let to = rx.local_addr().expect("addr");
        let drops_only = ControlSpace {
            drop_count: true,
            ..ControlSpace::default()
        };
        let all = ControlSpace {
            drop_count: true,
            pktinfo_v4: true,
            tos_v4: true,
            timestamp: true,
            ..ControlSpace::default()
        };
        let mut small = RecvBatch::default();
        small.reserve(8, 64);
        small.reserve_control(drops_only);
        for _ in 0..3 {
            tx.send_to(b"x", to).expect("send");
        }
        assert_eq!(small.recv(&rx, 8, 64).expect("recv"), 3);
        assert_eq!(small.control_truncated_count(), 3);
        let mut sized = RecvBatch::default();
        sized.reserve(8, 64);
        sized.reserve_control(all);
        for _ in 0..3 {
            tx.send_to(b"y", to).expect("send");
        }
        assert_eq!(sized.recv(&rx, 8, 64).expect("recv"), 3);
        assert_eq!(sized.control_truncated_count(), 0);
        for d in sized.datagrams() {
            let mut meta = super::super::cmsg::Arrival::default();
            p::recv_meta(d.control, &mut meta);
            assert_eq!(meta.destination, Some(to.ip()));
            assert_eq!(meta.reply_source, Some(to.ip()));
            assert_eq!(meta.tos, Some(0x2e));
            assert!(meta.interface.is_some() && meta.timestamp.is_some());
        }
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
