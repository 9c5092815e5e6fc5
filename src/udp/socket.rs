//! The seam between a port's logic and its socket: every call the port makes of the
//! kernel goes through [`PortSocket`], a kernel socket or an in-memory one
//! ([`crate::testing`]). The choice is made once per call (one `match` on a system call's
//! worth of work, a whole batch for reads and gathered writes), never per datagram.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use log::debug;
use mio::{Interest, Registry};
use socket2::{Domain, Protocol, SockRef, Socket, Type};

use crate::reactor::token::PortKey;
use crate::sys::{self, QueuedError, RecvBatch, SendBatch};
use crate::testing::network::MemSocket;
use crate::udp::options::ListenOptions;

/// A port's socket.
#[derive(Debug)]
pub(crate) enum PortSocket {
    Kernel(mio::net::UdpSocket),
    Memory(MemSocket),
}

fn in_memory() -> io::Error {
    io::Error::new(
        io::ErrorKind::Unsupported,
        "not available on an in-memory socket",
    )
}

impl PortSocket {
    /// Reads up to `count` datagrams of up to `max` bytes into `batch`.
    #[inline]
    pub(crate) fn recv(
        &mut self,
        batch: &mut RecvBatch,
        count: usize,
        max: usize,
    ) -> io::Result<usize> {
        match self {
            PortSocket::Kernel(s) => batch.recv(s, count, max),
            PortSocket::Memory(m) => m.net.borrow_mut().recv(m.addr, batch, count, max),
        }
    }

    /// Sends datagrams `from..` of `out` (segmented runs with `segmented`, the first
    /// message carrying at most `lead` datagrams).
    #[inline]
    pub(crate) fn send_batch(
        &mut self,
        out: &mut SendBatch,
        from: usize,
        connected: bool,
        segmented: bool,
        lead: usize,
    ) -> io::Result<usize> {
        match self {
            PortSocket::Kernel(s) if segmented => out.send_segmented_lead(s, from, connected, lead),
            PortSocket::Kernel(s) => out.send(s, from, connected),
            PortSocket::Memory(m) => m.net.borrow_mut().send_batch(m.addr, out, from, connected),
        }
    }

    /// Sends one datagram to `addr`, or to the peer when `to_peer`.
    pub(crate) fn send_one(
        &mut self,
        data: &[u8],
        addr: SocketAddr,
        to_peer: bool,
    ) -> io::Result<usize> {
        match self {
            PortSocket::Kernel(s) if to_peer => s.send(data),
            PortSocket::Kernel(s) => s.send_to(data, addr),
            PortSocket::Memory(m) => {
                let to = (!to_peer).then_some(addr);
                m.net.borrow_mut().send_one(m.addr, data, to, None)
            }
        }
    }

    /// [`send_one`](Self::send_one) carrying a source address and a TOS byte; in memory the
    /// source is simulated, the TOS byte is not.
    pub(crate) fn send_one_with(
        &mut self,
        data: &[u8],
        addr: SocketAddr,
        to_peer: bool,
        meta: &sys::SendMeta,
    ) -> io::Result<usize> {
        match self {
            PortSocket::Kernel(s) => {
                sys::send_with(s, data, (!to_peer).then_some(&addr), addr, meta)
            }
            PortSocket::Memory(m) => {
                let to = (!to_peer).then_some(addr);
                m.net.borrow_mut().send_one(m.addr, data, to, meta.source)
            }
        }
    }

    /// Turns the arrival address per datagram on or off (`IP_PKTINFO`, ...).
    pub(crate) fn set_arrival(&mut self, v6: bool, on: bool) -> io::Result<()> {
        match self {
            PortSocket::Kernel(s) => sys::set_arrival(s.as_raw_fd(), v6, on),
            PortSocket::Memory(m) => m.net.borrow_mut().set_arrival(m.addr, on),
        }
    }

    /// Turns the TOS byte per datagram on or off (`IP_RECVTOS`, ...); accepted and not
    /// simulated in memory.
    pub(crate) fn set_recv_tos(&mut self, v6: bool, on: bool) -> io::Result<()> {
        match self {
            PortSocket::Kernel(s) => sys::set_recv_tos(s.as_raw_fd(), v6, on),
            PortSocket::Memory(_) => Ok(()),
        }
    }

    /// Turns receive timestamps on or off (`SO_TIMESTAMPNS`); accepted and not simulated
    /// in memory.
    pub(crate) fn set_timestamps(&mut self, on: bool) -> io::Result<()> {
        match self {
            PortSocket::Kernel(s) => sys::set_timestamps(s.as_raw_fd(), on),
            PortSocket::Memory(_) => Ok(()),
        }
    }

    /// The TOS byte of every datagram sent (`IP_TOS`, ...); accepted and not simulated in
    /// memory.
    pub(crate) fn set_tos(&mut self, v6: bool, tos: u8) -> io::Result<()> {
        match self {
            PortSocket::Kernel(s) => sys::set_tos(s.as_raw_fd(), v6, tos),
            PortSocket::Memory(_) => Ok(()),
        }
    }

    pub(crate) fn connect(&mut self, addr: SocketAddr) -> io::Result<()> {
        match self {
            PortSocket::Kernel(s) => s.connect(addr),
            PortSocket::Memory(m) => m.net.borrow_mut().connect(m.addr, addr),
        }
    }

    pub(crate) fn peer_addr(&self) -> io::Result<SocketAddr> {
        match self {
            PortSocket::Kernel(s) => s.peer_addr(),
            PortSocket::Memory(m) => m
                .net
                .borrow()
                .peer(m.addr)
                .ok_or_else(|| io::Error::from_raw_os_error(libc::ENOTCONN)),
        }
    }

