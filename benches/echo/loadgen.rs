//! The load generator: one non-blocking socket on a mio `Poll`, batched I/O
//! (`recvmmsg`, and `sendmmsg` with UDP segmentation offload, through
//! `twine::bench_support`) and a window of outstanding datagrams, so that it does no more
//! system calls per echo than the fastest server and walks the kernel's send path once
//! per batch rather than once per datagram.
//!
//! Every datagram is [`PAYLOAD`] bytes: its window slot and a sequence number, then zeros.
//! An echo whose slot still waits for that sequence number counts; anything else (an echo
//! that came after its datagram was given up as lost) counts as late. A datagram not
//! echoed within [`Plan::lost_after`] counts as lost and its slot is refilled, so the
//! window never stalls.

use std::io;
use std::net::SocketAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use twine::bench_support::{RecvBatch, SendBatch};

/// The size of every datagram sent.
pub const PAYLOAD: usize = 64;
/// Datagrams read or sent per system call.
const BATCH: usize = 64;
/// The receive slot: larger than [`PAYLOAD`], so that a longer echo is seen as wrong.
const SLOT: usize = 2048;
/// How often outstanding datagrams are checked for loss.
const SCAN_EVERY: Duration = Duration::from_millis(10);
/// The longest wait in `poll`, so that loss and deadlines are checked when nothing comes.
const POLL_WAIT: Duration = Duration::from_millis(5);

/// When a run ends.
#[derive(Debug, Clone, Copy)]
pub enum Until {
    /// After this long measuring (after the warm-up).
    Time(Duration),
    /// After this many echoes.
    Count(u64),
}

/// One run of the load generator.
#[derive(Debug, Clone, Copy)]
pub struct Plan {
    /// Datagrams kept in flight: 1 is ping-pong.
    pub window: usize,
    /// Echoes before this is over are not counted.
    pub warmup: Duration,
    pub until: Until,
    /// An outstanding datagram not echoed within this is lost.
    pub lost_after: Duration,
    /// Whether to record every round trip (ping-pong).
    pub record: bool,
}

/// What a run measured (after the warm-up).
#[derive(Debug, Default)]
pub struct Outcome {
    pub echoes: u64,
    pub elapsed: Duration,
    pub lost: u64,
    pub late: u64,
    /// Round trips in nanoseconds, sorted, when recorded.
    pub rtts: Vec<u64>,
    /// CPU time of the server's thread while measuring, where known.
    pub server_cpu: Option<Duration>,
    /// CPU time of the load generator while measuring, where known.
    pub gen_cpu: Option<Duration>,
}

impl Outcome {
    /// Echoes per second, in thousands.
    pub fn kpps(&self) -> f64 {
        self.echoes as f64 / self.elapsed.as_secs_f64().max(1e-9) / 1e3
    }

    /// The `q` quantile (0..=1) of the round trips, in microseconds.
    pub fn rtt_us(&self, q: f64) -> f64 {
        if self.rtts.is_empty() {
            return f64::NAN;
        }
        let i = ((self.rtts.len() - 1) as f64 * q).round() as usize;
        self.rtts[i] as f64 / 1e3
    }

    /// How much of the measurement `cpu` was busy, in percent.
    pub fn busy(&self, cpu: Option<Duration>) -> Option<f64> {
        Some(cpu?.as_secs_f64() / self.elapsed.as_secs_f64().max(1e-9) * 100.0)
    }
}

/// A thread's CPU time so far, from its `schedstat` file in `/proc` (Linux).
pub fn cpu_time(schedstat: &Path) -> Option<Duration> {
    let text = std::fs::read_to_string(schedstat).ok()?;
    let ns = text.split_whitespace().next()?.parse().ok()?;
    Some(Duration::from_nanos(ns))
}

/// The CPU time of the server's thread (`server_cpu`) and of this thread.
fn cpu_times(server_cpu: Option<&Path>) -> (Option<Duration>, Option<Duration>) {
    (
        server_cpu.and_then(cpu_time),
        cpu_time(Path::new("/proc/thread-self/schedstat")),
    )
}

fn spent(from: Option<Duration>, to: Option<Duration>) -> Option<Duration> {
    to?.checked_sub(from?)
}

#[derive(Clone, Copy)]
struct Slot {
    seq: u64,
    sent: Instant,
    live: bool,
}

/// The generator's state for one run.
struct Run {
    sock: UdpSocket,
    server: SocketAddr,
    rx: RecvBatch,
    tx: SendBatch,
    slots: Vec<Slot>,
    /// Slots pushed into `tx`, to be stamped when it is sent.
    pushed: Vec<usize>,
    next_seq: u64,
    /// Past the warm-up: losses count.
    measuring: bool,
    /// Past the warm-up and before the end: echoes count.
    counting: bool,
    out: Outcome,
}

