//! `ReactorHandle::call_from_thread` under load: the bound on queued calls, the per-turn
//! budget, the waker, and `stop` through a handle.
//!
//! Nothing here asserts a wall-clock bound (the machine may be small and shared): the
//! assertions are on counts, order, turns and memory. Timeouts only keep a broken build
//! from hanging. The figures are printed so that they can be quoted
//! (`cargo test --test thread_calls -- --nocapture`).

mod util;

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread::{self, ThreadId};
use std::time::{Duration, Instant};

use twine::{Error, Reactor, ReactorHandle};
use util::procfs::rss_kib;
use util::{loopback, reactor};

const BUDGET: usize = ReactorHandle::CALLS_PER_TURN;
/// Only there so that a broken build fails instead of hanging.
const DEADLINE: Duration = Duration::from_secs(20);
/// A wait long enough that returning from it means being woken, not timing out.
const LONG: Duration = Duration::from_secs(30);

/// The tests of this file run one at a time: the flood test reads the process's
/// resident memory, which a test running beside it (a panic printing a backtrace loads
/// the debug info, say) would inflate.
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(PoisonError::into_inner)
}

/// A call_later that stops the reactor after [`DEADLINE`], so that `run` cannot hang; the
/// flag says whether it had to.
fn watchdog(reactor: &mut Reactor) -> Rc<Cell<bool>> {
    let fired = Rc::new(Cell::new(false));
    let flag = fired.clone();
    reactor.call_later(DEADLINE, move |r| {
        flag.set(true);
        r.stop();
    });
    fired
}

/// Records, when dropped, the thread it was dropped on.
struct DropWitness(Arc<Mutex<Option<ThreadId>>>);

impl Drop for DropWitness {
    fn drop(&mut self) {
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = Some(thread::current().id());
    }
}

/// Queues calls `from..to` that append their number to `seen`.
fn queue_numbered(handle: &ReactorHandle, seen: &Arc<Mutex<Vec<usize>>>, from: usize, to: usize) {
    for i in from..to {
        let seen = seen.clone();
        handle
            .call_from_thread(move |_| seen.lock().expect("seen").push(i))
            .expect("queue a call");
    }
}

// ----- the bound -------------------------------------------------------------------------

/// With the limit at 100 and the reactor not running, the 101st call is refused with
/// CallQueueFull and its closure is dropped on the caller's thread before the call
/// returns; stop() still goes through; once the reactor runs, the 100 run in order and
/// then it stops.
#[test]
fn the_call_past_the_limit_is_refused_and_the_queued_ones_run_in_order() {
    let _serial = serial();
    let mut reactor = reactor();
    reactor.set_thread_call_limit(100);
    let fired = watchdog(&mut reactor);
    let handle = reactor.handle();
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let refused_ran = Arc::new(AtomicBool::new(false));
    let dropped_on: Arc<Mutex<Option<ThreadId>>> = Arc::default();
    let caller = {
        let (handle, seen, refused_ran, dropped_on) = (
            handle.clone(),
            seen.clone(),
            refused_ran.clone(),
            dropped_on.clone(),
        );
        thread::spawn(move || {
            queue_numbered(&handle, &seen, 0, 100);
            assert_eq!(handle.queued_calls(), 100);
            let witness = DropWitness(dropped_on.clone());
            let refused = handle.call_from_thread(move |_| {
                let _witness = witness;
                refused_ran.store(true, Ordering::SeqCst);
            });
            assert!(
                matches!(refused, Err(Error::CallQueueFull { limit: 100 })),
                "the 101st call: {refused:?}"
            );
            assert_eq!(
                *dropped_on.lock().expect("dropped_on"),
                Some(thread::current().id()),
                "the refused closure is dropped on the caller's thread, before the call returns"
            );
            assert_eq!(
                handle.queued_calls(),
                100,
                "the refused call was not queued"
            );
            handle.stop().expect("stop is not refused by a full queue");
        })
    };
    caller.join().expect("caller thread");
    reactor.run().expect("run");
    assert!(!fired.get(), "run returned only on the watchdog");
    assert_eq!(*seen.lock().expect("seen"), (0..100).collect::<Vec<_>>());
    assert!(!refused_ran.load(Ordering::SeqCst), "the refused call ran");
    assert_eq!(handle.queued_calls(), 0);
    handle
        .call_from_thread(|_| {})
        .expect("the queue has room again once drained");
    println!("limit 100: 100 queued, the 101st refused, stop accepted on a full queue");
}

