//! Flood (crate docs, "Fair" and "Nothing is lost silently"): one port is blasted with
//! datagrams at full speed for 5 s while a second port of the same reactor plays
//! ping-pong with a client thread and a reactor-level 10 ms `call_every` runs.
//!
//! What is asserted holds whatever the scheduler does, so it is counted in reactor turns
//! rather than milliseconds: the test drives the reactor itself, one `iterate` per turn,
//! numbering the turns in a shared counter that the protocols and the timer read.
//!
//! - The flooded port never delivers more than its read budget in one turn, and the
//!   burst queued before the first turn makes it reach the budget.
//! - The ping port is served in every turn in which it had data: a ping that the pinger
//!   saw in the port's queue while turn `j` was the latest to begin is delivered no later
//!   than turn `j + 2` (see [`spawn_pinger`]).
//! - The timer fires in the first turn that begins after its deadline, if not before,
//!   and never early.
//! - Every datagram handed to the kernel is delivered or counted as dropped, by the
//!   kernel (`kernel_dropped`) or by twine (`truncated`, `send_dropped`), exactly, and
//!   every echo reaches the client.
//! - Memory does not grow: RSS less than 1 MiB more at the end than after a warm-up.
//!
//! Round-trip times and timer slips are printed, not asserted, beside controls measured in
//! the same run: a plain thread echoing on a socket of its own (the same client pings
//! both) and a plain thread sleeping from tick to tick, both on the reactor's CPU, so that
//! a slow figure can be told apart from a busy machine.
//!
//! The setup: the flood thread sends with a blocking `send_to` in a tight loop (64 to
//! 1400 bytes, each with its sequence number); it starts before the reactor's first turn,
//! so the port's queue overflows (kernel drops to account for) and the first turns spend
//! their read budgets. The ping thread keeps one ping in flight, one every millisecond.
//! The reactor and the flood thread get a CPU each when there are two.
//!
//! `flood_soak` (ignored) runs the same for `TWINE_SOAK_SECS` seconds (an hour by default)
//! and prints a summary line every minute and at the end, with the same checks at the end:
//!
//! ```sh
//! TWINE_SOAK_SECS=3600 cargo test --test flood flood_soak -- --ignored --nocapture
//! ```

mod util;

use std::cell::RefCell;
use std::collections::HashMap;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread::{self, JoinHandle};
use std::time::{Duration, Instant};

use twine::{DatagramProtocol, ListeningPort, PortStats, Reactor, UdpTransport};
use util::procfs::{self_status_kib, softnet_dropped};
use util::{DEADLINE, loopback, reactor};

/// How long the normal test floods.
const FLOOD: Duration = Duration::from_secs(5);
/// Flood before the first RSS reading, so that lazy allocations (the reactor's batches,
/// the kernel's socket buffers, the histograms' pages) are done.
const WARM_UP: Duration = Duration::from_millis(500);
/// The repeating timer's interval.
const TICK: Duration = Duration::from_millis(10);
/// The longest one `iterate` may sleep when nothing happens.
const TURN_TIMEOUT: Duration = Duration::from_millis(50);

const RSS_GROWTH_BOUND_KIB: u64 = 1024;

/// The flood port's `SO_RCVBUF` request.
const FLOOD_RECV_BUFFER: usize = 4 << 20;
/// The flood port's read budget, in datagrams (its byte budget is set out of reach). Small
/// enough that the burst queued before the first turn exceeds it on any kernel: even the
/// smallest default receive buffer holds more than a hundred datagrams of 1400 bytes.
const FLOOD_BUDGET: u64 = 64;
const FLOOD_BUDGET_BYTES: usize = 1 << 20;
/// One ping every this long (one in flight at a time).
const PING_EVERY: Duration = Duration::from_millis(1);
/// Datagrams the flood thread sends before the reactor turns at all: more than the flood
/// port's receive buffer holds.
const BURST: u64 = 20_000;
/// Flood datagram lengths: 64..=1400 bytes.
const MIN_LEN: usize = 64;
const MAX_LEN: usize = 1400;
/// Failures of one kind kept for the message (their count is exact).
const KEPT_FAILURES: usize = 10;

/// The number of the reactor turn in progress, or about to begin: the reactor thread
/// bumps it before each `iterate`; the protocols and the timer read it to record the turn
/// they ran in, and the pinger to bound the turn its ping must be delivered in.
type TurnCounter = Arc<AtomicU64>;

// ----- measuring ------------------------------------------------------------------------

/// A fixed-size histogram of durations (10 µs buckets up to 100 ms, one overflow bucket,
/// and the exact maximum): constant memory, so that an hour of samples does not show up
/// as RSS growth.
struct Histogram {
    buckets: Vec<u32>,
    overflow: u64,
    count: u64,
    max: Duration,
}

const BUCKET: Duration = Duration::from_micros(10);
const BUCKETS: usize = 10_000;

impl Histogram {
    fn new() -> Self {
        let mut h = Histogram {
            buckets: vec![0; BUCKETS],
            overflow: 0,
            count: 0,
            max: Duration::ZERO,
        };
        // Zeroed memory may not be resident yet: touch it now, before RSS is first read.
        h.clear();
        h
    }

    fn clear(&mut self) {
        self.buckets.fill(0);
        self.overflow = 0;
        self.count = 0;
        self.max = Duration::ZERO;
    }

    fn record(&mut self, d: Duration) {
        let i = (d.as_nanos() / BUCKET.as_nanos()) as usize;
        match self.buckets.get_mut(i) {
            Some(b) => *b = b.saturating_add(1),
            None => self.overflow += 1,
        }
        self.count += 1;
        self.max = self.max.max(d);
    }

    /// The `q`-quantile (0..=1), as the upper edge of its bucket (so never under the
    /// true value); the maximum if it falls in the overflow bucket; zero when empty.
    fn quantile(&self, q: f64) -> Duration {
        if self.count == 0 {
            return Duration::ZERO;
        }
        let rank = ((q * self.count as f64).ceil() as u64).max(1);
        let mut seen = 0;
        for (i, &n) in self.buckets.iter().enumerate() {
            seen += u64::from(n);
            if seen >= rank {
                return (BUCKET * (i as u32 + 1)).min(self.max);
            }
        }
        self.max
    }
}

fn show(d: Duration) -> String {
    format!("{:.3} ms", d.as_secs_f64() * 1e3)
}

/// This process's resident set, in KiB: all of it (`VmRSS`), and its anonymous part
/// (`RssAnon`: heap and stacks, where a leak would show; the rest is mostly code and
/// libraries paged in as they are first run).
fn rss_kib() -> (u64, u64) {
    let [rss, anon] = self_status_kib(["VmRSS:", "RssAnon:"]);
    (rss, anon)
}

/// UDP's `InErrors` and `RcvbufErrors` from `/proc/net/snmp` (the network namespace's;
/// a receive-buffer drop counts in both, and in the socket's own drop count).
fn udp_snmp() -> (u64, u64) {
    let text = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut rows = text.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (rows.next(), rows.next()) else {
        return (0, 0);
    };
    let field = |name: &str| {
        names
            .split_whitespace()
            .position(|n| n == name)
            .and_then(|i| values.split_whitespace().nth(i))
            .and_then(|v| v.parse().ok())
            .unwrap_or(0)
    };
    (field("InErrors"), field("RcvbufErrors"))
}

