//! `cargo bench --bench echo`: twine's echo server side by side with the alternatives,
//! on 127.0.0.1, 64-byte datagrams.
//!
//! Servers: (a) twine (`Reactor` + a `DatagramProtocol` that writes every datagram back,
//! default options, so replies go out with UDP segmentation offload); (a') the same with
//! `segmentation(false)`, one datagram per message as (c) sends; (a-spin) (a) in latency
//! mode, its reactor spinning before it sleeps (`Reactor::set_spin`; skipped in a build
//! without it); (b) a blocking `std::net::UdpSocket` loop; (c) a hand-written mio loop
//! with `recvmmsg`/`sendmmsg`, the batch-I/O limit; (d) tokio's current-thread runtime;
//! (e) Twisted, when `target/twisted-venv` exists (`.ci/twisted-venv`).
//!
//! Modes. Open loop (`echo/openloop.rs`, as dnsperf/resperf load a DNS server): datagrams
//! offered at a fixed rate, stepped up until more than 0.1% are lost, which gives each
//! server's maximum sustainable rate; at one rate every server sustains, the whole
//! machine's CPU time per datagram (all CPUs, `/proc/stat`, softirq included); at half
//! the lowest maximum, the round trip under load (p50, p99). Closed loop
//! (`echo/loadgen.rs`): a window of datagrams in flight (64, and a sweep of windows for
//! twine and (c)), echoes per second; ping-pong, one in flight, round-trip p50 and p99,
//! with the load generator on the server's CPU and on another. The servers take turns,
//! in rotated order, over the rounds; the tables show medians, and a full run writes
//! `BENCHMARKS.md` and `BENCHMARKS.svg`. A measurement during which other programs took
//! CPU (`/proc/stat`) is repeated.
//!
//! ```text
//! cargo bench --bench echo                  # full run; writes BENCHMARKS.md and .svg
//! cargo bench --bench echo -- --quick       # 1 short round, prints only
//! target/release/deps/echo-* --only twine --count 100000   # one server, a summary line
//! target/release/deps/echo-* --only twine --window 16 --pin    # one window, pinned
//! target/release/deps/echo-* --only mio --rate 200000 --pin    # one open-loop step
//! bash benches/echo/callgrind.sh [--write]  # user-space instructions per datagram
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does) it is a smoke test: every
//! server in every mode briefly, nothing written; it fails only if a server echoed
//! nothing.

#[path = "echo/loadgen.rs"]
mod loadgen;
#[path = "echo/noise.rs"]
mod noise;
#[path = "echo/openloop.rs"]
mod openloop;
#[path = "echo/report.rs"]
mod report;
#[path = "echo/servers.rs"]
mod servers;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use loadgen::{Outcome, Plan, Until};
use openloop::{Step, StepOutcome};
use report::{Machine, Row, median};
use servers::{Kind, Server};
use twine::bench_support::pin_to_cpu;

const USAGE: &str = "\
usage: cargo bench --bench echo [-- --quick]
       echo-BENCH --only NAME [--count N] [--window W] [--pin]
       echo-BENCH --only NAME --rate R [--pin]

  --quick          one short round; prints the tables, writes nothing
  --only NAME      start only that server (twine, twine_plain, twine_spin, std, mio,
                   tokio, twisted) and print a one-line summary:
  --count N          closed loop: send it N echoes (default 200000) ...
  --window W         ... with W datagrams in flight (default 64)
  --rate R           open loop instead: offer R datagrams a second for 1 s; prints
                     loss, round trip and CPU per datagram
  --pin            pin as the bench does (server on the first allowed CPU, load
                   generator on the second); unpinned otherwise (callgrind.sh)
Without --bench (which cargo bench adds) and --only: a brief smoke test, as under
cargo test --benches.";

/// Datagrams in flight in the main closed-loop column.
const WINDOW: usize = 64;
/// The windows of the closed-loop sweep (for [`Kind::SWEPT`]).
const SWEEP: [usize; 6] = [8, 16, 32, 64, 128, 256];
/// An outstanding datagram not echoed within this is lost.
const LOST_AFTER: Duration = Duration::from_millis(50);
/// Loss beyond which an offered rate is not sustained.
const MAX_LOSS: f64 = 0.001;
/// The whole-machine CPU is measured at this share of the lowest maximum rate, the
/// latency under load at [`LATENCY_SHARE`].
const CPU_SHARE: f64 = 0.8;
const LATENCY_SHARE: f64 = 0.5;

/// How the maximum rate is searched for.
#[derive(Clone, Copy)]
struct Search {
    /// The first rate tried, where no earlier round gave a maximum.
    start: f64,
    /// The step up (or down) while no failing (or passing) rate is known: first without
    /// an earlier maximum, then around one.
    first_factor: f64,
    factor: f64,
    /// Bisections between the highest pass and the lowest failure: first (4 of a 1.5x
    /// bracket leave 2.6% steps), then around an earlier maximum (3 of 1.2x: 2.3%).
    first_bisections: usize,
    bisections: usize,
    /// At most this many steps up or down before bisecting.
    max_steps: usize,
    /// One step.
    step: Step,
}

