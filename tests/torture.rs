//! Lifecycle torture: every kind of callback (start_protocol, datagram_received,
//! connection_refused, stop_protocol, a reactor timer, a port timer, a reactor and a port
//! repeating call, a call_from_thread closure) does each disruptive thing (stop its own port,
//! stop the reactor, open a port, cancel timers, close another port, run a nested turn,
//! panic), one test per pair. Every hook call goes into one trace, and every case is held
//! to the same documented rules: start_protocol first and once, stop_protocol last and once,
//! never nested inside the callback that asked for it and on a later turn, no datagram after
//! a stop was asked for, the other ports and a witness port going on; then to the rules of
//! its action (see `drive_case` and `stop_reactor_case`).

mod util;

use std::cell::{Cell, RefCell};
use std::collections::HashSet;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, mpsc};
use std::thread;
use std::time::Duration;

use twine::{
    DatagramProtocol, DelayedCall, Error, ListenOptions, ListeningPort, Reactor, UdpTransport,
};
use util::{DEADLINE, dead_addr, init_logging, logs_containing, loopback, mentions, ms, reactor};

/// Where a cancelled timer would have fired: well before the sentinel.
const SHORT: Duration = Duration::from_millis(20);
/// When the cancel cases look again: every cancelled timer would have fired by then.
const SENTINEL: Duration = Duration::from_millis(60);
/// The interval of the repeating sites.
const TICK: Duration = Duration::from_millis(2);

// ----- the matrix's two axes -----------------------------------------------------------------

/// The callback the action runs in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Site {
    Start,
    Datagram,
    Refused,
    Stop,
    /// `Reactor::call_later`.
    Timer,
    /// `Reactor::call_later_on` (the closure gets the protocol and transport).
    PortTimer,
    /// `Reactor::call_every`.
    Repeating,
    /// `Reactor::call_every_on`.
    PortRepeating,
    /// `ReactorHandle::call_from_thread`.
    Thread,
}

impl Site {
    /// Runs as one of the actor port's callbacks (a hook or a port timer): a panic there
    /// is logged with the actor's address and counted in its stats.
    fn is_port(self) -> bool {
        !matches!(self, Site::Timer | Site::Repeating | Site::Thread)
    }
}

/// What the callback does.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Action {
    /// `t.stop_listening()`, or `r.stop_listening(&actor)` where there is no transport.
    StopOwnPort,
    StopReactor,
    /// Listens on a new port, which must then echo.
    OpenPort,
    /// Cancels its own timer, its port's, another's and another port's, a fired one; twice.
    CancelTimers,
    CloseOtherPort,
    /// `run`, `iterate` and `run_until` from inside: `Error::Reentrant`.
    NestedTurn,
    Panic,
}

// ----- the trace -------------------------------------------------------------------------------

/// The ports of a case.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Who {
    /// The port whose callbacks act (for the port sites).
    Actor,
    /// A bystander that echoes, checked after every case.
    Witness,
    /// The port that `CloseOtherPort` closes.
    Other,
    /// The port `OpenPort` opens.
    Opened,
    /// The port of the run after a stop.
    Fresh,
}

const EVERY_PORT: [Who; 5] = [
    Who::Actor,
    Who::Witness,
    Who::Other,
    Who::Opened,
    Who::Fresh,
];

#[derive(Clone, Debug, PartialEq, Eq)]
enum Ev {
    Start(Who),
    Datagram(Who, Vec<u8>),
    Refused(Who),
    Stop(Who),
    /// The action begins; `End` when it returned.
    Begin,
    End,
    StopAsked(Who),
    ReactorStopAsked,
    Panicked,
    RunAgain,
}

impl Ev {
    fn port(&self) -> Option<Who> {
        match self {
            Ev::Start(w) | Ev::Datagram(w, _) | Ev::Refused(w) | Ev::Stop(w) => Some(*w),
            _ => None,
        }
    }
}

/// The payload sent to a port just before its stop (or the reactor's) is asked for: it is
/// waiting in the socket then, and must never be delivered.
const POKE: &[u8] = b"poke";

/// Everything a case's callbacks reach: kept in a thread local, so that a `Send` closure
/// from another thread reaches it too once it runs on the reactor's thread.
struct World {
    site: Site,
    action: Action,
    /// Every hook call and mark, with the turn it happened in.
    trace: RefCell<Vec<(u32, Ev)>>,
    turn: Cell<u32>,
    /// Checks made inside callbacks (an assert there would only close the port).
    checks: RefCell<Vec<(String, bool)>>,
    done: Cell<bool>,
    actor: Cell<Option<ListeningPort<Probe>>>,
    actor_addr: Cell<Option<SocketAddr>>,
    witness: Cell<Option<ListeningPort<Probe>>>,
    other: Cell<Option<ListeningPort<Probe>>>,
    opened: Cell<Option<ListeningPort<Probe>>>,
    /// The call whose closure is the site (timer sites).
    own_call: Cell<Option<DelayedCall>>,
    /// A pending timer of the actor's port.
    own_port_timer: Cell<Option<DelayedCall>>,
    /// The timer `CancelTimers` schedules and cancels at once (non-timer sites).
    scheduled: Cell<Option<DelayedCall>>,
    other_timer: Cell<Option<DelayedCall>>,
    other_port_timer: Cell<Option<DelayedCall>>,
    fired_timer: Cell<Option<DelayedCall>>,
    fired: Cell<bool>,
    /// Runs of timers that must not run.
    stray: Cell<u32>,
    sentinel: Cell<bool>,
    /// Runs of the repeating sites.
    fires: Cell<u32>,
    /// Turns counted by a zero-interval repeating call (the reactor-stop cases).
    ticks: Cell<u32>,
    ticks_at_stop: Cell<Option<u32>>,
    timed_out: Cell<bool>,
    /// The call_from_thread made after the acting one ran.
    second_call: Arc<AtomicBool>,
    poke: UdpSocket,
    boom: String,
}

