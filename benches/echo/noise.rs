//! How much CPU the rest of the machine took while a measurement ran (Linux `/proc`), so
//! that a run disturbed by another program can be told apart and repeated.
//!
//! All CPUs' busy time from `/proc/stat` (user, nice, system, steal: interrupt time is
//! left out, since the loopback traffic's own softirq work is counted there) less this
//! process's and its server children's CPU time (`/proc/PID/stat`). Both are in clock
//! ticks of 1/100 s (Linux's `USER_HZ`).

use std::time::Duration;

/// A reading of the counters.
#[derive(Debug, Clone, Copy)]
pub struct Reading {
    machine: u64,
    ours: u64,
}

/// Clock ticks per second in `/proc` (`USER_HZ`).
const TICKS: f64 = 100.0;

/// Reads the counters; `children` are the pids of server processes to count as ours.
pub fn read(children: &[u32]) -> Option<Reading> {
    let cpu = all_cpus()?;
    // user nice system idle iowait irq softirq steal ...: irq and softirq left out, since
    // the benchmark's own loopback softirq work lands there, not in its processes' time.
    let machine = [0, 1, 2, 7].iter().filter_map(|&i| cpu.get(i)).sum();
    let mut ours = process_ticks("self")?;
    for pid in children {
        ours += process_ticks(&pid.to_string()).unwrap_or(0);
    }
    Some(Reading { machine, ours })
}

/// Whole-machine busy time so far: every CPU's time from `/proc/stat` but idle and
/// iowait (user, nice, system, irq, softirq, steal; guest time is already inside user
/// and nice), in clock ticks. Unlike [`read`], interrupt and softirq time count: the
/// cost of a datagram's way through the kernel is what is measured with it.
pub fn machine_busy() -> Option<u64> {
    let cpu = all_cpus()?;
    Some([0, 1, 2, 5, 6, 7].iter().filter_map(|&i| cpu.get(i)).sum())
}

/// The `cpu` line of `/proc/stat`: every CPU's time so far, in clock ticks, per kind
/// (user, nice, system, idle, iowait, irq, softirq, steal, ...).
fn all_cpus() -> Option<Vec<u64>> {
    let stat = std::fs::read_to_string("/proc/stat").ok()?;
    let cpu = stat
        .lines()
        .next()?
        .strip_prefix("cpu ")?
        .split_whitespace()
        .map(|f| f.parse().unwrap_or(0))
        .collect();
    Some(cpu)
}

/// Clock ticks as time.
pub fn ticks(n: u64) -> std::time::Duration {
    std::time::Duration::from_secs_f64(n as f64 / TICKS)
}

/// utime + stime of a process, in ticks.
fn process_ticks(pid: &str) -> Option<u64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // The command name, in parentheses, may hold spaces: count fields after it.
    let after = &stat[stat.rfind(')')? + 1..];
    let fields: Vec<&str> = after.split_whitespace().collect();
    // Fields 14 and 15 of the line are the 12th and 13th after the name.
    let utime: u64 = fields.get(11)?.parse().ok()?;
    let stime: u64 = fields.get(12)?.parse().ok()?;
    Some(utime + stime)
}

/// The CPU time other programs used between two readings (user, system and steal time
/// beyond ours).
pub fn others_time(from: Option<Reading>, to: Option<Reading>) -> Option<std::time::Duration> {
    let (from, to) = (from?, to?);
    let machine = to.machine.saturating_sub(from.machine);
    let ours = to.ours.saturating_sub(from.ours);
    Some(ticks(machine.saturating_sub(ours)))
}

/// The CPUs' worth (1.0 is one CPU all the time) that others used between two readings
/// `elapsed` apart.
pub fn others(from: Option<Reading>, to: Option<Reading>, elapsed: Duration) -> Option<f64> {
    let (from, to) = (from?, to?);
    let machine = to.machine.saturating_sub(from.machine);
    let ours = to.ours.saturating_sub(from.ours);
    let secs = elapsed.as_secs_f64().max(1e-3);
    Some(machine.saturating_sub(ours) as f64 / TICKS / secs)
}
