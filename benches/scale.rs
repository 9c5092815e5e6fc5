//! Scale: what a datagram costs with 10,000 open ports against one, and what a timer costs
//! with up to 1,000,000 of them scheduled.
//!
//! `cargo bench --bench scale` prints three tables (about 25 s):
//!
//! 1. **Ports.** Echo traffic (64-byte datagrams, windows of 32) at one port of a reactor
//!    with 1 port and of one with 10,000 (all echo ports on 127.0.0.1), then spread over 16
//!    ports of a reactor with 16 and of the one with 10,000. The client runs in the same
//!    thread, between the reactor's turns, and uses the crate's `sendmmsg`/`recvmmsg`
//!    batches (`twine::bench_support`) so that most of the time measured is the reactor's.
//!    Rounds of the two reactors alternate; each figure is the median of the rounds, in ns
//!    per echoed datagram: the whole round trip (the client's share included, the same on
//!    both sides) and the reactor's turns alone. Target: 10,000 ports within 1.1x of one.
//! 2. **Timers.** For n = 1e3 .. 1e6: n `call_later`s with random-ish delays under 10 ms,
//!    half of them cancelled in a random-ish order, then the other half fired in one turn
//!    once all are due. ns per schedule, cancel and fire (median of rounds), and each
//!    divided by log2(n): flat or falling means no worse than O(log n). A bare `std`
//!    `BinaryHeap` of the same items is timed alongside, to tell the queue's own growth
//!    from the memory hierarchy's.
//! 3. **Ports over their read budget.** n ports (1,000 .. 8,000) with 4 datagrams waiting
//!    each, read with a budget of 1 datagram a turn (so that every port is left over from
//!    turn to turn) and with the default budget: ns per datagram until all are delivered.
//!    With the default budget it should not depend on n; with a budget of 1 it grows with
//!    n, because the list of left-over ports is searched linearly on every insertion.
//!
//! Opening 10,000 ports needs 10,000 file descriptors. This bench cannot raise the limit
//! itself (no `unsafe` outside `src/sys`); if the soft limit (`ulimit -n`) is too low it
//! says so and opens as many as the limit allows. Raise it with `ulimit -n 20000` first.

use std::cell::Cell;
use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::hint::black_box;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, Instant};

use twine::bench_support::{RecvBatch, SendBatch};
use twine::{ListenOptions, Reactor, UdpTransport};

/// How big a run is: `cargo bench` runs the full plan; `cargo test --benches` (no
/// `--bench` argument) a small one, only to see that it works.
struct Plan {
    /// Ports of the big reactor.
    ports: usize,
    /// Datagrams per round, and rounds per reactor.
    round: usize,
    rounds: usize,
    /// (n, rounds) for the timers.
    timers: &'static [(usize, usize)],
    /// n for the ports over their read budget.
    over_budget: &'static [usize],
}

const FULL: Plan = Plan {
    ports: 10_000,
    round: 32 * 2_000,
    rounds: 9,
    timers: &[(1_000, 21), (10_000, 9), (100_000, 5), (1_000_000, 3)],
    over_budget: &[1_000, 2_000, 4_000, 8_000],
};

const SMOKE: Plan = Plan {
    ports: 100,
    round: 32 * 10,
    rounds: 1,
    timers: &[(1_000, 1), (10_000, 1)],
    over_budget: &[100, 200],
};

/// Descriptors kept free for the rest: the small reactors, the client, epoll, stdio.
const FD_RESERVE: usize = 64;
const PAYLOAD: usize = 64;
const WINDOW: usize = 32;
/// How many ports the spread traffic goes to.
const SPREAD: usize = 16;
/// The longest one window of echoes may take.
const WINDOW_DEADLINE: Duration = Duration::from_secs(5);

/// The echo protocol of every port.
fn echo(t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
    let _ = t.write(data, from);
}

