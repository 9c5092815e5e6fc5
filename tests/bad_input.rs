//! The bad-input inventory: every input a caller can get wrong, each answered with a typed
//! `Error` whose `Display` names the offending value, never a panic, and the reactor (and
//! the port that was misused) still working afterwards: every group ends with a witness
//! echo. Categories: address text, `(host, port)` pairs, interfaces to listen on, address
//! families, IPv6 scopes, broadcast, connected ports, multicast, adoption, listen options,
//! datagram sizes, and handles, timers and durations.
//!
//! Each bad input is tried outside the hooks (through `Reactor::with_port`, where writes
//! are sent at once) and, where the path differs, inside `datagram_received` (where writes
//! are gathered into a batch and what only the kernel can refuse is counted instead).

mod util;

use std::cell::RefCell;
use std::fmt::Display;
use std::io::{Read, Write};
use std::net::{
    IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6, TcpListener, TcpStream,
    UdpSocket,
};
use std::os::fd::{AsFd, AsRawFd, RawFd};
use std::os::unix::net::{UnixDatagram, UnixStream};
use std::rc::Rc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, SockAddr, SockRef, Socket, Type};
use twine::{DatagramProtocol, Error, ListenOptions, ListeningPort, Reactor, UdpTransport};
use util::{
    DEADLINE, Recorder, client_on, datagrams, dead_addr, dead_addr_on, drive, drive_recv,
    fd_numbers_exclusive, fd_numbers_shared, loopback, reactor, with,
};

// ----- helpers -----------------------------------------------------------------------------

fn loopback_of(addr: SocketAddr) -> &'static str {
    if addr.is_ipv4() { "127.0.0.1" } else { "::1" }
}

/// An echoing port on `ip` (an IP literal), port 0.
fn echo_on(reactor: &mut Reactor, ip: &str) -> ListeningPort<Recorder> {
    reactor
        .listen_udp_with(ListenOptions::new(0).interface(ip), Recorder::echoing().0)
        .expect("listen an echo port")
}

/// `addr` echoes a datagram back to a fresh client, from `addr`.
#[track_caller]
fn echoes(reactor: &mut Reactor, addr: SocketAddr) {
    let c = client_on(loopback_of(addr));
    let payload = format!("witness for {addr}");
    c.send_to(payload.as_bytes(), addr).expect("witness send");
    let (reply, from) = drive_recv(reactor, &c);
    assert_eq!(
        (reply.as_slice(), from),
        (payload.as_bytes(), addr),
        "witness echo"
    );
}

/// The witness at the end of each group: the ports that were given bad input still echo,
/// and fresh ports of both families open, echo and close.
#[track_caller]
fn witness(reactor: &mut Reactor, misused: &[SocketAddr]) {
    for &addr in misused {
        echoes(reactor, addr);
    }
    let before = reactor.port_count();
    for ip in ["127.0.0.1", "::1"] {
        let fresh = echo_on(reactor, ip);
        echoes(reactor, fresh.local_addr());
        assert!(reactor.stop_listening(&fresh));
    }
    drive(reactor, "the fresh witness ports to close", |r| {
        r.port_count() == before
    });
}

/// `err`'s `Display` names `value`.
#[track_caller]
fn names(err: &Error, value: impl Display) {
    let text = err.to_string();
    let value = value.to_string();
    assert!(text.contains(&value), "`{text}` does not name `{value}`");
}

/// `result` is `InvalidAddress` for exactly `input`, and says so naming it.
#[track_caller]
fn invalid_address<T: std::fmt::Debug>(result: twine::Result<T>, input: &str) {
    let err = result.expect_err(input);
    match &err {
        Error::InvalidAddress { address, reason } => {
            assert_eq!(address, input);
            assert!(!reason.is_empty());
        }
        other => panic!("{input:?}: expected InvalidAddress, got {other:?}"),
    }
    names(&err, format!("{input:?}"));
}

/// `result` is `AddressFamilyMismatch` for `address` on `local`, naming both.
#[track_caller]
fn family_mismatch(result: twine::Result<()>, address: SocketAddr, local: SocketAddr) {
    let err = result.expect_err("other family");
    match &err {
        Error::AddressFamilyMismatch {
            address: a,
            local: l,
        } => {
            assert_eq!((*a, *l), (address, local));
        }
        other => panic!("{address}: expected AddressFamilyMismatch, got {other:?}"),
    }
    names(&err, address);
    names(&err, local);
}

/// `result` is `InvalidOption` for `option` = `value`, naming both.
#[track_caller]
fn invalid_option<T: std::fmt::Debug>(result: twine::Result<T>, option: &str, value: usize) {
    let err = result.expect_err(option);
    match &err {
        Error::InvalidOption {
            option: o,
            value: v,
            expected,
        } => {
            assert_eq!((*o, *v), (option, value));
            assert!(!expected.is_empty());
        }
        other => panic!("{option} = {value}: expected InvalidOption, got {other:?}"),
    }
    names(&err, format!("{option} = {value}"));
}

/// What a hook saw when it tried its bad inputs.
type Results = Rc<RefCell<Vec<twine::Result<()>>>>;
type Check = Box<dyn FnOnce(&mut UdpTransport<'_>, SocketAddr) -> Vec<twine::Result<()>>>;

/// Runs its check inside the first `datagram_received` (writes there are gathered into a
/// batch), keeps the results, and echoes every datagram.
struct InHook {
    check: Option<Check>,
    results: Results,
}

impl DatagramProtocol for InHook {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        if let Some(check) = self.check.take() {
            let results = check(t, from);
            self.results.borrow_mut().extend(results);
        }
        t.write(data, from).expect("echo after the check");
    }
}

/// Opens an [`InHook`] port on `ip`, sends it one datagram, waits for the echo (the check
/// has run, and the port still works); returns what the check got, and the port.
fn in_hook(
    reactor: &mut Reactor,
    ip: &str,
    check: impl FnOnce(&mut UdpTransport<'_>, SocketAddr) -> Vec<twine::Result<()>> + 'static,
) -> (Vec<twine::Result<()>>, ListeningPort<InHook>) {
    let results = Results::default();
    let port = reactor
        .listen_udp_with(
            ListenOptions::new(0).interface(ip),
            InHook {
                check: Some(Box::new(check)),
                results: results.clone(),
            },
        )
        .expect("listen the in-hook port");
    echoes(reactor, port.local_addr());
    let out = results.borrow_mut().drain(..).collect();
    (out, port)
}

// ----- addresses: text, pairs, interfaces ----------------------------------------------------

/// Text that is not `IP:PORT` or `[IPv6]:PORT` with an IP literal.
const BAD_SOCKET_ADDR_TEXT: &[&str] = &[
    // hostnames: refused, never looked up
    "localhost:9",
    "LOCALHOST:9",
    "example.com:9",
    "ip6-localhost:9",
    // empty and garbage
    "",
    " ",
    "garbage",
    "\u{0}",
    "héllo:9",
    "udp://127.0.0.1:9",
    "127.0.0.1:9/x",
    "<broadcast>:9",
    // missing or broken port
    "127.0.0.1",
    "127.0.0.1:",
    ":9",
    "127.0.0.1:abc",
    "127.0.0.1:9x",
    "127.0.0.1:+9",
    "127.0.0.1:-1",
    // port out of range
    "127.0.0.1:65536",
    "127.0.0.1:99999",
    "127.0.0.1:18446744073709551616",
    "[::1]:70000",
    // not a strict IPv4 literal
    "1.2.3.4.5:9",
    "256.0.0.1:9",
    "127.1:9",
    "0x7f.0.0.1:9",
    "127.000.000.001:9",
    // IPv6 without brackets, or broken brackets
    "::1:9",
    "::1",
    "fe80::1:9",
    "[::1]",
    "[::1]:",
    "[::1:9",
    "::1]:9",
    "[127.0.0.1]:9",
    // whitespace
    " 127.0.0.1:9",
    "127.0.0.1:9 ",
    "127.0.0.1 :9",
    // scopes: on IPv4, named in the text form, out of range
    "127.0.0.1%1:9",
    "[::1%lo]:9",
    "[::1%no-such-if0]:9",
    "[::1%4294967296]:9",
];

/// Hosts of `(host, port)` pairs that are not IP literals.
const BAD_HOSTS: &[&str] = &[
    "localhost",
    "example.com",
    "ip6-localhost",
    "",
    " ",
    "garbage",
    "*",
    "broadcast",
    "<BROADCAST>",
    "127.0.0.1:9",
    "[::1]",
    "127.1",
    "256.0.0.1",
    "1.2.3.4.5",
    "0x7f000001",
    " 127.0.0.1",
    "127.0.0.1 ",
    "127.0.0.1%1",
    "::1%",
    "::1%no-such-if0",
    "fe80::1%no-such-if0",
];

/// The reason an address text (`IP:PORT`) that does not parse as a socket address literal
/// is refused with: the literal parser's, which is all that runs on the text.
const NOT_A_SOCKET_ADDR_LITERAL: &str = "expected IP:PORT or [IPv6]:PORT with an IP literal";
/// The reason the host of a `(host, port)` pair that does not parse as an IP literal (with
/// its scope, if any) is refused with: the literal parser's.
const NOT_AN_IP_LITERAL: &str = "only IP addresses are accepted, not hostnames";

/// `result` is `InvalidAddress` for exactly `input`, refused by the literal parser with
/// `reason`: the text was never handed to a name resolver.
#[track_caller]
fn not_a_literal<T: std::fmt::Debug>(result: twine::Result<T>, input: &str, reason: &str) {
    if let Err(Error::InvalidAddress { reason: got, .. }) = &result {
        assert_eq!(
            *got, reason,
            "{input:?}: refused, but not as text that is not an IP literal"
        );
    }
    invalid_address(result, input);
}

/// Every bad address text, as `&str`, `String` and `&String`, to `write` and `connect` on
/// both families: `InvalidAddress` naming the text, nothing sent, the port unconnected.
/// No name is looked up: each text is refused by the literal parser (the error's reason
/// says so), and `localhost:9`, which a lookup would resolve to a loopback address, is
/// refused like garbage. The time the checks took is printed, not bounded.
#[test]
fn address_text_that_is_not_an_ip_literal_is_invalid_address() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let v4 = echo_on(&mut reactor, "127.0.0.1");
    let v6 = echo_on(&mut reactor, "::1");
    let began = Instant::now();
    for port in [&v4, &v6] {
        with(&mut reactor, port, |t| {
            for &text in BAD_SOCKET_ADDR_TEXT {
                let reason = NOT_A_SOCKET_ADDR_LITERAL;
                not_a_literal(t.write(b"x", text), text, reason);
                let owned = text.to_owned();
                not_a_literal(t.write(b"x", &owned), text, reason);
                not_a_literal(t.write(b"x", owned), text, reason);
                not_a_literal(t.connect(text), text, reason);
                assert_eq!(t.peer_addr(), None, "{text:?} left the port unconnected");
            }
            assert_eq!(t.stats().datagrams_sent, 0);
        });
    }
    println!(
        "{} address texts refused in {:?}",
        4 * 2 * BAD_SOCKET_ADDR_TEXT.len(),
        began.elapsed()
    );
    witness(&mut reactor, &[v4.local_addr(), v6.local_addr()]);
}

