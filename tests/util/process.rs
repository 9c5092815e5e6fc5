//! Child processes and network namespaces for tests: bounded runs, line streams, and
//! namespaces deleted when dropped.

use std::io::{BufRead, BufReader, Read};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use super::{DEADLINE, init_logging};

/// Whether this is the child run of an ignored `inner_` test, started by
/// [`Netns::run_inner`] with `flag` set (then with logging set up); any other run says so
/// and the test does nothing.
pub fn child_run(flag: &str) -> bool {
    if std::env::var_os(flag).is_none() {
        eprintln!("not a child run ({flag} unset): nothing to do");
        return false;
    }
    init_logging();
    true
}

/// A network namespace, deleted when dropped.
pub struct Netns {
    pub name: String,
}

impl Netns {
    /// Creates `twine-<tag>-<pid>` with `lo` up, or says why it cannot (not root, no `ip`).
    pub fn create(tag: &str) -> Result<Netns, String> {
        let mut id = Command::new("id");
        id.arg("-u");
        let (_, uid, _) = run_to_end(id, Duration::from_secs(10))?;
        if uid.trim() != "0" {
            return Err(format!(
                "not root (`id -u` says {:?}); network namespaces need root",
                uid.trim()
            ));
        }
        let name = format!("twine-{tag}-{}", std::process::id());
        ip(&["netns", "add", &name]).map_err(|e| format!("`ip netns add` failed: {e}"))?;
        let ns = Netns { name };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// Runs `ip -n <ns> args`.
    pub fn ip(&self, args: &[&str]) -> Result<(), String> {
        let mut all = vec!["-n", self.name.as_str()];
        all.extend_from_slice(args);
        ip(&all).map_err(|e| format!("setting up namespace {}: {e}", self.name))
    }

    /// Runs `tc -n <ns> args`.
    pub fn tc(&self, args: &[&str]) -> Result<(), String> {
        let mut cmd = Command::new("tc");
        cmd.args(["-n", self.name.as_str()]).args(args);
        let (status, _out, err) = run_to_end(cmd, Duration::from_secs(10))?;
        if status.success() {
            Ok(())
        } else {
            Err(format!(
                "`tc -n {} {}`: {status}: {}",
                self.name,
                args.join(" "),
                err.trim()
            ))
        }
    }

    /// Creates a namespace whose `lo` is limited to 1 MB/s by a token-bucket qdisc
    /// (packets waiting in it stay charged to the sender's buffer, so loopback pushes
    /// back) and runs the ignored test `inner` in it, as [`run_inner`](Self::run_inner).
    /// Fails, saying why, where that namespace cannot be made: the tests that call this
    /// are `#[ignore]`d, and run only where asked for.
    #[track_caller]
    pub fn run_rate_limited(tag: &str, inner: &str, flag: &str) {
        let ns = Netns::create(tag)
            .and_then(|ns| {
                ns.tc(&[
                    "qdisc", "add", "dev", "lo", "root", "tbf", "rate", "8mbit", "burst", "4kb",
                    "latency", "500ms",
                ])?;
                Ok(ns)
            })
            .unwrap_or_else(|reason| {
                panic!("{inner} needs a network namespace with a tbf qdisc: {reason}")
            });
        ns.run_inner(inner, flag);
    }

    /// Runs the ignored test `inner` of the current test binary inside the namespace, with
    /// `flag` set in its environment, and asserts that it ran, printed `INNER-DONE` and
    /// passed.
    #[track_caller]
    pub fn run_inner(&self, inner: &str, flag: &str) {
        let exe = std::env::current_exe().expect("test binary");
        let mut cmd = Command::new("ip");
        cmd.args(["netns", "exec", &self.name])
            .arg(exe)
            .args(["--exact", inner, "--ignored", "--nocapture"])
            .env(flag, "1");
        let (status, out, err) =
            run_to_end(cmd, Duration::from_secs(30)).expect("run ip netns exec");
        assert!(
            status.success() && out.contains("INNER-DONE") && out.contains("1 passed"),
            "{inner} in namespace {} failed ({status}):\n--- stdout\n{out}\n--- stderr\n{err}",
            self.name
        );
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        if let Err(e) = ip(&["netns", "del", &self.name]) {
            eprintln!("could not delete network namespace {}: {e}", self.name);
        }
    }
}

/// Runs `ip args` to the end (bounded); an error says what failed and why.
pub fn ip(args: &[&str]) -> Result<(), String> {
    let mut cmd = Command::new("ip");
    cmd.args(args);
    let (status, _out, err) = run_to_end(cmd, Duration::from_secs(10))?;
    if status.success() {
        Ok(())
    } else {
        Err(format!("`ip {}`: {status}: {}", args.join(" "), err.trim()))
    }
}

/// Runs `cmd` with its output captured, killing it past `limit` (and panicking); returns
/// its status, stdout and stderr, or why it could not be started.
pub fn run_to_end(
    mut cmd: Command,
    limit: Duration,
) -> Result<(ExitStatus, String, String), String> {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let child = cmd
        .spawn()
        .map_err(|e| format!("cannot start {cmd:?}: {e}"))?;
    let mut child = ChildGuard(child);
    let out = read_all(child.0.stdout.take().expect("piped stdout"));
    let err = read_all(child.0.stderr.take().expect("piped stderr"));
    let status = child.wait_within(limit);
    Ok((status, out.join().unwrap(), err.join().unwrap()))
}

pub fn read_all(mut from: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut s = String::new();
        let _ = from.read_to_string(&mut s);
        s
    })
}

/// Spawns `cmd` and streams its stdout lines (stderr is inherited).
pub fn spawn_with_lines(mut cmd: Command) -> (ChildGuard, mpsc::Receiver<String>) {
    cmd.stdin(Stdio::null()).stdout(Stdio::piped());
    let mut child = ChildGuard(cmd.spawn().expect("spawn the child test"));
    let stdout = child.0.stdout.take().expect("piped stdout");
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stdout).lines() {
            let Ok(line) = line else { break };
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    (child, rx)
}

/// Waits (at most [`DEADLINE`]) for a line starting with `prefix`; returns it.
#[track_caller]
pub fn wait_for_line(lines: &mpsc::Receiver<String>, prefix: &str) -> String {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match lines.recv_timeout(left) {
            Ok(line) if line.starts_with(prefix) => return line,
            Ok(_) => {}
            Err(e) => panic!("no line starting with {prefix:?} from the child: {e}"),
        }
    }
}

/// A child process that is killed (by its own pid) and reaped if still running when
/// dropped.
pub struct ChildGuard(pub Child);

impl ChildGuard {
    /// Waits at most `limit` for the child to exit; kills it past that and panics.
    #[track_caller]
    pub fn wait_within(&mut self, limit: Duration) -> ExitStatus {
        let deadline = Instant::now() + limit;
        loop {
            if let Some(status) = self.0.try_wait().expect("try_wait") {
                return status;
            }
            if Instant::now() >= deadline {
                let _ = self.0.kill();
                let _ = self.0.wait();
                panic!(
                    "child {} still running after {limit:?}; killed",
                    self.0.id()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }
}

impl Drop for ChildGuard {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
        }
        let _ = self.0.wait();
    }
}