fn main() {
    // A filter or `--list` from the harness means nothing here.
    if std::env::args().any(|a| a == "--list") {
        return;
    }
    // `--timer-ops N`: one run of N timers for an instruction count under callgrind
    // (`benches/timer_ops.sh`), where wall time and caches do not matter.
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--timer-ops") {
        let n = args
            .get(i + 1)
            .and_then(|v| v.parse().ok())
            .expect("--timer-ops N");
        let mut reactor = Reactor::new().expect("reactor");
        timer_ops(&mut reactor, &delays(n, 7));
        return;
    }
    let plan = if std::env::args().any(|a| a == "--bench") {
        FULL
    } else {
        println!("smoke run (no --bench): small sizes, numbers not meaningful");
        SMOKE
    };
    let started = Instant::now();
    ports(&plan);
    timers(&plan);
    over_budget(&plan);
    println!(
        "\nscale bench done in {:.1} s",
        started.elapsed().as_secs_f64()
    );
}

// ----- ports ----------------------------------------------------------------------------

/// The soft limit on open files, from `/proc/self/limits` (Linux); `None` if unknown.
fn open_files_limit() -> Option<usize> {
    let limits = std::fs::read_to_string("/proc/self/limits").ok()?;
    let line = limits.lines().find(|l| l.starts_with("Max open files"))?;
    let soft = line.split_whitespace().nth(3)?;
    if soft == "unlimited" {
        return Some(usize::MAX);
    }
    soft.parse().ok()
}

/// A reactor with up to `n` echo ports on 127.0.0.1; stops early, saying why, if the
/// kernel refuses one. Returns the reactor and the ports' addresses.
fn echo_ports(n: usize) -> (Reactor, Vec<SocketAddr>) {
    let mut reactor = Reactor::new().expect("reactor");
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        match reactor.listen_udp_with(
            ListenOptions::new(0).interface("127.0.0.1"),
            twine::from_fn(echo),
        ) {
            Ok(port) => addrs.push(port.local_addr()),
            Err(e) => {
                println!(
                    "note: port {} of {n} refused ({e}); going on with fewer",
                    addrs.len() + 1
                );
                break;
            }
        }
    }
    (reactor, addrs)
}

/// A client and its batches.
struct Client {
    socket: UdpSocket,
    out: SendBatch,
    back: RecvBatch,
}

impl Client {
    fn new() -> Client {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("client bind");
        socket.set_nonblocking(true).expect("client non-blocking");
        let mut back = RecvBatch::default();
        back.reserve(WINDOW, 2 * PAYLOAD);
        Client {
            socket,
            out: SendBatch::with_capacity(WINDOW, WINDOW * PAYLOAD),
            back,
        }
    }

    /// Echoes `n` datagrams through `reactor`, `WINDOW` at a time, datagram `k` to
    /// `targets[k % len]`; returns the time taken in all and the part of it spent in the
    /// reactor's turns.
    fn echo(&mut self, reactor: &mut Reactor, targets: &[SocketAddr], n: usize) -> Times {
        let payload = [0x5a; PAYLOAD];
        let started = Instant::now();
        let mut turns = Duration::ZERO;
        let mut k = 0;
        while k < n {
            let window = (n - k).min(WINDOW);
            self.out.clear();
            for i in k..k + window {
                self.out.push(&payload, targets[i % targets.len()]);
            }
            let mut sent = 0;
            while sent < window {
                sent += self
                    .out
                    .send(&self.socket, sent, false)
                    .expect("client send");
            }
            let deadline = Instant::now() + WINDOW_DEADLINE;
            let mut got = 0;
            while got < window {
                assert!(
                    Instant::now() < deadline,
                    "only {got} of {window} echoes within {WINDOW_DEADLINE:?}"
                );
                let turn = Instant::now();
                reactor.iterate(Duration::from_millis(10)).expect("turn");
                turns += turn.elapsed();
                loop {
                    match self.back.recv(&self.socket, WINDOW, 2 * PAYLOAD) {
                        Ok(m) => got += m,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("client recv: {e}"),
                    }
                }
            }
            k += window;
        }
        Times {
            total: started.elapsed(),
            turns,
        }
    }
}

/// How long an echo run took: in all, and in the reactor's turns.
struct Times {
    total: Duration,
    turns: Duration,
}

fn median(mut xs: Vec<f64>) -> f64 {
    xs.sort_by(f64::total_cmp);
    xs[xs.len() / 2]
}

/// `count` addresses spread evenly over `addrs`.
fn spread(addrs: &[SocketAddr], count: usize) -> Vec<SocketAddr> {
    let count = count.min(addrs.len());
    (0..count).map(|i| addrs[i * addrs.len() / count]).collect()
}

