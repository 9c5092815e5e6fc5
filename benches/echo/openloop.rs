//! The open-loop load generator (dnsperf/resperf style): datagrams sent at a fixed
//! offered rate whatever the server answers, and its echoes counted, so that loss, not
//! a slower pace, is what an overloaded server shows.
//!
//! Two threads on the load generator's CPU, one connected socket:
//! - the sender keeps to the rate with credits: at each wake-up it sends every datagram
//!   due by then (`rate` × time since the start, less what it sent), as one segmented
//!   `sendmmsg` (UDP GSO), so that it costs less per datagram than any server; then it
//!   sleeps (`nanosleep`) until a small burst (about 50 µs' worth) is due again. A late
//!   wake-up makes one burst larger, never the average rate lower.
//! - the receiver waits in `epoll` (mio) for the echoes and reads them with `recvmmsg`.
//!
//! Two threads rather than one because a thread waiting in `epoll` can only time its
//! wake-ups to the millisecond (mio, like `epoll_wait`, takes milliseconds), and one that
//! sleeps precisely cannot read echoes meanwhile; spinning instead would keep the CPU
//! busy all the time and pad the whole-machine CPU that this generator is used to
//! measure. Both sleep when there is nothing to do, on the same CPU, so no wake-up
//! crosses cores.
//!
//! One socket sends and receives: every datagram comes from one client (one source
//! port), as from a single busy resolver, so the replies to a burst all go to one
//! address and a server that segments runs of replies (twine's default) sends each run
//! as one message. Traffic from many clients would give it shorter runs.
//!
//! Every datagram is [`PAYLOAD`] bytes: a tag, its phase (warm-up or measured), a
//! sequence number and its send time, then zeros. An echo's round trip is its arrival
//! less that send time. After the sending stops, echoes are awaited for the drain time;
//! what has not come back by then is lost.

use std::io;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::thread;
use std::time::{Duration, Instant};

use mio::{Events, Interest, Poll, Token};
use twine::bench_support::{RecvBatch, SendBatch, pin_to_cpu};

use crate::loadgen::{PAYLOAD, cpu_time};
use crate::noise;

/// Marks this generator's datagrams.
const TAG: u32 = 0x6f70_656e;
/// The most datagrams one send hands the kernel.
const BURST_MAX: usize = 64;
/// About how much of the rate each wake-up sends.
const BURST_TIME: Duration = Duration::from_micros(50);
/// Datagrams read per system call.
const BATCH: usize = 64;
/// The receive slot: larger than [`PAYLOAD`], so that a longer echo is seen as wrong.
const SLOT: usize = 2048;
/// The generator's receive buffer, so that echoes are not dropped at its own socket (the
/// kernel caps it at `net.core.rmem_max`).
const RECV_BUFFER: usize = 4 << 20;

/// Phases, as carried in the payload.
const WARMUP: u8 = 0;
const MEASURED: u8 = 1;

/// One run at one offered rate.
#[derive(Debug, Clone, Copy)]
pub struct Step {
    /// Datagrams per second offered.
    pub rate: f64,
    /// Sent first, not counted.
    pub warmup: Duration,
    /// Sent and counted.
    pub time: Duration,
    /// How long echoes are awaited after the last send.
    pub drain: Duration,
    /// Whether to record every round trip.
    pub record: bool,
}

/// What a step measured: the datagrams sent in the measured phase and their echoes.
#[derive(Debug, Default)]
pub struct StepOutcome {
    /// The offered rate asked for (per second).
    pub rate: f64,
    pub sent: u64,
    pub echoed: u64,
    /// Echoes not of this step's measured phase, or not ours.
    pub other: u64,
    /// How long the measured phase lasted.
    pub elapsed: Duration,
    /// Whether the sender kept to the rate: if not, the step says nothing of the server.
    pub kept_pace: bool,
    /// Round trips in nanoseconds, sorted, when recorded.
    pub rtts: Vec<u64>,
    /// Whole-machine busy time during the measured phase (`/proc/stat`), and the part of
    /// it other programs took (their user and system time: see `noise`).
    pub machine_busy: Option<Duration>,
    pub others_busy: Option<Duration>,
    /// The server thread's CPU time during the measured phase (`schedstat`).
    pub server_cpu: Option<Duration>,
}

impl StepOutcome {
    /// 1 - echoed / sent.
    pub fn loss(&self) -> f64 {
        if self.sent == 0 {
            return 1.0;
        }
        1.0 - self.echoed as f64 / self.sent as f64
    }

    /// The rate actually sent in the measured phase, per second.
    pub fn sent_rate(&self) -> f64 {
        self.sent as f64 / self.elapsed.as_secs_f64().max(1e-9)
    }

    /// The `q` quantile (0..=1) of the round trips, in microseconds.
    pub fn rtt_us(&self, q: f64) -> f64 {
        if self.rtts.is_empty() {
            return f64::NAN;
        }
        let i = ((self.rtts.len() - 1) as f64 * q).round() as usize;
        self.rtts[i] as f64 / 1e3
    }

