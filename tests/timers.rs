//! Timers: `call_later`, `call_every`, cancel, reset, port-scoped timers, panics in
//! timers, and the cross-thread handle.
//!
//! How late a timer fires depends on the scheduler, so no test bounds it in time: a test
//! that cares drives the reactor one `iterate` per turn ([`TurnByTurn`]) and asserts that
//! the timer fired no later than the first turn that began after its deadline. Never
//! early holds whatever the scheduler does, and is asserted in time.

mod util;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use twine::{DatagramProtocol, DelayedCall, Error, Reactor, ReactorHandle, UdpTransport};
use util::{DEADLINE, Recorder, client, drive, drive_for, drive_recv, init_logging, ms, reactor};

/// The longest one `iterate` waits in the tests that turn the reactor themselves.
const TURN_TIMEOUT: Duration = Duration::from_secs(2);

/// The reactor driven one `iterate` per turn, the turns numbered from 1: callbacks read
/// the counter to record the turn they ran in, and `began` holds when each turn began.
struct TurnByTurn {
    turn: Rc<Cell<u64>>,
    began: Vec<Instant>,
}

impl TurnByTurn {
    fn new() -> Self {
        TurnByTurn {
            turn: Rc::default(),
            began: Vec::new(),
        }
    }

    /// The turn counter, for a callback to read.
    fn counter(&self) -> Rc<Cell<u64>> {
        self.turn.clone()
    }

    /// Turns until `done` holds (checked before each turn); panics with `what` after
    /// [`DEADLINE`].
    #[track_caller]
    fn until(
        &mut self,
        reactor: &mut Reactor,
        what: &str,
        mut done: impl FnMut(&mut Reactor) -> bool,
    ) {
        let deadline = Instant::now() + DEADLINE;
        while !done(reactor) {
            assert!(
                Instant::now() < deadline,
                "timed out after {DEADLINE:?} waiting for: {what}"
            );
            self.turn.set(self.turn.get() + 1);
            self.began.push(Instant::now());
            reactor.iterate(TURN_TIMEOUT).expect("iterate");
        }
    }

    /// Asserts that `what`, surely due by `due_by` and run in turn `ran`, ran no later than
    /// the first turn that began at or after `due_by`: `run_timers` reads the clock after
    /// that turn's poll, so the timer is due there, and it was scheduled in an earlier
    /// turn (or before the first).
    #[track_caller]
    fn assert_ran_by_the_first_turn_after(&self, what: &str, due_by: Instant, ran: u64) {
        let first = self
            .began
            .iter()
            .position(|&b| b >= due_by)
            .map(|i| i as u64 + 1);
        assert!(
            ran >= 1 && first.is_none_or(|first| ran <= first),
            "{what} ran in turn {ran}, but turn {first:?} began after it was due ({} turns)",
            self.began.len()
        );
    }
}

/// A protocol that ignores datagrams and records its stop; for port-scoped timers.
struct Quiet {
    log: Rc<RefCell<Vec<&'static str>>>,
}

impl DatagramProtocol for Quiet {
    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}

    fn stop_protocol(&mut self, _: &mut UdpTransport<'_>) {
        self.log.borrow_mut().push("stop");
    }
}

// ----- reactor-level timers --------------------------------------------------------------

/// A call_later fires no earlier than its delay after it was scheduled, and no later than
/// the first turn that begins after its deadline.
#[test]
fn call_later_fires_no_earlier_than_its_delay_and_by_the_first_turn_after_it() {
    let mut reactor = reactor();
    let mut turns = TurnByTurn::new();
    // (delay, time from scheduling to firing, turn it fired in)
    let fired: Rc<RefCell<Vec<(Duration, Duration, u64)>>> = Rc::default();
    let mut due_by = Vec::new();
    for delay in [ms(0), ms(1), ms(15), ms(40)] {
        let scheduled = Instant::now();
        let (fired, turn) = (fired.clone(), turns.counter());
        reactor.call_later(delay, move |_| {
            fired
                .borrow_mut()
                .push((delay, scheduled.elapsed(), turn.get()));
        });
        // The reactor read its clock for the deadline before this reading.
        due_by.push((delay, Instant::now() + delay));
    }
    turns.until(&mut reactor, "four timers", |_| fired.borrow().len() == 4);
    for &(delay, elapsed, turn) in fired.borrow().iter() {
        assert!(
            elapsed >= delay,
            "{delay:?} timer fired early, after {elapsed:?}"
        );
        let (_, due) = due_by.iter().find(|(d, _)| *d == delay).expect("scheduled");
        turns.assert_ran_by_the_first_turn_after(&format!("the {delay:?} timer"), *due, turn);
    }
}