/// `(host, port)` pairs whose host is a hostname, garbage, or names a scope of no
/// interface, to `write` and `connect` on both families, outside and inside a hook:
/// `InvalidAddress` naming the host. No name is looked up: each host is refused by the
/// literal parser (the error's reason says so), and `localhost` and `ip6-localhost`, which
/// a lookup would resolve to loopback addresses, are refused like garbage. The time the
/// checks took is printed, not bounded.
#[test]
fn host_port_pairs_without_an_ip_literal_are_invalid_address() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let v4 = echo_on(&mut reactor, "127.0.0.1");
    let v6 = echo_on(&mut reactor, "::1");
    let began = Instant::now();
    for port in [&v4, &v6] {
        with(&mut reactor, port, |t| {
            for &host in BAD_HOSTS {
                not_a_literal(t.write(b"x", (host, 9)), host, NOT_AN_IP_LITERAL);
                not_a_literal(t.connect((host, 9)), host, NOT_AN_IP_LITERAL);
                assert_eq!(t.peer_addr(), None);
            }
        });
    }
    println!(
        "{} hosts refused in {:?}",
        2 * 2 * BAD_HOSTS.len(),
        began.elapsed()
    );
    let (results, hooked) = in_hook(&mut reactor, "127.0.0.1", |t, _| {
        let mut out: Vec<_> = BAD_HOSTS.iter().map(|&h| t.write(b"x", (h, 9))).collect();
        out.extend(BAD_SOCKET_ADDR_TEXT.iter().map(|&a| t.write(b"x", a)));
        out
    });
    let inputs = BAD_HOSTS.iter().map(|&h| (h, NOT_AN_IP_LITERAL)).chain(
        BAD_SOCKET_ADDR_TEXT
            .iter()
            .map(|&a| (a, NOT_A_SOCKET_ADDR_LITERAL)),
    );
    assert_eq!(results.len(), BAD_HOSTS.len() + BAD_SOCKET_ADDR_TEXT.len());
    for (result, (input, reason)) in results.into_iter().zip(inputs) {
        not_a_literal(result, input, reason);
    }
    witness(
        &mut reactor,
        &[v4.local_addr(), v6.local_addr(), hooked.local_addr()],
    );
}

/// An interface to listen on that is not an IP literal is `InvalidAddress` naming it,
/// before any socket exists; a literal the kernel cannot bind is `CannotListen` naming the
/// address.
#[test]
fn interface_that_is_not_a_bindable_ip_literal_is_refused_before_or_at_bind() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let bad_text = [
        "localhost",
        "example.com",
        "garbage",
        " ",
        "lo",
        "0",
        "*",
        "<broadcast>",
        "127.0.0.1:0",
        "[::1]",
        "[::1]:0",
        " 127.0.0.1",
        "127.1",
        "127.0.0.1%1",
        "::1%",
        "::1%no-such-if0",
        "fe80::1%no-such-if0",
    ];
    for text in bad_text {
        let got = reactor.listen_udp_with(ListenOptions::new(0).interface(text), Recorder::new().0);
        invalid_address(got, text);
    }
    assert_eq!(reactor.port_count(), 0);

    let held = UdpSocket::bind("127.0.0.1:0").expect("hold a port");
    let cannot_bind: [SocketAddr; 4] = [
        // an address of no interface here (TEST-NET-3)
        "203.0.113.9:0".parse().expect("addr"),
        // link-local without a scope, and with a scope of no interface
        "[fe80::1]:0".parse().expect("addr"),
        "[fe80::1%99999]:0".parse().expect("addr"),
        // a port already taken
        held.local_addr().expect("held addr"),
    ];
    for addr in cannot_bind {
        let err = reactor
            .listen_udp_with(ListenOptions::from(addr), Recorder::new().0)
            .expect_err("cannot bind");
        match &err {
            Error::CannotListen { addr: a, source } => {
                assert_eq!(*a, addr);
                assert!(source.raw_os_error().is_some(), "{source:?}");
            }
            other => panic!("{addr}: expected CannotListen, got {other:?}"),
        }
        names(&err, addr);
    }
    assert_eq!(reactor.port_count(), 0);
    witness(&mut reactor, &[]);
}

// ----- address families ----------------------------------------------------------------------

/// A destination of the other family, to `write` and `connect`, in every form (text, pair,
/// `SocketAddr`, `SocketAddrV4/V6`, `<broadcast>` on IPv6, an IPv4-mapped IPv6 address on
/// IPv4), outside and inside a hook: `AddressFamilyMismatch` naming it and the port.
#[test]
fn destination_of_the_other_family_is_address_family_mismatch() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let v4 = echo_on(&mut reactor, "127.0.0.1");
    let v6 = echo_on(&mut reactor, "::1");
    let (l4, l6) = (v4.local_addr(), v6.local_addr());
    let v6_dest: SocketAddr = "[::1]:9".parse().expect("addr");
    let mapped: SocketAddr = "[::ffff:127.0.0.1]:9".parse().expect("addr");
    let unspecified6: SocketAddr = "[::]:9".parse().expect("addr");
    let scoped: SocketAddr = "[fe80::1%99999]:9".parse().expect("addr");
    let v4_dest: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let bcast: SocketAddr = "255.255.255.255:9".parse().expect("addr");
    with(&mut reactor, &v4, |t| {
        family_mismatch(t.write(b"x", "[::1]:9"), v6_dest, l4);
        family_mismatch(t.write(b"x", ("::1", 9)), v6_dest, l4);
        family_mismatch(t.write(b"x", (Ipv6Addr::LOCALHOST, 9)), v6_dest, l4);
        family_mismatch(
            t.write(b"x", SocketAddrV6::new(Ipv6Addr::LOCALHOST, 9, 0, 0)),
            v6_dest,
            l4,
        );
        family_mismatch(t.write(b"x", mapped), mapped, l4);
        family_mismatch(t.write(b"x", unspecified6), unspecified6, l4);
        family_mismatch(t.write(b"x", scoped), scoped, l4);
        family_mismatch(t.write(b"", v6_dest), v6_dest, l4);
        family_mismatch(t.connect("[::1]:9"), v6_dest, l4);
        family_mismatch(t.connect(mapped), mapped, l4);
        assert_eq!(t.peer_addr(), None);
    });
    with(&mut reactor, &v6, |t| {
        family_mismatch(t.write(b"x", "127.0.0.1:9"), v4_dest, l6);
        family_mismatch(t.write(b"x", ("127.0.0.1", 9)), v4_dest, l6);
        family_mismatch(t.write(b"x", (Ipv4Addr::LOCALHOST, 9)), v4_dest, l6);
        family_mismatch(
            t.write(b"x", SocketAddrV4::new(Ipv4Addr::LOCALHOST, 9)),
            v4_dest,
            l6,
        );
        family_mismatch(t.write(b"x", ("<broadcast>", 9)), bcast, l6);
        family_mismatch(t.connect("127.0.0.1:9"), v4_dest, l6);
        family_mismatch(t.connect(("<broadcast>", 9)), bcast, l6);
        assert_eq!(t.peer_addr(), None);
    });
    assert_eq!(reactor.port_stats(&v4).expect("stats").datagrams_sent, 0);
    assert_eq!(reactor.port_stats(&v6).expect("stats").datagrams_sent, 0);

    // Inside a hook, where writes are gathered: refused at once all the same.
    let (r4, h4) = in_hook(&mut reactor, "127.0.0.1", move |t, _| {
        vec![t.write(b"x", v6_dest), t.write(b"x", mapped)]
    });
    let hl4 = h4.local_addr();
    let mut r4 = r4.into_iter();
    family_mismatch(r4.next().expect("result"), v6_dest, hl4);
    family_mismatch(r4.next().expect("result"), mapped, hl4);
    let (r6, h6) = in_hook(&mut reactor, "::1", move |t, _| {
        vec![t.write(b"x", v4_dest), t.write(b"x", ("<broadcast>", 9))]
    });
    let hl6 = h6.local_addr();
    let mut r6 = r6.into_iter();
    family_mismatch(r6.next().expect("result"), v4_dest, hl6);
    family_mismatch(r6.next().expect("result"), bcast, hl6);
    witness(&mut reactor, &[l4, l6, hl4, hl6]);
}