    /// Whole-machine CPU time per echo, in microseconds; none where no clock tick (10
    /// ms) of busy time was seen, too short a step to tell.
    pub fn machine_us(&self) -> Option<f64> {
        let busy = self.machine_busy.filter(|b| !b.is_zero())?;
        Some(busy.as_secs_f64() * 1e6 / self.echoed.max(1) as f64)
    }

    /// Whole-machine CPU time per echo less other programs' (this process's, its server
    /// children's, and all irq and softirq time), in microseconds: the same as
    /// [`machine_us`](Self::machine_us) on a quiet machine, and steadier on a busy one.
    pub fn ours_us(&self) -> Option<f64> {
        let busy = self.machine_busy.filter(|b| !b.is_zero())?;
        let ours = busy.saturating_sub(self.others_busy?);
        Some(ours.as_secs_f64() * 1e6 / self.echoed.max(1) as f64)
    }

    /// The server thread's CPU time per echo, in microseconds.
    pub fn server_us(&self) -> Option<f64> {
        Some(self.server_cpu?.as_secs_f64() * 1e6 / self.echoed.max(1) as f64)
    }
}

/// What the sender tells the receiver and gives back.
#[derive(Default)]
struct Shared {
    /// Datagrams sent so far, all phases.
    sent_all: AtomicU64,
    /// Set once the sender is done.
    done: AtomicBool,
}

/// What the sender measured.
#[derive(Default)]
struct Sent {
    measured: u64,
    elapsed: Duration,
    kept_pace: bool,
    machine_busy: Option<Duration>,
    others_busy: Option<Duration>,
    server_cpu: Option<Duration>,
}

/// Offers `step.rate` datagrams a second to `server`, from threads pinned to `cpu` when
/// given; `server_cpu` is the `schedstat` file of the server's thread, if known, and
/// `children` the pids of server processes (whose CPU time is not other programs').
pub fn run(
    server: SocketAddr,
    step: &Step,
    server_cpu: Option<&Path>,
    cpu: Option<usize>,
    children: &[u32],
) -> io::Result<StepOutcome> {
    let local = SocketAddr::from(([127, 0, 0, 1], 0));
    let sock = UdpSocket::bind(local)?;
    sock.connect(server)?;
    sock.set_nonblocking(true)?;
    let _ = socket2::SockRef::from(&sock).set_recv_buffer_size(RECV_BUFFER);
    let send_sock = sock.try_clone()?;
    let mut sock = mio::net::UdpSocket::from_std(sock);
    let mut poll = Poll::new()?;
    poll.registry()
        .register(&mut sock, Token(0), Interest::READABLE)?;
    if let Some(cpu) = cpu {
        let _ = pin_to_cpu(cpu);
    }
    let shared = Arc::new(Shared::default());
    let start = Instant::now();
    let sender = {
        let (shared, step) = (Arc::clone(&shared), *step);
        let server_cpu = server_cpu.map(Path::to_path_buf);
        let children = children.to_vec();
        thread::Builder::new()
            .name("echo-open-loop".to_owned())
            .spawn(move || {
                if let Some(cpu) = cpu {
                    let _ = pin_to_cpu(cpu);
                }
                let sent = send(
                    &send_sock,
                    &step,
                    start,
                    server_cpu.as_deref(),
                    &children,
                    &shared,
                );
                shared.done.store(true, Ordering::Release);
                sent
            })?
    };
    let mut out = StepOutcome {
        rate: step.rate,
        ..StepOutcome::default()
    };
    if step.record {
        out.rtts
            .reserve((step.rate * step.time.as_secs_f64()) as usize + 1024);
    }
    let received = receive(&sock, &mut poll, step, start, &shared, &mut out);
    let sent = sender
        .join()
        .map_err(|_| io::Error::other("the open-loop sender panicked"))?;
    received?;
    let sent = sent?;
    out.sent = sent.measured;
    out.elapsed = sent.elapsed;
    out.kept_pace = sent.kept_pace;
    out.machine_busy = sent.machine_busy;
    out.others_busy = sent.others_busy;
    out.server_cpu = sent.server_cpu;
    out.rtts.sort_unstable();
    Ok(out)
}

/// The readings taken at each end of the measured phase.
struct Readings {
    at: Instant,
    machine: Option<u64>,
    noise: Option<noise::Reading>,
    server: Option<Duration>,
}

fn readings(server_cpu: Option<&Path>, children: &[u32]) -> Readings {
    Readings {
        at: Instant::now(),
        machine: noise::machine_busy(),
        noise: noise::read(children),
        server: server_cpu.and_then(cpu_time),
    }
}

