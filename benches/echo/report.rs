//! The results: a Markdown table of medians, the team's targets checked against it,
//! `BENCHMARKS.md` (with the date and the machine) and a hand-written SVG bar chart.

use std::fmt::Write as _;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use crate::servers::Kind;

/// One server's medians over the rounds.
#[derive(Debug, Clone)]
pub struct Row {
    pub kind: Kind,
    /// Echoes per second in throughput mode, in thousands.
    pub kpps: f64,
    /// Datagrams lost in throughput mode, all rounds together.
    pub lost: u64,
    /// Ping-pong round trip, median and 99th percentile, in microseconds.
    pub p50: f64,
    pub p99: f64,
    /// The server's CPU time (user + system) per echo in throughput mode, in
    /// microseconds, and how busy the server and the load generator were, in percent.
    pub cpu_us: f64,
    pub server_busy: f64,
    pub gen_busy: f64,
}

/// The median of `values` (the mean of the middle two for an even count).
pub fn median(values: &[f64]) -> f64 {
    let mut v = values.to_vec();
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
        Some(b) if b > 0.0 && a.is_finite() => format!("{:.2}x", a / b),
        _ => "-".to_owned(),
    }
}

/// The table of medians, as Markdown.
pub fn table(rows: &[Row]) -> String {
    let std_row = find(rows, Kind::Std);
    let mio_row = find(rows, Kind::Mio);
    let mut out = String::from(
        "| server | throughput kpps | x (b) | x (c) | lost | p50 µs | p99 µs | p50 x (b) \
         | server CPU µs/echo | busy % server / load gen |\n\
         |---|---:|---:|---:|---:|---:|---:|---:|---:|---:|\n",
    );
    for r in rows {
        let _ = writeln!(
            out,
            "| {} | {:.1} | {} | {} | {} | {:.1} | {:.1} | {} | {:.2} | {:.0} / {:.0} |",
            r.kind.label(),
            r.kpps,
            ratio(r.kpps, std_row.map(|b| b.kpps)),
            ratio(r.kpps, mio_row.map(|c| c.kpps)),
            r.lost,
            r.p50,
            r.p99,
            ratio(r.p50, std_row.map(|b| b.p50)),
            r.cpu_us,
            r.server_busy,
            r.gen_busy,
        );
    }
    out
}

