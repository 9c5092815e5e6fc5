//! Python 3's own `socket` module as the client of every server example: a peer nobody
//! here wrote, speaking plain UDP. The client is `tests/peers/socket_client.py`, driven by
//! steps on its command line; it prints what it received and the assertions are here.
//!
//! | test | Python client of |
//! |---|---|
//! | `python_gets_echoes_of_every_size_from_echo` (and `_over_ipv6`) | `echo` |
//! | `python_gets_upper_cased_echoes_of_every_size_from_upper_server` | `upper_server` |
//! | `python_gets_echoes_of_every_size_from_adopt` | `adopt` |
//! | `python_parses_the_time_from_time_server` | `time_server` |
//! | `python_clients_register_get_pushes_and_unregister_with_push_server` | `push_server` |
//! | `python_clients_chat_and_hear_bye_bye_from_chat_server` | `chat_server` |
//!
//! The other way round, `tests/peers/dns_standin.py` is a DNS server for the `dns_client`
//! example (the `dns_client_*` tests).

mod util;

use std::net::SocketAddr;
use std::path::Path;
use std::process::Command;
use std::time::{SystemTime, UNIX_EPOCH};

use util::peers::{python3, script};
use util::running::{Ended, Running};

/// The examples' default largest datagram (`ListenOptions` default).
const MAX_PACKET: usize = 8192;

/// One datagram the Python client received: on which of its sockets, from where, what.
#[derive(Debug, Clone, PartialEq)]
struct Got {
    sock: usize,
    from: SocketAddr,
    data: Vec<u8>,
}

/// Starts the Python client against `server` with `steps`.
fn start_client(py: &Path, server: SocketAddr, steps: &[&str]) -> Running {
    let mut cmd = Command::new(py);
    cmd.arg("-u")
        .arg(script("socket_client.py"))
        .arg(server.to_string())
        .args(steps);
    Running::spawn(cmd)
}

/// Runs the Python client to its end and checks it succeeded.
#[track_caller]
fn run_client(py: &Path, server: SocketAddr, steps: &[&str]) -> Ended {
    checked(start_client(py, server, steps).finish())
}

#[track_caller]
fn checked(end: Ended) -> Ended {
    assert!(
        end.success && end.lines.last().is_some_and(|l| l == "DONE"),
        "the Python client failed: {:#?}",
        end.lines
    );
    end
}

fn unhex(hex: &str) -> Vec<u8> {
    (0..hex.len())
        .step_by(2)
        .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
        .collect()
}

/// The `RECV N len=L from=ADDR hex=HEX` lines, in order.
fn received(end: &Ended) -> Vec<Got> {
    end.lines
        .iter()
        .filter_map(|l| l.strip_prefix("RECV "))
        .map(|rest| {
            let fields: Vec<&str> = rest.split(' ').collect();
            let value = |key: &str| {
                fields
                    .iter()
                    .find_map(|f| f.strip_prefix(key))
                    .unwrap_or_else(|| panic!("no {key} in {rest:?}"))
            };
            let data = unhex(value("hex="));
            assert_eq!(value("len=").parse::<usize>().expect("len"), data.len());
            Got {
                sock: fields[0].parse().expect("socket number"),
                from: value("from=").parse().expect("from address"),
                data,
            }
        })
        .collect()
}

/// The texts socket `sock` received, in order.
fn texts(got: &[Got], sock: usize) -> Vec<String> {
    got.iter()
        .filter(|g| g.sock == sock)
        .map(|g| String::from_utf8_lossy(&g.data).into_owned())
        .collect()
}

