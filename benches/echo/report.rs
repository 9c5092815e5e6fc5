//! The results: a Markdown table of medians, the team's targets checked against it,
//! `BENCHMARKS.md` (with the date and the machine) and a hand-written SVG bar chart.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::servers::Kind;

/// One server's medians over the rounds (NaN where not measured).
#[derive(Debug, Clone)]
pub struct Row {
    pub kind: Kind,
    /// Open loop: the maximum sustained rate, in thousands per second, and whether some
    /// search was cut short by the load generator not keeping the pace.
    pub max_kpps: f64,
    pub gen_limited: bool,
    /// The rate of the CPU step (kpps), the whole machine's and the server thread's CPU
    /// time per datagram there (µs), and its loss.
    pub cpu_rate_kpps: f64,
    pub machine_us: f64,
    /// The same less other programs' user and system time (see `openloop::ours_us`).
    pub ours_us: f64,
    pub server_us_open: f64,
    pub cpu_loss: f64,
    /// The rate of the latency step (kpps) and its round trips (µs).
    pub latency_rate_kpps: f64,
    pub lat_p50: f64,
    pub lat_p99: f64,
    /// Echoes per second in the closed loop ([`WINDOW`](crate::WINDOW) in flight), in
    /// thousands.
    pub kpps: f64,
    /// Datagrams lost in that closed loop, all rounds together.
    pub lost: u64,
    /// Ping-pong round trip, median and 99th percentile, in microseconds, with the load
    /// generator on the server's CPU and on another.
    pub p50: f64,
    pub p99: f64,
    pub cross_p50: f64,
    pub cross_p99: f64,
    /// The server's CPU time (user + system) per echo in the closed loop, in
    /// microseconds, and how busy the server and the load generator were, in percent.
    pub cpu_us: f64,
    pub server_busy: f64,
    pub gen_busy: f64,
    /// The closed-loop sweep, smallest window first, for the servers swept.
    pub sweep: Vec<SweepPoint>,
}

/// One window of the closed-loop sweep: medians of kpps and of how busy the server and
/// the load generator were (%).
#[derive(Debug, Clone)]
pub struct SweepPoint {
    pub window: usize,
    pub kpps: f64,
    pub server_busy: f64,
    pub gen_busy: f64,
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v: Vec<f64> = values.iter().copied().filter(|v| !v.is_nan()).collect();
    v.sort_by(f64::total_cmp);
    match v.len() {
        0 => f64::NAN,
        n if n % 2 == 1 => v[n / 2],
        n => (v[n / 2 - 1] + v[n / 2]) / 2.0,
    }
}

fn find(rows: &[Row], kind: Kind) -> Option<&Row> {
    rows.iter().find(|r| r.kind == kind)
}

fn ratio(a: f64, b: Option<f64>) -> String {
    match b {
        Some(b) if b > 0.0 && a.is_finite() && b.is_finite() => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    }
}

/// `v` with `digits` decimals, or "-" when not measured.
fn num(v: f64, digits: usize) -> String {
    if v.is_finite() {
        format!("{v:.digits$}")
    } else {
        "-".to_owned()
    }
}

/// Whether a row's fixed-rate steps ran at other rates than the common ones.
fn own_rates(r: &Row, rows: &[Row]) -> bool {
    let common = rows.iter().map(|r| r.cpu_rate_kpps).fold(0.0, f64::max);
    r.cpu_rate_kpps < common * 0.999
}

