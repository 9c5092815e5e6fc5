//! Linux: `recvmmsg`/`sendmmsg`, `UDP_SEGMENT`, the receive-queue drop count
//! (`SO_RXQ_OVFL`, `SO_MEMINFO`), the error queue (`IP_RECVERR`), `IP_MULTICAST_ALL`, the
//! per-datagram options (`IP_PKTINFO`, `IP_RECVTOS`, `SO_TIMESTAMPNS` and their IPv6
//! kin) and their control messages, CPU pinning. `other_unix.rs` has the same names for
//! every other Unix.

use std::io;
use std::mem;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::RawFd;
use std::time::{Duration, SystemTime};

use socket2::SockRef;

use super::QueuedError;
use super::cmsg::{
    Arrival, ControlMessages, ControlWriter, PKTINFO_V4_LEN, PKTINFO_V6_LEN, SendMeta,
};
use super::errno::{ErrorClass, classify};
use super::unix::{cvt, retrying, sockaddr_to_std};

/// The kernel's `struct mmsghdr`.
pub(super) type Mmsg = libc::mmsghdr;

/// The kernel segments datagrams (`UDP_SEGMENT`, Linux 4.18 and later).
pub(super) const SEGMENTATION: bool = true;

/// `recvmmsg` into the prepared headers (`MSG_TRUNC`: each header's `msg_len` is then the
/// datagram's whole length); `EINTR` retried.
pub(super) fn recv_mmsg(fd: RawFd, hdrs: &mut [Mmsg]) -> io::Result<usize> {
    let n = retrying(|| {
        // SAFETY: every header points at a live name buffer and one live iovec over a
        // slot of the batch's buffer, with their lengths; `hdrs.len()` headers exist.
        unsafe {
            libc::recvmmsg(
                fd,
                hdrs.as_mut_ptr(),
                hdrs.len() as libc::c_uint,
                libc::MSG_TRUNC,
                std::ptr::null_mut(),
            )
        }
    })?;
    Ok(n as usize)
}

/// `sendmmsg` of the prepared headers; `EINTR` retried.
pub(super) fn send_mmsg(fd: RawFd, hdrs: &mut [Mmsg]) -> io::Result<usize> {
    let n = retrying(|| {
        // SAFETY: every header points at a live iovec over the batch's data (and a live
        // address or none), with their lengths; `hdrs.len()` headers exist.
        unsafe { libc::sendmmsg(fd, hdrs.as_mut_ptr(), hdrs.len() as libc::c_uint, 0) }
    })?;
    Ok(n as usize)
}

/// Whether the target uses `asm-generic/socket.h`'s option numbers (libc does not export
/// the two below for Linux).
const GENERIC_SOCKET_H: bool = cfg!(any(
    target_arch = "x86_64",
    target_arch = "x86",
    target_arch = "aarch64",
    target_arch = "arm",
    target_arch = "riscv64",
    target_arch = "loongarch64",
    target_arch = "powerpc64",
    target_arch = "s390x"
));

/// `SO_RXQ_OVFL`'s option and control-message type, where its number is known.
pub(super) const SO_RXQ_OVFL: Option<libc::c_int> = if GENERIC_SOCKET_H { Some(40) } else { None };
/// `SO_MEMINFO`, where its number is known.
const SO_MEMINFO: Option<libc::c_int> = if GENERIC_SOCKET_H { Some(55) } else { None };

fn unsupported() -> io::Error {
    io::Error::from(io::ErrorKind::Unsupported)
}

