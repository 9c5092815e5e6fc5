//! What every example shares: logging setup and argument parsing.
#![allow(dead_code)]

use std::net::SocketAddr;
use std::process::exit;
use std::time::{SystemTime, UNIX_EPOCH};

/// Logs at info level to stderr (`RUST_LOG=debug` or `trace` for more).
pub fn init_logging() {
    let level = match std::env::var("RUST_LOG").as_deref() {
        Ok("trace") => log::LevelFilter::Trace,
        Ok("debug") => log::LevelFilter::Debug,
        Ok("warn") => log::LevelFilter::Warn,
        _ => log::LevelFilter::Info,
    };
    let config = simplelog::ConfigBuilder::new()
        .set_time_level(log::LevelFilter::Off)
        .set_target_level(log::LevelFilter::Off)
        .set_thread_level(log::LevelFilter::Off)
        .build();
    let _ = simplelog::TermLogger::init(
        level,
        config,
        simplelog::TerminalMode::Stderr,
        simplelog::ColorChoice::Never,
    );
}

/// The positional arguments (those not starting with `--`, and not the value of a flag).
pub fn positional() -> Vec<String> {
    let mut out = Vec::new();
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a.starts_with("--") {
            args.next();
        } else {
            out.push(a);
        }
    }
    out
}

/// The value of `--name VALUE`, if given.
pub fn flag(name: &str) -> Option<String> {
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == name {
            return args.next();
        }
    }
    None
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