/// Every table of medians, as Markdown.
pub fn tables(rows: &[Row]) -> String {
    let std_row = find(rows, Kind::Std);
    let mio_row = find(rows, Kind::Mio);
    let tokio_row = find(rows, Kind::Tokio);
    let common = rows.iter().map(|r| r.cpu_rate_kpps).fold(0.0, f64::max);
    let lat = rows.iter().map(|r| r.latency_rate_kpps).fold(0.0, f64::max);
    let mut out = format!(
        "Open loop: maximum sustained rate (loss <= 0.1%); whole-machine CPU per datagram \
         at {common:.1} kpps; round trip under load at {lat:.1} kpps.\n\n\
         | server | max kpps | x (c) | x (d) | machine CPU µs/datagram | x (c) \
         | less others µs/datagram | server thread µs/datagram | loss % at that rate \
         | p50 µs under load | p99 µs under load |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n"
    );
    for r in rows {
        let own = if own_rates(r, rows) {
            format!(
                " (at {:.1} / {:.1} kpps)",
                r.cpu_rate_kpps, r.latency_rate_kpps
            )
        } else {
            String::new()
        };
        let limited = if r.gen_limited { " (pace)" } else { "" };
        let _ = writeln!(
            out,
            "| {}{own} | {}{limited} | {} | {} | {} | {} | {} | {} | {} | {} | {} |",
            r.kind.label(),
            num(r.max_kpps, 1),
            ratio(r.max_kpps, mio_row.map(|c| c.max_kpps)),
            ratio(r.max_kpps, tokio_row.map(|d| d.max_kpps)),
            num(r.machine_us, 2),
            if own.is_empty() {
                ratio(r.machine_us, mio_row.map(|c| c.machine_us))
            } else {
                "-".to_owned()
            },
            num(r.ours_us, 2),
            num(r.server_us_open, 2),
            num(r.cpu_loss * 100.0, 3),
            num(r.lat_p50, 1),
            num(r.lat_p99, 1),
        );
    }
    out.push_str(
        "\nClosed loop (64 in flight) and ping-pong (one in flight; same core: the load \
         generator on the server's CPU, cross core: on another):\n\n\
         | server | closed kpps | x (b) | x (c) | lost | server CPU µs/echo \
         | busy % server / load gen | same-core p50 / p99 µs | p50 x (b) \
         | cross-core p50 / p99 µs | p50 x (b) |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {} | {} | {} | {} | {} | {} / {} | {} / {} | {} | {} / {} | {} |",
            r.kind.label(),
            num(r.kpps, 1),
            ratio(r.kpps, std_row.map(|b| b.kpps)),
            ratio(r.kpps, mio_row.map(|c| c.kpps)),
            r.lost,
            num(r.cpu_us, 2),
            num(r.server_busy, 0),
            num(r.gen_busy, 0),
            num(r.p50, 1),
            num(r.p99, 1),
            ratio(r.p50, std_row.map(|b| b.p50)),
            num(r.cross_p50, 1),
            num(r.cross_p99, 1),
            ratio(r.cross_p50, std_row.map(|b| b.cross_p50)),
        );
    }
    let windows = sweep_windows(rows);
    if !windows.is_empty() {
        out.push_str(
            "\nClosed loop by window (datagrams in flight): kpps, and how busy the server \
             / the load generator were (%); where neither is near 100%, both sides idled:\n\n\
             | server |",
        );
        for w in &windows {
            let _ = write!(out, " {w} |");
        }
        out.push_str("\n|---|");
        for _ in &windows {
            out.push_str("---:|");
        }
        out.push('\n');
        for r in rows.iter().filter(|r| !r.sweep.is_empty()) {
            let _ = write!(out, "| {} |", r.kind.label());
            for w in &windows {
                match r.sweep.iter().find(|p| p.window == *w) {
                    Some(p) => {
                        let _ = write!(
                            out,
                            " {} ({} / {}) |",
                            num(p.kpps, 1),
                            num(p.server_busy, 0),
                            num(p.gen_busy, 0)
                        );
                    }
                    None => out.push_str(" - |"),
                }
            }
            out.push('\n');
        }
    }
    out
}

/// Every window some row was swept at, smallest first.
fn sweep_windows(rows: &[Row]) -> Vec<usize> {
    let mut windows: Vec<usize> = rows
        .iter()
        .flat_map(|r| r.sweep.iter().map(|p| p.window))
        .collect();
    windows.sort_unstable();
    windows.dedup();
    windows
}

