//! The examples, run as a user would: as processes, poked over loopback, stopped with
//! SIGINT.

#[path = "../examples/common/mod.rs"]
mod common;
mod util;

use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::thread;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use util::dead_addr;
use util::running::{Ended, Running, example};

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
    for payload in [&b""[..], b"x", b"hello twine", &[7u8; 8192]] {
        assert_eq!(request(&c, addr, payload), payload);
    }
    let end = echo.interrupt();
    let lines = &end.lines;
    assert!(end.success, "echo exits 0 on SIGINT; log: {lines:?}");
    let closed = format!("(UDP Port {addr} Closed)");
    assert_eq!(end.lines_with(&closed).len(), 1, "{lines:?}");
    assert_eq!(end.lines_with("received SIGINT").len(), 1, "{lines:?}");
}

/// Bound to 0.0.0.0, the echo example answers each request from the address it was sent
/// to: a client connected to 127.0.0.2 (which drops anything from another address) gets
/// its echo, and one connected to 127.0.0.3 gets its own.
#[test]
fn echo_example_on_a_wildcard_address_answers_from_the_address_asked() {
    let mut echo = Running::example("echo", &["0.0.0.0:0"]);
    let port = echo.listening_addr().port();
    for asked in ["127.0.0.2", "127.0.0.3", "127.0.0.1"] {
        let to: SocketAddr = format!("{asked}:{port}").parse().expect("addr");
        let c = client();
        c.connect(to).expect("connect");
        c.send(asked.as_bytes()).expect("send");
        let mut buf = [0u8; 64];
        let n = c
            .recv(&mut buf)
            .expect("the echo reaches the connected client");
        assert_eq!(&buf[..n], asked.as_bytes());
    }
    assert!(echo.interrupt().success);
}

/// The time server logs, at debug level, how long after the kernel stamped each request
/// its answer was written.
#[test]
fn time_server_logs_the_receive_to_reply_delay() {
    let mut cmd = std::process::Command::new(util::running::example("time_server"));
    cmd.arg("127.0.0.1:0").env("RUST_LOG", "debug");
    let mut server = Running::spawn(cmd);
    let addr = server.listening_addr();
    let c = client();
    assert_ctime_now(&text(request(&c, addr, b"now?")));
    let end = server.interrupt();
    let lines = end.lines_with("µs after its request arrived");
    assert_eq!(lines.len(), 1, "{:#?}", end.lines);
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

/// An error out of an example's `main` is printed by its `Display`, not its `Debug`, with
/// exit code 1: the echo example on an address in use.
#[test]
fn an_examples_error_is_printed_as_text() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let addr = taken.local_addr().expect("addr");
    let out: Output = Command::new(example("echo"))
        .arg(addr.to_string())
        .output()
        .expect("run echo");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{stderr}");
    let said = format!("Error: couldn't listen on {addr}: ");
    assert!(stderr.contains(&said), "{stderr}");
    assert!(!stderr.contains("CannotListen"), "{stderr}");
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
    let addr = dead_addr().to_string();
    let mut client = Running::example("connected", &[&addr, "--count", "2"]);
    client.wait_for("connection refused");
    let end = client.finish();
    assert!(end.success, "{:?}", end.lines);
    assert!(!end.lines_with("hello #2").is_empty(), "{:?}", end.lines);
}

/// Two copies of the multicast example share the group's port; each logs the other's
/// `Notify` and `Acknowledge`, both from the other's own port (the one its first line
/// names: `speaking from IP:PORT`).
#[test]
fn two_multicast_examples_share_a_port_and_talk() {
    let probe = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let port = probe.local_addr().expect("addr").port();
    drop(probe);
    let group = format!("228.0.0.77:{port}");
    let mut first = Running::example("multicast", &[&group]);
    let first_own = first.addr_after("speaking from ");
    let mut second = Running::example("multicast", &[&group]);
    let second_own = second.addr_after("speaking from ");
    assert_ne!(first_own, second_own);
    assert_eq!(first.listening_addr().port(), port);
    assert_eq!(second.listening_addr().port(), port);
    for (copy, other) in [(&mut first, second_own), (&mut second, first_own)] {
        for what in ["Notify", "Acknowledge"] {
            let line = copy.wait_for(&format!("received \"{what}\" from {other}"));
            assert!(line.ends_with(&other.to_string()), "{line}");
        }
    }
    assert!(first.interrupt().success);
    assert!(second.interrupt().success);
}

/// The adopt example serves echo on a socket it bound itself and handed over by fd.
#[test]
fn adopt_example_echoes_on_its_own_socket() {
    let mut adopt = Running::example("adopt", &["127.0.0.1:0"]);
    let addr = adopt.listening_addr();
    let c = client();
    assert_eq!(request(&c, addr, b"adopted"), b"adopted");
    assert!(adopt.interrupt().success);
}

// ----- helpers for the six request/response and push examples --------------------------

/// The examples added with the push, chat, time and upper-case servers.
const SIX: [&str; 6] = [
    "push_server",
    "push_client",
    "chat_server",
    "chat_client",
    "time_server",
    "upper_server",
];