/// How long each measurement lasts.
struct Settings {
    /// Rounds of the maximum-rate search, then rounds of every other mode.
    search_rounds: usize,
    rounds: usize,
    search: Search,
    tput_warmup: Duration,
    tput_time: Duration,
    /// Each window of the sweep but the main one (measured with every server).
    sweep_windows: &'static [usize],
    sweep_time: Duration,
    ping_warmup: Duration,
    ping_time: Duration,
    /// The open-loop steps at a fixed rate: CPU per datagram, and latency under load.
    cpu_step: Step,
    latency_step: Step,
    write: bool,
    /// Fail if a measurement got no echo.
    smoke: bool,
}

impl Settings {
    fn full() -> Settings {
        // Many short rounds rather than a few long ones: on a shared or virtual machine
        // the speed drifts, and interleaving spreads that over every server alike.
        Settings {
            search_rounds: 5,
            rounds: 9,
            search: Search {
                start: 20_000.0,
                first_factor: 1.5,
                factor: 1.2,
                first_bisections: 4,
                bisections: 3,
                max_steps: 16,
                step: step(50, 200, 50, false),
            },
            tput_warmup: Duration::from_millis(100),
            tput_time: Duration::from_millis(600),
            sweep_windows: &SWEEP,
            sweep_time: Duration::from_millis(300),
            ping_warmup: Duration::from_millis(50),
            ping_time: Duration::from_millis(300),
            cpu_step: step(100, 1000, 50, false),
            latency_step: step(50, 300, 50, true),
            write: true,
            smoke: false,
        }
    }

    fn quick() -> Settings {
        Settings {
            search_rounds: 1,
            rounds: 1,
            tput_time: Duration::from_millis(300),
            sweep_time: Duration::from_millis(200),
            ping_time: Duration::from_millis(200),
            cpu_step: step(50, 500, 50, false),
            latency_step: step(50, 200, 50, true),
            write: false,
            ..Settings::full()
        }
    }

    fn smoke() -> Settings {
        // Every step short; the drains long, so that a stalled server's echoes still
        // count (a drain ends as soon as every echo is back).
        Settings {
            search_rounds: 1,
            rounds: 1,
            search: Search {
                start: 2_000.0,
                first_factor: 2.0,
                factor: 2.0,
                first_bisections: 0,
                bisections: 0,
                max_steps: 2,
                step: step(10, 30, 200, false),
            },
            tput_warmup: Duration::from_millis(20),
            tput_time: Duration::from_millis(30),
            sweep_windows: &[8, 256],
            sweep_time: Duration::from_millis(20),
            ping_warmup: Duration::from_millis(10),
            ping_time: Duration::from_millis(30),
            cpu_step: step(10, 30, 200, false),
            latency_step: step(10, 30, 200, true),
            write: false,
            smoke: true,
        }
    }

    fn closed(&self, window: usize, warmup: Duration, time: Duration) -> Plan {
        Plan {
            window,
            warmup,
            until: Until::Time(time),
            lost_after: LOST_AFTER,
            record: false,
        }
    }

    fn ping_pong(&self) -> Plan {
        Plan {
            window: 1,
            warmup: self.ping_warmup,
            until: Until::Time(self.ping_time),
            lost_after: LOST_AFTER,
            record: true,
        }
    }
}

/// An open-loop step at no rate yet: warm-up, measured time, drain, in milliseconds.
fn step(warmup: u64, time: u64, drain: u64, record: bool) -> Step {
    Step {
        rate: 0.0,
        warmup: Duration::from_millis(warmup),
        time: Duration::from_millis(time),
        drain: Duration::from_millis(drain),
        record,
    }
}

/// One server alone, from the command line.
struct OnlyArgs {
    kind: Kind,
    count: u64,
    window: usize,
    rate: Option<f64>,
    pin: bool,
}

enum Mode {
    Bench(Box<Settings>),
    Only(OnlyArgs),
    Help,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Mode, String> {
    let (mut bench, mut quick, mut only, mut pin) = (false, false, None, false);
    let (mut count, mut window, mut rate) = (None, None, None);
    let mut args = args.peekable();
    fn number<T: std::str::FromStr>(flag: &str, arg: Option<String>) -> Result<T, String>
    where
        T::Err: std::fmt::Display,
    {
        let n = arg.ok_or(format!("{flag} needs a number"))?;
        n.parse::<T>().map_err(|e| format!("{flag} {n}: {e}"))
    }
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // Added by `cargo bench`; `cargo test --benches` leaves it out.
            "--bench" => bench = true,
            "--quick" => quick = true,
            "--pin" => pin = true,
            "--only" => {
                let name = args.next().ok_or("--only needs a server name")?;
                only = Some(Kind::from_name(&name).ok_or(format!("unknown server {name:?}"))?);
            }
            "--count" => count = Some(number::<u64>("--count", args.next())?),
            "--window" => window = Some(number::<usize>("--window", args.next())?.max(1)),
            "--rate" => rate = Some(number::<f64>("--rate", args.next())?),
            "-h" | "--help" => return Ok(Mode::Help),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match only {
        Some(kind) => {
            if rate.is_some() && (count.is_some() || window.is_some()) {
                return Err("--rate is the open loop: no --count or --window".to_owned());
            }
            Ok(Mode::Only(OnlyArgs {
                kind,
                count: count.unwrap_or(200_000),
                window: window.unwrap_or(WINDOW),
                rate,
                pin,
            }))
        }
        None if count.is_some() || window.is_some() || rate.is_some() || pin => {
            Err("--count, --window, --rate and --pin go with --only".to_owned())
        }
        None if quick => Ok(Mode::Bench(Box::new(Settings::quick()))),
        None if bench => Ok(Mode::Bench(Box::new(Settings::full()))),
        None => Ok(Mode::Bench(Box::new(Settings::smoke()))),
    }
}

fn main() -> ExitCode {
    let result = match parse_args(std::env::args().skip(1)) {
        Ok(Mode::Help) => {
            println!("{USAGE}");
            Ok(())
        }
        Ok(Mode::Only(args)) => only(&args),
        Ok(Mode::Bench(settings)) => bench(&settings),
        Err(e) => Err(format!("{e}\n{USAGE}")),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("echo bench: {e}");
            ExitCode::FAILURE
        }
    }
}