/// Timers with different delays fire in deadline order, whatever order they were scheduled in.
#[test]
fn timers_with_different_delays_fire_in_deadline_order() {
    let mut reactor = reactor();
    let order: Rc<RefCell<Vec<u64>>> = Rc::default();
    for delay in [40, 10, 25] {
        let order = order.clone();
        reactor.call_later(ms(delay), move |_| order.borrow_mut().push(delay));
    }
    drive(&mut reactor, "three timers", |_| order.borrow().len() == 3);
    assert_eq!(*order.borrow(), vec![10, 25, 40]);
}

/// Timers scheduled one after another with the same delay fire in the order they were scheduled.
#[test]
fn timers_with_the_same_delay_fire_in_schedule_order() {
    let mut reactor = reactor();
    let order: Rc<RefCell<Vec<usize>>> = Rc::default();
    for delay in [ms(0), ms(10)] {
        order.borrow_mut().clear();
        for i in 0..50 {
            let order = order.clone();
            reactor.call_later(delay, move |_| order.borrow_mut().push(i));
        }
        drive(&mut reactor, "fifty timers", |_| order.borrow().len() == 50);
        assert_eq!(
            *order.borrow(),
            (0..50).collect::<Vec<_>>(),
            "delay {delay:?}"
        );
    }
}

/// A call cancelled before its deadline never fires; cancel says true once, then false.
#[test]
fn cancelled_call_never_fires_and_cancel_reports_pending_once() {
    let mut reactor = reactor();
    let fired = Rc::new(Cell::new(false));
    let later = Rc::new(Cell::new(false));
    let call = {
        let fired = fired.clone();
        reactor.call_later(ms(10), move |_| fired.set(true))
    };
    {
        let later = later.clone();
        reactor.call_later(ms(60), move |_| later.set(true));
    }
    assert!(reactor.is_pending(call));
    assert_eq!(reactor.timer_count(), 2);
    assert!(reactor.cancel(call), "first cancel of a pending call");
    assert!(!reactor.cancel(call), "second cancel");
    assert!(!reactor.is_pending(call));
    assert!(
        !reactor.reset(call, ms(1)),
        "a cancelled call cannot be reset"
    );
    assert_eq!(reactor.timer_count(), 1);
    drive(&mut reactor, "the 60 ms timer", |_| later.get());
    assert!(!fired.get(), "the cancelled call fired");
}

/// reset moves the deadline to the new delay after the reset, later or sooner than before:
/// the call fires no earlier than the new delay after the reset, and no later than the
/// first turn that begins after the new deadline.
#[test]
fn reset_moves_the_deadline_to_the_new_delay_from_now() {
    let mut reactor = reactor();
    let mut turns = TurnByTurn::new();
    // When the call fired, and in which turn.
    let fired: Rc<Cell<Option<(Instant, u64)>>> = Rc::default();
    let call = {
        let (fired, turn) = (fired.clone(), turns.counter());
        reactor.call_later(ms(10), move |_| {
            fired.set(Some((Instant::now(), turn.get())))
        })
    };
    drive_for(&mut reactor, ms(3));
    let reset_at = Instant::now();
    assert!(reactor.reset(call, ms(80)), "reset of a pending call");
    let due_by = Instant::now() + ms(80);
    assert!(reactor.is_pending(call));
    turns.until(&mut reactor, "the reset timer", |_| fired.get().is_some());
    let (at, turn) = fired.get().expect("fired");
    let waited = at - reset_at;
    assert!(waited >= ms(80), "fired {waited:?} after a reset to 80 ms");
    turns.assert_ran_by_the_first_turn_after("the call reset to 80 ms", due_by, turn);
    assert!(!reactor.reset(call, ms(1)), "a fired call cannot be reset");

    // Reset to sooner: a call due in an hour fires 5 ms after the reset.
    let mut turns = TurnByTurn::new();
    let soon: Rc<Cell<Option<(Instant, u64)>>> = Rc::default();
    let call = {
        let (soon, turn) = (soon.clone(), turns.counter());
        reactor.call_later(Duration::from_secs(3600), move |_| {
            soon.set(Some((Instant::now(), turn.get())));
        })
    };
    let reset_at = Instant::now();
    assert!(reactor.reset(call, ms(5)));
    let due_by = Instant::now() + ms(5);
    turns.until(&mut reactor, "the call reset to 5 ms", |_| {
        soon.get().is_some()
    });
    let (at, turn) = soon.get().expect("fired");
    assert!(
        at - reset_at >= ms(5),
        "fired {:?} after a reset to 5 ms",
        at - reset_at
    );
    turns.assert_ran_by_the_first_turn_after("the call reset to 5 ms", due_by, turn);
}

