//! What every Unix shares: the one wrapper of a system call's return, socket address
//! conversion, socket inspection for adoption, `dup`, interfaces, signal dispositions,
//! source-specific multicast.

use std::io;
use std::mem::{self, MaybeUninit};
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};
use std::os::fd::{FromRawFd, OwnedFd, RawFd};

use crate::error::Error;
use crate::udp::addr::Interface;

/// A system call's return type, whose `-1` means failure with `errno` set.
pub(super) trait SysRet: Copy + PartialEq {
    const FAILED: Self;
}

impl SysRet for libc::c_int {
    const FAILED: Self = -1;
}

impl SysRet for isize {
    const FAILED: Self = -1;
}

/// The one wrapper of a system call's return: `-1` becomes `io::Error::last_os_error()`.
pub(super) fn cvt<T: SysRet>(ret: T) -> io::Result<T> {
    if ret == T::FAILED {
        Err(io::Error::last_os_error())
    } else {
        Ok(ret)
    }
}

/// [`cvt`] of a call made again for as long as a signal interrupts it (`EINTR`).
pub(super) fn retrying<T: SysRet>(mut call: impl FnMut() -> T) -> io::Result<T> {
    loop {
        match cvt(call()) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            done => return done,
        }
    }
}

/// Converts a kernel socket address into a `SocketAddr` (IPv4 and IPv6 only).
///
/// # Safety
///
/// The first `len` bytes of `storage` must be a socket address as the kernel wrote it.
#[inline]
pub(super) unsafe fn sockaddr_to_std(
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

/// Writes `addr` into `storage` as the kernel's socket address; returns its length.
#[inline]
pub(super) fn std_to_sockaddr(
    addr: &SocketAddr,
    storage: &mut libc::sockaddr_storage,
) -> libc::socklen_t {
    let at = (storage as *mut libc::sockaddr_storage).cast::<u8>();
    match addr {
        SocketAddr::V4(a) => {
            let sin = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                ..zeroed_sin()
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in.
            unsafe { at.cast::<libc::sockaddr_in>().write(sin) };
            mem::size_of::<libc::sockaddr_in>() as libc::socklen_t
        }
        SocketAddr::V6(a) => {
            // Linux names every field; BSDs add `sin6_len`, left zero by the update.
            #[allow(clippy::needless_update)]
            let sin6 = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: a.flowinfo(),
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: a.scope_id(),
                ..zeroed_sin6()
            };
            // SAFETY: sockaddr_storage is larger than and aligned for sockaddr_in6.
            unsafe { at.cast::<libc::sockaddr_in6>().write(sin6) };
            mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t
        }
    }
}

fn zeroed_sin() -> libc::sockaddr_in {
    // SAFETY: sockaddr_in is plain old data; all-zero is a valid value.
    unsafe { mem::zeroed() }
}

fn zeroed_sin6() -> libc::sockaddr_in6 {
    // SAFETY: sockaddr_in6 is plain old data; all-zero is a valid value.
    unsafe { mem::zeroed() }
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

/// Whether `signal` is ignored (`SIG_IGN`) right now.
pub(crate) fn signal_ignored(signal: libc::c_int) -> bool {
    // SAFETY: an all-zero sigaction is a valid out-parameter.
    let mut old: libc::sigaction = unsafe { mem::zeroed() };
    // SAFETY: with a null new action, sigaction only reads the disposition into `old`.
    let ret = unsafe { libc::sigaction(signal, std::ptr::null(), &mut old) };
    ret == 0 && old.sa_sigaction == libc::SIG_IGN
}

/// Whether a network interface has index `index`.
pub(crate) fn interface_exists(index: u32) -> bool {
    let mut name = [0 as libc::c_char; libc::IF_NAMESIZE];
    // SAFETY: `name` has the IF_NAMESIZE bytes if_indextoname may write.
    !unsafe { libc::if_indextoname(index, name.as_mut_ptr()) }.is_null()
}

/// The systems where libc has `struct group_source_req` and `MCAST_JOIN_SOURCE_GROUP`, and
/// socket2 `join_ssm_v4`: there, source-specific multicast works; elsewhere it is
/// "unsupported".
macro_rules! with_ssm {
    ($($item:item)*) => {$(
        #[cfg(any(
            target_os = "linux",
            target_os = "android",
            target_os = "freebsd",
            target_vendor = "apple"
        ))]
        $item
    )*};
}