/// CPU time in clock ticks (`/proc/stat`, USER_HZ): the machine's busy time (every CPU,
/// everything but idle, I/O wait and steal), the time the hypervisor took its CPUs away
/// (steal), and this process's own (`/proc/self/stat`, user + system).
fn cpu_ticks() -> (u64, u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let cpu: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .map(|n| n.parse().unwrap_or(0))
        .collect();
    let field = |i: usize| cpu.get(i).copied().unwrap_or(0);
    // user nice system idle iowait irq softirq steal
    let busy = field(0) + field(1) + field(2) + field(5) + field(6);
    let own = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // The fields after the command (which is in parentheses and may hold spaces):
    // state is field 3, utime 14, stime 15.
    let after = own.rsplit_once(')').map_or("", |(_, rest)| rest);
    let mut fields = after.split_whitespace().skip(11);
    let utime: u64 = fields.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    let stime: u64 = fields.next().and_then(|n| n.parse().ok()).unwrap_or(0);
    (busy, field(7), utime + stime)
}

/// What the kernel's own counters say happened between two readings.
#[derive(Clone, Copy)]
struct KernelCounters {
    softnet_dropped: u64,
    udp_in_errors: u64,
    udp_rcvbuf_errors: u64,
    /// `cpu_ticks`.
    busy: u64,
    steal: u64,
    own: u64,
}

impl KernelCounters {
    fn now() -> Self {
        let (udp_in_errors, udp_rcvbuf_errors) = udp_snmp();
        let (busy, steal, own) = cpu_ticks();
        KernelCounters {
            softnet_dropped: softnet_dropped(),
            udp_in_errors,
            udp_rcvbuf_errors,
            busy,
            steal,
            own,
        }
    }

    fn since(self, before: KernelCounters) -> KernelCounters {
        KernelCounters {
            softnet_dropped: self.softnet_dropped.wrapping_sub(before.softnet_dropped),
            udp_in_errors: self.udp_in_errors.wrapping_sub(before.udp_in_errors),
            udp_rcvbuf_errors: self
                .udp_rcvbuf_errors
                .wrapping_sub(before.udp_rcvbuf_errors),
            busy: self.busy.wrapping_sub(before.busy),
            steal: self.steal.wrapping_sub(before.steal),
            own: self.own.wrapping_sub(before.own),
        }
    }
}

/// Clock ticks as seconds (USER_HZ is 100 on Linux).
fn ticks(n: u64) -> String {
    format!("{:.2} s", n as f64 / 100.0)
}

/// The calling thread's scheduling record: time on a CPU, time spent runnable but waiting
/// for one (`/proc/thread-self/schedstat`), and involuntary context switches.
#[derive(Clone, Copy, Default)]
struct Sched {
    on_cpu: Duration,
    waiting: Duration,
    preempted: u64,
}

impl Sched {
    fn now() -> Self {
        let stat = std::fs::read_to_string("/proc/thread-self/schedstat").unwrap_or_default();
        let mut ns = stat.split_whitespace().map(|n| n.parse().unwrap_or(0));
        let (on_cpu, waiting) = (ns.next().unwrap_or(0), ns.next().unwrap_or(0));
        let status = std::fs::read_to_string("/proc/thread-self/status").unwrap_or_default();
        let preempted = status
            .lines()
            .find_map(|l| l.strip_prefix("nonvoluntary_ctxt_switches:"))
            .and_then(|v| v.trim().parse().ok())
            .unwrap_or(0);
        Sched {
            on_cpu: Duration::from_nanos(on_cpu),
            waiting: Duration::from_nanos(waiting),
            preempted,
        }
    }

    fn since(self, before: Sched) -> Sched {
        Sched {
            on_cpu: self.on_cpu.saturating_sub(before.on_cpu),
            waiting: self.waiting.saturating_sub(before.waiting),
            preempted: self.preempted.saturating_sub(before.preempted),
        }
    }
}

// ----- the flood ------------------------------------------------------------------------

/// The length of flood datagram `seq`: spread over 64..=1400 bytes.
fn flood_len(seq: u64) -> usize {
    MIN_LEN + (seq.wrapping_mul(7919) % (MAX_LEN - MIN_LEN + 1) as u64) as usize
}

/// Each flood datagram starts with its sequence number and its length (so that a datagram
/// cut short or mixed up is seen), then a fixed pattern.
fn fill_header(buf: &mut [u8], seq: u64) {
    buf[..8].copy_from_slice(&seq.to_le_bytes());
    let len = buf.len() as u16;
    buf[8..10].copy_from_slice(&len.to_le_bytes());
}

/// The flood port's protocol: counts and checks, never answers (the flood is one-way).
#[derive(Debug, Default)]
struct FloodSink {
    received: u64,
    /// The next sequence number expected (loopback from one socket keeps the order).
    next: u64,
    /// Sequence numbers skipped over: datagrams that never arrived.
    missing: u64,
    /// Datagrams older than one already seen (reordered or duplicated).
    out_of_order: u64,
    /// Datagrams whose header does not match their length or pattern.
    malformed: u64,
    turn: TurnCounter,
    /// The turn of the datagrams counted in `in_turn`.
    current_turn: u64,
    in_turn: u64,
    /// The most datagrams delivered in one turn.
    most_in_a_turn: u64,
    /// Turns in which the port was served, in which it delivered exactly its budget, and
    /// in which it delivered more.
    turns_served: u64,
    turns_at_budget: u64,
    turns_over_budget: u64,
}

impl FloodSink {
    fn new(turn: TurnCounter) -> Self {
        FloodSink {
            turn,
            ..FloodSink::default()
        }
    }

    /// Counts one datagram in the turn it was delivered in.
    fn count_in_turn(&mut self) {
        let now = self.turn.load(Ordering::SeqCst);
        if now != self.current_turn {
            self.current_turn = now;
            self.in_turn = 0;
            self.turns_served += 1;
        }
        self.in_turn += 1;
        self.most_in_a_turn = self.most_in_a_turn.max(self.in_turn);
        if self.in_turn == FLOOD_BUDGET {
            self.turns_at_budget += 1;
        } else if self.in_turn == FLOOD_BUDGET + 1 {
            self.turns_over_budget += 1;
        }
    }
}

impl DatagramProtocol for FloodSink {
    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, data: &[u8], _: SocketAddr) {
        self.received += 1;
        self.count_in_turn();
        let header = (data.len() >= 10)
            .then(|| {
                let seq = u64::from_le_bytes(data[..8].try_into().expect("8 bytes"));
                let len = u16::from_le_bytes([data[8], data[9]]);
                (seq, usize::from(len))
            })
            .filter(|&(seq, len)| {
                len == data.len() && len == flood_len(seq) && data[10..] == FILL[10..len]
            });
        let Some((seq, _)) = header else {
            self.malformed += 1;
            return;
        };
        if seq < self.next {
            self.out_of_order += 1;
            return;
        }
        self.missing += seq - self.next;
        self.next = seq + 1;
    }
}

/// What follows the header of every flood datagram.
const PATTERN: u8 = 0xA5;
static FILL: [u8; MAX_LEN] = [PATTERN; MAX_LEN];

/// What the flood thread did.
#[derive(Debug, Default)]
struct FloodSent {
    /// Datagrams `send_to` accepted (handed to the kernel).
    sent: u64,
    /// `send_to` refusals, not sent: ENOBUFS, EAGAIN, anything else.
    enobufs: u64,
    eagain: u64,
    other_errors: u64,
}

