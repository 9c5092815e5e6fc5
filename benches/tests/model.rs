//! Model-based random test of the timer queue and the port table: random
//! schedule/cancel/open/close sequences against a simple model, on `proptest`, so that a
//! failing sequence shrinks to a minimal one and is kept as a regression
//! (`benches/tests/proptest-regressions/model.txt`).
//!
//! It lives in the `twine-benches` workspace member, with the benchmarks, so that
//! `proptest` and its tree are built only for `cargo test`, never for a first
//! `cargo run --example echo`; it shares the library's test helpers (`tests/util`).
//!
//! Proptest generates sequences of [`Step`]s, which [`resolve`] turns into [`Op`]s: reactor
//! timers (some of which close a port through its handle), port timers (some of which call
//! `stop_listening`), cancels of any handle ever issued, opens, closes, datagrams (to open
//! ports, to closing ones, to the old addresses of closed ones; some ask their port to
//! stop), reactor stops, and turns. The harness runs them on a real reactor with real
//! sockets on 127.0.0.1, and everything the reactor calls back is recorded, in order, in
//! one event log. After every op the log is replayed against a plain model (ports and
//! timers in `Vec`s, datagrams in a `BTreeMap`), and every handle ever issued is queried
//! (`is_listening`, `port_stats`, `is_pending`, `port_count`, `timer_count`). At the end
//! every committed timer must have fired, every datagram sent to a port still open must
//! have arrived, and closing every port must run each `stop_protocol` exactly once.
//!
//! Time is not controlled, so the model checks lower bounds and orders, never exact times:
//! a timer never fires before `before_schedule + delay`; if timer A's latest possible
//! deadline is before timer B's earliest one (or equal, A scheduled first), B never fires
//! while A is still pending.
//!
//! A failure is shrunk (fewer ops, smaller delays, lower indices; see [`Steps`]) and
//! reported as the minimal sequence, pasteable into a `run_ops(&[...])` regression test;
//! its seed is appended to `benches/tests/proptest-regressions/model.txt` ([`REGRESSIONS`]; commit
//! it), and every later run replays the seeds in that file before any new case. (Each of
//! the model tests replays every seed, at its own length: a seed gives back its failing
//! case in the test that saved it. And a seed names a case through the strategies: change
//! [`step`] and old seeds name other cases, so a real failure also deserves its `run_ops`
//! test.)
//!
//! The default tests run the same cases every time (seeds from [`FIXED_SEED`]);
//! `TWINE_MODEL_RANDOM=1` draws new ones, `PROPTEST_RNG_SEED=<n>` others still. The long
//! run draws new cases each time:
//! `cargo test -p twine-benches --test model -- --ignored long_random_sequences --nocapture`,
//! with `PROPTEST_CASES` cases (10,000 by default) of `TWINE_MODEL_OPS` ops (50).
//! `TWINE_MODEL_STRICT=0` drops the checks on ports whose stop was asked for (see
//! [`Strict`]); `=pending` or `=fire` keeps one.

#[path = "../../tests/util/mod.rs"]
mod util;

use std::any::Any;
use std::cell::{Cell, RefCell};
use std::collections::BTreeMap;
use std::fmt;
use std::net::{SocketAddr, UdpSocket};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use proptest::prelude::{Just, Strategy, prop_oneof};
use proptest::strategy::{NewTree, ValueTree};
use proptest::test_runner::{
    Config as ProptestConfig, FailurePersistence, FileFailurePersistence, PersistedSeed,
    RngAlgorithm, RngSeed, TestCaseError, TestError, TestRng, TestRunner,
};
use twine::{DatagramProtocol, DelayedCall, Error, ListeningPort, Reactor, UdpTransport};
use util::{DEADLINE, ms};

/// Ports a sequence keeps open at once (as far as it knows), and opens in all, at most.
const MAX_LIVE_PORTS: usize = 6;
const MAX_PORTS: usize = 40;
/// Cases and lengths of the default runs.
const CASES: u32 = 200;
const OPS: usize = 50;
const LONG_CASES: u32 = 16;
const LONG_OPS: usize = 300;
/// Threads, each with its own `TestRunner`, taking cases from one count (each case has its
/// own reactor; most of the time is spent waiting for timers).
const WORKERS: u32 = 8;
/// Where shrunk failures are kept (proptest's own `proptest-regressions/` layout: its
/// default, `SourceParallel`, looks for a `lib.rs` above the test file, finds none above
/// `tests/`, and falls back to `tests/model.proptest-regressions` with a warning).
const REGRESSIONS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/tests/proptest-regressions/model.txt"
);

// ----- operations --------------------------------------------------------------------------

/// One step of a sequence. Ports and timers are named by their index in issue order (every
/// `Open` issues a port, every `CallLater`/`CallLaterOn` a timer index, even when the
/// schedule is refused), so a sequence stands on its own and can be pasted into a
/// regression test.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Op {
    /// `listen_udp_with(127.0.0.1:0)`.
    Open,
    /// `reactor.stop_listening(&handle)`.
    Close { port: usize },
    /// `reactor.call_later(delay)`; the callback closes `close` through its handle.
    CallLater { ms: u64, close: Option<usize> },
    /// `reactor.call_later_on(&handle, delay)`; with `stop`, the callback calls
    /// `t.stop_listening()`.
    CallLaterOn { port: usize, ms: u64, stop: bool },
    /// `reactor.cancel(call)`.
    Cancel { timer: usize },
    /// A datagram from a plain client to the port's address (whatever its state); with
    /// `stop`, the port calls `t.stop_listening()` on receiving it.
    Send { port: usize, stop: bool },
    /// `reactor.stop()`: every port closes at the end of the next turn.
    StopReactor,
    /// One turn, no waiting.
    Turn,
    /// One turn, waiting at most `ms`.
    Wait { ms: u64 },
    /// Turns until the timer with the earliest deadline the model knows of has fired.
    UntilEarliest,
}

// ----- generating sequences ----------------------------------------------------------------

/// A port as a [`Step`] names it, among the ports opened before it: with `live`, among
/// those the sequence has not asked to close (if any), else among all; the one at `n / 2^16`
/// of the way along them (see [`nth`]). So any subsequence of steps, which is what
/// shrinking tries, still names ports that exist.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Pick {
    live: bool,
    n: usize,
}

/// What proptest generates and shrinks; [`resolve`] makes the [`Op`]s. Shrinking goes
/// towards the first kind of step in [`step`], `false`, `None`, and index 0.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Step {
    Turn,
    UntilEarliest,
    Wait {
        ms: u64,
    },
    /// A [`Op::Turn`] when the sequence already has its most ports.
    Open,
    CallLater {
        ms: u64,
        close: Option<Pick>,
    },
    CallLaterOn {
        port: Pick,
        ms: u64,
        stop: bool,
    },
    Send {
        port: Pick,
        stop: bool,
    },
    /// With `recent`, one of the last four timers (likely still pending), else any; a
    /// [`Op::Turn`] before the first timer.
    Cancel {
        recent: bool,
        n: usize,
    },
    Close(Pick),
    StopReactor,
}

impl Step {
    fn needs_port(self) -> bool {
        matches!(
            self,
            Step::CallLater { close: Some(_), .. }
                | Step::CallLaterOn { .. }
                | Step::Send { .. }
                | Step::Close(_)
        )
    }
}

/// A step, and whether it is an [`Op::Open`] instead when the sequence has no live port
/// (70% of the time; one that names a port before the first port is always one).
#[derive(Debug, Clone, Copy, PartialEq)]
struct Raw {
    reopen: bool,
    step: Step,
}

/// Mostly a few equal small delays (same-delay FIFO order), sometimes up to 50 ms.
fn delay() -> impl Strategy<Value = u64> {
    prop_oneof![
        4 => Just(0u64),
        3 => Just(1),
        2 => Just(2),
        1 => Just(3),
        2 => Just(5),
        1 => Just(10),
        1 => Just(20),
        1 => Just(50),
        1 => 0u64..=50,
    ]
}