fn set_int(fd: RawFd, level: libc::c_int, name: libc::c_int, value: libc::c_int) -> io::Result<()> {
    // SAFETY: `value` is a live c_int and its size is passed; the kernel only reads it.
    cvt(unsafe {
        libc::setsockopt(
            fd,
            level,
            name,
            (&value as *const libc::c_int).cast(),
            mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    })?;
    Ok(())
}

/// Has the kernel attach its receive-queue drop count to every datagram read once any
/// was dropped (`SO_RXQ_OVFL`).
pub(crate) fn enable_drop_count(fd: RawFd) -> io::Result<()> {
    let name = SO_RXQ_OVFL.ok_or_else(unsupported)?;
    set_int(fd, libc::SOL_SOCKET, name, 1)
}

/// Linux's `UDP_GRO` (`linux/udp.h`): the socket option, and the control message with
/// a coalesced read's segment size.
pub(super) const UDP_GRO: libc::c_int = 104;
/// The receive offload's control message exists here.
pub(super) const RECEIVE_OFFLOAD: bool = true;

/// Has the kernel coalesce datagrams of one flow into one read (`UDP_GRO`), each such read
/// carrying the segment size; or stops it.
pub(crate) fn set_receive_offload(fd: RawFd, on: bool) -> io::Result<()> {
    set_int(fd, libc::IPPROTO_UDP, UDP_GRO, libc::c_int::from(on))
}

/// `SO_TIMESTAMPNS` (and its control message's type, `SCM_TIMESTAMPNS`), where its number
/// is known.
const SO_TIMESTAMPNS: Option<libc::c_int> = if GENERIC_SOCKET_H { Some(35) } else { None };

/// Sends can carry a source address and a TOS byte here.
pub(crate) const SEND_META: bool = true;

/// Has the kernel attach each datagram's arrival address and interface (`IP_PKTINFO`;
/// `IPV6_RECVPKTINFO` on an IPv6 socket, with `IP_PKTINFO` too for the IPv4 datagrams a
/// dual-stack socket receives, whose `ipi_spec_dst` is the reply's source), or stops it.
pub(crate) fn set_arrival(fd: RawFd, v6: bool, on: bool) -> io::Result<()> {
    let value = libc::c_int::from(on);
    if v6 {
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVPKTINFO, value)?;
        // A v6-only socket may refuse it, and receives no IPv4 anyway.
        let _ = set_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, value);
        Ok(())
    } else {
        set_int(fd, libc::IPPROTO_IP, libc::IP_PKTINFO, value)
    }
}

/// Has the kernel attach each datagram's TOS byte (`IP_RECVTOS`; `IPV6_RECVTCLASS` on an
/// IPv6 socket, with `IP_RECVTOS` too, without which a dual-stack socket's IPv4 datagrams
/// come without one).
pub(crate) fn set_recv_tos(fd: RawFd, v6: bool, on: bool) -> io::Result<()> {
    let value = libc::c_int::from(on);
    if v6 {
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVTCLASS, value)?;
        let _ = set_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, value);
        Ok(())
    } else {
        set_int(fd, libc::IPPROTO_IP, libc::IP_RECVTOS, value)
    }
}

/// The TOS byte of every datagram the socket sends (`IP_TOS`; `IPV6_TCLASS` on an IPv6
/// socket, with `IP_TOS` too for the IPv4 destinations of a dual-stack socket).
pub(crate) fn set_tos(fd: RawFd, v6: bool, tos: u8) -> io::Result<()> {
    let value = libc::c_int::from(tos);
    if v6 {
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_TCLASS, value)?;
        let _ = set_int(fd, libc::IPPROTO_IP, libc::IP_TOS, value);
        Ok(())
    } else {
        set_int(fd, libc::IPPROTO_IP, libc::IP_TOS, value)
    }
}

/// Has the kernel attach the time it queued each datagram (`SO_TIMESTAMPNS`: the wall
/// clock, to the nanosecond), or stops it.
pub(crate) fn set_timestamps(fd: RawFd, on: bool) -> io::Result<()> {
    let name = SO_TIMESTAMPNS.ok_or_else(unsupported)?;
    set_int(fd, libc::SOL_SOCKET, name, libc::c_int::from(on))
}

