mod util;

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::rc::Rc;

use twine::{
    DatagramProtocol, Error, ListenOptions, ListeningPort, PortStats, Reactor, UdpTransport,
    from_fn,
};
use util::{
    Event, Recorder, client, client_on, datagrams, drive, drive_recv, init_logging,
    listen_loopback, logs_about, loopback, reactor,
};

// ----- helpers -----------------------------------------------------------------------------

/// Sends `payload` from `client` to `to` and turns the reactor until the reply arrives.
#[track_caller]
fn round_trip(
    reactor: &mut Reactor,
    client: &UdpSocket,
    to: SocketAddr,
    payload: &[u8],
) -> (Vec<u8>, SocketAddr) {
    client.send_to(payload, to).expect("client send");
    drive_recv(reactor, client)
}

/// The counters of a port, read from outside its callbacks.
#[track_caller]
fn stats<P>(reactor: &Reactor, port: &ListeningPort<P>) -> PortStats {
    reactor.port_stats(port).expect("port is open")
}

/// Captured lines naming `addr` at INFO, WARN or ERROR.
fn loud_logs_about(addr: SocketAddr) -> Vec<String> {
    logs_about(addr)
        .into_iter()
        .filter(|l| l.starts_with("INFO ") || l.starts_with("WARN ") || l.starts_with("ERROR "))
        .collect()
}

fn loopback_addr(port: u16) -> SocketAddr {
    SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port)
}

/// Stops a port from outside and turns the reactor until `stop_protocol` has run.
#[track_caller]
fn stop_and_wait(reactor: &mut Reactor, port: &ListeningPort<Recorder>, events: &util::Events) {
    assert!(reactor.stop_listening(port), "port was listening");
    drive(reactor, "stop_protocol", |_| {
        events.borrow().last() == Some(&Event::Stop)
    });
}

// ----- 1. protocols ------------------------------------------------------------------------

/// A type implementing only `datagram_received` is a complete protocol: it gets datagrams and
/// can answer through its transport.
#[test]
fn struct_with_only_datagram_received_serves_datagrams() {
    struct Upper {
        seen: Rc<RefCell<Vec<Vec<u8>>>>,
    }
    impl DatagramProtocol for Upper {
        fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
            self.seen.borrow_mut().push(data.to_vec());
            t.write(&data.to_ascii_uppercase(), from)
                .expect("reply write");
        }
    }

    let mut reactor = reactor();
    let seen = Rc::default();
    let port = listen_loopback(
        &mut reactor,
        Upper {
            seen: Rc::clone(&seen),
        },
    );
    let c = client();
    let (reply, from) = round_trip(&mut reactor, &c, port.local_addr(), b"ping");
    assert_eq!(reply, b"PING");
    assert_eq!(from, port.local_addr());
    assert_eq!(*seen.borrow(), vec![b"ping".to_vec()]);
}

/// `twine::from_fn` turns a closure with inferred argument types into a protocol.
#[test]
fn closure_wrapped_in_from_fn_serves_datagrams() {
    let mut reactor = reactor();
    let seen = Rc::new(RefCell::new(Vec::<(Vec<u8>, SocketAddr)>::new()));
    let log = Rc::clone(&seen);
    let port = listen_loopback(
        &mut reactor,
        from_fn(move |t, data, from| {
            log.borrow_mut().push((data.to_vec(), from));
            t.write(data, from).expect("echo write");
        }),
    );
    let c = client();
    let (reply, from) = round_trip(&mut reactor, &c, port.local_addr(), b"from_fn");
    assert_eq!(reply, b"from_fn");
    assert_eq!(from, port.local_addr());
    assert_eq!(
        *seen.borrow(),
        vec![(b"from_fn".to_vec(), c.local_addr().expect("client addr"))]
    );
}