/// twine's targets checked against the tables, one Markdown list item each; `cross`
/// says whether cross-core ping-pong ran on two CPUs.
pub fn targets(rows: &[Row], cross: bool) -> String {
    let (Some(a), Some(b), Some(c), Some(d)) = (
        find(rows, Kind::Twine),
        find(rows, Kind::Std),
        find(rows, Kind::Mio),
        find(rows, Kind::Tokio),
    ) else {
        return String::new();
    };
    let plain = find(rows, Kind::TwinePlain);
    let spin = find(rows, Kind::TwineSpin);
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut out = String::new();
    let cross_note = if cross { "" } else { " (one CPU: same core)" };
    let spin_p50 = spin.map_or(f64::NAN, |s| s.cross_p50);
    let targets: Vec<(String, f64, f64, bool)> = vec![
        (
            "(a) open-loop maximum rate / (c)".into(),
            a.max_kpps / c.max_kpps,
            1.3,
            true,
        ),
        (
            "(a) open-loop maximum rate / (d)".into(),
            a.max_kpps / d.max_kpps,
            1.5,
            true,
        ),
        (
            format!(
                "(a) whole-machine CPU per datagram at {:.1} kpps / (c)",
                a.cpu_rate_kpps
            ),
            a.machine_us / c.machine_us,
            0.7,
            false,
        ),
        (
            "(a) closed loop, 64 in flight / (c)".into(),
            a.kpps / c.kpps,
            1.0,
            true,
        ),
        (
            "(a) closed loop, 64 in flight / (a')".into(),
            a.kpps / plain.map_or(f64::NAN, |p| p.kpps),
            1.0,
            true,
        ),
        (
            "(a) ping-pong p50, same core / (b)".into(),
            a.p50 / b.p50,
            1.15,
            false,
        ),
        (
            format!("(a) ping-pong p50, cross core{cross_note} / (b)"),
            a.cross_p50 / b.cross_p50,
            1.15,
            false,
        ),
        (
            format!("(a-spin) latency mode, ping-pong p50, cross core{cross_note} / (b)"),
            spin_p50 / b.cross_p50,
            1.0,
            false,
        ),
    ];
    for (what, value, goal, higher) in targets {
        let sign = if higher { ">=" } else { "<=" };
        if !value.is_finite() {
            let _ = writeln!(out, "- {what}: not measured (target {sign} {goal:.2})");
            continue;
        }
        let ok = if higher { value >= goal } else { value <= goal };
        let _ = writeln!(
            out,
            "- {what}: {value:.3} (target {sign} {goal:.2}): {}",
            verdict(ok)
        );
    }
    if let Some(plain) = plain {
        let gso = if a.kpps > plain.kpps {
            format!(
                "Segmentation offload gives (a) {:.2}x the closed-loop throughput of (a')",
                a.kpps / plain.kpps
            )
        } else {
            format!(
                "On this machine segmentation offload does not help the closed loop: (a) \
                 reaches {:.2}x the throughput of (a'), with the server {:.0}% busy",
                a.kpps / plain.kpps,
                a.server_busy
            )
        };
        let _ = writeln!(
            out,
            "\nThe targets are checked for (a), twine with its default options; \
             (a-spin) only for the latency mode. {gso}; in the open loop (a) sustains \
             {:.2}x the rate of (a'). Without it, (a') sustains {:.2}x the open-loop rate \
             of (c) and {:.2}x its closed-loop throughput.",
            a.max_kpps / plain.max_kpps,
            plain.max_kpps / c.max_kpps,
            plain.kpps / c.kpps,
        );
    }
    out
}

/// The machine, for the record: CPU model, cores, kernel.
pub struct Machine {
    pub cpu: String,
    pub cores: usize,
    pub kernel: String,
}

impl Machine {
    pub fn read() -> Machine {
        let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .and_then(|l| l.split_once(':'))
            .map_or_else(|| "unknown CPU".to_owned(), |(_, m)| m.trim().to_owned());
        let cores = match cpuinfo
            .lines()
            .filter(|l| l.starts_with("processor"))
            .count()
        {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        };
        let kernel = Command::new("uname")
            .arg("-r")
            .output()
            .ok()
            .filter(|o| o.status.success())
            .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_owned())
            .unwrap_or_else(|| "unknown kernel".to_owned());
        Machine { cpu, cores, kernel }
    }
}