/// Fills `meta` (all `None` on entry) with what a datagram's control messages say of its
/// arrival: address, interface, TOS byte, timestamp.
#[inline]
pub(crate) fn recv_meta(control: &[u8], meta: &mut Arrival) {
    let mut v4: Option<(Ipv4Addr, Ipv4Addr, u32)> = None;
    let mut v6: Option<(Ipv6Addr, u32)> = None;
    for m in ControlMessages::new(control) {
        match (m.level, m.kind) {
            (libc::IPPROTO_IP, libc::IP_PKTINFO) if m.data.len() >= PKTINFO_V4_LEN => {
                // SAFETY: the data holds a whole in_pktinfo (checked above), a plain struct
                // of integers, read unaligned.
                let info: libc::in_pktinfo =
                    unsafe { std::ptr::read_unaligned(m.data.as_ptr().cast()) };
                v4 = Some((
                    Ipv4Addr::from(u32::from_be(info.ipi_addr.s_addr)),
                    Ipv4Addr::from(u32::from_be(info.ipi_spec_dst.s_addr)),
                    info.ipi_ifindex as u32,
                ));
            }
            (libc::IPPROTO_IPV6, libc::IPV6_PKTINFO) if m.data.len() >= PKTINFO_V6_LEN => {
                // SAFETY: the data holds a whole in6_pktinfo (checked above), a plain struct
                // of integers and bytes, read unaligned.
                let info: libc::in6_pktinfo =
                    unsafe { std::ptr::read_unaligned(m.data.as_ptr().cast()) };
                v6 = Some((Ipv6Addr::from(info.ipi6_addr.s6_addr), info.ipi6_ifindex));
            }
            (libc::IPPROTO_IP, libc::IP_TOS) => meta.tos = m.data.first().copied(),
            (libc::IPPROTO_IPV6, libc::IPV6_TCLASS) => {
                meta.tos = m.u32().map(|class| (class & 0xff) as u8);
            }
            (libc::SOL_SOCKET, kind) if Some(kind) == SO_TIMESTAMPNS => {
                meta.timestamp = timestamp(m.data);
            }
            _ => {}
        }
    }
    match (v6, v4) {
        // An IPv4 datagram on a dual-stack socket: the IPv4 message has the reply's source.
        (Some((dst, index)), Some((_, spec, _))) => {
            meta.destination = Some(IpAddr::V6(dst));
            meta.reply_source = Some(IpAddr::V6(spec.to_ipv6_mapped()));
            meta.interface = Some(index);
        }
        (Some((dst, index)), None) => {
            meta.destination = Some(IpAddr::V6(dst));
            // A group is never a source (EINVAL): the kernel chooses then. Neither is an
            // IPv4 broadcast address, which an IPv4-mapped destination may be: only the
            // IPv4 message's `ipi_spec_dst` tells a source for those.
            let usable = !dst.is_multicast() && dst.to_ipv4_mapped().is_none();
            meta.reply_source = usable.then_some(IpAddr::V6(dst));
            meta.interface = Some(index);
        }
        (None, Some((dst, spec, index))) => {
            meta.destination = Some(IpAddr::V4(dst));
            meta.reply_source = (!spec.is_unspecified()).then_some(IpAddr::V4(spec));
            meta.interface = Some(index);
        }
        (None, None) => {}
    }
}

/// An `SCM_TIMESTAMPNS` message's `timespec` as a wall-clock time (`None` if too short or
/// out of range): two integers of the target's word size (option 35 is
/// `SO_TIMESTAMPNS_OLD`, whose `timespec` is the kernel's native one, whatever
/// `libc::timespec` a time64 C library has).
#[inline]
fn timestamp(data: &[u8]) -> Option<SystemTime> {
    const WORD: usize = mem::size_of::<usize>();
    let word = |at: usize| -> Option<i64> {
        let bytes = data.get(at * WORD..(at + 1) * WORD)?;
        Some(match *bytes {
            [a, b, c, d] => i64::from(i32::from_ne_bytes([a, b, c, d])),
            [a, b, c, d, e, f, g, h] => i64::from_ne_bytes([a, b, c, d, e, f, g, h]),
            _ => return None,
        })
    };
    let secs = u64::try_from(word(0)?).ok()?;
    let nanos = u32::try_from(word(1)?)
        .ok()
        .filter(|&n| n < 1_000_000_000)?;
    SystemTime::UNIX_EPOCH.checked_add(Duration::new(secs, nanos))
}