/// A closure with its argument types written out can be passed directly as the protocol.
#[test]
fn closure_passed_directly_to_listen_udp_serves_datagrams() {
    let mut reactor = reactor();
    let count = Rc::new(RefCell::new(0usize));
    let counter = Rc::clone(&count);
    let port = reactor
        .listen_udp(
            0,
            move |t: &mut UdpTransport<'_>, d: &[u8], a: SocketAddr| {
                *counter.borrow_mut() += 1;
                t.write(d, a).expect("echo write");
            },
        )
        .expect("listen_udp with a closure");
    let c = client();
    let (reply, _) = round_trip(
        &mut reactor,
        &c,
        loopback_addr(port.local_addr().port()),
        b"direct",
    );
    assert_eq!(reply, b"direct");
    assert_eq!(*count.borrow(), 1);
}

// ----- 2. listening ------------------------------------------------------------------------

/// `listen_udp(0, p)` binds every IPv4 interface on a fresh port and answers on 127.0.0.1.
#[test]
fn listen_udp_binds_ipv4_wildcard_and_answers_on_loopback() {
    let mut reactor = reactor();
    let (recorder, events) = Recorder::echoing();
    let port = reactor.listen_udp(0, recorder).expect("listen_udp(0)");
    let local = port.local_addr();
    assert_eq!(local.ip(), IpAddr::V4(Ipv4Addr::UNSPECIFIED));
    assert_ne!(local.port(), 0);
    assert_eq!(events.borrow()[0], Event::Start(local));

    let c = client();
    let to = loopback_addr(local.port());
    let (reply, from) = round_trip(&mut reactor, &c, to, b"wildcard");
    assert_eq!(reply, b"wildcard");
    assert_eq!(
        from, to,
        "the reply comes from the loopback address it was sent to"
    );
    assert_eq!(
        datagrams(&events),
        vec![(b"wildcard".to_vec(), c.local_addr().expect("client addr"))]
    );
}

/// `interface("127.0.0.1")` binds the loopback address only, on a fresh port.
#[test]
fn listen_on_ipv4_loopback_interface_binds_127_0_0_1() {
    let mut reactor = reactor();
    let (recorder, _events) = Recorder::echoing();
    let port = reactor
        .listen_udp_with(loopback(), recorder)
        .expect("listen on 127.0.0.1");
    assert_eq!(port.local_addr().ip(), IpAddr::V4(Ipv4Addr::LOCALHOST));
    assert_ne!(port.local_addr().port(), 0);
    let (reply, from) = round_trip(&mut reactor, &client(), port.local_addr(), b"v4");
    assert_eq!((reply, from), (b"v4".to_vec(), port.local_addr()));
}

/// `interface("::1")` makes an IPv6 port that echoes over ::1 to an IPv6 client.
#[test]
fn listen_on_ipv6_loopback_echoes_over_ipv6() {
    let mut reactor = reactor();
    let (recorder, events) = Recorder::echoing();
    let port = reactor
        .listen_udp_with(ListenOptions::new(0).interface("::1"), recorder)
        .expect("listen on ::1");
    let local = port.local_addr();
    assert!(local.is_ipv6());
    assert!(local.ip().is_loopback());
    assert_ne!(local.port(), 0);

    let c = client_on("::1");
    let (reply, from) = round_trip(&mut reactor, &c, local, b"over ipv6");
    assert_eq!((reply, from), (b"over ipv6".to_vec(), local));
    assert_eq!(
        datagrams(&events),
        vec![(b"over ipv6".to_vec(), c.local_addr().expect("client addr"))]
    );
}

/// `local_addr()` and `get_host()` agree, on the `ListeningPort` and inside the transport,
/// for wildcard, IPv4 loopback and IPv6 loopback ports.
#[test]
fn local_addr_equals_get_host_on_port_and_transport() {
    let mut reactor = reactor();
    for interface in ["", "127.0.0.1", "::1"] {
        let (recorder, events) = Recorder::new();
        let port = reactor
            .listen_udp_with(ListenOptions::new(0).interface(interface), recorder)
            .expect("listen");
        assert_eq!(port.local_addr(), port.get_host(), "{interface:?}");
        let inside = reactor
            .with_port(&port, |_, t| (t.local_addr(), t.get_host()))
            .expect("with_port");
        assert_eq!(
            inside,
            (port.local_addr(), port.local_addr()),
            "{interface:?}"
        );
        assert_eq!(events.borrow()[0], Event::Start(port.local_addr()));
    }
}