with_ssm! {
    /// Joins (`join`) or leaves the source-specific group `(source, group)` on `interface`.
    ///
    /// IPv4 on an interface address (or any interface): `IP_ADD_SOURCE_MEMBERSHIP` /
    /// `IP_DROP_SOURCE_MEMBERSHIP`. IPv4 on an interface index, and IPv6 (on an index, or 0
    /// for any): the protocol-independent `MCAST_JOIN_SOURCE_GROUP` /
    /// `MCAST_LEAVE_SOURCE_GROUP`, at `IPPROTO_IP` or `IPPROTO_IPV6`. The caller checks the
    /// families; a mix of them, or an IPv6 group on an interface address, is `InvalidInput`.
    pub(crate) fn source_membership(
        sock: &socket2::SockRef<'_>,
        join: bool,
        source: IpAddr,
        group: IpAddr,
        interface: Interface,
    ) -> io::Result<()> {
        use std::os::fd::AsRawFd;
        let index = match (source, group, interface) {
            (IpAddr::V4(s), IpAddr::V4(g), Interface::Any | Interface::V4(_)) => {
                let address = match interface {
                    Interface::V4(a) => a,
                    _ => Ipv4Addr::UNSPECIFIED,
                };
                return if join {
                    sock.join_ssm_v4(&s, &g, &address)
                } else {
                    sock.leave_ssm_v4(&s, &g, &address)
                };
            }
            (IpAddr::V4(_), IpAddr::V4(_), Interface::Index(i)) => i,
            (IpAddr::V6(_), IpAddr::V6(_), Interface::Any) => 0,
            (IpAddr::V6(_), IpAddr::V6(_), Interface::Index(i)) => i,
            _ => return Err(io::Error::from(io::ErrorKind::InvalidInput)),
        };
        source_group_request(sock.as_raw_fd(), join, index, source, group)
    }
}

/// Source-specific multicast where the system (or libc) lacks it: "unsupported".
#[cfg(not(any(
    target_os = "linux",
    target_os = "android",
    target_os = "freebsd",
    target_vendor = "apple"
)))]
pub(crate) fn source_membership(
    _sock: &socket2::SockRef<'_>,
    _join: bool,
    _source: IpAddr,
    _group: IpAddr,
    _interface: Interface,
) -> io::Result<()> {
    Err(io::Error::new(
        io::ErrorKind::Unsupported,
        "source-specific multicast is not supported on this system",
    ))
}

with_ssm! {
    /// `MCAST_JOIN_SOURCE_GROUP` / `MCAST_LEAVE_SOURCE_GROUP` of `(source, group)` on the
    /// interface with index `index` (0: the kernel picks by its routes), at the level of the
    /// group's family. The families must agree (checked by the caller).
    fn source_group_request(
        fd: RawFd,
        join: bool,
        index: u32,
        source: IpAddr,
        group: IpAddr,
    ) -> io::Result<()> {
        let level = if group.is_ipv4() {
            libc::IPPROTO_IP
        } else {
            libc::IPPROTO_IPV6
        };
        let name = if join {
            libc::MCAST_JOIN_SOURCE_GROUP
        } else {
            libc::MCAST_LEAVE_SOURCE_GROUP
        };
        // SAFETY: group_source_req is plain old data; all-zero is a valid value.
        let mut req: libc::group_source_req = unsafe { mem::zeroed() };
        req.gsr_interface = index;
        // Whole fields are assigned (Apple packs the struct: no references into it).
        req.gsr_group = storage_for(group);
        req.gsr_source = storage_for(source);
        // SAFETY: `req` is a live group_source_req and its size is passed; the kernel only
        // reads it.
        cvt(unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&req as *const libc::group_source_req).cast(),
                mem::size_of::<libc::group_source_req>() as libc::socklen_t,
            )
        })?;
        Ok(())
    }

    /// `ip` (port 0) as a kernel socket address in a `sockaddr_storage`, with its length
    /// field set where the system has one (the BSDs check it here).
    fn storage_for(ip: IpAddr) -> libc::sockaddr_storage {
        // SAFETY: sockaddr_storage is plain old data; all-zero is a valid value.
        let mut storage: libc::sockaddr_storage = unsafe { mem::zeroed() };
        let _len = std_to_sockaddr(&SocketAddr::new(ip, 0), &mut storage);
        #[cfg(any(target_os = "freebsd", target_vendor = "apple"))]
        {
            storage.ss_len = _len as u8;
        }
        storage
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sigusr2_is_not_ignored_by_default() {
        assert!(!signal_ignored(libc::SIGUSR2));
    }
}