/// One server: `count` echoes with a window of `window`, or one open-loop second at
/// `rate`; then one summary line.
fn only(args: &OnlyArgs) -> Result<(), String> {
    let kind = args.kind;
    if kind == Kind::Twisted && !servers::twisted_python().exists() {
        return Err(format!(
            "{} is missing",
            servers::twisted_python().display()
        ));
    }
    let pinning = if args.pin {
        plan_pinning()
    } else {
        Pinning::none()
    };
    if args.pin {
        println!("{}", pinning.said);
    }
    let server = servers::start(kind, pinning.server)?;
    if let Some(cpu) = pinning.far {
        let _ = pin_to_cpu(cpu);
    }
    if let Some(rate) = args.rate {
        let step = Step {
            rate,
            ..step(100, 1000, 50, true)
        };
        let children: Vec<u32> = server.child_pid().into_iter().collect();
        let out = openloop::run(
            server.addr,
            &step,
            server.cpu.as_deref(),
            pinning.far,
            &children,
        )
        .map_err(|e| format!("open-loop load generator: {e}"));
        server.stop();
        let out = out?;
        println!("{}: open loop, {}", kind.name(), open_line(&out));
        return Ok(());
    }
    let plan = Plan {
        window: args.window,
        warmup: Duration::ZERO,
        until: Until::Count(args.count),
        // Generous: under valgrind a thread can wait long for its turn.
        lost_after: Duration::from_secs(2),
        record: false,
    };
    let out = loadgen::run(server.addr, &plan, server.cpu.as_deref())
        .map_err(|e| format!("load generator: {e}"));
    server.stop();
    let out = out?;
    println!(
        "{}: {} echoes in {:.3} s ({:.1} kpps), window {}, lost {}, late {}, {}",
        kind.name(),
        out.echoes,
        out.elapsed.as_secs_f64(),
        out.kpps(),
        args.window,
        out.lost,
        out.late,
        busy_line(&out)
    );
    Ok(())
}

/// Where each thread runs.
struct Pinning {
    server: Option<usize>,
    /// The load generator on the server's CPU (same-core ping-pong), and on another
    /// (every other mode).
    near: Option<usize>,
    far: Option<usize>,
    /// Whether near and far are different CPUs.
    cross: bool,
    said: String,
}

impl Pinning {
    fn none() -> Pinning {
        Pinning {
            server: None,
            near: None,
            far: None,
            cross: false,
            said: String::new(),
        }
    }
}

/// The CPUs this process may run on (Linux: `Cpus_allowed_list`), lowest first.
fn allowed_cpus() -> Vec<usize> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let Some(list) = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))
    else {
        let n = std::thread::available_parallelism().map_or(1, |n| n.get());
        return (0..n).collect();
    };
    let mut cpus = Vec::new();
    for part in list.trim().split(',') {
        let range = match part.split_once('-') {
            Some((a, b)) => a.parse::<usize>().ok().zip(b.parse().ok()),
            None => part.parse::<usize>().ok().map(|a| (a, a)),
        };
        if let Some((a, b)) = range {
            cpus.extend(a..=b);
        }
    }
    cpus
}

fn plan_pinning() -> Pinning {
    let cpus = allowed_cpus();
    let unpinned = |why: String| Pinning {
        said: why,
        ..Pinning::none()
    };
    let Some(&first) = cpus.first() else {
        return unpinned("not pinned: no CPU list found".to_owned());
    };
    if let Err(e) = pin_to_cpu(first) {
        return unpinned(format!(
            "not pinned ({e}): threads go where the OS puts them"
        ));
    }
    match cpus.get(1) {
        Some(&second) => Pinning {
            server: Some(first),
            near: Some(first),
            far: Some(second),
            cross: true,
            said: format!(
                "Pinning: every server on CPU {first}; the load generator on CPU {second} \
                 (open loop, closed loop, cross-core ping-pong), or on CPU {first} with \
                 the server (same-core ping-pong)"
            ),
        },
        None => Pinning {
            server: Some(first),
            near: Some(first),
            far: Some(first),
            cross: false,
            said: format!(
                "Pinning shared: one CPU ({first}) for every server and the load generator, \
                 in every mode (cross-core ping-pong is then same-core too)"
            ),
        },
    }
}