// ----- IPv6 scopes -----------------------------------------------------------------------------

/// A scope id of no interface: by name it is `InvalidAddress`; by number the kernel
/// refuses it, as `Send` (outside a hook; counted in `send_errors` inside one) or
/// `Connect`, naming the scoped address; the port stays unconnected.
#[test]
fn scope_of_no_interface_is_refused_typed() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let v6 = echo_on(&mut reactor, "::1");
    let scoped: SocketAddr = "[fe80::1%99999]:9".parse().expect("addr");
    with(&mut reactor, &v6, |t| {
        invalid_address(
            t.write(b"x", ("fe80::1%no-such-if0", 9)),
            "fe80::1%no-such-if0",
        );
        let err = t.write(b"x", scoped).expect_err("no interface 99999");
        assert!(
            matches!(&err, Error::Send { addr, .. } if *addr == scoped),
            "{err:?}"
        );
        names(&err, scoped);
        let err = t
            .write(b"x", ("fe80::1%99999", 9))
            .expect_err("same, as a pair");
        assert!(
            matches!(&err, Error::Send { addr, .. } if *addr == scoped),
            "{err:?}"
        );
        assert_eq!(t.stats().send_errors, 2);
        assert_eq!(t.stats().datagrams_sent, 0);
    });
    let (results, hooked) = in_hook(&mut reactor, "::1", move |t, _| vec![t.write(b"x", scoped)]);
    // Gathered: only the kernel can refuse it, so it is counted rather than returned.
    assert!(results[0].is_ok(), "{:?}", results[0]);
    assert_eq!(
        reactor.port_stats(&hooked).expect("stats").send_errors,
        1,
        "the refused gathered write is counted"
    );

    // Refused before the kernel sees it (see the test below for why).
    let throwaway = echo_on(&mut reactor, "::1");
    with(&mut reactor, &throwaway, |t| {
        let err = t.connect(scoped).expect_err("no interface 99999");
        assert!(matches!(&err, Error::InvalidAddress { .. }), "{err:?}");
        names(&err, scoped);
        assert_eq!(t.peer_addr(), None);
        assert!(matches!(t.send(b"x"), Err(Error::NotConnected)));
    });
    witness(&mut reactor, &[v6.local_addr(), hooked.local_addr()]);
}

/// `connect` promises that on error "the port stays unconnected"; a connect the kernel
/// tried to a link-local address with a scope of no interface would leave the socket
/// bound to that interface index (Linux sets `sk_bound_dev_if` before the route lookup
/// fails), so such a scope is refused before the kernel sees it, and the port works on.
#[test]
fn failed_connect_to_a_scope_of_no_interface_leaves_the_port_working() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let v6 = echo_on(&mut reactor, "::1");
    let scoped: SocketAddr = "[fe80::1%99999]:9".parse().expect("addr");
    let refused = with(&mut reactor, &v6, |t| t.connect(scoped));
    assert!(
        matches!(&refused, Err(Error::InvalidAddress { address, .. }) if address.contains("%99999")),
        "{refused:?}"
    );
    let sink = client_on("::1");
    let to = sink.local_addr().expect("sink addr");
    let after = with(&mut reactor, &v6, |t| t.write(b"after", to));
    assert!(
        after.is_ok(),
        "a write to {to} after the failed connect: {after:?}"
    );
    witness(&mut reactor, &[v6.local_addr()]);
}

// ----- broadcast -------------------------------------------------------------------------------

/// A broadcast destination (`<broadcast>`, or loopback's own 127.255.255.255) without
/// `set_broadcast_allowed(true)`: `write` is `Send` with EACCES naming it (counted in
/// `send_errors` inside a hook), `connect` is `Connect` with EACCES and leaves the port
/// unconnected. Once allowed, the same write goes out and arrives.
#[test]
fn broadcast_without_so_broadcast_is_refused_typed_until_allowed() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let v4 = echo_on(&mut reactor, "127.0.0.1");
    let listener = UdpSocket::bind("0.0.0.0:0").expect("wildcard listener");
    listener.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let listener_port = listener.local_addr().expect("listener addr").port();
    let lo_bcast = SocketAddr::from(([127, 255, 255, 255], listener_port));
    let all_bcast: SocketAddr = "255.255.255.255:9".parse().expect("addr");
    with(&mut reactor, &v4, |t| {
        assert!(!t.broadcast_allowed().expect("SO_BROADCAST"));
        for (result, addr) in [
            (t.write(b"x", lo_bcast), lo_bcast),
            (t.write(b"x", ("<broadcast>", 9)), all_bcast),
            (t.write(b"x", all_bcast), all_bcast),
        ] {
            let err = result.expect_err("broadcast not allowed");
            match &err {
                Error::Send { addr: a, source } => {
                    assert_eq!(*a, addr);
                    assert_eq!(source.raw_os_error(), Some(libc::EACCES));
                }
                other => panic!("{addr}: expected Send, got {other:?}"),
            }
            names(&err, addr);
        }
        let err = t
            .connect(lo_bcast)
            .expect_err("broadcast connect not allowed");
        match &err {
            Error::Connect { addr, source } => {
                assert_eq!(*addr, lo_bcast);
                assert_eq!(source.raw_os_error(), Some(libc::EACCES));
            }
            other => panic!("expected Connect, got {other:?}"),
        }
        names(&err, lo_bcast);
        assert_eq!(t.peer_addr(), None);
        assert_eq!(t.stats().send_errors, 3);
    });
    let (results, hooked) = in_hook(&mut reactor, "127.0.0.1", move |t, _| {
        vec![t.write(b"x", lo_bcast)]
    });
    assert!(results[0].is_ok(), "gathered: counted, not returned");
    assert_eq!(reactor.port_stats(&hooked).expect("stats").send_errors, 1);

    with(&mut reactor, &v4, |t| {
        t.set_broadcast_allowed(true).expect("allow broadcast");
        t.write(b"allowed", lo_bcast)
            .expect("broadcast once allowed");
    });
    let mut buf = [0u8; 16];
    let (n, from) = listener.recv_from(&mut buf).expect("broadcast arrives");
    assert_eq!((&buf[..n], from), (&b"allowed"[..], v4.local_addr()));
    witness(&mut reactor, &[v4.local_addr(), hooked.local_addr()]);
}

// ----- connected ports -------------------------------------------------------------------------