/// The next datagram on `sock` (within its read timeout), which must come from `from`.
///
/// A wait cut short by a signal is resumed: the test process gets SIGCHLD as the examples
/// exit, and a blocking `recv_from` with a read timeout then fails with EINTR.
#[track_caller]
fn recv_from(sock: &UdpSocket, from: SocketAddr) -> Vec<u8> {
    let mut buf = vec![0u8; 65536];
    let (n, sender) = loop {
        match sock.recv_from(&mut buf) {
            Err(e) if e.kind() == ErrorKind::Interrupted => continue,
            got => break got.unwrap_or_else(|e| panic!("nothing from {from} in time: {e}")),
        }
    };
    assert_eq!(sender, from, "a datagram from an unexpected sender");
    buf.truncate(n);
    buf
}

/// Sends `bytes` from `sock` to `to` and returns the next datagram from `to`.
#[track_caller]
fn request(sock: &UdpSocket, to: SocketAddr, bytes: &[u8]) -> Vec<u8> {
    sock.send_to(bytes, to).expect("send");
    recv_from(sock, to)
}

/// A datagram as text (the text protocols answer in UTF-8).
#[track_caller]
fn text(bytes: Vec<u8>) -> String {
    String::from_utf8(bytes).expect("a UTF-8 datagram")
}

/// Asserts that no datagram waits on `sock` now. Only meaningful once whatever could have
/// sent one is known to have sent it (a later reply seen elsewhere, or the sender gone).
#[track_caller]
fn assert_nothing_queued(sock: &UdpSocket, why: &str) {
    let mut buf = [0u8; 2048];
    sock.set_nonblocking(true).expect("nonblocking");
    let got = sock.recv_from(&mut buf);
    sock.set_nonblocking(false).expect("blocking");
    match got {
        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
        Ok((n, from)) => panic!(
            "{why}: got {:?} from {from}",
            String::from_utf8_lossy(&buf[..n])
        ),
        Err(e) => panic!("{why}: recv failed: {e}"),
    }
}

/// The seconds since 1970-01-01 UTC that a `ctime` string (`Sun Nov 22 14:03:07 2026`)
/// names. Panics unless it has exactly the shape `Www Mmm dd hh:mm:ss yyyy` (the day of
/// month padded with a space), a real date, and the weekday of that date.
#[track_caller]
fn parse_ctime(text: &str) -> u64 {
    const WEEKDAYS: [&str; 7] = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
    const MONTHS: [&str; 12] = [
        "Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec",
    ];
    #[track_caller]
    fn bad(text: &str, why: &str) -> ! {
        panic!("{text:?} is not a ctime string (`Www Mmm dd hh:mm:ss yyyy`): {why}")
    }
    let b = text.as_bytes();
    let separators = [
        (3, b' '),
        (7, b' '),
        (10, b' '),
        (13, b':'),
        (16, b':'),
        (19, b' '),
    ];
    if !text.is_ascii() || b.len() != 24 || separators.iter().any(|&(i, c)| b[i] != c) {
        bad(text, "wrong length or separators");
    }
    let number = |range: std::ops::Range<usize>| -> u64 {
        let digits = &text[range];
        if !digits.bytes().all(|c| c.is_ascii_digit()) {
            bad(text, &format!("{digits:?} is not a number"));
        }
        digits.parse().expect("digits")
    };
    let day = if b[8] == b' ' {
        number(9..10)
    } else {
        number(8..10)
    };
    if day == 0 || (b[8] != b' ') != (day >= 10) {
        bad(text, "day of month not 1 to 31, space-padded");
    }
    let Some(month) = MONTHS.iter().position(|m| *m == &text[4..7]) else {
        bad(text, "no such month")
    };
    let (year, hour, minute, second) = (
        number(20..24),
        number(11..13),
        number(14..16),
        number(17..19),
    );
    if year < 1970 || hour > 23 || minute > 59 || second > 59 {
        bad(text, "year, hour, minute or second out of range");
    }
    let leap = |y: u64| y.is_multiple_of(4) && (!y.is_multiple_of(100) || y.is_multiple_of(400));
    let feb = if leap(year) { 29 } else { 28 };
    let month_days: [u64; 12] = [31, feb, 31, 30, 31, 30, 31, 31, 30, 31, 30, 31];
    if day > month_days[month] {
        bad(text, "no such day in that month");
    }
    let days = (1970..year)
        .map(|y| if leap(y) { 366 } else { 365 })
        .sum::<u64>()
        + month_days[..month].iter().sum::<u64>()
        + day
        - 1;
    // 1970-01-01 was a Thursday.
    if WEEKDAYS[((days + 4) % 7) as usize] != &text[0..3] {
        bad(text, "the weekday is not that of the date");
    }
    days * 86_400 + hour * 3600 + minute * 60 + second
}

/// The seconds since 1970-01-01 UTC now, as the examples' `ctime` counts them (whole).
fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .expect("after 1970")
        .as_secs()
}

/// The clock reading taken before this test binary started its first server ([`serve`]
/// starts every server that tells the time): no time a server tells is earlier.
static FIRST_SERVER: OnceLock<u64> = OnceLock::new();

/// Asserts that `text` is a `ctime` string (UTC) of a time between the start of the first
/// server and now: what holds however long the datagram waited on the way (how close to
/// now it is depends on the scheduler).
#[track_caller]
fn assert_ctime_now(text: &str) {
    let then = parse_ctime(text);
    let since = *FIRST_SERVER
        .get()
        .expect("the server telling the time was started by serve()");
    let now = now_secs();
    assert!(
        since <= then && then <= now,
        "{text:?} ({then}) is not between the first server's start ({since}) and now ({now})"
    );
}

