//! What every example shares: logging setup and argument parsing.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::exit;
use std::sync::OnceLock;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// The command line as parsed by [`init`]: each flag given with its value, and the
/// positional arguments, in order.
struct Args {
    flags: Vec<(String, String)>,
    positional: Vec<String>,
}

static ARGS: OnceLock<Args> = OnceLock::new();

/// Sets up an example: logging, and its command line, parsed once: `--help` (or `-h`)
/// prints `usage` and exits 0; every `--flag` must be one of `flags` and have a value
/// (`--flag VALUE` or `--flag=VALUE`), and at most `max_positional` other arguments may
/// come; otherwise the program prints what it refused and the usage's first paragraph (the
/// synopsis) to stderr, and exits with code 2.
pub fn init(usage: &str, flags: &[&str], max_positional: usize) {
    init_logging();
    let parsed = parse_args(usage, flags, max_positional).unwrap_or_else(|message| {
        let synopsis = usage.split("\n\n").next().unwrap_or(usage).trim_end();
        eprintln!("{message}\n\n{synopsis}\n\n--help says more");
        exit(2)
    });
    let _ = ARGS.set(parsed);
}

fn parse_args(usage: &str, flags: &[&str], max_positional: usize) -> Result<Args, String> {
    use lexopt::Arg::{Long, Short, Value};
    let mut parser = lexopt::Parser::from_env();
    let mut args = Args {
        flags: Vec::new(),
        positional: Vec::new(),
    };
    let known = || {
        if flags.is_empty() {
            "none".to_owned()
        } else {
            flags.join(", ")
        }
    };
    while let Some(arg) = parser.next().map_err(|e| e.to_string())? {
        match arg {
            Long("help") | Short('h') => {
                println!("{}", usage.trim_end());
                exit(0);
            }
            Long(name) => {
                let flag = format!("--{name}");
                if !flags.contains(&flag.as_str()) {
                    return Err(format!(
                        "unknown flag {flag:?} (this example takes: {})",
                        known()
                    ));
                }
                let value = parser
                    .value()
                    .map_err(|_| format!("{flag} needs a value"))?;
                let value = value
                    .into_string()
                    .map_err(|v| format!("{flag}: not UTF-8: {v:?}"))?;
                args.flags.push((flag, value));
            }
            Short(c) => {
                return Err(format!(
                    "unknown flag \"-{c}\" (this example takes: {})",
                    known()
                ));
            }
            Value(v) => {
                let v = v.into_string().map_err(|v| format!("not UTF-8: {v:?}"))?;
                if args.positional.len() == max_positional {
                    return Err(format!("unexpected argument {v:?}"));
                }
                args.positional.push(v);
            }
        }
    }
    Ok(args)
}

fn args() -> &'static Args {
    ARGS.get()
        .expect("common::init parses the command line first")
}

/// Logs `text` (the `listening on IP:PORT` line) on the reactor's first turn, once `run`
/// has taken over Ctrl-C: from then on Ctrl-C stops the program cleanly.
pub fn announce(reactor: &mut twine::Reactor, text: String) {
    reactor.call_later(Duration::ZERO, move |_| log::info!("{text}"));
}

/// Logs to stderr at the levels `RUST_LOG` names, in its usual syntax (`error`, `off`,
/// `twine=debug`, `warn,twine=trace`; `info` when unset).
fn init_logging() {
    let spec = std::env::var("RUST_LOG").unwrap_or_else(|_| "info".to_owned());
    let filter = env_filter::Builder::new().parse(&spec).build();
    let config = simplelog::ConfigBuilder::new()
        .set_time_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .build();
    let inner = simplelog::TermLogger::new(
        log::LevelFilter::Trace,
        config,
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
    let max = filter.filter();
    if log::set_boxed_logger(Box::new(Filtered { filter, inner })).is_ok() {
        log::set_max_level(max);
    }
}

/// simplelog's terminal logger behind `RUST_LOG`'s filter.
struct Filtered {
    filter: env_filter::Filter,
    inner: Box<simplelog::TermLogger>,
}

impl log::Log for Filtered {
    fn enabled(&self, metadata: &log::Metadata<'_>) -> bool {
        self.filter.enabled(metadata)
    }

    fn log(&self, record: &log::Record<'_>) {
        if self.filter.matches(record) {
            self.inner.log(record);
        }
    }

    fn flush(&self) {
        self.inner.flush();
    }
}

/// The positional arguments, in order.
pub fn positional() -> Vec<String> {
    args().positional.clone()
}

/// The value of `--name VALUE`, if given (the last, if given more than once).
pub fn flag(name: &str) -> Option<String> {
    args()
        .flags
        .iter()
        .rev()
        .find(|(flag, _)| flag == name)
        .map(|(_, value)| value.clone())
}

/// The value of `--name VALUE` parsed as a `T`, if the flag is given; exits with a
/// message if it does not parse.
pub fn optional_flag<T: std::str::FromStr>(name: &str) -> Option<T>
where
    T::Err: std::fmt::Display,
{
    let value = flag(name)?;
    match value.parse::<T>() {
        Ok(v) => Some(v),
        Err(e) => {
            eprintln!("{name}: {e} (got {value:?})");
            exit(2)
        }
    }
}

/// The value of `--name VALUE` parsed as a `T`, or `default` when the flag is absent.
pub fn parsed_flag<T: std::str::FromStr>(name: &str, default: T) -> T
where
    T::Err: std::fmt::Display,
{
    optional_flag(name).unwrap_or(default)
}

/// The shortest period a `--SECONDS` flag takes.
const MIN_PERIOD: Duration = Duration::from_millis(10);

/// The value of `--name SECONDS` (fractions allowed, e.g. `0.5`), or `default`; exits with
/// a message unless it is a number of seconds, at least 0.01.
pub fn seconds_flag(name: &str, default: Duration) -> Duration {
    let secs = parsed_flag(name, default.as_secs_f64());
    Duration::try_from_secs_f64(secs)
        .ok()
        .filter(|d| *d >= MIN_PERIOD)
        .unwrap_or_else(|| {
            eprintln!(
                "{name}: expected a number of seconds, at least {}, got {secs}",
                MIN_PERIOD.as_secs_f64()
            );
            exit(2)
        })
}

/// The address to bind a client to for reaching `server`: any address of its family,
/// port 0.
pub fn client_bind_addr(server: SocketAddr) -> SocketAddr {
    match server {
        SocketAddr::V4(_) => SocketAddr::from((std::net::Ipv4Addr::UNSPECIFIED, 0)),
        SocketAddr::V6(_) => SocketAddr::from((std::net::Ipv6Addr::UNSPECIFIED, 0)),
    }
}

/// Positional argument `index` as `IP:PORT`, or `default`; exits with a message if bad.
pub fn addr_arg(index: usize, default: &str) -> SocketAddr {
    let text = positional()
        .get(index)
        .cloned()
        .unwrap_or_else(|| default.to_owned());
    text.parse().unwrap_or_else(|_| {
        eprintln!(
            "expected IP:PORT (an IP literal, e.g. 127.0.0.1:9999 or [::1]:9999), got {text:?}"
        );
        exit(2)
    })
}

/// Today's UTC time of day as `HH:MM:SS`.
pub fn time_of_day() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    let day = secs % 86_400;
    format!("{:02}:{:02}:{:02} UTC", day / 3600, day / 60 % 60, day % 60)
}

