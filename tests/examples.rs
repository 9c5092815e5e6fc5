//! The examples, run as a user would: as processes, poked over loopback, stopped with
//! SIGINT.

use std::io::{BufRead, BufReader, Read};
use std::net::{SocketAddr, UdpSocket};
use std::path::PathBuf;
use std::process::{Child, ChildStderr, Command, Output, Stdio};
use std::sync::Once;
use std::sync::mpsc::{Receiver, channel};
use std::thread;
use std::time::{Duration, Instant};

const DEADLINE: Duration = Duration::from_secs(20);

/// Builds the examples once (a no-op when `cargo test` already did) and returns the path
/// of one.
fn example(name: &str) -> PathBuf {
    static BUILD: Once = Once::new();
    BUILD.call_once(|| {
        let status = Command::new(env!("CARGO"))
            .args(["build", "--examples", "--quiet"])
            .current_dir(env!("CARGO_MANIFEST_DIR"))
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

/// A running example whose stderr lines arrive on a channel.
struct Running {
    child: Child,
    lines: Receiver<String>,
    seen: Vec<String>,
}

impl Running {
    fn start(name: &str, args: &[&str]) -> Running {
        let mut child = Command::new(example(name))
            .args(args)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawn example {name}: {e}"));
        let stderr: ChildStderr = child.stderr.take().expect("piped stderr");
        let (tx, lines) = channel();
        thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        Running {
            child,
            lines,
            seen: Vec::new(),
        }
    }

    /// Waits for a stderr line containing `needle`; returns it.
    #[track_caller]
    fn wait_for(&mut self, needle: &str) -> String {
        let end = Instant::now() + DEADLINE;
        if let Some(line) = self.seen.iter().find(|l| l.contains(needle)) {
            return line.clone();
        }
        while let Some(left) = end.checked_duration_since(Instant::now()) {
            match self.lines.recv_timeout(left) {
                Ok(line) => {
                    self.seen.push(line.clone());
                    if line.contains(needle) {
                        return line;
                    }
                }
                Err(_) => break,
            }
        }
        let _ = self.child.kill();
        panic!(
            "no line with {needle:?} within {DEADLINE:?}; saw {:?}",
            self.seen
        );
    }

    /// Waits until `n` stderr lines contain `needle`.
    #[track_caller]
    fn wait_for_count(&mut self, needle: &str, n: usize) {
        let end = Instant::now() + DEADLINE;
        while self.seen.iter().filter(|l| l.contains(needle)).count() < n {
            let Some(left) = end.checked_duration_since(Instant::now()) else {
                break;
            };
            match self.lines.recv_timeout(left) {
                Ok(line) => self.seen.push(line),
                Err(_) => break,
            }
        }
        let got = self.seen.iter().filter(|l| l.contains(needle)).count();
        if got < n {
            let _ = self.child.kill();
            panic!("{got} of {n} lines with {needle:?}; saw {:?}", self.seen);
        }
    }

    /// The address in its `listening on IP:PORT` line.
    fn listening_addr(&mut self) -> SocketAddr {
        let line = self.wait_for("listening on ");
        let rest = &line[line.find("listening on ").expect("found") + 13..];
        let addr = rest.split_whitespace().next().expect("an address");
        addr.parse().expect("IP:PORT after 'listening on'")
    }

    /// Sends SIGINT (Ctrl-C) and waits for the process to exit; returns its output.
    fn interrupt(self) -> (bool, String, Vec<String>) {
        let pid = self.child.id().to_string();
        let killed = Command::new("kill")
            .args(["-INT", &pid])
            .status()
            .expect("run kill");
        assert!(killed.success(), "kill -INT {pid}");
        self.finish()
    }

    fn finish(mut self) -> (bool, String, Vec<String>) {
        let end = Instant::now() + DEADLINE;
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("try_wait") {
                break status;
            }
            if Instant::now() > end {
                let _ = self.child.kill();
                panic!(
                    "example did not exit within {DEADLINE:?}; saw {:?}",
                    self.seen
                );
            }
            thread::sleep(Duration::from_millis(10));
        };
        let mut stdout = String::new();
        if let Some(mut out) = self.child.stdout.take() {
            let _ = out.read_to_string(&mut stdout);
        }
        while let Ok(line) = self.lines.recv_timeout(Duration::from_millis(200)) {
            self.seen.push(line);
        }
        (status.success(), stdout, self.seen)
    }
}

fn client() -> UdpSocket {
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    c.set_read_timeout(Some(Duration::from_secs(5)))
        .expect("timeout");
    c
}

/// The echo example logs its address, echoes every size including the empty datagram,
/// and stops cleanly on SIGINT, closing its port.
#[test]
fn echo_example_echoes_and_stops_on_ctrl_c() {
    let mut echo = Running::start("echo", &["127.0.0.1:0"]);
    let addr = echo.listening_addr();
    let c = client();
    let mut buf = [0u8; 9000];
    for payload in [&b""[..], b"x", b"hello twine", &[7u8; 8192]] {
        c.send_to(payload, addr).expect("send");
        let (n, from) = c.recv_from(&mut buf).expect("echo reply");
        assert_eq!((&buf[..n], from), (payload, addr));
    }
    let (ok, _, lines) = echo.interrupt();
    assert!(ok, "echo exits 0 on SIGINT; log: {lines:?}");
    let closed = format!("(UDP Port {addr} Closed)");
    assert!(lines.iter().any(|l| l.contains(&closed)), "{lines:?}");
    assert!(
        lines.iter().any(|l| l.contains("received SIGINT")),
        "{lines:?}"
    );
}

/// The echo example refuses a bind address that is not an IP literal, with exit code 2.
#[test]
fn echo_example_rejects_a_hostname() {
    let out: Output = Command::new(example("echo"))
        .arg("localhost:9999")
        .output()
        .expect("run echo");
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("IP literal"));
}

/// The connected example gets `--count` replies from the echo example, prints each as
/// `reply from IP:PORT: TEXT`, then exits by itself.
#[test]
fn connected_example_prints_replies_then_exits() {
    let mut echo = Running::start("echo", &["127.0.0.1:0"]);
    let addr = echo.listening_addr().to_string();
    let client = Running::start("connected", &[&addr, "--count", "2"]);
    let (ok, stdout, lines) = client.finish();
    assert!(ok, "connected exits 0; log: {lines:?}");
    let replies: Vec<&str> = stdout
        .lines()
        .filter(|l| l.starts_with("reply from "))
        .collect();
    assert_eq!(replies.len(), 2, "stdout: {stdout:?}");
    assert!(replies[0].starts_with(&format!("reply from {addr}: hello #1 at ")));
    let (ok, _, _) = echo.interrupt();
    assert!(ok);
}

/// Against a port where nothing listens, the connected example logs `connection refused`
/// and goes on sending until its count.
#[test]
fn connected_example_logs_refusal_and_goes_on() {
    let dead = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = dead.local_addr().expect("addr").to_string();
    drop(dead);
    let mut client = Running::start("connected", &[&addr, "--count", "2"]);
    client.wait_for("connection refused");
    let (ok, _, lines) = client.finish();
    assert!(ok, "{lines:?}");
    assert!(lines.iter().any(|l| l.contains("hello #2")), "{lines:?}");
}

/// Two copies of the multicast example share one port; each hears the other's `Notify`
/// and answers it.
#[test]
fn two_multicast_examples_share_a_port_and_talk() {
    let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let group = format!("228.0.0.77:{port}");
    let mut first = Running::start("multicast", &[&group]);
    first.wait_for("listening on");
    let mut second = Running::start("multicast", &[&group]);
    second.wait_for("listening on");
    // The first copy hears its own Notify and then the second's: both sockets on the
    // one port get the group's datagrams. (Unicast Acknowledges to a shared port go to
    // one socket of the kernel's choosing, so they are not asserted per copy.)
    first.wait_for_count("received \"Notify\"", 2);
    second.wait_for("received \"Notify\"");
    let (ok1, _, _) = first.interrupt();
    let (ok2, _, _) = second.interrupt();
    assert!(ok1 && ok2);
}

/// The adopt example serves echo on a socket it bound itself and handed over by fd.
#[test]
fn adopt_example_echoes_on_its_own_socket() {
    let mut adopt = Running::start("adopt", &["127.0.0.1:0"]);
    let addr = adopt.listening_addr();
    let c = client();
    c.send_to(b"adopted", addr).expect("send");
    let mut buf = [0u8; 64];
    let (n, from) = c.recv_from(&mut buf).expect("reply");
    assert_eq!((&buf[..n], from), (&b"adopted"[..], addr));
    let (ok, _, _) = adopt.interrupt();
    assert!(ok);
}