/// Receives `n` pushes from the push server on `sock`: each `time <ctime of now>`.
#[track_caller]
fn await_pushes(sock: &UdpSocket, server: SocketAddr, n: usize) {
    for _ in 0..n {
        let push = text(recv_from(sock, server));
        let time = push
            .strip_prefix("time ")
            .unwrap_or_else(|| panic!("expected a push `time ...`, got {push:?}"));
        assert_ctime_now(time);
    }
}

/// Sends `bytes` to the push server and returns its reply, passing over the pushes that
/// arrive before it (they were sent before the request was handled).
#[track_caller]
fn request_past_pushes(sock: &UdpSocket, server: SocketAddr, bytes: &[u8]) -> String {
    sock.send_to(bytes, server).expect("send");
    loop {
        let got = text(recv_from(sock, server));
        if !got.starts_with("time ") {
            return got;
        }
    }
}

/// Shows that the push server no longer pushes to `sock`, once `ask` from it is answered
/// `reply`. Every push to `sock` sent before that reply came before it; a socket that
/// registers after it then gets two pushes while `sock` gets nothing (a push still going
/// to `sock` would have been sent with the first of the two, a period before the second).
#[track_caller]
fn assert_no_more_pushes(sock: &UdpSocket, server: SocketAddr, ask: &[u8], reply: &str) {
    assert_eq!(request_past_pushes(sock, server, ask), reply);
    let marker = client();
    assert_eq!(
        text(request(&marker, server, b"marker")),
        "registered marker"
    );
    await_pushes(&marker, server, 2);
    assert_nothing_queued(sock, "a push after they should have stopped");
}

/// The addresses in a program's `... starting on IP:PORT` lines (one a port it opened).
fn started_on(lines: &[String]) -> Vec<SocketAddr> {
    lines
        .iter()
        .filter_map(|l| l.split_once(" starting on "))
        .map(|(_, addr)| addr.trim().parse().expect("IP:PORT after 'starting on'"))
        .collect()
}

/// Where a server on 127.0.0.1 sees a client port bound to the unspecified address.
fn on_loopback(addr: SocketAddr) -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], addr.port()))
}

/// Asserts that exactly `n` of a program's output lines contain `needle`.
#[track_caller]
fn assert_lines(end: &Ended, needle: &str, n: usize) {
    let found = end.lines_with(needle).len();
    assert_eq!(found, n, "lines with {needle:?}; output: {:#?}", end.lines);
}

/// Asserts that a program stopped with SIGINT exited 0, said so once, opened `ports`
/// ports and logged `(UDP Port ADDR Closed)` once for each; returns their addresses.
///
/// Interrupt only once its reactor runs (a reply, a push or a refusal seen): the
/// examples log `listening on` before `Reactor::run` installs the SIGINT handler.
#[track_caller]
fn assert_stopped_by_ctrl_c(end: &Ended, ports: usize) -> Vec<SocketAddr> {
    let lines = &end.lines;
    assert!(end.success, "exit 0 on SIGINT; log: {lines:#?}");
    assert_lines(end, "received SIGINT", 1);
    let opened = started_on(lines);
    assert_eq!(opened.len(), ports, "ports opened; log: {lines:#?}");
    for addr in &opened {
        assert_lines(end, &format!("(UDP Port {addr} Closed)"), 1);
    }
    opened
}

/// Starts server example `name` on 127.0.0.1, port 0, with `args`; returns it and the
/// address it listens on.
fn serve(name: &str, args: &[&str]) -> (Running, SocketAddr) {
    serve_logging(name, args, "info")
}

/// [`serve`] with `RUST_LOG` set to `level`.
fn serve_logging(name: &str, args: &[&str], level: &str) -> (Running, SocketAddr) {
    FIRST_SERVER.get_or_init(now_secs);
    let mut cmd = Command::new(example(name));
    cmd.arg("127.0.0.1:0").args(args).env("RUST_LOG", level);
    let mut server = Running::spawn(cmd);
    let addr = server.listening_addr();
    (server, addr)
}

// ----- push_server and push_client ------------------------------------------------------

/// push_client with `--users A,B,C --pushes 2` registers each user on its own port, prints
/// `X got: registered X` and then at least two `X got: time <ctime>`, exits 0 once every
/// user has its pushes, and unregisters each user on the way out.
#[test]
fn push_client_users_each_get_pushes_then_unregister() {
    let (mut server, addr) = serve("push_server", &["--every", "0.2"]);
    let addr = addr.to_string();
    let args = [addr.as_str(), "--users", "A,B,C", "--pushes", "2"];
    let end = Running::example("push_client", &args).finish();
    let lines = &end.lines;
    assert!(
        end.success,
        "push_client exits 0 by itself; log: {lines:#?}"
    );
    let ports: Vec<u16> = started_on(lines).iter().map(SocketAddr::port).collect();
    assert_eq!(ports.len(), 3, "a port per user; log: {lines:#?}");
    for user in ["A", "B", "C"] {
        let prefix = format!("{user} got: ");
        let got: Vec<&str> = lines
            .iter()
            .filter_map(|l| l.strip_prefix(&prefix))
            .collect();
        assert_eq!(
            got.first(),
            Some(&&*format!("registered {user}")),
            "{lines:#?}"
        );
        let times: Vec<&str> = got[1..]
            .iter()
            .filter_map(|g| g.strip_prefix("time "))
            .collect();
        assert_eq!(
            times.len(),
            got.len() - 1,
            "only pushes after the reply: {got:#?}"
        );
        assert!(
            times.len() >= 2,
            "{user} got {} pushes: {lines:#?}",
            times.len()
        );
        times.iter().for_each(|t| assert_ctime_now(t));
        let registered = server.wait_for(&format!("registered {user} at "));
        let at: SocketAddr = registered
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .expect("ADDR");
        assert!(
            ports.contains(&at.port()),
            "{registered} is not a client port {ports:?}"
        );
        server.wait_for(&format!("unregistered {user}"));
    }
    assert!(server.interrupt().success);
}