/// is_pending is true until a one-shot call starts to run, and false inside it and after.
#[test]
fn is_pending_is_true_until_a_one_shot_call_runs() {
    let mut reactor = reactor();
    let handle: Rc<Cell<Option<DelayedCall>>> = Rc::default();
    let seen_inside: Rc<Cell<Option<bool>>> = Rc::default();
    let call = {
        let (handle, seen_inside) = (handle.clone(), seen_inside.clone());
        reactor.call_later(ms(10), move |r| {
            seen_inside.set(Some(r.is_pending(handle.get().expect("handle set"))));
        })
    };
    handle.set(Some(call));
    assert!(reactor.is_pending(call));
    drive(&mut reactor, "the call", |_| seen_inside.get().is_some());
    assert_eq!(seen_inside.get(), Some(false), "is_pending inside the call");
    assert!(!reactor.is_pending(call));
    assert_eq!(reactor.timer_count(), 0);
}

/// call_every fires repeatedly, the n-th time no earlier than n intervals in and no later
/// than the first turn after its deadline, and stops on cancel.
#[test]
fn call_every_repeats_on_its_interval_until_cancelled() {
    // Missed ticks are skipped, so a late tick may be followed by one closer than an
    // interval; the n-th deadline (start + n * interval) is the guarantee. The next
    // deadline is the first tick after the reactor's clock reading when a run fired,
    // which is at or before the run's own reading: at most an interval after that.
    let mut reactor = reactor();
    let mut turns = TurnByTurn::new();
    let interval = ms(20);
    // When each run happened, and in which turn.
    let runs: Rc<RefCell<Vec<(Instant, u64)>>> = Rc::default();
    let start = Instant::now();
    let call = {
        let (runs, turn) = (runs.clone(), turns.counter());
        reactor.call_every(interval, move |_| {
            runs.borrow_mut().push((Instant::now(), turn.get()));
        })
    };
    let first_due_by = Instant::now() + interval;
    turns.until(&mut reactor, "three ticks", |r| {
        assert!(r.is_pending(call), "a repeating call stays pending");
        runs.borrow().len() >= 3
    });
    let ticks = runs.borrow().clone();
    for (n, &(at, turn)) in ticks.iter().enumerate() {
        let since = at - start;
        let earliest = interval * (n as u32 + 1);
        assert!(
            since >= earliest,
            "tick {n} after {since:?}, before {earliest:?}"
        );
        let due_by = match n {
            0 => first_due_by,
            _ => ticks[n - 1].0 + interval,
        };
        turns.assert_ran_by_the_first_turn_after(&format!("tick {n}"), due_by, turn);
    }
    assert!(ticks.windows(2).all(|w| w[0].0 < w[1].0 && w[0].1 < w[1].1));

    assert!(reactor.cancel(call));
    assert!(!reactor.is_pending(call));
    let seen = runs.borrow().len();
    drive_for(&mut reactor, interval * 4);
    assert_eq!(runs.borrow().len(), seen, "ticked after cancel");
    assert!(!reactor.cancel(call));
    assert_eq!(reactor.timer_count(), 0);
}

/// A repeating call can cancel itself from inside its own closure, and then never fires again.
#[test]
fn repeating_call_can_cancel_itself_from_its_own_closure() {
    let mut reactor = reactor();
    let handle: Rc<Cell<Option<DelayedCall>>> = Rc::default();
    let count = Rc::new(Cell::new(0u32));
    let cancelled: Rc<Cell<Option<bool>>> = Rc::default();
    let call = {
        let (handle, count, cancelled) = (handle.clone(), count.clone(), cancelled.clone());
        reactor.call_every(ms(5), move |r| {
            count.set(count.get() + 1);
            if count.get() == 3 {
                cancelled.set(Some(r.cancel(handle.get().expect("handle set"))));
            }
        })
    };
    handle.set(Some(call));
    drive(&mut reactor, "three ticks", |_| count.get() >= 3);
    drive_for(&mut reactor, ms(60));
    assert_eq!(cancelled.get(), Some(true), "cancel from inside returned");
    assert_eq!(count.get(), 3, "ticked after cancelling itself");
    assert!(!reactor.is_pending(call));
    assert_eq!(reactor.timer_count(), 0);
}

/// A zero-delay call scheduled from a timer runs on the next turn, never in the same one.
#[test]
fn zero_delay_call_scheduled_from_a_timer_runs_on_the_next_turn() {
    fn chain(r: &mut Reactor, turn: Rc<Cell<u32>>, log: Rc<RefCell<Vec<u32>>>, left: u32) {
        log.borrow_mut().push(turn.get());
        if left > 0 {
            r.call_later(Duration::ZERO, move |r| chain(r, turn, log, left - 1));
        }
    }
    let mut reactor = reactor();
    let turn = Rc::new(Cell::new(0u32));
    let log: Rc<RefCell<Vec<u32>>> = Rc::default();
    {
        let (turn, log) = (turn.clone(), log.clone());
        reactor.call_later(Duration::ZERO, move |r| chain(r, turn, log, 5));
    }
    for n in 1..=6 {
        turn.set(n);
        reactor.iterate(TURN_TIMEOUT).expect("iterate");
    }
    assert_eq!(*log.borrow(), vec![1, 2, 3, 4, 5, 6], "turn of each call");
    assert_eq!(reactor.timer_count(), 0);
}

