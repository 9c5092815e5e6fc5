//! Every `unsafe` block and every OS-specific syscall of the crate lives here.
//!
//! The whole contract, as exported below (`unix.rs` is selected under the module name
//! `imp`; `batch.rs` and `kernel_reports.rs` keep a Linux and an other-Unix half each):
//!
//! - Adoption: `inspect_socket(fd) -> Result<SocketAddr, Error>` (that `fd` is an open,
//!   bound IPv4 or IPv6 datagram socket, and its address, without touching the fd);
//!   `dup_cloexec(fd) -> io::Result<OwnedFd>` (a close-on-exec duplicate).
//! - Interfaces: `interface_index(name) -> io::Result<u32>`, `interface_exists(index)`.
//! - Multicast: `multicast_all_v4/v6`, `set_multicast_all_v4/v6` (Linux's
//!   `IP_MULTICAST_ALL`, "unsupported" elsewhere).
//! - Signals: `signal_ignored(signal) -> bool` (whether its disposition is `SIG_IGN`).
//! - Batches (`batch.rs`): `RecvBatch`, `SendBatch` and `Datagram`, reusable batches read
//!   with one `recvmmsg` and sent with one `sendmmsg` on Linux (a `recvmsg`/`sendmsg` loop
//!   elsewhere), allocating nothing per datagram; `segmentation_refused(&io::Error)`.
//! - What the kernel reports besides datagrams (`kernel_reports.rs`): `enable_drop_count`,
//!   `drops_or_log` (`SO_RXQ_OVFL`, `SO_MEMINFO`), `set_recv_errors`, `read_queued_error`
//!   (the error queue, `IP_RECVERR`/`IPV6_RECVERR`).
//! - Errors: `classify(&io::Error) -> ErrorClass` and `is_icmp_error(&io::Error)`, the one
//!   place errno is sorted into what the port does about it.
//! - Benchmarks only: `pin_to_cpu(cpu)`.

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
    QueuedError, drops_or_log, enable_drop_count, read_queued_error, set_recv_errors,
};

pub(crate) use imp::{
    classify, dup_cloexec, inspect_socket, interface_exists, interface_index, is_icmp_error,
    option_unsupported,
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
