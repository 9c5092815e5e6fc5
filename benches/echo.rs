//! `cargo bench --bench echo`: twine's echo server side by side with the alternatives,
//! on 127.0.0.1, 64-byte datagrams.
//!
//! Servers: (a) twine (`Reactor` + a `DatagramProtocol` that writes every datagram back,
//! default options, so replies go out with UDP segmentation offload); (a') the same with
//! `segmentation(false)`, one datagram per message as (c) sends; (b) a blocking `std::net::UdpSocket` loop; (c) a hand-written mio
//! loop with `recvmmsg`/`sendmmsg`, the batch-I/O limit; (d) tokio's current-thread
//! runtime; (e) Twisted, when `target/twisted-venv` exists (`.ci/twisted-venv`).
//!
//! Modes, both driven by one batching load generator (`echo/loadgen.rs`):
//! throughput (64 datagrams in flight, echoes per second) and ping-pong (one in flight,
//! round-trip p50 and p99). The servers take turns, in rotated order, over the rounds;
//! the table shows medians, and a full run writes `BENCHMARKS.md` and `BENCHMARKS.svg`.
//! Besides rates and round trips it shows, from `/proc/…/schedstat` (Linux), the server
//! thread's CPU time per echo and how busy the server and the load generator were in
//! throughput mode: where both saturate, the rate is the machine's, not the server's.
//!
//! ```text
//! cargo bench --bench echo                  # 9 rounds; writes BENCHMARKS.md and .svg
//! cargo bench --bench echo -- --quick       # 1 short round, prints only
//! target/release/deps/echo-* --only twine --count 100000   # one server, a summary line
//! bash benches/echo/callgrind.sh [--write]  # user-space instructions per datagram
//! ```
//!
//! Run without `--bench` (as `cargo test --benches` does) it is a smoke test: every
//! server briefly, nothing written.

#[path = "echo/loadgen.rs"]
mod loadgen;
#[path = "echo/noise.rs"]
mod noise;
#[path = "echo/report.rs"]
mod report;
#[path = "echo/servers.rs"]
mod servers;

use std::process::ExitCode;
use std::time::{Duration, Instant};

use loadgen::{Outcome, Plan, Until};
use report::{Machine, Row, median};
use servers::{Kind, Server};
use twine::bench_support::pin_to_cpu;

const USAGE: &str = "\
usage: cargo bench --bench echo [-- --quick]
       echo-BENCH --only twine|std|mio|tokio|twisted --count N

  --quick          one short round; prints the table, writes nothing
  --only NAME      start only that server, send it N echoes (window 64) and print a
  --count N        one-line summary (for callgrind; see benches/echo/callgrind.sh)
Without --bench (which cargo bench adds) and --only: a brief smoke test, as under
cargo test --benches.";

/// Datagrams in flight in throughput mode.
const WINDOW: usize = 64;
/// An outstanding datagram not echoed within this is lost.
const LOST_AFTER: Duration = Duration::from_millis(50);

/// How long each measurement lasts.
struct Settings {
    rounds: usize,
    tput_warmup: Duration,
    tput_time: Duration,
    ping_warmup: Duration,
    ping_time: Duration,
    write: bool,
}

impl Settings {
    fn full() -> Settings {
        // Many short rounds rather than a few long ones: on a shared or virtual machine
        // the speed drifts, and interleaving spreads that over every server alike.
        Settings {
            rounds: 9,
            tput_warmup: Duration::from_millis(100),
            tput_time: Duration::from_millis(600),
            ping_warmup: Duration::from_millis(50),
            ping_time: Duration::from_millis(300),
            write: true,
        }
    }

    fn quick() -> Settings {
        Settings {
            rounds: 1,
            tput_warmup: Duration::from_millis(100),
            tput_time: Duration::from_millis(300),
            ping_warmup: Duration::from_millis(50),
            ping_time: Duration::from_millis(200),
            write: false,
        }
    }

    fn smoke() -> Settings {
        Settings {
            rounds: 1,
            tput_warmup: Duration::from_millis(20),
            tput_time: Duration::from_millis(50),
            ping_warmup: Duration::from_millis(10),
            ping_time: Duration::from_millis(50),
            write: false,
        }
    }