/// A live port 85% of the time.
fn pick() -> impl Strategy<Value = Pick> {
    (proptest::bool::weighted(0.85), 0..FRACTION).prop_map(|(live, n)| Pick { live, n })
}

/// The kinds of step, weighted as in 100 draws.
fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        8 => Just(Step::Turn),
        12 => Just(Step::UntilEarliest),
        4 => (1u64..=4).prop_map(|ms| Step::Wait { ms }),
        8 => Just(Step::Open),
        18 => (delay(), proptest::option::weighted(0.08, pick()))
            .prop_map(|(ms, close)| Step::CallLater { ms, close }),
        18 => (pick(), delay(), proptest::bool::weighted(0.08))
            .prop_map(|(port, ms, stop)| Step::CallLaterOn { port, ms, stop }),
        14 => (pick(), proptest::bool::weighted(0.05))
            .prop_map(|(port, stop)| Step::Send { port, stop }),
        11 => (proptest::bool::ANY, 0..FRACTION)
            .prop_map(|(recent, n)| Step::Cancel { recent, n }),
        5 => pick().prop_map(Step::Close),
        2 => Just(Step::StopReactor),
    ]
}

fn raw() -> impl Strategy<Value = Raw> {
    (proptest::bool::weighted(0.7), step()).prop_map(|(reopen, step)| Raw { reopen, step })
}

/// Sequences of `len` ops.
fn sequences(len: usize) -> impl Strategy<Value = Vec<Op>> {
    Steps { raw: raw(), len }.prop_map(|steps| resolve(&steps))
}

/// `len` values of `raw`. Unlike `proptest::collection::vec`, which deletes elements in a
/// single pass and never below its least length, it shrinks to a fixed point: it deletes
/// elements (in passes from the front, again after any pass that deleted one), then
/// shrinks each one left, and deletes again if that changed any. Deleting a step changes
/// what the steps after it resolve to (which ports are live, whether one reopens), so a
/// step kept in one pass may go in the next.
#[derive(Debug)]
struct Steps<S> {
    raw: S,
    len: usize,
}

impl<S: Strategy> Strategy for Steps<S>
where
    S::Value: PartialEq,
{
    type Tree = StepsTree<S::Tree>;
    type Value = Vec<S::Value>;

    fn new_tree(&self, runner: &mut TestRunner) -> NewTree<Self> {
        let elements = (0..self.len)
            .map(|_| self.raw.new_tree(runner))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(StepsTree {
            included: vec![true; elements.len()],
            elements,
            phase: Phase::Delete {
                next: 0,
                deleted: false,
            },
            last: None,
        })
    }
}

struct StepsTree<T: ValueTree> {
    elements: Vec<T>,
    included: Vec<bool>,
    phase: Phase<T::Value>,
    /// The simplification `current()` shows, while not undone by `complicate`.
    last: Option<Last>,
}

enum Phase<V> {
    /// Deleting from `next` on; whether this pass deleted any yet.
    Delete {
        next: usize,
        deleted: bool,
    },
    /// Shrinking element `ix`; the elements when the phase began.
    Shrink {
        ix: usize,
        before: Vec<V>,
    },
    Done,
}

#[derive(Clone, Copy)]
enum Last {
    Deleted(usize),
    Shrunk(usize),
}

impl<T: ValueTree> ValueTree for StepsTree<T>
where
    T::Value: PartialEq,
{
    type Value = Vec<T::Value>;

    fn current(&self) -> Vec<T::Value> {
        self.elements
            .iter()
            .zip(&self.included)
            .filter(|&(_, &inc)| inc)
            .map(|(e, _)| e.current())
            .collect()
    }

    fn simplify(&mut self) -> bool {
        // Asked again without a `complicate`: the last deletion still failed, so it stays.
        if let (Some(Last::Deleted(_)), Phase::Delete { deleted, .. }) =
            (self.last, &mut self.phase)
        {
            *deleted = true;
        }
        self.last = None;
        loop {
            match &mut self.phase {
                Phase::Delete { next, deleted } => {
                    if let Some(ix) = (*next..self.elements.len()).find(|&i| self.included[i]) {
                        self.included[ix] = false;
                        *next = ix + 1;
                        self.last = Some(Last::Deleted(ix));
                        return true;
                    }
                    self.phase = if *deleted {
                        Phase::Delete {
                            next: 0,
                            deleted: false,
                        }
                    } else {
                        Phase::Shrink {
                            ix: 0,
                            before: self.current(),
                        }
                    };
                }
                Phase::Shrink { ix, .. } => {
                    while *ix < self.elements.len() {
                        if self.included[*ix] && self.elements[*ix].simplify() {
                            self.last = Some(Last::Shrunk(*ix));
                            return true;
                        }
                        *ix += 1;
                    }
                    let Phase::Shrink { before, .. } =
                        std::mem::replace(&mut self.phase, Phase::Done)
                    else {
                        unreachable!()
                    };
                    self.phase = if before != self.current() {
                        Phase::Delete {
                            next: 0,
                            deleted: false,
                        }
                    } else {
                        Phase::Done
                    };
                }
                Phase::Done => return false,
            }
        }
    }

    fn complicate(&mut self) -> bool {
        match self.last.take() {
            None => false,
            Some(Last::Deleted(ix)) => {
                self.included[ix] = true;
                true
            }
            Some(Last::Shrunk(ix)) => {
                let more = self.elements[ix].complicate();
                if more {
                    self.last = Some(Last::Shrunk(ix));
                }
                more
            }
        }
    }
}

/// The range of the `n` in a [`Pick`] or a [`Step::Cancel`].
const FRACTION: usize = 1 << 16;

/// Index `n / FRACTION` of the way along `0..len` (`n < FRACTION`, `len > 0`): uniform for
/// a uniform `n`, whatever `len` is, and as `n` shrinks to 0 so does the index, steadily (a
/// modulo would jump about, and shrinking `n` would stop anywhere).
fn nth(n: usize, len: usize) -> usize {
    n * len / FRACTION
}

/// The ops of `steps`: ports and timers named by index in issue order (see [`Op`]).
fn resolve(steps: &[Raw]) -> Vec<Op> {
    let mut opened = 0;
    let mut live: Vec<usize> = Vec::new();
    let mut timers = 0;
    let mut ops = Vec::with_capacity(steps.len());
    let forget = |live: &mut Vec<usize>, port: usize| live.retain(|&p| p != port);
    for &Raw { reopen, step } in steps {
        let pick = |p: Pick, live: &[usize]| {
            if p.live && !live.is_empty() {
                live[nth(p.n, live.len())]
            } else {
                nth(p.n, opened)
            }
        };
        let may_open = opened < MAX_PORTS && live.len() < MAX_LIVE_PORTS;
        let step = if (opened == 0 && step.needs_port()) || (live.is_empty() && may_open && reopen)
        {
            Step::Open
        } else {
            step
        };
        let op = match step {
            Step::Open if may_open => {
                live.push(opened);
                opened += 1;
                Op::Open
            }
            Step::Open => Op::Turn,
            Step::Close(p) => {
                let port = pick(p, &live);
                forget(&mut live, port);
                Op::Close { port }
            }
            Step::CallLater { ms, close } => {
                let close = close.map(|p| pick(p, &live));
                if let Some(port) = close {
                    forget(&mut live, port);
                }
                timers += 1;
                Op::CallLater { ms, close }
            }
            Step::CallLaterOn { port, ms, stop } => {
                let port = pick(port, &live);
                if stop {
                    forget(&mut live, port);
                }
                timers += 1;
                Op::CallLaterOn { port, ms, stop }
            }
            Step::Cancel { recent, n } if timers > 0 => {
                let timer = if recent {
                    timers - 1 - nth(n, timers.min(4))
                } else {
                    nth(n, timers)
                };
                Op::Cancel { timer }
            }
            Step::Cancel { .. } => Op::Turn,
            Step::Send { port, stop } => {
                let port = pick(port, &live);
                if stop {
                    forget(&mut live, port);
                }
                Op::Send { port, stop }
            }
            Step::StopReactor => {
                live.clear();
                Op::StopReactor
            }
            Step::Turn => Op::Turn,
            Step::Wait { ms } => Op::Wait { ms },
            Step::UntilEarliest => Op::UntilEarliest,
        };
        ops.push(op);
    }
    ops
}