/// A limit of 0 refuses every call, and stop still goes through.
#[test]
fn a_limit_of_zero_refuses_every_call_but_not_stop() {
    let _serial = serial();
    let mut reactor = reactor();
    reactor.set_thread_call_limit(0);
    let handle = reactor.handle();
    assert!(matches!(
        handle.call_from_thread(|_| {}),
        Err(Error::CallQueueFull { limit: 0 })
    ));
    handle.stop().expect("stop");
    assert!(
        reactor.iterate(LONG).expect("iterate"),
        "the stop ended the turn"
    );
}

// ----- the per-turn budget ---------------------------------------------------------------

/// 2.5 budgets' worth of queued calls run over three turns (budget, budget, the rest),
/// in order; the turns with calls left over do not sleep (iterate(30 s) returns having
/// run the next share).
#[test]
fn a_turn_runs_at_most_the_budget_and_the_rest_on_the_next_turns() {
    let _serial = serial();
    let mut reactor = reactor();
    let handle = reactor.handle();
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let total = 2 * BUDGET + BUDGET / 2;
    queue_numbered(&handle, &seen, 0, total);
    let mut per_turn = Vec::new();
    let start = Instant::now();
    while seen.lock().expect("seen").len() < total && start.elapsed() < DEADLINE {
        let before = seen.lock().expect("seen").len();
        let turn_start = Instant::now();
        reactor.iterate(LONG).expect("iterate");
        assert!(
            turn_start.elapsed() < LONG,
            "a turn with calls queued slept until its timeout"
        );
        per_turn.push(seen.lock().expect("seen").len() - before);
    }
    println!("{total} queued calls ran per turn: {per_turn:?}");
    assert_eq!(per_turn, vec![BUDGET, BUDGET, BUDGET / 2]);
    assert_eq!(*seen.lock().expect("seen"), (0..total).collect::<Vec<_>>());
    assert_eq!(handle.queued_calls(), 0);
}

/// A call queued by a running call runs on a later turn, not in the same one.
#[test]
fn a_call_queued_by_a_call_runs_on_a_later_turn() {
    let _serial = serial();
    let mut reactor = reactor();
    let handle = reactor.handle();
    let inner_ran = Arc::new(AtomicBool::new(false));
    let outer_ran = Arc::new(AtomicBool::new(false));
    {
        let (inner_handle, inner_ran, outer_ran) =
            (handle.clone(), inner_ran.clone(), outer_ran.clone());
        handle
            .call_from_thread(move |_| {
                outer_ran.store(true, Ordering::SeqCst);
                inner_handle
                    .call_from_thread(move |_| inner_ran.store(true, Ordering::SeqCst))
                    .expect("queue from a call");
            })
            .expect("queue");
    }
    reactor.iterate(LONG).expect("first turn");
    assert!(outer_ran.load(Ordering::SeqCst));
    assert!(
        !inner_ran.load(Ordering::SeqCst),
        "ran in the turn it was queued in"
    );
    assert_eq!(handle.queued_calls(), 1);
    let start = Instant::now();
    reactor.iterate(LONG).expect("second turn");
    assert!(
        start.elapsed() < LONG,
        "the inner call did not wake the reactor"
    );
    assert!(inner_ran.load(Ordering::SeqCst));
}

