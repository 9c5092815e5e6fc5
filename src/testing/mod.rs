//! A test kit for protocols: a reactor on a manual clock, whose ports live on an
//! in-memory network, so that a protocol's tests need no sockets and no real waits.
//!
//! A [`Simulation`] is a real [`Reactor`] (every method works, and a protocol runs
//! unmodified: its hooks get the same [`UdpTransport`](crate::UdpTransport)), with two
//! differences:
//!
//! - **Time is virtual.** It moves only when the test moves it ([`Simulation::advance`],
//!   [`Simulation::step`], [`Simulation::run_until`]), jumping straight to the next timer
//!   or datagram arrival: a 30-second timeout is tested in microseconds of real time.
//!   Timers fire in deadline order as time passes, each at its own virtual instant.
//! - **Ports are in memory.** The listen calls bind to an address on the simulation's
//!   network instead of the kernel's (port 0 picks one from 49152 up); a datagram written
//!   to an address where a port of the simulation listens reaches it across a [`Link`]
//!   (loss, duplication, reordering and delay, drawn from the seed); every write is
//!   logged with its source, destination and time ([`Simulation::sent`]), wherever it
//!   goes. The test can also inject what the network would bring: datagrams from any
//!   address, refusals and other ICMP errors, drops, and failing system calls.
//!
//! The same seed gives the same run: every draw comes from one generator, and ports,
//! timers and arrivals are served in a fixed order.
//!
//! # Differences from Twisted's `task.Clock`
//!
//! `Clock.advance` runs every call that becomes due, including calls scheduled for "now"
//! by the calls it runs, in the same advance, and a `LoopingCall` with interval 0 makes
//! it spin forever. Here, as in the real reactor, a call scheduled during a turn for
//! "now" runs on the next turn: an advance runs that turn at the same virtual instant
//! (so zero-delay calls still run before time moves on), and a repeating call with
//! interval zero runs once per turn while time moves on, so it cannot hang an advance.
//! At most [`MAX_TURNS_PER_INSTANT`] turns run at one instant; then time moves on.
//!
//! # What is not simulated
//!
//! Socket options other than `SO_BROADCAST` ([`UdpTransport::set_broadcast_allowed`](crate::UdpTransport::set_broadcast_allowed))
//! return [`Error::SocketOption`](crate::Error::SocketOption) (unsupported): multicast
//! groups, TTLs and interfaces need real sockets. Of the per-datagram options, the
//! arrival address is simulated
//! ([`ListenOptions::arrival_address`](crate::ListenOptions::arrival_address): the
//! address each datagram was sent to, on interface 1, which
//! [`reply_from_arrival`](crate::ListenOptions::reply_from_arrival) replies from) and so
//! is a write's source ([`WriteOptions::source`](crate::WriteOptions::source)); the TOS
//! byte and receive timestamps are accepted and not simulated
//! ([`Arrival::tos`](crate::Arrival::tos) and `timestamp` stay `None`). A port listening
//! on the wildcard
//! address sends from the loopback address of its family. Sockets adopted from file
//! descriptors are real kernel sockets, polled (without waiting) in each turn.
//!
//! # Example: a client that retries, tested in virtual time
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use twine::testing::Simulation;
//! use twine::{DatagramProtocol, DelayedCall, ListenOptions, UdpTransport};
//!
//! /// Asks `server` until it answers: every second, at most three times.
//! struct Client { server: SocketAddr, tries: u32, answer: Option<Vec<u8>>, retry: Option<DelayedCall> }
//!
//! impl Client {
//!     fn ask(&mut self, t: &mut UdpTransport<'_>) {
//!         if self.answer.is_some() || self.tries == 3 {
//!             return;
//!         }
//!         self.tries += 1;
//!         let _ = t.write(b"time?", self.server);
//!         self.retry = t.call_later(Duration::from_secs(1), |me: &mut Client, t| me.ask(t)).ok();
//!     }
//! }
//!
//! impl DatagramProtocol for Client {
//!     fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
//!         self.ask(t);
//!     }
//!     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], _: SocketAddr) {
//!         self.answer = Some(data.to_vec());
//!         if let Some(retry) = self.retry.take() {
//!             t.cancel(retry);
//!         }
//!     }
//! }
//!
//! let mut sim = Simulation::new(7)?;
//! let server: SocketAddr = "127.0.0.1:37".parse()?;
//! let client = sim.listen_udp_with(
//!     ListenOptions::new(0).interface("127.0.0.1"),
//!     Client { server, tries: 0, answer: None, retry: None },
//! )?;
//! // Nobody answers: three tries, a second apart, then silence.
//! sim.advance(Duration::from_secs(10))?;
//! let asked: Vec<Duration> = sim.sent().iter().map(|s| s.at).collect();
//! assert_eq!(asked, [0, 1, 2].map(Duration::from_secs));
//! // The server's answer, injected as if it came over the network.
//! sim.inject(client.local_addr(), server, b"12:00");
//! sim.advance(Duration::from_millis(1))?;
//! let answer = sim.with_port(&client, |c, _| c.answer.clone())?;
//! assert_eq!(answer.as_deref(), Some(&b"12:00"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub(crate) mod network;