impl World {
    fn new(site: Site, action: Action) -> World {
        World {
            site,
            action,
            trace: RefCell::default(),
            turn: Cell::new(0),
            checks: RefCell::default(),
            done: Cell::new(false),
            actor: Cell::new(None),
            actor_addr: Cell::new(None),
            witness: Cell::new(None),
            other: Cell::new(None),
            opened: Cell::new(None),
            own_call: Cell::new(None),
            own_port_timer: Cell::new(None),
            scheduled: Cell::new(None),
            other_timer: Cell::new(None),
            other_port_timer: Cell::new(None),
            fired_timer: Cell::new(None),
            fired: Cell::new(false),
            stray: Cell::new(0),
            sentinel: Cell::new(false),
            fires: Cell::new(0),
            ticks: Cell::new(0),
            ticks_at_stop: Cell::new(None),
            timed_out: Cell::new(false),
            second_call: Arc::default(),
            poke: UdpSocket::bind("127.0.0.1:0").expect("bind the poke socket"),
            boom: format!("torture boom in {site:?} doing {action:?}"),
        }
    }

    fn record(&self, ev: Ev) {
        self.trace.borrow_mut().push((self.turn.get(), ev));
    }

    fn check(&self, what: impl Into<String>, ok: bool) {
        self.checks.borrow_mut().push((what.into(), ok));
    }

    fn count(&self, ev: &Ev) -> usize {
        self.trace.borrow().iter().filter(|(_, e)| e == ev).count()
    }

    fn stops(&self, who: Who) -> usize {
        self.count(&Ev::Stop(who))
    }

    fn poke(&self, addr: SocketAddr) {
        self.poke.send_to(POKE, addr).expect("send the poke");
    }

    #[track_caller]
    fn assert_checks(&self) {
        let made = self.checks.borrow();
        if self.action != Action::Panic {
            assert!(!made.is_empty(), "the action made no checks");
        }
        let failed: Vec<_> = made.iter().filter(|(_, ok)| !ok).collect();
        assert!(failed.is_empty(), "failed inside callbacks: {failed:?}");
    }
}

thread_local! {
    static WORLD: RefCell<Option<Rc<World>>> = const { RefCell::new(None) };
}

fn world() -> Rc<World> {
    WORLD
        .with(|w| w.borrow().clone())
        .expect("the case's world")
}

/// The closure of a timer that must not run.
fn stray() {
    let w = world();
    w.stray.set(w.stray.get() + 1);
}

/// A protocol that records each hook call in the world's trace and echoes; the actor's hooks
/// also act when the case's site is theirs.
struct Probe {
    who: Who,
}

impl DatagramProtocol for Probe {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        let w = world();
        w.record(Ev::Start(self.who));
        if self.who == Who::Actor {
            w.actor_addr.set(Some(t.local_addr()));
            if w.site == Site::Start {
                let own = t.call_later(DEADLINE, |_: &mut Probe, _| stray());
                w.check("a port timer from start_protocol", own.is_ok());
                w.own_port_timer.set(own.ok());
                act(Site::Start, Ctx::Port(t));
            }
        }
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        let w = world();
        w.record(Ev::Datagram(self.who, data.to_vec()));
        if let Err(e) = t.write(data, from) {
            w.check(format!("{:?} echoes: {e}", self.who), false);
        }
        if self.who == Who::Actor && data == b"go" {
            act(Site::Datagram, Ctx::Port(t));
        }
    }

    fn connection_refused(&mut self, t: &mut UdpTransport<'_>) {
        world().record(Ev::Refused(self.who));
        if self.who == Who::Actor {
            act(Site::Refused, Ctx::Port(t));
        }
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        world().record(Ev::Stop(self.who));
        if self.who == Who::Actor {
            act(Site::Stop, Ctx::Port(t));
        }
    }
}

fn listen(reactor: &mut Reactor, who: Who) -> ListeningPort<Probe> {
    reactor
        .listen_udp_with(loopback(), Probe { who })
        .expect("listen on 127.0.0.1:0")
}

// ----- the actions -----------------------------------------------------------------------------

/// What the acting callback holds: its port's transport, or the reactor alone.
enum Ctx<'a, 'b> {
    Port(&'a mut UdpTransport<'b>),
    Reactor(&'a mut Reactor),
}

impl Ctx<'_, '_> {
    fn reactor(&mut self) -> &mut Reactor {
        match self {
            Ctx::Port(t) => t.reactor(),
            Ctx::Reactor(r) => r,
        }
    }

    fn cancel(&mut self, call: DelayedCall) -> bool {
        match self {
            Ctx::Port(t) => t.cancel(call),
            Ctx::Reactor(r) => r.cancel(call),
        }
    }

    fn reset(&mut self, call: DelayedCall, delay: Duration) -> bool {
        match self {
            Ctx::Port(t) => t.reset(call, delay),
            Ctx::Reactor(r) => r.reset(call, delay),
        }
    }