/// Sends flood datagrams to `to` as fast as `send_to` takes them until `stop`, counting
/// each accepted one in `sent` as it goes (for the burst and the soak's progress lines).
fn spawn_flood(
    to: SocketAddr,
    go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    cpu: Option<usize>,
) -> JoinHandle<FloodSent> {
    thread::Builder::new()
        .name("flood".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                let _ = twine::bench_support::pin_to_cpu(cpu);
            }
            let socket = UdpSocket::bind("127.0.0.1:0").expect("bind flood sender");
            let mut buf = [PATTERN; MAX_LEN];
            let mut out = FloodSent::default();
            while !go.load(Ordering::Acquire) {
                thread::yield_now();
            }
            // The sequence number of the next datagram: one per accepted send, so that
            // the receiver's gaps are datagrams lost after `send_to` took them.
            let mut seq = 0u64;
            while !stop.load(Ordering::Relaxed) {
                let datagram = &mut buf[..flood_len(seq)];
                fill_header(datagram, seq);
                match socket.send_to(datagram, to) {
                    Ok(_) => {
                        seq += 1;
                        sent.store(seq, Ordering::Relaxed);
                    }
                    Err(e) if e.raw_os_error() == Some(libc::ENOBUFS) => out.enobufs += 1,
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => out.eagain += 1,
                    Err(_) => out.other_errors += 1,
                }
            }
            out.sent = seq;
            out
        })
        .expect("spawn flood thread")
}

// ----- ping-pong ------------------------------------------------------------------------

/// The ping port's protocol: echoes every ping with the number of the turn it was
/// delivered in appended, counting writes refused.
#[derive(Debug, Default)]
struct Echo {
    turn: TurnCounter,
    write_errors: u64,
}

impl DatagramProtocol for Echo {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        let mut reply = [0u8; 16];
        let reply: &[u8] = if data.len() == 8 {
            reply[..8].copy_from_slice(data);
            reply[8..].copy_from_slice(&self.turn.load(Ordering::SeqCst).to_le_bytes());
            &reply
        } else {
            data
        };
        if t.write(reply, from).is_err() {
            self.write_errors += 1;
        }
    }
}

/// What the ping client saw.
struct Pings {
    sent: u64,
    /// Echoed within [`DEADLINE`]: their round trips are in `rtt`.
    answered: u64,
    /// Not echoed within [`DEADLINE`] (their echoes, if they come, count as `late`).
    lost: u64,
    /// Echoes that came after their ping was given up, or were not for the ping in
    /// flight, including those read when the client stopped.
    late: u64,
    rtt: Histogram,
    /// Pings seen in the port's queue before the reactor delivered them (the others were
    /// delivered before the pinger looked), and in which turn, counted from the latest
    /// turn to begin when they were seen (`j`): in `j` or earlier (the reactor took the
    /// datagram while the pinger was reading the counter), in `j + 1`, in `j + 2`.
    seen_queued: u64,
    delivered_after: [u64; 3],
    /// Pings delivered later than their bound, or in a turn that ended before they were
    /// sent: the count, and the first few.
    turn_failures: u64,
    turn_failure_notes: Vec<String>,
    /// The same client's pings to the plain echo thread, one after each ping to twine.
    control_rtt: Histogram,
    control_lost: u64,
}

impl Pings {
    fn fail(&mut self, note: String) {
        self.turn_failures += 1;
        if self.turn_failure_notes.len() < KEPT_FAILURES {
            self.turn_failure_notes.push(note);
        }
    }
}

/// What the pinger knows of a ping in flight for the turn checks.
struct InFlight {
    /// The latest turn to begin before it was sent.
    before: u64,
    /// The latest turn to begin when it was seen in the port's queue, if it was.
    seen: Option<u64>,
}

/// Checks a ping's echo against what the pinger knew of it: delivered no earlier than the
/// turn in progress when it was sent, and, if it was seen in the port's queue while turn
/// `j` was the latest to begin, no later than turn `j + 2`.
///
/// Why `j + 2`, whatever the scheduler does: the turn counter is bumped before a turn
/// polls, so turn `j + 1` polls after the pinger read `j`, which was after it saw the ping
/// queued. The kernel raises a socket's readiness right after queueing a datagram, in the
/// same system call, so turn `j + 1`'s poll may just miss that; turn `j + 2` polls after
/// turn `j + 1` has run to its end, and the readiness is raised by then. A turn dispatches
/// every port that its poll reports, so the ping port is served in that turn.
fn check_echo(pings: &mut Pings, seq: u64, delivered: u64, flight: &InFlight) {
    if delivered < flight.before {
        pings.fail(format!(
            "ping {seq} delivered in turn {delivered}, sent after turn {} began",
            flight.before
        ));
    }
    if let Some(seen) = flight.seen {
        pings.seen_queued += 1;
        match delivered.checked_sub(seen) {
            Some(after @ 0..=2) => pings.delivered_after[after as usize] += 1,
            Some(_) => pings.fail(format!(
                "ping {seq} seen queued while turn {seen} was the latest to begin, \
                 delivered in turn {delivered}"
            )),
            // Delivered in a turn before `j`: the reactor took the datagram between the
            // peek and the pinger's reading of the counter.
            None => pings.delivered_after[0] += 1,
        }
    }
}

/// An echo the pinger read: whether it is that of `in_flight`'s ping (then checked with
/// what the pinger knew of it); otherwise it counts as late, and is checked if it is the
/// echo of a ping given up on.
fn take_echo(
    pings: &mut Pings,
    given_up: &mut HashMap<u64, InFlight>,
    data: &[u8],
    in_flight: Option<(u64, &InFlight)>,
) -> bool {
    let word = |range: std::ops::Range<usize>| {
        data.get(range)
            .and_then(|b| b.try_into().ok())
            .map(u64::from_le_bytes)
    };
    let (Some(got), Some(delivered)) = (word(0..8), word(8..16)) else {
        pings.late += 1;
        return false;
    };
    if let Some((seq, flight)) = in_flight
        && got == seq
    {
        check_echo(pings, seq, delivered, flight);
        return true;
    }
    pings.late += 1;
    if let Some(flight) = given_up.remove(&got) {
        check_echo(pings, got, delivered, &flight);
    }
    false
}

/// The pinger's two ends: a client socket connected to the ping port, and a view of the
/// ping port's own socket (the same socket the reactor reads, shared by `adopt_socket`),
/// which it only peeks at, to see when its ping has reached the port's queue.
struct PingEnds {
    to: SocketAddr,
    port_view: UdpSocket,
    control: SocketAddr,
}