/// Whether every port and timer an op names was issued by an op before it.
fn well_formed(ops: &[Op]) -> bool {
    let (mut ports, mut timers) = (0, 0);
    ops.iter().all(|op| {
        let ok = match *op {
            Op::Close { port } | Op::Send { port, .. } => port < ports,
            Op::CallLater { close, .. } => close.is_none_or(|p| p < ports),
            Op::CallLaterOn { port, .. } => port < ports,
            Op::Cancel { timer } => timer < timers,
            _ => true,
        };
        match op {
            Op::Open => ports += 1,
            Op::CallLater { .. } | Op::CallLaterOn { .. } => timers += 1,
            _ => {}
        }
        ok
    })
}

// ----- what the reactor calls back ---------------------------------------------------------

/// What a port timer's callback saw of its port.
#[derive(Debug, Clone, Copy)]
struct PortSide {
    /// The id of the protocol the closure was handed.
    me: usize,
    addr: SocketAddr,
    /// `t.is_closing()` when it started.
    closing: bool,
}

/// One callback, as recorded (in the order they ran) by the protocol and the timers.
#[derive(Debug, Clone)]
enum Ev {
    Start {
        port: usize,
        addr: SocketAddr,
    },
    Datagram {
        port: usize,
        addr: SocketAddr,
        seq: u64,
        stop: bool,
        turn: u32,
    },
    /// A datagram that is not this sequence's (another test's, on a reused port number).
    Foreign,
    Stop {
        port: usize,
        turn: u32,
    },
    Fired {
        timer: usize,
        at: Instant,
        turn: u32,
        on: Option<PortSide>,
        /// For a reactor timer that closes a port: what `stop_listening` returned.
        closed: Option<bool>,
    },
}

type Log = Rc<RefCell<Vec<Ev>>>;

const MAGIC: &[u8; 4] = b"twmd";

fn payload(tag: u64, seq: u64, stop: bool) -> Vec<u8> {
    let mut p = MAGIC.to_vec();
    p.extend_from_slice(&tag.to_le_bytes());
    p.extend_from_slice(&seq.to_le_bytes());
    p.push(u8::from(stop));
    p
}

fn parse(tag: u64, data: &[u8]) -> Option<(u64, bool)> {
    if data.len() != 21 || &data[..4] != MAGIC {
        return None;
    }
    let from_tag = u64::from_le_bytes(data[4..12].try_into().ok()?);
    let seq = u64::from_le_bytes(data[12..20].try_into().ok()?);
    (from_tag == tag).then_some((seq, data[20] != 0))
}

/// Records its hooks; stops its port on a datagram flagged so.
struct ModelProto {
    id: usize,
    /// The harness's [`Harness::tag`], in every datagram it sends.
    tag: u64,
    log: Log,
    turn: Rc<Cell<u32>>,
}

impl DatagramProtocol for ModelProto {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.log.borrow_mut().push(Ev::Start {
            port: self.id,
            addr: t.local_addr(),
        });
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], _: SocketAddr) {
        let Some((seq, stop)) = parse(self.tag, data) else {
            self.log.borrow_mut().push(Ev::Foreign);
            return;
        };
        self.log.borrow_mut().push(Ev::Datagram {
            port: self.id,
            addr: t.local_addr(),
            seq,
            stop,
            turn: self.turn.get(),
        });
        if stop {
            t.stop_listening();
        }
    }

    fn stop_protocol(&mut self, _: &mut UdpTransport<'_>) {
        self.log.borrow_mut().push(Ev::Stop {
            port: self.id,
            turn: self.turn.get(),
        });
    }
}

// ----- the model ---------------------------------------------------------------------------

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum PortState {
    Open,
    /// A stop was asked for (in turn `asked`, or between turn `asked` and the next).
    Closing {
        asked: u32,
    },
    Stopped,
}

#[derive(Debug)]
struct MPort {
    addr: SocketAddr,
    state: PortState,
    opened_at: usize,
    started: bool,
    last_seq: Option<u64>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TimerState {
    Pending,
    Fired,
    Cancelled,
    /// Its port closed before it fired.
    Dropped,
    /// `call_later_on` refused it (port not listening).
    Refused,
}

#[derive(Debug)]
struct MTimer {
    port: Option<usize>,
    delay: Duration,
    /// `Instant::now()` just before and just after the schedule call: the real deadline
    /// lies in `before + delay ..= after + delay`.
    before: Instant,
    after: Instant,
    /// Closes this port (reactor timer) or its own (port timer) when it fires.
    close: Option<usize>,
    state: TimerState,
}

impl MTimer {
    /// Whether `self` (issued as `a`) must fire before `other` (issued as `b`): its latest
    /// possible deadline is before the other's earliest, or equal and it was scheduled first.
    fn must_precede(&self, a: usize, other: &MTimer, b: usize) -> bool {
        let late = self.after + self.delay;
        let early = other.before + other.delay;
        late < early || (late == early && a < b)
    }
}

#[derive(Debug)]
struct Sent {
    port: usize,
    addr: SocketAddr,
    op: usize,
    /// The port was open (and the reactor not stopping) when it was sent.
    expected: bool,
    delivered: bool,
}

/// What the model demands of a port whose stop was asked for. Both were found by this
/// model (the regression tests at the end pin them down) and fixed; on unless
/// `TWINE_MODEL_STRICT=0`.
#[derive(Debug, Clone, Copy, Default)]
struct Strict {
    /// Once a port's stop is asked for, `is_pending` and `cancel` say false for its timers
    /// (they will not fire: the port is torn down before the timers of the next turn).
    strict_pending: bool,
    /// Once a port's stop is asked for, none of its timers fires, not even one due later
    /// in the same turn.
    strict_fire: bool,
}

#[derive(Debug, Default, Clone, Copy)]
struct Tally {
    sequences: u64,
    ops: u64,
    turns: u64,
    ports: u64,
    timers_fired: u64,
    timers_cancelled: u64,
    timers_dropped: u64,
    timers_refused: u64,
    timers_fired_while_closing: u64,
    datagrams_sent: u64,
    datagrams_delivered: u64,
    foreign: u64,
}

impl Tally {
    fn add(&mut self, o: &Tally) {
        self.sequences += o.sequences;
        self.ops += o.ops;
        self.turns += o.turns;
        self.ports += o.ports;
        self.timers_fired += o.timers_fired;
        self.timers_cancelled += o.timers_cancelled;
        self.timers_dropped += o.timers_dropped;
        self.timers_refused += o.timers_refused;
        self.timers_fired_while_closing += o.timers_fired_while_closing;
        self.datagrams_sent += o.datagrams_sent;
        self.datagrams_delivered += o.datagrams_delivered;
        self.foreign += o.foreign;
    }
}

macro_rules! ensure {
    ($cond:expr, $($arg:tt)+) => {
        if !$cond {
            return Err(format!($($arg)+));
        }
    };
}

type Check = std::result::Result<(), String>;

/// A reactor, its handles, the event log, and the model it is checked against.
struct Harness {
    /// Unique to this harness in this process: a datagram with another tag is
    /// [`Ev::Foreign`] (another test's, on a reused port number).
    tag: u64,
    strict: Strict,
    reactor: Reactor,
    client: UdpSocket,
    turn: Rc<Cell<u32>>,
    log: Log,
    replayed: usize,
    handles: Vec<ListeningPort<ModelProto>>,
    calls: Vec<Option<DelayedCall>>,
    ports: Vec<MPort>,
    timers: Vec<MTimer>,
    sent: BTreeMap<u64, Sent>,
    /// `reactor.stop()` was asked for between turn `n` and the next.
    stopping: Option<u32>,
    op: usize,
    tally: Tally,
}

impl Harness {
    fn new(strict: Strict) -> Harness {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let tag = u64::from(std::process::id()) << 32 | NEXT.fetch_add(1, Ordering::Relaxed);
        Harness {
            tag,
            strict,
            reactor: util::reactor(),
            client: util::client(),
            turn: Rc::default(),
            log: Log::default(),
            replayed: 0,
            handles: Vec::new(),
            calls: Vec::new(),
            ports: Vec::new(),
            timers: Vec::new(),
            sent: BTreeMap::new(),
            stopping: None,
            op: 0,
            tally: Tally::default(),
        }
    }