/// A repeating call with a zero interval fires exactly once per turn, never twice in one.
#[test]
fn zero_interval_repeating_call_fires_once_per_turn() {
    // On a thread, so that a turn that never ends fails the test instead of hanging it.
    let (tx, rx) = mpsc::channel();
    thread::spawn(move || {
        let mut reactor = reactor();
        let count = Rc::new(Cell::new(0u32));
        let call = {
            let count = count.clone();
            reactor.call_every(Duration::ZERO, move |_| count.set(count.get() + 1))
        };
        let mut per_turn = Vec::new();
        for _ in 0..5 {
            reactor.iterate(TURN_TIMEOUT).expect("iterate");
            per_turn.push(count.get());
        }
        assert!(reactor.cancel(call));
        tx.send(per_turn).expect("send");
    });
    let per_turn = rx
        .recv_timeout(DEADLINE)
        .expect("five turns of a zero-interval call did not finish");
    assert_eq!(per_turn, vec![1, 2, 3, 4, 5], "count after each turn");
}

/// A handle to a call that already fired never reaches a later call reusing its slot.
#[test]
fn stale_delayed_call_handle_does_not_touch_a_later_call() {
    let mut reactor = reactor();
    let first = reactor.call_later(Duration::ZERO, |_| {});
    drive(&mut reactor, "the first call", |r| !r.is_pending(first));
    let fired = Rc::new(Cell::new(false));
    let second = {
        let fired = fired.clone();
        reactor.call_later(ms(10), move |_| fired.set(true))
    };
    assert_ne!(first, second);
    assert!(!reactor.cancel(first), "cancel through the stale handle");
    assert!(!reactor.reset(first, Duration::from_secs(3600)));
    assert!(!reactor.is_pending(first));
    assert!(reactor.is_pending(second));
    drive(&mut reactor, "the second call", |_| fired.get());
}

/// run and iterate called from inside a timer are refused with Reentrant.
#[test]
fn run_and_iterate_inside_a_timer_are_reentrant_errors() {
    let mut reactor = reactor();
    let results: Rc<RefCell<Vec<String>>> = Rc::default();
    {
        let results = results.clone();
        reactor.call_later(Duration::ZERO, move |r| {
            let mut results = results.borrow_mut();
            results.push(format!("{:?}", r.iterate(Duration::ZERO)));
            results.push(format!("{:?}", r.run()));
            results.push(format!("{:?}", r.run_until(ms(1), |_| false)));
        });
    }
    drive(&mut reactor, "the timer", |_| !results.borrow().is_empty());
    assert_eq!(
        *results.borrow(),
        vec!["Err(Reentrant)", "Err(Reentrant)", "Err(Reentrant)"]
    );
}

/// A timer that keeps rescheduling itself for "now" does not starve a port: its echo arrives.
#[test]
fn self_rescheduling_zero_delay_timer_does_not_starve_ports() {
    fn spin(r: &mut Reactor, stop: Rc<Cell<bool>>, count: Rc<Cell<u64>>) {
        count.set(count.get() + 1);
        if !stop.get() {
            r.call_later(Duration::ZERO, move |r| spin(r, stop, count));
        }
    }
    let mut reactor = reactor();
    let (echo, _events) = Recorder::echoing();
    let port = util::listen_loopback(&mut reactor, echo);
    let stop = Rc::new(Cell::new(false));
    let count = Rc::new(Cell::new(0u64));
    {
        let (stop, count) = (stop.clone(), count.clone());
        reactor.call_later(Duration::ZERO, move |r| spin(r, stop, count));
    }
    drive(&mut reactor, "the spinning timer to start", |_| {
        count.get() > 10
    });
    let c = client();
    c.send_to(b"still there?", port.local_addr()).expect("send");
    let (data, from) = drive_recv(&mut reactor, &c);
    assert_eq!(data, b"still there?");
    assert_eq!(from, port.local_addr());
    stop.set(true);
    drive(&mut reactor, "the spinning timer to end", |r| {
        r.timer_count() == 0
    });
}

/// A panicking reactor-level timer is logged at ERROR and stopped; the reactor and others go on.
#[test]
fn panicking_reactor_timer_is_logged_and_the_reactor_goes_on() {
    init_logging();
    let mut reactor = reactor();
    reactor.call_later(ms(1), |_| panic!("timers-rs one-shot boom 4b1d"));
    let repeating = reactor.call_every(ms(2), |_| panic!("timers-rs repeating boom 4b1d"));
    let survivor = Rc::new(Cell::new(0u32));
    {
        let survivor = survivor.clone();
        reactor.call_every(ms(5), move |_| survivor.set(survivor.get() + 1));
    }
    drive(&mut reactor, "the surviving timer to tick 5 times", |_| {
        survivor.get() >= 5
    });
    assert!(
        !reactor.is_pending(repeating),
        "a panicking repeating call stops"
    );
    for needle in [
        "timers-rs one-shot boom 4b1d",
        "timers-rs repeating boom 4b1d",
    ] {
        let lines = util::logs_containing(needle);
        assert_eq!(lines.len(), 1, "log lines for {needle:?}: {lines:?}");
        assert!(lines[0].starts_with("ERROR"), "{lines:?}");
    }
}