/// Now, in UTC, as `YYYY-MM-DD HH:MM UTC`.
pub fn now_utc() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let (days, rest) = ((secs / 86_400) as i64, secs % 86_400);
    // Days since 1970-01-01 to a civil date (Howard Hinnant's algorithm).
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02} {:02}:{:02} UTC",
        rest / 3600,
        rest % 3600 / 60
    )
}

/// Everything `BENCHMARKS.md` says besides the numbers.
pub struct Context<'a> {
    pub command: &'a str,
    /// How many rounds of what, in words.
    pub rounds: &'a str,
    pub machine: &'a Machine,
    pub pinning: &'a str,
    /// Whether cross-core ping-pong ran on two CPUs.
    pub cross: bool,
    pub method: &'a str,
    pub notes: &'a [String],
    /// The section `callgrind.sh --write` left in the previous `BENCHMARKS.md`.
    pub callgrind: Option<&'a str>,
}

/// The text of `BENCHMARKS.md`.
pub fn markdown(rows: &[Row], cx: &Context<'_>) -> String {
    let mut out = String::from("# Echo benchmark\n\n");
    let _ = writeln!(
        out,
        "Measured {} with `{}`: {}.\n\nMachine: CPU {}, {} cores, Linux {}.\n",
        now_utc(),
        cx.command,
        cx.rounds,
        cx.machine.cpu,
        cx.machine.cores,
        cx.machine.kernel,
    );
    let _ = writeln!(out, "{}\n", cx.method);
    let _ = writeln!(out, "{}.\n", cx.pinning);
    for note in cx.notes {
        let _ = writeln!(out, "{note}\n");
    }
    let _ = writeln!(
        out,
        "Medians over the rounds (lost: all rounds together; a maximum marked (pace): \
         some search stopped where the load generator could not keep the pace, so the \
         server's maximum may be higher).\n"
    );
    out.push_str(&tables(rows));
    if let Some(note) = saturation(rows) {
        let _ = writeln!(out, "\n{note}");
    }
    out.push_str("\n![every mode per server](BENCHMARKS.svg)\n\n");
    let targets = targets(rows, cx.cross);
    if !targets.is_empty() {
        out.push_str("## twine against the team's targets\n\n");
        out.push_str(&targets);
        out.push_str(
            "\nInstructions per datagram (the callgrind target, <= 1.05x (c)): \
             `bash benches/echo/callgrind.sh --write` adds them below.\n",
        );
    }
    if let Some(section) = cx.callgrind {
        let _ = write!(out, "\n{section}\n");
    }
    out
}

/// The markers around the section `callgrind.sh --write` keeps in `BENCHMARKS.md`.
pub const CALLGRIND_BEGIN: &str = "<!-- callgrind.sh -->";
pub const CALLGRIND_END: &str = "<!-- /callgrind.sh -->";

/// The callgrind section of an earlier `BENCHMARKS.md`, markers included, to keep.
pub fn callgrind_section(old: &str) -> Option<&str> {
    let start = old.find(CALLGRIND_BEGIN)?;
    let end = start + old[start..].find(CALLGRIND_END)? + CALLGRIND_END.len();
    Some(&old[start..end])
}