    fn is_pending(&self, call: DelayedCall) -> bool {
        match self {
            Ctx::Port(t) => t.is_pending(call),
            Ctx::Reactor(r) => r.is_pending(call),
        }
    }
}

/// Runs the case's action if `site` is the case's site, the first time only.
fn act(site: Site, mut ctx: Ctx<'_, '_>) {
    let w = world();
    if w.site != site || w.done.replace(true) {
        return;
    }
    w.record(Ev::Begin);
    match w.action {
        Action::StopOwnPort => stop_own_port(&w, &mut ctx),
        Action::StopReactor => stop_reactor(&w, &mut ctx),
        Action::OpenPort => open_port(&w, &mut ctx),
        Action::CancelTimers => cancel_timers(&w, &mut ctx),
        Action::CloseOtherPort => close_other_port(&w, &mut ctx),
        Action::NestedTurn => nested_turn(&w, &mut ctx),
        Action::Panic => {
            w.record(Ev::Panicked);
            panic!("{}", w.boom);
        }
    }
    w.record(Ev::End);
}

fn stop_own_port(w: &World, ctx: &mut Ctx<'_, '_>) {
    let stops_before = w.stops(Who::Actor);
    match ctx {
        Ctx::Port(t) => {
            w.poke(t.local_addr());
            w.record(Ev::StopAsked(Who::Actor));
            t.stop_listening();
            t.stop_listening(); // "Calling it again does nothing."
            w.check("is_closing after stop_listening", t.is_closing());
            // Not checked here: `r.is_listening(&own)` is still true at this point (see
            // `is_listening_is_false_inside_the_callback_that_stopped_its_own_port`).
        }
        Ctx::Reactor(r) => {
            let actor = w.actor.get().expect("the actor port");
            w.poke(actor.local_addr());
            w.record(Ev::StopAsked(Who::Actor));
            w.check(
                "stop_listening(actor) returns true",
                r.stop_listening(&actor),
            );
            w.check(
                "a second stop_listening returns false",
                !r.stop_listening(&actor),
            );
            w.check("the actor is no longer listening", !r.is_listening(&actor));
        }
    }
    w.check(
        "stop_protocol does not run inside the callback that stopped the port",
        w.stops(Who::Actor) == stops_before,
    );
}

fn stop_reactor(w: &World, ctx: &mut Ctx<'_, '_>) {
    let actor = match ctx {
        Ctx::Port(t) => t.local_addr(),
        Ctx::Reactor(_) => w.actor.get().expect("the actor port").local_addr(),
    };
    w.poke(actor);
    w.poke(w.witness.get().expect("witness").local_addr());
    w.poke(w.other.get().expect("other").local_addr());
    w.record(Ev::ReactorStopAsked);
    w.ticks_at_stop.set(Some(w.ticks.get()));
    let r = ctx.reactor();
    r.stop();
    w.check("is_stopping after stop", r.is_stopping());
}

fn open_port(w: &World, ctx: &mut Ctx<'_, '_>) {
    let r = ctx.reactor();
    match r.listen_udp_with(loopback(), Probe { who: Who::Opened }) {
        Ok(port) => {
            w.check("the new port is listening", r.is_listening(&port));
            w.opened.set(Some(port));
        }
        Err(e) => w.check(format!("listen from the callback: {e}"), false),
    }
}

fn cancel_timers(w: &World, ctx: &mut Ctx<'_, '_>) {
    // Its own.
    match w.site {
        Site::Timer | Site::PortTimer => {
            let own = w.own_call.get().expect("the running call");
            w.check(
                "a one-shot call that started to run is not pending",
                !ctx.is_pending(own),
            );
            w.check("cancelling it returns false", !ctx.cancel(own));
            w.check("resetting it returns false", !ctx.reset(own, SHORT));
        }
        Site::Repeating | Site::PortRepeating => {
            let own = w.own_call.get().expect("the running call");
            w.check("a running repeating call is pending", ctx.is_pending(own));
            w.check("it cancels itself", ctx.cancel(own));
            w.check("cancelling it again returns false", !ctx.cancel(own));
            w.check("it is no longer pending", !ctx.is_pending(own));
        }
        site => {
            let scheduled = match ctx {
                Ctx::Port(t) if site != Site::Stop => {
                    let call = t.call_later(SHORT, |_: &mut Probe, _| stray());
                    w.check("a port timer scheduled by the callback", call.is_ok());
                    call.ok()
                }
                Ctx::Port(t) => {
                    let refused = t.call_later(SHORT, |_: &mut Probe, _| stray());
                    w.check(
                        "call_later from stop_protocol is PortClosed",
                        matches!(refused, Err(Error::PortClosed)),
                    );
                    Some(t.reactor().call_later(SHORT, |_| stray()))
                }
                Ctx::Reactor(r) => Some(r.call_later(SHORT, |_| stray())),
            };
            if let Some(call) = scheduled {
                w.check("a timer just scheduled is cancelled", ctx.cancel(call));
                w.check("cancelling it again returns false", !ctx.cancel(call));
                w.scheduled.set(Some(call));
            }
        }
    }
    // Its port's pending timer (for the reactor-level sites, just another port's).
    let port_timer = w.own_port_timer.get().expect("the actor's port timer");
    if w.site == Site::Stop {
        w.check(
            "the closing port's timer is no longer pending",
            !ctx.is_pending(port_timer),
        );
        w.check(
            "cancelling the closing port's timer returns false",
            !ctx.cancel(port_timer),
        );
    } else {
        cancel_pending(w, ctx, port_timer, "the actor's port timer");
    }
    let other = w.other_timer.get().expect("another's timer");
    cancel_pending(w, ctx, other, "another's reactor timer");
    let other_port = w.other_port_timer.get().expect("another port's timer");
    cancel_pending(w, ctx, other_port, "another port's timer");
    let fired = w.fired_timer.get().expect("a fired timer");
    w.check("a fired call is not pending", !ctx.is_pending(fired));
    w.check("cancelling a fired call returns false", !ctx.cancel(fired));
    w.check("and again", !ctx.cancel(fired));
    ctx.reactor()
        .call_later(SENTINEL, |_| world().sentinel.set(true));
}

/// Cancels a pending call, brought forward first so that the sentinel would see it fire.
fn cancel_pending(w: &World, ctx: &mut Ctx<'_, '_>, call: DelayedCall, what: &str) {
    w.check(format!("{what} is pending"), ctx.is_pending(call));
    w.check(format!("{what} can be reset"), ctx.reset(call, SHORT));
    w.check(format!("{what} is cancelled"), ctx.cancel(call));
    w.check(
        format!("{what}: a second cancel returns false"),
        !ctx.cancel(call),
    );
    w.check(
        format!("{what} is no longer pending"),
        !ctx.is_pending(call),
    );
}

fn close_other_port(w: &World, ctx: &mut Ctx<'_, '_>) {
    let other = w.other.get().expect("the other port");
    w.poke(other.local_addr());
    w.record(Ev::StopAsked(Who::Other));
    let r = ctx.reactor();
    w.check(
        "stop_listening(other) returns true",
        r.stop_listening(&other),
    );
    w.check(
        "a second stop_listening(other) returns false",
        !r.stop_listening(&other),
    );
    w.check(
        "the other port is no longer listening",
        !r.is_listening(&other),
    );
    w.check(
        "the other's stop_protocol does not run inside the callback",
        w.stops(Who::Other) == 0,
    );
}

fn nested_turn(w: &World, ctx: &mut Ctx<'_, '_>) {
    let r = ctx.reactor();
    w.check(
        "run inside a callback is Reentrant",
        matches!(r.run(), Err(Error::Reentrant)),
    );
    w.check(
        "iterate inside a callback is Reentrant",
        matches!(r.iterate(Duration::ZERO), Err(Error::Reentrant)),
    );
    w.check(
        "run_until inside a callback is Reentrant",
        matches!(r.run_until(ms(1), |_| false), Err(Error::Reentrant)),
    );
}

// ----- driving ---------------------------------------------------------------------------------

/// Turns the reactor until `done`, numbering the turns in the world; panics after DEADLINE.
#[track_caller]
fn drive(reactor: &mut Reactor, w: &World, what: &str, mut done: impl FnMut(&World) -> bool) {
    let ok = reactor
        .run_until(DEADLINE, |_| {
            w.turn.set(w.turn.get() + 1);
            done(w)
        })
        .expect("reactor turn");
    assert!(
        ok,
        "timed out after {DEADLINE:?} waiting for: {what}; trace {:?}",
        w.trace.borrow()
    );
}

/// Turns the reactor for `period` whatever happens, numbering the turns.
fn drive_for(reactor: &mut Reactor, w: &World, period: Duration) {
    let _ = reactor
        .run_until(period, |_| {
            w.turn.set(w.turn.get() + 1);
            false
        })
        .expect("reactor turn");
}

/// A datagram to `port` comes back from it.
#[track_caller]
fn assert_echoes(reactor: &mut Reactor, w: &World, port: &ListeningPort<Probe>, what: &[u8]) {
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    c.set_nonblocking(true).expect("nonblocking");
    c.send_to(what, port.local_addr()).expect("send");
    let mut buf = [0u8; 256];
    let mut got = None;
    drive(reactor, w, "an echo", |_| {
        if let Ok((n, from)) = c.recv_from(&mut buf) {
            got = Some((buf[..n].to_vec(), from));
        }
        got.is_some()
    });
    assert_eq!(got, Some((what.to_vec(), port.local_addr())));
}

// ----- one case --------------------------------------------------------------------------------

fn run_case(site: Site, action: Action) {
    init_logging();
    let w = Rc::new(World::new(site, action));
    WORLD.with(|cell| *cell.borrow_mut() = Some(w.clone()));
    let mut reactor = reactor();

    let witness = listen(&mut reactor, Who::Witness);
    let other = listen(&mut reactor, Who::Other);
    w.witness.set(Some(witness));
    w.other.set(Some(other));
    w.other_timer
        .set(Some(reactor.call_later(DEADLINE, |_| stray())));
    let other_port_timer = reactor
        .call_later_on(&other, DEADLINE, |_, _| stray())
        .expect("the other port's timer");
    w.other_port_timer.set(Some(other_port_timer));
    let fired = reactor.call_later(Duration::ZERO, |_| world().fired.set(true));
    w.fired_timer.set(Some(fired));
    drive(&mut reactor, &w, "a timer to fire before the case", |w| {
        w.fired.get()
    });

    // The actor, and the trigger that makes its site's callback run.
    let mut thread = None;
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    let actor = if site == Site::Start {
        let listened = reactor.listen_udp_with(loopback(), Probe { who: Who::Actor });
        assert!(w.done.get(), "start_protocol did not run inside listen");
        if action == Action::Panic {
            match listened {
                Err(Error::StartPanicked { addr, message }) => {
                    assert!(message.contains(&w.boom), "{message}");
                    assert_eq!(Some(addr), w.actor_addr.get());
                }
                other => panic!("expected StartPanicked, got {other:?}"),
            }
            None
        } else {
            Some(listened.expect("listen the actor"))
        }
    } else {
        let actor = listen(&mut reactor, Who::Actor);
        let own = reactor
            .call_later_on(&actor, DEADLINE, |_, _| stray())
            .expect("the actor's port timer");
        w.own_port_timer.set(Some(own));
        Some(actor)
    };
    w.actor.set(actor);
    if let Some(actor) = actor {
        let to = actor.local_addr();
        match site {
            Site::Start => {}
            Site::Datagram => {
                for d in [&b"go"[..], b"after-1", b"after-2"] {
                    client.send_to(d, to).expect("send to the actor");
                }
                client.send_to(b"w", witness.local_addr()).expect("send");
                client.send_to(b"o", other.local_addr()).expect("send");
            }
            Site::Refused => {
                let dead = dead_addr();
                let sent = reactor
                    .with_port(&actor, |_, t| {
                        t.connect(dead).and_then(|()| t.send(b"ping"))
                    })
                    .expect("the actor is open");
                sent.expect("connect and send to a dead address");
            }
            Site::Stop => {
                w.record(Ev::StopAsked(Who::Actor));
                assert!(reactor.stop_listening(&actor));
            }
            Site::Timer => {
                let call = reactor.call_later(ms(1), |r| act(Site::Timer, Ctx::Reactor(r)));
                w.own_call.set(Some(call));
            }
            Site::PortTimer => {
                let call = reactor
                    .call_later_on(&actor, ms(1), |_, t| act(Site::PortTimer, Ctx::Port(t)))
                    .expect("port timer");
                w.own_call.set(Some(call));
            }
            Site::Repeating => {
                let call = reactor.call_every(TICK, |r| {
                    let w = world();
                    w.fires.set(w.fires.get() + 1);
                    act(Site::Repeating, Ctx::Reactor(r));
                });
                w.own_call.set(Some(call));
            }
            Site::PortRepeating => {
                let call = reactor
                    .call_every_on(&actor, TICK, |_, t| {
                        let w = world();
                        w.fires.set(w.fires.get() + 1);
                        act(Site::PortRepeating, Ctx::Port(t));
                    })
                    .expect("port repeating call");
                w.own_call.set(Some(call));
            }
            Site::Thread => {
                let handle = reactor.handle();
                let second = w.second_call.clone();
                thread = Some(thread::spawn(move || {
                    handle
                        .call_from_thread(|r| act(Site::Thread, Ctx::Reactor(r)))
                        .expect("reactor alive");
                    handle
                        .call_from_thread(move |_| second.store(true, Ordering::SeqCst))
                        .expect("reactor alive");
                }));
            }
        }
    }

    if action == Action::StopReactor {
        stop_reactor_case(&mut reactor, &w);
    } else {
        drive_case(&mut reactor, &w, actor);
    }
    if let Some(thread) = thread {
        thread.join().expect("the calling thread");
    }
    WORLD.with(|cell| *cell.borrow_mut() = None);
}

/// After a stop asked from the callback: `run` returns at the end of that turn, every port's
/// stop_protocol ran once, no datagram was delivered after the stop; timers stay scheduled
/// and the reactor runs again.
fn stop_reactor_case(reactor: &mut Reactor, w: &World) {
    let site = w.site;
    // A 1 ns repeating call runs at most once per turn (it is due again only after the
    // turn's instant): it counts them. (Not a zero interval: see
    // `zero_interval_repeating_call_does_not_starve_other_timers`.)
    let ticker = reactor.call_every(Duration::from_nanos(1), |_| {
        let w = world();
        w.ticks.set(w.ticks.get() + 1);
    });
    let watchdog = reactor.call_later(DEADLINE, |r| {
        world().timed_out.set(true);
        r.stop();
    });
    reactor.run().expect("run");
    assert!(
        !w.timed_out.get(),
        "run returned only by the watchdog; trace {:?}",
        w.trace.borrow()
    );
    assert!(w.done.get());
    let at_stop = w.ticks_at_stop.get().expect("the stop was asked");
    assert!(
        w.ticks.get() - at_stop <= 1,
        "run went on for {} more turns after the stop",
        w.ticks.get() - at_stop
    );
    assert!(!reactor.is_stopping());
    assert_eq!(reactor.port_count(), 0);
    for who in [Who::Actor, Who::Witness, Who::Other] {
        assert_eq!(w.stops(who), 1, "{who:?}'s stop_protocol runs");
    }
    // "Timers stay scheduled"; the ports' timers went with their ports.
    assert!(reactor.is_pending(w.other_timer.get().expect("timer")));
    assert!(!reactor.is_pending(w.other_port_timer.get().expect("timer")));
    assert!(!reactor.is_pending(w.own_port_timer.get().expect("timer")));
    if let Some(own) = w.own_call.get() {
        assert_eq!(reactor.is_pending(own), site == Site::Repeating);
    }
    assert!(reactor.cancel(watchdog));
    assert!(reactor.cancel(ticker));
    check_trace(w, false);
    w.assert_checks();

    // The reactor runs again: a new port echoes, and a reactor-level repeating call goes on.
    w.record(Ev::RunAgain);
    let fresh = listen(reactor, Who::Fresh);
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    c.set_nonblocking(true).expect("nonblocking");
    c.send_to(b"again", fresh.local_addr()).expect("send");
    let fires_before = w.fires.get();
    let echoed = Rc::new(Cell::new(false));
    let poller = {
        let echoed = echoed.clone();
        reactor.call_every(ms(1), move |r| {
            let mut buf = [0u8; 64];
            if let Ok((n, from)) = c.recv_from(&mut buf) {
                echoed.set(&buf[..n] == b"again" && from == fresh.local_addr());
            }
            let w = world();
            let repeated = site != Site::Repeating || w.fires.get() > fires_before;
            let second = site != Site::Thread || w.second_call.load(Ordering::SeqCst);
            if echoed.get() && repeated && second {
                r.stop();
            }
        })
    };
    let watchdog = reactor.call_later(DEADLINE, |r| {
        world().timed_out.set(true);
        r.stop();
    });
    reactor.run().expect("run again");
    assert!(
        !w.timed_out.get(),
        "the second run did not do its work (echo {}, repeating fires {} from {fires_before}); trace {:?}",
        echoed.get(),
        w.fires.get(),
        w.trace.borrow()
    );
    assert_eq!(w.stops(Who::Fresh), 1);
    assert_eq!(reactor.port_count(), 0);
    reactor.cancel(poller);
    reactor.cancel(watchdog);
    check_trace(w, false);
}

/// The other actions, turned with `iterate`: the action's own rules, then the witness, the
/// other ports, the repeating calls, a final stop that runs every stop_protocol left, and the
/// trace's rules.
fn drive_case(reactor: &mut Reactor, w: &World, actor: Option<ListeningPort<Probe>>) {
    let (site, action) = (w.site, w.action);
    let witness = w.witness.get().expect("witness");
    let other = w.other.get().expect("other");
    drive(reactor, w, "the action to run", |w| w.done.get());
    let actor_alive = actor.is_some()
        && match (site, action) {
            (Site::Stop, _) | (_, Action::StopOwnPort) => false,
            // A panic in a hook a peer can trigger, or in a port timer, costs that event
            // only: the port goes on (one in start_protocol leaves no actor at all).
            _ => true,
        };

    match action {
        Action::StopOwnPort => {
            drive(reactor, w, "the actor's stop_protocol", |w| {
                w.stops(Who::Actor) == 1
            });
        }
        Action::OpenPort => {
            let opened = w.opened.get().expect("a port opened from the callback");
            assert!(reactor.is_listening(&opened));
            assert_echoes(reactor, w, &opened, b"to the new port");
        }
        Action::CancelTimers => {
            drive(reactor, w, "the sentinel past every cancelled timer", |w| {
                w.sentinel.get()
            });
            assert_eq!(w.stray.get(), 0, "a cancelled timer fired");
            let calls = [
                w.scheduled.get(),
                w.own_port_timer.get(),
                w.other_timer.get(),
                w.other_port_timer.get(),
                w.fired_timer.get(),
                w.own_call.get(),
            ];
            for call in calls.into_iter().flatten() {
                assert!(!reactor.is_pending(call), "{call:?} still pending");
            }
        }
        Action::CloseOtherPort => {
            drive(reactor, w, "the other port's stop_protocol", |w| {
                w.stops(Who::Other) == 1
            });
            assert!(
                reactor.port_stats(&other).is_none(),
                "the other port is closed"
            );
        }
        Action::NestedTurn => {}
        Action::Panic => {
            if site == Site::Stop {
                drive(reactor, w, "the panicking port to close", |w| {
                    w.stops(Who::Actor) == 1
                });
            }
            if let Some(actor) = actor.as_ref().filter(|_| site.is_port() && actor_alive) {
                let panics = reactor.port_stats(actor).map(|s| s.panics);
                assert_eq!(panics, Some(1), "the panic is counted, the port goes on");
            }
            let lines = logs_containing(&w.boom);
            assert!(
                lines.len() == 1 && lines[0].starts_with("ERROR"),
                "one ERROR line for the panic: {lines:?}"
            );
            if site.is_port() {
                let addr = w.actor_addr.get().expect("the actor's address");
                assert!(mentions(&lines[0], addr), "{lines:?} names {addr}");
            }
        }
        Action::StopReactor => unreachable!("stop_reactor_case"),
    }

    // A few more turns: a closed port stays closed, a stopped repeating call stays stopped.
    drive_for(reactor, w, ms(30));
    if let Some(own) = w.own_call.get()
        && matches!(site, Site::Repeating | Site::PortRepeating)
    {
        let goes_on = action != Action::CancelTimers
            && action != Action::Panic
            && (site == Site::Repeating || actor_alive);
        if goes_on {
            drive(reactor, w, "the repeating call to go on", |w| {
                w.fires.get() >= 3
            });
            assert!(reactor.is_pending(own));
        } else {
            assert_eq!(w.fires.get(), 1, "the repeating call ran again");
            assert!(!reactor.is_pending(own));
        }
    }
    if site == Site::Thread {
        drive(reactor, w, "the next call_from_thread", |w| {
            w.second_call.load(Ordering::SeqCst)
        });
    }

    // Only what the action closed is closed; the rest still works.
    assert_echoes(reactor, w, &witness, b"witness");
    assert_eq!(w.stops(Who::Witness), 0);
    if action == Action::CloseOtherPort {
        assert!(!reactor.is_listening(&other));
    } else {
        assert_echoes(reactor, w, &other, b"other");
    }
    if let Some(actor) = actor {
        assert_eq!(
            reactor.is_listening(&actor),
            actor_alive,
            "the actor listening"
        );
        if actor_alive {
            if site == Site::Refused {
                assert!(reactor.port_stats(&actor).is_some_and(|s| s.refused == 1));
            } else {
                assert_echoes(reactor, w, &actor, b"actor");
            }
        } else {
            assert!(reactor.port_stats(&actor).is_none(), "the actor is closed");
        }
    }
    let opened = w.opened.get();
    let expected_ports = 1
        + usize::from(action != Action::CloseOtherPort)
        + usize::from(actor_alive)
        + usize::from(opened.is_some());
    assert_eq!(reactor.port_count(), expected_ports);

    // A final stop: every port that started has run stop_protocol exactly once.
    reactor.stop();
    assert!(reactor.iterate(Duration::ZERO).expect("the stopping turn"));
    assert_eq!(reactor.port_count(), 0);
    for who in EVERY_PORT {
        let started = w.count(&Ev::Start(who));
        let never_started = who == Who::Actor && site == Site::Start && action == Action::Panic;
        let expected = if never_started { 0 } else { started };
        assert_eq!(
            w.stops(who),
            expected,
            "{who:?}: stop_protocol once per started port"
        );
    }
    check_trace(w, true);
    w.assert_checks();
}

/// The rules every trace keeps.
#[track_caller]
fn check_trace(w: &World, turns_counted: bool) {
    let trace = w.trace.borrow();
    // Per port: start_protocol first and once, stop_protocol at most once and last.
    for who in EVERY_PORT {
        let evs: Vec<&Ev> = trace
            .iter()
            .map(|(_, e)| e)
            .filter(|e| e.port() == Some(who))
            .collect();
        let Some(first) = evs.first() else { continue };
        assert_eq!(
            **first,
            Ev::Start(who),
            "{who:?} began without start: {trace:?}"
        );
        assert_eq!(w.count(&Ev::Start(who)), 1, "{who:?} started twice");
        let stops = w.stops(who);
        assert!(stops <= 1, "{who:?} stopped {stops} times: {trace:?}");
        if stops == 1 {
            assert_eq!(
                evs.last().map(|e| (*e).clone()),
                Some(Ev::Stop(who)),
                "a hook of {who:?} ran after its stop_protocol: {trace:?}"
            );
        }
    }
    // stop_protocol never runs nested inside the acting callback.
    let mut inside = false;
    for (_, e) in trace.iter() {
        match e {
            Ev::Begin => inside = true,
            Ev::End | Ev::Panicked => inside = false,
            Ev::Stop(who) => assert!(
                !inside,
                "{who:?}'s stop_protocol ran inside the callback: {trace:?}"
            ),
            _ => {}
        }
    }
    // No datagram after the stop of its port (asked for, or a panic in stop_protocol) or of
    // the reactor.
    let mut stopped = HashSet::new();
    let mut reactor_stopping = false;
    for (_, e) in trace.iter() {
        match e {
            Ev::StopAsked(who) => {
                stopped.insert(*who);
            }
            // Only a panic in stop_protocol ends the port (one in start_protocol means it
            // never started); elsewhere the port goes on.
            Ev::Panicked if w.site == Site::Stop => {
                stopped.insert(Who::Actor);
            }
            Ev::ReactorStopAsked => reactor_stopping = true,
            Ev::RunAgain => reactor_stopping = false,
            Ev::Datagram(who, data) => {
                assert!(
                    !reactor_stopping && !stopped.contains(who),
                    "{who:?} got {:?} after a stop was asked for: {trace:?}",
                    String::from_utf8_lossy(data)
                );
                assert_ne!(data.as_slice(), POKE, "{who:?} got the poke: {trace:?}");
            }
            _ => {}
        }
    }
    // stop_protocol on a later turn than the one that asked (the same one, but after the
    // callback, when asked from a stop_protocol: the ports close in one sweep).
    if turns_counted {
        let mut inside = false;
        let mut asked: Vec<(Who, u32, bool)> = Vec::new();
        for (turn, e) in trace.iter() {
            match e {
                Ev::Begin => inside = true,
                Ev::End => inside = false,
                Ev::StopAsked(who) => asked.push((*who, *turn, inside)),
                Ev::Panicked if w.site.is_port() => asked.push((Who::Actor, *turn, inside)),
                _ => {}
            }
        }
        for (who, asked_turn, inside) in asked {
            let Some(stop_turn) = trace
                .iter()
                .find(|(_, e)| *e == Ev::Stop(who))
                .map(|(t, _)| *t)
            else {
                continue;
            };
            if inside && w.site == Site::Stop {
                assert!(stop_turn >= asked_turn, "{who:?}: {trace:?}");
            } else if stop_turn < asked_turn {
                // Stopped before this ask (the ask was a no-op): nothing to check.
            } else {
                assert!(
                    stop_turn > asked_turn,
                    "{who:?}'s stop_protocol ran on the turn its stop was asked for: {trace:?}"
                );
            }
        }
    }
}

// ----- the matrix ------------------------------------------------------------------------------

macro_rules! matrix {
    ($($module:ident: $site:ident { $($(#[$meta:meta])* $case:ident: $action:ident,)* })*) => {
        $(mod $module {
            use super::{Action, Site, run_case};
            $(
                $(#[$meta])*
                #[test]
                fn $case() {
                    run_case(Site::$site, Action::$action);
                }
            )*
        })*
    };
}

matrix! {
    in_start_protocol: Start {
        stop_its_own_port: StopOwnPort,
        stop_the_reactor: StopReactor,
        open_a_port: OpenPort,
        cancel_timers: CancelTimers,
        close_another_port: CloseOtherPort,
        run_a_nested_turn: NestedTurn,
        panic: Panic,
    }
    in_datagram_received: Datagram {
        stop_its_own_port: StopOwnPort,
        stop_the_reactor: StopReactor,
        open_a_port: OpenPort,
        cancel_timers: CancelTimers,
        close_another_port: CloseOtherPort,
        run_a_nested_turn: NestedTurn,
        panic: Panic,
    }
    in_connection_refused: Refused {
        stop_its_own_port: StopOwnPort,
        stop_the_reactor: StopReactor,
        open_a_port: OpenPort,
        cancel_timers: CancelTimers,
        close_another_port: CloseOtherPort,
        run_a_nested_turn: NestedTurn,
        panic: Panic,
    }
    in_stop_protocol: Stop {
        stop_its_own_port: StopOwnPort,
        stop_the_reactor: StopReactor,
        open_a_port: OpenPort,
        cancel_timers: CancelTimers,
        close_another_port: CloseOtherPort,
        run_a_nested_turn: NestedTurn,
        panic: Panic,
    }
    in_reactor_timer: Timer {
        stop_its_own_port: StopOwnPort,
        stop_the_reactor: StopReactor,
        open_a_port: OpenPort,
        cancel_timers: CancelTimers,
        close_another_port: CloseOtherPort,
        run_a_nested_turn: NestedTurn,
        panic: Panic,
    }
    in_port_timer: PortTimer {
        stop_its_own_port: StopOwnPort,
        stop_the_reactor: StopReactor,
        open_a_port: OpenPort,
        cancel_timers: CancelTimers,
        close_another_port: CloseOtherPort,
        run_a_nested_turn: NestedTurn,
        panic: Panic,
    }
    in_reactor_repeating_call: Repeating {
        stop_its_own_port: StopOwnPort,
        stop_the_reactor: StopReactor,
        open_a_port: OpenPort,
        cancel_timers: CancelTimers,
        close_another_port: CloseOtherPort,
        run_a_nested_turn: NestedTurn,
        panic: Panic,
    }
    in_port_repeating_call: PortRepeating {
        stop_its_own_port: StopOwnPort,
        stop_the_reactor: StopReactor,
        open_a_port: OpenPort,
        cancel_timers: CancelTimers,
        close_another_port: CloseOtherPort,
        run_a_nested_turn: NestedTurn,
        panic: Panic,
    }
    in_call_from_thread: Thread {
        stop_its_own_port: StopOwnPort,
        stop_the_reactor: StopReactor,
        open_a_port: OpenPort,
        cancel_timers: CancelTimers,
        close_another_port: CloseOtherPort,
        run_a_nested_turn: NestedTurn,
        panic: Panic,
    }
}

// ----- beyond the matrix -----------------------------------------------------------------------

/// Echoes, counts its stop_protocol calls, and runs `on_stop` in it.
struct Counted {
    stops: Rc<Cell<u32>>,
    on_stop: Box<dyn FnMut(&mut UdpTransport<'_>)>,
}

impl DatagramProtocol for Counted {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        let _ = t.write(data, from);
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.stops.set(self.stops.get() + 1);
        (self.on_stop)(t);
    }
}

fn counted(on_stop: impl FnMut(&mut UdpTransport<'_>) + 'static) -> (Counted, Rc<Cell<u32>>) {
    let stops = Rc::new(Cell::new(0));
    (
        Counted {
            stops: stops.clone(),
            on_stop: Box::new(on_stop),
        },
        stops,
    )
}

/// `run` with a watchdog; returns whether it stopped without the watchdog.
fn run_guarded(reactor: &mut Reactor) -> bool {
    let timed_out = Rc::new(Cell::new(false));
    let watchdog = {
        let timed_out = timed_out.clone();
        reactor.call_later(DEADLINE, move |r| {
            timed_out.set(true);
            r.stop();
        })
    };
    reactor.run().expect("run");
    reactor.cancel(watchdog);
    !timed_out.get()
}

/// A port that echoes once in a `run` started after the first one returned.
fn echoes_in_a_new_run(reactor: &mut Reactor) -> bool {
    let (p, _) = counted(|_| {});
    let port = reactor
        .listen_udp_with(loopback(), p)
        .expect("listen for the second run");
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.set_nonblocking(true).expect("nonblocking");
    c.send_to(b"second run", port.local_addr()).expect("send");
    let echoed = Rc::new(Cell::new(false));
    let poller = {
        let echoed = echoed.clone();
        reactor.call_every(ms(1), move |r| {
            let mut buf = [0u8; 64];
            if c.recv(&mut buf).is_ok() {
                echoed.set(true);
                r.stop();
            }
        })
    };
    let stopped = run_guarded(reactor);
    reactor.cancel(poller);
    stopped && echoed.get()
}

/// Every way to stop a port at once, in one callback (stop_listening twice, through the
/// reactor, Reactor::stop, then a panic): stop_protocol still runs once, and run returns.
#[test]
fn every_stop_at_once_in_one_callback_still_stops_the_port_once() {
    init_logging();
    let mut reactor = reactor();
    let (bystander, bystander_stops) = counted(|_| {});
    reactor
        .listen_udp_with(loopback(), bystander)
        .expect("listen the bystander");
    let (p, stops) = counted(|_| {});
    let port = reactor.listen_udp_with(loopback(), p).expect("listen");
    reactor
        .with_port(&port, move |_, t| {
            t.stop_listening();
            t.stop_listening();
            let r = t.reactor();
            r.stop_listening(&port);
            r.stop();
            r.stop();
            panic!("torture: every stop at once");
        })
        .expect_err("the closure panicked");
    assert!(run_guarded(&mut reactor), "run did not return");
    assert_eq!(stops.get(), 1);
    assert_eq!(bystander_stops.get(), 1);
    assert_eq!(reactor.port_count(), 0);
}

/// `Reactor::stop` asked from a stop_protocol that the reactor's own stop runs is part of
/// that stop: `run` returns once, and the next `run` does its work instead of returning at
/// once.
#[test]
fn reactor_stop_asked_during_the_reactor_stop_does_not_leak_into_the_next_run() {
    let mut reactor = reactor();
    let (p, stops) = counted(|t| t.reactor().stop());
    reactor.listen_udp_with(loopback(), p).expect("listen");
    reactor.call_later(ms(1), |r| r.stop());
    assert!(run_guarded(&mut reactor), "the first run did not return");
    assert_eq!(stops.get(), 1);
    let still_stopping = reactor.is_stopping();
    assert!(
        echoes_in_a_new_run(&mut reactor),
        "the second run returned before its port echoed (is_stopping() was {still_stopping} \
         after the first run returned)"
    );
    assert!(
        !still_stopping,
        "a stop asked during the stop was still pending after run returned"
    );
}

/// After `t.stop_listening()` inside one of its own callbacks, the port is stopping, so
/// `Reactor::is_listening` ("open and not stopping") must say false, as `t.is_closing()`
/// already says true.
#[test]
fn is_listening_is_false_inside_the_callback_that_stopped_its_own_port() {
    let mut reactor = reactor();
    let (p, stops) = counted(|_| {});
    let port = reactor.listen_udp_with(loopback(), p).expect("listen");
    let (closing, listening) = reactor
        .with_port(&port, move |_, t| {
            t.stop_listening();
            (t.is_closing(), t.reactor().is_listening(&port))
        })
        .expect("the port is open");
    assert!(closing);
    assert!(!reactor.is_listening(&port), "after the callback returned");
    assert!(
        !listening,
        "is_listening(port) was true inside its callback after t.stop_listening()"
    );
    reactor.iterate(Duration::ZERO).expect("turn");
    assert_eq!(stops.get(), 1);
}

/// A zero-interval repeating call (it runs once per turn) must not keep every later timer
/// from firing: "a port with data left ... is served ... after the other ports and the due
/// timers", and timers never fire late without end.
#[test]
fn zero_interval_repeating_call_does_not_starve_other_timers() {
    let mut reactor = reactor();
    let ticks = Rc::new(Cell::new(0u64));
    {
        let ticks = ticks.clone();
        reactor.call_every(Duration::ZERO, move |_| ticks.set(ticks.get() + 1));
    }
    let fired = Rc::new(Cell::new(false));
    {
        let fired = fired.clone();
        reactor.call_later(ms(5), move |_| fired.set(true));
    }
    let ok = reactor
        .run_until(Duration::from_secs(1), |_| fired.get())
        .expect("turns");
    assert!(
        ok,
        "a 5 ms timer had not fired after 1 s beside a zero-interval repeating call ({} ticks)",
        ticks.get()
    );
}

/// A port opened from a stop_protocol while the reactor stops still gets exactly one
/// stop_protocol, and the reactor runs again. (Today that port outlives the stop that
/// opened it: `run` returns with it open, and the next stop closes it. Not asserted: the
/// docs do not say which stop it belongs to.)
#[test]
fn port_opened_from_stop_protocol_during_the_reactor_stop_stops_once() {
    let mut reactor = reactor();
    let late_stops: Rc<RefCell<Option<Rc<Cell<u32>>>>> = Rc::default();
    let (p, stops) = {
        let late_stops = late_stops.clone();
        counted(move |t| {
            let (late, late_count) = counted(|_| {});
            if t.reactor().listen_udp_with(loopback(), late).is_ok() {
                *late_stops.borrow_mut() = Some(late_count);
            }
        })
    };
    reactor.listen_udp_with(loopback(), p).expect("listen");
    reactor.call_later(ms(1), |r| r.stop());
    assert!(run_guarded(&mut reactor), "run did not return");
    assert_eq!(stops.get(), 1);
    let late = late_stops
        .borrow()
        .clone()
        .expect("a port opened from stop_protocol");
    assert!(late.get() <= 1);
    assert!(echoes_in_a_new_run(&mut reactor), "the reactor runs again");
    assert_eq!(late.get(), 1, "the late port's stop_protocol, once");
    assert_eq!(reactor.port_count(), 0);
}

/// Dropping a reactor with open ports, a port stop and a reactor stop pending, timers of
/// every kind scheduled, datagrams unread and a cross-thread call queued neither hangs nor
/// panics: its sockets are closed, its protocols dropped (stop_protocol at most once), the
/// queued call never runs and its handles answer `ReactorGone`.
#[test]
fn dropping_a_busy_reactor_neither_hangs_nor_panics() {
    struct Dropped {
        drops: Arc<AtomicUsize>,
        stops: Arc<AtomicUsize>,
    }
    impl DatagramProtocol for Dropped {
        fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
        fn stop_protocol(&mut self, _: &mut UdpTransport<'_>) {
            self.stops.fetch_add(1, Ordering::SeqCst);
        }
    }
    impl Drop for Dropped {
        fn drop(&mut self) {
            self.drops.fetch_add(1, Ordering::SeqCst);
        }
    }
    let drops = Arc::new(AtomicUsize::new(0));
    let stops = Arc::new(AtomicUsize::new(0));
    let ran = Arc::new(AtomicBool::new(false));
    let (tx, rx) = mpsc::channel();
    let worker = {
        let (drops, stops, ran) = (drops.clone(), stops.clone(), ran.clone());
        thread::spawn(move || {
            let mut reactor = reactor();
            // 127.0.0.7: nothing else binds it, so rebinding its ports shows they are free.
            let opts = || ListenOptions::new(0).interface("127.0.0.7");
            let mut ports = Vec::new();
            for _ in 0..3 {
                let p = Dropped {
                    drops: drops.clone(),
                    stops: stops.clone(),
                };
                ports.push(reactor.listen_udp_with(opts(), p).expect("listen"));
            }
            let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
            for p in &ports {
                c.send_to(b"unread", p.local_addr()).expect("send");
            }
            reactor.call_later(ms(1), |_| {});
            reactor.call_every(ms(1), |_| {});
            reactor
                .call_later_on(&ports[0], ms(1), |_, _| {})
                .expect("port timer");
            reactor
                .call_every_on(&ports[1], ms(1), |_, _| {})
                .expect("port repeating call");
            assert!(reactor.stop_listening(&ports[2]));
            reactor.stop();
            let handle = reactor.handle();
            let queued = ran.clone();
            handle
                .call_from_thread(move |_| queued.store(true, Ordering::SeqCst))
                .expect("queue a call");
            let addrs: Vec<SocketAddr> = ports.iter().map(|p| p.local_addr()).collect();
            drop(reactor);
            tx.send((addrs, handle)).expect("report");
        })
    };
    let (addrs, handle) = rx
        .recv_timeout(DEADLINE)
        .expect("dropping the reactor hung (or the thread panicked)");
    worker.join().expect("dropping the reactor panicked");
    assert_eq!(drops.load(Ordering::SeqCst), 3, "every protocol dropped");
    assert!(stops.load(Ordering::SeqCst) <= 3);
    assert!(
        !ran.load(Ordering::SeqCst),
        "a queued call ran on a dropped reactor"
    );
    assert!(!handle.is_alive());
    assert!(matches!(
        handle.call_from_thread(|_| {}),
        Err(Error::ReactorGone)
    ));
    for addr in addrs {
        UdpSocket::bind(addr).expect("the dropped reactor's socket is closed");
    }
}