// ----- port-scoped timers ----------------------------------------------------------------

/// A protocol that, from start_protocol, sends "tick N" to `target` every interval.
struct Beacon {
    target: SocketAddr,
    sent: u32,
}

impl DatagramProtocol for Beacon {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        t.call_every(ms(10), |me: &mut Beacon, t| {
            me.sent += 1;
            t.write(format!("tick {}", me.sent).as_bytes(), me.target)
                .expect("beacon write");
        })
        .expect("schedule the beacon");
    }

    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
}

/// A port timer started in start_protocol sends periodically; a plain client gets >= 3 ticks.
#[test]
fn port_timer_from_start_protocol_sends_every_interval() {
    let mut reactor = reactor();
    let c = client();
    let target = c.local_addr().expect("client addr");
    let port = util::listen_loopback(&mut reactor, Beacon { target, sent: 0 });
    for n in 1..=3 {
        let (data, from) = drive_recv(&mut reactor, &c);
        assert_eq!(String::from_utf8_lossy(&data), format!("tick {n}"));
        assert_eq!(from, port.local_addr());
    }
    let sent = reactor
        .with_port(&port, |me, _| me.sent)
        .expect("port open");
    assert!(sent >= 3);
}

struct Probe {
    results: Rc<RefCell<Vec<Result<DelayedCall, Error>>>>,
}

struct Other;

impl DatagramProtocol for Probe {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        let mut results = self.results.borrow_mut();
        results.push(t.call_later::<Other>(ms(10), |_, _| {}));
        results.push(t.call_every::<Other>(ms(10), |_, _| {}));
        results.push(t.call_later::<Probe>(ms(10), |_, _| {}));
    }

    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
}

/// A port timer whose closure takes another protocol type is refused with ProtocolMismatch.
#[test]
fn port_timer_for_another_protocol_type_is_protocol_mismatch() {
    let mut reactor = reactor();
    let results: Rc<RefCell<Vec<Result<DelayedCall, Error>>>> = Rc::default();
    let _port = util::listen_loopback(
        &mut reactor,
        Probe {
            results: results.clone(),
        },
    );
    let results = results.borrow();
    assert_eq!(results.len(), 3);
    for r in &results[..2] {
        match r {
            Err(Error::ProtocolMismatch { port, requested }) => {
                assert_eq!(*port, "Probe");
                assert_eq!(*requested, "Other");
            }
            other => panic!("expected ProtocolMismatch, got {other:?}"),
        }
    }
    assert!(results[2].is_ok(), "the right type: {:?}", results[2]);
    assert_eq!(
        reactor.timer_count(),
        1,
        "only the right-typed timer is scheduled"
    );
}

struct Tally {
    ticks: u32,
    once: Option<SocketAddr>,
}

impl DatagramProtocol for Tally {
    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
}

/// call_later_on and call_every_on run with the port's protocol state and transport.
#[test]
fn call_later_on_and_call_every_on_reach_the_protocol_and_transport() {
    let mut reactor = reactor();
    let c = client();
    let target = c.local_addr().expect("client addr");
    let port = util::listen_loopback(
        &mut reactor,
        Tally {
            ticks: 0,
            once: None,
        },
    );
    let later = reactor
        .call_later_on(&port, ms(5), move |me, t| {
            me.once = Some(t.local_addr());
            t.write(b"from call_later_on", target).expect("write");
        })
        .expect("call_later_on");
    let every = reactor
        .call_every_on(&port, ms(5), |me, _| me.ticks += 1)
        .expect("call_every_on");
    assert!(reactor.is_pending(later) && reactor.is_pending(every));
    let (data, from) = drive_recv(&mut reactor, &c);
    assert_eq!(data, b"from call_later_on");
    assert_eq!(from, port.local_addr());
    drive(&mut reactor, "three ticks of call_every_on", |r| {
        r.with_port(&port, |me, _| me.ticks >= 3)
            .expect("port open")
    });
    let once = reactor
        .with_port(&port, |me, _| me.once)
        .expect("port open");
    assert_eq!(once, Some(port.local_addr()));
    assert!(!reactor.is_pending(later), "the one-shot call has run");
    assert!(reactor.is_pending(every));
}