/// A warning when the load generator was about as busy as the servers in the closed
/// loop: the rate is then the machine's, not only the server's.
pub fn saturation(rows: &[Row]) -> Option<String> {
    let busy: Vec<f64> = rows
        .iter()
        .filter(|r| !matches!(r.kind, Kind::Twisted | Kind::Twine | Kind::TwineSpin))
        .map(|r| r.gen_busy)
        .filter(|b| b.is_finite())
        .collect();
    let (low, high) = busy
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(l, h), &b| (l.min(b), h.max(b)));
    (!busy.is_empty() && low >= 90.0).then(|| {
        format!(
            "Note: in the closed loop the load generator was {low:.0}-{high:.0}% busy \
             with servers (a')-(d), as busy as they were. Over loopback the sender of a \
             datagram pays for its whole way through the kernel's stack, so each side \
             spends about the same kernel time per echo, and with one CPU each the rate \
             is bounded by that kernel cost on both sides rather than by the server \
             alone: the closed-loop column separates those servers less than their own \
             cost does (see server CPU µs/echo, the open loop, and the instructions per \
             datagram). \
             (a) walks that path once per run of replies to one client (segmentation \
             offload) instead of once per reply, which is where its lead comes from."
        )
    })
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One panel of the chart: a bar per server.
struct Panel {
    title: String,
    color: &'static str,
    value: fn(&Row) -> f64,
    text: fn(&Row) -> String,
}

const WIDTH: f64 = 760.0;
const LABEL: f64 = 170.0;
const BARS: f64 = 440.0;
const ROW: f64 = 26.0;

/// A panel's bars, from `y` down; returns the `y` below them.
fn bars(body: &mut String, rows: &[Row], panel: &Panel, mut y: f64) -> f64 {
    let _ = writeln!(
        body,
        r#"<text x="10" y="{y}" font-weight="bold">{}</text>"#,
        escape(&panel.title)
    );
    y += 12.0;
    let max = rows
        .iter()
        .map(panel.value)
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    for r in rows {
        let v = (panel.value)(r);
        let w = if max > 0.0 && v.is_finite() {
            (v / max * BARS).max(1.0)
        } else {
            0.0
        };
        let fill = if r.kind == Kind::Twine {
            "#222222"
        } else {
            panel.color
        };
        let text = if v.is_finite() {
            (panel.text)(r)
        } else {
            "not measured".to_owned()
        };
        let _ = writeln!(
            body,
            r#"<text x="{}" y="{}" text-anchor="end">{}</text>"#,
            LABEL - 8.0,
            y + 15.0,
            escape(r.kind.label())
        );
        let _ = writeln!(
            body,
            r#"<rect x="{LABEL}" y="{}" width="{w:.1}" height="{}" fill="{fill}"/>"#,
            y + 3.0,
            ROW - 6.0
        );
        let _ = writeln!(
            body,
            r#"<text x="{:.1}" y="{}">{}</text>"#,
            LABEL + w + 6.0,
            y + 15.0,
            escape(&text)
        );
        y += ROW;
    }
    y + 36.0
}

/// The closed-loop sweep as lines, one per server swept (kpps against the window, on a
/// log scale); returns the `y` below it.
fn sweep_chart(body: &mut String, rows: &[Row], mut y: f64) -> f64 {
    let windows = sweep_windows(rows);
    let swept: Vec<&Row> = rows.iter().filter(|r| !r.sweep.is_empty()).collect();
    if windows.len() < 2 || swept.is_empty() {
        return y;
    }
    let _ = writeln!(
        body,
        r#"<text x="10" y="{y}" font-weight="bold">Closed loop by window (k echoes/s against datagrams in flight)</text>"#
    );
    y += 16.0;
    const HEIGHT: f64 = 180.0;
    let max = swept
        .iter()
        .flat_map(|r| r.sweep.iter().map(|p| p.kpps))
        .filter(|v| v.is_finite())
        .fold(0.0, f64::max);
    if max <= 0.0 {
        return y;
    }
    let (left, right) = (LABEL, LABEL + BARS);
    let x_of = |i: usize| left + (right - left) * i as f64 / (windows.len() - 1) as f64;
    let y_of = |v: f64| y + HEIGHT - v / max * HEIGHT;
    let _ = writeln!(
        body,
        r##"<line x1="{left}" y1="{}" x2="{right}" y2="{}" stroke="#888888"/>"##,
        y + HEIGHT,
        y + HEIGHT
    );
    let _ = writeln!(
        body,
        r#"<text x="{}" y="{}" text-anchor="end">{max:.0}</text>"#,
        left - 8.0,
        y + 10.0
    );
    let _ = writeln!(
        body,
        r#"<text x="{}" y="{}" text-anchor="end">0</text>"#,
        left - 8.0,
        y + HEIGHT
    );
    for (i, w) in windows.iter().enumerate() {
        let _ = writeln!(
            body,
            r#"<text x="{:.1}" y="{}" text-anchor="middle">{w}</text>"#,
            x_of(i),
            y + HEIGHT + 16.0
        );
    }
    let colors = ["#222222", "#2a7ab0", "#d0802a", "#3a9a50", "#9a3a8a"];
    for (n, r) in swept.iter().enumerate() {
        let color = colors[n % colors.len()];
        let points: Vec<String> = windows
            .iter()
            .enumerate()
            .filter_map(|(i, w)| {
                let v = r.sweep.iter().find(|p| p.window == *w)?.kpps;
                v.is_finite()
                    .then(|| format!("{:.1},{:.1}", x_of(i), y_of(v)))
            })
            .collect();
        let _ = writeln!(
            body,
            r#"<polyline points="{}" fill="none" stroke="{color}" stroke-width="2"/>"#,
            points.join(" ")
        );
        let _ = writeln!(
            body,
            r#"<text x="{:.1}" y="{:.1}" fill="{color}">{}</text>"#,
            right + 10.0,
            y + 14.0 + 16.0 * n as f64,
            escape(r.kind.label())
        );
    }
    y + HEIGHT + 50.0
}