/// A panicking call is caught; the calls after it run in the same turn.
#[test]
fn a_panicking_call_does_not_stop_the_others() {
    let _serial = serial();
    let mut reactor = reactor();
    let handle = reactor.handle();
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    queue_numbered(&handle, &seen, 0, 3);
    handle
        .call_from_thread(|_| panic!("thread-calls-rs boom"))
        .expect("queue");
    queue_numbered(&handle, &seen, 3, 6);
    reactor.iterate(LONG).expect("iterate");
    assert_eq!(*seen.lock().expect("seen"), (0..6).collect::<Vec<_>>());
}

/// Once the reactor is dropped, calls and stops are ReactorGone.
#[test]
fn a_dropped_reactor_is_reactor_gone() {
    let _serial = serial();
    let reactor = reactor();
    let handle = reactor.handle();
    drop(reactor);
    assert!(matches!(
        handle.call_from_thread(|_| {}),
        Err(Error::ReactorGone)
    ));
    assert!(matches!(handle.stop(), Err(Error::ReactorGone)));
}

// ----- a flood -----------------------------------------------------------------------------

/// The latest time at which the 10 ms timer's next run is surely due, given the instants
/// around its scheduling and the instant its last run started (`None`: not run yet).
/// Its deadlines are `base + k * interval` with `base` in `[before, after]`, and after a
/// run it is due again at the first of them past the time it ran.
fn surely_due_at(
    before: Instant,
    after: Instant,
    interval: Duration,
    last: Option<Instant>,
) -> Instant {
    let k = match last {
        None => 1,
        Some(ran) => {
            let behind = ran.saturating_duration_since(before).as_nanos();
            u32::try_from(behind / interval.as_nanos() + 1).expect("tick index")
        }
    };
    after + interval * k
}