/// A datagram of exactly `max_packet_size` bytes is delivered whole.
#[test]
fn datagram_of_exactly_max_packet_size_arrives_whole() {
    let mut reactor = reactor();
    let (recorder, events) = Recorder::new();
    let port = reactor
        .listen_udp_with(loopback().max_packet_size(1000), recorder)
        .expect("listen");
    assert_eq!(
        reactor.with_port(&port, |_, t| t.max_packet_size()).ok(),
        Some(1000)
    );
    let payload: Vec<u8> = (0..1000).map(|i| (i % 251) as u8).collect();
    client().send_to(&payload, port.local_addr()).expect("send");
    drive(&mut reactor, "the 1000-byte datagram", |_| {
        !datagrams(&events).is_empty()
    });
    assert_eq!(datagrams(&events)[0].0, payload);
    assert_eq!(stats(&reactor, &port).truncated, 0);
}

/// A datagram one byte over `max_packet_size` is not delivered (not even cut short), is
/// counted in `truncated`, and a warning naming the port is logged.
#[test]
fn datagram_over_max_packet_size_is_dropped_counted_and_warned() {
    init_logging();
    let mut reactor = reactor();
    let (recorder, events) = Recorder::new();
    let port = reactor
        .listen_udp_with(loopback().max_packet_size(1000), recorder)
        .expect("listen");
    let c = client();
    c.send_to(&[7u8; 1001], port.local_addr())
        .expect("send long");
    c.send_to(b"marker", port.local_addr())
        .expect("send marker");
    drive(&mut reactor, "the marker datagram", |_| {
        !datagrams(&events).is_empty()
    });
    assert_eq!(
        datagrams(&events),
        vec![(b"marker".to_vec(), c.local_addr().expect("client addr"))],
        "only the marker is delivered"
    );
    let s = stats(&reactor, &port);
    assert_eq!(s.truncated, 1);
    assert_eq!(s.datagrams_received, 1);
    assert_eq!(s.bytes_received, 6);
    let warnings: Vec<String> = logs_about(port.local_addr())
        .into_iter()
        .filter(|l| l.starts_with("WARN "))
        .collect();
    assert_eq!(warnings.len(), 1, "one warning: {warnings:?}");
    let client_addr = c.local_addr().expect("client addr").to_string();
    assert!(warnings[0].contains(&client_addr), "{}", warnings[0]);
    assert!(warnings[0].contains("1000"), "{}", warnings[0]);
}

/// Kernel buffer sizes, large and tiny, are accepted and the port still works.
#[test]
fn recv_and_send_buffer_size_options_are_accepted() {
    let mut reactor = reactor();
    for size in [1usize, 4096, 1 << 20] {
        let (recorder, _events) = Recorder::echoing();
        let port = reactor
            .listen_udp_with(
                loopback().recv_buffer_size(size).send_buffer_size(size),
                recorder,
            )
            .unwrap_or_else(|e| panic!("buffer size {size}: {e}"));
        let (reply, _) = round_trip(&mut reactor, &client(), port.local_addr(), b"buffers");
        assert_eq!(reply, b"buffers", "buffer size {size}");
    }
}

/// Binding a port already taken is `Error::CannotListen`, naming the address and keeping
/// the kernel's reason.
#[test]
fn listening_on_a_taken_port_is_cannot_listen_naming_the_address() {
    let taken = UdpSocket::bind("127.0.0.1:0").expect("bind blocker");
    let p = taken.local_addr().expect("blocker addr").port();
    let mut reactor = reactor();
    for (opts, want) in [
        (
            ListenOptions::new(p).interface("127.0.0.1"),
            loopback_addr(p),
        ),
        (
            ListenOptions::new(p),
            SocketAddr::new(Ipv4Addr::UNSPECIFIED.into(), p),
        ),
    ] {
        let err = reactor
            .listen_udp_with(opts, Recorder::new().0)
            .expect_err("port is taken");
        let text = err.to_string();
        match &err {
            Error::CannotListen { addr, source } => {
                assert_eq!(*addr, want);
                assert_eq!(source.kind(), std::io::ErrorKind::AddrInUse);
            }
            other => panic!("expected CannotListen, got {other:?}"),
        }
        assert!(text.contains(&want.to_string()), "{text}");
        assert!(std::error::Error::source(&err).is_some());
    }
    assert_eq!(reactor.port_count(), 0);
}