/// Every measurement of one server.
#[derive(Default)]
struct Samples {
    /// Open loop: the maximum sustained rate of each search (kpps), and how many
    /// searches ended because the load generator could not keep the pace.
    max: Vec<f64>,
    gen_limited: usize,
    /// The rates of the fixed-rate steps (per second), and what they measured.
    cpu_rate: f64,
    machine_us: Vec<f64>,
    ours_us: Vec<f64>,
    server_us_open: Vec<f64>,
    cpu_loss: Vec<f64>,
    latency_rate: f64,
    lat_p50: Vec<f64>,
    lat_p99: Vec<f64>,
    /// Closed loop, the main window: kpps, lost; server CPU time per echo (µs), and how
    /// busy the server and the load generator were (%).
    kpps: Vec<f64>,
    lost: u64,
    cpu_us: Vec<f64>,
    server_busy: Vec<f64>,
    gen_busy: Vec<f64>,
    /// The sweep, by window.
    sweep: Vec<SweepSamples>,
    /// Ping-pong on the server's CPU and on another.
    p50: Vec<f64>,
    p99: Vec<f64>,
    cross_p50: Vec<f64>,
    cross_p99: Vec<f64>,
}

/// One window of the closed-loop sweep: kpps and how busy the server and the load
/// generator were (%), each round.
#[derive(Default)]
struct SweepSamples {
    window: usize,
    kpps: Vec<f64>,
    server_busy: Vec<f64>,
    gen_busy: Vec<f64>,
}

impl Samples {
    /// Records a closed-loop run at `window` for the sweep.
    fn sweep_add(&mut self, window: usize, out: &Outcome) {
        let i = match self.sweep.iter().position(|p| p.window == window) {
            Some(i) => i,
            None => {
                self.sweep.push(SweepSamples {
                    window,
                    ..SweepSamples::default()
                });
                self.sweep.len() - 1
            }
        };
        let p = &mut self.sweep[i];
        p.kpps.push(out.kpps());
        p.server_busy.extend(out.busy(out.server_cpu));
        p.gen_busy.extend(out.busy(out.gen_cpu));
    }
}

/// The servers, started, and what a measurement needs to know of the run.
struct Bench<'a> {
    settings: &'a Settings,
    running: Vec<Server>,
    children: Vec<u32>,
    calm: Calm,
    pinning: Pinning,
}

impl Bench<'_> {
    /// How many times a disturbed measurement is tried: once in the smoke test, which
    /// checks only that echoes come back.
    fn tries(&self) -> usize {
        self.calm.tries
    }

    /// `run`, through [`measure`]; in the smoke test, tried again (up to 3 times in
    /// all) while it got no echo, and an error if it never did: a slow machine may stall
    /// one short measurement, but a server that never answers is broken.
    fn checked<T>(
        &mut self,
        head: &str,
        echoes: impl Fn(&T) -> u64,
        mut run: impl FnMut() -> Result<T, String>,
    ) -> Result<T, String> {
        let tries = self.tries();
        for _ in 0..3 {
            let out = measure(&self.children, tries, &mut self.calm, head, &mut run)?;
            if !self.settings.smoke || echoes(&out) > 0 {
                return Ok(out);
            }
        }
        Err(format!("{}: no echo came back", head.trim_end()))
    }

    /// One closed-loop measurement of server `i`, the load generator on `cpu`.
    fn closed(
        &mut self,
        i: usize,
        plan: &Plan,
        cpu: Option<usize>,
        head: &str,
    ) -> Result<Outcome, String> {
        if let Some(cpu) = cpu {
            let _ = pin_to_cpu(cpu);
        }
        let server = &self.running[i];
        let (addr, schedstat, label) = (server.addr, server.cpu.clone(), server.kind.label());
        self.checked(
            head,
            |out: &Outcome| out.echoes,
            || {
                loadgen::run(addr, plan, schedstat.as_deref())
                    .map_err(|e| format!("load generator on {label}: {e}"))
            },
        )
    }

    /// One open-loop step of server `i` at `rate`.
    fn open(
        &mut self,
        i: usize,
        step: &Step,
        rate: f64,
        head: &str,
    ) -> Result<StepOutcome, String> {
        let cpu = self.pinning.far;
        if let Some(cpu) = cpu {
            let _ = pin_to_cpu(cpu);
        }
        let server = &self.running[i];
        let (addr, schedstat, label) = (server.addr, server.cpu.clone(), server.kind.label());
        let step = Step { rate, ..*step };
        let children = self.children.clone();
        self.checked(
            head,
            |out: &StepOutcome| out.echoed,
            || {
                openloop::run(addr, &step, schedstat.as_deref(), cpu, &children)
                    .map_err(|e| format!("open-loop load generator on {label}: {e}"))
            },
        )
    }

    /// Searches server `i`'s maximum sustained rate, from `start` (per second): steps up
    /// (or down) by a factor until one rate passes and one fails, then bisects between
    /// the two. Returns the highest rate that passed (0 if none) and whether the load
    /// generator failed to keep a pace.
    fn search(
        &mut self,
        i: usize,
        start: f64,
        known: bool,
        head: &str,
    ) -> Result<(f64, bool, String), String> {
        let search = self.settings.search;
        let (factor, bisections) = if known {
            (search.factor, search.bisections)
        } else {
            (search.first_factor, search.first_bisections)
        };
        let (mut pass, mut fail): (Option<f64>, Option<f64>) = (None, None);
        let mut ladder = String::new();
        let mut gen_limited = false;
        let mut try_rate = |b: &mut Self, rate: f64, ladder: &mut String| -> Result<bool, String> {
            let out = b.open(i, &search.step, rate, head)?;
            let ok = out.kept_pace && out.loss() <= MAX_LOSS;
            gen_limited |= !out.kept_pace;
            let mark = if !out.kept_pace {
                format!("pace {:.0}k", out.sent_rate() / 1e3)
            } else if ok {
                "ok".to_owned()
            } else {
                format!("{:.2}%", out.loss() * 100.0)
            };
            ladder.push_str(&format!(" {:.0}k {mark};", rate / 1e3));
            Ok(ok)
        };
        let mut rate = start;
        for _ in 0..search.max_steps.max(1) {
            if try_rate(self, rate, &mut ladder)? {
                pass = Some(rate);
                if fail.is_some() {
                    break;
                }
                rate *= factor;
            } else {
                fail = Some(rate);
                if pass.is_some() {
                    break;
                }
                rate /= factor;
            }
        }
        for _ in 0..bisections {
            let (Some(lo), Some(hi)) = (pass, fail) else {
                break;
            };
            let mid = (lo * hi).sqrt();
            if try_rate(self, mid, &mut ladder)? {
                pass = Some(mid);
            } else {
                fail = Some(mid);
            }
        }
        Ok((pass.unwrap_or(0.0), gen_limited, ladder))
    }
}

