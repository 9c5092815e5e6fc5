//! `cargo bench --bench pool`: how a [`ReactorPool`] scales with its number of reactors.
//!
//! For N = 1, 2, .. up to `--max-reactors` (default: the CPUs this process may use, at
//! most 8) a pool of N echo reactors serves 127.0.0.1; a load generator drives it from
//! `--clients` sockets (default 64, so that the flows spread over the kernel's hash), each
//! connected to the pool and keeping `--window` datagrams (default 8) of 64 bytes in
//! flight, with batched system calls (`recvmmsg`/`sendmmsg`). An echo not back within
//! 50 ms counts as lost (or late, on a machine busy with other work) and its client's
//! window is refilled. Each round warms up for 0.3 s, then counts echoes for `--seconds`
//! (default 2); the table gives, per N, the median of `--rounds` rounds (default 3) in
//! thousands of echoes per second, the ratio to N = 1, the CPUs the reactors and the load
//! generator kept busy (their threads' CPU time over the time counted, from `/proc`; it
//! includes the kernel's work done on their behalf, loopback delivery among it), the
//! echoes per second per CPU of reactor time, and how the datagrams were shared among the
//! reactors (from the pool's counters). Busy CPUs that add up to less than the machine's
//! mean that other processes had the rest. The CPU model, the number of CPUs and the load
//! average are printed first. Each reactor's socket asks for a 4 MiB receive buffer, which
//! the kernel caps at `net.core.rmem_max`: below that the output warns, since a window of
//! 512 datagrams at one socket may then overflow it.
//!
//! The load generator runs on `--gen-threads` threads (default: the CPUs left over by the
//! largest pool, at least 1, at most 8), each with its share of the clients. Where the
//! CPUs do not leave it cores of its own (on 2 CPUs, always), it competes with the
//! reactors for them, and the figures say more about the machine than about the pool: the
//! output says so. `--pin` pins reactor i to the i-th CPU allowed to this process and the
//! generator threads to the last ones.
//!
//! Run without `--bench` (as `cargo test --benches` does) it is a smoke test: N = 1 and 2,
//! one short round each.
//!
//! To measure on another machine (16 cores, say), build the binary here and carry it
//! there (it links only the C library and libgcc_s):
//!
//! ```text
//! cargo bench --bench pool --no-run      # prints the path: target/release/deps/pool-<hash>
//! ./pool-<hash> --bench --max-reactors 8 --seconds 3 [--pin] [--gen-threads 8]
//! ```
//!
//! A full run (N up to 8, 3 rounds of 2 s) takes under a minute.

use std::io::{self, ErrorKind};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use mio::net::UdpSocket;
use mio::{Events, Interest, Poll, Token};
use twine::bench_support::{RecvBatch, SendBatch, pin_to_cpu};
use twine::{ListenOptions, PoolStats, ReactorPool, from_fn};

/// The size of every datagram sent.
const PAYLOAD: usize = 64;
/// Datagrams read or sent per system call by the generator.
const BATCH: usize = 64;
/// An echo not back within this is lost, and its client's window is refilled.
const LOST_AFTER: Duration = Duration::from_millis(50);
/// The longest wait of a generator thread's poll.
const POLL_WAIT: Duration = Duration::from_millis(5);
/// The socket buffers each reactor's socket asks for.
const RECV_BUFFER: usize = 4 << 20;
/// The longest wait for the pool to come up or to stop.
const DEADLINE: Duration = Duration::from_secs(10);

const USAGE: &str = "\
usage: cargo bench --bench pool [-- OPTIONS]
  --max-reactors N   largest pool measured (default: allowed CPUs, at most 8)
  --seconds S        seconds counted per round (default 2)
  --rounds R         rounds per pool size (default 3)
  --clients C        client sockets (default 64)
  --window W         datagrams in flight per client (default 8)
  --gen-threads G    load generator threads (default: CPUs left over, 1..=8)
  --pin              pin the reactors to the first CPUs, the generator to the last
Without --bench (which cargo bench adds): a brief smoke test.";

#[derive(Debug, Clone)]
struct Config {
    max_reactors: usize,
    seconds: f64,
    warmup: Duration,
    rounds: usize,
    clients: usize,
    window: usize,
    gen_threads: usize,
    pin: bool,
    smoke: bool,
}