/// An interface that is a hostname, not an IP literal, is `Error::InvalidAddress`.
#[test]
fn hostname_interface_is_invalid_address() {
    let mut reactor = reactor();
    for name in ["localhost", "example.com"] {
        let err = reactor
            .listen_udp_with(ListenOptions::new(0).interface(name), Recorder::new().0)
            .expect_err("hostname refused");
        match err {
            Error::InvalidAddress { address, .. } => assert_eq!(address, name),
            other => panic!("{name}: expected InvalidAddress, got {other:?}"),
        }
    }
    assert_eq!(reactor.port_count(), 0);
}

/// `max_packet_size` must be in 1..=65535: 0 and 65536 are `Error::InvalidOption`, the
/// bounds themselves are accepted.
#[test]
fn max_packet_size_out_of_range_is_invalid_option() {
    let mut reactor = reactor();
    for bad in [0usize, 65536] {
        let err = reactor
            .listen_udp_with(loopback().max_packet_size(bad), Recorder::new().0)
            .expect_err("size out of range");
        match err {
            Error::InvalidOption { option, value, .. } => {
                assert_eq!((option, value), ("max_packet_size", bad));
            }
            other => panic!("{bad}: expected InvalidOption, got {other:?}"),
        }
    }
    assert_eq!(reactor.port_count(), 0);
    for good in [1usize, 65535] {
        reactor
            .listen_udp_with(loopback().max_packet_size(good), Recorder::new().0)
            .unwrap_or_else(|e| panic!("{good}: {e}"));
    }
}

// ----- 3. writing --------------------------------------------------------------------------

/// Echoed datagrams of 0, 1, 1000 and 8192 bytes come back byte for byte.
#[test]
fn echo_returns_datagrams_of_0_1_1000_and_8192_bytes_exactly() {
    let mut reactor = reactor();
    let (recorder, events) = Recorder::echoing();
    let port = listen_loopback(&mut reactor, recorder);
    let c = client();
    for size in [0usize, 1, 1000, 8192] {
        let payload: Vec<u8> = (0..size).map(|i| (i * 7 % 256) as u8).collect();
        let (reply, from) = round_trip(&mut reactor, &c, port.local_addr(), &payload);
        assert_eq!(reply.len(), size);
        assert_eq!(reply, payload, "size {size}");
        assert_eq!(from, port.local_addr());
    }
    assert_eq!(datagrams(&events).len(), 4);
}

/// `write` takes an `(ip, port)` pair, `"ip:port"` text (borrowed or owned) and a
/// `SocketAddr`, and each reaches the addressee.
#[test]
fn write_accepts_ip_port_pair_text_and_socket_addr() {
    let mut reactor = reactor();
    let port = listen_loopback(&mut reactor, Recorder::new().0);
    let c = client();
    let to = c.local_addr().expect("client addr");
    let text = to.to_string();

    let results = reactor
        .with_port(&port, |_, t| {
            vec![
                t.write(b"pair", ("127.0.0.1", to.port())),
                t.write(b"ip pair", (Ipv4Addr::LOCALHOST, to.port())),
                t.write(b"text", text.as_str()),
                t.write(b"string", text.clone()),
                t.write(b"socketaddr", to),
            ]
        })
        .expect("with_port");
    for r in results {
        r.expect("write");
    }
    let mut got = Vec::new();
    for _ in 0..5 {
        let (data, from) = drive_recv(&mut reactor, &c);
        assert_eq!(from, port.local_addr());
        got.push(String::from_utf8(data).expect("utf8"));
    }
    assert_eq!(got, ["pair", "ip pair", "text", "string", "socketaddr"]);
    assert_eq!(stats(&reactor, &port).datagrams_sent, 5);
}

