//! The reactor: one `mio::Poll`, a slab of ports, the timer queue, the cross-thread queue.
//!
//! One turn: tear down ports whose stop was asked for on an earlier turn; poll (not at all
//! if a port has data left over from its budget, else until the next timer); dispatch the
//! events; serve the ports left over from the last turn; run the timers that were due when
//! the turn began; if a stop was asked for, close every port.
//!
//! While a port's callback runs, the port is taken out of its slab slot, so the callback
//! can be handed `&mut Reactor` whole (it may open ports, schedule timers, stop the
//! reactor) and is put back afterwards. Teardown only ever happens between dispatches.

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::panic::{AssertUnwindSafe, catch_unwind, resume_unwind};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use log::{debug, error, info, trace};
use mio::{Events, Poll, Waker};
use slab::Slab;
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result};
use crate::handle::{ReactorHandle, Shared, ThreadCall};
use crate::protocol::DatagramProtocol;
use crate::signals::SignalWatch;
use crate::sys::{self, RecvBatch, SendBatch};
use crate::testing::network::{MemSocket, Network, Readiness};
use crate::timer::{DelayedCall, TimerQueue};
use crate::token::{self, PortKey};
use crate::udp::ListenOptions;
use crate::udp::options::DEFAULT_BATCH_SIZE;
use crate::udp::port::{Port, PortStats, PortTimerFn, UdpPort, once, panic_message};
use crate::udp::socket::PortSocket;
use crate::udp::transport::UdpTransport;

/// What a timer runs: a reactor-level closure, or a port-scoped one (type-erased
/// `PortTimerFn<P>`) that its port runs with its protocol and transport.
enum TimerAction {
    Reactor(Box<dyn FnMut(&mut Reactor)>),
    Port(PortKey, Box<dyn Any>),
}

impl fmt::Debug for TimerAction {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TimerAction::Reactor(_) => f.write_str("Reactor(..)"),
            TimerAction::Port(key, _) => write!(f, "Port({key:?}, ..)"),
        }
    }
}

struct Slot {
    generation: usize,
    /// A stop was asked for; the key is in `Reactor::closing`.
    closing: bool,
    /// `None` while the port's callback runs.
    port: Option<Box<dyn Port>>,
    /// The port's timers, cancelled when it closes (pruned of fired ones as it grows).
    timers: Vec<DelayedCall>,
    timers_pruned_at: usize,
    /// The key is in `Reactor::ready` (served again next turn): a flag, so that marking a
    /// port costs the same however many others are marked.
    in_ready: bool,
    /// The turn in which the port last read (served readable): a port read by an event is
    /// not read again as left over in the same turn, so no turn gives it more than its
    /// budget.
    read_in_turn: u64,
}

/// A handle to a listening port, returned by the listen and adopt calls: its address, and
/// the key to stop it, read its counters or reach its protocol through the [`Reactor`].
///
/// It stays harmless after the port closes: it never reaches a later port.
pub struct ListeningPort<P> {
    key: PortKey,
    local: SocketAddr,
    _protocol: PhantomData<fn() -> P>,
}

impl<P> Clone for ListeningPort<P> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<P> Copy for ListeningPort<P> {}

impl<P> fmt::Debug for ListeningPort<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListeningPort")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl<P> ListeningPort<P> {
    /// The address the port is bound to, with the real port number when 0 was asked for.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Twisted's name for [`local_addr`](Self::local_addr).
    #[doc(alias = "getHost")]
    pub fn get_host(&self) -> SocketAddr {
        self.local
    }
}

/// The event loop: one thread, any number of UDP ports, timers, and calls from other
/// threads. See the [crate docs](crate) for the model.
///
/// **Dropping** a reactor closes its sockets and drops its protocols, timers and queued
/// cross-thread calls, but runs no hook: `stop_protocol` runs only for a stop
/// ([`stop`](Self::stop), a signal, a [`ReactorHandle::stop`]) and the turn that carries
/// it out (the last turn of [`run`](Self::run), or an [`iterate`](Self::iterate) that
/// returns true). Stop it first when the protocols have something to say at the end.
pub struct Reactor {
    poll: Poll,
    events: Option<Events>,
    ports: Slab<Slot>,
    timers: TimerQueue<TimerAction>,
    /// Ports whose read budget ran out: served next turn without a new readiness edge.
    ready: Vec<PortKey>,
    ready_spare: Vec<PortKey>,
    /// Ports to tear down at the start of the next turn.
    closing: Vec<PortKey>,
    shared: Arc<Shared>,
    /// The calls being run this turn (kept to reuse its allocation).
    thread_calls: Vec<ThreadCall>,
    /// The signal pipe, made by the first `run` with signal handling on and kept.
    signals: SignalWatch,
    handle_signals: bool,
    stop_requested: bool,
    /// Turns, port dispatches and listen calls under way: `run`/`iterate` refuse to start
    /// a nested turn while it is not zero.
    busy: usize,
    /// Turns begun (counting from 1).
    turns: u64,
    /// Bumped by every stop asked for (of a port or of the reactor), so that a port
    /// dispatching a batch checks for one with a single compare per datagram.
    stops_asked: u64,
    /// The receive and send batches, lent to the port being read (`None` meanwhile).
    batches: Option<(Box<RecvBatch>, Box<SendBatch>)>,
    /// Where the reactor's time comes from.
    clock: Clock,
    /// The in-memory network of a simulated reactor ([`crate::testing::Simulation`]),
    /// where its listen calls open their ports.
    net: Option<Rc<RefCell<Network>>>,
    /// The in-memory sockets ready this turn (kept to reuse its allocation).
    readiness: Vec<Readiness>,
}

/// The reactor's time: the system's monotonic clock, or a manual one that moves only
/// when a simulation moves it.
#[derive(Debug)]
enum Clock {
    Real,
    Manual(Rc<Cell<Instant>>),
}