    /// Runs `ops`, then drains, closes every port and checks the end state. `at` is the
    /// index of the op running (`ops.len()` for the final phase).
    fn run(&mut self, ops: &[Op], at: &Cell<usize>) -> Check {
        for (i, op) in ops.iter().enumerate() {
            at.set(i);
            self.op = i;
            self.apply(*op)?;
            self.replay()?;
            self.sweep()?;
            self.tally.ops += 1;
        }
        at.set(ops.len());
        self.op = ops.len();
        self.finish()
    }

    fn apply(&mut self, op: Op) -> Check {
        match op {
            Op::Open => self.open(),
            Op::Close { port } => {
                let got = self.reactor.stop_listening(&self.handles[port]);
                let p = &mut self.ports[port];
                ensure!(
                    got == (p.state == PortState::Open),
                    "stop_listening(port {port}) returned {got}, model state {:?}",
                    p.state
                );
                if p.state == PortState::Open {
                    p.state = PortState::Closing {
                        asked: self.turn.get(),
                    };
                }
                Ok(())
            }
            Op::CallLater { ms, close } => {
                self.call_later(util::ms(ms), close);
                Ok(())
            }
            Op::CallLaterOn { port, ms, stop } => self.call_later_on(port, util::ms(ms), stop),
            Op::Cancel { timer } => self.cancel(timer),
            Op::Send { port, stop } => {
                self.send(port, stop);
                Ok(())
            }
            Op::StopReactor => {
                self.reactor.stop();
                self.stopping.get_or_insert(self.turn.get());
                Ok(())
            }
            Op::Turn => self.step(Duration::ZERO),
            Op::Wait { ms } => self.step(util::ms(ms)),
            Op::UntilEarliest => self.until_earliest(),
        }
    }

    fn open(&mut self) -> Check {
        let id = self.handles.len();
        let proto = ModelProto {
            id,
            tag: self.tag,
            log: self.log.clone(),
            turn: self.turn.clone(),
        };
        let h = self
            .reactor
            .listen_udp_with(util::loopback(), proto)
            .expect("listen on 127.0.0.1:0");
        self.handles.push(h);
        self.ports.push(MPort {
            addr: h.local_addr(),
            state: PortState::Open,
            opened_at: self.op,
            started: false,
            last_seq: None,
        });
        self.tally.ports += 1;
        self.replay()?;
        ensure!(
            self.ports[id].started,
            "start_protocol of port {id} did not run inside the listen call"
        );
        Ok(())
    }

    fn call_later(&mut self, delay: Duration, close: Option<usize>) {
        let timer = self.calls.len();
        let handle = close.map(|p| self.handles[p]);
        let (log, turn) = (self.log.clone(), self.turn.clone());
        let before = Instant::now();
        let call = self.reactor.call_later(delay, move |r| {
            let at = Instant::now();
            let closed = handle.map(|h| r.stop_listening(&h));
            log.borrow_mut().push(Ev::Fired {
                timer,
                at,
                turn: turn.get(),
                on: None,
                closed,
            });
        });
        let after = Instant::now();
        self.calls.push(Some(call));
        self.timers.push(MTimer {
            port: None,
            delay,
            before,
            after,
            close,
            state: TimerState::Pending,
        });
    }

    fn call_later_on(&mut self, port: usize, delay: Duration, stop: bool) -> Check {
        let timer = self.calls.len();
        let (log, turn) = (self.log.clone(), self.turn.clone());
        let before = Instant::now();
        let got = self.reactor.call_later_on(
            &self.handles[port],
            delay,
            move |me: &mut ModelProto, t: &mut UdpTransport<'_>| {
                let at = Instant::now();
                log.borrow_mut().push(Ev::Fired {
                    timer,
                    at,
                    turn: turn.get(),
                    on: Some(PortSide {
                        me: me.id,
                        addr: t.local_addr(),
                        closing: t.is_closing(),
                    }),
                    closed: None,
                });
                if stop {
                    t.stop_listening();
                }
            },
        );
        let after = Instant::now();
        let state = self.ports[port].state;
        let listening = state == PortState::Open;
        let state_after = match got {
            Ok(call) => {
                ensure!(
                    listening,
                    "call_later_on(port {port}) succeeded, model state {state:?}"
                );
                self.calls.push(Some(call));
                TimerState::Pending
            }
            Err(e) => {
                ensure!(
                    matches!(e, Error::PortClosed),
                    "call_later_on(port {port}) failed with {e:?}, not PortClosed"
                );
                // While the reactor is stopping an open port may be seen either way.
                ensure!(
                    !listening || self.stopping.is_some(),
                    "call_later_on(port {port}) refused ({e}), model state {state:?}"
                );
                self.calls.push(None);
                self.tally.timers_refused += 1;
                TimerState::Refused
            }
        };
        self.timers.push(MTimer {
            port: Some(port),
            delay,
            before,
            after,
            close: stop.then_some(port),
            state: state_after,
        });
        Ok(())
    }

    /// Whether a pending timer still has to fire: a reactor timer, or its port is open.
    fn committed(&self, t: &MTimer) -> bool {
        t.state == TimerState::Pending
            && t.port
                .is_none_or(|p| self.ports[p].state == PortState::Open)
    }

    /// Whether the model allows `is_pending`/`cancel` to say `got` for `timer`.
    fn pending_allowed(&self, timer: usize, got: bool) -> bool {
        let t = &self.timers[timer];
        if t.state != TimerState::Pending {
            return !got;
        }
        match t.port.map(|p| self.ports[p].state) {
            None | Some(PortState::Open) => got,
            // Not going to fire (torn down before the timers run next turn), but the port
            // slot still holds it: the docs' "will still fire" says false.
            Some(PortState::Closing { .. }) => !self.strict.strict_pending || !got,
            Some(PortState::Stopped) => !got,
        }
    }

    fn cancel(&mut self, timer: usize) -> Check {
        let Some(call) = self.calls[timer] else {
            return Ok(());
        };
        let got = self.reactor.cancel(call);
        ensure!(
            self.pending_allowed(timer, got),
            "cancel(timer {timer}) returned {got}, model {:?} (port {:?})",
            self.timers[timer].state,
            self.timers[timer].port.map(|p| self.ports[p].state)
        );
        if got {
            self.timers[timer].state = TimerState::Cancelled;
            self.tally.timers_cancelled += 1;
        }
        Ok(())
    }

    fn send(&mut self, port: usize, stop: bool) {
        let seq = self.sent.len() as u64;
        let addr = self.ports[port].addr;
        if self
            .client
            .send_to(&payload(self.tag, seq, stop), addr)
            .is_ok()
        {
            self.sent.insert(
                seq,
                Sent {
                    port,
                    addr,
                    op: self.op,
                    expected: self.ports[port].state == PortState::Open && self.stopping.is_none(),
                    delivered: false,
                },
            );
            self.tally.datagrams_sent += 1;
        }
    }

    /// One reactor turn, then the replay of what it did.
    fn step(&mut self, timeout: Duration) -> Check {
        self.turn.set(self.turn.get() + 1);
        self.tally.turns += 1;
        let stopped = self.reactor.iterate(timeout).expect("reactor turn");
        self.replay()?;
        match self.stopping.take() {
            Some(_) => {
                ensure!(stopped, "the turn after reactor.stop() did not stop");
                for (i, p) in self.ports.iter().enumerate() {
                    ensure!(
                        p.state == PortState::Stopped,
                        "port {i} still {:?} after the reactor stopped",
                        p.state
                    );
                }
            }
            None => ensure!(!stopped, "a turn stopped without reactor.stop()"),
        }
        Ok(())
    }