/// `send` without `connect` is `NotConnected`; a second `connect` (to anything, even
/// garbage) is `AlreadyConnected` naming the peer; a `write` to any other address is
/// `WrongPeer` naming both; outside and inside a hook. The peer is kept and still reached.
#[test]
fn connected_port_misuse_is_typed_and_the_peer_is_kept() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let port = echo_on(&mut reactor, "127.0.0.1");
    let local = port.local_addr();
    let peer = client_on("127.0.0.1");
    let peer_addr = peer.local_addr().expect("peer addr");
    let other = dead_addr();
    with(&mut reactor, &port, |t| {
        assert!(matches!(t.send(b"x"), Err(Error::NotConnected)));
        assert!(matches!(t.send(b""), Err(Error::NotConnected)));
        assert!(matches!(t.send(&[0; 70_000]), Err(Error::NotConnected)));
        t.connect(peer_addr).expect("first connect");
        for again in [
            t.connect(peer_addr),
            t.connect(other),
            t.connect("[::1]:9"),
            t.connect("localhost:9"),
            t.connect("garbage"),
        ] {
            let err = again.expect_err("second connect");
            assert!(
                matches!(err, Error::AlreadyConnected { peer } if peer == peer_addr),
                "{err:?}"
            );
            names(&err, peer_addr);
        }
        for (result, requested) in [
            (t.write(b"x", other), other),
            (t.write(b"x", ("127.0.0.1", other.port())), other),
            (t.write(b"", local), local),
        ] {
            let err = result.expect_err("not the peer");
            assert!(
                matches!(err, Error::WrongPeer { peer, requested: r } if peer == peer_addr && r == requested),
                "{err:?}"
            );
            names(&err, peer_addr);
            names(&err, requested);
        }
        let v6: SocketAddr = "[::1]:9".parse().expect("addr");
        family_mismatch(t.write(b"x", v6), v6, local);
        invalid_address(t.write(b"x", "localhost:9"), "localhost:9");
        assert_eq!(t.peer_addr(), Some(peer_addr));
        assert_eq!(t.stats().datagrams_sent, 0);
        t.send(b"to the peer").expect("send to the peer");
    });
    let (data, from) = drive_recv(&mut reactor, &peer);
    assert_eq!((data.as_slice(), from), (&b"to the peer"[..], local));

    // Inside a hook: the hooked port connects to the trigger's sender, then errs.
    let (results, hooked) = in_hook(&mut reactor, "127.0.0.1", move |t, from| {
        vec![
            t.connect(from),
            t.connect(from),
            t.write(b"x", other),
            t.send(&[0; 65_508]),
        ]
    });
    let mut results = results.into_iter();
    results
        .next()
        .expect("result")
        .expect("connect in the hook");
    assert!(matches!(
        results.next().expect("result"),
        Err(Error::AlreadyConnected { .. })
    ));
    assert!(matches!(
        results.next().expect("result"),
        Err(Error::WrongPeer { requested, .. }) if requested == other
    ));
    assert!(matches!(
        results.next().expect("result"),
        Err(Error::MessageTooLong {
            len: 65_508,
            max: 65_507
        })
    ));
    // Both ports are connected to their clients now: the witness comes from those.
    peer.send_to(b"again", local).expect("peer send");
    let (data, _) = drive_recv(&mut reactor, &peer);
    assert_eq!(data, b"again");
    witness(&mut reactor, &[]);
    assert!(reactor.is_listening(&hooked));
}

/// A `connect` the kernel refuses (link-local without a scope; broadcast without
/// `SO_BROADCAST`) is `Connect` naming the address, and the port stays unconnected and
/// working: it still echoes anyone, and a good `connect` still works.
#[test]
fn refused_connect_leaves_the_port_unconnected_and_working() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let v4 = echo_on(&mut reactor, "127.0.0.1");
    let v6 = echo_on(&mut reactor, "::1");
    let link_local: SocketAddr = "[fe80::1]:9".parse().expect("addr");
    let bcast: SocketAddr = "127.255.255.255:9".parse().expect("addr");
    for (port, addr) in [(&v6, link_local), (&v4, bcast)] {
        with(&mut reactor, port, |t| {
            let err = t.connect(addr).expect_err("kernel refuses");
            match &err {
                Error::Connect { addr: a, source } => {
                    assert_eq!(*a, addr);
                    assert!(source.raw_os_error().is_some());
                }
                other => panic!("{addr}: expected Connect, got {other:?}"),
            }
            names(&err, addr);
            assert_eq!(t.peer_addr(), None);
            assert!(matches!(t.send(b"x"), Err(Error::NotConnected)));
        });
    }
    witness(&mut reactor, &[v4.local_addr(), v6.local_addr()]);
    let peer = client_on("::1");
    let peer_addr = peer.local_addr().expect("peer addr");
    with(&mut reactor, &v6, |t| {
        t.connect(peer_addr)?;
        t.send(b"connected after all")
    })
    .expect("a good connect after the refused one");
    let (data, _) = drive_recv(&mut reactor, &peer);
    assert_eq!(data, b"connected after all");
}

/// Port 0 is no destination: a `write` to it is `Send` with EINVAL naming it (counted in
/// `send_errors` inside a hook), on both families.
#[test]
fn port_zero_destination_is_a_send_error() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let v4 = echo_on(&mut reactor, "127.0.0.1");
    let v6 = echo_on(&mut reactor, "::1");
    let zeros: [(&ListeningPort<Recorder>, SocketAddr); 3] = [
        (&v4, "127.0.0.1:0".parse().expect("addr")),
        (&v4, "0.0.0.0:0".parse().expect("addr")),
        (&v6, "[::1]:0".parse().expect("addr")),
    ];
    for (port, zero) in zeros {
        let err = with(&mut reactor, port, |t| t.write(b"x", zero)).expect_err("port 0");
        match &err {
            Error::Send { addr, source } => {
                assert_eq!(*addr, zero);
                assert_eq!(source.raw_os_error(), Some(libc::EINVAL));
            }
            other => panic!("{zero}: expected Send, got {other:?}"),
        }
        names(&err, zero);
    }
    let (results, hooked) = in_hook(&mut reactor, "127.0.0.1", |t, _| {
        vec![t.write(b"x", "127.0.0.1:0")]
    });
    assert!(results[0].is_ok(), "gathered: counted, not returned");
    assert_eq!(reactor.port_stats(&hooked).expect("stats").send_errors, 1);
    witness(
        &mut reactor,
        &[v4.local_addr(), v6.local_addr(), hooked.local_addr()],
    );
}

/// `connect` to port 0 should be refused as `write` to it is. The kernel accepts it but
/// leaves the socket unconnected in its own eyes (getpeername: ENOTCONN): twine records the
/// peer, `send` returns `Ok` for datagrams sent to port 0 (only refusals come back), and
/// datagrams from every port of that host are delivered, not only the "peer's".
#[test]
fn connect_to_port_zero_is_refused() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    for ip in ["127.0.0.1", "::1"] {
        let port = echo_on(&mut reactor, ip);
        let zero = SocketAddr::new(ip.parse().expect("ip"), 0);
        let got = with(&mut reactor, &port, |t| t.connect(zero));
        assert!(
            matches!(
                &got,
                Err(Error::InvalidAddress { .. } | Error::Connect { .. })
            ),
            "connect({zero}): {got:?}"
        );
        if let Err(err) = &got {
            names(err, zero);
        }
        assert_eq!(with(&mut reactor, &port, |t| t.peer_addr()), None);
    }
}

// ----- multicast ---------------------------------------------------------------------------------

/// On an IPv4 port: a unicast, broadcast or unspecified group is `NotMulticast`; an IPv6
/// group `AddressFamilyMismatch`; a group or interface that is not a literal, name or index
/// `InvalidAddress`; an interface of no device, a second join and a leave of a group never
/// joined are `Multicast` errors naming the group (and the interface).
#[test]
fn multicast_bad_groups_and_interfaces_on_an_ipv4_port() {
    const GROUP: &str = "239.201.0.1";
    const NEVER: &str = "239.201.0.2";
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let port = reactor
        .listen_udp_with(
            ListenOptions::new(0).listen_multiple(true),
            Recorder::echoing().0,
        )
        .expect("listen multicast");
    let local = port.local_addr();
    with(&mut reactor, &port, |t| {
        for unicast in ["127.0.0.1", "0.0.0.0", "255.255.255.255", "192.0.2.1"] {
            let err = t.join_group(unicast, "").expect_err("not multicast");
            assert!(
                matches!(err, Error::NotMulticast { group } if group.to_string() == unicast),
                "{err:?}"
            );
            names(&err, unicast);
            let err = t.leave_group(unicast, "").expect_err("not multicast");
            assert!(matches!(err, Error::NotMulticast { .. }), "{err:?}");
        }
        for group in ["ff02::1", "ff15::201"] {
            let probe = SocketAddr::new(group.parse().expect("group"), 0);
            family_mismatch(t.join_group(group, ""), probe, local);
            family_mismatch(t.leave_group(group, ""), probe, local);
        }
        for group in [
            "all-systems.mcast.net",
            "localhost",
            "",
            "garbage",
            "239.201.0.1:9",
            "239.201.0.1%1",
            "<broadcast>",
            "239.201.0.256",
        ] {
            invalid_address(t.join_group(group, ""), group);
            invalid_address(t.leave_group(group, ""), group);
        }
        for interface in [
            "no-such-if0",
            "localhost",
            "::1",
            "fe80::1",
            "127.0.0.1:0",
            "4294967296",
            "-1",
        ] {
            invalid_address(t.join_group(GROUP, interface), interface);
        }
        // Interfaces the kernel cannot find: an address of none, an index of none.
        for (result, interface) in [
            (t.join_group(GROUP, "203.0.113.9"), "203.0.113.9"),
            (t.join_group(GROUP, 99_999u32), "99999"),
            (t.join_group(GROUP, "99999"), "99999"),
        ] {
            let err = result.expect_err("no such interface");
            assert!(
                matches!(&err, Error::Multicast { op: "join", group, .. } if group.to_string() == GROUP),
                "{err:?}"
            );
            names(&err, GROUP);
            names(&err, interface);
        }
        t.join_group(GROUP, "127.0.0.1").expect("a good join");
        let err = t.join_group(GROUP, "127.0.0.1").expect_err("joined twice");
        assert!(
            matches!(&err, Error::Multicast { op: "join", source, .. } if source.raw_os_error() == Some(libc::EADDRINUSE)),
            "{err:?}"
        );
        names(&err, GROUP);
        let err = t.leave_group(NEVER, "127.0.0.1").expect_err("never joined");
        assert!(
            matches!(&err, Error::Multicast { op: "leave", .. }),
            "{err:?}"
        );
        names(&err, NEVER);
        names(&err, "127.0.0.1");
        t.leave_group(GROUP, "127.0.0.1").expect("a good leave");
        let err = t.leave_group(GROUP, "127.0.0.1").expect_err("left twice");
        assert!(
            matches!(&err, Error::Multicast { op: "leave", .. }),
            "{err:?}"
        );
    });
    witness(
        &mut reactor,
        &[SocketAddr::from(([127, 0, 0, 1], local.port()))],
    );
}