/// 8 threads queue calls as fast as they can (backing off on CallQueueFull) beside an
/// echo port and a 10 ms timer, while the test turns the reactor with iterate. In every
/// turn at most the budget of calls runs; the timer fires in every turn that began after
/// it was due; the echo port answers every datagram within a few turns; the queue never
/// exceeds its limit and the resident memory stays bounded. Every accepted call runs
/// exactly once.
#[test]
fn a_flood_of_calls_leaves_timers_and_ports_their_turn() {
    let _serial = serial();
    const THREADS: usize = 8;
    const MIN_TURNS: usize = 3000;
    const MIN_TICKS: usize = 20;
    const MAX_TURNS: usize = 200_000;
    const ECHO_EVERY: usize = 5;
    const ECHO_WITHIN_TURNS: usize = 5;
    const RSS_GROWTH_KIB: u64 = 48 * 1024;
    let interval = Duration::from_millis(10);
    let limit = ReactorHandle::DEFAULT_CALL_LIMIT;

    let mut reactor = reactor();
    let echo = reactor
        .listen_udp_with(
            loopback(),
            twine::respond(|data: &[u8], _: SocketAddr| Some(data.to_vec())),
        )
        .expect("listen");
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    client.set_nonblocking(true).expect("nonblocking client");
    let ticks: Rc<RefCell<Vec<Instant>>> = Rc::default();
    let before = Instant::now();
    {
        let ticks = ticks.clone();
        reactor.call_every(interval, move |_| ticks.borrow_mut().push(Instant::now()));
    }
    let after = Instant::now();

    let observer = reactor.handle();
    let rss_start = rss_kib();
    let executed = Arc::new(AtomicUsize::new(0));
    let flooding = Arc::new(AtomicBool::new(true));
    let producers: Vec<_> = (0..THREADS)
        .map(|_| {
            let handle = reactor.handle();
            let (executed, flooding) = (executed.clone(), flooding.clone());
            thread::spawn(move || {
                let (mut accepted, mut refused) = (0usize, 0usize);
                while flooding.load(Ordering::Relaxed) {
                    let executed = executed.clone();
                    match handle.call_from_thread(move |_| {
                        executed.fetch_add(1, Ordering::Relaxed);
                    }) {
                        Ok(()) => accepted += 1,
                        Err(Error::CallQueueFull { limit: l }) => {
                            assert_eq!(l, limit);
                            refused += 1;
                            thread::yield_now();
                        }
                        Err(e) => panic!("call_from_thread: {e}"),
                    }
                }
                (accepted, refused)
            })
        })
        .collect();

    let flood_start = Instant::now();
    let mut turns = 0;
    let mut max_calls_in_a_turn = 0;
    let mut turns_at_budget = 0;
    let mut max_queued = 0;
    let mut rss_max = rss_start;
    let mut due_turns = 0;
    let mut echo_sent = 0u32;
    let mut echo_answered = 0u32;
    let mut outstanding: Option<(u32, usize)> = None;
    let mut max_echo_turns = 0;
    let mut buf = [0u8; 64];
    while turns < MAX_TURNS && (turns < MIN_TURNS || ticks.borrow().len() < MIN_TICKS) {
        if outstanding.is_none() && turns % ECHO_EVERY == 0 {
            client
                .send_to(&echo_sent.to_be_bytes(), echo.local_addr())
                .expect("send to the echo port");
            outstanding = Some((echo_sent, turns));
            echo_sent += 1;
        }
        let turn_start = Instant::now();
        let due =
            turn_start >= surely_due_at(before, after, interval, ticks.borrow().last().copied());
        let ticks_before = ticks.borrow().len();
        let calls_before = executed.load(Ordering::Relaxed);
        reactor.iterate(Duration::from_millis(50)).expect("iterate");
        turns += 1;
        let calls = executed.load(Ordering::Relaxed) - calls_before;
        assert!(calls <= BUDGET, "turn {turns} ran {calls} calls");
        max_calls_in_a_turn = max_calls_in_a_turn.max(calls);
        turns_at_budget += usize::from(calls == BUDGET);
        if due {
            due_turns += 1;
            assert!(
                ticks.borrow().len() > ticks_before,
                "turn {turns} began after the timer was due and did not fire it"
            );
        }
        let queued = observer.queued_calls();
        assert!(queued <= limit, "{queued} calls queued, limit {limit}");
        max_queued = max_queued.max(queued);
        if let Some((seq, sent_turn)) = outstanding {
            match client.recv_from(&mut buf) {
                Ok((n, _)) => {
                    assert_eq!(&buf[..n], seq.to_be_bytes(), "echo of datagram {seq}");
                    echo_answered += 1;
                    max_echo_turns = max_echo_turns.max(turns - sent_turn);
                    outstanding = None;
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    assert!(
                        turns - sent_turn < ECHO_WITHIN_TURNS,
                        "datagram {seq} unanswered after {ECHO_WITHIN_TURNS} turns"
                    );
                }
                Err(e) => panic!("recv from the echo port: {e}"),
            }
        }
        if turns % 64 == 0 {
            rss_max = rss_max.max(rss_kib());
        }
    }
    let flood_time = flood_start.elapsed();
    flooding.store(false, Ordering::Relaxed);
    let (mut accepted, mut refused) = (0, 0);
    for producer in producers {
        let (a, r) = producer.join().expect("producer thread");
        accepted += a;
        refused += r;
    }
    rss_max = rss_max.max(rss_kib());
    let ran_during_flood = executed.load(Ordering::Relaxed);
    let drained = reactor
        .run_until(DEADLINE, |_| executed.load(Ordering::Relaxed) >= accepted)
        .expect("drain");
    let fired = ticks.borrow().clone();
    let ticks = fired.len();
    let first_tick = fired.first().map(|t| t.duration_since(after));
    let max_gap = fired
        .windows(2)
        .map(|w| w[1].duration_since(w[0]))
        .max()
        .unwrap_or_default();
    println!(
        "flood: {THREADS} threads, {turns} turns in {flood_time:?}; calls accepted {accepted}, \
         refused (CallQueueFull) {refused}, run during the flood {ran_during_flood}; \
         most calls in a turn {max_calls_in_a_turn} (budget {BUDGET}, reached in \
         {turns_at_budget} turns); most queued {max_queued} (limit {limit}); timer ticks \
         {ticks} (first after {first_tick:?}, longest gap {max_gap:?}), fired in every one \
         of the {due_turns} turns that began after it was surely due; echo \
         {echo_answered}/{echo_sent} answered, within {max_echo_turns} turn(s); RSS \
         {rss_start} KiB -> at most {rss_max} KiB"
    );
    assert!(drained, "accepted calls never ran");
    assert_eq!(
        executed.load(Ordering::Relaxed),
        accepted,
        "every accepted call ran exactly once"
    );
    assert!(ticks >= MIN_TICKS, "the timer fired {ticks} times");
    assert!(echo_answered > 0, "the echo port never answered");
    assert!(
        rss_max.saturating_sub(rss_start) < RSS_GROWTH_KIB,
        "RSS grew from {rss_start} KiB to {rss_max} KiB"
    );
}