/// A port-scoped repeating timer stops for good once its port is stopped, from outside or inside.
#[test]
fn port_scoped_repeating_timer_stops_once_its_port_is_stopped() {
    let mut reactor = reactor();

    // Stopped from outside.
    let log: Rc<RefCell<Vec<&'static str>>> = Rc::default();
    let port = util::listen_loopback(&mut reactor, Quiet { log: log.clone() });
    let call = reactor
        .call_every_on(&port, ms(5), |me, _| me.log.borrow_mut().push("tick"))
        .expect("call_every_on");
    drive(&mut reactor, "two ticks", |_| log.borrow().len() >= 2);
    assert!(reactor.stop_listening(&port));
    drive(&mut reactor, "stop_protocol", |_| {
        log.borrow().contains(&"stop")
    });
    assert!(!reactor.is_pending(call), "pending after its port closed");
    drive_for(&mut reactor, ms(50));
    assert_eq!(
        log.borrow().last(),
        Some(&"stop"),
        "ticked after stop: {log:?}"
    );
    assert_eq!(log.borrow().iter().filter(|e| **e == "stop").count(), 1);
    assert_eq!(reactor.timer_count(), 0, "the dead port's timer is dropped");

    // Stopped from inside the timer, on its third tick.
    let log: Rc<RefCell<Vec<&'static str>>> = Rc::default();
    let port = util::listen_loopback(&mut reactor, Quiet { log: log.clone() });
    let call = reactor
        .call_every_on(&port, ms(5), |me, t| {
            me.log.borrow_mut().push("tick");
            if me.log.borrow().len() == 3 {
                t.stop_listening();
            }
        })
        .expect("call_every_on");
    drive(&mut reactor, "stop_protocol", |_| {
        log.borrow().contains(&"stop")
    });
    drive_for(&mut reactor, ms(50));
    assert_eq!(*log.borrow(), vec!["tick", "tick", "tick", "stop"]);
    assert!(!reactor.is_pending(call));
    assert!(!reactor.is_listening(&port));
    assert_eq!(reactor.timer_count(), 0);
}

/// Port-scoped timers far in the future stop being pending as soon as their port has closed.
#[test]
fn port_timers_stop_being_pending_once_their_port_has_closed() {
    let mut reactor = reactor();
    let log: Rc<RefCell<Vec<&'static str>>> = Rc::default();
    let port = util::listen_loopback(&mut reactor, Quiet { log: log.clone() });
    let hour = Duration::from_secs(3600);
    let once = reactor
        .call_later_on(&port, hour, |me, _| me.log.borrow_mut().push("once"))
        .expect("call_later_on");
    let every = reactor
        .call_every_on(&port, hour, |me, _| me.log.borrow_mut().push("every"))
        .expect("call_every_on");
    assert!(reactor.is_pending(once) && reactor.is_pending(every));
    assert!(reactor.stop_listening(&port));
    drive(&mut reactor, "the port to close", |r| r.port_count() == 0);
    assert_eq!(*log.borrow(), vec!["stop"]);
    assert!(!reactor.is_pending(once), "one-shot timer of a closed port");
    assert!(
        !reactor.is_pending(every),
        "repeating timer of a closed port"
    );
}

/// A closed port's timers are released with it: not counted, not cancellable, closures dropped.
#[test]
fn port_timers_are_released_when_their_port_closes() {
    let mut reactor = reactor();
    let log: Rc<RefCell<Vec<&'static str>>> = Rc::default();
    let port = util::listen_loopback(&mut reactor, Quiet { log: log.clone() });
    let captured = Rc::new(());
    let call = {
        let captured = captured.clone();
        reactor
            .call_later_on(&port, Duration::from_secs(3600), move |_, _| drop(captured))
            .expect("call_later_on")
    };
    assert_eq!(reactor.timer_count(), 1);
    assert_eq!(Rc::strong_count(&captured), 2);
    assert!(reactor.stop_listening(&port));
    drive(&mut reactor, "the port to close", |r| r.port_count() == 0);
    assert_eq!(
        reactor.timer_count(),
        0,
        "a closed port's timer is still counted"
    );
    assert_eq!(
        Rc::strong_count(&captured),
        1,
        "a closed port's timer closure is still alive"
    );
    assert!(
        !reactor.cancel(call),
        "cancel says pending where is_pending said not"
    );
}

// ----- the cross-thread handle -----------------------------------------------------------

fn assert_send_sync_clone<T: Send + Sync + Clone + 'static>() {}

/// ReactorHandle is Send + Sync + Clone, so it can go to other threads.
#[test]
fn reactor_handle_is_send_sync_and_clone() {
    assert_send_sync_clone::<ReactorHandle>();
    let reactor = reactor();
    let handle = reactor.handle();
    let clone = handle.clone();
    let alive = thread::spawn(move || clone.is_alive())
        .join()
        .expect("thread");
    assert!(alive && handle.is_alive());
}