/// Sends the empty datagram, a 1-byte one, one of exactly the max packet size, one just
/// over it, then a marker, and checks the replies: `reply(sent)` for all but the one over
/// the size, which is dropped (never delivered cut short), so the marker's reply comes
/// right after the max-size one.
fn check_sizes(py: &Path, server: SocketAddr, reply: fn(&[u8]) -> Vec<u8>) {
    let max = format!("send:fill:{MAX_PACKET}:97");
    let over = format!("send:fill:{}:98", MAX_PACKET + 1);
    let steps = [
        "send:empty",
        "recv",
        "send:fill:1:120",
        "recv",
        &max,
        "recv",
        &over,
        "send:text:marker",
        "recv",
    ];
    let end = run_client(py, server, &steps);
    let sent: [&[u8]; 4] = [b"", b"x", &[b'a'; MAX_PACKET], b"marker"];
    let expected: Vec<Got> = sent
        .iter()
        .map(|s| Got {
            sock: 0,
            from: server,
            data: reply(s),
        })
        .collect();
    assert_eq!(received(&end), expected, "{:#?}", end.lines);
}

/// Runs `example` on `bind`, checks its echo of every size, then stops it with Ctrl-C.
fn check_echoing_example(test: &str, example: &str, bind: &str, reply: fn(&[u8]) -> Vec<u8>) {
    let Some(py) = python3(test) else { return };
    let mut server = Running::example(example, &[bind]);
    let addr = server.listening_addr();
    check_sizes(&py, addr, reply);
    let end = server.interrupt();
    assert!(end.success, "{example} on SIGINT: {:#?}", end.lines);
}

#[test]
fn python_gets_echoes_of_every_size_from_echo() {
    check_echoing_example(
        "python_gets_echoes_of_every_size_from_echo",
        "echo",
        "127.0.0.1:0",
        <[u8]>::to_vec,
    );
}

#[test]
fn python_gets_echoes_of_every_size_from_echo_over_ipv6() {
    check_echoing_example(
        "python_gets_echoes_of_every_size_from_echo_over_ipv6",
        "echo",
        "[::1]:0",
        <[u8]>::to_vec,
    );
}

#[test]
fn python_gets_upper_cased_echoes_of_every_size_from_upper_server() {
    check_echoing_example(
        "python_gets_upper_cased_echoes_of_every_size_from_upper_server",
        "upper_server",
        "127.0.0.1:0",
        <[u8]>::to_ascii_uppercase,
    );
}

#[test]
fn python_gets_echoes_of_every_size_from_adopt() {
    check_echoing_example(
        "python_gets_echoes_of_every_size_from_adopt",
        "adopt",
        "127.0.0.1:0",
        <[u8]>::to_vec,
    );
}

/// Any datagram, the empty one included, from any client, gets a time that Python's
/// `time.strptime` reads as a ctime string, of a moment between the server's start and
/// Python's own clock reading once it has the reply.
#[test]
fn python_parses_the_time_from_time_server() {
    let Some(py) = python3("python_parses_the_time_from_time_server") else {
        return;
    };
    let since = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs();
    let mut server = Running::example("time_server", &["127.0.0.1:0"]);
    let addr = server.listening_addr();
    let steps = [
        "send:empty",
        "ctime",
        "send:text:what time is it?",
        "ctime",
        "1:send:fill:8192:0",
        "1:ctime",
    ];
    let end = run_client(&py, addr, &steps);
    let times: Vec<(i64, i64)> = end
        .lines
        .iter()
        .filter_map(|l| l.strip_prefix("CTIME "))
        .map(|rest| {
            let num = |key: &str| -> i64 {
                rest.split(' ')
                    .find_map(|f| f.strip_prefix(key))
                    .and_then(|v| v.parse().ok())
                    .unwrap_or_else(|| panic!("no {key} in {rest:?}"))
            };
            (num("epoch="), num("now="))
        })
        .collect();
    assert_eq!(times.len(), 3, "{:#?}", end.lines);
    // Whole seconds of the same clock, read by the server before it replied and by
    // Python after: how far apart depends on the scheduler, the order does not.
    let since = i64::try_from(since).expect("seconds");
    for (epoch, now) in times {
        assert!(
            since <= epoch && epoch <= now,
            "time {epoch} not between the test's start {since} and Python's now {now}"
        );
    }
    assert!(server.interrupt().success);
}