/// One ping in flight at a time to the ping port, one every `every`, each followed by one
/// to the control echo thread at `ends.control`; each echo waited for at most
/// [`DEADLINE`]. While waiting for the echo it peeks at the port's queue until it sees its
/// ping there (then reads the turn counter: the bound of [`check_echo`]) or the echo is
/// back. Always sends at least one ping, even if `stop` is set already.
fn spawn_pinger(
    ends: PingEnds,
    turn: TurnCounter,
    go: Arc<AtomicBool>,
    stop: Arc<AtomicBool>,
    sent: Arc<AtomicU64>,
    cpu: Option<usize>,
    every: Duration,
) -> JoinHandle<Pings> {
    thread::Builder::new()
        .name("pinger".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                let _ = twine::bench_support::pin_to_cpu(cpu);
            }
            use mio::net::UdpSocket as MioSocket;
            use mio::{Events, Interest, Poll, Token};
            let mut poll = Poll::new().expect("pinger poll");
            let mut events = Events::with_capacity(8);
            let mut client =
                MioSocket::bind("127.0.0.1:0".parse().expect("address")).expect("bind pinger");
            client.connect(ends.to).expect("connect pinger");
            // The view shares the port's open file, which the reactor made non-blocking:
            // peeking never blocks and never takes the datagram.
            let mut view = MioSocket::from_std(ends.port_view);
            poll.registry()
                .register(&mut client, Token(0), Interest::READABLE)
                .expect("register the pinger's socket");
            poll.registry()
                .register(&mut view, Token(1), Interest::READABLE)
                .expect("register the ping port's view");
            let control = UdpSocket::bind("127.0.0.1:0").expect("bind control client");
            control
                .connect(ends.control)
                .expect("connect control client");
            control
                .set_read_timeout(Some(DEADLINE))
                .expect("read timeout");
            let mut pings = Pings {
                sent: 0,
                answered: 0,
                lost: 0,
                late: 0,
                rtt: Histogram::new(),
                seen_queued: 0,
                delivered_after: [0; 3],
                turn_failures: 0,
                turn_failure_notes: Vec::new(),
                control_rtt: Histogram::new(),
                control_lost: 0,
            };
            // Pings given up on: their echoes may still come, and are checked then.
            let mut given_up: HashMap<u64, InFlight> = HashMap::new();
            let mut buf = [0u8; 64];
            let mut peeked = [0u8; 64];
            while !go.load(Ordering::Acquire) {
                thread::yield_now();
            }
            let began = Instant::now();
            loop {
                let seq = pings.sent;
                let due = began + every * u32::try_from(seq).unwrap_or(u32::MAX);
                thread::sleep(due.saturating_duration_since(Instant::now()));
                let mut flight = InFlight {
                    before: turn.load(Ordering::SeqCst),
                    seen: None,
                };
                let sent_at = Instant::now();
                client.send(&seq.to_le_bytes()).expect("send ping");
                pings.sent += 1;
                sent.store(pings.sent, Ordering::Relaxed);
                let deadline = sent_at + DEADLINE;
                let mut answered = false;
                while !answered {
                    if flight.seen.is_none()
                        && let Ok((n, _)) = view.peek_from(&mut peeked)
                        && peeked[..n] == seq.to_le_bytes()
                    {
                        flight.seen = Some(turn.load(Ordering::SeqCst));
                    }
                    match client.recv(&mut buf) {
                        Ok(n) => {
                            answered = take_echo(
                                &mut pings,
                                &mut given_up,
                                &buf[..n],
                                Some((seq, &flight)),
                            );
                            if answered {
                                pings.rtt.record(sent_at.elapsed());
                                pings.answered += 1;
                            }
                            continue;
                        }
                        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                        Err(e) => panic!("ping client recv: {e}"),
                    }
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        pings.lost += 1;
                        given_up.insert(seq, flight);
                        break;
                    }
                    // Woken by the echo, or by a datagram reaching the port's queue (edge
                    // triggered: one that came since the last peek wakes it at once).
                    match poll.poll(&mut events, Some(left)) {
                        Ok(()) => {}
                        Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                        Err(e) => panic!("pinger poll: {e}"),
                    }
                }
                // The control: the same ping to the plain echo thread.
                let sent_at = Instant::now();
                control.send(&seq.to_le_bytes()).expect("send control ping");
                loop {
                    match control.recv(&mut buf) {
                        Ok(8) if buf[..8] == seq.to_le_bytes() => {
                            pings.control_rtt.record(sent_at.elapsed());
                            break;
                        }
                        Ok(_) => {}
                        Err(_) => {
                            pings.control_lost += 1;
                            break;
                        }
                    }
                }
                if stop.load(Ordering::Relaxed) {
                    break;
                }
            }
            // Echoes of pings given up on may still be on their way: wait for them (at
            // most DEADLINE), so that every echo the port sent is seen by the client.
            let deadline = Instant::now() + DEADLINE;
            while !given_up.is_empty() {
                match client.recv(&mut buf) {
                    Ok(n) => {
                        take_echo(&mut pings, &mut given_up, &buf[..n], None);
                        continue;
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {}
                    Err(e) => panic!("ping client recv: {e}"),
                }
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    break;
                }
                let _ = poll.poll(&mut events, Some(left));
            }
            pings
        })
        .expect("spawn ping thread")
}

/// The control for the round trips: a plain thread echoing on a socket of its own with
/// blocking reads, until `stop` (checked between reads, at least every 50 ms).
fn spawn_control_echo(stop: Arc<AtomicBool>, cpu: Option<usize>) -> (SocketAddr, JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind control echo");
    let addr = socket.local_addr().expect("control echo address");
    socket
        .set_read_timeout(Some(Duration::from_millis(50)))
        .expect("read timeout");
    let handle = thread::Builder::new()
        .name("control-echo".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                let _ = twine::bench_support::pin_to_cpu(cpu);
            }
            let mut buf = [0u8; 64];
            while !stop.load(Ordering::Relaxed) {
                if let Ok((n, from)) = socket.recv_from(&mut buf) {
                    let _ = socket.send_to(&buf[..n], from);
                }
            }
        })
        .expect("spawn control echo thread");
    (addr, handle)
}

// ----- the timer ------------------------------------------------------------------------

/// The repeating timer's record: slip of each run from the tick it served, and the turn
/// it ran in.
struct Slips {
    /// When `call_every` was called: tick `k` is due at `start + k * TICK`.
    start: Instant,
    /// The tick the last run served (0: none yet) and when it ran.
    last_tick: u64,
    last_run: Instant,
    /// Ticks skipped (the timer was more than a tick late: "missed runs are skipped").
    skipped: u64,
    /// Runs that came before their tick (never allowed).
    early: u64,
    measuring: bool,
    slip: Histogram,
    turn: TurnCounter,
    /// The turn the last run ran in.
    fired_in: u64,
    /// A time by which the next run is surely due: the reactor schedules it at the first
    /// tick after its own clock reading when this run fired, which was at or before this
    /// run's own reading (`last_run`), so at most one tick after that.
    due_by: Instant,
    /// Runs that had come due (`due_by` passed) before a turn began, and fired in that
    /// turn as they must; turns that began with the run due and ended without it.
    due_at_turn_start: u64,
    missed_turns: u64,
    missed_notes: Vec<String>,
}

impl Slips {
    fn new(turn: TurnCounter) -> Self {
        let now = Instant::now();
        Slips {
            start: now,
            last_tick: 0,
            last_run: now,
            skipped: 0,
            early: 0,
            measuring: true,
            slip: Histogram::new(),
            turn,
            fired_in: 0,
            due_by: now + TICK,
            due_at_turn_start: 0,
            missed_turns: 0,
            missed_notes: Vec::new(),
        }
    }

    fn tick(&self, k: u64) -> Instant {
        self.start + TICK * u32::try_from(k).expect("tick index")
    }

    /// The tick index of `at`: the latest tick at or before it.
    fn index(&self, at: Instant) -> u64 {
        (at.duration_since(self.start).as_nanos() / TICK.as_nanos()) as u64
    }