/// Without `--users`, push_client runs the five users A to E.
#[test]
fn push_client_registers_five_users_by_default() {
    let (mut server, addr) = serve("push_server", &["--every", "0.2"]);
    let addr = addr.to_string();
    let end = Running::example("push_client", &[&addr, "--pushes", "1"]).finish();
    assert!(end.success, "{:#?}", end.lines);
    for user in ["A", "B", "C", "D", "E"] {
        let reply = format!("{user} got: registered {user}");
        assert_lines(&end, &reply, 1);
        server.wait_for(&format!("registered {user} at "));
        server.wait_for(&format!("unregistered {user}"));
    }
    assert_eq!(started_on(&end.lines).len(), 5, "{:#?}", end.lines);
    assert!(server.interrupt().success);
}

/// A plain socket registers, gets `time` pushes, unregisters, and then gets none: a
/// second socket registered after that gets two pushes while the first gets nothing.
#[test]
fn push_server_pushes_to_a_registered_socket_until_it_unregisters() {
    let (mut server, addr) = serve("push_server", &["--every", "0.1"]);
    let alice = client();
    assert_eq!(text(request(&alice, addr, b"alice")), "registered alice");
    await_pushes(&alice, addr, 2);
    assert_no_more_pushes(&alice, addr, b"unregister alice", "unregistered alice");
    let me = alice.local_addr().expect("addr");
    server.wait_for(&format!("registered alice at {me}"));
    server.wait_for("unregistered alice");
    assert!(server.interrupt().success);
}

/// A client that closes its socket without unregistering is dropped at the next push:
/// the server learns which destination refused (error_received, Linux's error queue),
/// and the other client keeps getting its pushes.
#[test]
fn push_server_drops_a_client_whose_port_refuses_a_push() {
    let (mut server, addr) = serve("push_server", &["--every", "0.1"]);
    let (gone, stays) = (client(), client());
    assert_eq!(text(request(&gone, addr, b"gone")), "registered gone");
    assert_eq!(text(request(&stays, addr, b"stays")), "registered stays");
    let at = gone.local_addr().expect("addr");
    drop(gone);
    server.wait_for(&format!("dropped gone at {at}: {at} unreachable"));
    await_pushes(&stays, addr, 3);
    let end = server.interrupt();
    assert!(end.success, "{:#?}", end.lines);
    assert_lines(&end, "dropped gone at ", 1);
    assert_lines(&end, "dropped stays", 0);
}

/// Registering a name again from another address moves it: the pushes go to the new
/// address only.
#[test]
fn push_server_moves_a_name_registered_again() {
    let (mut server, addr) = serve("push_server", &["--every", "0.1"]);
    let (first, second) = (client(), client());
    assert_eq!(text(request(&first, addr, b"bob")), "registered bob");
    await_pushes(&first, addr, 1);
    assert_eq!(text(request(&second, addr, b"bob")), "registered bob");
    // A request of first's own marks the end of the pushes sent to it before the move.
    assert_no_more_pushes(&first, addr, b"unregister nobody", "not registered nobody");
    await_pushes(&second, addr, 2);
    for sock in [&first, &second] {
        let at = sock.local_addr().expect("addr");
        server.wait_for(&format!("registered bob at {at}"));
    }
    assert!(server.interrupt().success);
}

/// The push server's answers to requests: unknown names, bad names (a space, over 32
/// bytes, empty, not UTF-8, `unregister` alone) get `error: ...`; a trailing newline
/// (nc's) or CRLF is ignored, in registrations and unregistrations alike.
#[test]
fn push_server_answers_bad_requests_and_ignores_trailing_newlines() {
    // Pushes an hour apart: no push comes between a request and its reply.
    let (server, addr) = serve("push_server", &["--every", "3600"]);
    let c = client();
    let ask = |bytes: &[u8]| text(request(&c, addr, bytes));
    assert_eq!(ask(b"unregister NOBODY"), "not registered NOBODY");
    let long = "x".repeat(33);
    let bad: [&[u8]; 9] = [
        b"two words",
        long.as_bytes(),
        b"",
        b"\n",
        b"\xff\xfename",
        b"unregister",
        b"A\tB",
        b"x\0y",
        b"a\nb",
    ];
    for request in bad {
        let reply = ask(request);
        assert!(reply.starts_with("error: "), "{request:?} got {reply:?}");
    }
    let longest = "y".repeat(32);
    assert_eq!(ask(longest.as_bytes()), format!("registered {longest}"));
    assert_eq!(ask(b"carol\n"), "registered carol");
    assert_eq!(ask(b"dave\r\n"), "registered dave");
    assert_eq!(ask(b"unregister carol\n"), "unregistered carol");
    assert_eq!(ask(b"unregister carol"), "not registered carol");
    let end = server.interrupt();
    assert!(end.success, "{:#?}", end.lines);
    assert_lines(&end, "registered carol at ", 1);
    assert_lines(&end, &format!("registered {long}"), 0);
}