fn bench(settings: &Settings) -> Result<(), String> {
    let machine = Machine::read();
    let pinning = plan_pinning();
    println!("echo bench: 64-byte datagrams on 127.0.0.1");
    println!(
        "machine: {}, {} cores, Linux {}",
        machine.cpu, machine.cores, machine.kernel
    );
    println!("{}", pinning.said);
    let mut notes = Vec::new();
    let mut running: Vec<Server> = Vec::new();
    for kind in Kind::ALL {
        if kind == Kind::Twisted && !servers::twisted_python().exists() {
            let note = format!(
                "(e) Twisted skipped: {} does not exist (make it with `bash .ci/twisted-venv`).",
                servers::twisted_python().display()
            );
            println!("{note}");
            notes.push(note);
            continue;
        }
        if kind == Kind::TwineSpin && !servers::SPIN_BUILT {
            let note = format!("(a-spin) skipped: {}.", servers::NO_SPIN);
            println!("{note}");
            notes.push(note);
            continue;
        }
        match servers::start(kind, pinning.server) {
            Ok(server) => running.push(server),
            Err(e) if kind == Kind::Twisted => {
                let note = format!("(e) Twisted skipped: it did not start: {e}.");
                println!("{note}");
                notes.push(note);
            }
            Err(e) => return Err(format!("{}: {e}", kind.label())),
        }
    }
    let n = running.len();
    let mut samples: Vec<Samples> = (0..n).map(|_| Samples::default()).collect();
    let children: Vec<u32> = running.iter().filter_map(Server::child_pid).collect();
    let mut b = Bench {
        settings,
        running,
        children,
        calm: Calm {
            tries: if settings.smoke { 1 } else { TRIES },
            ..Calm::default()
        },
        pinning,
    };
    let started = Instant::now();

    // The maximum rates first: the fixed-rate modes need the lowest of them.
    for round in 0..settings.search_rounds {
        for i in (0..n).map(|i| (i + round) % n) {
            let kind = b.running[i].kind;
            let head = format!(
                "search {}/{}  open loop   {:<21}",
                round + 1,
                settings.search_rounds,
                kind.label()
            );
            let before = median(&samples[i].max);
            let known = before.is_finite() && before > 0.0;
            let start = if known {
                before * 1e3 / settings.search.factor
            } else {
                settings.search.start
            };
            let (max, limited, ladder) = b.search(i, start, known, &head)?;
            let s = &mut samples[i];
            s.max.push(max / 1e3);
            s.gen_limited += usize::from(limited);
            println!(
                "{head}  max {:8.1} kpps  ({})",
                max / 1e3,
                ladder.trim().trim_end_matches(';')
            );
        }
    }
    let lowest = (0..n)
        .filter(|&i| Kind::SETS_COMMON_RATE.contains(&b.running[i].kind))
        .map(|i| median(&samples[i].max))
        .filter(|m| m.is_finite())
        .fold(f64::INFINITY, f64::min)
        * 1e3;
    let lowest = if lowest.is_finite() && lowest > 0.0 {
        lowest
    } else {
        let note = format!(
            "No server among (a), (a'), (b), (c), (d) sustained a rate: the fixed-rate \
             modes ran at the search's first rate, {:.0} per second.",
            settings.search.start
        );
        println!("{note}");
        notes.push(note);
        settings.search.start / CPU_SHARE
    };
    let (cpu_rate, latency_rate) = (CPU_SHARE * lowest, LATENCY_SHARE * lowest);
    for (i, s) in samples.iter_mut().enumerate() {
        // A server with a lower maximum than those that set the rates (Twisted, say) is
        // measured at the same shares of its own maximum instead, and its row says so.
        let own = median(&s.max) * 1e3;
        let own = if own.is_finite() && own > 0.0 {
            own
        } else {
            lowest
        };
        s.cpu_rate = cpu_rate.min(CPU_SHARE * own);
        s.latency_rate = latency_rate.min(LATENCY_SHARE * own);
        if s.cpu_rate < cpu_rate {
            let note = format!(
                "{}'s maximum is below the lowest of (a), (a'), (b), (c), (d): its CPU \
                 per datagram and latency under load are measured at {:.0}% and {:.0}% \
                 of its own maximum ({:.1} and {:.1} kpps), not compared with the others'.",
                b.running[i].kind.label(),
                CPU_SHARE * 100.0,
                LATENCY_SHARE * 100.0,
                s.cpu_rate / 1e3,
                s.latency_rate / 1e3
            );
            println!("{note}");
            notes.push(note);
        }
    }
    println!(
        "lowest maximum of (a), (a'), (b), (c), (d): {:.1} kpps; CPU per datagram at \
         {:.1} kpps, latency under load at {:.1} kpps",
        lowest / 1e3,
        cpu_rate / 1e3,
        latency_rate / 1e3
    );

    let (near, far) = (b.pinning.near, b.pinning.far);
    for round in 0..settings.rounds {
        let order: Vec<usize> = (0..n).map(|i| (i + round) % n).collect();
        let r = format!("round {}/{}", round + 1, settings.rounds);
        let label = |b: &Bench<'_>, i: usize| b.running[i].kind.label();
        let main = settings.closed(WINDOW, settings.tput_warmup, settings.tput_time);
        for &i in &order {
            let head = format!("{r}  closed {WINDOW:<4}  {:<21}", label(&b, i));
            let out = b.closed(i, &main, far, &head)?;
            let s = &mut samples[i];
            s.kpps.push(out.kpps());
            s.lost += out.lost;
            if let Some(cpu) = out.server_cpu {
                s.cpu_us
                    .push(cpu.as_secs_f64() * 1e6 / out.echoes.max(1) as f64);
            }
            s.server_busy.extend(out.busy(out.server_cpu));
            s.gen_busy.extend(out.busy(out.gen_cpu));
            if Kind::SWEPT.contains(&b.running[i].kind) {
                s.sweep_add(WINDOW, &out);
            }
            println!("{head}  {}", throughput_line(&out));
        }
        for &window in settings.sweep_windows.iter().filter(|&&w| w != WINDOW) {
            let plan = settings.closed(window, settings.ping_warmup, settings.sweep_time);
            let swept: Vec<usize> = order
                .iter()
                .copied()
                .filter(|&i| Kind::SWEPT.contains(&b.running[i].kind))
                .collect();
            for i in swept {
                let head = format!("{r}  closed {window:<4}  {:<21}", label(&b, i));
                let out = b.closed(i, &plan, far, &head)?;
                samples[i].sweep_add(window, &out);
                println!("{head}  {}", throughput_line(&out));
            }
        }
        for (cross, cpu) in [(false, near), (true, far)] {
            let plan = settings.ping_pong();
            let mode = if cross { "ping cross " } else { "ping same  " };
            for &i in &order {
                let head = format!("{r}  {mode}  {:<21}", label(&b, i));
                let out = b.closed(i, &plan, cpu, &head)?;
                let s = &mut samples[i];
                let (p50, p99) = if cross {
                    (&mut s.cross_p50, &mut s.cross_p99)
                } else {
                    (&mut s.p50, &mut s.p99)
                };
                p50.push(out.rtt_us(0.5));
                p99.push(out.rtt_us(0.99));
                println!("{head}  {}", ping_line(&out));
            }
        }
        for &i in &order {
            let head = format!("{r}  open CPU    {:<21}", label(&b, i));
            let rate = samples[i].cpu_rate;
            let out = b.open(i, &settings.cpu_step, rate, &head)?;
            let s = &mut samples[i];
            s.machine_us.extend(out.machine_us());
            s.ours_us.extend(out.ours_us());
            s.server_us_open.extend(out.server_us());
            s.cpu_loss.push(out.loss());
            println!("{head}  {}", open_line(&out));
        }
        for &i in &order {
            let head = format!("{r}  open lat    {:<21}", label(&b, i));
            let rate = samples[i].latency_rate;
            let out = b.open(i, &settings.latency_step, rate, &head)?;
            let s = &mut samples[i];
            s.lat_p50.push(out.rtt_us(0.5));
            s.lat_p99.push(out.rtt_us(0.99));
            println!("{head}  {}", open_line(&out));
        }
    }
    let rows: Vec<Row> = b
        .running
        .iter()
        .zip(&samples)
        .map(|(server, s)| Row {
            kind: server.kind,
            max_kpps: median(&s.max),
            gen_limited: s.gen_limited > 0,
            cpu_rate_kpps: s.cpu_rate / 1e3,
            machine_us: median(&s.machine_us),
            ours_us: median(&s.ours_us),
            server_us_open: median(&s.server_us_open),
            cpu_loss: median(&s.cpu_loss),
            latency_rate_kpps: s.latency_rate / 1e3,
            lat_p50: median(&s.lat_p50),
            lat_p99: median(&s.lat_p99),
            kpps: median(&s.kpps),
            lost: s.lost,
            p50: median(&s.p50),
            p99: median(&s.p99),
            cross_p50: median(&s.cross_p50),
            cross_p99: median(&s.cross_p99),
            cpu_us: median(&s.cpu_us),
            server_busy: median(&s.server_busy),
            gen_busy: median(&s.gen_busy),
            sweep: {
                let mut sweep: Vec<report::SweepPoint> = s
                    .sweep
                    .iter()
                    .map(|p| report::SweepPoint {
                        window: p.window,
                        kpps: median(&p.kpps),
                        server_busy: median(&p.server_busy),
                        gen_busy: median(&p.gen_busy),
                    })
                    .collect();
                sweep.sort_by_key(|p| p.window);
                sweep
            },
        })
        .collect();
    let took = started.elapsed();
    let Bench {
        running,
        calm,
        pinning,
        ..
    } = b;
    for server in running {
        server.stop();
    }
    let said = format!("{}.", calm.said());
    println!("{said}");
    notes.push(said);
    notes.push(format!(
        "The measurements took {:.0} s in all.",
        took.as_secs_f64()
    ));
    println!(
        "\nmedians of {} of search and {} of the other modes, {:.0} s in all:\n",
        plural(settings.search_rounds),
        plural(settings.rounds),
        took.as_secs_f64()
    );
    print!("{}", report::tables(&rows));
    if let Some(note) = report::saturation(&rows) {
        println!("\n{note}");
    }
    println!();
    print!("{}", report::targets(&rows, pinning.cross));
    if settings.write {
        write_files(&rows, settings, &machine, &pinning, &notes)?;
    } else {
        println!("(not written to BENCHMARKS.md: only a full `cargo bench --bench echo` is)");
    }
    Ok(())
}