use std::cell::{Cell, RefCell};
use std::fmt;
use std::net::SocketAddr;
use std::ops::{Deref, DerefMut};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::error::Result;
use crate::reactor::Reactor;
use network::{Answer, Network};

/// The most turns an advance runs at one virtual instant before it moves time on anyway
/// (a protocol that answers itself over a zero-delay link would otherwise hold time still).
///
/// # Examples
///
/// ```
/// assert_eq!(twine::testing::MAX_TURNS_PER_INSTANT, 10_000);
/// ```
pub const MAX_TURNS_PER_INSTANT: usize = 10_000;

/// How a link carries datagrams from one address to another: each datagram is lost with
/// probability `loss`, else sent twice with probability `duplicate`; each copy arrives
/// `delay` plus a uniform draw of up to `jitter` later, and with probability `reorder`
/// is held back by another `delay + jitter`, behind datagrams sent after it.
///
/// The default link is perfect: nothing lost, duplicated or held back, no delay (a
/// datagram arrives on the next turn).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use twine::testing::Link;
/// // 20 ms each way, 5 ms of jitter, one datagram in ten lost.
/// let link = Link::with_delay(Duration::from_millis(20)).jitter(Duration::from_millis(5)).loss(0.1);
/// # let _ = link;
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq)]
#[non_exhaustive]
pub struct Link {
    /// Probability that a datagram is lost, 0.0 ..= 1.0.
    pub loss: f64,
    /// Probability that a datagram (not lost) arrives twice.
    pub duplicate: f64,
    /// Probability that a datagram is held back behind later ones.
    pub reorder: f64,
    /// The one-way delay.
    pub delay: Duration,
    /// The most a datagram's delay exceeds `delay` by, drawn uniformly per datagram.
    pub jitter: Duration,
}

impl Link {
    /// A perfect link with a fixed one-way `delay`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let link = twine::testing::Link::with_delay(Duration::from_millis(30));
    /// # let _ = link;
    /// ```
    pub fn with_delay(delay: Duration) -> Link {
        Link {
            delay,
            ..Link::default()
        }
    }

    /// This link, losing each datagram with probability `p`.
    ///
    /// # Examples
    ///
    /// ```
    /// let link = twine::testing::Link::default().loss(0.25);
    /// # let _ = link;
    /// ```
    pub fn loss(mut self, p: f64) -> Link {
        self.loss = p;
        self
    }

    /// This link, duplicating each datagram with probability `p`.
    ///
    /// # Examples
    ///
    /// ```
    /// let link = twine::testing::Link::default().duplicate(0.05);
    /// # let _ = link;
    /// ```
    pub fn duplicate(mut self, p: f64) -> Link {
        self.duplicate = p;
        self
    }