/// On an IPv6 port: an IPv4 group is `AddressFamilyMismatch`, a unicast one `NotMulticast`,
/// an IPv4 interface `InvalidAddress`, an interface index of no device a `Multicast`
/// error, a leave of a group never joined a `Multicast` error.
#[test]
fn multicast_bad_groups_and_interfaces_on_an_ipv6_port() {
    const NEVER: &str = "ff15::201:2";
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let port = echo_on(&mut reactor, "::1");
    let local = port.local_addr();
    with(&mut reactor, &port, |t| {
        for group in ["239.201.1.1", "224.0.0.1"] {
            let probe = SocketAddr::new(group.parse().expect("group"), 0);
            family_mismatch(t.join_group(group, ""), probe, local);
            family_mismatch(t.leave_group(group, 0u32), probe, local);
        }
        for unicast in ["::1", "::", "fe80::1", "::ffff:239.1.1.1"] {
            let err = t.join_group(unicast, "").expect_err("not multicast");
            assert!(matches!(err, Error::NotMulticast { .. }), "{err:?}");
            names(&err, unicast.parse::<IpAddr>().expect("ip"));
        }
        for interface in ["127.0.0.1", "::1", "no-such-if0"] {
            invalid_address(t.join_group("ff15::201:1", interface), interface);
        }
        let err = t
            .join_group("ff15::201:1", Ipv4Addr::LOCALHOST)
            .expect_err("IPv4 interface for an IPv6 group");
        assert!(matches!(err, Error::InvalidAddress { .. }), "{err:?}");
        names(&err, "127.0.0.1");
        invalid_address(
            t.join_group("ff15::201:1%no-such-if0", 0u32),
            "ff15::201:1%no-such-if0",
        );
        let err = t
            .join_group("ff15::201:1", 99_999u32)
            .expect_err("no interface 99999");
        assert!(
            matches!(&err, Error::Multicast { op: "join", .. }),
            "{err:?}"
        );
        names(&err, "ff15::201:1");
        names(&err, "99999");
        let err = t.leave_group(NEVER, 0u32).expect_err("never joined");
        assert!(
            matches!(&err, Error::Multicast { op: "leave", .. }),
            "{err:?}"
        );
        names(&err, NEVER);
    });
    witness(&mut reactor, &[local]);
}

/// A multicast TTL (hop limit on IPv6) past 255 is `InvalidOption` naming it, on both
/// families, and the TTL is unchanged; 0 and 255 are accepted.
#[test]
fn multicast_ttl_past_255_is_invalid_option() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let v4 = echo_on(&mut reactor, "127.0.0.1");
    let v6 = echo_on(&mut reactor, "::1");
    for port in [&v4, &v6] {
        with(&mut reactor, port, |t| {
            for bad in [256u32, 1000, u32::MAX] {
                invalid_option(t.set_ttl(bad), "multicast ttl", bad as usize);
                assert_eq!(t.ttl().expect("ttl"), 1, "unchanged");
            }
            for good in [0, 255, 1] {
                t.set_ttl(good).expect("in range");
                assert_eq!(t.ttl().expect("ttl"), good);
            }
        });
    }
    witness(&mut reactor, &[v4.local_addr(), v6.local_addr()]);
}

/// An outgoing interface the family cannot use is `InvalidAddress` naming it; one the
/// kernel refuses (an address of no interface, an index of no device) is
/// `OutgoingInterface`; the setting is unchanged either way.
#[test]
fn outgoing_interface_refusals_are_typed() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let v4 = echo_on(&mut reactor, "127.0.0.1");
    let v6 = echo_on(&mut reactor, "::1");
    with(&mut reactor, &v4, |t| {
        for interface in ["no-such-if0", "localhost", "::1", "garbage"] {
            invalid_address(t.set_outgoing_interface(interface), interface);
        }
        let err = t.set_outgoing_interface(1u32).expect_err("index on IPv4");
        assert!(matches!(err, Error::InvalidAddress { .. }), "{err:?}");
        names(&err, "#1");
        let err = t
            .set_outgoing_interface("203.0.113.9")
            .expect_err("no such interface");
        assert!(
            matches!(&err, Error::OutgoingInterface { option: "IP_MULTICAST_IF", source, .. } if source.raw_os_error() == Some(libc::EADDRNOTAVAIL)),
            "{err:?}"
        );
        assert_eq!(t.outgoing_interface().expect("read"), twine::Interface::Any);
    });
    with(&mut reactor, &v6, |t| {
        for interface in ["no-such-if0", "::1", "fe80::1"] {
            invalid_address(t.set_outgoing_interface(interface), interface);
        }
        let err = t
            .set_outgoing_interface(Ipv4Addr::LOCALHOST)
            .expect_err("IPv4 address on IPv6");
        assert!(matches!(err, Error::InvalidAddress { .. }), "{err:?}");
        names(&err, "127.0.0.1");
        let err = t.set_outgoing_interface(99_999u32).expect_err("no device");
        assert!(
            matches!(&err, Error::OutgoingInterface { source, .. } if source.raw_os_error() == Some(libc::ENODEV)),
            "{err:?}"
        );
        assert_eq!(t.outgoing_interface().expect("read"), twine::Interface::Any);
    });
    witness(&mut reactor, &[v4.local_addr(), v6.local_addr()]);
}

/// The error of a refused outgoing interface names the interface it
/// was given, and on an IPv6 port the option that was set (`IPV6_MULTICAST_IF`).
#[test]
fn outgoing_interface_refusal_names_the_interface_and_the_option() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let v4 = echo_on(&mut reactor, "127.0.0.1");
    let v6 = echo_on(&mut reactor, "::1");
    let e4 = with(&mut reactor, &v4, |t| {
        t.set_outgoing_interface("203.0.113.9")
    })
    .expect_err("no such interface");
    let e6 =
        with(&mut reactor, &v6, |t| t.set_outgoing_interface(99_999u32)).expect_err("no device");
    let (t4, t6) = (e4.to_string(), e6.to_string());
    assert!(
        t4.contains("203.0.113.9")
            && t6.contains("99999")
            && matches!(
                &e6,
                Error::OutgoingInterface {
                    option: "IPV6_MULTICAST_IF",
                    ..
                }
            ),
        "IPv4: `{t4}` should name 203.0.113.9; IPv6: `{t6}` should name 99999 and IPV6_MULTICAST_IF ({e6:?})"
    );
    witness(&mut reactor, &[v4.local_addr(), v6.local_addr()]);
}

// ----- adoption ----------------------------------------------------------------------------------

/// Whether the fd's open file description has `O_NONBLOCK` set (works on any fd).
fn is_nonblocking(fd: &impl AsFd) -> bool {
    SockRef::from(fd).nonblocking().expect("read O_NONBLOCK")
}

/// Adopting `fd` fails; the error is `BadDescriptor`, `UnsupportedSocketType`,
/// `UnsupportedAddressFamily` or `NotBound` for `fd`, as `expect` says, and names it.
#[track_caller]
fn adopt_refused(reactor: &mut Reactor, fd: RawFd, expect: impl Fn(&Error) -> bool) {
    let before = reactor.port_count();
    let err = reactor
        .adopt_datagram_port(fd, Recorder::new().0)
        .expect_err("refused");
    assert!(expect(&err), "fd {fd}: unexpected {err:?}");
    let fd_of_err = match &err {
        Error::BadDescriptor { fd, .. }
        | Error::UnsupportedSocketType { fd, .. }
        | Error::UnsupportedAddressFamily { fd, .. }
        | Error::NotBound { fd } => *fd,
        other => panic!("fd {fd}: not an adoption error: {other:?}"),
    };
    assert_eq!(fd_of_err, fd);
    names(&err, format!("fd {fd}"));
    assert_eq!(reactor.port_count(), before, "no port was opened");
}

fn bad_descriptor(errno: i32) -> impl Fn(&Error) -> bool {
    move |e| matches!(e, Error::BadDescriptor { source, .. } if source.raw_os_error() == Some(errno))
}

/// A number that is no open fd (one just closed, negative ones, one past any limit) is
/// `BadDescriptor` with EBADF naming it.
#[test]
fn adopting_what_is_no_open_fd_is_bad_descriptor() {
    let _fds = fd_numbers_exclusive();
    // The reactor first: its own fds must not take the number closed below.
    let mut reactor = reactor();
    let closed: RawFd = UdpSocket::bind("127.0.0.1:0").expect("bind").as_raw_fd();
    for fd in [closed, -1, -2, RawFd::MIN, 1 << 24, RawFd::MAX] {
        let err = reactor
            .adopt_datagram_port(fd, Recorder::new().0)
            .expect_err("no such fd");
        match &err {
            Error::BadDescriptor { fd: got, source } => {
                assert_eq!(*got, fd);
                assert_eq!(source.raw_os_error(), Some(libc::EBADF));
            }
            other => panic!("fd {fd}: expected BadDescriptor, got {other:?}"),
        }
        names(&err, format!("fd {fd}"));
        let err = reactor
            .adopt_with(fd, ListenOptions::new(0), Recorder::new().0)
            .expect_err("no such fd");
        assert!(matches!(err, Error::BadDescriptor { .. }), "{err:?}");
    }
    assert_eq!(reactor.port_count(), 0);
    drop(_fds);
    witness(&mut reactor, &[]);
}

