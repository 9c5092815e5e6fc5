//! The examples, run as a user would: as processes, poked over loopback, stopped with
//! SIGINT.

mod util;

use std::net::UdpSocket;
use std::process::{Command, Output};
use std::time::Duration;

use util::running::{Running, example};

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
    let mut echo = Running::example("echo", &["127.0.0.1:0"]);
    let addr = echo.listening_addr();
    let c = client();
    let mut buf = [0u8; 9000];
    for payload in [&b""[..], b"x", b"hello twine", &[7u8; 8192]] {
        c.send_to(payload, addr).expect("send");
        let (n, from) = c.recv_from(&mut buf).expect("echo reply");
        assert_eq!((&buf[..n], from), (payload, addr));
    }
    let end = echo.interrupt();
    let lines = &end.lines;
    assert!(end.success, "echo exits 0 on SIGINT; log: {lines:?}");
    let closed = format!("(UDP Port {addr} Closed)");
    assert_eq!(end.lines_with(&closed).len(), 1, "{lines:?}");
    assert_eq!(end.lines_with("received SIGINT").len(), 1, "{lines:?}");
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
    let mut echo = Running::example("echo", &["127.0.0.1:0"]);
    let addr = echo.listening_addr().to_string();
    let client = Running::example("connected", &[&addr, "--count", "2"]);
    let end = client.finish();
    assert!(end.success, "connected exits 0; log: {:?}", end.lines);
    let replies: Vec<&String> = end
        .lines
        .iter()
        .filter(|l| l.starts_with("reply from "))
        .collect();
    assert_eq!(replies.len(), 2, "output: {:?}", end.lines);
    assert!(replies[0].starts_with(&format!("reply from {addr}: hello #1 at ")));
    assert!(echo.interrupt().success);
}

/// Against a port where nothing listens, the connected example logs `connection refused`
/// and goes on sending until its count.
#[test]
fn connected_example_logs_refusal_and_goes_on() {
    let dead = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = dead.local_addr().expect("addr").to_string();
    drop(dead);
    let mut client = Running::example("connected", &[&addr, "--count", "2"]);
    client.wait_for("connection refused");
    let end = client.finish();
    assert!(end.success, "{:?}", end.lines);
    assert!(!end.lines_with("hello #2").is_empty(), "{:?}", end.lines);
}

/// Two copies of the multicast example share one port; each hears the other's `Notify`
/// and answers it.
#[test]
fn two_multicast_examples_share_a_port_and_talk() {
    let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let group = format!("228.0.0.77:{port}");
    let mut first = Running::example("multicast", &[&group]);
    first.wait_for("listening on");
    let mut second = Running::example("multicast", &[&group]);
    second.wait_for("listening on");
    // The first copy hears its own Notify and then the second's: both sockets on the
    // one port get the group's datagrams. (Unicast Acknowledges to a shared port go to
    // one socket of the kernel's choosing, so they are not asserted per copy.)
    first.wait_for_count("received \"Notify\"", 2);
    second.wait_for("received \"Notify\"");
    assert!(first.interrupt().success);
    assert!(second.interrupt().success);
}

/// The adopt example serves echo on a socket it bound itself and handed over by fd.
#[test]
fn adopt_example_echoes_on_its_own_socket() {
    let mut adopt = Running::example("adopt", &["127.0.0.1:0"]);
    let addr = adopt.listening_addr();
    let c = client();
    c.send_to(b"adopted", addr).expect("send");
    let mut buf = [0u8; 64];
    let (n, from) = c.recv_from(&mut buf).expect("reply");
    assert_eq!((&buf[..n], from), (&b"adopted"[..], addr));
    assert!(adopt.interrupt().success);
}