    pub(crate) fn local_addr(&self) -> io::Result<SocketAddr> {
        match self {
            PortSocket::Kernel(s) => s.local_addr(),
            PortSocket::Memory(m) => Ok(m.addr),
        }
    }

    /// The pending error (`SO_ERROR`), cleared by reading it.
    pub(crate) fn take_error(&mut self) -> io::Result<Option<io::Error>> {
        match self {
            PortSocket::Kernel(s) => s.take_error(),
            PortSocket::Memory(m) => m.net.borrow_mut().take_error(m.addr),
        }
    }

    /// The next entry of the error queue.
    pub(crate) fn read_queued_error(&mut self) -> io::Result<Option<QueuedError>> {
        match self {
            PortSocket::Kernel(s) => sys::read_queued_error(s.as_raw_fd()),
            PortSocket::Memory(m) => m.net.borrow_mut().read_queued_error(m.addr),
        }
    }

    /// Turns the error queue on or off (`IP_RECVERR`).
    pub(crate) fn set_recv_errors(&mut self, v6: bool, on: bool) -> io::Result<()> {
        match self {
            PortSocket::Kernel(s) => sys::set_recv_errors(s.as_raw_fd(), v6, on),
            PortSocket::Memory(m) => m.net.borrow_mut().set_error_queue(m.addr, on),
        }
    }

    /// Asks the kernel to attach its drop count to datagrams (`SO_RXQ_OVFL`).
    pub(crate) fn enable_drop_count(&mut self) -> io::Result<()> {
        match self {
            PortSocket::Kernel(s) => sys::enable_drop_count(s.as_raw_fd()),
            PortSocket::Memory(_) => Ok(()),
        }
    }

    /// Turns the kernel's receive offload (`UDP_GRO`) on or off; "unsupported" in memory.
    pub(crate) fn set_receive_offload(&mut self, on: bool) -> io::Result<()> {
        match self {
            PortSocket::Kernel(s) => sys::set_receive_offload(s.as_raw_fd(), on),
            PortSocket::Memory(_) => Err(in_memory()),
        }
    }

    /// The socket's drop count now, where the OS tells it.
    pub(crate) fn drops(&self) -> Option<u32> {
        match self {
            PortSocket::Kernel(s) => sys::drops_or_log(s.as_raw_fd()),
            PortSocket::Memory(m) => m.net.borrow().drops(m.addr),
        }
    }

    /// The socket for setting options; in memory only `SO_BROADCAST` exists (see
    /// [`set_broadcast`](Self::set_broadcast)), the rest are "unsupported".
    pub(crate) fn sock_ref(&self) -> io::Result<SockRef<'_>> {
        match self {
            PortSocket::Kernel(s) => Ok(SockRef::from(s)),
            PortSocket::Memory(_) => Err(in_memory()),
        }
    }

    pub(crate) fn set_broadcast(&mut self, on: bool) -> io::Result<()> {
        match self {
            PortSocket::Kernel(s) => s.set_broadcast(on),
            PortSocket::Memory(m) => m.net.borrow_mut().set_broadcast(m.addr, on),
        }
    }

    pub(crate) fn broadcast(&self) -> io::Result<bool> {
        match self {
            PortSocket::Kernel(s) => s.broadcast(),
            PortSocket::Memory(m) => m.net.borrow_mut().broadcast(m.addr),
        }
    }

    pub(crate) fn register(&mut self, registry: &Registry, key: PortKey) -> io::Result<()> {
        match self {
            PortSocket::Kernel(s) => registry.register(s, key.token(), Interest::READABLE),
            PortSocket::Memory(_) => Ok(()),
        }
    }

    /// Readable always; writable too while `writable`.
    pub(crate) fn reregister(
        &mut self,
        registry: &Registry,
        key: PortKey,
        writable: bool,
    ) -> io::Result<()> {
        match self {
            PortSocket::Kernel(s) => {
                let interest = if writable {
                    Interest::READABLE | Interest::WRITABLE
                } else {
                    Interest::READABLE
                };
                registry.reregister(s, key.token(), interest)
            }
            PortSocket::Memory(m) => {
                m.net.borrow_mut().set_want_writable(m.addr, writable);
                Ok(())
            }
        }
    }

    pub(crate) fn deregister(&mut self, registry: &Registry) -> io::Result<()> {
        match self {
            PortSocket::Kernel(s) => registry.deregister(s),
            PortSocket::Memory(m) => {
                m.net.borrow_mut().set_want_writable(m.addr, false);
                Ok(())
            }
        }
    }
}

/// A non-blocking, close-on-exec UDP socket bound to `addr` with the options applied.
pub(crate) fn bind_socket(
    addr: SocketAddr,
    opts: &ListenOptions,
) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    if opts.listen_multiple {
        socket.set_reuse_address(true)?;
        match socket.set_reuse_port(true) {
            // Old kernels lack SO_REUSEPORT; REUSEADDR alone still shares multicast ports.
            Err(e) if sys::option_unsupported(&e) => {
                debug!("SO_REUSEPORT unsupported, sharing {addr} with SO_REUSEADDR alone");
            }
            other => other?,
        }
    }
    apply_buffer_sizes(&socket, opts)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

pub(crate) fn apply_buffer_sizes(socket: &Socket, opts: &ListenOptions) -> std::io::Result<()> {
    // The kernel takes an int and caps it at its own maximum; a larger request must
    // not wrap into a tiny buffer.
    let cap = |n: usize| n.min(i32::MAX as usize);
    if let Some(n) = opts.recv_buffer_size {
        socket.set_recv_buffer_size(cap(n))?;
    }
    if let Some(n) = opts.send_buffer_size {
        socket.set_send_buffer_size(cap(n))?;
    }
    Ok(())
}
