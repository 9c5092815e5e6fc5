//! POSIX: `recvmsg` with `MSG_TRUNC` detection, socket inspection for adoption, `dup`.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd, RawFd};

use super::{ErrorClass, Received};
use crate::error::Error;

/// Turns a libc `-1` return into `io::Error::last_os_error()`.
fn cvt(ret: libc::c_int) -> io::Result<libc::c_int> {
    if ret == -1 {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// Reads one datagram into `buf`.
pub(crate) fn recv_from(fd: &impl AsRawFd, buf: &mut [u8]) -> io::Result<Received> {
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut iov = libc::iovec {
        iov_base: buf.as_mut_ptr().cast(),
        iov_len: buf.len(),
    };
    // SAFETY: an all-zero msghdr is a valid "no name, no iovecs, no control" header.
    let mut msg: libc::msghdr = unsafe { mem::zeroed() };
    msg.msg_name = storage.as_mut_ptr().cast();
    msg.msg_namelen = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    msg.msg_iov = &mut iov;
    msg.msg_iovlen = 1;
    let n = loop {
        // SAFETY: `msg` points at `storage` and at one iovec over `buf`, all of which
        // outlive the call and have the lengths recorded in `msg`.
        let n = unsafe { libc::recvmsg(fd.as_raw_fd(), &mut msg, 0) };
        if n >= 0 {
            break n as usize;
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    };
    // SAFETY: recvmsg succeeded, so it wrote `msg_namelen` bytes of address into `storage`
    // (and the rest is still zeroed).
    let from = unsafe { sockaddr_to_std(storage.assume_init_ref(), msg.msg_namelen) }
        .ok_or_else(|| io::Error::new(io::ErrorKind::InvalidData, "sender is not IPv4 or IPv6"))?;
    Ok(Received {
        len: n,
        truncated: msg.msg_flags & libc::MSG_TRUNC != 0,
        from,
    })
}

/// Converts a kernel socket address into a `SocketAddr` (IPv4 and IPv6 only).
///
/// # Safety
///
/// The first `len` bytes of `storage` must be a socket address as the kernel wrote it.
unsafe fn sockaddr_to_std(
    storage: &libc::sockaddr_storage,
    len: libc::socklen_t,
) -> Option<SocketAddr> {
    let len = len as usize;
    match storage.ss_family as libc::c_int {
        libc::AF_INET if len >= mem::size_of::<libc::sockaddr_in>() => {
            // SAFETY: the family says the storage holds a sockaddr_in, and it is long enough;
            // sockaddr_storage is aligned for every sockaddr type.
            let sin =
                unsafe { &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>() };
            let ip = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
            Some(SocketAddr::V4(SocketAddrV4::new(
                ip,
                u16::from_be(sin.sin_port),
            )))
        }
        libc::AF_INET6 if len >= mem::size_of::<libc::sockaddr_in6>() => {
            // SAFETY: as above, for sockaddr_in6.
            let sin6 = unsafe {
                &*(storage as *const libc::sockaddr_storage).cast::<libc::sockaddr_in6>()
            };
            let ip = Ipv6Addr::from(sin6.sin6_addr.s6_addr);
            Some(SocketAddr::V6(SocketAddrV6::new(
                ip,
                u16::from_be(sin6.sin6_port),
                sin6.sin6_flowinfo,
                sin6.sin6_scope_id,
            )))
        }
        _ => None,
    }
}

/// Checks, without changing anything, that `fd` is an open, bound IPv4 or IPv6 datagram
/// socket, and returns its bound address.
pub(crate) fn inspect_socket(fd: RawFd) -> Result<SocketAddr, Error> {
    let bad = |source| Error::BadDescriptor { fd, source };
    // SAFETY: F_GETFD only reads the descriptor's flags; an invalid fd gives EBADF.
    cvt(unsafe { libc::fcntl(fd, libc::F_GETFD) }).map_err(bad)?;
    let mut ty: libc::c_int = 0;
    let mut len = mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: `ty` is a c_int and `len` says so; a non-socket gives ENOTSOCK.
    cvt(unsafe {
        libc::getsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_TYPE,
            (&mut ty as *mut libc::c_int).cast(),
            &mut len,
        )
    })
    .map_err(bad)?;
    let mut storage = MaybeUninit::<libc::sockaddr_storage>::zeroed();
    let mut len = mem::size_of::<libc::sockaddr_storage>() as libc::socklen_t;
    // SAFETY: `storage` is a sockaddr_storage and `len` is its size.
    cvt(unsafe { libc::getsockname(fd, storage.as_mut_ptr().cast(), &mut len) }).map_err(bad)?;
    // SAFETY: getsockname succeeded and filled `len` bytes; the rest is zeroed.
    let storage = unsafe { storage.assume_init() };
    let family = storage.ss_family as libc::c_int;
    if family != libc::AF_INET && family != libc::AF_INET6 {
        return Err(Error::UnsupportedAddressFamily { fd, family });
    }
    if ty != libc::SOCK_DGRAM {
        return Err(Error::UnsupportedSocketType {
            fd,
            socket_type: ty,
        });
    }
    // SAFETY: the kernel wrote this address just above.
    let local = unsafe { sockaddr_to_std(&storage, len) }
        .ok_or(Error::UnsupportedAddressFamily { fd, family })?;
    if local.port() == 0 {
        return Err(Error::NotBound { fd });
    }
    Ok(local)
}

/// A close-on-exec duplicate of `fd`, owned by the caller.
pub(crate) fn dup_cloexec(fd: RawFd) -> io::Result<OwnedFd> {
    // SAFETY: F_DUPFD_CLOEXEC creates a new descriptor or fails; it does not touch `fd`.
    let new = cvt(unsafe { libc::fcntl(fd, libc::F_DUPFD_CLOEXEC, 0) })?;
    // SAFETY: `new` was just created by fcntl and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(new) })
}

/// The index of the network interface called `name` (`if_nametoindex`).
pub(crate) fn interface_index(name: &str) -> io::Result<u32> {
    let c =
        std::ffi::CString::new(name).map_err(|_| io::Error::from(io::ErrorKind::InvalidInput))?;
    // SAFETY: `c` is a NUL-terminated string that outlives the call.
    match unsafe { libc::if_nametoindex(c.as_ptr()) } {
        0 => Err(io::Error::last_os_error()),
        i => Ok(i),
    }
}

/// `IP_MULTICAST_ALL` and `IPV6_MULTICAST_ALL`: Linux only; elsewhere "unsupported".
#[cfg(target_os = "linux")]
mod multicast_all {
    use socket2::SockRef;
    use std::io;

    pub(crate) fn multicast_all_v4(sock: &SockRef<'_>) -> io::Result<bool> {
        sock.multicast_all_v4()
    }

    pub(crate) fn set_multicast_all_v4(sock: &SockRef<'_>, on: bool) -> io::Result<()> {
        sock.set_multicast_all_v4(on)
    }

    pub(crate) fn multicast_all_v6(sock: &SockRef<'_>) -> io::Result<bool> {
        sock.multicast_all_v6()
    }

    pub(crate) fn set_multicast_all_v6(sock: &SockRef<'_>, on: bool) -> io::Result<()> {
        sock.set_multicast_all_v6(on)
    }
}

#[cfg(not(target_os = "linux"))]
mod multicast_all {
    use socket2::SockRef;
    use std::io;

    fn unsupported() -> io::Error {
        io::Error::new(io::ErrorKind::Unsupported, "IP_MULTICAST_ALL is Linux-only")
    }

    pub(crate) fn multicast_all_v4(_: &SockRef<'_>) -> io::Result<bool> {
        Err(unsupported())
    }

    pub(crate) fn set_multicast_all_v4(_: &SockRef<'_>, _: bool) -> io::Result<()> {
        Err(unsupported())
    }

    pub(crate) fn multicast_all_v6(_: &SockRef<'_>) -> io::Result<bool> {
        Err(unsupported())
    }

    pub(crate) fn set_multicast_all_v6(_: &SockRef<'_>, _: bool) -> io::Result<()> {
        Err(unsupported())
    }
}

pub(crate) use multicast_all::*;

/// Whether `signal` is ignored (`SIG_IGN`) right now.
pub(crate) fn signal_ignored(signal: libc::c_int) -> bool {
    // SAFETY: an all-zero sigaction is a valid out-parameter.
    let mut old: libc::sigaction = unsafe { mem::zeroed() };
    // SAFETY: with a null new action, sigaction only reads the disposition into `old`.
    let ret = unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) };
    ret == 0 && old.sa_sigaction == libc::SIG_IGN
}