    /// This link, holding back each datagram with probability `p`.
    ///
    /// # Examples
    ///
    /// ```
    /// let link = twine::testing::Link::default().reorder(0.1);
    /// # let _ = link;
    /// ```
    pub fn reorder(mut self, p: f64) -> Link {
        self.reorder = p;
        self
    }

    /// This link, with up to `jitter` more delay per datagram.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let link = twine::testing::Link::with_delay(Duration::from_millis(20)).jitter(Duration::from_millis(5));
    /// # let _ = link;
    /// ```
    pub fn jitter(mut self, jitter: Duration) -> Link {
        self.jitter = jitter;
        self
    }
}

/// One datagram a port of the simulation wrote (it may since have been lost).
///
/// # Examples
///
/// ```
/// use twine::testing::Simulation;
/// let mut sim = Simulation::new(1)?;
/// let port = sim.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), twine::respond(|_, _| None::<Vec<u8>>))?;
/// sim.with_port(&port, |_, t| t.write(b"hi", "127.0.0.1:9"))??;
/// let sent = sim.sent();
/// assert_eq!((sent[0].from, sent[0].data.as_slice()), (port.local_addr(), &b"hi"[..]));
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Clone, PartialEq, Eq)]
#[non_exhaustive]
pub struct Sent {
    /// The virtual time of the write, since the simulation began.
    pub at: Duration,
    /// The address it was sent from.
    pub from: SocketAddr,
    /// Its destination.
    pub to: SocketAddr,
    /// Its bytes.
    pub data: Vec<u8>,
}

impl fmt::Debug for Sent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} {} -> {}: {:?}",
            self.at,
            self.from,
            self.to,
            String::from_utf8_lossy(&self.data)
        )
    }
}

/// An ICMP error the network reports to a port about a datagram it sent.
///
/// # Examples
///
/// ```
/// use twine::testing::{IcmpError, Simulation};
/// let mut sim = Simulation::new(1)?;
/// let port = sim.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), twine::respond(|_, _| None::<Vec<u8>>))?;
/// sim.inject_icmp_error(port.local_addr(), "127.0.0.1:9".parse()?, IcmpError::NetworkUnreachable);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum IcmpError {
    /// Port unreachable: nothing listens there (`ECONNREFUSED`).
    PortUnreachable,
    /// Host unreachable (`EHOSTUNREACH`).
    HostUnreachable,
    /// Network unreachable (`ENETUNREACH`).
    NetworkUnreachable,
    /// The datagram was longer than the path carries (`EMSGSIZE`).
    TooBig,
}

impl IcmpError {
    fn errno(self) -> i32 {
        match self {
            IcmpError::PortUnreachable => libc::ECONNREFUSED,
            IcmpError::HostUnreachable => libc::EHOSTUNREACH,
            IcmpError::NetworkUnreachable => libc::ENETUNREACH,
            IcmpError::TooBig => libc::EMSGSIZE,
        }
    }
}

/// A reactor on a manual clock with an in-memory network: see the [module docs](self).
///
/// It dereferences to its [`Reactor`]: listen, schedule and reach ports as usual.
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use twine::testing::Simulation;
/// let mut sim = Simulation::new(42)?;
/// let ticks = std::rc::Rc::new(std::cell::Cell::new(0));
/// let counted = ticks.clone();
/// sim.call_every(Duration::from_secs(60), move |_| counted.set(counted.get() + 1));
/// // An hour of virtual time, in microseconds of real time.
/// sim.advance(Duration::from_secs(3600))?;
/// assert_eq!(ticks.get(), 60);
/// # Ok::<(), twine::Error>(())
/// ```
pub struct Simulation {
    reactor: Reactor,
    net: Rc<RefCell<Network>>,
    clock: Rc<Cell<Instant>>,
    start: Instant,
    /// The instant of the last turn run: time moves on only after a turn at each instant.
    turned_at: Option<Instant>,
}