/// An fd that is no socket (a file, /dev/null, both ends of a pipe) is `BadDescriptor`
/// with ENOTSOCK; it stays the caller's, open, in its mode, and usable.
#[test]
fn adopting_a_non_socket_is_bad_descriptor_and_leaves_it_usable() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let mut file = std::fs::File::open(path).expect("open Cargo.toml");
    let mut null = std::fs::OpenOptions::new()
        .write(true)
        .open("/dev/null")
        .expect("open /dev/null");
    let (mut reader, mut writer) = std::io::pipe().expect("pipe");
    for fd in [
        file.as_raw_fd(),
        null.as_raw_fd(),
        reader.as_raw_fd(),
        writer.as_raw_fd(),
    ] {
        adopt_refused(&mut reactor, fd, bad_descriptor(libc::ENOTSOCK));
    }
    assert!(!is_nonblocking(&file) && !is_nonblocking(&reader) && !is_nonblocking(&writer));
    let mut text = String::new();
    file.read_to_string(&mut text).expect("file still readable");
    assert!(text.contains("name = \"twine\""));
    null.write_all(b"x").expect("/dev/null still writable");
    writer.write_all(b"pipe ok").expect("pipe still writable");
    drop(writer);
    let mut got = String::new();
    reader
        .read_to_string(&mut got)
        .expect("pipe still readable");
    assert_eq!(got, "pipe ok");
    witness(&mut reactor, &[]);
}

/// A stream socket of an IP family (TCP listeners on both families, both ends of a
/// connection, an unbound TCP socket) is `UnsupportedSocketType` (SOCK_STREAM); each is
/// left blocking and working.
#[test]
fn adopting_a_stream_socket_is_unsupported_socket_type_and_leaves_it_usable() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let l4 = TcpListener::bind("127.0.0.1:0").expect("tcp listen v4");
    let l6 = TcpListener::bind("[::1]:0").expect("tcp listen v6");
    let mut client = TcpStream::connect(l4.local_addr().expect("addr")).expect("connect");
    let (mut server, _) = l4.accept().expect("accept");
    let unbound = Socket::new(Domain::IPV4, Type::STREAM, None).expect("tcp socket");
    let is_stream = |e: &Error| {
        let stream = libc::SOCK_STREAM;
        matches!(e, Error::UnsupportedSocketType { socket_type, .. } if *socket_type == stream)
    };
    for fd in [
        l4.as_raw_fd(),
        l6.as_raw_fd(),
        client.as_raw_fd(),
        server.as_raw_fd(),
        unbound.as_raw_fd(),
    ] {
        adopt_refused(&mut reactor, fd, is_stream);
    }
    let err = reactor
        .adopt_socket(&l6, Recorder::new().0)
        .expect_err("by reference too");
    assert!(is_stream(&err), "{err:?}");
    for s in [l4.as_fd(), l6.as_fd(), client.as_fd(), server.as_fd()] {
        assert!(!is_nonblocking(&s), "left blocking");
    }
    client.write_all(b"tcp ok").expect("stream still writable");
    let mut buf = [0u8; 6];
    server.read_exact(&mut buf).expect("stream still readable");
    assert_eq!(&buf, b"tcp ok");
    let _second = TcpStream::connect(l6.local_addr().expect("addr")).expect("connect v6");
    l6.accept().expect("the v6 listener still accepts");
    witness(&mut reactor, &[]);
}

/// A socket of no IP family (Unix datagram bound and unbound, Unix stream and seqpacket,
/// netlink) is `UnsupportedAddressFamily` naming its family; the Unix pair still talks.
#[test]
fn adopting_a_non_ip_socket_is_unsupported_address_family() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let dir = std::env::temp_dir().join(format!("twine-bad-input-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("dgram.sock");
    let _ = std::fs::remove_file(&path);
    let bound = UnixDatagram::bind(&path).expect("bind unix datagram");
    let unbound = UnixDatagram::unbound().expect("unbound unix datagram");
    let (mut s1, mut s2) = UnixStream::pair().expect("unix stream pair");
    let (q1, _q2) = Socket::pair(Domain::UNIX, Type::SEQPACKET, None).expect("seqpacket pair");
    let netlink = Socket::new(
        Domain::from(libc::AF_NETLINK),
        Type::DGRAM,
        Some(Protocol::from(libc::NETLINK_ROUTE)),
    )
    .expect("netlink socket");
    let cases = [
        (bound.as_raw_fd(), libc::AF_UNIX),
        (unbound.as_raw_fd(), libc::AF_UNIX),
        (s1.as_raw_fd(), libc::AF_UNIX),
        (q1.as_raw_fd(), libc::AF_UNIX),
        (netlink.as_raw_fd(), libc::AF_NETLINK),
    ];
    for (fd, family) in cases {
        let before = reactor.port_count();
        let err = reactor
            .adopt_datagram_port(fd, Recorder::new().0)
            .expect_err("not IP");
        match &err {
            Error::UnsupportedAddressFamily { fd: got, family: f } => {
                assert_eq!((*got, *f), (fd, family));
            }
            other => panic!("fd {fd}: expected UnsupportedAddressFamily, got {other:?}"),
        }
        names(&err, format!("fd {fd}"));
        names(&err, family);
        assert_eq!(reactor.port_count(), before);
    }
    assert!(!is_nonblocking(&bound) && !is_nonblocking(&s1));
    unbound.send_to(b"unix ok", &path).expect("unix send");
    bound.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = [0u8; 16];
    let n = bound.recv(&mut buf).expect("unix recv");
    assert_eq!(&buf[..n], b"unix ok");
    s1.write_all(b"s").expect("stream write");
    s2.read_exact(&mut buf[..1]).expect("stream read");
    drop(bound);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
    witness(&mut reactor, &[]);
}

/// An unbound UDP socket of either family is `NotBound` naming it, by fd and by
/// reference, and left blocking; once bound it is adopted.
#[test]
fn adopting_an_unbound_udp_socket_is_not_bound() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    for (domain, at) in [(Domain::IPV4, "127.0.0.1:0"), (Domain::IPV6, "[::1]:0")] {
        let sock = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).expect("udp socket");
        adopt_refused(&mut reactor, sock.as_raw_fd(), |e| {
            matches!(e, Error::NotBound { .. })
        });
        let err = reactor
            .adopt_socket(&sock, Recorder::new().0)
            .expect_err("unbound");
        assert!(matches!(err, Error::NotBound { .. }), "{err:?}");
        assert!(!is_nonblocking(&sock));
        let at: SocketAddr = at.parse().expect("addr");
        sock.bind(&SockAddr::from(at)).expect("bind afterwards");
        let port = reactor
            .adopt_socket(&sock, Recorder::echoing().0)
            .expect("adopt once bound");
        echoes(&mut reactor, port.local_addr());
    }
    witness(&mut reactor, &[]);
}

/// `adopt_with` options out of range are `InvalidOption`, checked before the fd is looked
/// at or changed: even a bad fd reports the option, and a good one is left blocking.
#[test]
fn adopt_with_bad_options_is_invalid_option_and_leaves_the_fd_untouched() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    for (opts, option, value) in bad_options() {
        invalid_option(
            reactor.adopt_with(sock.as_raw_fd(), opts.clone(), Recorder::new().0),
            option,
            value,
        );
        invalid_option(
            reactor.adopt_with(-1, opts, Recorder::new().0),
            option,
            value,
        );
    }
    assert!(!is_nonblocking(&sock), "left blocking");
    assert_eq!(reactor.port_count(), 0);
    let port = reactor
        .adopt_socket(&sock, Recorder::echoing().0)
        .expect("adopt with good options");
    witness(&mut reactor, &[port.local_addr()]);
}

/// An adopted IPv6 socket refuses IPv4 destinations (and the other way round), as a
/// listened port does: what family the port is comes from the socket.
#[test]
fn adopted_socket_refuses_destinations_of_the_other_family() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let s6 = UdpSocket::bind("[::1]:0").expect("bind v6");
    let s4 = UdpSocket::bind("127.0.0.1:0").expect("bind v4");
    let p6 = reactor
        .adopt_socket(&s6, Recorder::echoing().0)
        .expect("adopt v6");
    let p4 = reactor
        .adopt_socket(&s4, Recorder::echoing().0)
        .expect("adopt v4");
    let to4: SocketAddr = "127.0.0.1:9".parse().expect("addr");
    let to6: SocketAddr = "[::1]:9".parse().expect("addr");
    let l6 = p6.local_addr();
    let l4 = p4.local_addr();
    family_mismatch(with(&mut reactor, &p6, |t| t.write(b"x", to4)), to4, l6);
    family_mismatch(with(&mut reactor, &p6, |t| t.connect(to4)), to4, l6);
    family_mismatch(with(&mut reactor, &p4, |t| t.write(b"x", to6)), to6, l4);
    witness(&mut reactor, &[l6, l4]);
}

