//! Every `unsafe` block and every OS-specific syscall of the crate lives here.
//!
//! The contract each platform file fulfils (only `unix.rs` exists today, selected below
//! under the one module name `imp`, so call sites carry no `cfg`):
//!
//! - `recv_from(fd, buf) -> io::Result<Received>`: one datagram into `buf`, with its
//!   sender and whether it was longer than `buf` (`MSG_TRUNC`); `EINTR` retried.
//! - `inspect_socket(fd) -> Result<SocketAddr, Error>`: for adoption, that `fd` is an open,
//!   bound IPv4 or IPv6 datagram socket, and its address, without touching the fd.
//! - `dup_cloexec(fd) -> io::Result<OwnedFd>`: a close-on-exec duplicate of `fd`.
//! - `interface_index(name) -> io::Result<u32>`: a network interface's index by name.
//! - `multicast_all_v4/v6`, `set_multicast_all_v4/v6`: Linux's `IP_MULTICAST_ALL`
//!   options, "unsupported" elsewhere.
//! - `signal_ignored(signal) -> bool`: whether a signal's disposition is `SIG_IGN`.
//! - `classify(&io::Error) -> ErrorClass`: the one place errno is sorted into what the
//!   port does about it.

#[cfg(unix)]
#[path = "unix.rs"]
mod imp;

pub(crate) use imp::{classify, dup_cloexec, inspect_socket, interface_index, recv_from};
pub(crate) use imp::{
    multicast_all_v4, multicast_all_v6, set_multicast_all_v4, set_multicast_all_v6, signal_ignored,
};

use std::net::SocketAddr;

/// One datagram read by [`recv_from`].
#[derive(Debug, Clone, Copy)]
pub(crate) struct Received {
    /// Bytes written into the buffer.
    pub(crate) len: usize,
    /// The datagram was longer than the buffer; its tail is lost.
    pub(crate) truncated: bool,
    /// The sender.
    pub(crate) from: SocketAddr,
}

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