impl fmt::Debug for Simulation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Simulation")
            .field("elapsed", &self.elapsed())
            .field("reactor", &self.reactor)
            .finish_non_exhaustive()
    }
}

impl Deref for Simulation {
    type Target = Reactor;
    fn deref(&self) -> &Reactor {
        &self.reactor
    }
}

impl DerefMut for Simulation {
    fn deref_mut(&mut self) -> &mut Reactor {
        &mut self.reactor
    }
}

impl Simulation {
    /// A simulation at virtual time zero, whose draws (loss, duplication, jitter,
    /// reordering) come from `seed`.
    ///
    /// # Errors
    ///
    /// [`Error::Io`](crate::Error::Io) if the kernel refuses the reactor's poll instance
    /// (it still has one, for calls from other threads).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// assert_eq!(sim.elapsed(), Duration::ZERO);
    /// # let _ = (echo, client);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn new(seed: u64) -> Result<Simulation> {
        let start = Instant::now();
        let clock = Rc::new(Cell::new(start));
        let net = Rc::new(RefCell::new(Network::new(seed, Rc::clone(&clock))));
        let reactor = Reactor::simulated(Rc::clone(&clock), Rc::clone(&net))?;
        Ok(Simulation {
            reactor,
            net,
            clock,
            start,
            turned_at: None,
        })
    }

    /// The reactor (also reached through `Deref`).
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// assert!(sim.reactor().is_listening(&echo));
    /// # let _ = client;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reactor(&mut self) -> &mut Reactor {
        &mut self.reactor
    }

    /// Virtual time since the simulation began.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// sim.advance(Duration::from_secs(30))?;
    /// assert_eq!(sim.elapsed(), Duration::from_secs(30));
    /// # let _ = (echo, client);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn elapsed(&self) -> Duration {
        self.clock.get().duration_since(self.start)
    }

    /// Runs the reactor while `by` of virtual time passes: every timer and arrival due in
    /// that time is served at its own instant, in order, and then one turn runs at the
    /// end (what was due exactly then included).
    ///
    /// # Errors
    ///
    /// [`Error::Reentrant`](crate::Error::Reentrant) from inside a hook;
    /// [`Error::Io`](crate::Error::Io) if polling fails;
    /// [`Error::InvalidOption`](crate::Error::InvalidOption), running nothing, if `by` is
    /// past the end of the virtual clock.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// sim.inject(echo.local_addr(), client, b"ping");
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.sent()[0].data, b"ping");
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn advance(&mut self, by: Duration) -> Result<()> {
        let target = self.after("Simulation::advance", by)?;
        self.run_to(target, |_| false).map(|_| ())
    }

    /// The virtual instant `by` from now, or an error if the clock cannot count that far
    /// (hundreds of billions of years on Linux: `Duration::MAX`, say).
    fn after(&self, option: &'static str, by: Duration) -> Result<Instant> {
        self.clock
            .get()
            .checked_add(by)
            .ok_or_else(|| crate::Error::InvalidOption {
                option,
                value: usize::try_from(by.as_secs()).unwrap_or(usize::MAX),
                expected: "seconds the virtual clock can still count",
            })
    }

    /// Moves virtual time to the next timer or arrival (not at all if something is due
    /// now) and runs the turns due then. Returns false, running nothing, if nothing at all
    /// is scheduled or in flight.
    ///
    /// # Errors
    ///
    /// As [`advance`](Self::advance).
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// sim.inject(echo.local_addr(), client, b"ping");
    /// // One turn: the datagram is delivered and echoed.
    /// assert!(sim.step()?);
    /// assert_eq!(sim.sent().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn step(&mut self) -> Result<bool> {
        if !self.reactor.has_work_now() && !self.due_now() {
            let Some(next) = self.reactor.next_event() else {
                return Ok(false);
            };
            let target = next.max(self.clock.get());
            self.run_to(target, |_| false)?;
            return Ok(true);
        }
        let now = self.clock.get();
        self.run_to(now, |_| false)?;
        Ok(true)
    }

    /// Steps until `done` returns true (checked before each turn) or `limit` of virtual
    /// time has passed; returns the last value of `done`.
    ///
    /// # Errors
    ///
    /// As [`advance`](Self::advance).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// sim.inject(echo.local_addr(), client, b"ping");
    /// let done = sim.run_until(Duration::from_secs(1), |_| false)?;
    /// assert!(!done, "the condition never held");
    /// assert_eq!(sim.sent().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn run_until(
        &mut self,
        limit: Duration,
        done: impl FnMut(&mut Reactor) -> bool,
    ) -> Result<bool> {
        let target = self.after("Simulation::run_until", limit)?;
        self.run_to(target, done)
    }

    /// Whether a timer is due now: one that does not run every turn, or (until a turn has
    /// run at this instant) any timer, one repeating every turn included.
    fn due_now(&mut self) -> bool {
        let now = self.clock.get();
        self.reactor.next_event().is_some_and(|at| at <= now)
            || (self.turned_at != Some(now)
                && self.reactor.next_timer().is_some_and(|at| at <= now))
    }

    /// Turns until virtual time reaches `target` with nothing left due at it, or `done`.
    fn run_to(
        &mut self,
        target: Instant,
        mut done: impl FnMut(&mut Reactor) -> bool,
    ) -> Result<bool> {
        let mut at_instant = 0usize;
        let mut last = self.clock.get();
        loop {
            if done(&mut self.reactor) {
                return Ok(true);
            }
            let now = self.clock.get();
            if now >= target && !self.reactor.has_work_now() && !self.due_now() {
                return Ok(false);
            }
            if at_instant >= MAX_TURNS_PER_INSTANT {
                // Work that renews itself at one instant: move on to what comes next.
                log::warn!(
                    "simulation: {MAX_TURNS_PER_INSTANT} turns at {:?}; moving time on",
                    now.duration_since(self.start)
                );
                let next = self
                    .reactor
                    .next_event()
                    .filter(|&at| at > now)
                    .unwrap_or(target)
                    .min(target);
                if next <= now {
                    return Ok(false);
                }
                self.clock.set(next);
                at_instant = 0;
            }
            // A turn at each instant before time moves on (what is due at it runs there).
            let now = self.clock.get();
            let wait = if self.turned_at == Some(now) {
                target.saturating_duration_since(now)
            } else {
                Duration::ZERO
            };
            self.reactor.iterate(wait)?;
            self.turned_at = Some(self.clock.get());
            if self.clock.get() == last {
                at_instant += 1;
            } else {
                last = self.clock.get();
                at_instant = 1;
            }
        }
    }

    // ----- the network -------------------------------------------------------------------

    /// Sets the link for datagrams from `from` to `to` (one direction).
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// use twine::testing::Link;
    /// // Everything the echo port sends to the client is lost.
    /// sim.set_link(echo.local_addr(), client, Link::default().loss(1.0));
    /// # let _ = client;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_link(&mut self, from: SocketAddr, to: SocketAddr, link: Link) {
        self.net.borrow_mut().set_link(from, to, link);
    }

    /// Sets the link used where none was set for the pair (perfect by default).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// use twine::testing::Link;
    /// sim.set_default_link(Link::with_delay(Duration::from_millis(20)).loss(0.1));
    /// # let _ = (echo, client);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_default_link(&mut self, link: Link) {
        self.net.borrow_mut().default_link = link;
    }

    /// Whether a datagram sent to an address where no port of the simulation listens is
    /// answered with a refusal (ICMP port unreachable), as on loopback; off by default
    /// (such datagrams leave the simulation, and are only logged).
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// // Datagrams to addresses where nothing listens are dropped silently.
    /// sim.set_refuse_unbound(false);
    /// # let _ = (echo, client);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_refuse_unbound(&mut self, refuse: bool) {
        self.net.borrow_mut().refuse_unbound = refuse;
    }

    /// Queues `data` from `from` at the port bound to `to`, as if it had just arrived (it
    /// is read on the next turn). A datagram longer than the port's max packet size
    /// arrives truncated, as from the kernel. Ignored if no port listens at `to` (or it is
    /// connected to another address).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// sim.inject(echo.local_addr(), client, b"from outside");
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.sent()[0].to, client);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inject(&mut self, to: SocketAddr, from: SocketAddr, data: &[u8]) {
        self.net.borrow_mut().inject(to, from, data);
    }

    /// An ICMP port unreachable at the port bound to `port` about a datagram it sent to
    /// `about`: a connected port gets `connection_refused` (if connected to `about`), an
    /// unconnected one `error_received` with [`Error::Unreachable`](crate::Error::Unreachable).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// // The echo port learns that the client refused one of its datagrams.
    /// sim.inject_refusal(echo.local_addr(), client);
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.port_stats(&echo).map(|s| s.unreachable), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inject_refusal(&mut self, port: SocketAddr, about: SocketAddr) {
        self.inject_icmp_error(port, about, IcmpError::PortUnreachable);
    }

    /// An ICMP error at the port bound to `port` about a datagram it sent to `about`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// use twine::testing::IcmpError;
    /// sim.inject_icmp_error(echo.local_addr(), client, IcmpError::HostUnreachable);
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.port_stats(&echo).map(|s| s.unreachable), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inject_icmp_error(&mut self, port: SocketAddr, about: SocketAddr, error: IcmpError) {
        self.net.borrow_mut().icmp_error(port, about, error.errno());
    }

    /// The "kernel" drops `count` datagrams at `port` (its receive queue was full): the
    /// port's [`PortStats::kernel_dropped`](crate::PortStats::kernel_dropped) counts them.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// sim.inject_drops(echo.local_addr(), 3);
    /// sim.inject(echo.local_addr(), client, b"after the drops");
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.port_stats(&echo).map(|s| s.kernel_dropped), Some(3));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn inject_drops(&mut self, port: SocketAddr, count: u32) {
        self.net.borrow_mut().add_drops(port, count);
    }

    /// The next read of `port` fails with the OS error `errno`. Returns false if no port
    /// is bound there.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// assert!(sim.fail_next_read(echo.local_addr(), libc::ENOMEM));
    /// sim.inject(echo.local_addr(), client, b"ping");
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.port_stats(&echo).map(|s| s.recv_errors), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fail_next_read(&mut self, port: SocketAddr, errno: i32) -> bool {
        self.net
            .borrow_mut()
            .script(port, true, Answer::Error(errno))
    }

    /// The next send call of `port` fails with the OS error `errno` (a batch send: its
    /// first datagram).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// assert!(sim.fail_next_send(echo.local_addr(), libc::ENOBUFS));
    /// sim.inject(echo.local_addr(), client, b"ping");
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.port_stats(&echo).map(|s| s.send_errors), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn fail_next_send(&mut self, port: SocketAddr, errno: i32) -> bool {
        self.net
            .borrow_mut()
            .script(port, false, Answer::Error(errno))
    }

    /// The next read of `port` returns at most `count` datagrams (then, with none,
    /// `EAGAIN`), however many are queued: a read that stops mid-batch.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// // The next read takes one datagram however many wait.
    /// assert!(sim.limit_next_read(echo.local_addr(), 1));
    /// sim.inject(echo.local_addr(), client, b"one");
    /// sim.inject(echo.local_addr(), client, b"two");
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.sent().len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn limit_next_read(&mut self, port: SocketAddr, count: usize) -> bool {
        self.net
            .borrow_mut()
            .script(port, true, Answer::Limit(count))
    }

    /// The next send call of `port` takes at most `count` datagrams: a partial
    /// `sendmmsg` (0: `EAGAIN`).
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// assert!(sim.limit_next_send(echo.local_addr(), 1));
    /// # let _ = client;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn limit_next_send(&mut self, port: SocketAddr, count: usize) -> bool {
        self.net
            .borrow_mut()
            .script(port, false, Answer::Limit(count))
    }

    /// Whether `port`'s send buffer is full: while it is, sends fail with `EAGAIN` (the
    /// port queues its writes and pauses its producer past the high-water mark); once
    /// unblocked, the port is writable again.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// // A full kernel buffer: replies wait in the port's send queue.
    /// assert!(sim.block_sends(echo.local_addr(), true));
    /// sim.inject(echo.local_addr(), client, b"ping");
    /// sim.advance(Duration::from_millis(1))?;
    /// assert!(sim.sent().is_empty());
    /// assert!(sim.block_sends(echo.local_addr(), false));
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.sent().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn block_sends(&mut self, port: SocketAddr, blocked: bool) -> bool {
        self.net.borrow_mut().set_send_blocked(port, blocked)
    }

    /// The size of `port`'s receive queue, in bytes (each datagram counts its payload and
    /// 256 bytes); arrivals past it are dropped and counted. 212,992 by default.
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// assert!(sim.set_receive_buffer(echo.local_addr(), 4096));
    /// # let _ = client;
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn set_receive_buffer(&mut self, port: SocketAddr, bytes: usize) -> bool {
        self.net.borrow_mut().set_rx_limit(port, bytes)
    }

    /// Datagrams waiting in `port`'s receive queue, or `None` if no port is bound there.
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// sim.inject(echo.local_addr(), client, b"waiting");
    /// assert_eq!(sim.queued(echo.local_addr()), Some(1));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn queued(&self, port: SocketAddr) -> Option<usize> {
        self.net.borrow().queued(port)
    }

    /// Every datagram written so far, in order.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// sim.inject(echo.local_addr(), client, b"ping");
    /// sim.advance(Duration::from_millis(1))?;
    /// let sent = sim.sent();
    /// assert_eq!((sent[0].from, sent[0].to, &sent[0].data[..]), (echo.local_addr(), client, &b"ping"[..]));
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn sent(&self) -> Vec<Sent> {
        self.net.borrow().sent.clone()
    }

    /// Every datagram written since the last call, in order (and forgets them).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// sim.inject(echo.local_addr(), client, b"ping");
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.take_sent().len(), 1);
    /// assert!(sim.sent().is_empty());
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn take_sent(&mut self) -> Vec<Sent> {
        std::mem::take(&mut self.net.borrow_mut().sent)
    }

    /// Datagrams the links lost so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// use twine::testing::Link;
    /// sim.set_default_link(Link::default().loss(1.0));
    /// sim.inject(echo.local_addr(), client, b"ping");
    /// sim.advance(Duration::from_millis(1))?;
    /// // The echo went to an address where nothing listens: lost or not, it was sent.
    /// assert_eq!(sim.sent().len(), 1);
    /// let _ = sim.lost();
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn lost(&self) -> u64 {
        self.net.borrow().lost
    }

    /// Datagrams the links duplicated so far.
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::testing::Simulation;
    /// use twine::{ListenOptions, respond};
    /// let mut sim = Simulation::new(1)?;
    /// let echo = sim.listen_udp_with(ListenOptions::new(7).interface("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    /// let client: std::net::SocketAddr = "127.0.0.1:5000".parse()?;
    /// assert_eq!(sim.duplicated(), 0);
    /// # let _ = (echo, client);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn duplicated(&self) -> u64 {
        self.net.borrow().duplicated
    }
}