/// A bar chart of every mode per server, and the closed-loop sweep.
pub fn svg(rows: &[Row], subtitle: &str) -> String {
    let mut body = String::new();
    let common = rows.iter().map(|r| r.cpu_rate_kpps).fold(0.0, f64::max);
    let lat = rows.iter().map(|r| r.latency_rate_kpps).fold(0.0, f64::max);
    let panels = [
        Panel {
            title: "Open loop: maximum rate with loss <= 0.1% (k datagrams/s, higher is better)"
                .to_owned(),
            color: "#2a7ab0",
            value: |r| r.max_kpps,
            text: |r| format!("{:.1} kpps", r.max_kpps),
        },
        Panel {
            title: format!(
                "Whole-machine CPU per datagram at {common:.0} kpps (µs, lower is better)"
            ),
            color: "#3a9a50",
            value: |r| r.machine_us,
            text: |r| format!("{:.2} µs (at {:.0} kpps)", r.machine_us, r.cpu_rate_kpps),
        },
        Panel {
            title: format!("Round trip under load at {lat:.0} kpps, median (µs, lower is better)"),
            color: "#9a3a8a",
            value: |r| r.lat_p50,
            text: |r| format!("{:.1} µs (p99 {:.1})", r.lat_p50, r.lat_p99),
        },
        Panel {
            title: "Closed loop, 64 in flight (k echoes/s, higher is better)".to_owned(),
            color: "#2a7ab0",
            value: |r| r.kpps,
            text: |r| format!("{:.1} kpps", r.kpps),
        },
        Panel {
            title: "Ping-pong round trip, same core, median (µs, lower is better)".to_owned(),
            color: "#d0802a",
            value: |r| r.p50,
            text: |r| format!("{:.1} µs (p99 {:.1})", r.p50, r.p99),
        },
        Panel {
            title: "Ping-pong round trip, cross core, median (µs, lower is better)".to_owned(),
            color: "#d0802a",
            value: |r| r.cross_p50,
            text: |r| format!("{:.1} µs (p99 {:.1})", r.cross_p50, r.cross_p99),
        },
    ];
    let mut y = 66.0;
    for panel in &panels {
        y = bars(&mut body, rows, panel, y);
    }
    y = sweep_chart(&mut body, rows, y);
    let height = y - 10.0;
    let width = WIDTH + 120.0;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{width}" height="{height}" viewBox="0 0 {width} {height}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="15" font-weight="bold">twine echo benchmark: 64-byte UDP datagrams on 127.0.0.1</text>
<text x="10" y="38" fill="#555555">{}</text>
{body}</svg>
"##,
        escape(subtitle)
    )
}