    /// A run at `now`. `call_every` schedules the next run at the first tick after the
    /// reactor's clock reading when the previous run fired (which is at or before that
    /// run's own clock reading, `last_run`): so the tick this run serves is the first one
    /// after `last_run`, unless a tick fell between the reactor's reading and the
    /// closure's, in which case it is that one (the latest at or before `now`).
    fn run(&mut self, now: Instant) {
        let mut served = (self.index(self.last_run) + 1).max(self.last_tick + 1);
        if self.tick(served) > now {
            let latest = self.index(now);
            if latest > self.last_tick {
                served = latest;
            } else {
                self.early += 1;
            }
        }
        if self.measuring {
            self.skipped += served - self.last_tick - 1;
            self.slip
                .record(now.saturating_duration_since(self.tick(served)));
        }
        self.last_tick = served;
        self.last_run = now;
        self.fired_in = self.turn.load(Ordering::SeqCst);
        self.due_by = now + TICK;
    }
}

/// The control for the timer slips: a plain thread sleeping from tick to tick (`TICK`
/// apart, missed ticks skipped as `call_every` does) until `stop`, recording how late
/// each wake-up is.
fn spawn_control_sleeper(stop: Arc<AtomicBool>, cpu: Option<usize>) -> JoinHandle<Histogram> {
    thread::Builder::new()
        .name("control-sleep".into())
        .spawn(move || {
            if let Some(cpu) = cpu {
                let _ = twine::bench_support::pin_to_cpu(cpu);
            }
            let mut slip = Histogram::new();
            let start = Instant::now();
            let mut k = 1u32;
            while !stop.load(Ordering::Relaxed) {
                let due = start + TICK * k;
                thread::sleep(due.saturating_duration_since(Instant::now()));
                let now = Instant::now();
                slip.record(now.saturating_duration_since(due));
                let latest = now.duration_since(start).as_nanos() / TICK.as_nanos();
                k = (k + 1).max(u32::try_from(latest).unwrap_or(u32::MAX) + 1);
            }
            slip
        })
        .expect("spawn control sleep thread")
}

// ----- the run --------------------------------------------------------------------------

struct Config {
    flood: Duration,
    /// Print a progress line this often (the soak).
    report_every: Option<Duration>,
    /// CPUs for the reactor, the flood thread and the ping thread.
    pin: [Option<usize>; 3],
    ping_every: Duration,
}

struct Outcome {
    /// CPUs of the reactor, flood and ping threads.
    pin: [Option<usize>; 3],
    secs: f64,
    flood: FloodSent,
    sink: FloodSink,
    flood_stats: PortStats,
    /// `Reactor::port_stats` for the flood port, beside `flood_stats` (from
    /// `UdpTransport::stats`, which reads `SO_MEMINFO` too).
    flood_port_stats: PortStats,
    pings: Pings,
    echo: Echo,
    ping_stats: PortStats,
    slips: Slips,
    /// The plain sleeping thread's slips.
    control_slip: Histogram,
    rss_start: u64,
    rss_end: u64,
    /// `RssAnon` at the start and the end.
    anon: (u64, u64),
    kernel: KernelCounters,
    /// The reactor thread's scheduling after the warm-up.
    sched: Sched,
    /// The reactor's turns after the warm-up, wall-clock time from one `iterate` to the
    /// next: p50, p99, max and count.
    turns: (Duration, Duration, Duration, u64),
    /// Every turn the test ran (warm-up and drain included).
    all_turns: u64,
}

impl Outcome {
    /// Datagrams delivered to the protocols (flood and ping ports).
    fn received(&self) -> u64 {
        self.flood_stats.datagrams_received + self.ping_stats.datagrams_received
    }

    /// Datagrams handed to the kernel for the two ports (flood and pings).
    fn sent(&self) -> u64 {
        self.flood.sent + self.pings.sent
    }

    fn kernel_dropped(&self) -> u64 {
        self.flood_stats.kernel_dropped + self.ping_stats.kernel_dropped
    }

    /// Dropped by twine itself: too long for the receive buffer, or refused by the ping
    /// port's send queue.
    fn framework_dropped(&self) -> u64 {
        self.flood_stats.truncated
            + self.ping_stats.truncated
            + self.flood_stats.send_dropped
            + self.ping_stats.send_dropped
    }

    fn summary(&self) -> String {
        summary_line(
            self.secs,
            self.received(),
            self.sent(),
            self.kernel_dropped(),
            self.framework_dropped(),
            self.rss_start,
            self.rss_end,
        )
    }

    /// The milliseconds, beside their controls from the same run: printed, never asserted
    /// (they measure the machine as much as twine).
    fn figures(&self) -> String {
        let ratio = |a: Duration, b: Duration| {
            if b.is_zero() {
                "-".to_owned()
            } else {
                format!("{:.1}x", a.as_secs_f64() / b.as_secs_f64())
            }
        };
        let line = |what: &str, twine: &Histogram, control: &Histogram, name: &str| {
            format!(
                "{what}: twine p50 {} p99 {} max {} ({} samples); {name} p50 {} p99 {} max {} \
                 ({} samples); twine/control p50 {} p99 {}",
                show(twine.quantile(0.5)),
                show(twine.quantile(0.99)),
                show(twine.max),
                twine.count,
                show(control.quantile(0.5)),
                show(control.quantile(0.99)),
                show(control.max),
                control.count,
                ratio(twine.quantile(0.5), control.quantile(0.5)),
                ratio(twine.quantile(0.99), control.quantile(0.99)),
            )
        };
        format!(
            "figures (printed, not asserted):\n{}\n{}",
            line(
                "ping round trip",
                &self.pings.rtt,
                &self.pings.control_rtt,
                "plain echo thread"
            ),
            line(
                "timer slip",
                &self.slips.slip,
                &self.control_slip,
                "plain sleeping thread"
            ),
        )
    }