/// Against a port where nothing listens, push_client logs `connection refused` for each
/// of its five users, and stops cleanly on Ctrl-C.
#[test]
fn push_client_logs_refusal_per_user_and_stops_on_ctrl_c() {
    let dead = dead_addr();
    let mut client = Running::example("push_client", &[&dead.to_string()]);
    for user in ["A", "B", "C", "D", "E"] {
        client.wait_for(&format!("{user}: connection refused by {dead}"));
    }
    assert_stopped_by_ctrl_c(&client.interrupt(), 5);
}

/// On Ctrl-C push_client closes every user's port and unregisters each user.
#[test]
fn push_client_unregisters_every_user_on_ctrl_c() {
    let (mut server, addr) = serve("push_server", &["--every", "0.2"]);
    let addr = addr.to_string();
    let mut client = Running::example("push_client", &[&addr, "--users", "P,Q"]);
    client.wait_for("P got: time ");
    client.wait_for("Q got: time ");
    assert_stopped_by_ctrl_c(&client.interrupt(), 2);
    server.wait_for("unregistered P");
    server.wait_for("unregistered Q");
    assert!(server.interrupt().success);
}

// ----- chat_server and chat_client ------------------------------------------------------

/// chat_client says `hello` and its message, prints the acks, sends `--heartbeats 3`
/// heartbeats, then says `quit` and exits 0; the server logs each step.
#[test]
fn chat_client_says_hello_and_its_message_then_quits() {
    let (mut server, addr) = serve_logging("chat_server", &[], "debug");
    let addr = addr.to_string();
    let args = [
        addr.as_str(),
        "first msg",
        "--interval",
        "0.2",
        "--heartbeats",
        "3",
    ];
    let end = Running::example("chat_client", &args).finish();
    let lines = &end.lines;
    assert!(
        end.success,
        "chat_client exits 0 by itself; log: {lines:#?}"
    );
    let got: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("got: "))
        .collect();
    assert_eq!(got, ["ack hello", "ack first msg"], "{lines:#?}");
    assert_lines(&end, "3 heartbeats sent, quitting", 1);
    let me = on_loopback(started_on(lines)[0]);
    server.wait_for(&format!("{me} joined"));
    server.wait_for(&format!("{me} says \"hello\""));
    server.wait_for(&format!("{me} says \"first msg\""));
    server.wait_for(&format!("{me} quit"));
    let end = server.interrupt();
    assert_lines(&end, &format!("heartbeat from {me}"), 3);
    assert_lines(&end, "said bye bye to 0 clients", 1);
}

/// A message is acknowledged to every known client, the sender included; a heartbeat
/// makes its sender known without a reply; the empty message and trailing newlines count.
#[test]
fn chat_server_acks_every_known_client_and_not_heartbeats() {
    let (mut server, addr) = serve("chat_server", &[]);
    let (a, b) = (client(), client());
    assert_eq!(text(request(&a, addr, b"hi from a")), "ack hi from a");
    b.send_to(b"^hb^", addr).expect("send");
    assert_eq!(text(request(&a, addr, b"second")), "ack second");
    // b's first datagram: nothing for its heartbeat, nothing from before it was known.
    assert_eq!(text(recv_from(&b, addr)), "ack second");
    assert_eq!(text(request(&b, addr, b"from b\n")), "ack from b");
    assert_eq!(text(recv_from(&a, addr)), "ack from b");
    a.send_to(b"^hb^\r\n", addr).expect("send");
    assert_eq!(text(request(&a, addr, b"")), "ack ");
    assert_eq!(text(recv_from(&b, addr)), "ack ");
    let a_at = a.local_addr().expect("addr");
    server.wait_for(&format!("{a_at} joined"));
    server.wait_for(&format!("{a_at} says \"hi from a\""));
    // A heartbeat that makes its sender known says so.
    let b_at = b.local_addr().expect("addr");
    server.wait_for(&format!("{b_at} joined (by heartbeat)"));
    server.wait_for(&format!(
        "{} says \"from b\"",
        b.local_addr().expect("addr")
    ));
    let end = server.interrupt();
    assert_lines(&end, "said bye bye to 2 clients", 1);
}

/// `quit` forgets its sender: no more acks, and no `bye bye` on Ctrl-C, which the server
/// sends to every client still known before it exits 0.
#[test]
fn chat_server_forgets_who_quits_and_says_bye_bye_to_the_rest_on_ctrl_c() {
    let (mut server, addr) = serve("chat_server", &[]);
    let (a, b, c) = (client(), client(), client());
    assert_eq!(text(request(&a, addr, b"a here")), "ack a here");
    assert_eq!(text(request(&b, addr, b"b here")), "ack b here");
    assert_eq!(text(recv_from(&a, addr)), "ack b here");
    assert_eq!(text(request(&c, addr, b"c here")), "ack c here");
    assert_eq!(text(recv_from(&a, addr)), "ack c here");
    assert_eq!(text(recv_from(&b, addr)), "ack c here");
    b.send_to(b"quit", addr).expect("send");
    let b_at = b.local_addr().expect("addr");
    server.wait_for(&format!("{b_at} quit"));
    assert_eq!(text(request(&a, addr, b"after quit")), "ack after quit");
    assert_eq!(text(recv_from(&c, addr)), "ack after quit");
    let end = server.interrupt();
    assert_stopped_by_ctrl_c(&end, 1);
    assert_lines(&end, "said bye bye to 2 clients", 1);
    for known in [&a, &c] {
        assert_eq!(text(recv_from(known, addr)), "bye bye");
    }
    // The server has exited: all it sent has arrived.
    assert_nothing_queued(&b, "a datagram for the client that quit");
}