/// Medians over the rounds, in ns per echoed datagram: the whole round trip, and the
/// reactor's turns alone.
#[derive(Clone, Copy)]
struct PerDatagram {
    total: f64,
    turns: f64,
}

impl PerDatagram {
    fn of(runs: &[Times], round: usize) -> PerDatagram {
        let ns = |d: Duration| d.as_nanos() as f64 / round as f64;
        PerDatagram {
            total: median(runs.iter().map(|t| ns(t.total)).collect()),
            turns: median(runs.iter().map(|t| ns(t.turns)).collect()),
        }
    }
}

/// Echo traffic to `small_targets` through `small` and to `big_targets` through `big`,
/// rounds alternating.
fn compare(
    plan: &Plan,
    client: &mut Client,
    (small, small_targets): (&mut Reactor, &[SocketAddr]),
    (big, big_targets): (&mut Reactor, &[SocketAddr]),
) -> (PerDatagram, PerDatagram) {
    // Warm-up: batches allocated, caches and branch predictors filled.
    let round = plan.round;
    client.echo(small, small_targets, round / 4);
    client.echo(big, big_targets, round / 4);
    let (mut a, mut b) = (Vec::new(), Vec::new());
    for i in 0..plan.rounds {
        // Alternate which goes first, so neither always follows the other.
        if i % 2 == 0 {
            a.push(client.echo(small, small_targets, round));
            b.push(client.echo(big, big_targets, round));
        } else {
            b.push(client.echo(big, big_targets, round));
            a.push(client.echo(small, small_targets, round));
        }
    }
    (PerDatagram::of(&a, round), PerDatagram::of(&b, round))
}

fn ports(plan: &Plan) {
    let ports = plan.ports;
    let limit = open_files_limit();
    let allowed = limit.map_or(ports, |l| l.saturating_sub(FD_RESERVE).min(ports));
    match limit {
        Some(l) if allowed < ports => println!(
            "note: the open-files limit is {l} (ulimit -n): {allowed} ports instead of {ports}; \
             raise it with `ulimit -n {}` for the full run",
            ports + FD_RESERVE
        ),
        Some(l) => println!("open-files limit {l}: enough for {ports} ports"),
        None => println!("open-files limit unknown; trying {ports} ports"),
    }

    let opened = Instant::now();
    let (mut big, big_addrs) = echo_ports(allowed);
    let open_time = opened.elapsed();
    let n = big_addrs.len();
    println!(
        "opened {n} echo ports in {:.0} ms ({:.1} us per listen_udp_with)",
        open_time.as_secs_f64() * 1e3,
        open_time.as_secs_f64() * 1e6 / n as f64
    );
    let (mut one, one_addrs) = echo_ports(1);
    let (mut sixteen, sixteen_addrs) = echo_ports(SPREAD);
    let mut client = Client::new();

    let to_one = compare(
        plan,
        &mut client,
        (&mut one, &one_addrs),
        (&mut big, &[big_addrs[n / 2]]),
    );
    let big_spread = spread(&big_addrs, SPREAD);
    let over_sixteen = compare(
        plan,
        &mut client,
        (&mut sixteen, &sixteen_addrs),
        (&mut big, &big_spread),
    );

    println!(
        "\nns per echoed datagram ({PAYLOAD} B, windows of {WINDOW}, median of {} rounds \
         of {}); round trip = client send + reactor turns + client receive",
        plan.rounds, plan.round
    );
    println!(
        "{:<26} {:>11} {:>11} {:>7}   {:>11} {:>11} {:>7}",
        "traffic (few = ports open)",
        "trip, few",
        format!("trip, {n}"),
        "ratio",
        "turns, few",
        format!("turns, {n}"),
        "ratio"
    );
    for (what, (few, many)) in [
        ("to 1 port (few = 1)", to_one),
        ("over 16 ports (few = 16)", over_sixteen),
    ] {
        println!(
            "{what:<26} {:>11.0} {:>11.0} {:>6.3}x   {:>11.0} {:>11.0} {:>6.3}x",
            few.total,
            many.total,
            many.total / few.total,
            few.turns,
            many.turns,
            many.turns / few.turns
        );
    }
    let (few, many) = to_one;
    let worst = (many.total / few.total).max(many.turns / few.turns);
    println!(
        "{n} ports vs 1: worst ratio {worst:.3}x ({} the 1.1x target)",
        if worst <= 1.1 { "within" } else { "OUTSIDE" }
    );
}

