//! What the kernel tells a socket besides datagrams: its receive-queue drop count
//! (`SO_RXQ_OVFL`, `SO_MEMINFO`) and its error queue (`IP_RECVERR`/`IPV6_RECVERR`), which
//! names the destination an ICMP error was about. Linux only; elsewhere the calls say
//! "unsupported" or report nothing.

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

/// One error read from a socket's error queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct QueuedError {
    /// The destination of the datagram the error is about (the kernel hands back its
    /// address), when there was one.
    pub(crate) dest: Option<SocketAddr>,
    /// The error (`ECONNREFUSED` for a port unreachable, `EHOSTUNREACH` ...).
    pub(crate) errno: i32,
    /// Who reported it: the host that sent the ICMP message, for an ICMP error.
    pub(crate) reporter: Option<IpAddr>,
    /// The error came in an ICMP or ICMPv6 message (not a local one).
    pub(crate) icmp: bool,
}

#[cfg(target_os = "linux")]
mod imp {
    use super::QueuedError;
    use crate::sys::unix::sockaddr_to_std;
    use std::io;
    use std::mem;
    use std::os::fd::RawFd;

    /// Whether the target uses `asm-generic/socket.h`'s option numbers (libc does not
    /// export the two below for Linux).
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

    /// `SO_RXQ_OVFL` and `SO_MEMINFO` where their numbers are known; `None` elsewhere.
    pub(super) mod consts {
        pub(crate) const SO_RXQ_OVFL: Option<libc::c_int> = if super::GENERIC_SOCKET_H {
            Some(40)
        } else {
            None
        };
        pub(crate) const SO_MEMINFO: Option<libc::c_int> = if super::GENERIC_SOCKET_H {
            Some(55)
        } else {
            None
        };
    }

    fn unsupported() -> io::Error {
        io::Error::from(io::ErrorKind::Unsupported)
    }