/// With `--expire 0.5` a client that goes silent is logged `expired ADDR` and gets no
/// more acks (nor `bye bye`), while one that keeps sending heartbeats stays known.
#[test]
fn chat_server_expires_a_silent_client_and_keeps_a_heartbeating_one() {
    let (mut server, addr) = serve("chat_server", &["--expire", "0.5"]);
    let (a, b) = (client(), client());
    let (a_at, b_at) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    assert_eq!(text(request(&a, addr, b"a here")), "ack a here");
    assert_eq!(text(request(&b, addr, b"b here")), "ack b here");
    assert_eq!(text(recv_from(&a, addr)), "ack b here");
    let stop = Arc::new(AtomicBool::new(false));
    let beating = {
        let (beat, stop) = (a.try_clone().expect("clone"), stop.clone());
        thread::spawn(move || {
            while !stop.load(Ordering::Relaxed) {
                beat.send_to(b"^hb^", addr).expect("heartbeat");
                thread::sleep(Duration::from_millis(50));
            }
        })
    };
    server.wait_for(&format!("expired {b_at} ("));
    stop.store(true, Ordering::Relaxed);
    beating.join().expect("heartbeats");
    assert_eq!(text(request(&a, addr, b"still here")), "ack still here");
    assert_eq!(text(request(&a, addr, b"and again")), "ack and again");
    let end = server.interrupt();
    assert!(end.success, "{:#?}", end.lines);
    assert_lines(&end, &format!("expired {a_at} ("), 0);
    assert_lines(&end, &format!("{a_at} joined"), 1);
    assert_lines(&end, "said bye bye to 1 client", 1);
    assert_eq!(text(recv_from(&a, addr)), "bye bye");
    assert_nothing_queued(&b, "a datagram for the expired client");
}

/// A chat_client, with no limit, whose `hello` the server at `server` has acknowledged.
fn chatting(server: SocketAddr) -> Running {
    let mut client = Running::example("chat_client", &[&server.to_string()]);
    client.wait_for("got: ack hello");
    client
}

/// When the server stops, chat_client prints `got: bye bye` and exits 0 by itself.
#[test]
fn chat_client_exits_when_the_server_says_bye_bye() {
    let (server, addr) = serve("chat_server", &[]);
    let client = chatting(addr);
    let end = server.interrupt();
    assert_lines(&end, "said bye bye to 1 client", 1);
    let end = client.finish();
    assert!(end.success, "{:#?}", end.lines);
    assert_lines(&end, "got: bye bye", 1);
}

/// On Ctrl-C chat_client closes its port and says `quit`: the server forgets it.
#[test]
fn chat_client_says_quit_on_ctrl_c() {
    let (mut server, addr) = serve("chat_server", &[]);
    let client = chatting(addr);
    let ports = assert_stopped_by_ctrl_c(&client.interrupt(), 1);
    server.wait_for(&format!("{} quit", on_loopback(ports[0])));
    let end = server.interrupt();
    assert_lines(&end, "said bye bye to 0 clients", 1);
}

/// Against a port where nothing listens, chat_client logs `connection refused` (for its
/// hello and again for a heartbeat) and stops cleanly on Ctrl-C.
#[test]
fn chat_client_logs_refusal_and_stops_on_ctrl_c() {
    let dead = dead_addr();
    let mut client = Running::example("chat_client", &[&dead.to_string(), "--interval", "0.2"]);
    client.wait_for_count(&format!("connection refused by {dead}"), 2);
    assert_stopped_by_ctrl_c(&client.interrupt(), 1);
}

// ----- time_server and upper_server -----------------------------------------------------

/// Every datagram, the empty one included, gets the current UTC time as a ctime string,
/// sent back to its own sender.
#[test]
fn time_server_answers_any_datagram_with_the_time_now() {
    let (server, addr) = serve("time_server", &[]);
    let (a, b) = (client(), client());
    for payload in [&b""[..], b"what time is it?\n", &[0xff; 600]] {
        assert_ctime_now(&text(request(&a, addr, payload)));
    }
    a.send_to(b"a", addr).expect("send");
    b.send_to(b"b", addr).expect("send");
    for sock in [&a, &b] {
        assert_ctime_now(&text(recv_from(sock, addr)));
    }
    assert!(server.interrupt().success);
}

/// The examples' `ctime` for fixed instants, as `date -u` prints them (the day of month
/// padded with a space, leap days, a century year that is not leap), and `parse_ctime`
/// reading it back, for these and for an instant every 11.6 days up to the year 2381.
#[test]
fn examples_ctime_matches_date_for_fixed_instants() {
    let known = [
        (0, "Thu Jan  1 00:00:00 1970"),
        (951_782_400, "Tue Feb 29 00:00:00 2000"),
        (1_000_000_000, "Sun Sep  9 01:46:40 2001"),
        (1_234_567_890, "Fri Feb 13 23:31:30 2009"),
        (1_709_164_800, "Thu Feb 29 00:00:00 2024"),
        (4_107_542_400, "Mon Mar  1 00:00:00 2100"),
        (253_402_300_799, "Fri Dec 31 23:59:59 9999"),
    ];
    for (secs, text) in known {
        assert_eq!(common::ctime_of(secs), text);
        assert_eq!(parse_ctime(text), secs);
    }
    for secs in (0..13_000_000_000).step_by(1_000_003) {
        assert_eq!(parse_ctime(&common::ctime_of(secs)), secs);
    }
}