    /// Turns until `done` holds, for at most [`DEADLINE`].
    fn turns_until(&mut self, what: &str, done: impl Fn(&Harness) -> bool) -> Check {
        let deadline = Instant::now() + DEADLINE;
        while !done(self) {
            let now = Instant::now();
            ensure!(
                now < deadline,
                "timed out after {DEADLINE:?} waiting for {what}"
            );
            self.step((deadline - now).min(ms(10)))?;
        }
        Ok(())
    }

    fn until_earliest(&mut self) -> Check {
        let target = (0..self.timers.len())
            .filter(|&i| self.committed(&self.timers[i]))
            .min_by_key(|&i| (self.timers[i].after + self.timers[i].delay, i));
        let Some(target) = target else {
            return self.step(Duration::ZERO);
        };
        self.turns_until(&format!("timer {target} to fire"), |h| {
            !h.committed(&h.timers[target])
        })
    }

    /// Replays the new events against the model.
    fn replay(&mut self) -> Check {
        loop {
            let ev = {
                let log = self.log.borrow();
                match log.get(self.replayed) {
                    Some(ev) => ev.clone(),
                    None => return Ok(()),
                }
            };
            self.replayed += 1;
            self.event(&ev)
                .map_err(|e| format!("{e}\n  at event {ev:?}"))?;
        }
    }

    fn event(&mut self, ev: &Ev) -> Check {
        match *ev {
            Ev::Start { port, addr } => {
                let p = &mut self.ports[port];
                ensure!(!p.started, "start_protocol ran twice");
                ensure!(addr == p.addr, "started on {addr}, handle says {}", p.addr);
                p.started = true;
            }
            Ev::Foreign => self.tally.foreign += 1,
            Ev::Datagram {
                port,
                addr,
                seq,
                stop,
                turn,
            } => {
                let p = &mut self.ports[port];
                ensure!(p.started, "datagram before start_protocol");
                ensure!(
                    p.state == PortState::Open,
                    "datagram delivered to a port in state {:?}",
                    p.state
                );
                ensure!(
                    self.stopping.is_none(),
                    "datagram delivered after reactor.stop()"
                );
                ensure!(addr == p.addr, "port {port} is on {addr}, not {}", p.addr);
                let Some(sent) = self.sent.get_mut(&seq) else {
                    return Err(format!("datagram {seq} was never sent"));
                };
                ensure!(
                    sent.addr == addr,
                    "datagram {seq} sent to {} (port {}) reached port {port} on {addr}",
                    sent.addr,
                    sent.port
                );
                ensure!(
                    p.opened_at < sent.op,
                    "datagram {seq} sent at op {} reached port {port} opened later",
                    sent.op
                );
                ensure!(!sent.delivered, "datagram {seq} delivered twice");
                ensure!(
                    p.last_seq.is_none_or(|last| last < seq),
                    "datagram {seq} after {:?} on one port: out of order",
                    p.last_seq
                );
                sent.delivered = true;
                p.last_seq = Some(seq);
                if stop {
                    p.state = PortState::Closing { asked: turn };
                }
                self.tally.datagrams_delivered += 1;
            }
            Ev::Stop { port, turn } => {
                let state = self.ports[port].state;
                // A reactor stop closes every port at the end of the turn after it was
                // asked for, those whose own stop was asked in that very turn included.
                let asked = match (state, self.stopping) {
                    (PortState::Open | PortState::Closing { .. }, Some(asked)) => asked,
                    (PortState::Closing { asked }, None) => asked,
                    _ => return Err(format!("stop_protocol in state {state:?}")),
                };
                ensure!(
                    turn > asked,
                    "stop_protocol in turn {turn}, stop asked in turn {asked}: not a later turn"
                );
                self.ports[port].state = PortState::Stopped;
                for t in &mut self.timers {
                    if t.port == Some(port) && t.state == TimerState::Pending {
                        t.state = TimerState::Dropped;
                        self.tally.timers_dropped += 1;
                    }
                }
            }
            Ev::Fired {
                timer,
                at,
                turn,
                on,
                closed,
            } => self.fired(timer, at, turn, on, closed)?,
        }
        Ok(())
    }

    fn fired(
        &mut self,
        timer: usize,
        at: Instant,
        turn: u32,
        on: Option<PortSide>,
        closed: Option<bool>,
    ) -> Check {
        let t = &self.timers[timer];
        ensure!(
            t.state == TimerState::Pending,
            "timer {timer} fired in state {:?}",
            t.state
        );
        ensure!(
            at >= t.before + t.delay,
            "timer {timer} fired early: {:?} after it was scheduled, delay {:?}",
            at - t.before,
            t.delay
        );
        match (t.port, on) {
            (None, None) => {}
            (Some(port), Some(side)) => {
                let p = &self.ports[port];
                ensure!(
                    side.me == port && side.addr == p.addr,
                    "timer {timer} of port {port} ran on port {} ({})",
                    side.me,
                    side.addr
                );
                match p.state {
                    PortState::Open => {}
                    PortState::Closing { asked } => {
                        ensure!(
                            !self.strict.strict_fire,
                            "timer {timer} fired after its port's stop was asked for (turn {asked})"
                        );
                        ensure!(
                            turn == asked,
                            "timer {timer} fired in turn {turn}, its port's stop was asked in turn {asked}"
                        );
                        self.tally.timers_fired_while_closing += 1;
                    }
                    PortState::Stopped => {
                        return Err(format!(
                            "timer {timer} fired after its port's stop_protocol"
                        ));
                    }
                }
                let closing = matches!(p.state, PortState::Closing { .. });
                ensure!(
                    side.closing == closing,
                    "is_closing() = {} in timer {timer}, model state {:?}",
                    side.closing,
                    p.state
                );
            }
            (port, on) => return Err(format!("timer {timer} of port {port:?} ran with {on:?}")),
        }
        // Deadline order (then schedule order): nothing that had to fire first is pending.
        for (a, other) in self.timers.iter().enumerate() {
            if a != timer && self.committed(other) && other.must_precede(a, t, timer) {
                return Err(format!(
                    "timer {timer} (delay {:?}) fired while timer {a} (delay {:?}, due no later) is pending",
                    t.delay, other.delay
                ));
            }
        }
        self.timers[timer].state = TimerState::Fired;
        self.tally.timers_fired += 1;
        let t = &self.timers[timer];
        match (t.port, t.close, closed) {
            (None, Some(port), Some(got)) => {
                let p = &mut self.ports[port];
                ensure!(
                    got == (p.state == PortState::Open),
                    "stop_listening(port {port}) in timer {timer} returned {got}, model state {:?}",
                    p.state
                );
                if p.state == PortState::Open {
                    p.state = PortState::Closing { asked: turn };
                }
            }
            (None, None, None) => {}
            (Some(port), close, None) => {
                let p = &mut self.ports[port];
                if close.is_some() && p.state == PortState::Open {
                    p.state = PortState::Closing { asked: turn };
                }
            }
            other => return Err(format!("timer {timer}: close mismatch {other:?}")),
        }
        Ok(())
    }