/// A hostname as destination is `Error::InvalidAddress`; nothing is sent.
#[test]
fn write_to_hostname_is_invalid_address() {
    let mut reactor = reactor();
    let port = listen_loopback(&mut reactor, Recorder::new().0);
    let p = client().local_addr().expect("client addr").port();
    let (pair, text) = reactor
        .with_port(&port, |_, t| {
            (
                t.write(b"x", ("localhost", p)),
                t.write(b"x", format!("localhost:{p}")),
            )
        })
        .expect("with_port");
    match pair {
        Err(Error::InvalidAddress { address, .. }) => assert_eq!(address, "localhost"),
        other => panic!("expected InvalidAddress, got {other:?}"),
    }
    assert!(
        matches!(text, Err(Error::InvalidAddress { .. })),
        "{text:?}"
    );
    let s = stats(&reactor, &port);
    assert_eq!((s.datagrams_sent, s.send_errors), (0, 0));
}

/// An address of the other family is `Error::AddressFamilyMismatch`, both ways.
#[test]
fn write_to_other_address_family_is_family_mismatch() {
    let mut reactor = reactor();
    let v4 = listen_loopback(&mut reactor, Recorder::new().0);
    let v6 = reactor
        .listen_udp_with(ListenOptions::new(0).interface("::1"), Recorder::new().0)
        .expect("listen on ::1");
    let six: SocketAddr = "[::1]:9".parse().expect("addr");
    let four = loopback_addr(9);
    for (port, to) in [(&v4, six), (&v6, four)] {
        let err = reactor
            .with_port(port, |_, t| t.write(b"x", to))
            .expect("with_port")
            .expect_err("family mismatch");
        match err {
            Error::AddressFamilyMismatch { address, local } => {
                assert_eq!((address, local), (to, port.local_addr()));
            }
            other => panic!("expected AddressFamilyMismatch, got {other:?}"),
        }
        assert_eq!(stats(&reactor, port).datagrams_sent, 0);
    }
}

/// Past the UDP maximum (65507 bytes on IPv4, 65527 on IPv6) a write is
/// `Error::MessageTooLong`, and nothing is sent.
#[test]
fn write_over_udp_maximum_is_message_too_long() {
    let mut reactor = reactor();
    let v4 = listen_loopback(&mut reactor, Recorder::new().0);
    let v6 = reactor
        .listen_udp_with(ListenOptions::new(0).interface("::1"), Recorder::new().0)
        .expect("listen on ::1");
    let sink4 = client();
    let sink6 = client_on("::1");
    for (port, sink, max) in [(&v4, &sink4, 65507usize), (&v6, &sink6, 65527)] {
        let to = sink.local_addr().expect("sink addr");
        let err = reactor
            .with_port(port, |_, t| t.write(&vec![0u8; max + 1], to))
            .expect("with_port")
            .expect_err("too long");
        match err {
            Error::MessageTooLong { len, max: m } => assert_eq!((len, m), (max + 1, max)),
            other => panic!("expected MessageTooLong, got {other:?}"),
        }
        assert_eq!(stats(&reactor, port).datagrams_sent, 0);
    }
}

/// A 65507-byte datagram, the IPv4 maximum, is accepted by `write` and arrives whole, both at
/// a std client and at another port with `max_packet_size` 65535.
#[test]
fn ipv4_datagram_of_65507_bytes_is_accepted_and_arrives_whole() {
    let mut reactor = reactor();
    let (echo, echo_events) = Recorder::echoing();
    let big = reactor
        .listen_udp_with(loopback().max_packet_size(65535), echo)
        .expect("listen big");
    let payload: Vec<u8> = (0..65507).map(|i| (i % 253) as u8).collect();

    // std client -> twine echo -> std client
    let c = client();
    let (reply, _) = round_trip(&mut reactor, &c, big.local_addr(), &payload);
    assert_eq!(reply.len(), 65507);
    assert_eq!(reply, payload);

    // twine -> twine
    let sender = listen_loopback(&mut reactor, Recorder::new().0);
    reactor
        .with_port(&sender, |_, t| t.write(&payload, big.local_addr()))
        .expect("with_port")
        .expect("65507-byte write");
    drive(&mut reactor, "the big datagram at the twine port", |_| {
        datagrams(&echo_events).len() == 2
    });
    assert_eq!(datagrams(&echo_events)[1], (payload, sender.local_addr()));
    assert_eq!(stats(&reactor, &big).truncated, 0);
}