impl fmt::Debug for Reactor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Reactor")
            .field("ports", &self.ports.len())
            .field("timers", &self.timers.len())
            .field("stop_requested", &self.stop_requested)
            .finish_non_exhaustive()
    }
}

impl Drop for Reactor {
    fn drop(&mut self) {
        self.shared.close();
    }
}

fn io_error(context: &'static str) -> impl FnOnce(std::io::Error) -> Error {
    move |source| Error::Io { context, source }
}

impl Reactor {
    /// A new reactor with no ports and no timers.
    ///
    /// # Errors
    ///
    /// [`Error::Io`] if the kernel refuses an epoll instance or an eventfd.
    pub fn new() -> Result<Reactor> {
        let poll = Poll::new().map_err(io_error("creating the poll instance"))?;
        let waker =
            Waker::new(poll.registry(), token::WAKER).map_err(io_error("creating the waker"))?;
        Ok(Reactor {
            poll,
            events: Some(Events::with_capacity(1024)),
            ports: Slab::new(),
            timers: TimerQueue::default(),
            ready: Vec::new(),
            ready_spare: Vec::new(),
            closing: Vec::new(),
            shared: Arc::new(Shared::new(waker)),
            thread_calls: Vec::new(),
            signals: SignalWatch::new(),
            handle_signals: true,
            stop_requested: false,
            busy: 0,
            turns: 0,
            batches: None,
            stops_asked: 0,
            clock: Clock::Real,
            net: None,
            readiness: Vec::new(),
        })
    }

    /// A reactor on a manual clock whose listen calls open in-memory ports on `net`.
    pub(crate) fn simulated(
        clock: Rc<Cell<Instant>>,
        net: Rc<RefCell<Network>>,
    ) -> Result<Reactor> {
        let mut reactor = Reactor::new()?;
        reactor.clock = Clock::Manual(clock);
        reactor.net = Some(net);
        reactor.handle_signals = false;
        Ok(reactor)
    }

    /// The reactor's time now, what its timers are scheduled against (Twisted's
    /// `reactor.seconds()`): the system's monotonic clock, or in a
    /// [`Simulation`](crate::testing::Simulation) its virtual time. A protocol that
    /// notes when things happened should read this rather than `Instant::now()`, so that
    /// it can be tested in virtual time.
    #[inline]
    pub fn now(&self) -> Instant {
        match &self.clock {
            Clock::Real => Instant::now(),
            Clock::Manual(clock) => clock.get(),
        }
    }

    /// A handle for other threads: [`ReactorHandle::call_from_thread`] and
    /// [`ReactorHandle::stop`].
    pub fn handle(&self) -> ReactorHandle {
        ReactorHandle {
            shared: Arc::clone(&self.shared),
        }
    }

    /// How many [`call_from_thread`](ReactorHandle::call_from_thread) calls may wait for
    /// the reactor at a time (default [`ReactorHandle::DEFAULT_CALL_LIMIT`]); past it a
    /// call is refused with [`Error::CallQueueFull`]. Calls already waiting beyond a
    /// lowered limit stay queued. A limit of 0 refuses every call;
    /// [`ReactorHandle::stop`] is never refused.
    pub fn set_thread_call_limit(&mut self, limit: usize) {
        self.shared.set_limit(limit);
    }

    /// Whether [`run`](Self::run) stops gracefully on SIGINT and SIGTERM (the default).
    ///
    /// How it works: the first `run` with handling on gives the reactor a signal pipe
    /// (through signal-hook), kept until the reactor is dropped. While `run` runs, either
    /// signal stops it; one that came while this reactor was not inside `run` is
    /// discarded, and does not stop a later `run`. signal-hook's process-wide handler
    /// stays installed once set, so with it twine also registers, once per process, a
    /// signal-hook action for each signal that emulates the default (the process ends,
    /// killed by the signal) whenever no reactor of the process is inside `run` with
    /// handling on. That action is never removed. A signal the process ignored when twine
    /// first looked stays ignored.
    ///
    /// A program that handles SIGINT or SIGTERM itself must call
    /// `set_handle_signals(false)` on every reactor before its first `run`. With handling
    /// off on every reactor, twine installs no signal handler and no action at all, and the
    /// program's handler works as if twine were not there. Otherwise, once any reactor has
    /// run with handling on, a signal arriving while no reactor runs ends the process even
    /// if the program registered its own handler (`signal_hook::flag::register`, say): its
    /// action runs, then twine's ends the process, because signal-hook gives an action no
    /// way to tell whether another is registered for the signal. A handler set with plain
    /// `sigaction` before then is chained by signal-hook and fares the same; one set after
    /// replaces signal-hook's, and `run` no longer sees the signal.
    pub fn set_handle_signals(&mut self, on: bool) {
        self.handle_signals = on;
    }

    // ----- ports -------------------------------------------------------------------------