// ----- listen options ----------------------------------------------------------------------------

/// Every out-of-range option: `(options, option name, value)`.
fn bad_options() -> Vec<(ListenOptions, &'static str, usize)> {
    let base = loopback;
    vec![
        (base().max_packet_size(0), "max_packet_size", 0),
        (base().max_packet_size(65_536), "max_packet_size", 65_536),
        (base().max_packet_size(1 << 20), "max_packet_size", 1 << 20),
        (
            base().max_packet_size(usize::MAX),
            "max_packet_size",
            usize::MAX,
        ),
        (base().batch_size(0), "batch_size", 0),
        (base().batch_size(1025), "batch_size", 1025),
        (base().batch_size(usize::MAX), "batch_size", usize::MAX),
        (base().read_budget(0, 1), "read_budget datagrams", 0),
        (base().read_budget(1, 0), "read_budget bytes", 0),
        (base().read_budget(0, 0), "read_budget datagrams", 0),
    ]
}

/// `listen_udp_with` options out of range are `InvalidOption` naming the option and the
/// value, before any socket exists (even with a bad interface too); the edges are accepted.
#[test]
fn listen_options_out_of_range_are_invalid_option() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    for (opts, option, value) in bad_options() {
        invalid_option(
            reactor.listen_udp_with(opts.clone(), Recorder::new().0),
            option,
            value,
        );
        invalid_option(
            reactor.listen_udp_with(opts.interface("localhost"), Recorder::new().0),
            option,
            value,
        );
    }
    assert_eq!(reactor.port_count(), 0);
    // (max_packet_size(1) is accepted too: its own test below; it cannot echo a witness.)
    reactor
        .listen_udp_with(loopback().max_packet_size(1), Recorder::new().0)
        .expect("max_packet_size 1 accepted");
    let mut edges = Vec::new();
    for opts in [
        ListenOptions::new(0).max_packet_size(65_535),
        ListenOptions::new(0).batch_size(1),
        ListenOptions::new(0).batch_size(1024),
        ListenOptions::new(0).read_budget(1, 1),
        ListenOptions::new(0).read_budget(usize::MAX, usize::MAX),
    ] {
        let port = reactor
            .listen_udp_with(opts.interface("127.0.0.1"), Recorder::echoing().0)
            .expect("edge accepted");
        edges.push(port.local_addr());
    }
    witness(&mut reactor, &edges);
}

/// A send queue limit of 0 and kernel buffer sizes of 0, 1 and `usize::MAX` are accepted
/// (the kernel clamps them), and the port works.
#[test]
fn zero_and_extreme_queue_and_buffer_sizes_are_accepted_and_work() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let mut ports = Vec::new();
    for opts in [
        ListenOptions::new(0).send_queue_limit(0),
        ListenOptions::new(0).send_queue_limit(usize::MAX),
        ListenOptions::new(0)
            .recv_buffer_size(0)
            .send_buffer_size(0),
        ListenOptions::new(0)
            .recv_buffer_size(1)
            .send_buffer_size(1),
        ListenOptions::new(0)
            .recv_buffer_size(usize::MAX)
            .send_buffer_size(usize::MAX),
    ] {
        for (ip, max) in [("127.0.0.1", 65_507), ("::1", 65_527)] {
            let port = reactor
                .listen_udp_with(opts.clone().interface(ip), Recorder::echoing().0)
                .expect("accepted");
            // The family's largest datagram goes out whole or is a typed `Send` error
            // (a tiny IPv6 send buffer cannot hold its fragments: ENOBUFS); a 1000-byte
            // one goes out.
            let sink = client_on(ip);
            let to = sink.local_addr().expect("sink addr");
            match with(&mut reactor, &port, |t| t.write(&payload(max), to)) {
                Ok(()) => {
                    let (got, _) = drive_recv(&mut reactor, &sink);
                    assert_eq!(got, payload(max), "{opts:?}");
                }
                Err(Error::Send { addr, .. }) => assert_eq!(addr, to),
                Err(other) => panic!("{opts:?}: largest write: {other:?}"),
            }
            with(&mut reactor, &port, |t| t.write(&payload(1000), to)).expect("1000 bytes");
            let (got, _) = drive_recv(&mut reactor, &sink);
            assert_eq!(got, payload(1000), "{opts:?}");
            ports.push(port.local_addr());
        }
    }
    witness(&mut reactor, &ports);
}

/// A huge buffer size must give a big buffer (the kernel's cap), never a tiny one: 4 GiB
/// is cut to a C `int` (0) and the kernel then gives its minimum (2304 bytes here), too
/// small for one 8 KiB datagram.
#[test]
fn huge_buffer_sizes_are_capped_not_wrapped() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let default_rcv = SockRef::from(&sock).recv_buffer_size().expect("SO_RCVBUF");
    let default_snd = SockRef::from(&sock).send_buffer_size().expect("SO_SNDBUF");
    let port = reactor
        .adopt_with(
            sock.as_raw_fd(),
            ListenOptions::new(0)
                .recv_buffer_size(1 << 32)
                .send_buffer_size(1 << 32),
            Recorder::echoing().0,
        )
        .expect("adopt with huge buffers");
    let rcv = SockRef::from(&sock).recv_buffer_size().expect("SO_RCVBUF");
    let snd = SockRef::from(&sock).send_buffer_size().expect("SO_SNDBUF");
    assert!(
        rcv >= default_rcv && snd >= default_snd,
        "4 GiB asked, got SO_RCVBUF {rcv} (default {default_rcv}), SO_SNDBUF {snd} (default {default_snd})"
    );
    witness(&mut reactor, &[port.local_addr()]);
}

// ----- datagram sizes ----------------------------------------------------------------------------

/// A payload of `len` bytes that shows where a cut would be.
fn payload(len: usize) -> Vec<u8> {
    (0..len).map(|i| (i % 251) as u8).collect()
}

/// With the default max packet size (8192): datagrams of 0, 1, 8191 and 8192 bytes arrive
/// whole; 8193 and 65507 (IPv4) or 65527 (IPv6) are dropped and counted in `truncated`,
/// never delivered cut short; a marker after them still arrives.
#[test]
fn received_datagrams_past_max_packet_size_are_dropped_and_counted() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    for (ip, udp_max) in [("127.0.0.1", 65_507usize), ("::1", 65_527)] {
        let (rec, events) = Recorder::new();
        let port = reactor
            // A roomy kernel buffer: every datagram is sent before the reactor reads.
            .listen_udp_with(
                ListenOptions::new(0)
                    .interface(ip)
                    .recv_buffer_size(1 << 20),
                rec,
            )
            .expect("listen");
        assert_eq!(
            with(&mut reactor, &port, |t| t.max_packet_size()),
            twine::DEFAULT_MAX_PACKET_SIZE
        );
        let c = client_on(ip);
        let sizes = [0, 1, 8191, 8192, 8193, udp_max, 9000, 0];
        for len in sizes {
            c.send_to(&payload(len), port.local_addr()).expect("send");
        }
        c.send_to(b"marker", port.local_addr()).expect("marker");
        drive(&mut reactor, "the marker", |_| {
            datagrams(&events)
                .last()
                .is_some_and(|(d, _)| d == b"marker")
        });
        let got: Vec<usize> = datagrams(&events).iter().map(|(d, _)| d.len()).collect();
        assert_eq!(
            got,
            vec![0, 1, 8191, 8192, 0, 6],
            "{ip}: delivered whole or not at all"
        );
        for (d, _) in datagrams(&events) {
            if d != b"marker" {
                assert_eq!(d, payload(d.len()));
            }
        }
        let stats = reactor.port_stats(&port).expect("stats");
        assert_eq!(stats.truncated, 3, "{ip}");
        assert_eq!(stats.datagrams_received, 6);
        assert_eq!(stats.bytes_received, (8191 + 8192 + 1 + 6) as u64);
        reactor.stop_listening(&port);
    }
    witness(&mut reactor, &[]);
}

/// `max_packet_size(1)`: an empty and a 1-byte datagram arrive, 2 bytes is truncated.
#[test]
fn max_packet_size_one_takes_empty_and_one_byte_datagrams_only() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let (rec, events) = Recorder::echoing();
    let port = reactor
        .listen_udp_with(loopback().max_packet_size(1), rec)
        .expect("listen");
    let c = client_on("127.0.0.1");
    for d in [&b""[..], b"a", b"ab", b"z"] {
        c.send_to(d, port.local_addr()).expect("send");
    }
    drive(&mut reactor, "three datagrams", |_| {
        datagrams(&events).len() == 3
    });
    let got: Vec<Vec<u8>> = datagrams(&events).into_iter().map(|(d, _)| d).collect();
    assert_eq!(got, vec![b"".to_vec(), b"a".to_vec(), b"z".to_vec()]);
    assert_eq!(reactor.port_stats(&port).expect("stats").truncated, 1);
    for expected in [&b""[..], b"a", b"z"] {
        let (echo, _) = drive_recv(&mut reactor, &c);
        assert_eq!(echo, expected);
    }
    let other = echo_on(&mut reactor, "127.0.0.1");
    witness(&mut reactor, &[other.local_addr()]);
}

