//! Interoperability with real Twisted (26.10, its default epoll reactor) as the peer: the
//! examples run as processes, and small Twisted programs talk to them over loopback,
//! printing `TWISTED-…` lines that the tests assert on next to the examples' logs.
//!
//! | Twisted peer (`tests/peers/`) | talks to example | test |
//! |---|---|---|
//! | `twisted_echo_client.py`: `listenUDP` client | `echo` | [`twisted_client_talks_to_the_echo_example`] |
//! | `twisted_multicast_listener.py`: `listenMulticast(listenMultiple=True)` + `joinGroup` | `multicast`, sending | [`twisted_multicast_listener_hears_a_twine_sender`] |
//! | `twisted_multicast_sender.py`: `listenMulticast(0)` + `setOutgoingInterface` | `multicast`, acknowledging | [`twine_multicast_example_hears_a_twisted_sender`] |
//! | `twisted_refused_client.py`: connected `listenUDP` client | `connected`, beside it against the same closed port | [`twisted_and_twine_clients_both_get_their_refusal`] |
//!
//! `twisted_peer.py` holds what the peers share, among it their own 15 s timeout (shorter
//! than the 20 s the tests wait on a program), so no peer can hang a test.
//!
//! Every test here needs Twisted, from a virtual environment that `bash .ci/twisted-venv`
//! makes under `target/` (from PyPI), so they are ignored by a plain `cargo test`. Run them
//! with `cargo test --test twisted -- --ignored` (`.ci/run` does, once it has installed
//! Twisted); a missing Twisted then fails them.

mod util;

use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::process::Command;

use util::peers::{script, twisted};
use util::running::{Ended, Running};

/// Starts Twisted peer `name` with `args`: unbuffered, and writing no `__pycache__` into
/// `tests/peers/` (the peers import `twisted_peer.py`).
fn peer(python: &Path, name: &str, args: &[&str]) -> Running {
    let mut cmd = Command::new(python);
    cmd.args(["-u", "-B"]).arg(script(name)).args(args);
    Running::spawn(cmd)
}