/// call_from_thread runs its closure on the reactor's thread, not the caller's.
#[test]
fn call_from_thread_runs_the_closure_on_the_reactor_thread() {
    let mut reactor = reactor();
    let handle = reactor.handle();
    let (tx, rx) = mpsc::channel();
    let caller = thread::spawn(move || {
        handle
            .call_from_thread(move |_| {
                tx.send(thread::current().id()).expect("send id");
            })
            .expect("reactor alive");
        thread::current().id()
    });
    let caller_id = caller.join().expect("caller thread");
    let mut ran_on = None;
    drive(&mut reactor, "the cross-thread call", |_| {
        ran_on = rx.try_recv().ok();
        ran_on.is_some()
    });
    assert_eq!(ran_on, Some(thread::current().id()));
    assert_ne!(ran_on, Some(caller_id));
}

/// call_from_thread wakes a reactor blocked in iterate: the call runs in the turn that was
/// waiting when it was queued (or the next), not once the turn's hour-long wait is over.
#[test]
fn call_from_thread_wakes_a_reactor_blocked_in_iterate() {
    // The reactor runs on a thread of its own, each turn waiting up to an hour with
    // nothing else to wake it: without the wake-up it would sleep on, and the test fails
    // at the deadline below instead of hanging.
    let turn = Arc::new(AtomicU64::new(0));
    let ran_in = Arc::new(AtomicU64::new(0));
    let (handle_tx, handle_rx) = mpsc::channel::<ReactorHandle>();
    let (done_tx, done_rx) = mpsc::channel::<u64>();
    {
        let (turn, ran_in) = (turn.clone(), ran_in.clone());
        thread::spawn(move || {
            let mut reactor = reactor();
            handle_tx.send(reactor.handle()).expect("send the handle");
            while ran_in.load(Ordering::SeqCst) == 0 {
                turn.fetch_add(1, Ordering::SeqCst);
                reactor.iterate(Duration::from_secs(3600)).expect("iterate");
            }
            let _ = done_tx.send(turn.load(Ordering::SeqCst));
        });
    }
    let handle = handle_rx
        .recv_timeout(DEADLINE)
        .expect("the reactor thread");
    // Most likely blocked in its first poll by then; the assertions hold either way.
    thread::sleep(ms(100));
    {
        let (turn, ran_in) = (turn.clone(), ran_in.clone());
        handle
            .call_from_thread(move |_| ran_in.store(turn.load(Ordering::SeqCst), Ordering::SeqCst))
            .expect("reactor alive");
    }
    // The latest turn to begin once the call was queued: that turn polls after it was
    // queued, or is polling, and the waker ends that poll.
    let queued_in = turn.load(Ordering::SeqCst);
    let turns = done_rx
        .recv_timeout(DEADLINE)
        .expect("the reactor was not woken: the call did not run");
    let ran = ran_in.load(Ordering::SeqCst);
    assert!(
        ran >= 1 && ran <= queued_in + 1,
        "queued while turn {queued_in} was the latest to begin, ran in turn {ran}"
    );
    assert_eq!(turns, ran, "the reactor stopped turning once the call ran");
}

/// Many calls from several threads all run, and each thread's calls run in its order.
#[test]
fn calls_from_several_threads_all_run_in_order_per_thread() {
    const THREADS: usize = 4;
    const CALLS: usize = 500;
    let mut reactor = reactor();
    let seen: Arc<Mutex<Vec<(usize, usize)>>> = Arc::default();
    let callers: Vec<_> = (0..THREADS)
        .map(|t| {
            let handle = reactor.handle();
            let seen = seen.clone();
            thread::spawn(move || {
                for i in 0..CALLS {
                    let seen = seen.clone();
                    handle
                        .call_from_thread(move |_| seen.lock().expect("lock").push((t, i)))
                        .expect("reactor alive");
                }
            })
        })
        .collect();
    drive(&mut reactor, "every cross-thread call", |_| {
        seen.lock().expect("lock").len() == THREADS * CALLS
    });
    for caller in callers {
        caller.join().expect("caller thread");
    }
    drive_for(&mut reactor, ms(10));
    let seen = seen.lock().expect("lock");
    assert_eq!(seen.len(), THREADS * CALLS, "no call ran twice");
    for t in 0..THREADS {
        let mine: Vec<usize> = seen
            .iter()
            .filter(|(s, _)| *s == t)
            .map(|(_, i)| *i)
            .collect();
        assert_eq!(mine, (0..CALLS).collect::<Vec<_>>(), "thread {t}'s calls");
    }
}

