//! `UdpTransport<'_>`: the short-lived view of its port that each callback is handed.

use std::any::TypeId;
use std::fmt;
use std::net::SocketAddr;
use std::time::Duration;

use socket2::SockRef;

use crate::error::{Error, Result};
use crate::protocol::short_type_name;
use crate::reactor::timer::DelayedCall;
use crate::reactor::{Lifecycle, Reactor};
use crate::sys;
use crate::udp::addr::{PeerAddr, same_family};
use crate::udp::port::{PortCore, PortStats, PortTimerFn, once};

/// What a protocol's hooks use to talk back: write datagrams, connect, join groups, read
/// counters, schedule timers, stop the port, and reach the whole [`Reactor`].
///
/// It owns nothing: it borrows its port's socket state and the reactor for the length of
/// one callback (modelled on socket2's `SockRef<'s>`).
///
/// # Sending
///
/// [`write`](Self::write) never blocks and never panics. A datagram is handed to the kernel
/// at once; if the kernel's send buffer is full it is copied into the port's send queue and
/// sent, in order, as soon as the socket is writable again. The queue is bounded
/// ([`ListenOptions::send_queue_limit`](crate::ListenOptions::send_queue_limit), 1 MiB by
/// default): past the bound `write` returns [`Error::SendQueueFull`] and the datagram is
/// counted in [`PortStats::send_dropped`].
///
/// ## Gathered writes
///
/// Writes made inside [`datagram_received`](crate::DatagramProtocol::datagram_received)
/// and [`datagram_truncated`](crate::DatagramProtocol::datagram_truncated) are gathered
/// and handed to the kernel together, with one `sendmmsg` on Linux (runs to one peer of one
/// length as one segmented message:
/// [`ListenOptions::segmentation`](crate::ListenOptions::segmentation)), once the batch of
/// received datagrams being dispatched is done, or sooner: as soon as
/// [`ListenOptions::batch_size`](crate::ListenOptions::batch_size) of them wait, or when
/// they would count past the high-water mark of
/// [`ListenOptions::write_buffer_limits`](crate::ListenOptions::write_buffer_limits).
/// Order is kept. `write` still checks everything it can at once (address, family, size,
/// peer); what only the kernel can say then (a refusal, `EACCES` for a broadcast not
/// allowed ...) is counted in [`PortStats`] (`refused`, calling `connection_refused` on a
/// connected port, or `send_errors` and `error_received`) instead of returned. Writes from
/// every other hook and from timers are sent at once, and their errors returned.
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use twine::{DatagramProtocol, UdpTransport};
/// struct Echo;
/// impl DatagramProtocol for Echo {
///     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
///         if let Err(e) = t.write(data, from) {
///             log::warn!("echo to {from}: {e} ({} sent so far)", t.stats().datagrams_sent);
///         }
///     }
/// }
/// let mut reactor = twine::Reactor::new()?;
/// reactor.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), Echo)?;
/// # Ok::<(), twine::Error>(())
/// ```
pub struct UdpTransport<'a> {
    pub(crate) core: &'a mut PortCore,
    pub(crate) reactor: &'a mut Reactor,
}

impl fmt::Debug for UdpTransport<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("UdpTransport")
            .field("local", &self.core.local)
            .field("peer", &self.core.peer)
            .field("closing", &self.is_closing())
            .finish()
    }
}

impl<'a> UdpTransport<'a> {
    pub(crate) fn new(core: &'a mut PortCore, reactor: &'a mut Reactor) -> Self {
        UdpTransport { core, reactor }
    }