/// Writes the control messages that send `meta` to `dest`: the source as an `IP_PKTINFO`
/// (`ipi_spec_dst`, interface 0) or `IPV6_PKTINFO` (interface 0), the TOS byte as `IP_TOS`
/// (also to an IPv4-mapped destination, where `IPV6_TCLASS` is ignored) or `IPV6_TCLASS`.
/// False if the room cannot hold them.
pub(crate) fn write_send_meta(
    w: &mut ControlWriter<'_>,
    meta: &SendMeta,
    dest: &SocketAddr,
) -> bool {
    let mut fits = true;
    if let Some(source) = meta.source {
        fits &= match dest {
            SocketAddr::V4(_) => {
                let src = match source {
                    IpAddr::V4(a) => a,
                    IpAddr::V6(a) => a.to_ipv4_mapped().unwrap_or(Ipv4Addr::UNSPECIFIED),
                };
                let info = libc::in_pktinfo {
                    ipi_ifindex: 0,
                    ipi_spec_dst: libc::in_addr {
                        s_addr: u32::from(src).to_be(),
                    },
                    ipi_addr: libc::in_addr { s_addr: 0 },
                };
                w.push(libc::IPPROTO_IP, libc::IP_PKTINFO, pod_bytes(&info))
            }
            SocketAddr::V6(_) => {
                let src = match source {
                    IpAddr::V4(a) => a.to_ipv6_mapped(),
                    IpAddr::V6(a) => a,
                };
                let info = libc::in6_pktinfo {
                    ipi6_addr: libc::in6_addr {
                        s6_addr: src.octets(),
                    },
                    ipi6_ifindex: 0,
                };
                w.push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, pod_bytes(&info))
            }
        };
    }
    if let Some(tos) = meta.tos {
        let value = libc::c_int::from(tos).to_ne_bytes();
        let mapped = match dest {
            SocketAddr::V4(_) => true,
            SocketAddr::V6(a) => a.ip().to_ipv4_mapped().is_some(),
        };
        fits &= if mapped {
            w.push(libc::IPPROTO_IP, libc::IP_TOS, &value)
        } else {
            w.push(libc::IPPROTO_IPV6, libc::IPV6_TCLASS, &value)
        };
    }
    fits
}

/// Writes the address message the kernel attaches to a datagram sent to `destination`
/// (`IP_PKTINFO`, or `IPV6_PKTINFO`), as it would on interface 1 (`lo`), for the test kit's
/// in-memory socket; a broadcast or multicast destination gets 127.0.0.1 to reply from.
/// False if the room cannot hold it.
pub(crate) fn write_arrival(w: &mut ControlWriter<'_>, destination: IpAddr) -> bool {
    match destination {
        IpAddr::V4(dst) => {
            let unicast = !dst.is_multicast() && !dst.is_broadcast();
            let spec = if unicast { dst } else { Ipv4Addr::LOCALHOST };
            let info = libc::in_pktinfo {
                ipi_ifindex: 1,
                ipi_spec_dst: libc::in_addr {
                    s_addr: u32::from(spec).to_be(),
                },
                ipi_addr: libc::in_addr {
                    s_addr: u32::from(dst).to_be(),
                },
            };
            w.push(libc::IPPROTO_IP, libc::IP_PKTINFO, pod_bytes(&info))
        }
        IpAddr::V6(dst) => {
            let info = libc::in6_pktinfo {
                ipi6_addr: libc::in6_addr {
                    s6_addr: dst.octets(),
                },
                ipi6_ifindex: 1,
            };
            w.push(libc::IPPROTO_IPV6, libc::IPV6_PKTINFO, pod_bytes(&info))
        }
    }
}