// ----- timers ---------------------------------------------------------------------------

/// Delays under this, so that every timer is due soon after scheduling ends.
const MAX_DELAY_NS: u64 = 10_000_000;
/// Odd and not a multiple of 5: coprime to every n = 10^k, so `i * STRIDE % n` visits each
/// index once.
const STRIDE: usize = 7_654_321;
const FIRE_DEADLINE: Duration = Duration::from_secs(30);

/// A xorshift generator: random-ish delays without a dependency.
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// `n` random-ish delays under `MAX_DELAY_NS`.
fn delays(n: usize, seed: u64) -> Vec<Duration> {
    let mut rng = XorShift(seed);
    (0..n)
        .map(|_| Duration::from_nanos(rng.next() % MAX_DELAY_NS))
        .collect()
}

/// ns per schedule, per cancel and per fire with `n` timers; then, for scale, ns per push
/// and per pop of a bare `std` binary heap of the same (deadline, sequence, key) items.
fn timer_round(n: usize, seed: u64) -> [f64; 5] {
    let delays = delays(n, seed);
    let cancel_order: Vec<usize> = (0..n / 2).map(|i| i * STRIDE % n).collect();
    let mut calls = Vec::with_capacity(n);
    let mut reactor = Reactor::new().expect("reactor");

    let t = Instant::now();
    for (i, delay) in delays.iter().enumerate() {
        calls.push(reactor.call_later(*delay, move |_| {
            black_box(i);
        }));
    }
    let schedule = t.elapsed();
    let all_due = Instant::now() + Duration::from_nanos(MAX_DELAY_NS);

    let t = Instant::now();
    let mut cancelled = 0;
    for &i in &cancel_order {
        cancelled += usize::from(reactor.cancel(calls[i]));
    }
    let cancel = t.elapsed();
    assert_eq!(cancelled, n / 2, "every cancel hits a pending call");
    let left = n - cancelled;
    assert_eq!(reactor.timer_count(), left);

    // Spin rather than sleep: after a sleep the caches are cold and, for small n, firing
    // would measure that (about 3x at n = 1e3 on a VM) rather than the queue.
    while Instant::now() < all_due {
        std::hint::spin_loop();
    }
    let t = Instant::now();
    // Every timer is due and was scheduled before this turn: one turn fires them all.
    let fired = reactor
        .run_until(FIRE_DEADLINE, |r| r.timer_count() == 0)
        .expect("turns");
    let fire = t.elapsed();
    assert!(fired, "{} of {left} timers unfired", reactor.timer_count());
    drop(reactor);

    let base = Instant::now();
    let t = Instant::now();
    let mut heap = BinaryHeap::new();
    for (i, delay) in delays.iter().enumerate() {
        heap.push(Reverse((base + *delay, i as u64, i)));
    }
    let push = t.elapsed();
    let t = Instant::now();
    while let Some(item) = heap.pop() {
        black_box(item);
    }
    let pop = t.elapsed();

    let per = |d: Duration, count: usize| d.as_nanos() as f64 / count as f64;
    [
        per(schedule, n),
        per(cancel, n / 2),
        per(fire, left),
        per(push, n),
        per(pop, n),
    ]
}

/// Schedules a timer per delay, cancels every other one, fires the rest: the queue's work
/// alone, for callgrind (`--toggle-collect=*timer_ops*`).
#[inline(never)]
fn timer_ops(reactor: &mut Reactor, delays: &[Duration]) {
    let n = delays.len();
    let calls: Vec<_> = delays
        .iter()
        .map(|d| reactor.call_later(*d, |_| {}))
        .collect();
    for i in (0..n / 2).map(|i| i * STRIDE % n) {
        reactor.cancel(calls[i]);
    }
    std::thread::sleep(Duration::from_nanos(MAX_DELAY_NS));
    let fired = reactor
        .run_until(FIRE_DEADLINE, |r| r.timer_count() == 0)
        .expect("turns");
    assert!(fired, "timers left unfired");
}