/// The CPUs this process may run on (`Cpus_allowed_list` of `/proc/self/status`), or
/// 0..n for the n that std sees where that is not available.
fn allowed_cpus() -> Vec<usize> {
    let listed = std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|status| {
            let line = status
                .lines()
                .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?
                .trim()
                .to_owned();
            let mut cpus = Vec::new();
            for part in line.split(',') {
                let mut ends = part.split('-').map(|n| n.trim().parse::<usize>());
                let first = ends.next()?.ok()?;
                let last = match ends.next() {
                    Some(n) => n.ok()?,
                    None => first,
                };
                cpus.extend(first..=last);
            }
            Some(cpus)
        });
    match listed {
        Some(cpus) if !cpus.is_empty() => cpus,
        _ => {
            let n = thread::available_parallelism().map_or(1, |n| n.get());
            (0..n).collect()
        }
    }
}

fn parse_args(mut args: impl Iterator<Item = String>, cpus: usize) -> Result<Config, String> {
    let mut bench = false;
    let mut max_reactors = None;
    let mut seconds = None;
    let mut rounds = None;
    let mut clients = 64;
    let mut window = 8;
    let mut gen_threads = None;
    let mut pin = false;
    while let Some(arg) = args.next() {
        let mut number = |name: &str| -> Result<f64, String> {
            let value = args.next().ok_or(format!("{name} needs a number"))?;
            value
                .parse::<f64>()
                .ok()
                .filter(|v| *v > 0.0 && v.is_finite())
                .ok_or(format!("{name}: {value:?} is not a positive number"))
        };
        match arg.as_str() {
            // Added by `cargo bench`; `cargo test --benches` leaves it out.
            "--bench" => bench = true,
            "--max-reactors" => max_reactors = Some(number(&arg)? as usize),
            "--seconds" => seconds = Some(number(&arg)?),
            "--rounds" => rounds = Some(number(&arg)? as usize),
            "--clients" => clients = number(&arg)? as usize,
            "--window" => window = number(&arg)? as usize,
            "--gen-threads" => gen_threads = Some(number(&arg)? as usize),
            "--pin" => pin = true,
            "--help" | "-h" => return Err(USAGE.to_owned()),
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    let smoke = !bench;
    let max_reactors = max_reactors
        .unwrap_or(if smoke { 2 } else { cpus.min(8) })
        .max(1);
    let gen_threads = gen_threads
        .unwrap_or_else(|| cpus.saturating_sub(max_reactors).clamp(1, 8))
        .clamp(1, clients.max(1));
    Ok(Config {
        max_reactors,
        seconds: seconds.unwrap_or(if smoke { 0.2 } else { 2.0 }),
        warmup: Duration::from_millis(if smoke { 100 } else { 300 }),
        rounds: rounds.unwrap_or(if smoke { 1 } else { 3 }).max(1),
        clients: clients.max(1),
        window: window.max(1),
        gen_threads,
        pin,
        smoke,
    })
}

fn cpu_model() -> String {
    std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|info| {
            info.lines()
                .find(|l| l.starts_with("model name"))
                .and_then(|l| l.split_once(':'))
                .map(|(_, model)| model.trim().to_owned())
        })
        .unwrap_or_else(|| "unknown CPU".to_owned())
}

/// What one round measured.
#[derive(Debug)]
struct Round {
    kpps: f64,
    lost: u64,
    stats: PoolStats,
    /// CPUs kept busy while counting (CPU time over wall time) by the reactors and by the
    /// load generator, where `/proc` tells.
    reactor_cpus: Option<f64>,
    gen_cpus: Option<f64>,
}

/// The `schedstat` file of the calling thread, under a path other threads can read.
fn thread_schedstat() -> Option<PathBuf> {
    let link = std::fs::read_link("/proc/thread-self").ok()?;
    Some(Path::new("/proc").join(link).join("schedstat"))
}

/// The CPU time the threads of `files` have had so far.
fn cpu_time(files: &Mutex<Vec<PathBuf>>) -> Option<Duration> {
    let files = files.lock().unwrap_or_else(PoisonError::into_inner);
    if files.is_empty() {
        return None;
    }
    let mut total = Duration::ZERO;
    for file in files.iter() {
        let text = std::fs::read_to_string(file).ok()?;
        let ns = text.split_whitespace().next()?.parse().ok()?;
        total += Duration::from_nanos(ns);
    }
    Some(total)
}

/// The CPUs kept busy between two readings `wall` apart.
fn busy(from: Option<Duration>, to: Option<Duration>, wall: Duration) -> Option<f64> {
    Some(to?.checked_sub(from?)?.as_secs_f64() / wall.as_secs_f64())
}

/// One round with a pool of `n` reactors.
fn round(cfg: &Config, cpus: &[usize], n: usize) -> Result<Round, String> {
    let reactor_cpus: Option<Vec<usize>> = cfg
        .pin
        .then(|| (0..n).map(|i| cpus[i % cpus.len()]).collect());
    let (ready_tx, ready_rx) = mpsc::channel();
    let reactor_threads = Arc::new(Mutex::new(Vec::new()));
    let gen_threads = Arc::new(Mutex::new(Vec::new()));
    let threads = Arc::clone(&reactor_threads);
    let pool = thread::spawn(move || -> Result<PoolStats, String> {
        let opts = ListenOptions::new(0)
            .interface("127.0.0.1")
            .recv_buffer_size(RECV_BUFFER)
            .send_buffer_size(RECV_BUFFER);
        let mut pool = ReactorPool::bind(opts, n).map_err(|e| e.to_string())?;
        pool.set_handle_signals(false);
        if let Some(cpus) = &reactor_cpus {
            pool.pin_to_cpus(cpus).map_err(|e| e.to_string())?;
        }
        let _ = ready_tx.send((pool.local_addr(), pool.handle()));
        pool.run(|_| {
            // Called on the reactor's own thread.
            if let Some(file) = thread_schedstat() {
                threads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(file);
            }
            from_fn(|t, data, from| {
                let _ = t.write(data, from);
            })
        })
        .map_err(|e| e.to_string())
    });
    let Ok((addr, handle)) = ready_rx.recv_timeout(DEADLINE) else {
        return Err(match pool.join() {
            Ok(Err(e)) => e,
            _ => "the pool did not come up".to_owned(),
        });
    };

    let stop = Arc::new(AtomicBool::new(false));
    let echoes = Arc::new(AtomicU64::new(0));
    let lost = Arc::new(AtomicU64::new(0));
    let mut generators = Vec::new();
    for g in 0..cfg.gen_threads {
        let clients =
            cfg.clients / cfg.gen_threads + usize::from(g < cfg.clients % cfg.gen_threads);
        let cpu = cfg
            .pin
            .then(|| cpus[(cpus.len() - 1 - g % cpus.len()) % cpus.len()]);
        let (stop, echoes, lost) = (stop.clone(), echoes.clone(), lost.clone());
        let threads = Arc::clone(&gen_threads);
        let window = cfg.window;
        generators.push(thread::spawn(move || {
            if let Some(file) = thread_schedstat() {
                threads
                    .lock()
                    .unwrap_or_else(PoisonError::into_inner)
                    .push(file);
            }
            generate(addr, clients, window, cpu, &stop, &echoes, &lost)
        }));
    }
    thread::sleep(cfg.warmup);
    let (r0, g0) = (cpu_time(&reactor_threads), cpu_time(&gen_threads));
    let (e0, l0, t0) = (
        echoes.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
        Instant::now(),
    );
    thread::sleep(Duration::from_secs_f64(cfg.seconds));
    let (e1, l1, elapsed) = (
        echoes.load(Ordering::Relaxed),
        lost.load(Ordering::Relaxed),
        t0.elapsed(),
    );
    let (r1, g1) = (cpu_time(&reactor_threads), cpu_time(&gen_threads));
    stop.store(true, Ordering::Relaxed);
    let mut failure = None;
    for g in generators {
        match g.join() {
            Ok(Ok(())) => {}
            Ok(Err(e)) => failure = Some(format!("load generator: {e}")),
            Err(_) => failure = Some("a load generator thread panicked".to_owned()),
        }
    }
    handle.stop().map_err(|e| e.to_string())?;
    let stats = pool
        .join()
        .map_err(|_| "the pool's thread panicked".to_owned())??;
    if let Some(e) = failure {
        return Err(e);
    }
    Ok(Round {
        kpps: (e1 - e0) as f64 / elapsed.as_secs_f64() / 1e3,
        lost: l1 - l0,
        stats,
        reactor_cpus: busy(r0, r1, elapsed),
        gen_cpus: busy(g0, g1, elapsed),
    })
}

/// One load generator thread: `clients` sockets connected to `addr`, each keeping
/// `window` datagrams in flight, until `stop`.
fn generate(
    addr: SocketAddr,
    clients: usize,
    window: usize,
    cpu: Option<usize>,
    stop: &AtomicBool,
    echoes: &AtomicU64,
    lost: &AtomicU64,
) -> io::Result<()> {
    if let Some(cpu) = cpu {
        pin_to_cpu(cpu)?;
    }
    let mut poll = Poll::new()?;
    let mut sockets = Vec::with_capacity(clients);
    for c in 0..clients {
        let mut socket = UdpSocket::bind("127.0.0.1:0".parse().map_err(io::Error::other)?)?;
        socket.connect(addr)?;
        poll.registry()
            .register(&mut socket, Token(c), Interest::READABLE)?;
        sockets.push(socket);
    }
    let mut outstanding = vec![0usize; clients];
    let mut last_echo = vec![Instant::now(); clients];
    let mut recv = RecvBatch::default();
    recv.reserve(BATCH, 2048);
    let mut send = SendBatch::with_capacity(BATCH, BATCH * PAYLOAD);
    let payload = [0u8; PAYLOAD];
    let mut top_up = |c: usize, outstanding: &mut [usize]| -> io::Result<()> {
        let want = window.saturating_sub(outstanding[c]).min(BATCH);
        if want == 0 {
            return Ok(());
        }
        send.clear();
        for _ in 0..want {
            send.push(&payload, addr);
        }
        match send.send(&sockets[c], 0, true) {
            Ok(sent) => outstanding[c] += sent,
            Err(e) if e.kind() == ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
        Ok(())
    };
    for c in 0..clients {
        top_up(c, &mut outstanding)?;
    }
    let mut events = Events::with_capacity(1024);
    let mut scanned = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        match poll.poll(&mut events, Some(POLL_WAIT)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        }
        for event in events.iter() {
            let c = event.token().0;
            loop {
                match recv.recv(&sockets[c], BATCH, 2048) {
                    Ok(k) => {
                        outstanding[c] = outstanding[c].saturating_sub(k);
                        echoes.fetch_add(k as u64, Ordering::Relaxed);
                        if k > 0 {
                            last_echo[c] = Instant::now();
                        }
                        if k < BATCH {
                            break;
                        }
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => return Err(e),
                }
            }
            top_up(c, &mut outstanding)?;
        }
        let now = Instant::now();
        if now.duration_since(scanned) >= LOST_AFTER / 5 {
            scanned = now;
            for c in 0..clients {
                if outstanding[c] > 0 && now.duration_since(last_echo[c]) >= LOST_AFTER {
                    lost.fetch_add(outstanding[c] as u64, Ordering::Relaxed);
                    outstanding[c] = 0;
                    last_echo[c] = now;
                    top_up(c, &mut outstanding)?;
                }
            }
        }
    }
    Ok(())
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    let mid = values.len() / 2;
    if values.len() % 2 == 1 {
        values[mid]
    } else {
        (values[mid - 1] + values[mid]) / 2.0
    }
}

/// Each reactor's share of the datagrams received, in percent.
fn shares(stats: &PoolStats) -> String {
    let total = stats.total.datagrams_received.max(1) as f64;
    let parts: Vec<String> = stats
        .per_reactor
        .iter()
        .map(|s| format!("{:.0}", 100.0 * s.datagrams_received as f64 / total))
        .collect();
    parts.join("/")
}

fn main() -> ExitCode {
    let cpus = allowed_cpus();
    let cfg = match parse_args(std::env::args().skip(1), cpus.len()) {
        Ok(cfg) => cfg,
        Err(message) => {
            eprintln!("{message}");
            return ExitCode::FAILURE;
        }
    };
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
        .map_or_else(|_| "unknown".to_owned(), |k| k.trim().to_owned());
    println!(
        "pool scaling: {} ({} CPUs allowed), Linux {kernel}",
        cpu_model(),
        cpus.len()
    );
    let load = std::fs::read_to_string("/proc/loadavg")
        .ok()
        .and_then(|l| l.split_whitespace().next().map(str::to_owned))
        .unwrap_or_else(|| "unknown".to_owned());
    println!("load average (1 min) before the run: {load}");
    let rmem_max = std::fs::read_to_string("/proc/sys/net/core/rmem_max")
        .ok()
        .and_then(|m| m.trim().parse::<usize>().ok());
    if rmem_max.is_some_and(|m| m < RECV_BUFFER) {
        println!(
            "note: net.core.rmem_max is below {RECV_BUFFER}: the reactors' receive buffers \
             are smaller, and a large window may drop (sysctl -w net.core.rmem_max={RECV_BUFFER})"
        );
    }
    if cfg.smoke {
        println!("smoke run (no --bench): one short round per size, numbers not meaningful");
    }
    println!(
        "{} clients x window {} ({PAYLOAD}-byte datagrams), {} generator thread(s), {} round(s) of {} s, {}",
        cfg.clients,
        cfg.window,
        cfg.gen_threads,
        cfg.rounds,
        cfg.seconds,
        if cfg.pin { "pinned" } else { "not pinned" }
    );
    let busiest = cfg.max_reactors + cfg.gen_threads;
    if busiest > cpus.len() {
        println!(
            "note: {} reactors + {} generator thread(s) on {} CPUs: the load generator competes \
             with the reactors, so the figures bound the machine, not the pool's scaling",
            cfg.max_reactors,
            cfg.gen_threads,
            cpus.len()
        );
    }
    println!();
    println!(
        "{:>3} | {:>11} | {:>13} | {:>7} | {:>9} | {:>9} | {:>12} | {:>6} | shares (%)",
        "N", "median kpps", "min..max", "vs N=1", "reactors", "generator", "kpps/reactor", "lost"
    );
    println!(
        "{:>3} | {:>11} | {:>13} | {:>7} | {:>9} | {:>9} | {:>12} | {:>6} |",
        "", "", "", "", "CPUs", "CPUs", "CPU", ""
    );
    println!("{}", "-".repeat(104));
    let mut base = None;
    for n in 1..=cfg.max_reactors {
        let mut kpps = Vec::with_capacity(cfg.rounds);
        let mut reactor_cpus = Vec::with_capacity(cfg.rounds);
        let mut gen_cpus = Vec::with_capacity(cfg.rounds);
        let mut per_cpu = Vec::with_capacity(cfg.rounds);
        let mut lost = 0;
        let mut last = None;
        for _ in 0..cfg.rounds {
            match round(&cfg, &cpus, n) {
                Ok(r) => {
                    kpps.push(r.kpps);
                    if let Some(c) = r.reactor_cpus {
                        reactor_cpus.push(c);
                        per_cpu.push(r.kpps / c.max(1e-9));
                    }
                    gen_cpus.extend(r.gen_cpus);
                    lost += r.lost;
                    last = Some(r.stats);
                }
                Err(e) => {
                    eprintln!("N = {n}: {e}");
                    return ExitCode::FAILURE;
                }
            }
        }
        let (lo, hi) = kpps.iter().fold((f64::INFINITY, 0.0f64), |(lo, hi), &k| {
            (lo.min(k), hi.max(k))
        });
        let m = median(&mut kpps);
        let ratio = m / *base.get_or_insert(m);
        let shares = last.as_ref().map(shares).unwrap_or_default();
        let or_dash = |values: &mut Vec<f64>, digits: usize| {
            if values.is_empty() {
                "-".to_owned()
            } else {
                format!("{:.*}", digits, median(values))
            }
        };
        println!(
            "{n:>3} | {m:>11.1} | {:>13} | {ratio:>6.2}x | {:>9} | {:>9} | {:>12} | {lost:>6} | {shares}",
            format!("{lo:.1}..{hi:.1}"),
            or_dash(&mut reactor_cpus, 2),
            or_dash(&mut gen_cpus, 2),
            or_dash(&mut per_cpu, 1),
        );
    }
    ExitCode::SUCCESS
}