/// ASCII letters come back upper-cased; every other byte, and the empty datagram, as sent.
#[test]
fn upper_server_upper_cases_ascii_letters_only() {
    let (server, addr) = serve("upper_server", &[]);
    let c = client();
    let cases: [(&[u8], &[u8]); 4] = [
        (b"hello, World 1", b"HELLO, WORLD 1"),
        (b"", b""),
        (
            "caf\u{e9} \u{df}tra\u{df}e z".as_bytes(),
            "CAF\u{e9} \u{df}TRA\u{df}E Z".as_bytes(),
        ),
        (b"\xff\x00a\x80\n", b"\xff\x00A\x80\n"),
    ];
    for (sent, back) in cases {
        assert_eq!(request(&c, addr, sent), back, "for {sent:?}");
    }
    assert!(server.interrupt().success);
}

// ----- retry_client ---------------------------------------------------------------------

/// retry_client asks the time server, prints its answer as `answer: <ctime of now>` and
/// exits 0 by itself.
#[test]
fn retry_client_prints_the_time_servers_answer_and_exits_0() {
    let (server, addr) = serve("time_server", &[]);
    let end = Running::example("retry_client", &[&addr.to_string()]).finish();
    let lines = &end.lines;
    assert!(
        end.success,
        "retry_client exits 0 once answered; log: {lines:#?}"
    );
    let answers: Vec<&str> = lines
        .iter()
        .filter_map(|l| l.strip_prefix("answer: "))
        .collect();
    assert_eq!(answers.len(), 1, "{lines:#?}");
    assert_ctime_now(answers[0]);
    assert_lines(&end, "giving up", 0);
    assert!(server.interrupt().success);
}

/// Against a port where nothing listens, retry_client logs the refusals, sends its
/// `--tries 3` tries with the timeout doubling from `--timeout 0.05`, gives up and exits
/// with code 1.
#[test]
fn retry_client_gives_up_on_a_dead_address_with_exit_code_1() {
    let dead = dead_addr().to_string();
    let args = [dead.as_str(), "--timeout", "0.05", "--tries", "3"];
    let end = Running::example("retry_client", &args).finish();
    let lines = &end.lines;
    assert_eq!(end.code, Some(1), "{lines:#?}");
    for (n, wait) in [(1, "50 ms"), (2, "100 ms"), (3, "200 ms")] {
        assert_lines(&end, &format!("try {n} of 3 to {dead}, waiting {wait}"), 1);
    }
    assert_lines(&end, "try 4 ", 0);
    assert!(!end.lines_with("refused try").is_empty(), "{lines:#?}");
    assert_lines(
        &end,
        &format!("no answer from {dead} after 3 tries; giving up"),
        1,
    );
    assert_lines(&end, "answer: ", 0);
}

// ----- all six: Ctrl-C and bad arguments ------------------------------------------------

/// Each of the four servers, once it has answered a request, exits 0 on Ctrl-C and
/// closes its port.
#[test]
fn servers_exit_0_on_ctrl_c_and_close_their_port() {
    let servers = ["push_server", "chat_server", "time_server", "upper_server"];
    let running: Vec<(Running, SocketAddr)> = servers.iter().map(|n| serve(n, &[])).collect();
    for (server, addr) in running {
        // A client each: chat_server says `bye bye` to it on Ctrl-C.
        assert!(
            !request(&client(), addr, b"ping").is_empty(),
            "a reply from {addr}"
        );
        let opened = assert_stopped_by_ctrl_c(&server.interrupt(), 1);
        assert_eq!(opened, [addr]);
    }
}

/// Bad flag values and a bind or server address that is not an IP literal end each
/// example at once with exit code 2 and a message naming the problem.
#[test]
fn examples_reject_bad_arguments_with_code_2() {
    let dead = dead_addr().to_string();
    let mut cases: Vec<(&str, Vec<&str>, &str)> = vec![
        (
            "push_server",
            vec!["127.0.0.1:0", "--every", "0"],
            "--every",
        ),
        (
            "push_server",
            vec!["127.0.0.1:0", "--every", "abc"],
            "--every",
        ),
        (
            "push_server",
            vec!["127.0.0.1:0", "--every", "-1"],
            "--every",
        ),
        (
            "push_server",
            vec!["127.0.0.1:0", "--every", "1e-9"],
            "at least 0.01",
        ),
        (
            "push_server",
            vec!["127.0.0.1:0", "--evry", "0.2"],
            "unknown flag \"--evry\"",
        ),
        (
            "push_server",
            vec!["127.0.0.1:0", "--every"],
            "--every needs a value",
        ),
        ("echo", vec!["127.0.0.1:0", "--count", "1"], "unknown flag"),
        (
            "push_client",
            vec![&dead, "--users", "A,B,A"],
            "each name once",
        ),
        ("push_client", vec![&dead, "--pushes", "x"], "--pushes"),
        ("push_client", vec![&dead, "--pushes", "-1"], "--pushes"),
        (
            "chat_server",
            vec!["127.0.0.1:0", "--expire", "0"],
            "--expire",
        ),
        (
            "chat_client",
            vec![&dead, "--interval", "abc"],
            "--interval",
        ),
        (
            "chat_client",
            vec![&dead, "--heartbeats", "x"],
            "--heartbeats",
        ),
    ];
    for name in SIX {
        cases.push((name, vec!["localhost:9999"], "IP literal"));
    }
    let runs: Vec<_> = cases
        .into_iter()
        .map(|(name, args, says)| (name, Running::example(name, &args), args.join(" "), says))
        .collect();
    for (name, run, args, says) in runs {
        let end = run.finish();
        assert_eq!(end.code, Some(2), "{name} {args}: {:#?}", end.lines);
        assert_lines(&end, says, 1);
        assert_lines(&end, "listening on", 0);
    }
}

