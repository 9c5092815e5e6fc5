//! Every decision the crate takes on an errno, in one place: what an error means to a
//! port, which errors an ICMP message raises, which mean "the kernel cannot do that".

use std::io;

/// What an I/O error means to a port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ErrorClass {
    /// Nothing more to do now (`EAGAIN`/`EWOULDBLOCK`).
    WouldBlock,
    /// A peer refused an earlier datagram (`ECONNREFUSED`, from an ICMP port unreachable).
    Refused,
    /// The datagram is too long for the path or the protocol (`EMSGSIZE`).
    TooLong,
    /// Anything else: reported to the caller, the port goes on.
    Other,
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

/// Whether an error is one the kernel raises for an ICMP error (unreachable, time
/// exceeded, parameter problem, fragmentation needed) about an earlier datagram.
pub(crate) fn is_icmp_error(err: &io::Error) -> bool {
    matches!(
        err.raw_os_error(),
        Some(
            libc::ECONNREFUSED
                | libc::EHOSTUNREACH
                | libc::ENETUNREACH
                | libc::EHOSTDOWN
                | libc::ENOPROTOOPT
                | libc::EMSGSIZE
                | libc::EPROTO
                | libc::EOPNOTSUPP
        )
    )
}

/// Whether an ICMP error with this errno is a hard one, which Linux reports to a
/// connected socket without an error queue (port or protocol unreachable, fragmentation
/// needed); host and network unreachable are soft errors it drops there.
pub(crate) fn is_hard_icmp_error(errno: i32) -> bool {
    matches!(
        errno,
        libc::ECONNREFUSED | libc::ENOPROTOOPT | libc::EMSGSIZE
    )
}

/// Whether a socket option failed because the kernel lacks it (`ENOPROTOOPT`).
pub(crate) fn option_unsupported(err: &io::Error) -> bool {
    err.raw_os_error() == Some(libc::ENOPROTOOPT)
}

/// Whether an error from [`SendBatch::send_segmented`](super::SendBatch::send_segmented)
/// says the kernel, the route or the device cannot segment (so the same datagrams should
/// go again with `send`) rather than that the datagrams themselves failed.
pub fn segmentation_refused(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EMSGSIZE | libc::EIO | libc::EINVAL | libc::EOPNOTSUPP | libc::ENOPROTOOPT)
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classifies_errno() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(classify(&e(libc::ECONNREFUSED)), ErrorClass::Refused);
        assert_eq!(classify(&e(libc::EMSGSIZE)), ErrorClass::TooLong);
        assert_eq!(classify(&e(libc::EAGAIN)), ErrorClass::WouldBlock);
        assert_eq!(classify(&e(libc::ENOBUFS)), ErrorClass::Other);
        assert_eq!(classify(&e(libc::EACCES)), ErrorClass::Other);
    }
}
