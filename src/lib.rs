//! Twisted's reactor model for UDP, on a hand-rolled mio event loop.
//!
//! The package `twine-udp`, imported as `twine`. Unix only (Linux, the BSDs, macOS):
//! elsewhere it does not compile. The batch I/O, the offloads, the error queue and the
//! per-datagram options are Linux's; the table at the end says what other Unix systems
//! get instead.
//!
//! # The model
//!
//! - A [`Reactor`] is one event loop on one thread. It owns every port, every timer, and
//!   a queue of calls from other threads. [`Reactor::run`] turns it until
//!   [`Reactor::stop`], SIGINT or SIGTERM.
//! - A **port** is one UDP socket with one protocol, opened with
//!   [`Reactor::listen_udp`], [`Reactor::listen_multicast`] or
//!   [`Reactor::adopt_datagram_port`]; the call returns a [`ListeningPort`] handle.
//! - A **protocol** is your type implementing [`DatagramProtocol`]: the reactor calls its
//!   hooks (`start_protocol`, `datagram_received`, `connection_refused`,
//!   `stop_protocol`). A closure works too ([`from_fn`]).
//! - A **transport** ([`UdpTransport`]) is handed to every hook: it writes datagrams,
//!   connects, joins multicast groups, schedules timers and stops the port, and reaches
//!   the whole reactor ([`UdpTransport::reactor`]).
//! - **Timers** replace the threads Python UDP programs use for periodic work:
//!   [`Reactor::call_later`] and [`Reactor::call_every`] (Twisted's `callLater` and
//!   `LoopingCall`), or their port-scoped forms on the transport, whose closures get the
//!   protocol and its transport. Other threads get a [`ReactorHandle`].
//! - **Past one core**, a [`ReactorPool`] serves one address with a reactor per thread,
//!   each with its own socket (`SO_REUSEPORT`) and its own protocol from a factory; the
//!   kernel spreads the clients over them by a hash of their address.
//! - **Offloads and latency**: replies gathered during a batch go out segmented
//!   ([`ListenOptions::segmentation`], on by default); the kernel may coalesce a sender's
//!   datagrams into one read, cut back into those datagrams before any hook sees one
//!   ([`ListenOptions::receive_offload`], off by default); and a reactor may poll without
//!   blocking for a while before it sleeps ([`Reactor::set_spin`]).
//! - **What real hosts need**: per datagram, the address it arrived on, its interface,
//!   TOS byte and kernel receive time ([`UdpTransport::arrival`], with
//!   [`ListenOptions::arrival_address`], [`ListenOptions::receive_tos`],
//!   [`ListenOptions::receive_timestamps`]); replies from the arrival address
//!   ([`ListenOptions::reply_from_arrival`]) and a source and TOS byte per write
//!   ([`UdpTransport::write_with`]); source-specific multicast
//!   ([`UdpTransport::join_source_group`]); and requests resent on a timeout until their
//!   reply comes ([`request::Requests`]).
//!
//! # Example: an echo server
//!
//! ```
//! use std::net::{SocketAddr, UdpSocket};
//! use std::time::Duration;
//! use twine::{DatagramProtocol, ListenOptions, Reactor, UdpTransport};
//!
//! struct Echo;
//!
//! impl DatagramProtocol for Echo {
//!     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
//!         if let Err(e) = t.write(data, from) {
//!             log::warn!("echo to {from}: {e}");
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), Box<dyn std::error::Error>> {
//! let mut reactor = Reactor::new()?;
//! let port = reactor.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), Echo)?;
//!
//! // A plain client, to show it works; a server would just call `reactor.run()`.
//! let client = UdpSocket::bind("127.0.0.1:0")?;
//! client.send_to(b"hello", port.local_addr())?;
//! client.set_nonblocking(true)?;
//! let mut buf = [0; 64];
//! let mut reply = None;
//! reactor.run_until(Duration::from_secs(5), |_| {
//!     reply = client.recv(&mut buf).ok();
//!     reply.is_some()
//! })?;
//! assert_eq!(reply.map(|n| &buf[..n]), Some(&b"hello"[..]));
//! # Ok(())
//! # }
//! ```
//!
//! # Example: a client with a timer
//!
//! A client asks a server every second (a port-scoped `call_every`, whose closure gets
//! the protocol and its transport; written `Self::call_every`, the closure's protocol type
//! is checked at compile time), and stops once it has three answers.
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use twine::{DatagramProtocol, ListenOptions, Reactor, UdpTransport, respond};
//!
//! struct Asker {
//!     server: SocketAddr,
//!     answers: u32,
//! }
//!
//! impl DatagramProtocol for Asker {
//!     fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
//!         let asked = Self::call_every(t, Duration::from_millis(10), |me, t| {
//!             if let Err(e) = t.write(b"time?", me.server) {
//!                 log::warn!("asking {}: {e}", me.server);
//!             }
//!         });
//!         if let Err(e) = asked {
//!             log::warn!("no timer: {e}");
//!         }
//!     }
//!     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, _data: &[u8], from: SocketAddr) {
//!         if from == self.server {
//!             self.answers += 1;
//!             if self.answers == 3 {
//!                 t.reactor().stop();
//!             }
//!         }
//!     }
//! }
//!
//! # fn main() -> Result<(), twine::Error> {
//! let mut reactor = Reactor::new()?;
//! # reactor.set_handle_signals(false);
//! let time = respond(|_data, _from| Some(b"12:00".to_vec()));
//! let server = reactor.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), time)?;
//! let asker = Asker { server: server.local_addr(), answers: 0 };
//! reactor.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), asker)?;
//! reactor.run()?; // until the third answer
//! # Ok(())
//! # }
//! ```
//!
//! # Testing a protocol without sockets or waits
//!
//! [`testing::Simulation`] is a reactor on a virtual clock whose ports live on an
//! in-memory network: the protocol runs unmodified, time jumps to the next timer, and
//! the test injects datagrams, refusals and errors and reads back every write.
//!
//! ```
//! use std::time::Duration;
//! use twine::{ListenOptions, from_fn, testing::Simulation};
//!
//! let mut sim = Simulation::new(1)?;
//! let echo = sim.listen_udp_with(
//!     ListenOptions::new(7).interface("127.0.0.1"),
//!     from_fn(|t, data, from| {
//!         let _ = t.write(data, from);
//!     }),
//! )?;
//! let client = "127.0.0.1:5000".parse()?;
//! sim.inject(echo.local_addr(), client, b"ping");
//! sim.advance(Duration::from_secs(30))?; // no real wait
//! let sent = sim.take_sent();
//! assert_eq!((sent[0].to, &sent[0].data[..]), (client, &b"ping"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```
//!
//! # Guarantees
//!
//! - **`start_protocol` first, `stop_protocol` last, each once.** `start_protocol` runs
//!   inside the listen call, before any datagram. `stop_protocol` runs on a reactor turn
//!   after the stop was asked for (`stop_listening`, `Reactor::stop`, a signal, a panic in
//!   a hook with [`ListenOptions::close_on_panic`]), while the socket is still open; no
//!   datagram is delivered after the stop is asked for, and no hook is called after
//!   `stop_protocol` (errors and refusals still pending then are counted in
//!   [`PortStats::errors_unreported`], not reported). A [`Reactor`] dropped without a stop
//!   closes its sockets without calling `stop_protocol`: stop it (and let the stopping
//!   turn run) first.
//! - **A datagram goes where it was written.** Once `write` has accepted a datagram for
//!   an address, it goes to that address or is counted as failed, whatever happens after
//!   (a `connect` to another peer included); a connected port delivers only its peer's
//!   datagrams (others still queued from before the connect are counted in
//!   [`PortStats::not_from_peer`]).
//! - **Fair.** A port reads until the kernel has nothing more (a batch comes back short,
//!   or `EAGAIN`), but at most a budget per turn (256 datagrams or 256 KiB by default,
//!   both counted, so empty datagrams cannot dodge it, and a batch is cut to what the byte
//!   budget has room for, so a turn takes at most one max-size datagram past it); a port
//!   with data left is served again next turn without waiting for a new readiness event,
//!   after the other ports and the due timers. Calls from other threads run at most 1024
//!   a turn, and their queue is bounded ([`Reactor::set_thread_call_limit`]).
//! - **Timers** never fire early; calls due at the same instant fire in the order they
//!   were scheduled; a call scheduled for "now" from a timer runs on the next turn.
//! - **Writes never block the reactor and never panic.** A full kernel buffer queues the
//!   datagram (bounded; see [`UdpTransport`]); every failure is a typed [`Error`] or, for
//!   a [gathered write](UdpTransport#gathered-writes), a counter in [`PortStats`]. Each
//!   port's datagrams leave in the order they were written.
//! - **Batched, allocation-free I/O.** Datagrams are read up to
//!   [`ListenOptions::batch_size`] per system call into buffers the reactor reuses, and
//!   the writes made while a batch is dispatched are
//!   [gathered](UdpTransport#gathered-writes) and sent together; in the steady state of an
//!   echo server no heap allocation happens per datagram.
//! - **Nothing is lost silently.** A datagram longer than the port's max packet size is
//!   dropped (never delivered cut short, unless
//!   [`ListenOptions::deliver_truncated`] asks for it), logged and counted in
//!   [`PortStats::truncated`]; datagrams the kernel dropped for a full receive buffer are
//!   counted in [`PortStats::kernel_dropped`] (`SO_RXQ_OVFL`, Linux); a send dropped at
//!   the queue bound is counted in [`PortStats::send_dropped`]; a write the kernel refuses
//!   after `write` returned, and an ICMP error naming the destination it was about (Linux
//!   `IP_RECVERR`), reach [`DatagramProtocol::error_received`], or, past 1024 waiting or
//!   once the port is closing, are counted in [`PortStats::errors_unreported`]. The
//!   kernel's error queue is read as soon as the kernel flags an error (and whenever a
//!   call meets one), so that it never fills the socket's receive buffer. An earlier
//!   datagram's ICMP error met by a later call never costs that call its datagram.
//!   Counters are readable per port at any time and logged when it stops.
//! - **Bounded memory.** The send queue charges each datagram its payload plus 128 bytes
//!   (what an entry costs), so that even empty datagrams are bounded by `send_queue_limit`;
//!   the error list is bounded (1024); the cross-thread queue is bounded.
//! - **Flow control.** Past [`ListenOptions::write_buffer_limits`]' high mark the send
//!   queue (and the writes gathered for a batch) pauses the protocol
//!   ([`DatagramProtocol::pause_producing`], right after the hook whose write crossed the
//!   mark) and resumes it at the low mark; past `send_queue_limit` a write is refused. A
//!   producer that heeds the pause never meets that bound (see
//!   [`UdpTransport::write_buffer_size`]).
//! - **Fault isolation.** A panic in a hook a remote peer can trigger
//!   (`datagram_received`, `datagram_truncated`, `error_received`, `connection_refused`,
//!   `pause_producing`, `resume_producing`) or in a port timer is caught, logged with the
//!   port's address (and the sender's), counted in [`PortStats::panics`], and costs that
//!   one event: the port goes on, as in Twisted, so that one datagram that trips a bug in
//!   a parser cannot shut a public server down ([`ListenOptions::close_on_panic`] closes
//!   the port instead). The protocol's state may be left half-updated by the panic. A
//!   panic in `start_protocol` or `stop_protocol` closes that port. A panic in a
//!   reactor-level timer or cross-thread call is caught and logged. Other ports and the
//!   reactor always go on. (Not with `panic = "abort"`.)
//! - **Stale handles are harmless.** Port slots and timer slots are reused, but each
//!   carries a generation: an event, timer or handle for a closed port never reaches a
//!   later one.
//! - **Logging** goes through the `log` crate only: `info` when a port starts
//!   (`"<Protocol> starting on <addr>"`) and stops (`"(UDP Port <addr> Closed)"`), `warn`
//!   for truncated datagrams (at most once a second per port), `error` for a caught
//!   panic, `debug`/`trace` for the rest; nothing per datagram above `debug`.
//!
//! # Implementation notes
//!
//! | what | Linux | other Unix |
//! |---|---|---|
//! | readiness | epoll, edge-triggered (mio) | kqueue (mio) |
//! | receive | `recvmmsg` into a reused batch; `MSG_TRUNC` flags truncation | `recvmsg` per datagram, same batch |
//! | send, while a batch is dispatched | gathered, then `sendmmsg`; runs to one peer of one length as one `UDP_SEGMENT` message | `sendmsg` per datagram |
//! | send, elsewhere (timers, `start_protocol` ...) | `sendto` / `send` (connected) | same |
//! | ICMP errors, unconnected port | the error queue (`IP_RECVERR`/`IPV6_RECVERR`) names the destination: `error_received` | not reported |
//! | ICMP errors, connected port | read as `ECONNREFUSED`: `connection_refused` | same |
//! | receive-queue drops | `SO_RXQ_OVFL` per batch, `SO_MEMINFO` when counters are read | not counted |
//! | truncation | `MSG_TRUNC`: the whole length is known | flagged, length unknown |
//! | cross-thread wake-up | eventfd (mio `Waker`) | pipe or kqueue user event |
//! | signals | signal-hook's self-pipe, registered while `run` runs | same |
//! | adoption checks | `fcntl(F_GETFD)`, `SO_TYPE`, `getsockname` | same |
//! | arrival address, TOS, timestamps ([`Arrival`]) | `IP_PKTINFO`/`IPV6_RECVPKTINFO`, `IP_RECVTOS`/`IPV6_RECVTCLASS`, `SO_TIMESTAMPNS`, read per datagram from its control messages | not available: the listen call fails with `SocketOption` |
//! | a write's source and TOS byte ([`WriteOptions`]) | `IP_PKTINFO`/`IPV6_PKTINFO` and `IP_TOS`/`IPV6_TCLASS` control messages on `sendmmsg`/`sendmsg` | refused (`Error::Send`, unsupported) |
//! | a reactor per core ([`ReactorPool`]) | one `SO_REUSEPORT` group, datagrams spread by a 4-tuple hash | `SO_REUSEPORT`, unicast not balanced |

#![deny(unsafe_code)]
#![deny(missing_docs, missing_debug_implementations)]
#![doc(test(attr(deny(warnings))))]

#[cfg(not(unix))]
compile_error!(
    "twine supports Unix only (Linux, the BSDs, macOS): it is built on Unix sockets, signals and fds"
);

mod error;
mod pool;
mod protocol;
mod reactor;
pub mod request;
#[allow(unsafe_code)]
mod sys;
pub mod testing;
mod udp;

pub use error::{Error, Result};

/// Not part of the API, and not stable: the batch I/O primitives the reactor uses and
/// CPU pinning, exported only with the `bench-support` feature, so that the benchmarks'
/// and tests' hand-written peer loops make the same system calls without `unsafe` of their
/// own.
#[cfg(feature = "bench-support")]
#[doc(hidden)]
pub mod bench_support {
    pub use crate::sys::{Datagram, RecvBatch, SendBatch, pin_to_cpu};
}
pub use pool::{PoolHandle, PoolStats, ReactorPool};
pub use protocol::{DatagramProtocol, Responder, from_fn, respond};
pub use reactor::handle::ReactorHandle;
pub use reactor::timer::DelayedCall;
pub use reactor::{ListeningPort, Reactor};
pub use udp::options::{
    DEFAULT_BATCH_SIZE, DEFAULT_MAX_PACKET_SIZE, DEFAULT_READ_BUDGET, DEFAULT_READ_BUDGET_BYTES,
    DEFAULT_SEND_QUEUE_LIMIT, DEFAULT_WRITE_HIGH, DEFAULT_WRITE_LOW,
};
pub use udp::{
    Arrival, Interface, IntoInterface, IpLiteral, ListenOptions, PeerAddr, PortStats, UdpTransport,
    WriteOptions,
};
