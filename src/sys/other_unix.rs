//! Every Unix but Linux: the names of `linux.rs`, with one `recvmsg`/`sendmsg` per
//! datagram for the batch calls and "unsupported" (or nothing to report) for the rest.

use std::io;
use std::net::SocketAddr;
use std::os::fd::RawFd;

use socket2::SockRef;

use super::QueuedError;
use super::cmsg::{Arrival, ControlWriter, SendMeta};
use super::unix::retrying;

/// No `UDP_SEGMENT` here: `send_segmented` sends one datagram per message.
pub(super) const SEGMENTATION: bool = false;

/// No `SO_RXQ_OVFL` here.
pub(super) const SO_RXQ_OVFL: Option<libc::c_int> = None;

/// Linux's `struct mmsghdr`, for the same preparation code.
#[repr(C)]
#[derive(Clone, Copy)]
pub(super) struct Mmsg {
    pub(super) msg_hdr: libc::msghdr,
    pub(super) msg_len: libc::c_uint,
}

/// One call per header, with the semantics of the Linux batch calls: the count done so
/// far, or the error if the first one failed.
fn each(hdrs: &mut [Mmsg], mut call: impl FnMut(&mut libc::msghdr) -> isize) -> io::Result<usize> {
    let mut done = 0;
    while done < hdrs.len() {
        match retrying(|| call(&mut hdrs[done].msg_hdr)) {
            Ok(n) => {
                hdrs[done].msg_len = n as libc::c_uint;
                done += 1;
            }
            Err(e) if done == 0 => return Err(e),
            Err(_) => break,
        }
    }
    Ok(done)
}

pub(super) fn recv_mmsg(fd: RawFd, hdrs: &mut [Mmsg]) -> io::Result<usize> {
    // SAFETY: each header is prepared as for recvmmsg (see RecvBatch::recv).
    each(hdrs, |h| unsafe { libc::recvmsg(fd, h, 0) })
}

pub(super) fn send_mmsg(fd: RawFd, hdrs: &mut [Mmsg]) -> io::Result<usize> {
    // SAFETY: each header is prepared as for sendmmsg (see SendBatch::send).
    each(hdrs, |h| unsafe { libc::sendmsg(fd, h, 0) })
}

fn unsupported() -> io::Error {
    io::Error::new(io::ErrorKind::Unsupported, "Linux-only")
}

pub(crate) fn enable_drop_count(_fd: RawFd) -> io::Result<()> {
    Err(unsupported())
}

/// No receive offload here.
pub(super) const UDP_GRO: libc::c_int = -1;
pub(super) const RECEIVE_OFFLOAD: bool = false;

pub(crate) fn set_receive_offload(_fd: RawFd, _on: bool) -> io::Result<()> {
    Err(unsupported())
}

/// Sends carry no source address or TOS byte here.
pub(crate) const SEND_META: bool = false;

pub(crate) fn set_arrival(_fd: RawFd, _v6: bool, _on: bool) -> io::Result<()> {
    Err(unsupported())
}

pub(crate) fn set_recv_tos(_fd: RawFd, _v6: bool, _on: bool) -> io::Result<()> {
    Err(unsupported())
}

pub(crate) fn set_tos(_fd: RawFd, _v6: bool, _tos: u8) -> io::Result<()> {
    Err(unsupported())
}

pub(crate) fn set_timestamps(_fd: RawFd, _on: bool) -> io::Result<()> {
    Err(unsupported())
}

/// Nothing is asked of the kernel here, so nothing comes.
pub(crate) fn recv_meta(_control: &[u8], _meta: &mut Arrival) {}

/// Nothing is asked of the kernel here, so the test kit writes nothing either.
pub(crate) fn write_arrival(_w: &mut ControlWriter<'_>, _destination: std::net::IpAddr) -> bool {
    false
}

/// Never called here ([`SEND_META`] is false): writes nothing.
pub(crate) fn write_send_meta(
    _w: &mut ControlWriter<'_>,
    meta: &SendMeta,
    _dest: &SocketAddr,
) -> bool {
    meta.is_empty()
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

/// Pinning is Linux-only: elsewhere this says so.
pub fn pin_to_cpu(_cpu: usize) -> io::Result<()> {
    Err(unsupported())
}