/// Sorts an I/O error into what a port does about it.
pub(crate) fn classify(err: &io::Error) -> ErrorClass {
    match err.raw_os_error() {
        Some(libc::ECONNREFUSED) => ErrorClass::Refused,
        Some(libc::EMSGSIZE) => ErrorClass::TooLong,
        _ if err.kind() == io::ErrorKind::WouldBlock => ErrorClass::WouldBlock,
        _ => ErrorClass::Other,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigusr2_is_not_ignored_by_default() {
        assert!(!signal_ignored(libc::SIGUSR2));
    }

    #[test]
    fn classifies_errno() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(classify(&e(libc::ECONNREFUSED)), ErrorClass::Refused);
        assert_eq!(classify(&e(libc::EMSGSIZE)), ErrorClass::TooLong);
        assert_eq!(classify(&e(libc::EAGAIN)), ErrorClass::WouldBlock);
        assert_eq!(classify(&e(libc::ENOBUFS)), ErrorClass::Other);
        assert_eq!(classify(&e(libc::EACCES)), ErrorClass::Other);
    }

    #[test]
    fn reads_datagram_and_flags_truncation() {
        let rx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let tx = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        tx.send_to(&[7u8; 100], rx.local_addr().unwrap()).unwrap();
        tx.send_to(&[8u8; 10], rx.local_addr().unwrap()).unwrap();
        let mut buf = [0u8; 50];
        let r = recv_from(&rx, &mut buf).unwrap();
        assert_eq!((r.len, r.truncated), (50, true));
        assert_eq!(r.from, tx.local_addr().unwrap());
        let r = recv_from(&rx, &mut buf).unwrap();
        assert_eq!((r.len, r.truncated), (10, false));
    }
}