fn timers(plan: &Plan) {
    println!(
        "\ntimers: n call_later (delays < {} ms), n/2 cancelled, n/2 fired in one turn; \
         ns per operation (median of rounds), and that / log2(n);\n\
         for scale, a bare std BinaryHeap of the same n (deadline, seq, key) items: push, pop",
        MAX_DELAY_NS / 1_000_000
    );
    println!(
        "{:>9} {:>6} {:>9} {:>7} {:>9} {:>7} {:>9} {:>7} {:>9} {:>9}",
        "n",
        "rounds",
        "schedule",
        "/log2n",
        "cancel",
        "/log2n",
        "fire",
        "/log2n",
        "heap push",
        "heap pop"
    );
    let mut first: Option<[f64; 5]> = None;
    let mut last = [0.0; 5];
    for &(n, rounds) in plan.timers {
        let results: Vec<[f64; 5]> = (0..rounds)
            .map(|r| timer_round(n, 0x9e37_79b9_7f4a_7c15 ^ (r as u64 + 1)))
            .collect();
        let ops: [f64; 5] = std::array::from_fn(|k| median(results.iter().map(|r| r[k]).collect()));
        let log = (n as f64).log2();
        println!(
            "{n:>9} {rounds:>6} {:>9.1} {:>7.2} {:>9.1} {:>7.2} {:>9.1} {:>7.2} {:>9.1} {:>9.1}",
            ops[0],
            ops[0] / log,
            ops[1],
            ops[1] / log,
            ops[2],
            ops[2] / log,
            ops[3],
            ops[4]
        );
        first.get_or_insert(ops);
        last = ops;
    }
    if let (Some(first), Some(&(n0, _)), Some(&(n1, _))) =
        (first, plan.timers.first(), plan.timers.last())
    {
        let growth = |k: usize| last[k] / first[k];
        println!(
            "from n = {n0} to {n1} (log2 n grew {:.1}x): schedule {:.2}x, cancel {:.2}x, \
             fire {:.2}x; bare heap push {:.2}x, pop {:.2}x",
            (n1 as f64).log2() / (n0 as f64).log2(),
            growth(0),
            growth(1),
            growth(2),
            growth(3),
            growth(4)
        );
    }
}

// ----- ports over their read budget --------------------------------------------------------

/// Datagrams waiting on each port.
const WAITING: usize = 4;

/// ns per datagram to deliver `WAITING` datagrams on each of `n` ports read with `budget`.
fn over_budget_round(client: &UdpSocket, n: usize, budget: usize) -> f64 {
    let mut reactor = Reactor::new().expect("reactor");
    let delivered = Rc::new(Cell::new(0));
    let mut addrs = Vec::with_capacity(n);
    for _ in 0..n {
        let count = Rc::clone(&delivered);
        let options = ListenOptions::new(0)
            .interface("127.0.0.1")
            .read_budget(budget, 1 << 20);
        let protocol = twine::from_fn(move |_, _, _| count.set(count.get() + 1));
        addrs.push(
            reactor
                .listen_udp_with(options, protocol)
                .expect("listen")
                .local_addr(),
        );
    }
    for addr in &addrs {
        for _ in 0..WAITING {
            client.send_to(&[0x5a; PAYLOAD], addr).expect("client send");
        }
    }
    let want = n * WAITING;
    let t = Instant::now();
    let all = reactor
        .run_until(FIRE_DEADLINE, |_| delivered.get() == want)
        .expect("turns");
    let took = t.elapsed();
    assert!(all, "{} of {want} datagrams delivered", delivered.get());
    took.as_nanos() as f64 / want as f64
}

fn over_budget(plan: &Plan) {
    println!(
        "\nports over their read budget: {WAITING} datagrams waiting on each of n ports; \
         ns per datagram until all are delivered (median of 3)"
    );
    println!("{:>6} {:>16} {:>16}", "n", "budget 256 (dflt)", "budget 1");
    let client = UdpSocket::bind("127.0.0.1:0").expect("client bind");
    for &n in plan.over_budget {
        let [default, one] = [twine::DEFAULT_READ_BUDGET, 1].map(|budget| {
            median(
                (0..3)
                    .map(|_| over_budget_round(&client, n, budget))
                    .collect(),
            )
        });
        println!("{n:>6} {default:>16.0} {one:>16.0}");
    }
}