/// Other programs' CPU use beyond which a measurement is disturbed (in CPUs).
const DISTURBED: f64 = 0.1;
/// Tries of a measurement while it is disturbed.
const TRIES: usize = 3;

/// How the measurements went with other programs about.
#[derive(Default)]
struct Calm {
    /// Tries of a disturbed measurement.
    tries: usize,
    measurements: usize,
    repeated: usize,
    /// Disturbed every try; the least disturbed try was kept.
    kept_disturbed: usize,
}

impl Calm {
    fn said(&self) -> String {
        if self.tries <= 1 {
            return format!(
                "Other programs' CPU use was read from /proc/stat around each of the {} \
                 measurements: {} disturbed by more than {DISTURBED} CPU (not repeated)",
                self.measurements, self.repeated
            );
        }
        format!(
            "Other programs' CPU use was read from /proc/stat around each of the {} \
             measurements: {} disturbed by more than {DISTURBED} CPU (repeated up to {} \
             times){}",
            self.measurements,
            self.repeated,
            self.tries - 1,
            if self.kept_disturbed > 0 {
                format!(
                    "; {} stayed disturbed, and their calmest try was kept",
                    self.kept_disturbed
                )
            } else {
                String::new()
            }
        )
    }
}

/// One measurement (`run`), repeated (up to `tries` times in all) while other programs
/// took more than [`DISTURBED`] CPU during it (as far as `/proc/stat` tells); `children`
/// are the server processes.
fn measure<T>(
    children: &[u32],
    tries: usize,
    calm: &mut Calm,
    head: &str,
    run: &mut impl FnMut() -> Result<T, String>,
) -> Result<T, String> {
    calm.measurements += 1;
    let mut kept: Option<(T, f64)> = None;
    for attempt in 1..=tries {
        let (before, start) = (noise::read(children), Instant::now());
        let out = run()?;
        let others = noise::others(before, noise::read(children), start.elapsed()).unwrap_or(0.0);
        if kept.as_ref().is_none_or(|(_, least)| others < *least) {
            kept = Some((out, others));
        }
        if others <= DISTURBED {
            break;
        }
        if attempt == 1 {
            calm.repeated += 1;
        }
        if tries == 1 {
            // Counted above as disturbed; nothing to say per measurement.
            break;
        }
        let then = if attempt < tries {
            "again"
        } else {
            calm.kept_disturbed += 1;
            "keeping the calmest try"
        };
        println!("{head}  disturbed: other programs took {others:.2} CPU meanwhile; {then}");
    }
    Ok(kept.expect("at least one try").0)
}