/// twine's targets checked against the table, one Markdown list item each.
pub fn targets(rows: &[Row]) -> String {
    let (Some(a), Some(b), Some(c), Some(d)) = (
        find(rows, Kind::Twine),
        find(rows, Kind::Std),
        find(rows, Kind::Mio),
        find(rows, Kind::Tokio),
    ) else {
        return String::new();
    };
    let verdict = |ok: bool| if ok { "met" } else { "NOT met" };
    let mut out = String::new();
    for (what, value, goal, higher) in [
        ("throughput / (c)", a.kpps / c.kpps, 0.95, true),
        ("throughput / (d)", a.kpps / d.kpps, 1.25, true),
        ("throughput / (b)", a.kpps / b.kpps, 1.2, true),
        ("ping-pong p50 / (b)", a.p50 / b.p50, 1.15, false),
        ("ping-pong p50 / (d)", a.p50 / d.p50, 1.0, false),
    ] {
        let (ok, sign) = if higher {
            (value >= goal, ">=")
        } else if goal == 1.0 {
            (value < goal, "<")
        } else {
            (value <= goal, "<=")
        };
        let _ = writeln!(
            out,
            "- twine {what}: {value:.2} (target {sign} {goal:.2}): {}",
            verdict(ok)
        );
    }
    if let Some(plain) = find(rows, Kind::TwinePlain) {
        let gso = if a.kpps > plain.kpps {
            format!(
                "Segmentation offload gives (a) {:.2}x the throughput of (a')",
                a.kpps / plain.kpps
            )
        } else {
            format!(
                "On this machine segmentation offload does not help: (a) reaches {:.2}x \
                 the throughput of (a'), with the server {:.0}% busy (the limit is outside \
                 the server)",
                a.kpps / plain.kpps,
                a.server_busy
            )
        };
        let _ = writeln!(
            out,
            "\nThe targets are checked for (a), twine with its default options. {gso}. \
             Without it, (a') is {:.2}x (c), {:.2}x (b) and {:.2}x (d): batching alone \
             gains little over one system call per datagram where each echo's kernel work \
             (the stack, walked once per datagram) dwarfs the system call's own cost.",
            plain.kpps / c.kpps,
            plain.kpps / b.kpps,
            plain.kpps / d.kpps,
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
    pub rounds: usize,
    pub machine: &'a Machine,
    pub pinning: &'a str,
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
        "Measured {} with `{}`: {} on {} ({} cores), Linux {}.\n",
        now_utc(),
        cx.command,
        plural(cx.rounds, "round"),
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
        "Medians over the rounds (lost: all rounds together):\n"
    );
    out.push_str(&table(rows));
    if let Some(note) = saturation(rows) {
        let _ = writeln!(out, "\n{note}");
    }
    out.push_str("\n![throughput and ping-pong p50 per server](BENCHMARKS.svg)\n\n");
    let targets = targets(rows);
    if !targets.is_empty() {
        out.push_str("## twine against the team's targets\n\n");
        out.push_str(&targets);
        out.push_str(
            "\nInstructions per datagram (the callgrind target, <= 1.25x (c)): \
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

/// A warning when the load generator was about as busy as the servers in throughput
/// mode: the rate is then the machine's, not only the server's.
pub fn saturation(rows: &[Row]) -> Option<String> {
    let busy: Vec<f64> = rows
        .iter()
        .filter(|r| !matches!(r.kind, Kind::Twisted | Kind::Twine))
        .map(|r| r.gen_busy)
        .filter(|b| b.is_finite())
        .collect();
    let (low, high) = busy
        .iter()
        .fold((f64::INFINITY, 0.0f64), |(l, h), &b| (l.min(b), h.max(b)));
    (!busy.is_empty() && low >= 90.0).then(|| {
        format!(
            "Note: in throughput mode the load generator was {low:.0}-{high:.0}% busy \
             with servers (a')-(d), as busy as they were. Over loopback the sender of a \
             datagram pays for its whole way through the kernel's stack, so each side \
             spends about the same kernel time per echo, and with one CPU each the rate \
             is bounded by that kernel cost on both sides rather than by the server \
             alone: the throughput column separates those servers less than their own \
             cost does (see server CPU µs/echo, and the instructions per datagram). \
             (a) walks that path once per run of replies to one client (segmentation \
             offload) instead of once per reply, which is where its lead comes from."
        )
    })
}

fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

fn escape(text: &str) -> String {
    text.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

/// One half of the chart.
struct Panel {
    title: &'static str,
    color: &'static str,
    value: fn(&Row) -> f64,
    text: fn(&Row) -> String,
}

/// A bar chart: throughput per server, then ping-pong p50 per server.
pub fn svg(rows: &[Row], subtitle: &str) -> String {
    const WIDTH: f64 = 760.0;
    const LABEL: f64 = 170.0;
    const BARS: f64 = 440.0;
    const ROW: f64 = 26.0;
    let mut body = String::new();
    let mut y = 66.0;
    let panels = [
        Panel {
            title: "Throughput, window of 64 (k echoes/s, higher is better)",
            color: "#2a7ab0",
            value: |r| r.kpps,
            text: |r| format!("{:.1} kpps", r.kpps),
        },
        Panel {
            title: "Ping-pong round trip, median (µs, lower is better)",
            color: "#d0802a",
            value: |r| r.p50,
            text: |r| format!("{:.1} µs (p99 {:.1})", r.p50, r.p99),
        },
    ];
    for Panel {
        title,
        color,
        value,
        text,
    } in panels
    {
        let _ = writeln!(
            body,
            r#"<text x="10" y="{y}" font-weight="bold">{}</text>"#,
            escape(title)
        );
        y += 12.0;
        let max = rows
            .iter()
            .map(value)
            .filter(|v| v.is_finite())
            .fold(0.0, f64::max);
        for r in rows {
            let v = value(r);
            let w = if max > 0.0 && v.is_finite() {
                (v / max * BARS).max(1.0)
            } else {
                0.0
            };
            let fill = if r.kind == Kind::Twine {
                "#222222"
            } else {
                color
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
                escape(&text(r))
            );
            y += ROW;
        }
        y += 36.0;
    }
    let height = y - 10.0;
    format!(
        r##"<svg xmlns="http://www.w3.org/2000/svg" width="{WIDTH}" height="{height}" viewBox="0 0 {WIDTH} {height}" font-family="sans-serif" font-size="13">
<rect width="100%" height="100%" fill="white"/>
<text x="10" y="22" font-size="15" font-weight="bold">twine echo benchmark: 64-byte UDP datagrams on 127.0.0.1</text>
<text x="10" y="38" fill="#555555">{}</text>
{body}</svg>
"##,
        escape(subtitle)
    )
}