/// The current UTC time in the style of C's `ctime` and Python's `time.ctime()`:
/// `Sun Nov 22 14:03:07 2026` (day of month padded with a space).
pub fn ctime() -> String {
    let secs = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0);
    ctime_of(secs)
}

/// `ctime` for `secs` seconds after 1970-01-01 00:00:00 UTC.
pub fn ctime_of(secs: u64) -> String {
    const DAYS: [&str; 7] = ["Thu", "Fri", "Sat", "Sun", "Mon", "Tue", "Wed"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    let days = secs / 86_400;
    let (year, month, day) = civil_from_days(days);
    let t = secs % 86_400;
    format!(
        "{} {} {day:2} {:02}:{:02}:{:02} {year}",
        DAYS[(days % 7) as usize],
        MONTHS[month as usize - 1],
        t / 3600,
        t / 60 % 60,
        t % 60
    )
}

/// The proleptic Gregorian (year, month 1-12, day 1-31) of a day count from 1970-01-01,
/// counting in 400-year eras of 146 097 days that start on 1 March.
fn civil_from_days(days: u64) -> (u64, u64, u64) {
    let z = days + 719_468; // days from 0000-03-01
    let era = z / 146_097;
    let doe = z % 146_097; // day of era, 0..146096
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365; // year of era
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100); // day of year from 1 March
    let mp = (5 * doy + 2) / 153; // month from March, 0..11
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = era * 400 + yoe + u64::from(month <= 2);
    (year, month, day)
}

/// What `main` returns on failure: any error, printed by its `Display` (`Error: couldn't
/// listen on 127.0.0.1:9999: Address in use`) where `main() -> Result` would print its
/// `Debug`; the exit code is 1.
pub struct Failed(Box<dyn std::error::Error>);

impl<E: Into<Box<dyn std::error::Error>>> From<E> for Failed {
    fn from(e: E) -> Self {
        Failed(e.into())
    }
}

impl std::fmt::Debug for Failed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        std::fmt::Display::fmt(&self.0, f)
    }
}

/// A duration for a log line, rounded to the millisecond: `50 ms`, `1.5 s`, `2 s`.
pub fn duration(d: Duration) -> String {
    let ms = d.as_micros().saturating_add(500) / 1000;
    if ms < 1000 {
        return format!("{ms} ms");
    }
    let fraction = format!("{:03}", ms % 1000);
    let fraction = fraction.trim_end_matches('0');
    if fraction.is_empty() {
        format!("{} s", ms / 1000)
    } else {
        format!("{}.{fraction} s", ms / 1000)
    }
}

/// `n` and `what` in words: `1 client`, `2 clients`, `1 try`, `3 tries`, `2 pushes`.
pub fn count(n: usize, what: &str) -> String {
    if n == 1 {
        return format!("1 {what}");
    }
    let consonant_y = what
        .strip_suffix('y')
        .filter(|stem| !stem.ends_with(['a', 'e', 'i', 'o', 'u']));
    if let Some(stem) = consonant_y {
        format!("{n} {stem}ies")
    } else if ["s", "x", "z", "ch", "sh"]
        .iter()
        .any(|end| what.ends_with(end))
    {
        format!("{n} {what}es")
    } else {
        format!("{n} {what}s")
    }
}