fn plural(rounds: usize) -> String {
    if rounds == 1 {
        "1 round".to_owned()
    } else {
        format!("{rounds} rounds")
    }
}

fn busy_line(out: &Outcome) -> String {
    let busy = |cpu| out.busy(cpu).map_or("-".to_owned(), |b| format!("{b:.0}%"));
    format!(
        "busy: server {}, load generator {}",
        busy(out.server_cpu),
        busy(out.gen_cpu)
    )
}

fn throughput_line(out: &Outcome) -> String {
    format!(
        "{:8.1} kpps  lost {}  late {}  {}",
        out.kpps(),
        out.lost,
        out.late,
        busy_line(out)
    )
}

fn ping_line(out: &Outcome) -> String {
    format!(
        "p50 {:6.1} µs  p99 {:6.1} µs  ({} round trips, lost {})",
        out.rtt_us(0.5),
        out.rtt_us(0.99),
        out.echoes,
        out.lost
    )
}

fn open_line(out: &StepOutcome) -> String {
    let us = |v: Option<f64>| v.map_or("-".to_owned(), |v| format!("{v:.2} µs"));
    format!(
        "{:7.1} kpps offered, {:7.1} sent, loss {:.3}%  p50 {:6.1} µs  p99 {:6.1} µs  \
         CPU/datagram: machine {} ({} less others), server {}",
        out.rate / 1e3,
        out.sent_rate() / 1e3,
        out.loss() * 100.0,
        out.rtt_us(0.5),
        out.rtt_us(0.99),
        us(out.machine_us()),
        us(out.ours_us()),
        us(out.server_us()),
    )
}