/// What a burst protocol saw while it wrote, all inside one callback.
#[derive(Debug, Default)]
struct BurstReport {
    ok: usize,
    full: usize,
    other: Vec<String>,
    stats: PortStats,
    queued_bytes: usize,
}

/// Writes `count` datagrams of `size` bytes to `target` from `start_protocol`.
struct Burst {
    target: SocketAddr,
    count: usize,
    size: usize,
    report: Rc<RefCell<BurstReport>>,
}

impl DatagramProtocol for Burst {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        let data = vec![0x5a; self.size];
        let mut r = self.report.borrow_mut();
        for _ in 0..self.count {
            match t.write(&data, self.target) {
                Ok(()) => r.ok += 1,
                Err(Error::SendQueueFull { len, .. }) if len == self.size => r.full += 1,
                Err(e) => r.other.push(e.to_string()),
            }
        }
        r.stats = t.stats();
        r.queued_bytes = t.write_buffer_size();
    }

    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
}

/// A burst far larger than the kernel's send buffer, to a peer that does not read, never
/// blocks or panics: every write is sent, queued or refused with `SendQueueFull`, the
/// counters account for each one, and the queue drains.
#[test]
fn burst_beyond_send_buffer_never_blocks_and_is_fully_accounted() {
    const COUNT: usize = 2000;
    const SIZE: usize = 1400;
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
    let mut reactor = reactor();
    let report = Rc::new(RefCell::new(BurstReport::default()));
    let port = reactor
        .listen_udp_with(
            loopback()
                .send_buffer_size(4096)
                .send_queue_limit(16 * SIZE),
            Burst {
                target: sink.local_addr().expect("sink addr"),
                count: COUNT,
                size: SIZE,
                report: Rc::clone(&report),
            },
        )
        .expect("listen burst");
    {
        let r = report.borrow();
        assert!(r.other.is_empty(), "unexpected errors: {:?}", r.other);
        assert_eq!(r.ok + r.full, COUNT);
        let s = r.stats;
        assert_eq!(s.send_dropped, r.full as u64, "each refusal counted");
        assert_eq!(
            s.datagrams_sent + s.send_queued,
            r.ok as u64,
            "each accepted write was sent or queued"
        );
        assert_eq!(
            r.queued_bytes,
            s.send_queued as usize * SIZE,
            "queued datagrams wait in the send queue"
        );
        assert!(r.queued_bytes <= 16 * SIZE, "queue bound respected");
    }
    drive(&mut reactor, "the send queue to drain", |r| {
        r.with_port(&port, |_, t| t.write_buffer_size()).ok() == Some(0)
    });
    let s = stats(&reactor, &port);
    assert_eq!(s.datagrams_sent + s.send_dropped, COUNT as u64);
    assert_eq!(s.bytes_sent, s.datagrams_sent * SIZE as u64);
    assert_eq!(s.send_errors, 0);
}

// ----- 4. counters -------------------------------------------------------------------------

/// The port's counters match the traffic exactly, read through the reactor and through the
/// transport alike.
#[test]
fn counters_match_traffic_exactly() {
    let mut reactor = reactor();
    let (recorder, _events) = Recorder::echoing();
    let port = listen_loopback(&mut reactor, recorder);
    let c = client();
    let sizes = [0usize, 1, 10, 100, 1000, 4000];
    for size in sizes {
        let (reply, _) = round_trip(&mut reactor, &c, port.local_addr(), &vec![1u8; size]);
        assert_eq!(reply.len(), size);
    }
    let total: u64 = sizes.iter().map(|&s| s as u64).sum();
    let outside = stats(&reactor, &port);
    let inside = reactor
        .with_port(&port, |_, t| t.stats())
        .expect("with_port");
    assert_eq!(outside, inside);
    assert_eq!(outside.datagrams_received, sizes.len() as u64);
    assert_eq!(outside.bytes_received, total);
    assert_eq!(outside.datagrams_sent, sizes.len() as u64);
    assert_eq!(outside.bytes_sent, total);
    assert_eq!(
        (
            outside.truncated,
            outside.send_errors,
            outside.send_dropped,
            outside.send_queued,
            outside.recv_errors,
            outside.refused
        ),
        (0, 0, 0, 0, 0, 0)
    );
}

