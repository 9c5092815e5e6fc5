//! `DatagramProtocol`: the hooks the reactor calls, and the closure adapter.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::time::Duration;

use crate::DelayedCall;
use crate::udp::UdpTransport;

/// What a UDP server or client implements: the reactor calls these hooks, and the protocol
/// talks back through the [`UdpTransport`] each hook is handed.
///
/// Every hook but [`datagram_received`](Self::datagram_received) has an empty default.
/// Besides the hooks, the trait gives every protocol [`call_later`](Self::call_later)
/// and [`call_every`](Self::call_every): port timers whose closure takes `Self`, called as
/// `Self::call_later(t, delay, |me, t| ...)` from its hooks.
///
/// # Panics in hooks
///
/// A panic in a hook is caught and logged (at ERROR, with the port's address). What
/// follows depends on who can trigger the hook:
///
/// - In a hook a remote peer can trigger ([`datagram_received`](Self::datagram_received),
///   [`datagram_truncated`](Self::datagram_truncated),
///   [`error_received`](Self::error_received),
///   [`connection_refused`](Self::connection_refused),
///   [`pause_producing`](Self::pause_producing), [`resume_producing`](Self::resume_producing))
///   and in a port timer, the panic costs that one event (the datagram, the report, the
///   timer's run; a repeating timer that panics is cancelled): it is counted in
///   [`PortStats::panics`](crate::PortStats::panics), the sender is named in the log, and
///   the port goes on with the next datagram, as in Twisted. Otherwise one datagram that
///   trips a bug in a parser would shut a public server down.
///   [`ListenOptions::close_on_panic`](crate::ListenOptions::close_on_panic) makes such a
///   panic close the port instead.
/// - In [`start_protocol`](Self::start_protocol) the port is closed at once (the listen
///   call returns [`Error::StartPanicked`](crate::Error::StartPanicked) and
///   `stop_protocol` is not called: the port never started); in
///   [`stop_protocol`](Self::stop_protocol) the port closes as it was going to.
///
/// **Unwind safety:** the protocol is used again after a panic in one of its hooks, so its
/// state is whatever the hook left when it panicked, possibly half-updated (the hooks run
/// under `AssertUnwindSafe`). A protocol whose invariants a panic can break should
/// restore them, or ask for `close_on_panic`.
///
/// The reactor and its other ports go on in every case.
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use twine::{DatagramProtocol, UdpTransport};
///
/// struct Upper;
/// impl DatagramProtocol for Upper {
///     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
///         if let Err(e) = t.write(&data.to_ascii_uppercase(), from) {
///             log::warn!("reply to {from}: {e}");
///         }
///     }
/// }
///
/// let mut reactor = twine::Reactor::new()?;
/// let port = reactor.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), Upper)?;
/// assert!(reactor.is_listening(&port));
/// # Ok::<(), twine::Error>(())
/// ```
pub trait DatagramProtocol: 'static {
    /// Called once when the port is up, before any datagram: inside `listen_udp` (and the
    /// other listen calls), as in Twisted. A good place to join groups, connect, or start
    /// a repeating call.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use twine::testing::Simulation;
    /// use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    ///
    /// /// Connects to its server and says hello as soon as the port is up.
    /// struct Hello { server: SocketAddr }
    /// impl DatagramProtocol for Hello {
    ///     fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
    ///         if let Err(e) = t.connect(self.server).and_then(|()| t.send(b"hello")) {
    ///             log::warn!("hello to {}: {e}", self.server);
    ///         }
    ///     }
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    /// }
    ///
    /// let mut sim = Simulation::new(1)?;
    /// let server: SocketAddr = "127.0.0.1:4000".parse()?;
    /// let opts = ListenOptions::new(0).interface("127.0.0.1");
    /// let port = sim.listen_udp_with(opts, Hello { server })?;
    /// // The hello went out inside the listen call, before any reactor turn.
    /// let sent = sim.sent();
    /// assert_eq!((sent.len(), sent[0].to, &sent[0].data[..]), (1, server, &b"hello"[..]));
    /// assert_eq!(sim.with_port(&port, |_, t| t.peer_addr())?, Some(server));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "startProtocol")]
    fn start_protocol(&mut self, transport: &mut UdpTransport<'_>) {
        let _ = transport;
    }

    /// Called once when the port goes down, on a reactor turn after the stop was asked for
    /// (`stop_listening`, `Reactor::stop`, SIGINT/SIGTERM, or a panic in a hook with
    /// `close_on_panic`). The socket is still open: writes made here are sent (or dropped
    /// if the kernel buffer is full), then it is closed.
    ///
    /// It is the last hook: no `error_received`, `connection_refused` or flow-control hook
    /// runs after it. What was still to be reported then (and what the writes made here
    /// meet) is counted in [`PortStats::errors_unreported`](crate::PortStats::errors_unreported).
    /// It is not called if the [`Reactor`](crate::Reactor) is dropped without a stop.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    ///
    /// /// Tells every client it has heard from that it is going away.
    /// #[derive(Default)]
    /// struct Server { clients: Vec<SocketAddr> }
    /// impl DatagramProtocol for Server {
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], from: SocketAddr) {
    ///         if !self.clients.contains(&from) {
    ///             self.clients.push(from);
    ///         }
    ///     }
    ///     fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
    ///         for &client in &self.clients {
    ///             if let Err(e) = t.write(b"bye", client) {
    ///                 log::warn!("bye to {client}: {e}");
    ///             }
    ///         }
    ///     }
    /// }
    ///
    /// let mut sim = Simulation::new(1)?;
    /// let opts = ListenOptions::new(0).interface("127.0.0.1");
    /// let port = sim.listen_udp_with(opts, Server::default())?;
    /// let client: SocketAddr = "127.0.0.1:5000".parse()?;
    /// sim.inject(port.local_addr(), client, b"join");
    /// sim.advance(Duration::from_millis(1))?;
    /// assert!(sim.stop_listening(&port));
    /// assert!(sim.sent().is_empty(), "stop_protocol runs on a later turn");
    /// sim.advance(Duration::from_millis(1))?;
    /// let sent = sim.sent();
    /// assert_eq!((sent.len(), sent[0].to, &sent[0].data[..]), (1, client, &b"bye"[..]));
    /// assert!(!sim.is_listening(&port));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "stopProtocol")]
    fn stop_protocol(&mut self, transport: &mut UdpTransport<'_>) {
        let _ = transport;
    }

    /// Called for each datagram, with a slice borrowed from the port's receive buffer
    /// (never copied) and the sender's address. An empty datagram arrives as an empty slice.
    ///
    /// A panic here costs this datagram only (see [Panics in hooks](Self#panics-in-hooks)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    ///
    /// /// Answers each datagram with its length, as text, and counts the empty ones.
    /// #[derive(Default)]
    /// struct Length { empty: u32 }
    /// impl DatagramProtocol for Length {
    ///     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, d: &[u8], from: SocketAddr) {
    ///         if d.is_empty() {
    ///             self.empty += 1;
    ///         }
    ///         if let Err(e) = t.write(d.len().to_string().as_bytes(), from) {
    ///             log::warn!("reply to {from}: {e}");
    ///         }
    ///     }
    /// }
    ///
    /// let mut sim = Simulation::new(1)?;
    /// let opts = ListenOptions::new(0).interface("127.0.0.1");
    /// let port = sim.listen_udp_with(opts, Length::default())?;
    /// let client: SocketAddr = "127.0.0.1:5000".parse()?;
    /// sim.inject(port.local_addr(), client, b"hello");
    /// sim.inject(port.local_addr(), client, b"");
    /// sim.advance(Duration::from_millis(1))?;
    /// let replies: Vec<Vec<u8>> = sim.sent().into_iter().map(|s| s.data).collect();
    /// assert_eq!(replies, [b"5".to_vec(), b"0".to_vec()]);
    /// assert_eq!(sim.with_port(&port, |p, _| p.empty)?, 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "datagramReceived")]
    fn datagram_received(
        &mut self,
        transport: &mut UdpTransport<'_>,
        data: &[u8],
        from: SocketAddr,
    );

    /// Called on a connected port when its peer refused an *earlier* datagram (an ICMP
    /// port unreachable came back: nothing listens there), once per refusal counted in
    /// [`PortStats::refused`](crate::PortStats::refused). The port keeps working.
    ///
    /// Unconnected ports are told through
    /// [`error_received`](Self::error_received), with the destination that refused
    /// (Linux), where Twisted says nothing.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    ///
    /// /// Pings its server, and pings again (up to three times) while nothing listens there.
    /// #[derive(Default)]
    /// struct Pinger { refused: u32 }
    /// impl DatagramProtocol for Pinger {
    ///     fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
    ///         if let Err(e) = t.connect("127.0.0.1:4000").and_then(|()| t.send(b"ping")) {
    ///             log::warn!("ping: {e}");
    ///         }
    ///     }
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    ///     fn connection_refused(&mut self, t: &mut UdpTransport<'_>) {
    ///         self.refused += 1;
    ///         if self.refused < 3 && let Err(e) = t.send(b"ping") {
    ///             log::warn!("ping again: {e}");
    ///         }
    ///     }
    /// }
    ///
    /// let mut sim = Simulation::new(1)?;
    /// let opts = ListenOptions::new(0).interface("127.0.0.1");
    /// let port = sim.listen_udp_with(opts, Pinger::default())?;
    /// // The server's host answers the ping with an ICMP port unreachable.
    /// sim.inject_refusal(port.local_addr(), "127.0.0.1:4000".parse()?);
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.with_port(&port, |p, _| p.refused)?, 1);
    /// assert_eq!(sim.port_stats(&port).map(|s| s.refused), Some(1));
    /// // The port keeps working: the second ping went out.
    /// assert_eq!(sim.sent().len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "connectionRefused")]
    fn connection_refused(&mut self, transport: &mut UdpTransport<'_>) {
        let _ = transport;
    }

    /// Called when the port's send queue grows past its high-water mark
    /// ([`ListenOptions::write_buffer_limits`](crate::ListenOptions::write_buffer_limits)):
    /// the kernel's buffer is full and writes are piling up. Stop producing until
    /// [`resume_producing`](Self::resume_producing); writes past the hard bound are refused
    /// with [`Error::SendQueueFull`](crate::Error::SendQueueFull). Twisted's
    /// `IPushProducer.pauseProducing`, asyncio's `pause_writing`. Runs right after the
    /// hook whose write crossed the mark returns (inside a batch of received datagrams,
    /// before the next one is delivered); within a hook,
    /// [`UdpTransport::is_write_paused`](crate::UdpTransport::is_write_paused) turns true
    /// at the write that crossed it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    ///
    /// /// Streams a 512-byte chunk to its peer every millisecond, unless paused.
    /// #[derive(Default)]
    /// struct Stream { chunks: u32, paused: bool }
    /// impl DatagramProtocol for Stream {
    ///     fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
    ///         let tick = |me: &mut Stream, t: &mut UdpTransport<'_>| {
    ///             if !me.paused && t.write(&[0; 512], "127.0.0.1:4000").is_ok() {
    ///                 me.chunks += 1;
    ///             }
    ///         };
    ///         if let Err(e) = t.call_every(Duration::from_millis(1), tick) {
    ///             log::warn!("stream: {e}");
    ///         }
    ///     }
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    ///     fn pause_producing(&mut self, _: &mut UdpTransport<'_>) {
    ///         self.paused = true;
    ///     }
    /// }
    ///
    /// let mut sim = Simulation::new(1)?;
    /// let opts = ListenOptions::new(0).interface("127.0.0.1").write_buffer_limits(2048, 1024);
    /// let port = sim.listen_udp_with(opts, Stream::default())?;
    /// // The kernel's buffer is full: every chunk waits in the port's send queue.
    /// sim.block_sends(port.local_addr(), true);
    /// sim.advance(Duration::from_millis(100))?;
    /// // Each chunk is charged 512 + 128 bytes: the fourth crossed the 2048-byte mark.
    /// let seen = sim.with_port(&port, |p, t| (p.paused, p.chunks, t.is_write_paused()))?;
    /// assert_eq!(seen, (true, 4, true));
    /// assert!(sim.sent().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "pauseProducing")]
    #[doc(alias = "pause_writing")]
    fn pause_producing(&mut self, transport: &mut UdpTransport<'_>) {
        let _ = transport;
    }

    /// Called once the send queue has drained to its low-water mark after a
    /// [`pause_producing`](Self::pause_producing): writing may go on.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    ///
    /// /// Uploads ten 512-byte chunks, writing while the send queue has room.
    /// struct Upload { left: u32 }
    /// impl Upload {
    ///     fn produce(&mut self, t: &mut UdpTransport<'_>) {
    ///         while self.left > 0 && !t.is_write_paused() {
    ///             if let Err(e) = t.write(&[0; 512], "127.0.0.1:4000") {
    ///                 log::warn!("upload: {e}");
    ///                 break;
    ///             }
    ///             self.left -= 1;
    ///         }
    ///     }
    /// }
    /// impl DatagramProtocol for Upload {
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    ///     fn resume_producing(&mut self, t: &mut UdpTransport<'_>) {
    ///         self.produce(t);
    ///     }
    /// }
    ///
    /// let mut sim = Simulation::new(1)?;
    /// let opts = ListenOptions::new(0).interface("127.0.0.1").write_buffer_limits(2048, 1024);
    /// let port = sim.listen_udp_with(opts, Upload { left: 10 })?;
    /// // The kernel's buffer is full: four chunks fill the queue past its mark.
    /// sim.block_sends(port.local_addr(), true);
    /// sim.with_port(&port, |p, t| p.produce(t))?;
    /// assert_eq!(sim.with_port(&port, |p, _| p.left)?, 6);
    /// // The buffer drains: the queue empties, and resume_producing writes the rest.
    /// sim.block_sends(port.local_addr(), false);
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.with_port(&port, |p, _| p.left)?, 0);
    /// assert_eq!(sim.sent().len(), 10);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "resumeProducing")]
    #[doc(alias = "resume_writing")]
    fn resume_producing(&mut self, transport: &mut UdpTransport<'_>) {
        let _ = transport;
    }

    /// Called when the kernel reports that an earlier datagram was not delivered, with
    /// the destination it was for:
    ///
    /// - [`Error::Unreachable`](crate::Error::Unreachable): an ICMP error came back for a
    ///   datagram this (unconnected) port sent to `addr`, e.g. port unreachable
    ///   (`ECONNREFUSED`: nothing listens there). Linux only (`IP_RECVERR`), where the
    ///   kernel's error queue names the destination; neither Twisted nor asyncio can say
    ///   which destination refused. Connected ports get `connection_refused` instead.
    /// - [`Error::Send`](crate::Error::Send): a datagram `write` had accepted (gathered
    ///   into a batch, or queued while the kernel's buffer was full) was refused when it
    ///   was handed to the kernel. A write that fails at once returns its error instead.
    ///
    /// Each is also counted in [`PortStats`](crate::PortStats). Calls run after the hook
    /// during which the error was met returns, or on the turn the kernel reports it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{DatagramProtocol, Error, ListenOptions, UdpTransport};
    ///
    /// /// Keeps a list of subscribers, and drops one where nothing listens any more.
    /// #[derive(Default)]
    /// struct Feed { subscribers: Vec<SocketAddr> }
    /// impl DatagramProtocol for Feed {
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], from: SocketAddr) {
    ///         self.subscribers.push(from);
    ///     }
    ///     fn error_received(&mut self, _: &mut UdpTransport<'_>, err: &Error, addr: SocketAddr) {
    ///         if matches!(err, Error::Unreachable { .. }) {
    ///             self.subscribers.retain(|&s| s != addr);
    ///         }
    ///     }
    /// }
    ///
    /// let mut sim = Simulation::new(1)?;
    /// let opts = ListenOptions::new(0).interface("127.0.0.1");
    /// let port = sim.listen_udp_with(opts, Feed::default())?;
    /// let a: SocketAddr = "127.0.0.1:5001".parse()?;
    /// let b: SocketAddr = "127.0.0.1:5002".parse()?;
    /// sim.inject(port.local_addr(), a, b"subscribe");
    /// sim.inject(port.local_addr(), b, b"subscribe");
    /// sim.advance(Duration::from_millis(1))?;
    /// // An update sent to `a` came back as ICMP port unreachable.
    /// sim.inject_refusal(port.local_addr(), a);
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.with_port(&port, |p, _| p.subscribers.clone())?, [b]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "errorReceived")]
    fn error_received(
        &mut self,
        transport: &mut UdpTransport<'_>,
        error: &crate::Error,
        addr: SocketAddr,
    ) {
        let _ = (transport, error, addr);
    }

    /// Called for a datagram longer than the port's max packet size, only when the port
    /// was opened with [`ListenOptions::deliver_truncated`](crate::ListenOptions::deliver_truncated)
    /// (otherwise such datagrams are dropped): `data` is its first max-packet-size bytes,
    /// `len` its whole length as sent (on Linux; elsewhere `data.len()`). It is counted in
    /// [`PortStats::truncated`](crate::PortStats::truncated) either way, and never reaches
    /// `datagram_received`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    ///
    /// /// Serves requests of up to 512 bytes, and tells a sender whose request was longer.
    /// struct Server;
    /// impl DatagramProtocol for Server {
    ///     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, _: &[u8], from: SocketAddr) {
    ///         if let Err(e) = t.write(b"ok", from) {
    ///             log::warn!("reply to {from}: {e}");
    ///         }
    ///     }
    ///     fn datagram_truncated(
    ///         &mut self,
    ///         t: &mut UdpTransport<'_>,
    ///         data: &[u8],
    ///         len: usize,
    ///         from: SocketAddr,
    ///     ) {
    ///         let reply = format!("too long: {len} bytes, {} kept", data.len());
    ///         if let Err(e) = t.write(reply.as_bytes(), from) {
    ///             log::warn!("reply to {from}: {e}");
    ///         }
    ///     }
    /// }
    ///
    /// let mut sim = Simulation::new(1)?;
    /// let opts = ListenOptions::new(0).interface("127.0.0.1").max_packet_size(512);
    /// let port = sim.listen_udp_with(opts.deliver_truncated(true), Server)?;
    /// let client: SocketAddr = "127.0.0.1:5000".parse()?;
    /// sim.inject(port.local_addr(), client, &[7; 1000]);
    /// sim.advance(Duration::from_millis(1))?;
    /// let replies: Vec<Vec<u8>> = sim.sent().into_iter().map(|s| s.data).collect();
    /// assert_eq!(replies, [b"too long: 1000 bytes, 512 kept".to_vec()]);
    /// let stats = sim.port_stats(&port).ok_or("port closed")?;
    /// assert_eq!((stats.truncated, stats.datagrams_received), (1, 0));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    fn datagram_truncated(
        &mut self,
        transport: &mut UdpTransport<'_>,
        data: &[u8],
        len: usize,
        from: SocketAddr,
    ) {
        let _ = (transport, data, len, from);
    }

    /// The name used in the port's log lines (`"<prefix> starting on <addr>"`); by
    /// default the type's name without its module path (Twisted's `logPrefix`).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use twine::{DatagramProtocol, ListenOptions, Reactor, UdpTransport};
    ///
    /// /// One relay type for several ports, each named in the logs by its role.
    /// struct Relay { role: &'static str }
    /// impl DatagramProtocol for Relay {
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    ///     fn log_prefix(&self) -> &str {
    ///         self.role
    ///     }
    /// }
    /// /// Keeps the default: its type's name.
    /// struct Sink;
    /// impl DatagramProtocol for Sink {
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    /// }
    ///
    /// let mut reactor = Reactor::new()?;
    /// let opts = ListenOptions::new(0).interface("127.0.0.1");
    /// // Logs "upstream starting on 127.0.0.1:<port>".
    /// let port = reactor.listen_udp_with(opts, Relay { role: "upstream" })?;
    /// assert_eq!(reactor.with_port(&port, |p, _| p.log_prefix().to_owned())?, "upstream");
    /// assert_eq!(Sink.log_prefix(), "Sink");
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "logPrefix")]
    fn log_prefix(&self) -> &str {
        short_type_name::<Self>()
    }

    /// [`UdpTransport::call_later`] with the closure's protocol fixed to `Self`: written
    /// `Self::call_later(t, delay, |me, t| ...)` in the protocol's own hooks, the closure's
    /// arguments are inferred, and a closure for another protocol does not compile.
    ///
    /// # Errors
    ///
    /// [`Error::PortClosed`](crate::Error::PortClosed) once the port's stop was asked for
    /// (and from `stop_protocol`); [`Error::ProtocolMismatch`](crate::Error::ProtocolMismatch)
    /// only if `t` is the transport of a port whose protocol is not `Self` (reached
    /// through [`Reactor::with_port`](crate::Reactor::with_port)).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    ///
    /// /// Answers each datagram a second later.
    /// struct Slow { answered: u32 }
    /// impl DatagramProtocol for Slow {
    ///     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
    ///         let data = data.to_vec();
    ///         let later = Self::call_later(t, Duration::from_secs(1), move |me, t| {
    ///             me.answered += 1;
    ///             let _ = t.write(&data, from);
    ///         });
    ///         if let Err(e) = later {
    ///             log::warn!("answer to {from}: {e}");
    ///         }
    ///     }
    /// }
    ///
    /// let mut sim = Simulation::new(1)?;
    /// let port = sim.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), Slow { answered: 0 })?;
    /// sim.inject(port.local_addr(), "127.0.0.1:5000".parse()?, b"ping");
    /// sim.advance(Duration::from_millis(999))?;
    /// assert!(sim.sent().is_empty());
    /// sim.advance(Duration::from_millis(2))?;
    /// assert_eq!(sim.with_port(&port, |me, _| me.answered)?, 1);
    /// assert_eq!(sim.sent().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    ///
    /// A closure for another protocol is refused by the compiler, where
    /// `t.call_later(delay, |me: &mut Other, t| ...)` compiles and fails when it runs:
    ///
    /// ```compile_fail,E0631
    /// # use std::net::SocketAddr;
    /// # use std::time::Duration;
    /// # use twine::{DatagramProtocol, UdpTransport};
    /// struct Other;
    /// struct Mine;
    /// impl DatagramProtocol for Mine {
    ///     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {
    ///         let _ = Self::call_later(t, Duration::from_secs(1), |_me: &mut Other, _t| {});
    ///     }
    /// }
    /// ```
    #[doc(alias = "callLater")]
    fn call_later(
        t: &mut UdpTransport<'_>,
        delay: Duration,
        f: impl FnOnce(&mut Self, &mut UdpTransport<'_>) + 'static,
    ) -> crate::Result<DelayedCall>
    where
        Self: Sized,
    {
        t.call_later::<Self>(delay, f)
    }

    /// [`UdpTransport::call_every`] with the closure's protocol fixed to `Self`: written
    /// `Self::call_every(t, interval, |me, t| ...)` in the protocol's own hooks, the
    /// closure's arguments are inferred, and a closure for another protocol does not
    /// compile.
    ///
    /// # Errors
    ///
    /// As [`call_later`](Self::call_later).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    ///
    /// /// Says hello to its server every ten seconds.
    /// struct Beacon { server: SocketAddr, sent: u32 }
    /// impl DatagramProtocol for Beacon {
    ///     fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
    ///         let every = Self::call_every(t, Duration::from_secs(10), |me, t| {
    ///             if t.write(b"hello", me.server).is_ok() {
    ///                 me.sent += 1;
    ///             }
    ///         });
    ///         if let Err(e) = every {
    ///             log::error!("beacon: {e}");
    ///         }
    ///     }
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    /// }
    ///
    /// let mut sim = Simulation::new(1)?;
    /// let server = "127.0.0.1:4000".parse()?;
    /// let opts = ListenOptions::new(0).interface("127.0.0.1");
    /// let port = sim.listen_udp_with(opts, Beacon { server, sent: 0 })?;
    /// sim.advance(Duration::from_secs(35))?;
    /// assert_eq!(sim.with_port(&port, |me, _| me.sent)?, 3);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    #[doc(alias = "LoopingCall")]
    fn call_every(
        t: &mut UdpTransport<'_>,
        interval: Duration,
        f: impl FnMut(&mut Self, &mut UdpTransport<'_>) + 'static,
    ) -> crate::Result<DelayedCall>
    where
        Self: Sized,
    {
        t.call_every::<Self>(interval, f)
    }
}

/// A closure `FnMut(&mut UdpTransport, &[u8], SocketAddr)` is a protocol whose only hook is
/// `datagram_received`.
///
/// Closures given to a generic function often need their argument types written out; use
/// [`from_fn`] to have them inferred.
impl<F> DatagramProtocol for F
where
    F: FnMut(&mut UdpTransport<'_>, &[u8], SocketAddr) + 'static,
{
    fn datagram_received(
        &mut self,
        transport: &mut UdpTransport<'_>,
        data: &[u8],
        from: SocketAddr,
    ) {
        self(transport, data, from)
    }

    fn log_prefix(&self) -> &str {
        "FnProtocol"
    }
}

/// Makes a protocol of a closure, with its argument types inferred.
///
/// # Examples
///
/// ```
/// let mut reactor = twine::Reactor::new()?;
/// let port = reactor.listen_udp_with(
///     twine::ListenOptions::new(0).interface("127.0.0.1"),
///     twine::from_fn(|t, data, from| {
///         let _ = t.write(data, from);
///     }),
/// )?;
/// assert_ne!(port.local_addr().port(), 0);
/// # Ok::<(), twine::Error>(())
/// ```
pub fn from_fn<F>(f: F) -> F
where
    F: FnMut(&mut UdpTransport<'_>, &[u8], SocketAddr) + 'static,
{
    f
}

/// A request/response protocol made of a closure, like a `socketserver.UDPServer`
/// handler: each datagram and its sender go to `handler`, and the bytes it returns, if
/// any, are written back to the sender. Made by [`respond`].
///
/// A reply that cannot be sent (too long, queue full) is logged as a warning with the
/// sender's address; the port goes on. For anything more (state per client, timers,
/// replies to others) implement [`DatagramProtocol`] itself.
///
/// # Examples
///
/// ```
/// let mut reactor = twine::Reactor::new()?;
/// let upper = twine::respond(|data, _from| Some(data.to_ascii_uppercase()));
/// reactor.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), upper)?;
/// # Ok::<(), twine::Error>(())
/// ```
pub struct Responder<F, R> {
    handler: F,
    name: &'static str,
    reply: PhantomData<fn() -> R>,
}

/// Makes a [`Responder`]: `handler(data, from)` returns the reply to send back to `from`,
/// or `None` for no reply. The reply is anything that is bytes (`Vec<u8>`, `String`,
/// `&'static str`, a fixed array ...).
///
/// Python's `socketserver.UDPServer` with a `handle` method becomes one call; its
/// `ThreadingUDPServer` variant needs nothing more, since one reactor serves every
/// client in turn without a thread each.
///
/// # Examples
///
/// ```
/// let mut reactor = twine::Reactor::new()?;
/// let upper = twine::respond(|data, _from| Some(data.to_ascii_uppercase()));
/// let port = reactor.listen_udp_with(
///     twine::ListenOptions::new(0).interface("127.0.0.1"),
///     upper.named("UpperServer"),
/// )?;
/// assert!(reactor.is_listening(&port));
/// # Ok::<(), twine::Error>(())
/// ```
pub fn respond<F, R>(handler: F) -> Responder<F, R>
where
    F: FnMut(&[u8], SocketAddr) -> Option<R> + 'static,
    R: AsRef<[u8]> + 'static,
{
    Responder {
        handler,
        name: "Responder",
        reply: PhantomData,
    }
}

impl<F, R> Responder<F, R> {
    /// Sets the name the port's log lines use (its [`log_prefix`](DatagramProtocol::log_prefix));
    /// `"Responder"` by default.
    ///
    /// # Examples
    ///
    /// ```
    /// let time = twine::respond(|_, _| Some(b"12:00".to_vec())).named("TimeServer");
    /// let mut reactor = twine::Reactor::new()?;
    /// reactor.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), time)?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }
}

impl<F, R> fmt::Debug for Responder<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<F, R> DatagramProtocol for Responder<F, R>
where
    F: FnMut(&[u8], SocketAddr) -> Option<R> + 'static,
    R: AsRef<[u8]> + 'static,
{
    fn datagram_received(
        &mut self,
        transport: &mut UdpTransport<'_>,
        data: &[u8],
        from: SocketAddr,
    ) {
        if let Some(reply) = (self.handler)(data, from)
            && let Err(e) = transport.write(reply.as_ref(), from)
        {
            log::warn!("{}: reply to {from}: {e}", self.name);
        }
    }

    fn log_prefix(&self) -> &str {
        self.name
    }
}

/// The last path segment of a type's name, generics kept: `my::mod::Echo` -> `Echo`.
pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let head = full.split('<').next().unwrap_or(full);
    match head.rfind("::") {
        Some(i) => &full[i + 2..],
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::short_type_name;

    struct Echo;

    #[test]
    fn short_names() {
        assert_eq!(short_type_name::<Echo>(), "Echo");
        assert_eq!(short_type_name::<Vec<u8>>(), "Vec<u8>");
    }
}