/// The bytes of a plain C struct (no padding inside: in_pktinfo, in6_pktinfo).
fn pod_bytes<T: Copy>(value: &T) -> &[u8] {
    // SAFETY: only called with libc's in_pktinfo and in6_pktinfo, made of integers and
    // byte arrays without padding; the slice covers the value's memory for its lifetime.
    unsafe { std::slice::from_raw_parts((value as *const T).cast::<u8>(), mem::size_of::<T>()) }
}

/// The socket's drop count now (`SO_MEMINFO`'s `SK_MEMINFO_DROPS`).
pub(crate) fn socket_drops(fd: RawFd) -> io::Result<u32> {
    let name = SO_MEMINFO.ok_or_else(unsupported)?;
    // SK_MEMINFO_VARS is 9 today; room for more, which the kernel may fill.
    let mut info = [0u32; 16];
    let mut len = mem::size_of_val(&info) as libc::socklen_t;
    // SAFETY: `info` is writable for `len` bytes; the kernel writes at most that much and
    // updates `len`.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            name,
            info.as_mut_ptr().cast(),
            &mut len,
        )
    })?;
    let at = libc::SK_MEMINFO_DROPS as usize;
    if (len as usize) < (at + 1) * mem::size_of::<u32>() {
        return Err(unsupported());
    }
    Ok(info[at])
}

/// Turns the error queue on or off (`IP_RECVERR`, and `IPV6_RECVERR` on an IPv6 socket,
/// which may also carry IPv4-mapped traffic). Off empties the queue.
pub(crate) fn set_recv_errors(fd: RawFd, v6: bool, on: bool) -> io::Result<()> {
    let value = libc::c_int::from(on);
    if v6 {
        set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, value)?;
        // A dual-stack socket reports IPv4 errors under IP_RECVERR; a v6-only one may
        // refuse it, which changes nothing.
        let _ = set_int(fd, libc::IPPROTO_IP, libc::IP_RECVERR, value);
        Ok(())
    } else {
        set_int(fd, libc::IPPROTO_IP, libc::IP_RECVERR, value)
    }
}

/// Control-message room for one extended error and its offender's address.
#[repr(C, align(8))]
struct Control([u8; 256]);

/// Reads one error from the socket's error queue, without blocking: `None` when the
/// queue is empty.
pub(crate) fn read_queued_error(fd: RawFd) -> io::Result<Option<QueuedError>> {
    // SAFETY: all-zero is a valid sockaddr_storage and msghdr.
    let mut name: libc::sockaddr_storage = unsafe { mem::zeroed() };
    let mut control = Control([0; 256]);
    let mut byte = [0u8; 1];
    let mut iov = libc::iovec {
        iov_base: byte.as_mut_ptr().cast(),
        iov_len: byte.len(),
    };
    // SAFETY: as above.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = (&mut name as *mut libc::sockaddr_storage).cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    msg.msg_control = control.0.as_mut_ptr().cast();
    msg.msg_controllen = control.0.len() as _;
    let read = retrying(|| {
        // SAFETY: every pointer in `msg` points at a live local buffer of the length given
        // with it; MSG_ERRQUEUE never blocks.
        unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) }
    });
    match read {
        Ok(_) => {}
        Err(e) if classify(&e) == ErrorClass::WouldBlock => return Ok(None),
        Err(e) => return Err(e),
    }
    // SAFETY: the kernel wrote `msg_namelen` bytes of the destination's address (zeroed
    // before, so the rest is initialised).
    let dest = unsafe { sockaddr_to_std(&name, msg.msg_namelen) };
    let written = (msg.msg_controllen as usize).min(control.0.len());
    let found = super::cmsg::ControlMessages::new(&control.0[..written])
        .filter_map(|m| extended_error(&m, dest))
        .last();
    // A queued entry without an extended error (not expected): report what is known.
    Ok(Some(found.unwrap_or(QueuedError {
        dest,
        errno: 0,
        reporter: None,
        icmp: false,
    })))
}