/// handle.stop() from another thread makes a running reactor's run() return, ports stopped.
#[test]
fn handle_stop_from_another_thread_makes_run_return() {
    let mut reactor = reactor();
    let (recorder, events) = Recorder::new();
    let _port = util::listen_loopback(&mut reactor, recorder);
    let (running_tx, running_rx) = mpsc::channel::<()>();
    reactor.call_later(Duration::ZERO, move |_| {
        running_tx.send(()).expect("running");
    });
    let watchdog = Rc::new(Cell::new(false));
    {
        let watchdog = watchdog.clone();
        reactor.call_later(DEADLINE, move |r| {
            watchdog.set(true);
            r.stop();
        });
    }
    let handle = reactor.handle();
    let stopper = thread::spawn(move || {
        running_rx.recv_timeout(DEADLINE).expect("reactor running");
        handle.stop().expect("reactor alive");
    });
    reactor.run().expect("run");
    stopper.join().expect("stopper thread");
    assert!(!watchdog.get(), "run returned only on the watchdog");
    assert_eq!(events.borrow().last(), Some(&util::Event::Stop));
    assert_eq!(reactor.port_count(), 0);
}

/// Once the reactor is dropped, its handles say ReactorGone, from any thread.
#[test]
fn call_from_thread_after_the_reactor_is_dropped_is_reactor_gone() {
    let reactor = reactor();
    let handle = reactor.handle();
    drop(reactor);
    assert!(!handle.is_alive());
    assert!(matches!(
        handle.call_from_thread(|_| {}),
        Err(Error::ReactorGone)
    ));
    assert!(matches!(handle.stop(), Err(Error::ReactorGone)));
    let from_thread = thread::spawn(move || handle.call_from_thread(|_| {}))
        .join()
        .expect("thread");
    assert!(matches!(from_thread, Err(Error::ReactorGone)));
}

/// A panic in a call_from_thread closure is caught and logged; later calls still run.
#[test]
fn panicking_cross_thread_call_is_logged_and_later_calls_run() {
    init_logging();
    let mut reactor = reactor();
    let handle = reactor.handle();
    let ran = Arc::new(AtomicBool::new(false));
    {
        let ran = ran.clone();
        thread::spawn(move || {
            handle
                .call_from_thread(|_| panic!("timers-rs cross-thread boom 9c2e"))
                .expect("reactor alive");
            handle
                .call_from_thread(move |_| ran.store(true, Ordering::SeqCst))
                .expect("reactor alive");
        })
        .join()
        .expect("caller thread");
    }
    drive(&mut reactor, "the call after the panicking one", |_| {
        ran.load(Ordering::SeqCst)
    });
    let lines = util::logs_containing("timers-rs cross-thread boom 9c2e");
    assert_eq!(lines.len(), 1, "{lines:?}");
    assert!(lines[0].starts_with("ERROR"), "{lines:?}");
}

/// Schedules with `Self::call_later` and `Self::call_every`: closures whose protocol is
/// inferred as `Ticker`.
#[derive(Default)]
struct Ticker {
    ticks: u32,
    later: Option<SocketAddr>,
    scheduled: Vec<Result<DelayedCall, Error>>,
}

impl DatagramProtocol for Ticker {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        let later = Self::call_later(t, ms(5), |me, t| me.later = Some(t.local_addr()));
        let every = Self::call_every(t, ms(2), |me, _| me.ticks += 1);
        self.scheduled = vec![later, every];
    }

    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
}

/// `DatagramProtocol::call_later`/`call_every` schedule port timers that run with the
/// port's own protocol and transport, are cancelled with the port, and refuse (at run
/// time) only a transport of another protocol's port, reached through `with_port`.
#[test]
fn protocol_typed_port_timers_run_with_their_own_protocol() {
    let mut reactor = reactor();
    let port = util::listen_loopback(&mut reactor, Ticker::default());
    let scheduled = reactor
        .with_port(&port, |me, _| me.scheduled.iter().all(Result::is_ok))
        .expect("open");
    assert!(scheduled, "both timers scheduled");
    drive(&mut reactor, "the one-shot and three ticks", |r| {
        r.with_port(&port, |me, _| me.later.is_some() && me.ticks >= 3)
            .unwrap_or(false)
    });
    let later = reactor.with_port(&port, |me, _| me.later).expect("open");
    assert_eq!(later, Some(port.local_addr()));

    let other = util::listen_loopback(
        &mut reactor,
        Tally {
            ticks: 0,
            once: None,
        },
    );
    let refused = reactor
        .with_port(&other, |_, t| Ticker::call_later(t, ms(1), |_, _| {}))
        .expect("open");
    assert!(
        matches!(
            refused,
            Err(Error::ProtocolMismatch {
                port: "Tally",
                requested: "Ticker"
            })
        ),
        "{refused:?}"
    );

    assert_eq!(reactor.timer_count(), 1, "the repeating timer");
    assert!(reactor.stop_listening(&port));
    drive(&mut reactor, "the port closes", |r| !r.is_listening(&port));
    assert_eq!(reactor.timer_count(), 0, "cancelled with its port");
}