    /// Sends `data` as one datagram to `addr` (an IP literal: see [`PeerAddr`]).
    ///
    /// On a connected port `addr` must be the peer (or use [`send`](Self::send)).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] for a hostname; [`Error::AddressFamilyMismatch`] for an
    /// address of the other IP family; [`Error::MessageTooLong`] past 65507 bytes (IPv4) or
    /// 65527 (IPv6), or past what the path allows; [`Error::WrongPeer`] on a connected port;
    /// [`Error::ConnectionRefused`] when the connected peer refused an earlier datagram
    /// (`connection_refused` is called too, once the current hook returns);
    /// [`Error::SendQueueFull`]; [`Error::Send`] for anything else the kernel says
    /// (e.g. broadcast without [`set_broadcast_allowed`](Self::set_broadcast_allowed)).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::net::SocketAddr;
    /// # use twine::UdpTransport;
    /// fn echo(t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
    ///     if let Err(e) = t.write(data, from) {
    ///         log::warn!("echo to {from}: {e}");
    ///     }
    /// }
    /// let mut reactor = twine::Reactor::new()?;
    /// reactor.listen_udp(0, twine::from_fn(echo))?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[inline]
    pub fn write(&mut self, data: &[u8], addr: impl PeerAddr) -> Result<()> {
        let addr = addr.peer_addr()?;
        self.core.send(data, addr)
    }