    /// Every handle ever issued, asked what the model says.
    fn sweep(&self) -> Check {
        let r = &self.reactor;
        let mut live = 0;
        for (i, (h, p)) in self.handles.iter().zip(&self.ports).enumerate() {
            let listening = r.is_listening(h);
            let ok = match p.state {
                // "open and not stopping": either reading while the reactor stops.
                PortState::Open => listening || self.stopping.is_some(),
                _ => !listening,
            };
            ensure!(
                ok,
                "is_listening(port {i}) = {listening}, model {:?}",
                p.state
            );
            let exists = p.state != PortState::Stopped;
            let stats = r.port_stats(h).is_some();
            ensure!(
                stats == exists,
                "port_stats(port {i}).is_some() = {stats}, model {:?}",
                p.state
            );
            live += usize::from(exists);
        }
        ensure!(
            r.port_count() == live,
            "port_count {} != model {live}",
            r.port_count()
        );
        let (mut low, mut high) = (0, 0);
        for (i, t) in self.timers.iter().enumerate() {
            if let Some(call) = self.calls[i] {
                let got = r.is_pending(call);
                ensure!(
                    self.pending_allowed(i, got),
                    "is_pending(timer {i}) = {got}, model {:?} (port {:?})",
                    t.state,
                    t.port.map(|p| self.ports[p].state)
                );
            }
            if self.committed(t) {
                low += 1;
                high += 1;
            } else if t.state == TimerState::Pending
                && t.port
                    .is_some_and(|p| self.ports[p].state != PortState::Stopped)
            {
                high += 1;
            }
        }
        let count = r.timer_count();
        ensure!(
            (low..=high).contains(&count),
            "timer_count {count}, model {low}..={high}"
        );
        Ok(())
    }

    /// Drains what must still happen, closes every port, checks nothing is left.
    fn finish(&mut self) -> Check {
        let drained = |h: &Harness| {
            h.stopping.is_none()
                && h.timers.iter().all(|t| !h.committed(t))
                && h.ports
                    .iter()
                    .all(|p| !matches!(p.state, PortState::Closing { .. }))
                && h.sent
                    .values()
                    .all(|s| s.delivered || !s.expected || h.ports[s.port].state != PortState::Open)
        };
        self.turns_until("the committed timers, closes and datagrams", drained)?;
        self.sweep()?;
        for port in 0..self.handles.len() {
            self.apply(Op::Close { port })?;
        }
        self.sweep()?;
        self.step(Duration::ZERO)?;
        self.sweep()?;
        for (i, p) in self.ports.iter().enumerate() {
            ensure!(p.state == PortState::Stopped, "port {i} ends {:?}", p.state);
        }
        for (i, t) in self.timers.iter().enumerate() {
            ensure!(
                t.state != TimerState::Pending,
                "timer {i} still pending at the end"
            );
        }
        ensure!(self.reactor.port_count() == 0, "ports left at the end");
        ensure!(self.reactor.timer_count() == 0, "timers left at the end");
        // Nothing more: no callback after the last stop_protocol.
        self.step(ms(1))?;
        ensure!(
            self.log.borrow().len() == self.replayed,
            "callbacks after every port stopped"
        );
        self.tally.sequences += 1;
        Ok(())
    }
}

// ----- running sequences -------------------------------------------------------------------

struct Failure {
    at: usize,
    ops: Vec<Op>,
    message: String,
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let place = if self.at < self.ops.len() {
            format!("op {} ({:?})", self.at, self.ops[self.at])
        } else {
            "the final drain and close".to_owned()
        };
        writeln!(f, "model divergence at {place}: {}", self.message)?;
        writeln!(f, "ops (run_ops(&[...]) replays them):")?;
        for (i, op) in self.ops.iter().enumerate() {
            let mark = if i == self.at { "  // <- here" } else { "" };
            writeln!(f, "    Op::{op:?},{mark}")?;
        }
        Ok(())
    }
}

fn run_checked(ops: &[Op], strict: Strict) -> Result<Tally, Failure> {
    let at = Cell::new(0);
    let outcome = catch_unwind(AssertUnwindSafe(|| {
        let mut h = Harness::new(strict);
        h.run(ops, &at).map(|()| h.tally)
    }));
    let message = match outcome {
        Ok(Ok(tally)) => return Ok(tally),
        Ok(Err(message)) => message,
        Err(panic) => match panic.downcast::<String>() {
            Ok(s) => format!("panicked: {s}"),
            Err(p) => format!("panicked: {:?}", p.downcast_ref::<&str>()),
        },
    };
    Err(Failure {
        at: at.get(),
        ops: ops.to_vec(),
        message,
    })
}

/// Runs a fixed sequence (a regression test), panicking with the report on divergence.
fn run_ops(ops: &[Op], strict: Strict) {
    if let Err(f) = run_checked(ops, strict) {
        panic!("{f}");
    }
}

/// The shrunk failures in [`REGRESSIONS`], as proptest's `FailurePersistence`: every
/// worker saves there, only worker 0 loads (so each seed is replayed once a run, and
/// before any new case).
#[derive(Debug, Clone, PartialEq)]
struct Kept {
    load: bool,
}

const FILE: FileFailurePersistence = FileFailurePersistence::Direct(REGRESSIONS);

impl FailurePersistence for Kept {
    fn load_persisted_failures2(&self, source_file: Option<&'static str>) -> Vec<PersistedSeed> {
        match self.load {
            true => FILE.load_persisted_failures2(source_file),
            false => Vec::new(),
        }
    }

    fn save_persisted_failure2(
        &mut self,
        source_file: Option<&'static str>,
        seed: PersistedSeed,
        shrunken_value: &dyn fmt::Debug,
    ) {
        let mut file = FILE;
        file.save_persisted_failure2(source_file, seed, shrunken_value);
    }

    fn box_clone(&self) -> Box<dyn FailurePersistence> {
        Box::new(self.clone())
    }

