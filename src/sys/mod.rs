//! Every `unsafe` block and every OS-specific syscall of the crate lives here.
//!
//! The files: `linux.rs` and `other_unix.rs` (one per platform family, the same names in
//! each, selected as `platform`); `unix.rs` (what every Unix shares, with `cvt` and
//! `retrying`, the one wrapper every system call's return goes through); `batch.rs` (the
//! batches, platform-independent); `cmsg.rs` (the one walk over received control
//! messages, and the room each kind needs); `errno.rs` (every decision taken on an errno); `kernel_reports.rs` (what
//! the port keeps of an error-queue entry, and the drop count).
//!
//! The whole contract, as exported below:
//!
//! - Adoption: `inspect_socket(fd) -> Result<SocketAddr, Error>` (that `fd` is an open,
//!   bound IPv4 or IPv6 datagram socket, and its address, without touching the fd);
//!   `dup_cloexec(fd) -> io::Result<OwnedFd>` (a close-on-exec duplicate).
//! - Interfaces: `interface_index(name) -> io::Result<u32>`, `interface_exists(index)`.
//! - Multicast: `multicast_all_v4/v6`, `set_multicast_all_v4/v6` (Linux's
//!   `IP_MULTICAST_ALL`, "unsupported" elsewhere); `source_membership` (source-specific
//!   joins and leaves, IPv4 and IPv6).
//! - Signals: `signal_ignored(signal) -> bool` (whether its disposition is `SIG_IGN`).
//! - Batches: `RecvBatch`, `SendBatch` and `Datagram`, reusable batches read with one
//!   `recvmmsg` and sent with one `sendmmsg` on Linux (a `recvmsg`/`sendmsg` loop
//!   elsewhere), allocating nothing per datagram, and filled or drained in memory by the
//!   test kit's socket (`RecvBatch::fill`, `SendBatch::note_sent`).
//! - Receive offload: `set_receive_offload` (`UDP_GRO`); a coalesced read's
//!   `Datagram::segment_size`; `ControlSpace`, the control room a receive slot reserves
//!   for the options on, and `Datagram::control_truncated` (`MSG_CTRUNC`).
//! - Per datagram: `set_arrival` (`IP_PKTINFO`/`IPV6_RECVPKTINFO`), `set_recv_tos`
//!   (`IP_RECVTOS`/`IPV6_RECVTCLASS`), `set_timestamps` (`SO_TIMESTAMPNS`) and `set_tos`
//!   (`IP_TOS`/`IPV6_TCLASS`); `recv_meta`, what a datagram's control messages say
//!   (`Arrival`); `SendMeta`, a source address and TOS byte a send carries (in a
//!   `SendBatch`, or alone with `send_with`), where `SEND_META` says the OS can.
//! - What the kernel reports besides datagrams: `enable_drop_count`, `drops_or_log`
//!   (`SO_RXQ_OVFL`, `SO_MEMINFO`), `set_recv_errors`, `read_queued_error` (the error
//!   queue, `IP_RECVERR`/`IPV6_RECVERR`) and its entries, `QueuedError`.
//! - Errors: `classify(&io::Error) -> ErrorClass`, `is_icmp_error`, `is_hard_icmp_error`,
//!   `option_unsupported`, `segmentation_refused`.
//! - Benchmarks only: `pin_to_cpu(cpu)`.

#[cfg(unix)]
mod batch;
#[cfg(unix)]
mod cmsg;
mod errno;
#[cfg(unix)]
mod kernel_reports;
#[cfg(target_os = "linux")]
#[path = "linux.rs"]
mod platform;
#[cfg(all(unix, not(target_os = "linux")))]
#[path = "other_unix.rs"]
mod platform;
#[cfg(unix)]
mod unix;

pub use batch::{Datagram, Filled, RecvBatch, SendBatch, send_with};
pub use cmsg::{Arrival, ControlSpace, SendMeta};
pub use errno::segmentation_refused;
pub use platform::pin_to_cpu;

pub(crate) use errno::{
    ErrorClass, classify, is_hard_icmp_error, is_icmp_error, option_unsupported,
};
pub(crate) use kernel_reports::{QueuedError, drops_or_log};
pub(crate) use platform::{
    SEND_META, enable_drop_count, multicast_all_v4, multicast_all_v6, read_queued_error, recv_meta,
    set_arrival, set_multicast_all_v4, set_multicast_all_v6, set_receive_offload, set_recv_errors,
    set_recv_tos, set_timestamps, set_tos,
};
pub(crate) use unix::{
    dup_cloexec, inspect_socket, interface_exists, interface_index, signal_ignored,
    source_membership,
};