fn write_files(
    rows: &[Row],
    settings: &Settings,
    machine: &Machine,
    pinning: &Pinning,
    notes: &[String],
) -> Result<(), String> {
    let root = std::path::Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/.."));
    let search = &settings.search;
    let ms = |d: Duration| d.as_millis();
    let method = format!(
        "Open loop (as dnsperf/resperf load a DNS server): a paced sender offers a fixed \
         rate (each wake-up sends what is due, as one segmented `sendmmsg`, then sleeps \
         until about 50 µs' worth is due again) and a receiver thread counts the echoes; \
         both on the load generator's CPU, with one socket: every datagram comes from one \
         client, so a server may gather its replies to a burst into one segmented send. A step lasts {} ms warm-up, {} ms measured, \
         {} ms for the last echoes; loss is 1 - echoed / sent. The maximum rate: steps \
         from {:.0} k/s up by {}x until one loses more than {}%, then {} bisections \
         (later rounds: from the previous median, by {}x, then {} bisections); the \
         highest passing step counts. \
         CPU per datagram: at {:.0}% of the lowest maximum of (a), (a'), (b), (c), (d), \
         the busy time of all CPUs from `/proc/stat` (all but idle and iowait: user, \
         system, irq, softirq, steal), load generator included, during {} ms, divided by \
         the echoes; beside it, the same less other programs' user and system time (what \
         is left: this benchmark's processes and all irq and softirq time), which a quiet \
         machine makes equal; the server thread's own share from its `schedstat`. Latency under \
         load: at {:.0}% of that lowest maximum, every round trip of {} ms. Closed loop: \
         {WINDOW} datagrams in flight (one more sent per echo; one not echoed within {} \
         ms is lost and replaced), {} ms warm-up, then echoes counted for {} ms; the sweep \
         ({}) runs (a), (a') and (c) for {} ms each. Ping-pong: one datagram in flight, {} \
         ms warm-up, then every round trip recorded for {} ms, with the load generator on \
         the server's CPU (same core) and on another (cross core). Every round runs every \
         server once per mode, in rotated order; the search has rounds of its own first. \
         The load generators batch (`recvmmsg`, and `sendmmsg` with UDP segmentation \
         offload), so that they cost less per datagram than any server. Servers: (a) \
         twine, `Reactor` + a `DatagramProtocol` whose `datagram_received` does \
         `t.write(data, from)`, default `ListenOptions` (batch size 32; the replies \
         gathered during a batch go out segmented, `UDP_SEGMENT`: one message per run of \
         replies to one client); (a') the same with `ListenOptions::segmentation(false)`: \
         one message per reply, as (c); (a-spin) (a) with `Reactor::set_spin({} µs)`; \
         (a-gro) (a) with `ListenOptions::receive_offload(true)`, shown apart: the load \
         generator segments, so on loopback its runs arrive coalesced without the kernel \
         ever segmenting them, which no real network gives; \
         (b) blocking `std::net::UdpSocket` `recv_from`/`send_to`; (c) a hand-written mio \
         loop, edge-triggered, `recvmmsg` of 32, one `sendmmsg`, until `EAGAIN`; (d) \
         tokio current-thread runtime, `recv_from` then `send_to`; (e) Twisted's \
         `listenUDP` + `datagramReceived` -> `transport.write` \
         (`benches/echo/twisted_echo.py`).",
        ms(search.step.warmup),
        ms(search.step.time),
        ms(search.step.drain),
        search.start / 1e3,
        search.first_factor,
        MAX_LOSS * 100.0,
        search.first_bisections,
        search.factor,
        search.bisections,
        CPU_SHARE * 100.0,
        ms(settings.cpu_step.time),
        LATENCY_SHARE * 100.0,
        ms(settings.latency_step.time),
        LOST_AFTER.as_millis(),
        ms(settings.tput_warmup),
        ms(settings.tput_time),
        settings
            .sweep_windows
            .iter()
            .map(|w| w.to_string())
            .collect::<Vec<_>>()
            .join(", "),
        ms(settings.sweep_time),
        ms(settings.ping_warmup),
        ms(settings.ping_time),
        servers::SPIN.as_micros(),
    );
    let rounds = format!(
        "{} of search and {} of the other modes",
        plural(settings.search_rounds),
        plural(settings.rounds)
    );
    let cx = report::Context {
        command: "cargo bench --bench echo",
        rounds: &rounds,
        machine,
        pinning: &pinning.said,
        cross: pinning.cross,
        method: &method,
        notes,
        callgrind: None,
    };
    let md = root.join("BENCHMARKS.md");
    let old = std::fs::read_to_string(&md).unwrap_or_default();
    let cx = report::Context {
        callgrind: report::callgrind_section(&old),
        ..cx
    };
    std::fs::write(&md, report::markdown(rows, &cx))
        .map_err(|e| format!("writing {}: {e}", md.display()))?;
    let subtitle = format!(
        "{}, {} cores, Linux {}; medians of {rounds}",
        machine.cpu, machine.cores, machine.kernel,
    );
    let svg = root.join("BENCHMARKS.svg");
    std::fs::write(&svg, report::svg(rows, &subtitle))
        .map_err(|e| format!("writing {}: {e}", svg.display()))?;
    println!("written: {} and {}", md.display(), svg.display());
    Ok(())
}