/// The sender's thread: the warm-up, then the measured phase, at `step.rate`. Datagram
/// `k` is due `k / rate` after the start; those due in the warm-up are warm-up ones, and
/// sending stops after the last one due within the measured time, so that a late wake-up
/// near either end changes no count.
fn send(
    sock: &UdpSocket,
    step: &Step,
    start: Instant,
    server_cpu: Option<&Path>,
    children: &[u32],
    shared: &Shared,
) -> io::Result<Sent> {
    let rate = step.rate.max(1.0);
    let burst = ((rate * BURST_TIME.as_secs_f64()).round() as u64).clamp(1, BURST_MAX as u64);
    let n_warm = (step.warmup.as_secs_f64() * rate) as u64;
    let n_end = n_warm + ((step.time.as_secs_f64() * rate) as u64).max(1);
    let mut tx = SendBatch::with_capacity(BURST_MAX, BURST_MAX * PAYLOAD);
    let to = sock.peer_addr()?;
    let (mut seq, mut first) = (0u64, None);
    while seq < n_end {
        let now = Instant::now();
        if seq >= n_warm && first.is_none() {
            first = Some(readings(server_cpu, children));
        }
        let due = (((now - start).as_secs_f64() * rate) as u64).min(n_end);
        // A burst does not straddle the phases: the measured phase's readings come first.
        let limit = if seq < n_warm { due.min(n_warm) } else { due };
        let n = limit.saturating_sub(seq).min(BURST_MAX as u64);
        if n > 0 {
            let stamp = (now - start).as_nanos() as u64;
            let phase = if seq < n_warm { WARMUP } else { MEASURED };
            for k in seq..seq + n {
                let mut payload = [0u8; PAYLOAD];
                payload[..4].copy_from_slice(&TAG.to_le_bytes());
                payload[4] = phase;
                payload[8..16].copy_from_slice(&k.to_le_bytes());
                payload[16..24].copy_from_slice(&stamp.to_le_bytes());
                tx.push(&payload, to);
            }
            let mut next = 0;
            while next < tx.len() {
                match tx.send_segmented(sock, next, true) {
                    Ok(0) => break,
                    Ok(sent) => next += sent,
                    // A full send buffer: those not taken are sent later, as still due.
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            seq += next as u64;
            tx.clear();
            shared.sent_all.store(seq, Ordering::Release);
            if seq < limit || seq == n_warm {
                // Behind (a late wake-up or a full buffer), or at the phase change:
                // round again before sleeping.
                continue;
            }
        }
        if seq >= n_end {
            break;
        }
        let boundary = if seq < n_warm { n_warm } else { n_end };
        let wake = start + Duration::from_secs_f64((seq + burst).min(boundary) as f64 / rate);
        let now = Instant::now();
        if wake > now {
            thread::sleep(wake - now);
        }
    }
    let last = readings(server_cpu, children);
    let Some(first) = first else {
        return Ok(Sent::default());
    };
    // Finished later than the last datagram was due by more than a little: the sender
    // could not keep the pace.
    let due_end = start + Duration::from_secs_f64(n_end as f64 / rate);
    let slack = (step.time / 50).max(Duration::from_millis(1));
    Ok(Sent {
        measured: n_end - n_warm,
        elapsed: last.at - first.at,
        kept_pace: last.at <= due_end + slack,
        machine_busy: last
            .machine
            .zip(first.machine)
            .map(|(b1, b0)| noise::ticks(b1.saturating_sub(b0))),
        others_busy: noise::others_time(first.noise, last.noise),
        server_cpu: last
            .server
            .zip(first.server)
            .and_then(|(s1, s0)| s1.checked_sub(s0)),
    })
}

/// The receiver: echoes until the sender is done and every datagram is back, or the
/// drain time has passed since.
fn receive(
    sock: &mio::net::UdpSocket,
    poll: &mut Poll,
    step: &Step,
    start: Instant,
    shared: &Shared,
    out: &mut StepOutcome,
) -> io::Result<()> {
    let mut events = Events::with_capacity(4);
    let mut rx = RecvBatch::default();
    rx.reserve(BATCH, SLOT);
    let mut received = 0u64;
    let mut done_at = None;
    loop {
        if let Err(e) = poll.poll(&mut events, Some(Duration::from_millis(2)))
            && e.kind() != io::ErrorKind::Interrupted
        {
            return Err(e);
        }
        loop {
            let got = match rx.recv(sock, BATCH, SLOT) {
                Ok(got) => got,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => break,
                Err(e) => return Err(e),
            };
            let now = (Instant::now() - start).as_nanos() as u64;
            for d in rx.datagrams() {
                received += 1;
                match parse(d.data) {
                    Some((MEASURED, stamp)) => {
                        out.echoed += 1;
                        if step.record {
                            out.rtts.push(now.saturating_sub(stamp));
                        }
                    }
                    Some(_) => {}
                    None => out.other += 1,
                }
            }
            if got < BATCH {
                break;
            }
        }
        let now = Instant::now();
        if done_at.is_none() && shared.done.load(Ordering::Acquire) {
            done_at = Some(now);
        }
        if let Some(done) = done_at
            && (received >= shared.sent_all.load(Ordering::Acquire) || now >= done + step.drain)
        {
            return Ok(());
        }
    }
}

/// The phase and send time of an echo, if it is one of ours.
fn parse(data: &[u8]) -> Option<(u8, u64)> {
    if data.len() != PAYLOAD || data[..4] != TAG.to_le_bytes() {
        return None;
    }
    Some((data[4], u64::from_le_bytes(data[16..24].try_into().ok()?)))
}
