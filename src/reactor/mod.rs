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

pub(crate) mod handle;
mod ports;
pub(crate) mod signals;
pub(crate) mod timer;
mod timers;
pub(crate) mod token;
mod turn;

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
use socket2::Socket;

use crate::error::{Error, Result};
use crate::protocol::DatagramProtocol;
use crate::reactor::handle::{ReactorHandle, Shared, ThreadCall};
use crate::reactor::signals::SignalWatch;
use crate::reactor::timer::{DelayedCall, TimerQueue};
use crate::sys;
use crate::testing::network::{MemSocket, Network, Readiness};
use crate::udp::ListenOptions;
use crate::udp::port::{
    Batches, Port, PortStats, PortTimerFn, UdpPort, apply_datagram_options, once, panic_message,
};
use crate::udp::socket::{PortSocket, apply_buffer_sizes, bind_socket};
use crate::udp::transport::UdpTransport;
use token::PortKey;

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
    /// Where the port stands: the one place its lifecycle is kept (see [`Lifecycle`]).
    state: Lifecycle,
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

/// Where a port stands. Every path asks [`Reactor::lifecycle`]; the state is kept in the
/// port's slot only.
///
/// `Open` → `StopAsked` (by `stop_listening`, a handle, a reactor stop, a panic with
/// `close_on_panic`: no datagram is delivered from then on and its timers are cancelled)
/// → `Closed` (on a later turn its slot is emptied, `stop_protocol` runs, and the socket
/// is closed; while `stop_protocol` runs the port is `Closed` already, so it can
/// schedule nothing and its handle reaches nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Lifecycle {
    Open,
    StopAsked,
    Closed,
}

/// What a port asked to be kept leaves once it has closed: its final counters, and its
/// protocol where asked ([`Reactor::keep_after_close`]).
pub(crate) struct Kept {
    key: PortKey,
    stats: Option<PortStats>,
    protocol: Option<Box<dyn Any>>,
    keep_protocol: bool,
}

/// A handle to a listening port, returned by the listen and adopt calls: its address, and
/// the key to stop it, read its counters or reach its protocol through the [`Reactor`].
///
/// It stays harmless after the port closes: it never reaches a later port. Handles are
/// `Copy`, and compare and hash by the port they name, so that they can key a map.
///
/// # Examples
///
/// ```
/// use std::collections::HashSet;
/// use twine::{ListenOptions, Reactor, respond};
/// let mut reactor = Reactor::new()?;
/// let mut ports = HashSet::new();
/// for _ in 0..2 {
///     let echo = respond(|data, _from| Some(data.to_vec()));
///     let port = reactor.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), echo)?;
///     assert!(ports.insert(port));
///     assert!(!ports.insert(port), "the same port twice");
/// }
/// assert_eq!(ports.len(), 2);
/// # Ok::<(), twine::Error>(())
/// ```
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

/// Two handles are equal when they name the same port (of the same reactor, opened by the
/// same call), whatever became of it since.
impl<P> PartialEq for ListeningPort<P> {
    fn eq(&self, other: &Self) -> bool {
        self.key == other.key
    }
}

impl<P> Eq for ListeningPort<P> {}

impl<P> std::hash::Hash for ListeningPort<P> {
    fn hash<H: std::hash::Hasher>(&self, state: &mut H) {
        self.key.hash(state);
    }
}

impl<P> fmt::Debug for ListeningPort<P> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ListeningPort")
            .field("local", &self.local)
            .finish_non_exhaustive()
    }
}

