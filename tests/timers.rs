//! Timers (issue item 8): `call_later`, `call_every`, cancel, reset, port-scoped timers,
//! panics in timers, and the cross-thread handle.

mod util;

use std::cell::{Cell, RefCell};
use std::net::SocketAddr;
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::thread;
use std::time::{Duration, Instant};

use twine::{DatagramProtocol, DelayedCall, Error, Reactor, ReactorHandle, UdpTransport};
use util::{DEADLINE, Recorder, client, drive, drive_for, drive_recv, init_logging};

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A generous upper bound on how late a timer may be on a loaded machine.
const SLACK: Duration = Duration::from_secs(2);

fn reactor() -> Reactor {
    Reactor::new().expect("new reactor")
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

/// A call_later fires no earlier than its delay after it was scheduled, and not much later.
#[test]
fn call_later_fires_no_earlier_than_its_delay() {
    let mut reactor = reactor();
    let fired: Rc<RefCell<Vec<(Duration, Duration)>>> = Rc::default();
    for delay in [ms(0), ms(1), ms(15), ms(40)] {
        let scheduled = Instant::now();
        let fired = fired.clone();
        reactor.call_later(delay, move |_| {
            fired.borrow_mut().push((delay, scheduled.elapsed()));
        });
    }
    drive(&mut reactor, "four timers", |_| fired.borrow().len() == 4);
    for &(delay, elapsed) in fired.borrow().iter() {
        assert!(
            elapsed >= delay,
            "{delay:?} timer fired early, after {elapsed:?}"
        );
        assert!(
            elapsed < delay + SLACK,
            "{delay:?} timer fired after {elapsed:?}"
        );
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

/// reset moves the deadline to the new delay after the reset, later or sooner than before.
#[test]
fn reset_moves_the_deadline_to_the_new_delay_from_now() {
    let mut reactor = reactor();
    let fired_at: Rc<Cell<Option<Instant>>> = Rc::default();
    let call = {
        let fired_at = fired_at.clone();
        reactor.call_later(ms(10), move |_| fired_at.set(Some(Instant::now())))
    };
    drive_for(&mut reactor, ms(3));
    let reset_at = Instant::now();
    assert!(reactor.reset(call, ms(80)), "reset of a pending call");
    assert!(reactor.is_pending(call));
    drive(&mut reactor, "the reset timer", |_| {
        fired_at.get().is_some()
    });
    let waited = fired_at.get().expect("fired") - reset_at;
    assert!(waited >= ms(80), "fired {waited:?} after a reset to 80 ms");
    assert!(
        waited < ms(80) + SLACK,
        "fired {waited:?} after a reset to 80 ms"
    );
    assert!(!reactor.reset(call, ms(1)), "a fired call cannot be reset");

    // Reset to sooner: a call due in an hour fires within the slack.
    let soon = Rc::new(Cell::new(false));
    let call = {
        let soon = soon.clone();
        reactor.call_later(Duration::from_secs(3600), move |_| soon.set(true))
    };
    let reset_at = Instant::now();
    assert!(reactor.reset(call, ms(5)));
    drive(&mut reactor, "the call reset to 5 ms", |_| soon.get());
    assert!(reset_at.elapsed() >= ms(5));
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

/// call_every fires repeatedly, the n-th time no earlier than n intervals in, and stops on cancel.
#[test]
fn call_every_repeats_on_its_interval_until_cancelled() {
    // Missed ticks are skipped, so a late tick may be followed by one closer than an
    // interval; the n-th deadline (start + n * interval) is the guarantee.
    let mut reactor = reactor();
    let interval = ms(20);
    let times: Rc<RefCell<Vec<Instant>>> = Rc::default();
    let start = Instant::now();
    let call = {
        let times = times.clone();
        reactor.call_every(interval, move |_| times.borrow_mut().push(Instant::now()))
    };
    drive(&mut reactor, "three ticks", |r| {
        assert!(r.is_pending(call), "a repeating call stays pending");
        times.borrow().len() >= 3
    });
    let ticks = times.borrow().clone();
    for (n, at) in ticks.iter().enumerate() {
        let since = *at - start;
        let earliest = interval * (n as u32 + 1);
        assert!(
            since >= earliest,
            "tick {n} after {since:?}, before {earliest:?}"
        );
    }
    assert!(ticks.windows(2).all(|w| w[0] < w[1]));
    assert!(ticks[2] - start < interval * 3 + SLACK);

    assert!(reactor.cancel(call));
    assert!(!reactor.is_pending(call));
    let seen = times.borrow().len();
    drive_for(&mut reactor, interval * 4);
    assert_eq!(times.borrow().len(), seen, "ticked after cancel");
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
        reactor.iterate(SLACK).expect("iterate");
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
            reactor.iterate(SLACK).expect("iterate");
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

/// call_from_thread wakes a reactor blocked in iterate(10 s) at once.
#[test]
fn call_from_thread_wakes_a_reactor_blocked_in_iterate() {
    let mut reactor = reactor();
    let handle = reactor.handle();
    let ran = Arc::new(AtomicBool::new(false));
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let caller = {
        let ran = ran.clone();
        thread::spawn(move || {
            go_rx.recv_timeout(DEADLINE).expect("go");
            // Give the reactor time to block in poll; it must be woken either way.
            thread::sleep(ms(100));
            handle
                .call_from_thread(move |_| ran.store(true, Ordering::SeqCst))
                .expect("reactor alive");
        })
    };
    let start = Instant::now();
    go_tx.send(()).expect("go");
    while !ran.load(Ordering::SeqCst) && start.elapsed() < Duration::from_secs(10) {
        reactor.iterate(Duration::from_secs(10)).expect("iterate");
    }
    let waited = start.elapsed();
    caller.join().expect("caller thread");
    assert!(ran.load(Ordering::SeqCst), "the call did not run");
    assert!(waited < Duration::from_secs(2), "woken after {waited:?}");
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
    reactor.set_handle_signals(false);
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