/// Two Python clients register; each gets `registered NAME`, then `time <ctime>` pushes
/// every 0.2 s; unregistering answers `unregistered NAME`; unknown names and bad names are
/// answered as documented.
#[test]
fn python_clients_register_get_pushes_and_unregister_with_push_server() {
    let Some(py) = python3("python_clients_register_get_pushes_and_unregister_with_push_server")
    else {
        return;
    };
    let mut server = Running::example("push_server", &["127.0.0.1:0", "--every", "0.2"]);
    let addr = server.listening_addr();
    let steps = [
        "send:text:alice\n",
        "until:registered alice",
        "1:send:text:bob",
        "1:until:registered bob",
        "until:time ",
        "1:until:time ",
        "send:text:unregister alice",
        "until:unregistered alice",
        "1:send:text:unregister nobody",
        "1:until:not registered nobody",
        "1:send:text:two words",
        "1:until:error: ",
    ];
    let end = run_client(&py, addr, &steps);
    let got = received(&end);
    assert!(got.iter().all(|g| g.from == addr), "{got:#?}");
    let alice = texts(&got, 0);
    let bob = texts(&got, 1);
    // The reply to a registration is written before any push can be.
    assert_eq!(alice.first().map(String::as_str), Some("registered alice"));
    assert_eq!(bob.first().map(String::as_str), Some("registered bob"));
    assert_eq!(alice.last().map(String::as_str), Some("unregistered alice"));
    for push in alice.iter().chain(&bob).filter(|t| t.starts_with("time ")) {
        // `time Sun Nov 22 14:03:07 2026`
        let fields: Vec<&str> = push.split_whitespace().collect();
        assert_eq!(fields.len(), 6, "{push:?}");
        assert_eq!(fields[4].len(), 8, "{push:?}");
    }
    assert!(bob.contains(&"not registered nobody".to_owned()), "{bob:?}");
    server.wait_for("unregistered alice");
    let end = server.interrupt();
    assert!(end.success, "{:#?}", end.lines);
    assert_eq!(end.lines_with("registered alice at").len(), 1);
    assert_eq!(end.lines_with("registered bob at").len(), 1);
}

/// Two Python clients chat: each message is acked to both; a heartbeat gets no reply (the
/// next datagram is the next message's ack); after `quit` only the other is known, and
/// on Ctrl-C the server says `bye bye` to it alone.
#[test]
fn python_clients_chat_and_hear_bye_bye_from_chat_server() {
    let Some(py) = python3("python_clients_chat_and_hear_bye_bye_from_chat_server") else {
        return;
    };
    let mut server = Running::example("chat_server", &["127.0.0.1:0"]);
    let addr = server.listening_addr();
    let steps = [
        "send:text:hello",
        "recv",
        "1:send:text:hi there",
        "1:recv",
        "recv",
        "1:send:text:^hb^",
        "1:send:text:after the heartbeat",
        "1:recv",
        "recv",
        "1:send:text:quit",
        "send:text:again",
        "recv",
        "say:READY-FOR-STOP",
        "recv",
    ];
    let mut client = start_client(&py, addr, &steps);
    client.wait_for("READY-FOR-STOP");
    let stopped = server.interrupt();
    assert!(stopped.success, "{:#?}", stopped.lines);
    assert_eq!(
        stopped.lines_with("said bye bye to 1 client").len(),
        1,
        "{:#?}",
        stopped.lines
    );
    let end = checked(client.finish());
    let got = received(&end);
    assert!(got.iter().all(|g| g.from == addr), "{got:#?}");
    assert_eq!(
        texts(&got, 0),
        [
            "ack hello",
            "ack hi there",
            "ack after the heartbeat",
            "ack again",
            "bye bye"
        ]
    );
    assert_eq!(texts(&got, 1), ["ack hi there", "ack after the heartbeat"]);
}

// ----- dns_client against a Python DNS stand-in ------------------------------------------