impl<P> ListeningPort<P> {
    /// The address the port is bound to, with the real port number when 0 was asked for.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// assert_eq!(port.local_addr().ip().to_string(), "127.0.0.1");
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Twisted's name for [`local_addr`](Self::local_addr).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// assert_eq!(port.get_host(), port.local_addr());
    /// # Ok::<(), twine::Error>(())
    /// ```
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
///
/// A reactor is neither `Send` nor `Sync`: it and its protocols stay on the thread that
/// made it (a protocol need not be `Send` either). Other threads reach it through a
/// [`ReactorHandle`]; for a reactor per core, see [`ReactorPool`](crate::ReactorPool).
///
/// ```compile_fail
/// fn on_another_thread<T: Send>(_: T) {}
/// on_another_thread(twine::Reactor::new()?);
/// # Ok::<(), twine::Error>(())
/// ```
///
/// # Examples
///
/// ```
/// let mut reactor = twine::Reactor::new()?;
/// reactor.listen_udp_with(
///     twine::ListenOptions::new(0).interface("127.0.0.1"),
///     twine::respond(|data, _from| Some(data.to_vec())),
/// )?;
/// reactor.call_later(std::time::Duration::from_millis(10), |r| r.stop());
/// reactor.run()?;
/// # Ok::<(), twine::Error>(())
/// ```
pub struct Reactor {
    poll: Poll,
    events: Option<Events>,
    ports: Slab<Slot>,
    timers: TimerQueue<TimerAction>,
    /// Ports whose read budget ran out: served next turn without a new readiness edge.
    ready: Vec<PortKey>,
    ready_spare: Vec<PortKey>,
    /// The ports in `StopAsked`, in the order their stops were asked for: the work list of
    /// the next teardown (the state itself is in the slots).
    teardown: Vec<PortKey>,
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
    batches: Option<Batches>,
    /// Where the reactor's time comes from.
    clock: Clock,
    /// The in-memory network of a simulated reactor ([`crate::testing::Simulation`]),
    /// where its listen calls open their ports.
    net: Option<Rc<RefCell<Network>>>,
    /// The in-memory sockets ready this turn (kept to reuse its allocation).
    readiness: Vec<Readiness>,
    /// Latency mode: how long a turn polls without blocking before it sleeps (zero: off).
    spin: Duration,
    /// Ports whose counters are kept when they close (`None` while open): what a
    /// [`ReactorPool`](crate::ReactorPool) reports once its reactors have stopped.
    kept: Vec<Kept>,
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
    ///
    /// # Examples
    ///
    /// ```
    /// let reactor = twine::Reactor::new()?;
    /// assert_eq!(reactor.port_count(), 0);
    /// # Ok::<(), twine::Error>(())
    /// ```
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
            teardown: Vec::new(),
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
            spin: Duration::ZERO,
            kept: Vec::new(),
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
    ///
    /// # Examples
    ///
    /// ```
    /// let reactor = twine::Reactor::new()?;
    /// assert!(reactor.now() <= std::time::Instant::now());
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[inline]
    pub fn now(&self) -> Instant {
        match &self.clock {
            Clock::Real => Instant::now(),
            Clock::Manual(clock) => clock.get(),
        }
    }

    /// A handle for other threads: [`ReactorHandle::call_from_thread`] and
    /// [`ReactorHandle::stop`].
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let handle = reactor.handle();
    /// std::thread::spawn(move || {
    ///     let _ = handle.call_from_thread(|r| r.stop());
    /// });
    /// reactor.run()?;
    /// # Ok::<(), twine::Error>(())
    /// ```
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
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// reactor.set_thread_call_limit(100);
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn set_thread_call_limit(&mut self, limit: usize) {
        self.shared.set_limit(limit);
    }

    /// Latency mode: before a turn would sleep in the kernel's poll, it polls without
    /// blocking for up to `spin`, and serves what arrives at once (zero, the default,
    /// turns it off). A reactor that would otherwise sleep between datagrams then reacts
    /// without the wake-up a sleeping thread pays (a cross-core wake-up costs tens of
    /// microseconds on many machines), at the price of a core kept busy for `spin` after
    /// each turn's work, and all the time under steady traffic. Timers stay on time: the
    /// spin never runs past the next one's deadline. A reactor on a simulation's virtual
    /// clock does not spin.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut reactor = twine::Reactor::new()?;
    /// // Trade a core for latency: spin 50 µs before each sleep.
    /// reactor.set_spin(Duration::from_micros(50));
    /// assert_eq!(reactor.spin(), Duration::from_micros(50));
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn set_spin(&mut self, spin: Duration) {
        self.spin = spin;
    }

    /// The latency mode's spin (see [`set_spin`](Self::set_spin)); zero when off.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// reactor.set_spin(std::time::Duration::from_micros(50));
    /// assert_eq!(reactor.spin(), std::time::Duration::from_micros(50));
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn spin(&self) -> Duration {
        self.spin
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
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// // Ctrl-C is the program's own business here.
    /// reactor.set_handle_signals(false);
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn set_handle_signals(&mut self, on: bool) {
        self.handle_signals = on;
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