    fn details(&self) -> String {
        let slip = &self.slips.slip;
        let cpu = |c: Option<usize>| c.map_or("unpinned".to_owned(), |c| format!("CPU {c}"));
        let p = &self.pings;
        format!(
            "threads: reactor {}, flood {}, pings {}\n\
             flood: sent {} (refused: {} ENOBUFS, {} EAGAIN, {} other), received {} \
             ({:.0}/s), kernel dropped {} (Reactor::port_stats says {}), truncated {}, \
             missing by sequence {}, out of order {}, malformed {}\n\
             flood port turns: served in {} of {} turns, at most {} datagrams in one \
             (budget {FLOOD_BUDGET}), at the budget in {}, over it in {}\n\
             ping: sent {}, answered {}, lost {}, late {}; port received {}, echoed {}, \
             kernel dropped {}, send dropped {}, send errors {}, write errors {}; \
             control pings lost {}\n\
             ping turns: {} seen queued before delivery (j: the latest turn to begin \
             then), delivered in turn j or before / j+1 / j+2: {:?}; {} failures {:?}\n\
             timer: {} runs, {} due when a turn began (fired in it), {} turns that began \
             with it due and ended without it {:?}; slip median {} p99 {} max {}, \
             {} ticks skipped, {} early\n\
             rss: start {} KiB end {} KiB growth {} KiB (anonymous: start {} KiB end {} KiB)\n\
             kernel: softnet dropped {}, UDP InErrors {}, RcvbufErrors {} (system-wide)\n\
             cpu after the warm-up: machine busy {} (this process {}, others about \
             {}), stolen by the hypervisor {}\n\
             reactor thread after the warm-up: {} on a CPU, {} runnable but waiting for one, \
             preempted {} times; turns: p50 {} p99 {} max {} ({} turns)",
            cpu(self.pin[0]),
            cpu(self.pin[1]),
            cpu(self.pin[2]),
            self.flood.sent,
            self.flood.enobufs,
            self.flood.eagain,
            self.flood.other_errors,
            self.flood_stats.datagrams_received,
            self.flood_stats.datagrams_received as f64 / self.secs,
            self.flood_stats.kernel_dropped,
            self.flood_port_stats.kernel_dropped,
            self.flood_stats.truncated,
            self.sink.missing,
            self.sink.out_of_order,
            self.sink.malformed,
            self.sink.turns_served,
            self.all_turns,
            self.sink.most_in_a_turn,
            self.sink.turns_at_budget,
            self.sink.turns_over_budget,
            p.sent,
            p.answered,
            p.lost,
            p.late,
            self.ping_stats.datagrams_received,
            self.ping_stats.datagrams_sent,
            self.ping_stats.kernel_dropped,
            self.ping_stats.send_dropped,
            self.ping_stats.send_errors,
            self.echo.write_errors,
            p.control_lost,
            p.seen_queued,
            p.delivered_after,
            p.turn_failures,
            p.turn_failure_notes,
            slip.count,
            self.slips.due_at_turn_start,
            self.slips.missed_turns,
            self.slips.missed_notes,
            show(slip.quantile(0.5)),
            show(slip.quantile(0.99)),
            show(slip.max),
            self.slips.skipped,
            self.slips.early,
            self.rss_start,
            self.rss_end,
            self.rss_end as i64 - self.rss_start as i64,
            self.anon.0,
            self.anon.1,
            self.kernel.softnet_dropped,
            self.kernel.udp_in_errors,
            self.kernel.udp_rcvbuf_errors,
            ticks(self.kernel.busy),
            ticks(self.kernel.own),
            ticks(self.kernel.busy.saturating_sub(self.kernel.own)),
            ticks(self.kernel.steal),
            show(self.sched.on_cpu),
            show(self.sched.waiting),
            self.sched.preempted,
            show(self.turns.0),
            show(self.turns.1),
            show(self.turns.2),
            self.turns.3,
        )
    }
}

fn summary_line(
    secs: f64,
    received: u64,
    sent: u64,
    kernel: u64,
    framework: u64,
    rss_start: u64,
    rss_end: u64,
) -> String {
    format!(
        "soak: {secs:.0}s in {received} out {sent} dropped kernel {kernel} framework \
         {framework} rss start {rss_start} KiB end {rss_end} KiB"
    )
}

fn flood_stats(reactor: &mut Reactor, port: &ListeningPort<FloodSink>) -> PortStats {
    reactor
        .with_port(port, |_, t| t.stats())
        .expect("flood port open")
}

/// Runs the flood on a thread of its own (so that pinning it leaves the test harness's
/// threads alone) and returns what was measured.
fn run_flood(config: Config) -> Outcome {
    thread::Builder::new()
        .name("reactor".into())
        .spawn(move || {
            if let Some(cpu) = config.pin[0] {
                let _ = twine::bench_support::pin_to_cpu(cpu);
            }
            flood_reactor(&config)
        })
        .expect("spawn reactor thread")
        .join()
        .unwrap_or_else(|panic| std::panic::resume_unwind(panic))
}

/// Turns the reactor one `iterate` at a time, numbering the turns, and checks the timer
/// at each: if its run was surely due (`Slips::due_by` passed) before a turn began, that
/// turn runs it (`run_timers` reads the clock after the poll and the dispatch, and the
/// run was scheduled in an earlier turn).
struct Turns {
    turn: TurnCounter,
    slips: Rc<RefCell<Slips>>,
    /// Whether the timer is scheduled (and checked).
    timer_on: bool,
    /// Wall-clock time between turns, recorded while `measuring`.
    durations: Histogram,
    measuring: bool,
    last: Option<Instant>,
}

impl Turns {
    fn one(&mut self, reactor: &mut Reactor) {
        let k = self.turn.fetch_add(1, Ordering::SeqCst) + 1;
        let began = Instant::now();
        if self.measuring
            && let Some(last) = self.last.replace(began)
        {
            self.durations.record(began - last);
        }
        let due = self.timer_on && began >= self.slips.borrow().due_by;
        reactor.iterate(TURN_TIMEOUT).expect("reactor turn");
        if due {
            let mut s = self.slips.borrow_mut();
            if s.fired_in == k {
                s.due_at_turn_start += 1;
            } else {
                s.missed_turns += 1;
                if s.missed_notes.len() < KEPT_FAILURES {
                    let note = format!(
                        "turn {k} began {:?} after the run was surely due, and did not run it \
                         (last run in turn {})",
                        began - s.due_by,
                        s.fired_in
                    );
                    s.missed_notes.push(note);
                }
            }
        }
    }

    /// Turns until `until` (one turn at least).
    fn until(&mut self, reactor: &mut Reactor, until: Instant) {
        loop {
            self.one(reactor);
            if Instant::now() >= until {
                return;
            }
        }
    }
}