/// Every example, as a command-line tool: `--help` and `-h` print its usage on stdout
/// and exit 0; an argument it does not take (an unknown flag, a short flag, one
/// positional argument too many) ends it with exit code 2 and says which.
#[test]
fn every_example_has_help_and_refuses_what_it_does_not_take() {
    let all = [
        "adopt",
        "chat_client",
        "chat_server",
        "connected",
        "dns_client",
        "echo",
        "multicast",
        "push_client",
        "push_server",
        "retry_client",
        "time_server",
        "upper_server",
    ];
    for name in all {
        for help in ["--help", "-h"] {
            let out: Output = Command::new(example(name))
                .arg(help)
                .output()
                .expect("run the example");
            let stdout = String::from_utf8_lossy(&out.stdout);
            assert_eq!(out.status.code(), Some(0), "{name} {help}");
            assert!(
                stdout.starts_with(&format!("usage: {name}")),
                "{name} {help}: {stdout}"
            );
        }
        for (args, says) in [
            (
                &["--no-such-flag", "1"][..],
                "unknown flag \"--no-such-flag\"",
            ),
            (&["-x"][..], "unknown flag \"-x\""),
        ] {
            let out: Output = Command::new(example(name))
                .args(args)
                .output()
                .expect("run the example");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert_eq!(out.status.code(), Some(2), "{name} {args:?}: {stderr}");
            assert!(stderr.contains(says), "{name} {args:?}: {stderr}");
            assert!(
                stderr.contains(&format!("\nusage: {name}")),
                "{name} {args:?} shows the usage: {stderr}"
            );
        }
    }
    for name in ["echo", "connected", "push_server", "dns_client"] {
        let out: Output = Command::new(example(name))
            .args(["127.0.0.1:0", "extra"])
            .output()
            .expect("run the example");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{name}: {stderr}");
        assert!(
            stderr.contains("unexpected argument \"extra\""),
            "{name}: {stderr}"
        );
    }
}

/// chat_client's first argument is the server only if it has a colon: `hi there` are
/// two messages to the default server, and a first word with a colon that is not an
/// IP literal is still refused (in `examples_reject_bad_arguments_with_code_2`).
#[test]
fn chat_client_takes_words_without_a_colon_as_messages() {
    let run = Running::example("chat_client", &["hi", "there", "--heartbeats", "0"]);
    let end = run.finish();
    assert_eq!(end.code, Some(0), "{:#?}", end.lines);
    assert_lines(&end, "IP literal", 0);
    // The greeting and the two messages, to 127.0.0.1:9995.
    assert_lines(&end, "sent 3 (", 1);
    assert_lines(&end, "connected to 127.0.0.1:9995", 1);
}

/// `RUST_LOG` in its usual syntax: `off` silences every line, `warn,twine=trace` keeps
/// the library's trace lines and the example's warnings but not its info lines.
#[test]
fn rust_log_takes_its_usual_syntax() {
    let dead = dead_addr().to_string();
    let run = |spec: &str| {
        let out: Output = Command::new(example("connected"))
            .args([dead.as_str(), "--count", "1"])
            .env("RUST_LOG", spec)
            .output()
            .expect("run connected");
        assert_eq!(out.status.code(), Some(0), "RUST_LOG={spec}");
        String::from_utf8_lossy(&out.stderr).into_owned()
    };
    assert_eq!(run("off"), "", "RUST_LOG=off logs nothing");
    let mixed = run("warn,twine=trace");
    assert!(mixed.contains("[TRACE]"), "{mixed}");
    assert!(mixed.contains("[WARN] connection refused by"), "{mixed}");
    assert!(!mixed.contains("[INFO] connected to"), "{mixed}");
    let info = run("info");
    assert!(
        info.contains("[INFO] connected to") && !info.contains("[TRACE]"),
        "{info}"
    );
}

/// Ctrl-C at once after `listening on` still stops each server cleanly: the line is
/// logged only once `run` has taken over the signal.
#[test]
fn ctrl_c_right_after_listening_on_stops_cleanly() {
    for name in [
        "echo",
        "time_server",
        "upper_server",
        "push_server",
        "chat_server",
        "adopt",
    ] {
        for _ in 0..3 {
            let (server, _addr) = serve(name, &[]);
            assert_stopped_by_ctrl_c(&server.interrupt(), 1);
        }
    }
}

/// A name the push server refuses stops push_client instead of leaving it waiting for
/// pushes that never come.
#[test]
fn push_client_stops_when_its_name_is_refused() {
    let (server, addr) = serve("push_server", &["--every", "0.1"]);
    let long = "L".repeat(33);
    let users = format!("ok,{long}");
    let run = Running::example(
        "push_client",
        &[&addr.to_string(), "--users", &users, "--pushes", "1"],
    );
    let end = run.finish();
    assert!(end.success, "{:#?}", end.lines);
    assert_lines(&end, "the server refused the name; stopping", 1);
    assert_stopped_by_ctrl_c(&server.interrupt(), 1);
}