/// The error an `IP_RECVERR`/`IPV6_RECVERR` control message carries (`None` for any other
/// message, or one too short), with the reporter's address for an ICMP error.
fn extended_error(
    m: &super::cmsg::ControlMessage<'_>,
    dest: Option<std::net::SocketAddr>,
) -> Option<QueuedError> {
    let is_error = (m.level == libc::IPPROTO_IP && m.kind == libc::IP_RECVERR)
        || (m.level == libc::IPPROTO_IPV6 && m.kind == libc::IPV6_RECVERR);
    let size = mem::size_of::<libc::sock_extended_err>();
    if !is_error || m.data.len() < size {
        return None;
    }
    // SAFETY: the data holds a whole sock_extended_err (checked above), a plain struct of
    // integers, read unaligned as the data need not be aligned for it.
    let ee: libc::sock_extended_err = unsafe { std::ptr::read_unaligned(m.data.as_ptr().cast()) };
    let icmp = ee.ee_origin == libc::SO_EE_ORIGIN_ICMP || ee.ee_origin == libc::SO_EE_ORIGIN_ICMP6;
    let reporter = if icmp {
        // The offender's address follows the struct (SO_EE_OFFENDER), as much of it as the
        // message holds, copied into a zeroed storage.
        let offender = &m.data[size..];
        // SAFETY: all-zero bytes are a valid sockaddr_storage.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let n = offender.len().min(mem::size_of::<libc::sockaddr_storage>());
        // SAFETY: `n` bytes fit in both the offender's bytes and the storage.
        unsafe {
            std::ptr::copy_nonoverlapping(
                offender.as_ptr(),
                (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                n,
            );
        }
        // SAFETY: `storage` holds `n` bytes of the address, zeroed past them.
        unsafe { sockaddr_to_std(&storage, n as libc::socklen_t) }.map(|a| a.ip())
    } else {
        None
    };
    Some(QueuedError {
        dest,
        errno: ee.ee_errno as i32,
        reporter,
        icmp,
    })
}

/// `IP_MULTICAST_ALL`.
pub(crate) fn multicast_all_v4(sock: &SockRef<'_>) -> io::Result<bool> {
    sock.multicast_all_v4()
}

pub(crate) fn set_multicast_all_v4(sock: &SockRef<'_>, on: bool) -> io::Result<()> {
    sock.set_multicast_all_v4(on)
}

/// `IPV6_MULTICAST_ALL`.
pub(crate) fn multicast_all_v6(sock: &SockRef<'_>) -> io::Result<bool> {
    sock.multicast_all_v6()
}

pub(crate) fn set_multicast_all_v6(sock: &SockRef<'_>, on: bool) -> io::Result<()> {
    sock.set_multicast_all_v6(on)
}

/// Pins the calling thread to CPU `cpu` (`sched_setaffinity`); for benchmarks.
pub fn pin_to_cpu(cpu: usize) -> io::Result<()> {
    // SAFETY: cpu_set_t is a plain bit set; all-zero is the empty set.
    let mut set: libc::cpu_set_t = unsafe { mem::zeroed() };
    if cpu >= 8 * mem::size_of::<libc::cpu_set_t>() {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: `cpu` is within the set's size, checked above.
    unsafe { libc::CPU_SET(cpu, &mut set) };
    // SAFETY: pid 0 is the calling thread; `set` is a valid cpu_set_t of the given size.
    cvt(unsafe { libc::sched_setaffinity(0, mem::size_of::<libc::cpu_set_t>(), &set) })?;
    Ok(())
}