fn flood_reactor(config: &Config) -> Outcome {
    let turn = TurnCounter::default();
    let mut reactor = reactor();
    // A large receive buffer (the kernel caps it at `net.core.rmem_max`): a backlog of
    // thousands of datagrams, so that the port's read budget, not the buffer, bounds
    // what one turn reads from it.
    let flood_port = reactor
        .listen_udp_with(
            loopback()
                .recv_buffer_size(FLOOD_RECV_BUFFER)
                .read_budget(FLOOD_BUDGET as usize, FLOOD_BUDGET_BYTES),
            FloodSink::new(turn.clone()),
        )
        .expect("listen flood port");
    // The ping port is adopted from a socket the test keeps: the pinger peeks at it.
    let ping_socket = UdpSocket::bind("127.0.0.1:0").expect("bind ping port");
    let ping_port = reactor
        .adopt_socket(
            &ping_socket,
            Echo {
                turn: turn.clone(),
                write_errors: 0,
            },
        )
        .expect("adopt ping port");

    let flood_go = Arc::new(AtomicBool::new(false));
    let ping_go = Arc::new(AtomicBool::new(false));
    let stop = Arc::new(AtomicBool::new(false));
    let controls_stop = Arc::new(AtomicBool::new(false));
    let sent_so_far = Arc::new(AtomicU64::new(0));
    let pings_so_far = Arc::new(AtomicU64::new(0));
    let flood = spawn_flood(
        flood_port.local_addr(),
        flood_go.clone(),
        stop.clone(),
        sent_so_far.clone(),
        config.pin[1],
    );
    let (control_addr, control_echo) = spawn_control_echo(controls_stop.clone(), config.pin[0]);
    let pinger = spawn_pinger(
        PingEnds {
            to: ping_port.local_addr(),
            port_view: ping_socket,
            control: control_addr,
        },
        turn.clone(),
        ping_go.clone(),
        stop.clone(),
        pings_so_far.clone(),
        config.pin[2],
        config.ping_every,
    );

    // The flood starts before the reactor turns: the port's queue fills up and the
    // kernel drops the rest, so the first turns have a full queue to work through (read
    // budgets spent) and the drop accounting has drops to account for, however fast the
    // reactor is afterwards.
    let kernel_at_start = KernelCounters::now();
    let began = Instant::now();
    flood_go.store(true, Ordering::Release);
    let burst_deadline = began + DEADLINE;
    while sent_so_far.load(Ordering::Relaxed) < BURST {
        assert!(
            Instant::now() < burst_deadline,
            "the flood thread sent {} datagrams in {DEADLINE:?}",
            sent_so_far.load(Ordering::Relaxed)
        );
        thread::sleep(Duration::from_millis(1));
    }

    let slips = Rc::new(RefCell::new(Slips::new(turn.clone())));
    let timer_slips = slips.clone();
    let timer = reactor.call_every(TICK, move |_| timer_slips.borrow_mut().run(Instant::now()));
    {
        // `call_every` read the reactor's clock before this reading: the first run is due
        // one tick after it at the latest.
        let mut s = slips.borrow_mut();
        s.due_by = Instant::now() + TICK;
    }
    let control_sleeper = spawn_control_sleeper(controls_stop.clone(), config.pin[0]);
    ping_go.store(true, Ordering::Release);
    let mut turns = Turns {
        turn: turn.clone(),
        slips: slips.clone(),
        timer_on: true,
        durations: Histogram::new(),
        measuring: false,
        last: None,
    };
    turns.until(&mut reactor, Instant::now() + WARM_UP);
    let (rss_start, anon_start) = rss_kib();
    let cpu_before = KernelCounters::now();
    let sched_before = Sched::now();
    turns.measuring = true;

    let end = began + config.flood;
    let mut next_report = config.report_every.map(|every| began + every);
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        let until = next_report.map_or(end, |r| r.min(end));
        turns.until(&mut reactor, until);
        // (A report due at the end is the final summary's.)
        if let (Some(at), Some(every)) = (next_report, config.report_every)
            && Instant::now() >= at
            && at < end
        {
            let stats = flood_stats(&mut reactor, &flood_port);
            let ping = reactor.port_stats(&ping_port).expect("ping port open");
            println!(
                "{}",
                summary_line(
                    began.elapsed().as_secs_f64(),
                    stats.datagrams_received + ping.datagrams_received,
                    sent_so_far.load(Ordering::Relaxed) + pings_so_far.load(Ordering::Relaxed),
                    stats.kernel_dropped + ping.kernel_dropped,
                    stats.truncated + stats.send_dropped + ping.truncated + ping.send_dropped,
                    rss_start,
                    rss_kib().0,
                )
            );
            next_report = Some(at + every);
            turns.last = None;
        }
    }

    // Stop the senders, keeping the reactor turning until both threads are done (the
    // pinger waits for its last echo), then drain the flood port until every datagram
    // the flood thread sent is delivered or counted as dropped.
    stop.store(true, Ordering::Relaxed);
    slips.borrow_mut().measuring = false;
    turns.measuring = false;
    let secs = began.elapsed().as_secs_f64();
    let sched = Sched::now().since(sched_before);
    let cpu = KernelCounters::now().since(cpu_before);
    let turn_times = {
        let t = &turns.durations;
        (t.quantile(0.5), t.quantile(0.99), t.max, t.count)
    };
    let threads_deadline = Instant::now() + DEADLINE * 3;
    while !(flood.is_finished() && pinger.is_finished()) {
        assert!(
            Instant::now() < threads_deadline,
            "the sender threads did not stop within {:?}",
            DEADLINE * 3
        );
        turns.one(&mut reactor);
    }
    controls_stop.store(true, Ordering::Relaxed);
    let flood_sent = flood.join().expect("flood thread");
    let pings = pinger.join().expect("ping thread");
    let control_slip = control_sleeper.join().expect("control sleep thread");
    control_echo.join().expect("control echo thread");
    // Loopback queues a datagram inside `send_to` (or, rarely, in the kernel's per-CPU
    // backlog a moment later, where it may also be dropped: `softnet_dropped`), so the
    // drain ends once the accounting is complete, or at the deadline, after which the
    // assertions say what is missing.
    let drain_deadline = Instant::now() + DEADLINE;
    loop {
        let s = flood_stats(&mut reactor, &flood_port);
        let accounted = s.datagrams_received + s.kernel_dropped + s.truncated;
        if accounted >= flood_sent.sent || Instant::now() >= drain_deadline {
            break;
        }
        turns.one(&mut reactor);
    }
    reactor.cancel(timer);
    turns.timer_on = false;
    // The network counters over the whole run (the burst included), the CPU's over the
    // measured part (after the warm-up, until the flood stopped).
    let mut kernel = KernelCounters::now().since(kernel_at_start);
    (kernel.busy, kernel.steal, kernel.own) = (cpu.busy, cpu.steal, cpu.own);
    let (rss_end, anon_end) = rss_kib();

    let flood_port_stats = reactor.port_stats(&flood_port).expect("flood port open");
    let flood_stats = flood_stats(&mut reactor, &flood_port);
    let sink = reactor
        .with_port(&flood_port, |p, _| std::mem::take(p))
        .expect("flood port open");
    let echo = reactor
        .with_port(&ping_port, |p, _| std::mem::take(p))
        .expect("ping port open");
    let ping_stats = reactor
        .with_port(&ping_port, |_, t| t.stats())
        .expect("ping port open");
    drop(reactor);
    drop(turns);
    let slips = Rc::try_unwrap(slips)
        .ok()
        .expect("the timer is gone with the reactor")
        .into_inner();
    Outcome {
        pin: config.pin,
        secs,
        flood: flood_sent,
        sink,
        flood_stats,
        flood_port_stats,
        pings,
        echo,
        ping_stats,
        slips,
        control_slip,
        rss_start,
        rss_end,
        anon: (anon_start, anon_end),
        kernel,
        sched,
        turns: turn_times,
        all_turns: turn.load(Ordering::SeqCst),
    }
}

// ----- the checks -----------------------------------------------------------------------