    fn set_int(
        fd: RawFd,
        level: libc::c_int,
        name: libc::c_int,
        value: libc::c_int,
    ) -> io::Result<()> {
        // SAFETY: `value` is a live c_int and its size is passed; the kernel only reads it.
        let ret = unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&value as *const libc::c_int).cast(),
                mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        };
        if ret == 0 {
            Ok(())
        } else {
            Err(io::Error::last_os_error())
        }
    }

    /// Has the kernel attach its receive-queue drop count to every datagram read once
    /// any was dropped (`SO_RXQ_OVFL`).
    pub(crate) fn enable_drop_count(fd: RawFd) -> io::Result<()> {
        let name = consts::SO_RXQ_OVFL.ok_or_else(unsupported)?;
        set_int(fd, libc::SOL_SOCKET, name, 1)
    }

    /// The socket's drop count now (`SO_MEMINFO`'s `SK_MEMINFO_DROPS`).
    pub(crate) fn socket_drops(fd: RawFd) -> io::Result<u32> {
        let name = consts::SO_MEMINFO.ok_or_else(unsupported)?;
        // SK_MEMINFO_VARS is 9 today; room for more, which the kernel may fill.
        let mut info = [0u32; 16];
        let mut len = mem::size_of_val(&info) as libc::socklen_t;
        // SAFETY: `info` is writable for `len` bytes; the kernel writes at most that much
        // and updates `len`.
        let ret = unsafe {
            libc::getsockopt(
                fd,
                libc::SOL_SOCKET,
                name,
                info.as_mut_ptr().cast(),
                &mut len,
            )
        };
        if ret != 0 {
            return Err(io::Error::last_os_error());
        }
        let at = libc::SK_MEMINFO_DROPS as usize;
        if (len as usize) < (at + 1) * mem::size_of::<u32>() {
            return Err(unsupported());
        }
        Ok(info[at])
    }

    /// Turns the error queue on or off (`IP_RECVERR`, and `IPV6_RECVERR` on an IPv6
    /// socket, which may also carry IPv4-mapped traffic). Off empties the queue.
    pub(crate) fn set_recv_errors(fd: RawFd, v6: bool, on: bool) -> io::Result<()> {
        let value = libc::c_int::from(on);
        if v6 {
            set_int(fd, libc::IPPROTO_IPV6, libc::IPV6_RECVERR, value)?;
            // A dual-stack socket reports IPv4 errors under IP_RECVERR; a v6-only one
            // may refuse it, which changes nothing.
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
        // SAFETY: all-zero is a valid sockaddr_storage, msghdr and byte array.
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
        loop {
            // SAFETY: every pointer in `msg` points at a live local buffer of the length
            // given with it; MSG_ERRQUEUE never blocks.
            let ret =
                unsafe { libc::recvmsg(fd, &mut msg, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT) };
            if ret >= 0 {
                break;
            }
            let err = io::Error::last_os_error();
            match err.kind() {
                io::ErrorKind::Interrupted => continue,
                io::ErrorKind::WouldBlock => return Ok(None),
                _ => return Err(err),
            }
        }
        // SAFETY: the kernel wrote `msg_namelen` bytes of the destination's address
        // (zeroed before, so the rest is initialised).
        let dest = unsafe { sockaddr_to_std(&name, msg.msg_namelen) };
        let mut found = None;
        // SAFETY: `msg` describes `control`, into which the kernel wrote
        // `msg_controllen` bytes of well-formed control messages; CMSG_FIRSTHDR and
        // CMSG_NXTHDR stay inside that length.
        let mut cmsg = unsafe { libc::CMSG_FIRSTHDR(&msg) };
        while !cmsg.is_null() {
            // SAFETY: a non-null cmsg from CMSG_FIRSTHDR/NXTHDR points at a whole header.
            let (level, kind) = unsafe { ((*cmsg).cmsg_level, (*cmsg).cmsg_type) };
            let is_error = (level == libc::IPPROTO_IP && kind == libc::IP_RECVERR)
                || (level == libc::IPPROTO_IPV6 && kind == libc::IPV6_RECVERR);
            if is_error {
                // SAFETY: an IP_RECVERR/IPV6_RECVERR message carries a sock_extended_err
                // followed by the offender's address (SO_EE_OFFENDER); read unaligned,
                // as the data need not be aligned for the struct.
                let ee = unsafe {
                    std::ptr::read_unaligned(
                        libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>(),
                    )
                };
                let icmp = ee.ee_origin == libc::SO_EE_ORIGIN_ICMP
                    || ee.ee_origin == libc::SO_EE_ORIGIN_ICMP6;
                let reporter = if icmp {
                    // SAFETY: as above; the offender follows the struct inside the
                    // message, and is copied out into a zeroed storage before reading.
                    unsafe {
                        let off = libc::SO_EE_OFFENDER(
                            libc::CMSG_DATA(cmsg).cast::<libc::sock_extended_err>(),
                        );
                        let mut storage: libc::sockaddr_storage = mem::zeroed();
                        let room = (*cmsg).cmsg_len as usize - (off as usize - cmsg as usize);
                        let n = room.min(mem::size_of::<libc::sockaddr_storage>());
                        std::ptr::copy_nonoverlapping(
                            off.cast::<u8>(),
                            (&mut storage as *mut libc::sockaddr_storage).cast::<u8>(),
                            n,
                        );
                        sockaddr_to_std(&storage, n as libc::socklen_t).map(|a| a.ip())
                    }
                } else {
                    None
                };
                found = Some(QueuedError {
                    dest,
                    errno: ee.ee_errno as i32,
                    reporter,
                    icmp,
                });
            }
            // SAFETY: as for CMSG_FIRSTHDR.
            cmsg = unsafe { libc::CMSG_NXTHDR(&msg, cmsg) };
        }
        // A queued entry without an extended error (not expected): report what is known.
        Ok(Some(found.unwrap_or(QueuedError {
            dest,
            errno: 0,
            reporter: None,
            icmp: false,
        })))
    }
}

#[cfg(not(target_os = "linux"))]
mod imp {
    use super::QueuedError;
    use std::io;
    use std::os::fd::RawFd;

    fn unsupported() -> io::Error {
        io::Error::from(io::ErrorKind::Unsupported)
    }

    pub(crate) fn enable_drop_count(_fd: RawFd) -> io::Result<()> {
        Err(unsupported())
    }

    pub(crate) fn socket_drops(_fd: RawFd) -> io::Result<u32> {
        Err(unsupported())
    }

    pub(crate) fn set_recv_errors(_fd: RawFd, _v6: bool, _on: bool) -> io::Result<()> {
        Err(unsupported())
    }

    pub(crate) fn read_queued_error(_fd: RawFd) -> io::Result<Option<QueuedError>> {
        Ok(None)
    }
}

pub(crate) use imp::{enable_drop_count, read_queued_error, set_recv_errors, socket_drops};

/// `SO_RXQ_OVFL`'s option and control-message type, where known.
#[cfg(target_os = "linux")]
pub(super) const SO_RXQ_OVFL: Option<libc::c_int> = imp::consts::SO_RXQ_OVFL;
#[cfg(not(target_os = "linux"))]
pub(super) const SO_RXQ_OVFL: Option<libc::c_int> = None;

/// The socket's drop count, or `None` where the OS cannot tell (a failure is logged).
pub(crate) fn drops_or_log(fd: RawFd) -> Option<u32> {
    match socket_drops(fd) {
        Ok(n) => Some(n),
        Err(e) if e.kind() == io::ErrorKind::Unsupported => None,
        Err(e) => {
            log::debug!("SO_MEMINFO: {e}");
            None
        }
    }
}