/// Starts `tests/peers/dns_standin.py` on 127.0.0.1 with `args`; returns it and its address.
fn dns_standin(py: &Path, args: &[&str]) -> (Running, SocketAddr) {
    let mut cmd = Command::new(py);
    cmd.arg("-u")
        .arg(script("dns_standin.py"))
        .args(["--host", "127.0.0.1", "--port", "0"])
        .args(args);
    let mut standin = Running::spawn(cmd);
    let addr = standin.listening_addr();
    (standin, addr)
}

/// The stand-in ignores the first two tries of the query and answers the third, after
/// datagrams with the query's id that are no answer to it (short, a pointer past the end,
/// a compression loop, too many answers, another question): dns_client ignores those,
/// prints the A record and exits 0, having sent three tries (the third answered).
#[test]
fn dns_client_gets_its_answer_from_the_python_standin_after_dropped_tries() {
    let Some(py) =
        python3("dns_client_gets_its_answer_from_the_python_standin_after_dropped_tries")
    else {
        return;
    };
    let (mut standin, server) = dns_standin(&py, &["--drop", "2", "--junk"]);
    // Doubling from 0.5 s, so that the third try's answer has 2 s to come back.
    let args = [
        &server.to_string()[..],
        "--tries",
        "3",
        "--timeout",
        "0.5",
        "--backoff",
        "2",
    ];
    let end = Running::example("dns_client", &args).finish();
    assert!(end.success, "dns_client: {:#?}", end.lines);
    assert_eq!(
        end.lines_with("answer: "),
        ["answer: example.test A 127.0.0.7"],
        "{:#?}",
        end.lines
    );
    assert_eq!(
        end.lines_with("answered after 3 tries").len(),
        1,
        "{:#?}",
        end.lines
    );
    standin.wait_for("answered try 3 of query");
    assert_eq!(
        standin
            .seen
            .iter()
            .filter(|l| l.contains("dropped try"))
            .count(),
        2
    );
}

/// A stand-in that drops more tries than the client makes: dns_client gives up after its
/// tries with exit code 1; a name the stand-in does not know gets NXDOMAIN, exit code 1.
#[test]
fn dns_client_times_out_or_reports_nxdomain_with_exit_code_1() {
    let Some(py) = python3("dns_client_times_out_or_reports_nxdomain_with_exit_code_1") else {
        return;
    };
    let (mut standin, server) = dns_standin(&py, &["--drop", "2"]);
    let server = server.to_string();
    let end =
        Running::example("dns_client", &[&server, "--tries", "2", "--timeout", "0.2"]).finish();
    assert_eq!(end.code, Some(1), "{:#?}", end.lines);
    assert_eq!(
        end.lines_with("timed out after 2 tries").len(),
        1,
        "{:#?}",
        end.lines
    );
    assert!(end.lines_with("answer: ").is_empty());
    standin.wait_for_count("dropped try 2 of query", 1);
    let end = Running::example(
        "dns_client",
        &[
            &server,
            "--name",
            "nope.test",
            "--tries",
            "4",
            "--timeout",
            "0.5",
        ],
    )
    .finish();
    assert_eq!(end.code, Some(1), "{:#?}", end.lines);
    assert_eq!(
        end.lines_with("the server says NXDOMAIN").len(),
        1,
        "{:#?}",
        end.lines
    );
}

/// `dns_client --help` prints its usage and exits 0; bad flags exit 2.
#[test]
fn dns_client_prints_usage_on_help_and_rejects_bad_flags() {
    let end = Running::example("dns_client", &["--help"]).finish();
    assert!(end.success, "{:#?}", end.lines);
    assert!(end.lines.iter().any(|l| l.starts_with("usage: dns_client")));
    for args in [
        &["--tries", "0"][..],
        &["--backoff", "0"],
        &["--name", "a..b"],
        &["localhost:53"],
    ] {
        let end = Running::example("dns_client", args).finish();
        assert_eq!(end.code, Some(2), "{args:?}: {:#?}", end.lines);
    }
}