// ----- 5. logging --------------------------------------------------------------------------

/// Start and close are logged at INFO, Twisted's way: "<Prefix> starting on <addr>" with
/// the protocol type's short name, then "(UDP Port <addr> Closed)".
#[test]
fn start_and_close_are_logged_at_info_with_the_protocol_name() {
    init_logging();
    let mut reactor = reactor();
    let (recorder, events) = Recorder::new();
    let port = listen_loopback(&mut reactor, recorder);
    let addr = port.local_addr();
    let start = format!("INFO Recorder starting on {addr}");
    let closed = format!("INFO (UDP Port {addr} Closed)");
    assert!(logs_about(addr).contains(&start), "{:?}", logs_about(addr));
    assert!(!logs_about(addr).contains(&closed));
    stop_and_wait(&mut reactor, &port, &events);
    assert!(logs_about(addr).contains(&closed), "{:?}", logs_about(addr));
}

/// A protocol's `log_prefix` override names it in the start line; a closure is
/// "FnProtocol".
#[test]
fn log_prefix_override_and_closure_names_are_used_in_the_start_line() {
    struct Quiet;
    impl DatagramProtocol for Quiet {
        fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
        fn log_prefix(&self) -> &str {
            "Custom Datagrams"
        }
    }
    init_logging();
    let mut reactor = reactor();
    let named = listen_loopback(&mut reactor, Quiet);
    let closure = listen_loopback(&mut reactor, from_fn(|_, _, _| {}));
    let want = format!("INFO Custom Datagrams starting on {}", named.local_addr());
    assert!(
        logs_about(named.local_addr()).contains(&want),
        "{:?}",
        logs_about(named.local_addr())
    );
    let want = format!("INFO FnProtocol starting on {}", closure.local_addr());
    assert!(
        logs_about(closure.local_addr()).contains(&want),
        "{:?}",
        logs_about(closure.local_addr())
    );
}

/// Datagrams are not logged above DEBUG: after 50 echoes the only INFO/WARN/ERROR lines
/// naming the port or the client are the start line, and then the close line and the
/// port's counters.
#[test]
fn datagrams_are_never_logged_above_debug() {
    init_logging();
    let mut reactor = reactor();
    let (recorder, events) = Recorder::echoing();
    let port = listen_loopback(&mut reactor, recorder);
    let addr = port.local_addr();
    let c = client();
    let peer = c.local_addr().expect("client addr");
    for i in 0..50u8 {
        let (reply, _) = round_trip(&mut reactor, &c, addr, &[i; 20]);
        assert_eq!(reply, [i; 20]);
    }
    assert_eq!(stats(&reactor, &port).datagrams_received, 50);
    let start = format!("INFO Recorder starting on {addr}");
    assert_eq!(loud_logs_about(addr), std::slice::from_ref(&start));
    assert_eq!(loud_logs_about(peer), Vec::<String>::new());

    stop_and_wait(&mut reactor, &port, &events);
    let closed = format!("INFO (UDP Port {addr} Closed)");
    let counters = format!(
        "INFO Recorder on {addr} closed: received 50 datagrams (1000 bytes), sent 50 \
         (1000 bytes); dropped: 0 truncated, 0 by the kernel, 0 at the send queue, 0 from \
         another peer, 0 at stop; 0 send errors, 0 receive errors, 0 refused, 0 unreachable, \
         0 errors unreported, 0 panics, 0 queued"
    );
    assert_eq!(loud_logs_about(addr), [start, closed, counters]);
    assert_eq!(loud_logs_about(peer), Vec::<String>::new());
}

// ----- 6. datagrams and senders ------------------------------------------------------------