/// Every datagram handed to the kernel is delivered or counted as dropped, exactly; the
/// echoes all come back; memory does not grow.
fn check_accounting_and_memory(o: &Outcome) {
    let f = &o.flood_stats;
    assert_eq!(o.sink.received, f.datagrams_received, "{}", o.details());
    assert_eq!(
        (o.sink.malformed, o.sink.out_of_order),
        (0, 0),
        "every flood datagram arrives whole and in order: {}",
        o.details()
    );
    assert_eq!(f.recv_errors, 0, "{}", o.details());
    assert!(
        f.kernel_dropped > 0,
        "the burst before the first turn overflows the port's queue: {}",
        o.details()
    );
    // Only the per-CPU backlog can drop a loopback datagram where no socket counts it;
    // its counter is system-wide, so it bounds (not equals) what this flood lost there.
    // It is normally zero here: loopback delivery runs in the sender's own `send_to`, so
    // its backlog never holds more than a packet or two.
    let accounted = f.datagrams_received + f.kernel_dropped + f.truncated;
    let unseen = o.flood.sent.saturating_sub(accounted);
    assert!(
        accounted <= o.flood.sent && unseen <= o.kernel.softnet_dropped,
        "flood: received {} + kernel dropped {} + truncated {} = {accounted}, sent {} \
         (softnet backlog drops, system-wide: {}): {}",
        f.datagrams_received,
        f.kernel_dropped,
        f.truncated,
        o.flood.sent,
        o.kernel.softnet_dropped,
        o.details()
    );
    // The receiver's own view agrees: the gaps in the sequence numbers (and the tail
    // never seen) are the datagrams the kernel says it dropped.
    assert_eq!(
        o.sink.missing + (o.flood.sent - o.sink.next),
        f.kernel_dropped + f.truncated + unseen,
        "{}",
        o.details()
    );
    let p = &o.ping_stats;
    assert_eq!(
        p.datagrams_received + p.kernel_dropped + p.truncated,
        o.pings.sent,
        "every ping is received or counted as dropped: {}",
        o.details()
    );
    assert_eq!(
        p.datagrams_sent + p.send_dropped + p.send_errors,
        p.datagrams_received,
        "every ping is echoed or counted as not sent: {}",
        o.details()
    );
    assert_eq!(
        o.pings.answered + o.pings.late,
        p.datagrams_sent,
        "every echo reaches the client: {}",
        o.details()
    );
    assert_eq!(
        o.received() + o.kernel_dropped() + o.framework_dropped() + unseen,
        o.sent(),
        "{}",
        o.details()
    );
    assert!(
        o.rss_end < o.rss_start + RSS_GROWTH_BOUND_KIB,
        "RSS grew by {} KiB (bound {RSS_GROWTH_BOUND_KIB} KiB): {}",
        o.rss_end - o.rss_start,
        o.details()
    );
}

/// The flood starved neither the ping port nor the timer, counted in turns.
fn check_turns(o: &Outcome) {
    assert!(o.flood.sent > 0 && o.pings.sent > 0, "{}", o.details());
    // The flooded port: never more than its budget in one turn. The burst queued before
    // the first turn (the kernel dropped part of it, so the queue was full) holds more
    // than the budget, so the first turn it is served in reads exactly the budget.
    assert!(
        o.sink.most_in_a_turn <= FLOOD_BUDGET && o.sink.turns_over_budget == 0,
        "the flood port delivered {} datagrams in one turn, its budget is {FLOOD_BUDGET}: {}",
        o.sink.most_in_a_turn,
        o.details()
    );
    assert!(
        o.sink.turns_at_budget > 0,
        "the flood port never reached its budget in a turn: {}",
        o.details()
    );
    // The ping port: served in every turn in which it had data (see `check_echo`).
    assert_eq!(
        o.pings.turn_failures,
        0,
        "pings delivered in the wrong turn: {:?}\n{}",
        o.pings.turn_failure_notes,
        o.details()
    );
    // The timer: never early, and run by the first turn that began with it due.
    assert_eq!(o.slips.early, 0, "a timer fired early: {}", o.details());
    assert!(
        o.slips.slip.count > 0,
        "the timer never ran: {}",
        o.details()
    );
    assert_eq!(
        o.slips.missed_turns,
        0,
        "turns began with the timer due and did not run it: {:?}\n{}",
        o.slips.missed_notes,
        o.details()
    );
}

/// The CPUs this process may run on (`Cpus_allowed_list`, e.g. `0-1` or `0,2-3`).
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(list) = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
    else {
        return Vec::new();
    };
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let mut ends = part.split('-').map(|n| n.trim().parse::<usize>());
        match (ends.next(), ends.next()) {
            (Some(Ok(a)), Some(Ok(b))) => cpus.extend(a..=b),
            (Some(Ok(a)), None) => cpus.push(a),
            _ => {}
        }
    }
    cpus
}

/// The reactor and the flood thread each get a CPU of their own when there are two: on
/// a two-CPU machine the scheduler would otherwise now and then stack both CPU-bound
/// threads on one CPU and leave the other to the rest. The ping thread, asleep nearly
/// all the time, goes wherever the scheduler puts it.
fn pinning() -> [Option<usize>; 3] {
    match allowed_cpus()[..] {
        [a, b, ..] => [Some(a), Some(b), None],
        _ => [None, None, None],
    }
}

/// Runs the flood `config` describes, prints its summary, figures and details, and checks
/// its accounting, memory and turns.
fn flood_and_check(config: Config) {
    let outcome = run_flood(config);
    println!(
        "{}\n{}\n{}",
        outcome.summary(),
        outcome.figures(),
        outcome.details()
    );
    check_accounting_and_memory(&outcome);
    check_turns(&outcome);
}

#[test]
fn a_flooded_port_starves_neither_its_neighbour_nor_the_timers_and_loses_nothing_silently() {
    flood_and_check(Config {
        flood: FLOOD,
        report_every: None,
        pin: pinning(),
        ping_every: PING_EVERY,
    });
}

/// The flood for `TWINE_SOAK_SECS` seconds (3600 by default), with a summary line every
/// minute and at the end.
#[test]
#[ignore = "soak, an hour by default: TWINE_SOAK_SECS=3600 cargo test --test flood \
            flood_soak -- --ignored --nocapture"]
fn flood_soak() {
    let secs = std::env::var("TWINE_SOAK_SECS")
        .ok()
        .map(|s| s.parse().expect("TWINE_SOAK_SECS: a number of seconds"))
        .unwrap_or(3600);
    flood_and_check(Config {
        flood: Duration::from_secs(secs).max(WARM_UP * 2),
        report_every: Some(Duration::from_secs(60)),
        pin: pinning(),
        ping_every: PING_EVERY,
    });
}

/// `Reactor::port_stats` and `UdpTransport::stats` read the same counters: `PortStats`
/// says `kernel_dropped` is read "with `SO_MEMINFO` whenever the counters are read", so
/// drops after the last datagram read count too. A burst into a small buffer, sent before
/// the reactor reads anything, is dropped after the last datagram queued, whose
/// `SO_RXQ_OVFL` stamp is still 0.
#[test]
fn reactor_port_stats_counts_the_kernels_drops_after_the_last_datagram_read() {
    let mut reactor = reactor();
    let port = reactor
        .listen_udp_with(loopback().recv_buffer_size(64 * 1024), Echo::default())
        .expect("listen");
    let sender = UdpSocket::bind("127.0.0.1:0").expect("bind sender");
    const SENT: u64 = 2000;
    for _ in 0..SENT {
        sender
            .send_to(&[PATTERN; 256], port.local_addr())
            .expect("send");
    }
    // Every datagram was queued or dropped by the port's socket inside `send_to`: turn
    // until the port has read the queue, which `Reactor::port_stats` then accounts for
    // whole (or the deadline passes, and the assertions below say what is missing).
    let deadline = Instant::now() + DEADLINE;
    loop {
        let s = reactor.port_stats(&port).expect("open");
        if s.datagrams_received + s.kernel_dropped >= SENT || Instant::now() >= deadline {
            break;
        }
        reactor.iterate(TURN_TIMEOUT).expect("turn");
    }
    let fresh = reactor.with_port(&port, |_, t| t.stats()).expect("open");
    let stored = reactor.port_stats(&port).expect("open");
    assert!(fresh.kernel_dropped > 0, "{fresh:?}");
    assert_eq!(
        fresh.datagrams_received + fresh.kernel_dropped,
        SENT,
        "{fresh:?}"
    );
    assert_eq!(
        stored.kernel_dropped, fresh.kernel_dropped,
        "Reactor::port_stats: {stored:?}\nUdpTransport::stats: {fresh:?}"
    );
}
