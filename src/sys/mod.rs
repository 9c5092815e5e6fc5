//! Every `unsafe` block and every OS-specific syscall of the crate lives here.
//!
//! The contract each platform file fulfils (only `unix.rs` exists today, selected below
//! under the one module name `imp`, so call sites carry no `cfg`):
//!
//! - `inspect_socket(fd) -> Result<SocketAddr, Error>`: for adoption, that `fd` is an open,
//!   bound IPv4 or IPv6 datagram socket, and its address, without touching the fd.
//! - `dup_cloexec(fd) -> io::Result<OwnedFd>`: a close-on-exec duplicate of `fd`.
//! - `interface_index(name) -> io::Result<u32>`: a network interface's index by name.
//! - `multicast_all_v4/v6`, `set_multicast_all_v4/v6`: Linux's `IP_MULTICAST_ALL`
//!   options, "unsupported" elsewhere.
//! - `signal_ignored(signal) -> bool`: whether a signal's disposition is `SIG_IGN`.
//! - `RecvBatch` / `SendBatch` (`batch.rs`): reusable batches of datagrams read with one
//!   `recvmmsg` and sent with one `sendmmsg` on Linux (a `recvmsg`/`sendmsg` loop
//!   elsewhere), allocating nothing per datagram.
//! - `classify(&io::Error) -> ErrorClass`: the one place errno is sorted into what the
//!   port does about it.

#[cfg(unix)]
mod batch;
#[cfg(unix)]
#[path = "unix.rs"]
mod imp;
#[cfg(unix)]
mod kernel_reports;
#[cfg(unix)]
use imp as unix;

pub use batch::{Datagram, RecvBatch, SendBatch, segmentation_refused};
pub use imp::pin_to_cpu;

pub(crate) use kernel_reports::{
    drops_or_log, enable_drop_count, read_queued_error, set_recv_errors,
};

pub(crate) use imp::{
    classify, dup_cloexec, inspect_socket, interface_exists, interface_index, is_icmp_error,
};
pub(crate) use imp::{
    multicast_all_v4, multicast_all_v6, set_multicast_all_v4, set_multicast_all_v6, signal_ignored,
};

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