/// The largest datagram of each family (65507 bytes on IPv4, 65527 on IPv6) with
/// `max_packet_size(65535)`: received whole from a std client, written by twine outside a
/// hook and echoed inside one, each arriving whole.
#[test]
fn largest_datagrams_of_each_family_travel_whole() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    for (ip, max) in [("127.0.0.1", 65_507usize), ("::1", 65_527)] {
        let (rec, events) = Recorder::echoing();
        let big = reactor
            .listen_udp_with(
                ListenOptions::new(0).interface(ip).max_packet_size(65_535),
                rec,
            )
            .expect("listen big");
        let data = payload(max);
        let c = client_on(ip);
        c.send_to(&data, big.local_addr()).expect("client send");
        let (echo, from) = drive_recv(&mut reactor, &c);
        assert_eq!(
            (echo.len(), from),
            (max, big.local_addr()),
            "{ip}: echoed whole"
        );
        assert_eq!(echo, data);
        assert_eq!(datagrams(&events)[0].0, data, "{ip}: received whole");

        let sink = client_on(ip);
        let to = sink.local_addr().expect("sink addr");
        with(&mut reactor, &big, |t| t.write(&data, to)).expect("largest write");
        let (got, _) = drive_recv(&mut reactor, &sink);
        assert_eq!(got, data, "{ip}: written whole");
        let stats = reactor.port_stats(&big).expect("stats");
        assert_eq!((stats.truncated, stats.datagrams_sent), (0, 2));
    }
    witness(&mut reactor, &[]);
}

/// One byte past the family's UDP maximum, and far past it, is `MessageTooLong` naming
/// the length and the maximum, outside and inside a hook, whatever the max packet size;
/// nothing is sent.
#[test]
fn writes_past_the_udp_maximum_are_message_too_long() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    for (ip, max) in [("127.0.0.1", 65_507usize), ("::1", 65_527)] {
        let port = reactor
            .listen_udp_with(
                ListenOptions::new(0).interface(ip).max_packet_size(65_535),
                Recorder::echoing().0,
            )
            .expect("listen");
        let to = dead_addr_on(ip);
        let lens = [max + 1, 65_535, 65_536, 1 << 20];
        with(&mut reactor, &port, |t| {
            for len in lens {
                let err = t.write(&vec![0; len], to).expect_err("too long");
                assert!(
                    matches!(err, Error::MessageTooLong { len: l, max: m } if (l, m) == (len, max)),
                    "{ip} {len}: {err:?}"
                );
                names(&err, len);
                names(&err, max);
            }
            assert_eq!(t.stats().datagrams_sent, 0);
            assert_eq!(t.stats().send_errors, 0);
        });
        let (results, hooked) = in_hook(&mut reactor, ip, move |t, from| {
            lens.iter()
                .map(|&len| t.write(&vec![0; len], from))
                .collect()
        });
        for (result, len) in results.into_iter().zip(lens) {
            assert!(
                matches!(result, Err(Error::MessageTooLong { len: l, max: m }) if (l, m) == (len, max)),
                "in a hook, {ip} {len}: {result:?}"
            );
        }
        assert_eq!(
            reactor.port_stats(&hooked).expect("stats").datagrams_sent,
            1,
            "only the echo"
        );
        witness(&mut reactor, &[port.local_addr(), hooked.local_addr()]);
    }
}

/// An empty datagram is a datagram: written outside a hook, and three in a row inside one
/// (a run of one length, which segmentation must not choke on), each arrives empty.
#[test]
fn empty_datagrams_are_written_and_arrive_empty() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    for ip in ["127.0.0.1", "::1"] {
        let port = echo_on(&mut reactor, ip);
        let sink = client_on(ip);
        let to = sink.local_addr().expect("sink addr");
        with(&mut reactor, &port, |t| t.write(b"", to)).expect("empty write");
        let (got, from) = drive_recv(&mut reactor, &sink);
        assert_eq!((got.len(), from), (0, port.local_addr()));

        let sink2 = client_on(ip);
        let to2 = sink2.local_addr().expect("sink addr");
        let (results, hooked) = in_hook(&mut reactor, ip, move |t, _| {
            (0..3).map(|_| t.write(b"", to2)).collect()
        });
        assert!(results.iter().all(Result::is_ok), "{results:?}");
        for _ in 0..3 {
            let (got, from) = drive_recv(&mut reactor, &sink2);
            assert_eq!((got.len(), from), (0, hooked.local_addr()));
        }
        let echo_len = format!("witness for {}", hooked.local_addr()).len() as u64;
        let stats = reactor.port_stats(&hooked).expect("stats");
        assert_eq!(
            (stats.datagrams_sent, stats.bytes_sent, stats.send_errors),
            (4, echo_len, 0),
            "three empty datagrams and the echo"
        );
        witness(&mut reactor, &[port.local_addr(), hooked.local_addr()]);
    }
}

// ----- handles, timers, durations ----------------------------------------------------------------

struct Other;

/// A stale port handle is `PortClosed` (with_port, call_later_on, call_every_on) and
/// `stop_listening` says false; a port timer for another protocol type is
/// `ProtocolMismatch` naming both types; a handle of a dropped reactor is `ReactorGone`.
#[test]
fn stale_handles_and_wrong_timer_types_are_typed() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let gone = echo_on(&mut reactor, "127.0.0.1");
    assert!(reactor.stop_listening(&gone));
    assert!(!reactor.stop_listening(&gone), "second stop");
    assert!(matches!(
        reactor.call_later_on(&gone, Duration::ZERO, |_, _| {}),
        Err(Error::PortClosed)
    ));
    assert!(matches!(
        reactor.call_every_on(&gone, Duration::from_millis(1), |_, _| {}),
        Err(Error::PortClosed)
    ));
    drive(&mut reactor, "the port to close", |r| r.port_count() == 0);
    assert!(matches!(
        reactor.with_port(&gone, |_, _| ()),
        Err(Error::PortClosed)
    ));
    assert_eq!(reactor.port_stats(&gone), None);
    let live = echo_on(&mut reactor, "127.0.0.1");
    with(&mut reactor, &live, |t| {
        for err in [
            t.call_later(Duration::ZERO, |_: &mut Other, _| {})
                .map(|_| ()),
            t.call_every(Duration::from_secs(1), |_: &mut Other, _| {})
                .map(|_| ()),
        ] {
            let err = err.expect_err("another protocol type");
            assert!(
                matches!(
                    err,
                    Error::ProtocolMismatch {
                        port: "Recorder",
                        requested: "Other"
                    }
                ),
                "{err:?}"
            );
            names(&err, "Recorder");
            names(&err, "Other");
        }
    });
    let handle = {
        let doomed = Reactor::new().expect("new reactor");
        doomed.handle()
    };
    assert!(!handle.is_alive());
    assert!(matches!(
        handle.call_from_thread(|_| {}),
        Err(Error::ReactorGone)
    ));
    assert!(matches!(handle.stop(), Err(Error::ReactorGone)));
    witness(&mut reactor, &[live.local_addr()]);
}

/// Extreme durations never panic or hang: a call `Duration::MAX` away stays pending (and
/// `reset` to it), `iterate(Duration::MAX)` returns once a near timer fires, and a zero
/// repeat interval fires once a turn without starving the ports.
#[test]
fn extreme_durations_neither_panic_nor_hang() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let port = echo_on(&mut reactor, "127.0.0.1");
    let far = reactor.call_later(Duration::MAX, |_| panic!("fired"));
    let near = reactor.call_later(Duration::from_millis(1), |_| {});
    assert!(reactor.reset(near, Duration::MAX));
    assert!(reactor.reset(near, Duration::from_millis(1)));
    reactor.iterate(Duration::MAX).expect("iterate");
    drive(&mut reactor, "the near call", |r| !r.is_pending(near));
    assert!(reactor.is_pending(far));
    let far_port = reactor
        .call_later_on(&port, Duration::MAX, |_, _| panic!("fired"))
        .expect("far port call");
    let ticks = Rc::new(RefCell::new(0u32));
    let counter = ticks.clone();
    let busy = reactor.call_every(Duration::ZERO, move |_| *counter.borrow_mut() += 1);
    drive(&mut reactor, "three zero-interval ticks", |_| {
        *ticks.borrow() >= 3
    });
    echoes(&mut reactor, port.local_addr());
    assert!(reactor.cancel(busy));
    assert!(reactor.cancel(far) && reactor.cancel(far_port));
    witness(&mut reactor, &[port.local_addr()]);
}

/// `run_until(Duration::MAX, ..)` (no deadline) must not panic: `Instant::now() +
/// Duration::MAX` overflows.
#[test]
fn run_until_without_a_real_deadline_does_not_panic() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let done = reactor
        .run_until(Duration::MAX, |_| true)
        .expect("run_until");
    assert!(done);
}