/// Drives the server at `server` as `plan` says; `server_cpu` is the `schedstat` file of
/// the server's thread, if known, to measure its CPU time.
pub fn run(server: SocketAddr, plan: &Plan, server_cpu: Option<&Path>) -> io::Result<Outcome> {
    let local: SocketAddr = if server.is_ipv4() {
        "127.0.0.1:0"
    } else {
        "[::1]:0"
    }
    .parse()
    .expect("a literal address");
    let mut sock = UdpSocket::bind(local)?;
    // Connected: the kernel skips a route lookup per datagram sent.
    sock.connect(server)?;
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut sock, Token(0), Interest::READABLE)?;
    let mut events = Events::with_capacity(4);
    let start = Instant::now();
    let mut rx = RecvBatch::default();
    rx.reserve(BATCH, SLOT);
    let mut r = Run {
        sock,
        server,
        rx,
        tx: SendBatch::with_capacity(BATCH, BATCH * PAYLOAD),
        slots: vec![
            Slot {
                seq: 0,
                sent: start,
                live: false,
            };
            plan.window
        ],
        pushed: Vec::with_capacity(plan.window),
        next_seq: 1,
        measuring: plan.warmup.is_zero(),
        counting: plan.warmup.is_zero(),
        out: Outcome::default(),
    };
    if plan.record {
        r.out.rtts.reserve(1 << 18);
    }
    let mut t0 = start;
    let mut cpu0 = if r.measuring {
        cpu_times(server_cpu)
    } else {
        (None, None)
    };
    // Set once the measurement is over: no refills, only waiting for what is in flight.
    let mut ended: Option<Instant> = None;
    let mut last_scan = start;
    for slot in 0..plan.window {
        r.push(slot);
    }
    r.send()?;
    loop {
        if let Err(e) = poll.poll(&mut events, Some(POLL_WAIT))
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(e);
        }
        let mut now = Instant::now();
        loop {
            let got = match r.rx.recv(&r.sock, BATCH, SLOT) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            now = Instant::now();
            r.receive(got, now, plan.record, ended.is_none());
            r.send()?;
            if got < BATCH {
                // Drained: the next datagram raises a new readiness event.
                break;
            }
        }
        if !r.measuring && now >= start + plan.warmup {
            r.measuring = true;
            r.counting = true;
            r.out = Outcome {
                rtts: std::mem::take(&mut r.out.rtts),
                ..Outcome::default()
            };
            r.out.rtts.clear();
            t0 = now;
            cpu0 = cpu_times(server_cpu);
        }
        if r.measuring && ended.is_none() {
            let over = match plan.until {
                Until::Time(d) => now >= t0 + d,
                Until::Count(n) => r.out.echoes >= n,
            };
            if over {
                ended = Some(now);
                r.counting = false;
                r.out.elapsed = now - t0;
                let cpu1 = cpu_times(server_cpu);
                r.out.server_cpu = spent(cpu0.0, cpu1.0);
                r.out.gen_cpu = spent(cpu0.1, cpu1.1);
            }
        }
        if now - last_scan >= SCAN_EVERY {
            last_scan = now;
            r.expire(now, plan.lost_after, ended.is_none());
            r.send()?;
        }
        if let Some(end) = ended {
            if now >= end + plan.lost_after {
                // Whatever is still out now has waited at least `lost_after`.
                r.expire(now, Duration::ZERO, false);
                break;
            }
            if r.slots.iter().all(|s| !s.live) {
                break;
            }
        }
    }
    r.out.rtts.sort_unstable();
    Ok(r.out)
}

impl Run {
    /// Queues a fresh datagram in `slot`.
    fn push(&mut self, slot: usize) {
        let mut payload = [0u8; PAYLOAD];
        payload[..4].copy_from_slice(&(slot as u32).to_le_bytes());
        payload[4..12].copy_from_slice(&self.next_seq.to_le_bytes());
        self.slots[slot].seq = self.next_seq;
        self.next_seq += 1;
        self.tx.push(&payload, self.server);
        self.pushed.push(slot);
    }

    /// Sends what was pushed, stamping each slot. A datagram the kernel does not take
    /// stays outstanding and is given up as lost in time.
    fn send(&mut self) -> io::Result<()> {
        if self.tx.is_empty() {
            return Ok(());
        }
        let now = Instant::now();
        for &slot in &self.pushed {
            self.slots[slot].sent = now;
            self.slots[slot].live = true;
        }
        let mut next = 0;
        while next < self.tx.len() {
            // Segmented (UDP GSO) where the kernel can: the load generator's own cost per
            // datagram stays well below any server's, so the server is what is measured.
            match self.tx.send_segmented(&self.sock, next, true) {
                Ok(0) => break,
                Ok(sent) => next += sent,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => {
                    self.tx.clear();
                    self.pushed.clear();
                    return Err(e);
                }
            }
        }
        self.tx.clear();
        self.pushed.clear();
        Ok(())
    }

    /// Matches the `got` datagrams just read against the window; refills each answered
    /// slot when `refill`.
    fn receive(&mut self, got: usize, now: Instant, record: bool, refill: bool) {
        for i in 0..got {
            let d = self.rx.get(i);
            let Some((slot, seq)) = parse(d.data) else {
                self.out.late += 1;
                continue;
            };
            match self.slots.get_mut(slot) {
                Some(s) if s.live && s.seq == seq => {
                    s.live = false;
                    if self.counting {
                        self.out.echoes += 1;
                        if record {
                            self.out.rtts.push((now - s.sent).as_nanos() as u64);
                        }
                    }
                    if refill {
                        self.push(slot);
                    }
                }
                _ => self.out.late += 1,
            }
        }
    }

    /// Gives up on datagrams outstanding for `lost_after` or more; refills their slots
    /// when `refill`.
    fn expire(&mut self, now: Instant, lost_after: Duration, refill: bool) {
        for slot in 0..self.slots.len() {
            let s = &mut self.slots[slot];
            if s.live && now - s.sent >= lost_after {
                s.live = false;
                if self.measuring {
                    self.out.lost += 1;
                }
                if refill {
                    self.push(slot);
                }
            }
        }
    }
}

/// The slot and sequence number of an echo, if it is one of ours.
fn parse(data: &[u8]) -> Option<(usize, u64)> {
    if data.len() != PAYLOAD {
        return None;
    }
    let slot = u32::from_le_bytes(data[..4].try_into().ok()?) as usize;
    let seq = u64::from_le_bytes(data[4..12].try_into().ok()?);
    Some((slot, seq))
}