    /// Sends `data` to the connected peer: Twisted's `write(data)` without an address.
    ///
    /// # Errors
    ///
    /// [`Error::NotConnected`] if [`connect`](Self::connect) was not called; otherwise as
    /// [`write`](Self::write).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     t.connect("127.0.0.1:9")?;
    ///     t.send(b"to the peer")?;
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "write")]
    #[inline]
    pub fn send(&mut self, data: &[u8]) -> Result<()> {
        self.core.send_connected(data)
    }

    /// Connects the port to `addr`: writes then need no address, only `addr`'s datagrams
    /// are delivered, and a refusal (ICMP port unreachable) calls `connection_refused`.
    /// A port connects once; there is no disconnect (as in Twisted). The peer is the
    /// address the kernel connected to (`0.0.0.0:p` becomes `127.0.0.1:p`, say), as
    /// [`peer_addr`](Self::peer_addr) then says.
    ///
    /// Writes made before, to other addresses, still go there (gathered ones are sent
    /// first). On a connected port the kernel's error queue is off, as Twisted's ports
    /// have it: a refusal is told through `connection_refused`, and the hard ICMP errors
    /// Linux reports to a connected socket (protocol unreachable, fragmentation needed)
    /// come back as the next call's own error; host and network unreachable are not
    /// reported to a connected socket at all there.
    ///
    /// # Errors
    ///
    /// [`Error::AlreadyConnected`] on the second call; [`Error::InvalidAddress`] for a
    /// hostname; [`Error::AddressFamilyMismatch`]; [`Error::Connect`] if the kernel refuses.
    /// On error the port stays unconnected (unlike Twisted, which records the address first).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     t.connect("127.0.0.1:9")?;
    ///     assert_eq!(t.peer_addr(), Some(std::net::SocketAddr::from(([127, 0, 0, 1], 9))));
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn connect(&mut self, addr: impl PeerAddr) -> Result<()> {
        if let Some(peer) = self.core.peer {
            return Err(Error::AlreadyConnected { peer });
        }
        let addr = addr.peer_addr()?;
        if addr.port() == 0 {
            // The kernel accepts it, then sends to port 0 and takes every port's datagrams.
            return Err(Error::InvalidAddress {
                address: addr.to_string(),
                reason: "port 0 is not a peer's port",
            });
        }
        if let SocketAddr::V6(v6) = addr
            && v6.scope_id() != 0
            && !sys::interface_exists(v6.scope_id())
        {
            // The kernel would tie the socket to the missing interface before failing,
            // leaving the port unable to send anywhere.
            return Err(Error::InvalidAddress {
                address: addr.to_string(),
                reason: "its scope names no network interface",
            });
        }
        if !same_family(&addr, &self.core.local) {
            return Err(Error::AddressFamilyMismatch {
                address: addr,
                local: self.core.local,
            });
        }
        // Writes gathered so far go to the addresses they were written to, before the
        // socket's default destination changes; queued ones keep theirs (see `send_now`).
        self.core.flush_out();
        // Errors already queued for earlier datagrams are kept for error_received:
        // turning the error queue off (below) empties it.
        self.core.read_error_queue();
        self.core
            .socket
            .connect(addr)
            .map_err(|source| Error::Connect { addr, source })?;
        // The kernel's own view of the peer: what `from` will say of its datagrams.
        self.core.peer = Some(self.core.socket.peer_addr().unwrap_or(addr));
        self.core.connected_local = self.core.socket.local_addr().ok();
        self.core.set_error_queue(false);
        Ok(())
    }

    /// The connected peer, if [`connect`](Self::connect) was called.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     assert_eq!(t.peer_addr(), None);
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn peer_addr(&self) -> Option<SocketAddr> {
        self.core.peer
    }

    /// The socket's address as the kernel has it (`getsockname`, as std's `local_addr`):
    /// the bound address with the real port number when 0 was asked for, and once
    /// [`connect`](Self::connect)ed, the address the kernel chose for the peer's route
    /// where the port was bound to a wildcard. (`ListeningPort::local_addr` stays the
    /// bound address.)
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     assert_eq!(t.local_addr(), port.local_addr());
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.core.connected_local.unwrap_or(self.core.local)
    }

    /// Twisted's name for [`local_addr`](Self::local_addr).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     assert_eq!(t.get_host(), t.local_addr());
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "getHost")]
    pub fn get_host(&self) -> SocketAddr {
        self.local_addr()
    }

    /// The receive buffer size: longer datagrams are dropped and counted.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     assert_eq!(t.max_packet_size(), twine::DEFAULT_MAX_PACKET_SIZE);
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn max_packet_size(&self) -> usize {
        self.core.max_packet_size
    }

    /// Stops the port: no datagram is delivered after this call returns; `stop_protocol`
    /// runs on a later reactor turn, then the socket is closed. Calling it again does
    /// nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     t.stop_listening();
    ///     assert!(t.is_closing());
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "stopListening")]
    pub fn stop_listening(&mut self) {
        // At once: its timers cancelled, is_listening false, no datagram delivered after.
        self.reactor.request_close(self.core.key);
    }

    /// Whether [`stop_listening`](Self::stop_listening) was called (or the port is being
    /// torn down).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     assert!(!t.is_closing());
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn is_closing(&self) -> bool {
        self.reactor.lifecycle(self.core.key) != Lifecycle::Open
    }

    /// The port's counters. On Linux this asks the kernel for its drop count
    /// (`SO_MEMINFO`, one system call), so that drops after the last datagram read are
    /// counted too: read them when needed, not per datagram.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     let stats = t.stats();
    ///     assert_eq!(stats.datagrams_received, 0);
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn stats(&self) -> PortStats {
        self.core.current_stats()
    }

    /// Bytes waiting to be handed to the kernel (asyncio's `get_write_buffer_size`), as
    /// they are charged against the flow-control marks and
    /// [`ListenOptions::send_queue_limit`](crate::ListenOptions::send_queue_limit): the
    /// send queue (filled while the kernel's buffer is full) and the writes gathered for
    /// the batch being dispatched, each datagram its payload plus 128 bytes for the entry
    /// itself (what it costs in memory, at least), so that empty datagrams are bounded too,
    /// and 64 bytes more for one that carries a source address or a TOS byte of its own
    /// ([`write_with`](Self::write_with), or a reply from the arrival address).
    ///
    /// A producer that heeds the pause never meets the bound: one that writes only while
    /// [`is_write_paused`](Self::is_write_paused) is false (checked before each write), or
    /// that stops at [`pause_producing`](crate::DatagramProtocol::pause_producing) and
    /// writes less than the room between the marks and the bound in one hook. The pause
    /// is told right after the hook whose write crossed the mark returns (after that one
    /// datagram, inside a batch of received datagrams).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     // Nothing waits for the kernel.
    ///     assert_eq!(t.write_buffer_size(), 0);
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "get_write_buffer_size")]
    pub fn write_buffer_size(&self) -> usize {
        self.core.charged_bytes()
    }

    /// Whether the send queue is past its high-water mark and has not drained to its
    /// low-water mark since: between `pause_producing` and `resume_producing` (see
    /// [`ListenOptions::write_buffer_limits`](crate::ListenOptions::write_buffer_limits)).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     assert!(!t.is_write_paused());
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn is_write_paused(&self) -> bool {
        self.core.write_paused()
    }

    /// Allows sending to broadcast addresses (`SO_BROADCAST`); off by default.
    ///
    /// # Errors
    ///
    /// [`Error::SocketOption`] if the kernel refuses.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     t.set_broadcast_allowed(true)?;
    ///     assert!(t.broadcast_allowed()?);
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "setBroadcastAllowed")]
    pub fn set_broadcast_allowed(&mut self, allowed: bool) -> Result<()> {
        self.core
            .socket
            .set_broadcast(allowed)
            .map_err(|source| Error::SocketOption {
                option: "SO_BROADCAST",
                source,
            })
    }

    /// Whether sending to broadcast addresses is allowed.
    ///
    /// # Errors
    ///
    /// [`Error::SocketOption`] if the kernel refuses.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     assert!(!t.broadcast_allowed()?);
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "getBroadcastAllowed")]
    pub fn broadcast_allowed(&self) -> Result<bool> {
        self.core
            .socket
            .broadcast()
            .map_err(|source| Error::SocketOption {
                option: "SO_BROADCAST",
                source,
            })
    }

    /// Schedules `f` to run once after `delay`, with this port's protocol and transport:
    /// a port-scoped `callLater`. It is cancelled when the port closes.
    ///
    /// Write the protocol type on the closure's first argument, e.g.
    /// `t.call_later(d, |me: &mut Echo, t| ...)`. In the protocol's own hooks,
    /// [`DatagramProtocol::call_later`](crate::DatagramProtocol::call_later)
    /// (`Self::call_later(t, d, |me, t| ...)`) infers it, and a closure for another
    /// protocol does not compile.
    ///
    /// # Errors
    ///
    /// [`Error::ProtocolMismatch`] if `P` is not this port's protocol type;
    /// [`Error::PortClosed`] once the port's stop was asked for (and from `stop_protocol`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use twine::{DatagramProtocol, UdpTransport};
    /// /// Answers each datagram a second later.
    /// struct Slow;
    /// impl DatagramProtocol for Slow {
    ///     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
    ///         let data = data.to_vec();
    ///         let _ = t.call_later(Duration::from_secs(1), move |_me: &mut Slow, t| {
    ///             let _ = t.write(&data, from);
    ///         });
    ///     }
    /// }
    /// let mut reactor = twine::Reactor::new()?;
    /// reactor.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), Slow)?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "callLater")]
    pub fn call_later<P: 'static>(
        &mut self,
        delay: Duration,
        f: impl FnOnce(&mut P, &mut UdpTransport<'_>) + 'static,
    ) -> Result<DelayedCall> {
        self.schedule::<P>(delay, None, once(f))
    }

    /// Schedules `f` to run every `interval` (first after one interval), with this port's
    /// protocol and transport: a port-scoped `LoopingCall`. Missed runs are skipped, not
    /// bunched. It stops when cancelled, when the port closes, or when `f` panics (the
    /// panic is logged and counted in [`PortStats::panics`], and the port goes on). An
    /// interval of zero runs it once per turn (a busy loop, as in Twisted). In the
    /// protocol's own hooks,
    /// [`DatagramProtocol::call_every`](crate::DatagramProtocol::call_every)
    /// (`Self::call_every(t, d, |me, t| ...)`) checks the closure's protocol type at
    /// compile time.
    ///
    /// # Errors
    ///
    /// [`Error::ProtocolMismatch`] if `P` is not this port's protocol type;
    /// [`Error::PortClosed`] once the port's stop was asked for (and from `stop_protocol`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use twine::{DatagramProtocol, UdpTransport};
    /// /// Says hello every ten seconds.
    /// struct Beacon { sent: u64 }
    /// impl DatagramProtocol for Beacon {
    ///     fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
    ///         let _ = t.call_every(Duration::from_secs(10), |me: &mut Beacon, t| {
    ///             me.sent += 1;
    ///             let _ = t.write(b"hello", "127.0.0.1:9");
    ///         });
    ///     }
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    /// }
    /// let mut reactor = twine::Reactor::new()?;
    /// reactor.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), Beacon { sent: 0 })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "LoopingCall")]
    pub fn call_every<P: 'static>(
        &mut self,
        interval: Duration,
        f: impl FnMut(&mut P, &mut UdpTransport<'_>) + 'static,
    ) -> Result<DelayedCall> {
        self.schedule::<P>(interval, Some(interval), f)
    }

    fn schedule<P: 'static>(
        &mut self,
        delay: Duration,
        interval: Option<Duration>,
        f: impl FnMut(&mut P, &mut UdpTransport<'_>) + 'static,
    ) -> Result<DelayedCall> {
        let (type_id, name) = self.core.protocol_type;
        if type_id != TypeId::of::<P>() {
            return Err(Error::ProtocolMismatch {
                port: name,
                requested: short_type_name::<P>(),
            });
        }
        let boxed: PortTimerFn<P> = Box::new(f);
        self.reactor
            .schedule_port_timer(self.core.key, delay, interval, Box::new(boxed))
    }

    /// Cancels a scheduled call (port-scoped or not). Returns whether it was pending.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     let call = t.reactor().call_later(std::time::Duration::from_secs(1), |_| {});
    ///     assert!(t.cancel(call));
    ///     assert!(!t.is_pending(call));
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn cancel(&mut self, call: DelayedCall) -> bool {
        self.reactor.cancel(call)
    }

    /// Moves a pending call's deadline to `delay` from now. Returns whether it was pending.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     let call = t.reactor().call_later(std::time::Duration::from_secs(1), |_| {});
    ///     assert!(t.reset(call, std::time::Duration::from_secs(5)));
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn reset(&mut self, call: DelayedCall, delay: Duration) -> bool {
        self.reactor.reset(call, delay)
    }

    /// Whether a call will still fire.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     let call = t.reactor().call_later(std::time::Duration::from_secs(1), |_| {});
    ///     assert!(t.is_pending(call));
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn is_pending(&self, call: DelayedCall) -> bool {
        self.reactor.is_pending(call)
    }

    /// Whether the port may deliver no more: its stop was asked for, or the reactor's.
    pub(crate) fn must_stop(&self) -> bool {
        self.reactor.lifecycle(self.core.key) != Lifecycle::Open || self.reactor.is_stopping()
    }

    /// A count that changes whenever a stop is asked for (of any port, or the reactor):
    /// while it is unchanged, [`must_stop`](Self::must_stop) is too.
    #[inline]
    pub(crate) fn stops_asked(&self) -> u64 {
        self.reactor.stops_asked()
    }

    /// The reactor's time now: [`Reactor::now`].
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| {
    ///     assert!(t.now() <= std::time::Instant::now());
    /// })?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn now(&self) -> std::time::Instant {
        self.reactor.now()
    }

    /// The reactor: listen on new ports, schedule reactor-level timers, stop it.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     // Listen on another port from inside a hook.
    ///     let other = t.reactor().listen_udp_with(
    ///         twine::ListenOptions::new(0).interface("127.0.0.1"),
    ///         twine::respond(|_, _| None::<Vec<u8>>),
    ///     )?;
    ///     assert!(t.reactor().is_listening(&other));
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn reactor(&mut self) -> &mut Reactor {
        self.reactor
    }

    /// The socket, for options; "unsupported" for an in-memory port.
    pub(crate) fn sock(&self) -> std::io::Result<SockRef<'_>> {
        self.core.socket.sock_ref()
    }
}