    fn throughput(&self) -> Plan {
        Plan {
            window: WINDOW,
            warmup: self.tput_warmup,
            until: Until::Time(self.tput_time),
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

enum Mode {
    Bench(Settings),
    Only(Kind, u64),
    Help,
}

fn parse_args(args: impl Iterator<Item = String>) -> Result<Mode, String> {
    let (mut bench, mut quick, mut only, mut count) = (false, false, None, None);
    let mut args = args.peekable();
    while let Some(arg) = args.next() {
        match arg.as_str() {
            // Added by `cargo bench`; `cargo test --benches` leaves it out.
            "--bench" => bench = true,
            "--quick" => quick = true,
            "--only" => {
                let name = args.next().ok_or("--only needs a server name")?;
                only = Some(Kind::from_name(&name).ok_or(format!("unknown server {name:?}"))?);
            }
            "--count" => {
                let n = args.next().ok_or("--count needs a number")?;
                count = Some(n.parse::<u64>().map_err(|e| format!("--count {n}: {e}"))?);
            }
            "-h" | "--help" => return Ok(Mode::Help),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    match (only, count) {
        (Some(kind), Some(n)) => Ok(Mode::Only(kind, n)),
        (Some(_), None) | (None, Some(_)) => Err("--only and --count go together".to_owned()),
        (None, None) if quick => Ok(Mode::Bench(Settings::quick())),
        (None, None) if bench => Ok(Mode::Bench(Settings::full())),
        (None, None) => Ok(Mode::Bench(Settings::smoke())),
    }
}

fn main() -> ExitCode {
    let result = match parse_args(std::env::args().skip(1)) {
        Ok(Mode::Help) => {
            println!("{USAGE}");
            Ok(())
        }
        Ok(Mode::Only(kind, count)) => only(kind, count),
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

/// One server, `count` echoes with a window of 64, then one summary line.
fn only(kind: Kind, count: u64) -> Result<(), String> {
    if kind == Kind::Twisted && !servers::twisted_python().exists() {
        return Err(format!(
            "{} is missing",
            servers::twisted_python().display()
        ));
    }
    let server = servers::start(kind, None)?;
    let plan = Plan {
        window: WINDOW,
        warmup: Duration::ZERO,
        until: Until::Count(count),
        // Generous: under valgrind a thread can wait long for its turn.
        lost_after: Duration::from_secs(2),
        record: false,
    };
    let out = loadgen::run(server.addr, &plan, server.cpu.as_deref())
        .map_err(|e| format!("load generator: {e}"));
    server.stop();
    let out = out?;
    println!(
        "{}: {} echoes in {:.3} s ({:.1} kpps), lost {}, late {}",
        kind.name(),
        out.echoes,
        out.elapsed.as_secs_f64(),
        out.kpps(),
        out.lost,
        out.late
    );
    Ok(())
}

/// Where each thread runs.
struct Pinning {
    server: Option<usize>,
    throughput_gen: Option<usize>,
    ping_gen: Option<usize>,
    said: String,
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
        server: None,
        throughput_gen: None,
        ping_gen: None,
        said: why,
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
            throughput_gen: Some(second),
            ping_gen: Some(first),
            said: format!(
                "Pinning: every server on CPU {first}; throughput: load generator on CPU \
                 {second}; ping-pong: load generator on CPU {first}, with the server"
            ),
        },
        None => Pinning {
            server: Some(first),
            throughput_gen: Some(first),
            ping_gen: Some(first),
            said: format!(
                "Pinning shared: one CPU ({first}) for every server and the load generator, \
                 in both modes"
            ),
        },
    }
}

/// One measurement of one server: throughput (kpps, lost) or ping-pong (p50, p99).
#[derive(Default)]
struct Samples {
    kpps: Vec<f64>,
    lost: u64,
    /// Server CPU time per echo (µs), and how busy the server and the load generator were
    /// (%), in throughput mode.
    cpu_us: Vec<f64>,
    server_busy: Vec<f64>,
    gen_busy: Vec<f64>,
    p50: Vec<f64>,
    p99: Vec<f64>,
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
    let mut samples: Vec<Samples> = running.iter().map(|_| Samples::default()).collect();
    let children: Vec<u32> = running.iter().filter_map(Server::child_pid).collect();
    let mut calm = Calm::default();
    let n = running.len();
    for round in 0..settings.rounds {
        let order: Vec<usize> = (0..n).map(|i| (i + round) % n).collect();
        for (plan, cpu) in [
            (settings.throughput(), pinning.throughput_gen),
            (settings.ping_pong(), pinning.ping_gen),
        ] {
            if let Some(cpu) = cpu {
                let _ = pin_to_cpu(cpu);
            }
            for &i in &order {
                let server = &running[i];
                let mode = if plan.record {
                    "ping-pong"
                } else {
                    "throughput"
                };
                let head = format!(
                    "round {}/{}  {mode:<10}  {:<17}",
                    round + 1,
                    settings.rounds,
                    server.kind.label()
                );
                let out = measure(server, &plan, &children, &mut calm, &head)?;
                let s = &mut samples[i];
                let line = if plan.record {
                    s.p50.push(out.rtt_us(0.5));
                    s.p99.push(out.rtt_us(0.99));
                    ping_line(&out)
                } else {
                    s.kpps.push(out.kpps());
                    s.lost += out.lost;
                    if let Some(cpu) = out.server_cpu {
                        s.cpu_us
                            .push(cpu.as_secs_f64() * 1e6 / out.echoes.max(1) as f64);
                    }
                    s.server_busy.extend(out.busy(out.server_cpu));
                    s.gen_busy.extend(out.busy(out.gen_cpu));
                    throughput_line(&out)
                };
                println!("{head}  {line}");
            }
        }
    }
    let rows: Vec<Row> = running
        .iter()
        .zip(&samples)
        .map(|(server, s)| Row {
            kind: server.kind,
            kpps: median(&s.kpps),
            lost: s.lost,
            p50: median(&s.p50),
            p99: median(&s.p99),
            cpu_us: median(&s.cpu_us),
            server_busy: median(&s.server_busy),
            gen_busy: median(&s.gen_busy),
        })
        .collect();
    for server in running {
        server.stop();
    }
    let said = format!("{}.", calm.said());
    println!("{said}");
    notes.push(said);
    println!(
        "\nmedians of {} (lost: all rounds together):\n",
        plural(settings.rounds)
    );
    print!("{}", report::table(&rows));
    if let Some(note) = report::saturation(&rows) {
        println!("\n{note}");
    }
    println!();
    print!("{}", report::targets(&rows));
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
    measurements: usize,
    repeated: usize,
    /// Disturbed every try; the least disturbed try was kept.
    kept_disturbed: usize,
}

impl Calm {
    fn said(&self) -> String {
        format!(
            "Other programs' CPU use was read from /proc/stat around each of the {} \
             measurements: {} disturbed by more than {DISTURBED} CPU (repeated up to {} \
             times){}",
            self.measurements,
            self.repeated,
            TRIES - 1,
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

/// One measurement, repeated while other programs took more than [`DISTURBED`] CPU
/// during it (as far as `/proc/stat` tells).
fn measure(
    server: &Server,
    plan: &Plan,
    children: &[u32],
    calm: &mut Calm,
    head: &str,
) -> Result<Outcome, String> {
    calm.measurements += 1;
    let mut kept: Option<(Outcome, f64)> = None;
    for attempt in 1..=TRIES {
        let (before, start) = (noise::read(children), Instant::now());
        let out = loadgen::run(server.addr, plan, server.cpu.as_deref())
            .map_err(|e| format!("load generator on {}: {e}", server.kind.label()))?;
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
        let then = if attempt < TRIES {
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

fn throughput_line(out: &Outcome) -> String {
    let busy = |cpu| out.busy(cpu).map_or("-".to_owned(), |b| format!("{b:.0}%"));
    format!(
        "{:8.1} kpps  lost {}  late {}  busy: server {}, load generator {}",
        out.kpps(),
        out.lost,
        out.late,
        busy(out.server_cpu),
        busy(out.gen_cpu),
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

fn write_files(
    rows: &[Row],
    settings: &Settings,
    machine: &Machine,
    pinning: &Pinning,
    notes: &[String],
) -> Result<(), String> {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR"));
    let method = format!(
        "Each round runs every server once per mode, in rotated order. Throughput: \
         {WINDOW} datagrams in flight (one more sent per echo; one not echoed within \
         {} ms is lost and replaced), {} ms warm-up, then echoes counted for {} ms. \
         Ping-pong: one datagram in flight, {} ms warm-up, then every round trip recorded \
         for {} ms. The load generator batches (`recvmmsg`, and `sendmmsg` with UDP \
         segmentation offload, on a mio poll), so that it costs less per datagram than any \
         server. Servers: (a) twine, `Reactor` + a `DatagramProtocol` whose \
         `datagram_received` does `t.write(data, from)`, default `ListenOptions` (batch \
         size 32; the replies gathered during a batch go out segmented, `UDP_SEGMENT`: one \
         message per run of replies to one client); (a') the same with \
         `ListenOptions::segmentation(false)`: one message per reply, as (c); (b) blocking \
         `std::net::UdpSocket` `recv_from`/`send_to`; (c) a hand-written mio loop, \
         edge-triggered, `recvmmsg` of 32, one `sendmmsg`, until `EAGAIN`; (d) tokio \
         current-thread runtime, `recv_from` then `send_to`; (e) Twisted's \
         `listenUDP` + `datagramReceived` -> `transport.write` \
         (`benches/echo/twisted_echo.py`).",
        LOST_AFTER.as_millis(),
        settings.tput_warmup.as_millis(),
        settings.tput_time.as_millis(),
        settings.ping_warmup.as_millis(),
        settings.ping_time.as_millis(),
    );
    let cx = report::Context {
        command: "cargo bench --bench echo",
        rounds: settings.rounds,
        machine,
        pinning: &pinning.said,
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
        "{}, {} cores, Linux {}; medians of {}",
        machine.cpu,
        machine.cores,
        machine.kernel,
        plural(settings.rounds)
    );
    let svg = root.join("BENCHMARKS.svg");
    std::fs::write(&svg, report::svg(rows, &subtitle))
        .map_err(|e| format!("writing {}: {e}", svg.display()))?;
    println!("written: {} and {}", md.display(), svg.display());
    Ok(())
}