/// A UDP port on 127.0.0.1 that was free a moment ago (bound, noted, released).
fn free_port() -> u16 {
    let probe = UdpSocket::bind("127.0.0.1:0").expect("bind a probe");
    probe.local_addr().expect("probe address").port()
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Output lines for a failure message, long ones (8 KiB of hex) cut down.
fn shown(lines: &[String]) -> String {
    lines
        .iter()
        .map(|l| match l.char_indices().nth(160) {
            Some((i, _)) => format!("  {}… ({} chars)\n", &l[..i], l.len()),
            None => format!("  {l}\n"),
        })
        .collect()
}

/// The lines of `end` that start with `prefix`, owned.
fn starting(end: &Ended, prefix: &str) -> Vec<String> {
    end.lines
        .iter()
        .filter(|l| l.starts_with(prefix))
        .cloned()
        .collect()
}

/// Asserts that a Twisted peer printed `TWISTED-DONE` and exited 0. (Not necessarily as
/// its last line: datagrams read in the same turn are still printed.)
#[track_caller]
fn assert_peer_done(end: &Ended, peer: &str) {
    assert!(
        end.success && end.lines.iter().any(|l| l == "TWISTED-DONE"),
        "{peer} did not finish (exit code {:?}); output:\n{}",
        end.code,
        shown(&end.lines)
    );
}

/// Bytes 0, 1, …, 250, 0, 1, … (`n` of them): a payload whose every byte is checked.
fn pattern(n: usize) -> Vec<u8> {
    (0..n).map(|i| (i % 251) as u8).collect()
}

/// A Twisted client sends the echo example the empty datagram, 1 byte, text, exactly the
/// 8192-byte max packet size, 8193 bytes (one too many) and a marker, in one burst. It
/// gets back the first four byte for byte from the example's address, then the marker
/// right after the 8192-byte one: twine dropped the 8193-byte datagram (and logged it
/// with the sender) instead of echoing it cut short. SIGINT then stops the example with
/// exit code 0.
#[test]
#[ignore = "needs Twisted: bash .ci/twisted-venv, then cargo test --test twisted -- --ignored"]
fn twisted_client_talks_to_the_echo_example() {
    let py = twisted("twisted_client_talks_to_the_echo_example");
    let mut echo = Running::example("echo", &["127.0.0.1:0"]);
    let server = echo.listening_addr();
    let payloads = [
        Vec::new(),
        b"x".to_vec(),
        b"hello from Twisted".to_vec(),
        pattern(8192),
        pattern(8193),
        b"MARKER after 8193".to_vec(),
    ];
    let mut args = vec![server.to_string()];
    args.extend(payloads.iter().map(|p| hex(p)));
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let end = peer(&py, "twisted_echo_client.py", &args).finish();
    assert_peer_done(&end, "twisted_echo_client.py");

    let ready = starting(&end, "TWISTED-READY ");
    let client: SocketAddr = ready
        .first()
        .and_then(|l| l["TWISTED-READY ".len()..].parse().ok())
        .unwrap_or_else(|| panic!("no TWISTED-READY address; output:\n{}", shown(&end.lines)));
    let got = starting(&end, "TWISTED-GOT ");
    let expected: Vec<String> = [0, 1, 2, 3, 5]
        .iter()
        .map(|&i| {
            let p = &payloads[i];
            format!("TWISTED-GOT len={} hex={} FROM {server}", p.len(), hex(p))
        })
        .collect();
    assert!(
        got == expected,
        "Twisted got, in order:\n{}expected the echoes of payloads 0, 1, 2, 3 and the \
         marker (not the 8193-byte one):\n{}",
        shown(&got),
        shown(&expected)
    );

    echo.wait_for(&format!(
        "datagram of 8193 bytes from {client} longer than max packet size 8192, dropped (1 so far)"
    ));
    let stopped = echo.interrupt();
    assert!(
        stopped.success,
        "echo exits 0 on SIGINT; output:\n{}",
        shown(&stopped.lines)
    );
}

/// A Twisted `listenMulticast(PORT, listenMultiple=True)` that joined the group via
/// 127.0.0.1 hears the `Notify` the multicast example sends on start, from the example's
/// own port on 127.0.0.1 (`speaking from`).
#[test]
#[ignore = "needs Twisted: bash .ci/twisted-venv, then cargo test --test twisted -- --ignored"]
fn twisted_multicast_listener_hears_a_twine_sender() {
    let py = twisted("twisted_multicast_listener_hears_a_twine_sender");
    let port = free_port().to_string();
    let group = "228.0.0.91";
    let mut listener = peer(&py, "twisted_multicast_listener.py", &[group, &port]);
    listener.wait_for("TWISTED-JOINED");
    let mut twine = Running::example("multicast", &[&format!("{group}:{port}")]);
    let own = twine.addr_after("speaking from ");

    let end = listener.finish();
    assert_peer_done(&end, "twisted_multicast_listener.py");
    let notify = format!("TWISTED-GOT b'Notify' FROM {own}");
    assert!(
        end.lines.contains(&notify),
        "no {notify:?}; Twisted's output:\n{}",
        shown(&end.lines)
    );
    let stopped = twine.interrupt();
    assert!(stopped.success, "{}", shown(&stopped.lines));
}

/// A Twisted sender on its own port sends `Notify` to the group via 127.0.0.1: the
/// multicast example logs it from that port, and the example's unicast `Acknowledge`
/// comes back to Twisted from the example's own port (`speaking from`).
#[test]
#[ignore = "needs Twisted: bash .ci/twisted-venv, then cargo test --test twisted -- --ignored"]
fn twine_multicast_example_hears_a_twisted_sender() {
    let py = twisted("twine_multicast_example_hears_a_twisted_sender");
    let port = free_port().to_string();
    let group = "228.0.0.92";
    let mut twine = Running::example("multicast", &[&format!("{group}:{port}")]);
    let own = twine.addr_after("speaking from ");
    let mut sender = peer(&py, "twisted_multicast_sender.py", &[group, &port]);
    let sent = sender.wait_for("TWISTED-SENT b'Notify' FROM PORT ");
    let sender_port: u16 = sent
        .rsplit(' ')
        .next()
        .and_then(|p| p.parse().ok())
        .unwrap_or_else(|| panic!("no port in {sent:?}"));
    twine.wait_for(&format!("received \"Notify\" from 127.0.0.1:{sender_port}"));

    let end = sender.finish();
    assert_peer_done(&end, "twisted_multicast_sender.py");
    assert_eq!(
        starting(&end, "TWISTED-GOT "),
        [format!("TWISTED-GOT b'Acknowledge' FROM {own}")],
        "Twisted's output:\n{}",
        shown(&end.lines)
    );
    let stopped = twine.interrupt();
    assert!(stopped.success, "{}", shown(&stopped.lines));
}

/// Against a closed port, the connected example logs `connection refused` (and goes on
/// to its second greeting, exiting 0), and a Twisted client connected to the same port
/// gets `connectionRefused()`. With the epoll reactor Twisted calls it only from a write
/// that meets the pending ICMP error (the read path silently shuts the port instead), so
/// the peer writes several times in one callback; see `twisted_refused_client.py`.
#[test]
#[ignore = "needs Twisted: bash .ci/twisted-venv, then cargo test --test twisted -- --ignored"]
fn twisted_and_twine_clients_both_get_their_refusal() {
    let py = twisted("twisted_and_twine_clients_both_get_their_refusal");
    let closed = format!("127.0.0.1:{}", free_port());
    let twine = Running::example("connected", &[&closed, "--count", "2"]);
    let twisted = peer(&py, "twisted_refused_client.py", &[&closed]);

    let end = twisted.finish();
    assert_peer_done(&end, "twisted_refused_client.py");
    assert_eq!(
        starting(&end, "TWISTED-REFUSED").len(),
        1,
        "Twisted's output:\n{}",
        shown(&end.lines)
    );

    let ended = twine.finish();
    let refused = format!("connection refused by {closed}");
    assert!(
        ended.success && !ended.lines_with(&refused).is_empty(),
        "the connected example should log {refused:?} and exit 0 (code {:?}); output:\n{}",
        ended.code,
        shown(&ended.lines)
    );
    assert!(
        !ended.lines_with("sent \"hello #2").is_empty(),
        "twine's port goes on after a refusal; output:\n{}",
        shown(&ended.lines)
    );
}
