//! What the kernel tells a socket besides datagrams, as the port sees it: an entry of its
//! error queue, and its drop count (the calls that read them are the platform's:
//! `linux.rs`, `other_unix.rs`).

use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

use super::platform::socket_drops;

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