/// An empty datagram is delivered, as an empty slice with its sender.
#[test]
fn empty_datagram_is_delivered_as_empty_slice() {
    let mut reactor = reactor();
    let (recorder, events) = Recorder::new();
    let port = listen_loopback(&mut reactor, recorder);
    let c = client();
    c.send_to(b"", port.local_addr()).expect("send empty");
    drive(&mut reactor, "the empty datagram", |_| {
        !datagrams(&events).is_empty()
    });
    assert_eq!(
        datagrams(&events),
        vec![(Vec::new(), c.local_addr().expect("client addr"))]
    );
    let s = stats(&reactor, &port);
    assert_eq!((s.datagrams_received, s.bytes_received), (1, 0));
}

/// Each datagram is reported with its own sender's address, and replies reach each sender.
#[test]
fn several_senders_are_reported_by_their_own_addresses() {
    let mut reactor = reactor();
    let (recorder, events) = Recorder::echoing();
    let port = listen_loopback(&mut reactor, recorder);
    let clients: Vec<UdpSocket> = (0..3).map(|_| client()).collect();
    for (i, c) in clients.iter().enumerate() {
        c.send_to(format!("from {i}").as_bytes(), port.local_addr())
            .expect("send");
    }
    drive(&mut reactor, "three datagrams", |_| {
        datagrams(&events).len() == 3
    });
    let mut got = datagrams(&events);
    got.sort();
    let mut want: Vec<(Vec<u8>, SocketAddr)> = clients
        .iter()
        .enumerate()
        .map(|(i, c)| {
            (
                format!("from {i}").into_bytes(),
                c.local_addr().expect("client addr"),
            )
        })
        .collect();
    want.sort();
    assert_eq!(got, want);
    for (i, c) in clients.iter().enumerate() {
        let (reply, from) = drive_recv(&mut reactor, c);
        assert_eq!(reply, format!("from {i}").into_bytes());
        assert_eq!(from, port.local_addr());
    }
}

// ----- respond: the socketserver-style request/response layer ---------------------------

/// `respond` sends the handler's reply back to each sender, sends nothing for `None`
/// (the next reply is the next datagram's), and names its port in the log.
#[test]
fn respond_replies_to_each_sender_and_skips_none() {
    init_logging();
    let mut r = reactor();
    let handler = twine::respond(|data: &[u8], from: SocketAddr| {
        (data != b"quiet").then(|| format!("{} from {}", data.len(), from.port()))
    });
    let port = listen_loopback(&mut r, handler.named("Counter"));
    let addr = port.local_addr();
    let (a, b) = (client(), client());
    a.send_to(b"quiet", addr).expect("send");
    a.send_to(b"abc", addr).expect("send");
    let expected_a = format!("3 from {}", a.local_addr().expect("addr").port());
    assert_eq!(drive_recv(&mut r, &a), (expected_a.into_bytes(), addr));
    b.send_to(b"", addr).expect("send");
    let expected_b = format!("0 from {}", b.local_addr().expect("addr").port());
    assert_eq!(drive_recv(&mut r, &b), (expected_b.into_bytes(), addr));
    assert_eq!(r.port_stats(&port).expect("open").datagrams_sent, 2);
    assert!(
        logs_about(addr)
            .iter()
            .any(|l| l.contains("Counter starting on")),
        "{:?}",
        logs_about(addr)
    );
}

/// A reply too long to send is logged with the sender, and the port goes on answering.
#[test]
fn respond_logs_a_reply_it_cannot_send_and_goes_on() {
    init_logging();
    let mut r = reactor();
    let port = listen_loopback(
        &mut r,
        twine::respond(|data: &[u8], _| match data {
            b"big" => Some(vec![0u8; 70_000]),
            other => Some(other.to_vec()),
        }),
    );
    let addr = port.local_addr();
    let c = client();
    let me = c.local_addr().expect("addr");
    c.send_to(b"big", addr).expect("send");
    c.send_to(b"small", addr).expect("send");
    assert_eq!(drive_recv(&mut r, &c), (b"small".to_vec(), addr));
    let warned = util::logs_containing(&format!("Responder: reply to {me}"));
    assert_eq!(warned.len(), 1, "{warned:?}");
    assert!(r.is_listening(&port));
}
