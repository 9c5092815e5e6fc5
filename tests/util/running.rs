//! Programs run as a user would run them: the examples (built once per test binary) and
//! peer programs such as Python scripts, with their output lines streamed and waited on
//! under a deadline, stopped with SIGINT, and killed if a test fails first.

use std::io::{BufRead, BufReader, Read};
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::sync::Once;
use std::sync::mpsc::{Receiver, Sender, channel};
use std::thread;
use std::time::{Duration, Instant};

use super::process::ChildGuard;

/// The longest a wait on a program's output may take (programs start slower than
/// sockets answer, hence longer than [`super::DEADLINE`]).
pub const PROGRAM_DEADLINE: Duration = Duration::from_secs(20);

/// Builds the examples once (a no-op when `cargo test` already did) and returns the path
/// of one.
pub fn example(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--examples", "--quiet"])
            .current_dir(super::root())
            .status()
            .expect("run cargo build --examples");
        assert!(status.success(), "cargo build --examples failed");
    });
    let exe = std::env::current_exe().expect("test binary path");
    let profile_dir = exe
        .parent()
        .and_then(|deps| deps.parent())
        .expect("target/<profile>");
    profile_dir.join("examples").join(name)
}

/// A running program whose stdout and stderr lines arrive, interleaved, on one channel.
/// Killed and reaped when dropped if still running.
pub struct Running {
    child: ChildGuard,
    lines: Receiver<String>,
    /// Every line received so far, in arrival order.
    pub seen: Vec<String>,
}

/// How a program ended: whether it exited 0, and all its output lines.
pub struct Ended {
    pub success: bool,
    pub code: Option<i32>,
    pub lines: Vec<String>,
}

impl Ended {
    /// The lines that contain `needle`.
    pub fn lines_with(&self, needle: &str) -> Vec<&str> {
        self.lines
            .iter()
            .filter(|l| l.contains(needle))
            .map(String::as_str)
            .collect()
    }
}

fn forward(from: impl Read + Send + 'static, to: Sender<String>) {
    thread::spawn(move || {
        for line in BufReader::new(from).lines().map_while(Result::ok) {
            if to.send(line).is_err() {
                break;
            }
        }
    });
}

impl Running {
    /// Starts example `name` with `args`.
    pub fn example(name: &str, args: &[&str]) -> Running {
        let mut cmd = Command::new(example(name));
        cmd.args(args);
        Running::spawn(cmd)
    }

    /// Starts `cmd` with stdin closed and its output streamed.
    pub fn spawn(mut cmd: Command) -> Running {
        cmd.stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        let mut child = cmd.spawn().unwrap_or_else(|e| panic!("spawn {cmd:?}: {e}"));
        let (tx, lines) = channel();
        forward(child.stdout.take().expect("piped stdout"), tx.clone());
        forward(child.stderr.take().expect("piped stderr"), tx);
        Running {
            child: ChildGuard(child),
            lines,
            seen: Vec::new(),
        }
    }

    /// Receives lines until `pred` holds for the lines seen so far or the deadline passes
    /// (then panics, showing what was seen).
    #[track_caller]
    fn wait_until(&mut self, what: &str, pred: impl Fn(&[String]) -> bool) {
        let end = Instant::now() + PROGRAM_DEADLINE;
        while !pred(&self.seen) {
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
        if !pred(&self.seen) {
            panic!(
                "{what} within {PROGRAM_DEADLINE:?}; output so far: {:#?}",
                self.seen
            );
        }
    }

    /// Waits for an output line containing `needle`; returns the first such line.
    #[track_caller]
    pub fn wait_for(&mut self, needle: &str) -> String {
        self.wait_for_count(needle, 1);
        self.seen
            .iter()
            .find(|l| l.contains(needle))
            .cloned()
            .expect("counted")
    }

    /// Waits until `n` output lines contain `needle`.
    #[track_caller]
    pub fn wait_for_count(&mut self, needle: &str, n: usize) {
        let what = format!("no {n} lines with {needle:?}");
        self.wait_until(&what, |seen| {
            seen.iter().filter(|l| l.contains(needle)).count() >= n
        });
    }

    /// The address after `label` (e.g. `"speaking from "`) in the first output line that
    /// has it.
    #[track_caller]
    pub fn addr_after(&mut self, label: &str) -> SocketAddr {
        let line = self.wait_for(label);
        let rest = &line[line.find(label).expect("found") + label.len()..];
        let addr = rest.split_whitespace().next().expect("an address");
        addr.parse()
            .unwrap_or_else(|e| panic!("IP:PORT after {label:?} in {line:?}: {e}"))
    }

    /// The address in the program's `listening on IP:PORT` line.
    #[track_caller]
    pub fn listening_addr(&mut self) -> SocketAddr {
        let line = self.wait_for("listening on ");
        let rest = &line[line.find("listening on ").expect("found") + "listening on ".len()..];
        let addr = rest.split_whitespace().next().expect("an address");
        addr.parse().expect("IP:PORT after 'listening on'")
    }

    /// The process id.
    pub fn pid(&self) -> u32 {
        self.child.0.id()
    }

    /// Sends SIGINT (Ctrl-C) and waits for the program to exit.
    #[track_caller]
    pub fn interrupt(self) -> Ended {
        let pid = self.pid().to_string();
        let killed = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -INT {pid}");
        self.finish()
    }

    /// Waits for the program to exit by itself (killing it past the deadline, and
    /// panicking).
    #[track_caller]
    pub fn finish(mut self) -> Ended {
        let status = self.child.wait_within(PROGRAM_DEADLINE);
        // Both streams close when the process exits (the channel then disconnects, once the
        // forwarding threads have passed on every line); take what is left. A process the
        // program started may hold them open: then what came within the deadline.
        let end = Instant::now() + super::DEADLINE;
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
        Ended {
            success: status.success(),
            code: status.code(),
            lines: std::mem::take(&mut self.seen),
        }
    }
}