    fn eq(&self, other: &dyn FailurePersistence) -> bool {
        other.as_any().downcast_ref::<Kept>() == Some(self)
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// The seed of the default runs' cases (worker w runs from `FIXED_SEED + w`): the same
/// cases every run, as a test suite should be, unless `TWINE_MODEL_RANDOM` (or a
/// `PROPTEST_RNG_SEED`) asks for others. The long run draws new cases each time.
const FIXED_SEED: u64 = 0x7477_696e_655f_6d64;

/// Whether the default runs draw new cases (`TWINE_MODEL_RANDOM` set).
fn env_random() -> bool {
    std::env::var_os("TWINE_MODEL_RANDOM").is_some()
}

/// The configuration of worker `worker`'s runner: at most `cases` new cases, failures kept in
/// [`REGRESSIONS`]; the `PROPTEST_*` variables apply, but for `PROPTEST_CASES`, and
/// `PROPTEST_RNG_SEED` is offset by the worker (the same seed everywhere would run the
/// same cases on every worker). The RNG is XorShift unless `PROPTEST_RNG_ALGORITHM` says.
fn proptest_config(cases: u32, worker: u32, random: bool) -> ProptestConfig {
    let env = ProptestConfig::default();
    ProptestConfig {
        cases,
        // Unset, proptest allows 4 shrink steps per case.
        max_shrink_iters: match env.max_shrink_iters {
            u32::MAX => 4096,
            n => n,
        },
        // PROPTEST_DISABLE_FAILURE_PERSISTENCE unsets it.
        failure_persistence: env
            .failure_persistence
            .as_ref()
            .map(|_| Box::new(Kept { load: worker == 0 }) as Box<dyn FailurePersistence>),
        source_file: Some(file!()),
        rng_seed: match env.rng_seed {
            RngSeed::Fixed(seed) => RngSeed::Fixed(seed.wrapping_add(worker.into())),
            RngSeed::Random if random => RngSeed::Random,
            RngSeed::Random => RngSeed::Fixed(FIXED_SEED.wrapping_add(worker.into())),
        },
        // Four times faster than the default ChaCha in a debug build, where generating the
        // cases took a third of the run.
        rng_algorithm: match std::env::var_os("PROPTEST_RNG_ALGORITHM") {
            Some(_) => env.rng_algorithm,
            None => RngAlgorithm::XorShift,
        },
        // A rejected case ends the runner (see `check_cases`); no case is rejected else.
        max_global_rejects: 0,
        ..env
    }
}

/// Runs the seeds in [`REGRESSIONS`], then `cases` new proptest cases of `len` ops on
/// [`WORKERS`] threads, each with its own runner, taking cases from one count as it goes
/// (as a fixed share each, the slowest share set the time). A runner stops when the count
/// is spent: it rejects the case it drew, which ends it (`max_global_rejects` is 0). Once
/// one worker finds a failure the others stop so, and that worker shrinks it; the test
/// panics with the shrunk sequence.
fn check_cases(cases: u32, len: usize, strict: Strict, random: bool) -> Tally {
    let started = Instant::now();
    let failed = AtomicBool::new(false);
    // Worker 0 alone first: a runner of no cases runs just the seeds it loads.
    let replayed =
        run_worker(0, None, &failed, len, strict, random).unwrap_or_else(|e| panic!("{e}"));
    let workers = WORKERS.min(cases).max(1);
    // Each worker its own share, so that with fixed seeds a run is the same cases every
    // time, whatever the scheduler does.
    let shares: Vec<(AtomicU32, u32)> = (0..workers)
        .map(|i| {
            (
                AtomicU32::new(0),
                cases / workers + u32::from(i < cases % workers),
            )
        })
        .collect();
    let results: Vec<Result<Tally, String>> = thread::scope(|s| {
        let handles: Vec<_> = (1..=workers)
            .map(|w| {
                let failed = &failed;
                let (claimed, share) = &shares[w as usize - 1];
                let count = Some((claimed, *share));
                s.spawn(move || run_worker(w, count, failed, len, strict, random))
            })
            .collect();
        handles
            .into_iter()
            .map(|h| h.join().expect("a worker panicked outside its cases"))
            .collect()
    });
    let mut total = Tally::default();
    let mut failures = Vec::new();
    for r in results {
        match r {
            Ok(t) => total.add(&t),
            Err(e) => failures.push(e),
        }
    }
    if !failures.is_empty() {
        panic!("{}", failures.join("\n----- and another worker's:\n"));
    }
    assert_eq!(total.sequences, u64::from(cases), "{total:?}");
    total.add(&replayed);
    eprintln!(
        "model: {} seeds from {REGRESSIONS}, {cases} cases of {len} ops in {:?} \
         ({strict:?}): {total:?}",
        replayed.sequences,
        started.elapsed(),
    );
    total
}

/// One runner: worker 0 replays the seeds in [`REGRESSIONS`] and no new case; the others
/// run new cases while `count` (claimed, of how many) has some left.
fn run_worker(
    worker: u32,
    count: Option<(&AtomicU32, u32)>,
    failed: &AtomicBool,
    len: usize,
    strict: Strict,
    random: bool,
) -> Result<Tally, String> {
    let cases = count.map_or(0, |(_, cases)| cases);
    let mut runner = TestRunner::new(proptest_config(cases, worker, random));
    let tally = RefCell::new(Tally::default());
    let shrinking = Cell::new(false);
    let result = runner.run(&sequences(len), |ops| {
        let spent = || count.is_some_and(|(c, cases)| c.fetch_add(1, Ordering::Relaxed) >= cases);
        if !shrinking.get() && (failed.load(Ordering::Relaxed) || spent()) {
            return Err(TestCaseError::reject("no cases left"));
        }
        match run_checked(&ops, strict) {
            Ok(t) => {
                tally.borrow_mut().add(&t);
                Ok(())
            }
            Err(f) => {
                shrinking.set(true);
                failed.store(true, Ordering::Relaxed);
                Err(TestCaseError::fail(f.to_string()))
            }
        }
    });
    match result {
        Ok(()) => Ok(tally.into_inner()),
        Err(TestError::Abort(_)) if !shrinking.get() => Ok(tally.into_inner()),
        Err(e) => Err(format!("{e}\n{runner}")),
    }
}

fn env_u64(name: &str) -> Option<u64> {
    let v = std::env::var(name).ok()?;
    let v = v.trim();
    Some(
        v.parse()
            .unwrap_or_else(|_| panic!("{name}={v} is not a number")),
    )
}

/// `TWINE_MODEL_STRICT`: both checks unless `0` (neither), `pending` or `fire` (that one).
fn env_strict() -> Strict {
    let v = std::env::var("TWINE_MODEL_STRICT").unwrap_or_default();
    match v.trim() {
        "0" => Strict::default(),
        "pending" => Strict {
            strict_pending: true,
            strict_fire: false,
        },
        "fire" => Strict {
            strict_pending: false,
            strict_fire: true,
        },
        _ => Strict {
            strict_pending: true,
            strict_fire: true,
        },
    }
}

// ----- tests -------------------------------------------------------------------------------

/// 200 cases of 50 ops against the model.
#[test]
fn random_sequences_match_the_model() {
    util::init_logging();
    let t = check_cases(CASES, OPS, env_strict(), env_random());
    // The generator does reach every corner it is meant to.
    assert!(t.timers_fired > 0 && t.timers_cancelled > 0 && t.timers_dropped > 0);
    assert!(t.timers_refused > 0 && t.datagrams_delivered > 0);
}

/// A few longer sequences: deeper states (many ports closed, reused slots, many handles).
#[test]
fn long_sequences_match_the_model() {
    util::init_logging();
    check_cases(LONG_CASES, LONG_OPS, env_strict(), env_random());
}

/// The long run, for soak testing.
#[test]
#[ignore = "long run (10,000 cases); set PROPTEST_CASES / PROPTEST_RNG_SEED / TWINE_MODEL_OPS"]
fn long_random_sequences() {
    util::init_logging();
    let cases = env_u64("PROPTEST_CASES").map_or(10_000, |n| {
        u32::try_from(n).expect("PROPTEST_CASES fits in a u32")
    });
    let len = env_u64("TWINE_MODEL_OPS").map_or(OPS, |n| n as usize);
    check_cases(cases, len, env_strict(), true);
}

/// A case is a pure function of its seed (what makes a seed in [`REGRESSIONS`] replay the
/// case it was saved for), and every sequence is well formed and of its length.
#[test]
fn generator_is_deterministic() {
    let generate = |seed: u8, len: usize| {
        let mut runner = TestRunner::new_with_rng(
            ProptestConfig::default(),
            TestRng::from_seed(RngAlgorithm::XorShift, &[seed; 16]),
        );
        let ops = sequences(len)
            .new_tree(&mut runner)
            .expect("a case")
            .current();
        assert!(well_formed(&ops) && ops.len() == len, "{ops:?}");
        ops
    };
    for seed in [1, 2, 3] {
        assert_eq!(generate(seed, LONG_OPS), generate(seed, LONG_OPS));
    }
    assert_ne!(generate(1, OPS), generate(2, OPS));
}

/// Every step of shrinking is a well-formed sequence, down to the empty one; and a failure
/// shrinks to the ops it needs, and no more (here a pure property stands in for the
/// reactor: some port timer is scheduled before its port is closed).
#[test]
fn shrinking_keeps_sequences_well_formed_and_finds_minimal_ones() {
    let config = || ProptestConfig {
        failure_persistence: None,
        max_shrink_iters: 4096,
        ..proptest_config(64, 0, true)
    };
    for seed in 1..=5 {
        let rng = TestRng::from_seed(RngAlgorithm::XorShift, &[seed; 16]);
        let mut runner = TestRunner::new_with_rng(config(), rng.clone());
        for _ in 0..4 {
            let mut tree = sequences(OPS).new_tree(&mut runner).expect("a case");
            while tree.simplify() {
                assert!(well_formed(&tree.current()), "{:?}", tree.current());
            }
            assert_eq!(tree.current(), []);
        }
        let timer_then_close = |ops: &[Op]| {
            ops.iter().enumerate().any(|(i, op)| match *op {
                Op::CallLaterOn { port, .. } => ops[i..].contains(&Op::Close { port }),
                _ => false,
            })
        };
        let result = TestRunner::new_with_rng(config(), rng).run(&sequences(OPS), |ops| {
            if timer_then_close(&ops) {
                Err(TestCaseError::fail("a port timer, then its port's close"))
            } else {
                Ok(())
            }
        });
        let Err(TestError::Fail(_, minimal)) = result else {
            panic!("no sequence had a port timer before its port's close: {result:?}");
        };
        assert_eq!(
            minimal,
            [
                Op::Open,
                Op::CallLaterOn {
                    port: 0,
                    ms: 0,
                    stop: false
                },
                Op::Close { port: 0 },
            ]
        );
    }
}

/// The model is not vacuous: histories that break a rule are rejected. (Forged events are
/// pushed into the log and replayed; nothing here turns the reactor.)
#[test]
fn model_rejects_forged_histories() {
    fn forged(setup: &[Op], events: impl FnOnce(&Harness) -> Vec<Ev>) -> String {
        let mut h = Harness::new(Strict::default());
        for op in setup {
            h.apply(*op).expect("setup op");
            h.replay().expect("setup replay");
        }
        let events = events(&h);
        h.log.borrow_mut().extend(events);
        h.replay().expect_err("a forged history must be rejected")
    }
    let fired = |timer: usize, at: Instant, on: Option<PortSide>| Ev::Fired {
        timer,
        at,
        turn: 1,
        on,
        closed: None,
    };
    let late = Instant::now() + Duration::from_secs(1);
    let early = forged(
        &[Op::CallLater {
            ms: 50,
            close: None,
        }],
        |_| vec![fired(0, Instant::now(), None)],
    );
    assert!(early.contains("early"), "{early}");
    let order = forged(
        &[
            Op::CallLater { ms: 5, close: None },
            Op::CallLater { ms: 5, close: None },
        ],
        |_| vec![fired(1, late, None)],
    );
    assert!(order.contains("pending"), "{order}");
    let cancelled = forged(
        &[
            Op::CallLater { ms: 0, close: None },
            Op::Cancel { timer: 0 },
        ],
        |_| vec![fired(0, late, None)],
    );
    assert!(cancelled.contains("Cancelled"), "{cancelled}");
    let side = |h: &Harness, me: usize| PortSide {
        me,
        addr: h.ports[me].addr,
        closing: false,
    };
    let elsewhere = forged(
        &[
            Op::Open,
            Op::Open,
            Op::CallLaterOn {
                port: 0,
                ms: 0,
                stop: false,
            },
        ],
        |h| vec![fired(0, late, Some(side(h, 1)))],
    );
    assert!(elsewhere.contains("ran on port 1"), "{elsewhere}");
    let after_stop_protocol = forged(
        &[
            Op::Open,
            Op::CallLaterOn {
                port: 0,
                ms: 0,
                stop: false,
            },
            Op::Close { port: 0 },
        ],
        |h| {
            vec![
                Ev::Stop { port: 0, turn: 1 },
                fired(0, late, Some(side(h, 0))),
            ]
        },
    );
    assert!(
        after_stop_protocol.contains("Dropped"),
        "{after_stop_protocol}"
    );
    let stop_twice = forged(&[Op::Open, Op::Close { port: 0 }], |_| {
        vec![Ev::Stop { port: 0, turn: 1 }, Ev::Stop { port: 0, turn: 2 }]
    });
    assert!(stop_twice.contains("state Stopped"), "{stop_twice}");
    let stop_same_turn = forged(&[Op::Open, Op::Close { port: 0 }], |_| {
        vec![Ev::Stop { port: 0, turn: 0 }]
    });
    assert!(
        stop_same_turn.contains("not a later turn"),
        "{stop_same_turn}"
    );
    let datagram = |h: &Harness, port: usize| Ev::Datagram {
        port,
        addr: h.ports[port].addr,
        seq: 0,
        stop: false,
        turn: 1,
    };
    let misdelivered = forged(
        &[
            Op::Open,
            Op::Open,
            Op::Send {
                port: 0,
                stop: false,
            },
        ],
        |h| vec![datagram(h, 1)],
    );
    assert!(misdelivered.contains("reached port 1"), "{misdelivered}");
    let after_stop = forged(
        &[
            Op::Open,
            Op::Send {
                port: 0,
                stop: false,
            },
            Op::Close { port: 0 },
        ],
        |h| vec![datagram(h, 0)],
    );
    assert!(after_stop.contains("Closing"), "{after_stop}");
    let stop_unasked = forged(&[Op::Open], |_| vec![Ev::Stop { port: 0, turn: 1 }]);
    assert!(
        stop_unasked.contains("stop_protocol in state Open"),
        "{stop_unasked}"
    );
}

// ----- regressions -------------------------------------------------------------------------

/// Same-delay timers, a cancel in the middle, a port timer of a closed port, stale handles:
/// the basic shape of every sequence, as a fixed one.
#[test]
fn fixed_sequence_fifo_cancel_and_stale_handles() {
    run_ops(
        &[
            Op::Open,
            Op::Open,
            Op::CallLater { ms: 2, close: None },
            Op::CallLaterOn {
                port: 0,
                ms: 2,
                stop: false,
            },
            Op::CallLater { ms: 2, close: None },
            Op::CallLaterOn {
                port: 1,
                ms: 2,
                stop: false,
            },
            Op::Cancel { timer: 2 },
            Op::Cancel { timer: 2 },
            Op::Send {
                port: 1,
                stop: false,
            },
            Op::Close { port: 1 },
            Op::Send {
                port: 1,
                stop: false,
            },
            Op::CallLaterOn {
                port: 1,
                ms: 0,
                stop: false,
            },
            Op::UntilEarliest,
            Op::UntilEarliest,
            Op::Cancel { timer: 0 },
            Op::Cancel { timer: 3 },
            Op::Open,
            Op::Send {
                port: 2,
                stop: true,
            },
            Op::Send {
                port: 2,
                stop: false,
            },
            Op::Wait { ms: 2 },
            Op::Turn,
        ],
        Strict::default(),
    );
}

/// `is_pending` says "whether a call will still fire", false "once a port-scoped call's
/// port is closed". After `stop_listening` the port is torn down at the start of the next
/// turn, before that turn's timers, so its timer never fires; yet `is_pending` (and
/// `cancel`, and `timer_count`) still count it as pending until the teardown.
#[test]
fn port_timer_is_not_pending_once_its_port_is_asked_to_stop() {
    run_ops(
        &[
            Op::Open,
            Op::CallLaterOn {
                port: 0,
                ms: 50,
                stop: false,
            },
            Op::Close { port: 0 }, // the sweep after it: is_pending(timer 0) is still true
        ],
        Strict {
            strict_pending: true,
            ..Strict::default()
        },
    );
}

/// A datagram makes its port call `stop_listening`; a port timer of that port, already due,
/// still fires at the end of the same turn (with `is_closing()` true), though no datagram
/// may be delivered after the stop and the port's timers are "cancelled when it closes".
#[test]
fn port_timer_does_not_fire_after_stop_listening_in_a_datagram() {
    run_ops(
        &[
            Op::Open,
            Op::CallLaterOn {
                port: 0,
                ms: 0,
                stop: false,
            },
            Op::Send {
                port: 0,
                stop: true,
            },
            Op::Turn,
        ],
        Strict {
            strict_fire: true,
            ..Strict::default()
        },
    );
}

/// The same with the stop asked by an earlier timer of the same turn: a reactor timer that
/// closes the port through its handle.
#[test]
fn port_timer_does_not_fire_after_a_reactor_timer_stopped_its_port() {
    run_ops(
        &[
            Op::Open,
            Op::CallLater {
                ms: 0,
                close: Some(0),
            },
            Op::CallLaterOn {
                port: 0,
                ms: 0,
                stop: false,
            },
            Op::Turn,
        ],
        Strict {
            strict_fire: true,
            ..Strict::default()
        },
    );
}

/// And by an earlier port timer of the same port calling `t.stop_listening()`.
#[test]
fn port_timer_does_not_fire_after_an_earlier_port_timer_stopped_its_port() {
    run_ops(
        &[
            Op::Open,
            Op::CallLaterOn {
                port: 0,
                ms: 0,
                stop: true,
            },
            Op::CallLaterOn {
                port: 0,
                ms: 0,
                stop: false,
            },
            Op::Turn,
        ],
        Strict {
            strict_fire: true,
            ..Strict::default()
        },
    );
}