    /// Listens on UDP `port` on every IPv4 interface (`0.0.0.0`), as Twisted's
    /// `listenUDP(port, protocol)`; port 0 picks a free one. `start_protocol` runs before
    /// this returns.
    ///
    /// # Errors
    ///
    /// [`Error::CannotListen`] naming the address if the socket cannot be bound;
    /// [`Error::StartPanicked`] if `start_protocol` panicked (the port is closed).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let port = reactor.listen_udp(0, twine::from_fn(|t, data, from| {
    ///     let _ = t.write(data, from);
    /// }))?;
    /// assert_ne!(port.local_addr().port(), 0);
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "listenUDP")]
    pub fn listen_udp<P: DatagramProtocol>(
        &mut self,
        port: u16,
        protocol: P,
    ) -> Result<ListeningPort<P>> {
        self.listen_udp_with(ListenOptions::new(port), protocol)
    }

    /// Listens with [`ListenOptions`]: interface (IPv4 or IPv6 literal), max packet size,
    /// buffer sizes, port sharing, read budget, send queue bound.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] for an interface that is not an IP literal and
    /// [`Error::InvalidOption`] for a size out of range, both before any socket exists;
    /// then as [`listen_udp`](Self::listen_udp).
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::{ListenOptions, Reactor, from_fn};
    /// let mut reactor = Reactor::new()?;
    /// let port = reactor.listen_udp_with(
    ///     ListenOptions::new(0).interface("127.0.0.1").max_packet_size(1500),
    ///     from_fn(|_, _, _| {}),
    /// )?;
    /// assert_eq!(port.local_addr().ip().to_string(), "127.0.0.1");
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn listen_udp_with<P: DatagramProtocol>(
        &mut self,
        opts: ListenOptions,
        protocol: P,
    ) -> Result<ListeningPort<P>> {
        let addr = opts.bind_addr()?;
        if let Some(net) = self.net.clone() {
            return self.open_memory_port(net, addr, protocol, &opts);
        }
        let socket =
            bind_socket(addr, &opts).map_err(|source| Error::CannotListen { addr, source })?;
        self.open_port(socket, protocol, &opts, None)
    }

    /// Listens on `port` for multicast, on every IPv4 interface, as Twisted's
    /// `listenMulticast`. With `listen_multiple`, other sockets (in this process or
    /// another) may bind the same port (`SO_REUSEADDR` + `SO_REUSEPORT`), and each gets
    /// every multicast datagram. Join groups with [`UdpTransport::join_group`].
    ///
    /// For an IPv6 port or other options, use
    /// [`listen_udp_with`](Self::listen_udp_with) and
    /// [`ListenOptions::listen_multiple`].
    ///
    /// # Errors
    ///
    /// As [`listen_udp`](Self::listen_udp).
    #[doc(alias = "listenMulticast")]
    pub fn listen_multicast<P: DatagramProtocol>(
        &mut self,
        port: u16,
        protocol: P,
        listen_multiple: bool,
    ) -> Result<ListeningPort<P>> {
        self.listen_udp_with(
            ListenOptions::new(port).listen_multiple(listen_multiple),
            protocol,
        )
    }

    /// Serves `protocol` on an existing, already bound IPv4 or IPv6 datagram socket, given
    /// by raw fd, as Twisted's `adoptDatagramPort`.
    ///
    /// **Ownership:** the reactor works on its own duplicate of `fd` (`dup`), which it
    /// closes when the port stops; `fd` stays the caller's, to close whenever it likes
    /// (at once is fine). The duplicate shares the open socket, so `fd` is switched to
    /// non-blocking mode too, and datagrams read through `fd` are not seen by the port.
    ///
    /// **Checks**, before anything is changed: `fd` is open and a socket
    /// ([`Error::BadDescriptor`]), of an IP family ([`Error::UnsupportedAddressFamily`]),
    /// a datagram socket ([`Error::UnsupportedSocketType`]), and bound
    /// ([`Error::NotBound`]). On any of them `fd` is left untouched.
    ///
    /// # Errors
    ///
    /// As above, and [`Error::Io`] if the duplicate cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    /// let mut reactor = twine::Reactor::new()?;
    /// let port = reactor.adopt_datagram_port(socket.as_raw_fd(), twine::from_fn(|t, d, from| {
    ///     let _ = t.write(d, from);
    /// }))?;
    /// assert_eq!(Some(port.local_addr()), socket.local_addr().ok());
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "adoptDatagramPort")]
    pub fn adopt_datagram_port<P: DatagramProtocol>(
        &mut self,
        fd: RawFd,
        protocol: P,
    ) -> Result<ListeningPort<P>> {
        self.adopt_with(fd, ListenOptions::new(0), protocol)
    }

    /// [`adopt_datagram_port`](Self::adopt_datagram_port) for a socket object (a
    /// `std::net::UdpSocket`, a `socket2::Socket`, ...): the reactor duplicates it, and the
    /// object stays the caller's.
    ///
    /// # Errors
    ///
    /// As [`adopt_datagram_port`](Self::adopt_datagram_port).
    pub fn adopt_socket<P: DatagramProtocol>(
        &mut self,
        socket: &impl AsFd,
        protocol: P,
    ) -> Result<ListeningPort<P>> {
        self.adopt_with(socket.as_fd().as_raw_fd(), ListenOptions::new(0), protocol)
    }

    /// [`adopt_datagram_port`](Self::adopt_datagram_port) with options: the max packet
    /// size, buffer sizes, read budget and send queue bound apply; the port number,
    /// interface and port sharing are the socket's own.
    ///
    /// # Errors
    ///
    /// As [`adopt_datagram_port`](Self::adopt_datagram_port), and
    /// [`Error::InvalidOption`].
    pub fn adopt_with<P: DatagramProtocol>(
        &mut self,
        fd: RawFd,
        opts: ListenOptions,
        protocol: P,
    ) -> Result<ListeningPort<P>> {
        opts.check()?;
        let bound = sys::inspect_socket(fd)?;
        trace!("adopting fd {fd}, bound to {bound}");
        let owned = sys::dup_cloexec(fd).map_err(io_error("duplicating the adopted fd"))?;
        let socket = Socket::from(owned);
        socket
            .set_nonblocking(true)
            .map_err(io_error("making the adopted fd non-blocking"))?;
        apply_buffer_sizes(&socket, &opts)
            .map_err(io_error("setting the adopted socket's buffers"))?;
        // A connected socket (socket activation hands such ones too) is served as one.
        let peer = socket.peer_addr().ok().and_then(|a| a.as_socket());
        if let Some(peer) = peer {
            trace!("adopted fd {fd} is connected to {peer}");
        }
        self.open_port(socket.into(), protocol, &opts, peer)
    }

    /// Validated socket in, running port out: register, start, put in the slab.
    fn open_port<P: DatagramProtocol>(
        &mut self,
        socket: std::net::UdpSocket,
        protocol: P,
        opts: &ListenOptions,
        peer: Option<SocketAddr>,
    ) -> Result<ListeningPort<P>> {
        let local = socket
            .local_addr()
            .map_err(io_error("reading the bound address"))?;
        let mut socket = PortSocket::Kernel(mio::net::UdpSocket::from_std(socket));
        let key = self.reserve_slot()?;
        if let Err(source) = socket.register(self.poll.registry(), key) {
            self.ports.remove(key.index);
            return Err(Error::Io {
                context: "registering the port",
                source,
            });
        }
        trace!("registered port {local} as {key:?}");
        self.start_port(key, local, socket, protocol, opts, peer)
    }

    /// An in-memory port bound to `addr` on `net` (port 0: one the network picks).
    fn open_memory_port<P: DatagramProtocol>(
        &mut self,
        net: Rc<RefCell<Network>>,
        addr: SocketAddr,
        protocol: P,
        opts: &ListenOptions,
    ) -> Result<ListeningPort<P>> {
        let key = self.reserve_slot()?;
        let bound = net.borrow_mut().bind(addr, key);
        let local = match bound {
            Ok(local) => local,
            Err(source) => {
                self.ports.remove(key.index);
                return Err(Error::CannotListen { addr, source });
            }
        };
        let socket = PortSocket::Memory(MemSocket { net, addr: local });
        self.start_port(key, local, socket, protocol, opts, None)
    }

    /// Runs `start_protocol` of a port registered under `key`, and puts it in its slot.
    fn start_port<P: DatagramProtocol>(
        &mut self,
        key: PortKey,
        local: SocketAddr,
        socket: PortSocket,
        protocol: P,
        opts: &ListenOptions,
        peer: Option<SocketAddr>,
    ) -> Result<ListeningPort<P>> {
        let mut port = UdpPort::new(socket, key, local, protocol, opts);
        if let Some(peer) = peer {
            port.core_mut().adopt_peer(peer);
        }
        info!("{} starting on {local}", port.core().prefix);
        self.busy += 1;
        port.start(self);
        self.busy -= 1;
        if let Some(message) = port.core_mut().panic.take() {
            self.remove_slot(key);
            let _ = port.core_mut().socket.deregister(self.poll.registry());
            info!("(UDP Port {local} Closed)");
            return Err(Error::StartPanicked {
                addr: local,
                message,
            });
        }
        self.put_back(key, Box::new(port));
        Ok(ListeningPort {
            key,
            local,
            _protocol: PhantomData,
        })
    }

    fn reserve_slot(&mut self) -> Result<PortKey> {
        let index = self.ports.vacant_key();
        if !PortKey::index_fits(index) {
            return Err(Error::Io {
                context: "opening a port",
                source: std::io::Error::other("too many ports in one reactor"),
            });
        }
        // Drawn from one counter for the whole process, so that a handle from one reactor
        // never matches a port of another.
        let generation =
            PortKey::truncate_generation(NEXT_GENERATION.fetch_add(1, Ordering::Relaxed));
        let index = self.ports.insert(Slot {
            generation,
            closing: false,
            port: None,
            timers: Vec::new(),
            timers_pruned_at: 0,
            in_ready: false,
            read_in_turn: 0,
        });
        Ok(PortKey { index, generation })
    }

    /// Stops a port, as [`UdpTransport::stop_listening`] does from inside. Returns whether
    /// it was listening.
    #[doc(alias = "stopListening")]
    pub fn stop_listening<P>(&mut self, port: &ListeningPort<P>) -> bool {
        if !self.is_live(port.key) || self.close_requested(port.key) {
            return false;
        }
        self.request_close(port.key);
        true
    }

    /// Whether the port is open and not stopping.
    pub fn is_listening<P>(&self, port: &ListeningPort<P>) -> bool {
        self.is_live(port.key) && !self.close_requested(port.key)
    }

    /// The port's counters, or `None` once it is closed (or while its own callback runs).
    pub fn port_stats<P>(&self, port: &ListeningPort<P>) -> Option<PortStats> {
        let slot = self.slot(port.key)?;
        slot.port.as_ref().map(|p| p.core().current_stats())
    }

    /// Runs `f` with the port's protocol and a transport, from outside its callbacks: e.g.
    /// to send a first datagram from `main`. A panic in `f` closes the port, as one in
    /// `start_protocol` does (`f` is the program's own code, not something a peer sent).
    ///
    /// # Errors
    ///
    /// [`Error::PortClosed`] if the port is closed (or `f` panicked);
    /// [`Error::PortBusy`] if it is the port whose callback is running (use the
    /// callback's transport).
    pub fn with_port<P: DatagramProtocol, R>(
        &mut self,
        port: &ListeningPort<P>,
        f: impl FnOnce(&mut P, &mut UdpTransport<'_>) -> R,
    ) -> Result<R> {
        if self.slot(port.key).is_some_and(|slot| slot.port.is_none()) {
            return Err(Error::PortBusy);
        }
        let out = self.with_port_dyn(port.key, |p, r| {
            let port = p.as_any_mut().downcast_mut::<UdpPort<P>>()?;
            port.call(r, f)
        });
        out.flatten().ok_or(Error::PortClosed)
    }

    /// The number of open ports.
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    fn is_live(&self, key: PortKey) -> bool {
        self.slot(key).is_some()
    }

    /// The slot of `key`, unless the port is gone (read-only: [`live_slot`](Self::live_slot)).
    fn slot(&self, key: PortKey) -> Option<&Slot> {
        self.ports
            .get(key.index)
            .filter(|slot| slot.generation == key.generation)
    }

    /// A count that changes whenever a stop is asked for: unchanged since it was read, no
    /// port has been asked to close and the reactor has not been asked to stop since.
    pub(crate) fn stops_asked(&self) -> u64 {
        self.stops_asked
    }

    /// Whether a stop was asked for this port and it is not torn down yet.
    pub(crate) fn close_requested(&self, key: PortKey) -> bool {
        self.slot(key).is_some_and(|slot| slot.closing)
    }

    pub(crate) fn request_close(&mut self, key: PortKey) {
        let Some(slot) = self.live_slot(key) else {
            return;
        };
        if slot.closing {
            return;
        }
        slot.closing = true;
        if let Some(port) = slot.port.as_mut() {
            port.core_mut().closing = true;
        }
        // Its timers will never fire: cancelled now, not at teardown, so that none runs
        // later in this turn and none counts as pending meanwhile.
        for call in std::mem::take(&mut slot.timers) {
            self.timers.cancel(call);
        }
        self.stops_asked += 1;
        trace!("close requested for {key:?}");
        self.closing.push(key);
    }

    /// Lends the batches to a port that reads up to `batch` datagrams of up to `max` bytes
    /// per call; they grow (once) to fit it.
    pub(crate) fn lend_batches(
        &mut self,
        batch: usize,
        max: usize,
    ) -> (Box<RecvBatch>, Box<SendBatch>) {
        let (mut recv_batch, mut out) = self.batches.take().unwrap_or_else(|| {
            (
                Box::new(RecvBatch::default()),
                Box::new(SendBatch::with_capacity(DEFAULT_BATCH_SIZE, 64 * 1024)),
            )
        });
        recv_batch.reserve(batch, max);
        out.reserve(batch);
        (recv_batch, out)
    }

    /// Takes the lent batches back.
    pub(crate) fn return_batches(&mut self, recv_batch: Box<RecvBatch>, out: Box<SendBatch>) {
        self.batches = Some((recv_batch, out));
    }

    /// Takes the port out of its slot, runs `f` with it and the whole reactor, puts it back.
    /// `None` if the port is gone or its own callback is running.
    fn with_port_dyn<R>(
        &mut self,
        key: PortKey,
        f: impl FnOnce(&mut dyn Port, &mut Reactor) -> R,
    ) -> Option<R> {
        let slot = self.live_slot(key)?;
        let mut port = slot.port.take()?;
        self.busy += 1;
        let out = f(port.as_mut(), self);
        self.busy -= 1;
        self.put_back(key, port);
        Some(out)
    }

    fn put_back(&mut self, key: PortKey, mut port: Box<dyn Port>) {
        let core = port.core_mut();
        core.sync_interest(self.poll.registry());
        // A stop asked for through the reactor while the port was out of its slot.
        core.closing |= self.close_requested(key);
        let closing = core.closing;
        match self.live_slot(key) {
            Some(slot) => slot.port = Some(port),
            _ => {
                // Cannot happen while nested turns are refused; never let the port reach
                // another one's slot.
                error!(
                    "port {} lost its slot while out of it; closing it",
                    port.core().local
                );
                let _ = port.core_mut().socket.deregister(self.poll.registry());
                return;
            }
        }
        if closing {
            self.request_close(key);
        }
    }

    /// Empties a port's slot, cancelling the port's timers.
    fn remove_slot(&mut self, key: PortKey) -> Slot {
        let slot = self.ports.remove(key.index);
        for call in &slot.timers {
            self.timers.cancel(*call);
        }
        slot
    }

    /// Tears down the ports whose stop was asked for: `stop_protocol`, then close.
    fn process_closes(&mut self) {
        while !self.closing.is_empty() {
            for key in std::mem::take(&mut self.closing) {
                if !self.is_live(key) {
                    continue;
                }
                let Some(mut port) = self.remove_slot(key).port else {
                    continue;
                };
                if let Err(e) = port.core_mut().socket.deregister(self.poll.registry()) {
                    debug!("deregistering {key:?}: {e}");
                }
                port.shut_down(self);
            }
        }
    }

    // ----- timers ------------------------------------------------------------------------

    /// Runs `f` once, `delay` from now, on the reactor's thread: Twisted's `callLater`.
    /// It never fires early; calls due at the same instant fire in the order they were
    /// scheduled; one scheduled from a timer for "now" runs on the next turn. A panic in
    /// `f` is caught and logged.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut reactor = twine::Reactor::new()?;
    /// let call = reactor.call_later(Duration::from_millis(1), |r| r.stop());
    /// assert!(reactor.is_pending(call));
    /// reactor.run()?;
    /// assert!(!reactor.is_pending(call));
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "callLater")]
    pub fn call_later(
        &mut self,
        delay: Duration,
        f: impl FnOnce(&mut Reactor) + 'static,
    ) -> DelayedCall {
        let mut f = Some(f);
        let action = TimerAction::Reactor(Box::new(move |r| {
            if let Some(f) = f.take() {
                f(r)
            }
        }));
        self.timers.schedule(self.now(), delay, None, action)
    }

    /// Runs `f` every `interval` (first after one interval) until cancelled: Twisted's
    /// `LoopingCall`. Missed runs are skipped, not bunched. A panic in `f` stops it.
    ///
    /// An interval of zero runs `f` once per reactor turn, and so keeps the loop from
    /// ever sleeping (busy, as Twisted's `LoopingCall` with interval 0 is); other timers
    /// and ports still get their turn.
    #[doc(alias = "LoopingCall")]
    pub fn call_every(
        &mut self,
        interval: Duration,
        f: impl FnMut(&mut Reactor) + 'static,
    ) -> DelayedCall {
        let action = TimerAction::Reactor(Box::new(f));
        self.timers
            .schedule(self.now(), interval, Some(interval), action)
    }

    /// A port-scoped [`call_later`](Self::call_later) from outside the port's callbacks:
    /// `f` gets the port's protocol and transport; it is dropped if the port closes first.
    ///
    /// # Errors
    ///
    /// [`Error::PortClosed`] if the port is closed.
    pub fn call_later_on<P: DatagramProtocol>(
        &mut self,
        port: &ListeningPort<P>,
        delay: Duration,
        f: impl FnOnce(&mut P, &mut UdpTransport<'_>) + 'static,
    ) -> Result<DelayedCall> {
        self.schedule_on_port(port, delay, None, once(f))
    }

    /// A port-scoped [`call_every`](Self::call_every) from outside the port's callbacks.
    ///
    /// # Errors
    ///
    /// [`Error::PortClosed`] if the port is closed.
    pub fn call_every_on<P: DatagramProtocol>(
        &mut self,
        port: &ListeningPort<P>,
        interval: Duration,
        f: impl FnMut(&mut P, &mut UdpTransport<'_>) + 'static,
    ) -> Result<DelayedCall> {
        self.schedule_on_port(port, interval, Some(interval), f)
    }

    fn schedule_on_port<P: DatagramProtocol>(
        &mut self,
        port: &ListeningPort<P>,
        delay: Duration,
        interval: Option<Duration>,
        f: impl FnMut(&mut P, &mut UdpTransport<'_>) + 'static,
    ) -> Result<DelayedCall> {
        if !self.is_listening(port) {
            return Err(Error::PortClosed);
        }
        let boxed: PortTimerFn<P> = Box::new(f);
        self.schedule_port_timer(port.key, delay, interval, Box::new(boxed))
    }

    /// Schedules a port timer and records it in the port's slot, so that closing the port
    /// cancels it. [`Error::PortClosed`] if the port is already torn down (e.g. from
    /// `stop_protocol`).
    pub(crate) fn schedule_port_timer(
        &mut self,
        key: PortKey,
        delay: Duration,
        interval: Option<Duration>,
        f: Box<dyn Any>,
    ) -> Result<DelayedCall> {
        if !self.is_live(key) || self.close_requested(key) {
            return Err(Error::PortClosed);
        }
        let now = self.now();
        let call = self
            .timers
            .schedule(now, delay, interval, TimerAction::Port(key, f));
        let timers = &self.timers;
        let slot = &mut self.ports[key.index];
        slot.timers.push(call);
        if slot.timers.len() >= 2 * slot.timers_pruned_at.max(8) {
            slot.timers.retain(|c| timers.is_pending(*c));
            slot.timers_pruned_at = slot.timers.len();
        }
        Ok(call)
    }

    /// Cancels a call. Returns whether it was pending.
    pub fn cancel(&mut self, call: DelayedCall) -> bool {
        self.timers.cancel(call)
    }

    /// Moves a pending call's deadline to `delay` from now (Twisted's
    /// `DelayedCall.reset`). Returns whether it was pending.
    pub fn reset(&mut self, call: DelayedCall, delay: Duration) -> bool {
        self.is_pending(call) && self.timers.reset(self.now(), call, delay)
    }

    /// Whether a call will still fire: false once a one-shot call has started to run,
    /// after a cancel, or once a port-scoped call's port is closed.
    #[doc(alias = "active")]
    pub fn is_pending(&self, call: DelayedCall) -> bool {
        if !self.timers.is_pending(call) {
            return false;
        }
        match self.timers.action(call) {
            Some(TimerAction::Port(key, _)) => self.is_live(*key),
            _ => true,
        }
    }

    /// The number of scheduled calls (cancelled ones excluded).
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    fn run_timers(&mut self, boundary: u64) {
        let now = self.now();
        while let Some(mut due) = self.timers.pop_due(now, boundary) {
            match &mut due.action {
                TimerAction::Reactor(f) => {
                    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(self))) {
                        error!(
                            "timer callback panicked: {}; timer cancelled",
                            panic_message(&*panic)
                        );
                        self.timers.cancel(due.call);
                    }
                }
                TimerAction::Port(key, f) => {
                    // Gone, or panicked (as a reactor-level timer that panics, it stops).
                    if self.with_port_dyn(*key, |p, r| p.fire_timer(r, f)) != Some(true) {
                        self.timers.cancel(due.call);
                    }
                }
            }
            self.timers.finish(now, due);
        }
    }

    // ----- running -----------------------------------------------------------------------

    /// Asks the reactor to stop: at the end of the current turn every port is closed
    /// (each `stop_protocol` runs) and [`run`](Self::run) returns. Timers stay scheduled.
    pub fn stop(&mut self) {
        self.stop_requested = true;
        self.stops_asked += 1;
    }

    /// Whether a stop was asked for and has not happened yet.
    pub fn is_stopping(&self) -> bool {
        self.stop_requested
    }

    /// Runs turns until [`stop`](Self::stop) (from a callback, a timer or a
    /// [`ReactorHandle`]) or, unless turned off with
    /// [`set_handle_signals`](Self::set_handle_signals), SIGINT or SIGTERM. Then every
    /// port's `stop_protocol` runs, and `run` returns. After it returns, and once no other
    /// reactor of the process is inside `run`, the signals have their default effect again
    /// (see [`set_handle_signals`](Self::set_handle_signals)).
    ///
    /// A stop asked for while no turn runs (through [`ReactorHandle::stop`] between two
    /// `run`s, or [`stop`](Self::stop) before the first) is kept, as Twisted keeps such a
    /// stop queued: in its first turn the next `run` runs the cross-thread calls queued
    /// by then, closes the ports and returns.
    ///
    /// # Errors
    ///
    /// [`Error::Reentrant`] if called from a callback; [`Error::Io`] if polling or
    /// installing the signal handlers fails.
    pub fn run(&mut self) -> Result<()> {
        if self.busy > 0 {
            return Err(Error::Reentrant);
        }
        if self.handle_signals {
            self.install_signals()?;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            loop {
                match self.turn(None) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => return Err(e),
                }
            }
        }));
        // Also when a panic escaped (e.g. from a protocol's Drop): the signals must not
        // stay caught by a reactor that no longer runs.
        self.remove_signals();
        outcome.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Runs one turn, waiting at most `timeout` for something to happen (Twisted's
    /// `iterate`). Returns whether a stop happened in this turn (every port was closed).
    /// Signals are not handled here.
    ///
    /// # Errors
    ///
    /// [`Error::Reentrant`] if called from a callback; [`Error::Io`] if polling fails.
    pub fn iterate(&mut self, timeout: Duration) -> Result<bool> {
        if self.busy > 0 {
            return Err(Error::Reentrant);
        }
        self.turn(Some(timeout))
    }

    /// Runs turns until `done` returns true or `timeout` has passed; returns the last
    /// value of `done`. Made for tests and scripts: every wait has a deadline.
    ///
    /// # Errors
    ///
    /// As [`iterate`](Self::iterate).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut reactor = twine::Reactor::new()?;
    /// let call = reactor.call_later(Duration::from_millis(5), |_| {});
    /// let fired = reactor.run_until(Duration::from_secs(5), |r| !r.is_pending(call))?;
    /// assert!(fired);
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut Reactor) -> bool,
    ) -> Result<bool> {
        // A timeout too long for the clock (Duration::MAX) means no deadline.
        let deadline = self.now().checked_add(timeout);
        loop {
            if done(self) {
                return Ok(true);
            }
            let now = self.now();
            let left = match deadline {
                Some(deadline) if now >= deadline => return Ok(false),
                Some(deadline) => deadline - now,
                None => Duration::MAX,
            };
            self.iterate(left.min(Duration::from_millis(50)))?;
        }
    }

    /// One turn; returns whether the reactor stopped in it.
    fn turn(&mut self, max_wait: Option<Duration>) -> Result<bool> {
        let depth = self.busy;
        self.busy += 1;
        let outcome = catch_unwind(AssertUnwindSafe(|| self.turn_inner(max_wait)));
        // Restored even if a panic escaped the hooks' own guards (a Drop, say), so that
        // the reactor is not left refusing every later turn.
        self.busy = depth;
        outcome.unwrap_or_else(|panic| resume_unwind(panic))
    }

    fn turn_inner(&mut self, max_wait: Option<Duration>) -> Result<bool> {
        self.turns += 1;
        self.process_closes();
        let timeout = self.poll_timeout(max_wait);
        let timeout = self.pass_time(timeout);
        let mut events = self
            .events
            .take()
            .unwrap_or_else(|| Events::with_capacity(1024));
        let polled = self.poll.poll(&mut events, timeout);
        if let Err(e) = polled {
            self.events = Some(events);
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::Io {
                    context: "polling",
                    source: e,
                });
            }
            return Ok(false);
        }
        let boundary = self.timers.boundary();
        let left_over = std::mem::replace(&mut self.ready, std::mem::take(&mut self.ready_spare));
        for key in &left_over {
            if let Some(slot) = self.live_slot(*key) {
                slot.in_ready = false;
            }
        }
        for event in events.iter() {
            trace!("event {event:?}");
            match event.token() {
                token::WAKER => self.run_thread_calls(),
                token::SIGNALS => self.on_signals(),
                token => {
                    if let Some(key) = PortKey::from_token(token) {
                        // An error event (e.g. ICMP refusal) may come without readable: read
                        // anyway, so recv surfaces the error, and read the error queue.
                        let readable =
                            event.is_readable() || event.is_error() || event.is_read_closed();
                        self.serve_port(key, readable, event.is_writable(), event.is_error());
                    }
                }
            }
        }
        self.events = Some(events);
        self.serve_memory_ports();
        self.serve_left_over(left_over);
        self.run_timers(boundary);
        if self.stop_requested {
            self.close_all();
            return Ok(true);
        }
        Ok(false)
    }

    fn poll_timeout(&mut self, max_wait: Option<Duration>) -> Option<Duration> {
        if self.has_work_now() {
            return Some(Duration::ZERO);
        }
        let now = self.now();
        let timer = self.next_event().map(|d| d.saturating_duration_since(now));
        match (timer, max_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the next turn has something to do without waiting: ports to serve or tear
    /// down, a stop, or (simulated) datagrams and errors waiting at in-memory sockets.
    pub(crate) fn has_work_now(&self) -> bool {
        !self.ready.is_empty()
            || !self.closing.is_empty()
            || self.stop_requested
            || self
                .net
                .as_ref()
                .is_some_and(|net| net.borrow().any_ready())
    }

    /// When the next timer is due (with a manual clock: the next one that does not run
    /// every turn anyway, or the next datagram arrival of the simulated network, if
    /// sooner).
    pub(crate) fn next_event(&mut self) -> Option<Instant> {
        match &self.clock {
            Clock::Real => self.timers.next_deadline(),
            Clock::Manual(_) => {
                let timer = self.timers.next_deadline_not_every_turn();
                let arrival = self
                    .net
                    .as_ref()
                    .and_then(|net| net.borrow().next_arrival());
                match (timer, arrival) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// With a manual clock, the wait before this turn's poll passes at once: the clock
    /// moves on by it and the poll does not sleep (unless nothing at all is scheduled:
    /// then only a call from another thread can bring work, and the poll waits for it).
    fn pass_time(&mut self, wait: Option<Duration>) -> Option<Duration> {
        match (&self.clock, wait) {
            (Clock::Manual(clock), Some(wait)) => {
                if let Some(later) = clock.get().checked_add(wait) {
                    clock.set(later);
                }
                Some(Duration::ZERO)
            }
            _ => wait,
        }
    }

    /// Serves the in-memory ports of a simulated reactor that have something to do, after
    /// handing them the datagrams due by now.
    fn serve_memory_ports(&mut self) {
        let Some(net) = self.net.as_ref() else {
            return;
        };
        let mut ready = std::mem::take(&mut self.readiness);
        {
            let mut net = net.borrow_mut();
            net.deliver_due();
            net.readiness(&mut ready);
        }
        for r in ready.drain(..) {
            self.serve_port(r.key, r.readable, r.writable, r.error);
        }
        self.readiness = ready;
    }

    fn serve_port(&mut self, key: PortKey, readable: bool, writable: bool, error: bool) {
        // Once a stop is asked for, no more datagrams: every port closes at the turn's end.
        if self.stop_requested {
            return;
        }
        if readable {
            let turn = self.turns;
            if let Some(slot) = self.live_slot(key) {
                slot.read_in_turn = turn;
            }
        }
        if self.with_port_dyn(key, |p, r| p.on_ready(r, readable, writable, error)) == Some(true)
            && let Some(slot) = self.live_slot(key)
            && !slot.in_ready
        {
            slot.in_ready = true;
            self.ready.push(key);
        }
    }

    /// Serves the ports whose budget ran out last turn, unless an event this turn already
    /// read them.
    fn serve_left_over(&mut self, mut left_over: Vec<PortKey>) {
        let turn = self.turns;
        for key in left_over.drain(..) {
            // A port marked again this turn was read by its event this turn too.
            if self
                .live_slot(key)
                .is_some_and(|slot| slot.read_in_turn != turn)
            {
                self.serve_port(key, true, false, false);
            }
        }
        self.ready_spare = left_over;
    }

    /// The slot of `key`, unless the port is gone.
    fn live_slot(&mut self, key: PortKey) -> Option<&mut Slot> {
        self.ports
            .get_mut(key.index)
            .filter(|slot| slot.generation == key.generation)
    }

    /// Runs the cross-thread calls of this turn: those queued when it starts, at most
    /// [`ReactorHandle::CALLS_PER_TURN`], in order. When a handle asked for a stop, every
    /// call queued by then runs first, and then the reactor stops.
    fn run_thread_calls(&mut self) {
        // The flag first: a call queued before the stop is then already in the queue.
        let stop = self.shared.take_stop();
        let budget = if stop {
            usize::MAX
        } else {
            ReactorHandle::CALLS_PER_TURN
        };
        let mut calls = std::mem::take(&mut self.thread_calls);
        if self.shared.take_calls(&mut calls, budget) {
            // Callers do not wake a reactor whose queue is not empty: wake ourselves, so
            // that the next poll reports the waker again without sleeping.
            if let Err(e) = self.shared.wake() {
                error!("{e}; running every queued cross-thread call in this turn");
                self.shared.take_calls(&mut calls, usize::MAX);
            }
        }
        for call in calls.drain(..) {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| call(self))) {
                error!(
                    "call_from_thread closure panicked: {}",
                    panic_message(&*panic)
                );
            }
        }
        self.thread_calls = calls;
        if stop {
            self.stop();
        }
    }

    fn close_all(&mut self) {
        self.stop_requested = false;
        // Ports opened by the stop_protocols of this teardown close too, in rounds: a
        // protocol that opens a port in every stop_protocol is cut off after a few.
        for _ in 0..CLOSE_ROUNDS {
            if self.ports.is_empty() {
                break;
            }
            let keys: Vec<PortKey> = self
                .ports
                .iter()
                .map(|(index, slot)| PortKey {
                    index,
                    generation: slot.generation,
                })
                .collect();
            for key in keys {
                self.request_close(key);
            }
            self.process_closes();
        }
        if !self.ports.is_empty() {
            error!(
                "{} ports still open after {CLOSE_ROUNDS} rounds of closing (each stop_protocol opened another)",
                self.ports.len()
            );
        }
        // A stop asked for by a stop_protocol of this teardown is this stop, not the next.
        self.stop_requested = false;
        info!("reactor stopped");
    }

    // ----- signals -----------------------------------------------------------------------

    fn install_signals(&mut self) -> Result<()> {
        self.signals.start(self.poll.registry())
    }

    fn remove_signals(&mut self) {
        self.signals.stop();
    }

    fn on_signals(&mut self) {
        if self.signals.stop_asked() {
            self.stop_requested = true;
            self.stops_asked += 1;
        }
    }
}

/// How many rounds a reactor's stop closes ports opened while it closes the others.
const CLOSE_ROUNDS: usize = 16;

/// Port generations, unique in the process.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(0);

/// A non-blocking, close-on-exec UDP socket bound to `addr` with the options applied.
fn bind_socket(addr: SocketAddr, opts: &ListenOptions) -> std::io::Result<std::net::UdpSocket> {
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.set_nonblocking(true)?;
    if opts.listen_multiple {
        socket.set_reuse_address(true)?;
        match socket.set_reuse_port(true) {
            // Old kernels lack SO_REUSEPORT; REUSEADDR alone still shares multicast ports.
            Err(e) if e.raw_os_error() == Some(libc::ENOPROTOOPT) => {
                debug!("SO_REUSEPORT unsupported, sharing {addr} with SO_REUSEADDR alone");
            }
            other => other?,
        }
    }
    apply_buffer_sizes(&socket, opts)?;
    socket.bind(&addr.into())?;
    Ok(socket.into())
}

fn apply_buffer_sizes(socket: &Socket, opts: &ListenOptions) -> std::io::Result<()> {
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