// ----- the waker ---------------------------------------------------------------------------

/// One call from another thread wakes a reactor blocked in iterate(30 s).
#[test]
fn one_call_wakes_a_reactor_blocked_in_iterate() {
    let _serial = serial();
    let mut reactor = reactor();
    let handle = reactor.handle();
    let ran = Arc::new(AtomicBool::new(false));
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let caller = {
        let ran = ran.clone();
        thread::spawn(move || {
            go_rx.recv_timeout(DEADLINE).expect("go");
            // Most likely the reactor is blocked in its poll by now; woken it must be
            // either way.
            thread::sleep(Duration::from_millis(100));
            handle
                .call_from_thread(move |_| ran.store(true, Ordering::SeqCst))
                .expect("reactor alive");
        })
    };
    go_tx.send(()).expect("go");
    let start = Instant::now();
    let mut iterations = 0;
    while !ran.load(Ordering::SeqCst) && start.elapsed() < LONG {
        reactor.iterate(LONG).expect("iterate");
        iterations += 1;
    }
    let waited = start.elapsed();
    caller.join().expect("caller thread");
    println!("woken by one call after {waited:?}, {iterations} iterate(30 s) call(s)");
    assert!(ran.load(Ordering::SeqCst), "the call did not run");
    assert!(waited < LONG, "iterate slept until its timeout");
}

/// Bursts of calls of sizes around the budget, each waited for before the next, while
/// the reactor turns with iterate(30 s): a missed wake-up would leave a burst stranded
/// for a whole iterate. Every burst runs, in order, and no iterate times out.
#[test]
fn no_wake_up_is_missed_across_bursts_around_the_budget() {
    let _serial = serial();
    const ROUNDS: usize = 120;
    let sizes = [1, 2, BUDGET - 1, BUDGET, BUDGET + 1, 2 * BUDGET + 1, 3];
    let mut reactor = reactor();
    let handle = reactor.handle();
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let total: usize = (0..ROUNDS).map(|r| sizes[r % sizes.len()]).sum();
    let producer = {
        let seen = seen.clone();
        thread::spawn(move || {
            let mut next = 0;
            for round in 0..ROUNDS {
                let end = next + sizes[round % sizes.len()];
                queue_numbered(&handle, &seen, next, end);
                next = end;
                let start = Instant::now();
                while seen.lock().expect("seen").len() < end && start.elapsed() < DEADLINE {
                    thread::yield_now();
                }
            }
        })
    };
    let start = Instant::now();
    let mut turns = 0;
    while seen.lock().expect("seen").len() < total && start.elapsed() < DEADLINE + LONG {
        let turn_start = Instant::now();
        reactor.iterate(LONG).expect("iterate");
        turns += 1;
        assert!(
            turn_start.elapsed() < LONG,
            "iterate slept its 30 s with calls queued: a missed wake-up"
        );
    }
    producer.join().expect("producer");
    println!("{ROUNDS} bursts, {total} calls, {turns} turns");
    assert_eq!(*seen.lock().expect("seen"), (0..total).collect::<Vec<_>>());
}

// ----- stop through a handle ---------------------------------------------------------------

/// handle.stop() between runs ends the next run at once (its first turn closes the
/// ports); the stop is then spent: the run after it goes on until stopped again.
#[test]
fn a_stop_asked_between_runs_ends_the_next_run_at_once() {
    let _serial = serial();
    let mut reactor = reactor();
    let handle = reactor.handle();
    let port = reactor
        .listen_udp_with(
            loopback(),
            twine::respond(|_: &[u8], _: SocketAddr| None::<Vec<u8>>),
        )
        .expect("listen");
    let fired = watchdog(&mut reactor);
    handle.stop().expect("stop");
    assert!(
        reactor.iterate(LONG).expect("iterate"),
        "the first turn stopped"
    );
    assert!(!reactor.is_listening(&port), "the stop closed the port");

    handle.stop().expect("stop between runs");
    reactor.run().expect("run");
    assert!(!fired.get(), "run returned only on the watchdog");

    // Spent: this run goes on until the timer stops it, many turns later.
    let ticks = Rc::new(Cell::new(0usize));
    {
        let ticks = ticks.clone();
        reactor.call_every(Duration::from_millis(1), move |r| {
            ticks.set(ticks.get() + 1);
            if ticks.get() == 5 {
                r.stop();
            }
        });
    }
    reactor.run().expect("run");
    assert!(!fired.get(), "run returned only on the watchdog");
    assert_eq!(ticks.get(), 5, "the earlier stop ended a later run");
}

/// Calls queued before a stop run before the reactor stops, all of them, past the
/// per-turn budget, in order, in the turn that sees the stop.
#[test]
fn calls_queued_before_a_stop_run_before_it() {
    let _serial = serial();
    let mut reactor = reactor();
    let handle = reactor.handle();
    let seen: Arc<Mutex<Vec<usize>>> = Arc::default();
    let total = 3 * BUDGET;
    let saw_stopping = Arc::new(AtomicBool::new(false));
    {
        let (handle, seen, saw_stopping) = (handle.clone(), seen.clone(), saw_stopping.clone());
        thread::spawn(move || {
            queue_numbered(&handle, &seen, 0, total);
            handle
                .call_from_thread(move |r| saw_stopping.store(r.is_stopping(), Ordering::SeqCst))
                .expect("queue");
            handle.stop().expect("stop");
        })
        .join()
        .expect("caller thread");
    }
    assert!(reactor.iterate(LONG).expect("iterate"), "the turn stopped");
    assert_eq!(
        seen.lock().expect("seen").len(),
        total,
        "every call queued before the stop ran in the turn that stopped"
    );
    assert_eq!(*seen.lock().expect("seen"), (0..total).collect::<Vec<_>>());
    assert!(
        !saw_stopping.load(Ordering::SeqCst),
        "the calls ran before the stop was applied"
    );
    println!("{total} calls queued before a stop: all ran in the stopping turn");
}

/// From another thread, while the reactor runs: call_from_thread(f) then stop() runs f
/// before run returns.
#[test]
fn a_call_then_a_stop_from_another_thread_runs_the_call_first() {
    let _serial = serial();
    let mut reactor = reactor();
    let fired = watchdog(&mut reactor);
    let handle = reactor.handle();
    let ran = Arc::new(AtomicBool::new(false));
    let (running_tx, running_rx) = mpsc::channel::<()>();
    reactor.call_later(Duration::ZERO, move |_| {
        running_tx.send(()).expect("running");
    });
    let caller = {
        let ran = ran.clone();
        thread::spawn(move || {
            running_rx.recv_timeout(DEADLINE).expect("reactor running");
            handle
                .call_from_thread(move |_| ran.store(true, Ordering::SeqCst))
                .expect("queue");
            handle.stop().expect("stop");
        })
    };
    reactor.run().expect("run");
    caller.join().expect("caller thread");
    assert!(!fired.get(), "run returned only on the watchdog");
    assert!(
        ran.load(Ordering::SeqCst),
        "the call before the stop did not run"
    );
}
