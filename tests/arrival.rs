//! What the kernel says of each datagram besides its bytes, and what a write carries
//! besides its bytes: the arrival address and interface (`ListenOptions::arrival_address`),
//! replies from the address a request arrived on (`reply_from_arrival`,
//! `UdpTransport::write_with`), the TOS byte both ways (`receive_tos`, `tos`,
//! `WriteOptions::tos`), receive timestamps (`receive_timestamps`), and room for all of
//! their control messages together.
//!
//! All of 127.0.0.0/8 is routed to `lo`, so a port bound to 0.0.0.0 has many local
//! addresses without any setup: a client that asks 127.0.0.2 and gets its answer from
//! 127.0.0.1 (the kernel's choice for a plain reply) drops it if it is connected.

mod util;

use std::cell::RefCell;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, SystemTime};

use socket2::{Domain, Protocol, SockRef, Socket, Type};
use twine::{
    Arrival, DatagramProtocol, Error, ListenOptions, ListeningPort, Reactor, UdpTransport,
    WriteOptions,
};
use util::process::Netns;
use util::{DEADLINE, drive, drive_for, ms, reactor, with};

type Seen = Rc<RefCell<Vec<(Vec<u8>, SocketAddr, Arrival)>>>;

/// Records each datagram with its arrival, and answers it (unless `quiet`): with a plain
/// write, or with `reply` as write options.
#[derive(Default)]
struct Answer {
    seen: Seen,
    quiet: bool,
    reply: Option<WriteOptions>,
    /// What `arrival` says from a timer (outside any receive hook).
    from_timer: Rc<RefCell<Option<Arrival>>>,
}

impl DatagramProtocol for Answer {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        let arrival = t.arrival();
        self.seen.borrow_mut().push((data.to_vec(), from, arrival));
        if self.quiet {
            return;
        }
        let sent = match self.reply {
            Some(opts) => t.write_with(data, from, opts),
            None => t.write(data, from),
        };
        sent.expect("reply");
        let seen_later = self.from_timer.clone();
        t.call_later(Duration::ZERO, move |_: &mut Answer, t| {
            *seen_later.borrow_mut() = Some(t.arrival());
        })
        .expect("timer");
    }
}

fn listen(
    reactor: &mut Reactor,
    opts: ListenOptions,
    proto: Answer,
) -> (ListeningPort<Answer>, Seen) {
    let seen = proto.seen.clone();
    let port = reactor.listen_udp_with(opts, proto).expect("listen");
    (port, seen)
}

/// A client bound to `ip`, connected to `to`: the kernel delivers it only what comes from
/// exactly `to`.
fn connected_client(ip: &str, to: SocketAddr) -> UdpSocket {
    let c = UdpSocket::bind((ip, 0)).expect("bind client");
    c.connect(to).expect("connect client");
    c.set_nonblocking(true).expect("nonblocking");
    c
}

/// Turns the reactor until `client` has received `n` datagrams (or the deadline).
fn receive(reactor: &mut Reactor, client: &UdpSocket, n: usize) -> Vec<(Vec<u8>, SocketAddr)> {
    let mut got = Vec::new();
    let mut buf = [0u8; 2048];
    reactor
        .run_until(DEADLINE, |_| {
            while let Ok((len, from)) = client.recv_from(&mut buf) {
                got.push((buf[..len].to_vec(), from));
            }
            got.len() >= n
        })
        .expect("turns");
    got
}

fn lo_index() -> u32 {
    std::fs::read_to_string("/sys/class/net/lo/ifindex")
        .expect("lo's index")
        .trim()
        .parse()
        .expect("a number")
}

fn ip(text: &str) -> IpAddr {
    text.parse().expect("an IP literal")
}

/// A protocol that records each datagram and answers none.
fn quiet() -> Answer {
    Answer {
        quiet: true,
        ..Answer::default()
    }
}

/// Where a client reaches a port bound to `server_ip` on `port`: 127.0.0.1 for a
/// wildcard (dual-stack) bind, the address itself otherwise.
fn reach(server_ip: &str, port: u16) -> SocketAddr {
    let ip_text = if server_ip == "::" {
        "127.0.0.1"
    } else {
        server_ip
    };
    SocketAddr::new(ip(ip_text), port)
}

/// The bug and its fix on a port bound to `wildcard`: a client on `client_ip` (the
/// address a plain reply to it leaves from) connected to `asked`, another local address,
/// never sees the reply of a plain port, and gets all five of a port with
/// `reply_from_arrival`, whose arrivals are returned.
#[track_caller]
fn before_and_after(reactor: &mut Reactor, wildcard: &str, client_ip: &str, asked: &str) -> Seen {
    let plain = ListenOptions::new(0).interface(wildcard);
    let (before, before_seen) = listen(reactor, plain.clone(), Answer::default());
    let (after, after_seen) = listen(reactor, plain.reply_from_arrival(true), Answer::default());

    let to = SocketAddr::new(ip(asked), before.local_addr().port());
    let client = connected_client(client_ip, to);
    client.send(b"plain").expect("send");
    drive(reactor, "the request on the plain port", |_| {
        before_seen.borrow().len() == 1
    });
    assert_eq!(reactor.port_stats(&before).expect("open").datagrams_sent, 1);
    drive_for(reactor, ms(300));
    let mut buf = [0u8; 64];
    assert!(
        client.recv(&mut buf).is_err(),
        "a plain reply leaves from {client_ip}, which the client connected to {asked} drops"
    );
    // An unconnected client sees where it came from.
    let loose = UdpSocket::bind((client_ip, 0)).expect("bind");
    loose.set_nonblocking(true).expect("nonblocking");
    loose.send_to(b"where", to).expect("send");
    let got = receive(reactor, &loose, 1);
    assert_eq!(
        got,
        [(b"where".to_vec(), SocketAddr::new(ip(client_ip), to.port()))]
    );

    let to = SocketAddr::new(ip(asked), after.local_addr().port());
    let client = connected_client(client_ip, to);
    for i in 0..5u8 {
        client.send(&[i; 10]).expect("send");
    }
    let got = receive(reactor, &client, 5);
    assert_eq!(got.len(), 5, "every reply reaches the connected client");
    assert!(got.iter().all(|(_, from)| *from == to));
    after_seen
}

/// The bug the option fixes, and the fix: a port bound to 0.0.0.0 answers a client that
/// asked 127.0.0.2 from 127.0.0.1, which a connected client never sees; with
/// `reply_from_arrival` the answer leaves from 127.0.0.2 and arrives.
#[test]
fn a_wildcard_port_answers_from_the_address_the_request_arrived_on() {
    let mut reactor = reactor();
    let after_seen = before_and_after(&mut reactor, "0.0.0.0", "127.0.0.1", "127.0.0.2");
    // A reply that sets only its TOS byte still leaves from the arrival address.
    let (tos_only, _) = listen(
        &mut reactor,
        ListenOptions::new(0)
            .interface("0.0.0.0")
            .reply_from_arrival(true),
        Answer {
            reply: Some(WriteOptions::new().tos(0x04)),
            ..Answer::default()
        },
    );
    let to_tos = SocketAddr::new(ip("127.0.0.2"), tos_only.local_addr().port());
    let c = connected_client("127.0.0.1", to_tos);
    c.send(b"tos").expect("send");
    assert_eq!(receive(&mut reactor, &c, 1), [(b"tos".to_vec(), to_tos)]);
    let seen = after_seen.borrow();
    assert_eq!(seen.len(), 5);
    for (_, _, arrival) in seen.iter() {
        assert_eq!(arrival.destination, Some(ip("127.0.0.2")));
        assert_eq!(arrival.reply_source, Some(ip("127.0.0.2")));
        assert_eq!(arrival.interface, Some(lo_index()));
    }
}

/// Each datagram tells the address it was sent to, the same port serving many, and
/// nothing of it outlives its hook (a timer sees no arrival).
#[test]
fn the_arrival_address_is_told_per_datagram_and_only_inside_the_hook() {
    let mut reactor = reactor();
    let answer = Answer {
        quiet: false,
        ..Answer::default()
    };
    let from_timer = answer.from_timer.clone();
    let (port, seen) = listen(
        &mut reactor,
        ListenOptions::new(0)
            .interface("0.0.0.0")
            .arrival_address(true),
        answer,
    );
    let number = port.local_addr().port();
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let asked = ["127.0.0.1", "127.0.0.2", "127.0.0.9", "127.1.2.3"];
    for a in asked {
        c.send_to(a.as_bytes(), (a, number)).expect("send");
    }
    drive(&mut reactor, "every request", |_| {
        seen.borrow().len() == asked.len()
    });
    drive(&mut reactor, "the timer", |_| from_timer.borrow().is_some());
    let seen = seen.borrow();
    for (data, _, arrival) in seen.iter() {
        let a = ip(std::str::from_utf8(data).expect("text"));
        assert_eq!(arrival.destination, Some(a));
        assert_eq!(arrival.reply_source, Some(a));
        assert_eq!(arrival.interface, Some(lo_index()));
        assert_eq!(
            (arrival.tos, arrival.timestamp),
            (None, None),
            "not asked for"
        );
    }
    assert_eq!(*from_timer.borrow(), Some(Arrival::default()));
    // Without the option nothing is told.
    let (plain, plain_seen) = listen(
        &mut reactor,
        ListenOptions::new(0).interface("0.0.0.0"),
        Answer::default(),
    );
    c.send_to(b"x", ("127.0.0.2", plain.local_addr().port()))
        .expect("send");
    drive(&mut reactor, "the request", |_| {
        plain_seen.borrow().len() == 1
    });
    assert_eq!(plain_seen.borrow()[0].2, Arrival::default());
}

/// A datagram sent to a multicast group tells the group as its destination and a unicast
/// address to reply from: the reply from the arrival address leaves from it, never from
/// the group (which the kernel refuses as a source).
#[test]
fn a_datagram_to_a_group_is_answered_from_a_unicast_address() {
    const GROUP: &str = "239.77.0.90";
    let mut reactor = reactor();
    let (port, seen) = listen(
        &mut reactor,
        ListenOptions::new(0)
            .interface("0.0.0.0")
            .reply_from_arrival(true)
            .listen_multiple(true),
        Answer::default(),
    );
    with(&mut reactor, &port, |t| t.join_group(GROUP, "127.0.0.1")).expect("join");
    let number = port.local_addr().port();
    let sender = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).expect("socket");
    sender
        .set_multicast_if_v4(&Ipv4Addr::LOCALHOST)
        .expect("IP_MULTICAST_IF");
    sender
        .bind(&SocketAddr::from((Ipv4Addr::LOCALHOST, 0)).into())
        .expect("bind");
    let sender: UdpSocket = sender.into();
    sender.set_nonblocking(true).expect("nonblocking");
    sender
        .send_to(b"who is there", (GROUP, number))
        .expect("send to the group");
    let got = receive(&mut reactor, &sender, 1);
    assert_eq!(got.len(), 1, "the reply to a group datagram arrives");
    assert_eq!(
        got[0].1,
        SocketAddr::new(ip("127.0.0.1"), number),
        "from a unicast address"
    );
    let seen = seen.borrow();
    assert_eq!(seen[0].2.destination, Some(ip(GROUP)));
    assert_eq!(seen[0].2.reply_source, Some(ip("127.0.0.1")));
    assert_eq!(reactor.port_stats(&port).expect("open").send_errors, 0);
}

/// A dual-stack port (bound to `::`) tells an IPv4 datagram's arrival IPv4-mapped, and
/// answers from it.
#[test]
fn a_dual_stack_port_answers_ipv4_clients_from_their_arrival_address() {
    let mut reactor = reactor();
    let (port, seen) = listen(
        &mut reactor,
        ListenOptions::new(0)
            .interface("::")
            .reply_from_arrival(true),
        Answer::default(),
    );
    let to = SocketAddr::new(ip("127.0.0.2"), port.local_addr().port());
    let client = connected_client("127.0.0.1", to);
    client.send(b"v4 on v6").expect("send");
    let got = receive(&mut reactor, &client, 1);
    assert_eq!(got, [(b"v4 on v6".to_vec(), to)]);
    let arrival = seen.borrow()[0].2;
    assert_eq!(
        arrival.destination,
        Some(IpAddr::V6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped()))
    );
    assert_eq!(
        arrival.reply_source,
        Some(IpAddr::V6(Ipv4Addr::new(127, 0, 0, 2).to_ipv6_mapped()))
    );
    // A source of the other family than the peer is refused before the kernel sees it.
    let v6_source = WriteOptions::new().source(ip("::1"));
    let err = with(&mut reactor, &port, |t| {
        t.write_with(b"x", seen.borrow()[0].1, v6_source)
    })
    .expect_err("an IPv6 source for an IPv4 peer");
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err:?}");
    // IPv6 on the same port: ::1.
    let c6 = UdpSocket::bind("[::1]:0").expect("bind");
    c6.set_nonblocking(true).expect("nonblocking");
    c6.send_to(b"v6", ("::1", port.local_addr().port()))
        .expect("send");
    let got = receive(&mut reactor, &c6, 1);
    assert_eq!(got.len(), 1);
    assert_eq!(
        seen.borrow()[1].2.destination,
        Some(IpAddr::V6(Ipv6Addr::LOCALHOST))
    );
}

/// `write_with` sends from the source given, from any hook (here, a timer after the
/// request); a source of the wrong family or that cannot be a source is refused, typed.
#[test]
fn write_with_sends_from_the_source_given() {
    struct Later {
        seen: Seen,
    }
    impl DatagramProtocol for Later {
        fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
            let arrival = t.arrival();
            self.seen.borrow_mut().push((data.to_vec(), from, arrival));
            let reply = arrival.reply_options();
            let data = data.to_vec();
            t.call_later(ms(1), move |_: &mut Later, t| {
                t.write_with(&data, from, reply).expect("reply later");
            })
            .expect("timer");
        }
    }
    let mut reactor = reactor();
    let seen = Seen::default();
    let port = reactor
        .listen_udp_with(
            ListenOptions::new(0)
                .interface("0.0.0.0")
                .arrival_address(true),
            Later { seen: seen.clone() },
        )
        .expect("listen");
    let number = port.local_addr().port();
    let to = SocketAddr::new(ip("127.0.0.3"), number);
    let client = connected_client("127.0.0.1", to);
    client.send(b"later").expect("send");
    let got = receive(&mut reactor, &client, 1);
    assert_eq!(
        got,
        [(b"later".to_vec(), to)],
        "the timer's reply left from 127.0.0.3"
    );

    // From outside the hooks, with an explicit source.
    let loose = UdpSocket::bind("127.0.0.1:0").expect("bind");
    loose.set_nonblocking(true).expect("nonblocking");
    let dest = loose.local_addr().expect("addr");
    let opts = WriteOptions::new().source(ip("127.0.0.44"));
    with(&mut reactor, &port, |t| {
        t.write_with(b"from 44", dest, opts)
    })
    .expect("write_with");
    let got = receive(&mut reactor, &loose, 1);
    assert_eq!(
        got,
        [(
            b"from 44".to_vec(),
            SocketAddr::new(ip("127.0.0.44"), number)
        )]
    );

    let bad = |reactor: &mut Reactor, source: &str| {
        let opts = WriteOptions::new().source(ip(source));
        with(reactor, &port, |t| t.write_with(b"x", dest, opts)).expect_err(source)
    };
    assert!(matches!(
        bad(&mut reactor, "::1"),
        Error::AddressFamilyMismatch { .. }
    ));
    assert!(matches!(
        bad(&mut reactor, "224.0.0.1"),
        Error::InvalidAddress { .. }
    ));
    assert!(matches!(
        bad(&mut reactor, "0.0.0.0"),
        Error::InvalidAddress { .. }
    ));
}

/// A port's TOS byte, and each write's own, reach the receiver, which reads each
/// datagram's; in a gathered batch each datagram keeps its own byte (a segmented run
/// never spans two), on IPv4, IPv6, and to an IPv4 peer of a dual-stack port.
#[test]
fn the_tos_byte_is_sent_per_port_and_per_write_and_read_per_datagram() {
    /// Answers each datagram with six datagrams of one length and the TOS bytes given.
    struct Six;
    const TOS: [Option<u8>; 6] = [None, None, Some(0x04), Some(0x04), Some(0xb8), Some(0x01)];
    impl DatagramProtocol for Six {
        fn datagram_received(&mut self, t: &mut UdpTransport<'_>, _: &[u8], from: SocketAddr) {
            for (i, tos) in TOS.iter().enumerate() {
                let opts = tos.map_or(WriteOptions::new(), |b| WriteOptions::new().tos(b));
                t.write_with(&[i as u8; 100], from, opts).expect("write");
            }
        }
    }
    for (server_ip, client_ip) in [
        ("127.0.0.1", "127.0.0.1"),
        ("::1", "::1"),
        ("::", "127.0.0.1"),
    ] {
        let mut reactor = reactor();
        let server = reactor
            .listen_udp_with(ListenOptions::new(0).interface(server_ip).tos(0x28), Six)
            .expect("listen");
        let (client, seen) = listen(
            &mut reactor,
            ListenOptions::new(0).interface(client_ip).receive_tos(true),
            quiet(),
        );
        let to = reach(server_ip, server.local_addr().port());
        with(&mut reactor, &client, |t| t.write(b"go", to)).expect("ask");
        drive(&mut reactor, "six answers", |_| seen.borrow().len() == 6);
        let got: Vec<(u8, Option<u8>)> = seen
            .borrow()
            .iter()
            .map(|(d, _, a)| (d[0], a.tos))
            .collect();
        let want: Vec<(u8, Option<u8>)> = TOS
            .iter()
            .enumerate()
            .map(|(i, tos)| (i as u8, Some(tos.unwrap_or(0x28))))
            .collect();
        assert_eq!(got, want, "server {server_ip}, client {client_ip}");
        let a = seen.borrow()[4].2;
        assert_eq!((a.dscp(), a.ecn()), (Some(46), Some(0)));
        // The port's byte can change while it runs.
        with(&mut reactor, &server, |t| t.set_tos(0x10)).expect("set_tos");
        let back = match (server_ip, client.local_addr()) {
            ("::", SocketAddr::V4(a)) => {
                SocketAddr::new(IpAddr::V6(a.ip().to_ipv6_mapped()), a.port())
            }
            (_, a) => a,
        };
        with(&mut reactor, &server, |t| t.write(b"z", back)).expect("write");
        drive(&mut reactor, "one more", |_| seen.borrow().len() == 7);
        assert_eq!(seen.borrow()[6].2.tos, Some(0x10));
    }
}

/// Receive timestamps: each datagram carries the wall-clock time the kernel queued it
/// (between the send and the read), only with the option on, and every datagram of a
/// coalesced read carries its read's.
#[test]
fn receive_timestamps_are_told_per_datagram_only_when_asked() {
    for offload in [false, true] {
        let mut reactor = reactor();
        let opts = ListenOptions::new(0)
            .interface("127.0.0.1")
            .receive_offload(offload);
        let (on, on_seen) = listen(&mut reactor, opts.clone().receive_timestamps(true), quiet());
        let (off, off_seen) = listen(&mut reactor, opts, quiet());
        let before = SystemTime::now();
        let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
        for _ in 0..20 {
            c.send_to(&[7u8; 200], on.local_addr()).expect("send");
            c.send_to(&[7u8; 200], off.local_addr()).expect("send");
        }
        drive(&mut reactor, "every datagram", |_| {
            on_seen.borrow().len() == 20 && off_seen.borrow().len() == 20
        });
        let after = SystemTime::now();
        // The wall clock may be stepped meanwhile; a second of slack either way.
        let slack = Duration::from_secs(1);
        for (_, _, a) in on_seen.borrow().iter() {
            let at = a.timestamp.expect("a timestamp");
            assert!(
                at + slack >= before && at <= after + slack,
                "{at:?} outside {before:?}..{after:?}"
            );
        }
        assert!(
            off_seen
                .borrow()
                .iter()
                .all(|(_, _, a)| a.timestamp.is_none())
        );
    }
}

/// Every per-datagram option on together, with the drop count attached (the receive
/// queue overflowed first) and receive offload: the control room holds every message,
/// nothing is cut (`PortStats::control_truncated` stays 0), and each datagram tells all.
#[test]
fn every_option_on_together_fits_the_control_room() {
    for (server_ip, client_ip) in [
        ("127.0.0.1", "127.0.0.1"),
        ("::", "127.0.0.1"),
        ("::1", "::1"),
    ] {
        for offload in [false, true] {
            let mut reactor = reactor();
            let opts = ListenOptions::new(0)
                .interface(server_ip)
                .recv_buffer_size(4096)
                .arrival_address(true)
                .receive_tos(true)
                .receive_timestamps(true)
                .receive_offload(offload);
            let (port, seen) = listen(&mut reactor, opts, quiet());
            let to = reach(server_ip, port.local_addr().port());
            let c = Socket::new(Domain::for_address(to), Type::DGRAM, Some(Protocol::UDP))
                .expect("socket");
            if to.is_ipv4() {
                c.set_tos_v4(0x2a).expect("tos");
            } else {
                c.set_tclass_v6(0x2a).expect("tclass");
            }
            c.bind(&SocketAddr::new(ip(client_ip), 0).into())
                .expect("bind");
            let c: UdpSocket = c.into();
            // Overflow the 4 KiB queue before the reactor reads: later datagrams carry the
            // drop count.
            for _ in 0..200 {
                c.send_to(&[1u8; 300], to).expect("send");
            }
            drive(&mut reactor, "what the queue held", |_| {
                !seen.borrow().is_empty()
            });
            drive_for(&mut reactor, ms(50));
            let before = seen.borrow().len();
            for _ in 0..5 {
                c.send_to(&[2u8; 300], to).expect("send");
            }
            drive(&mut reactor, "the datagrams after the drops", |_| {
                seen.borrow().len() == before + 5
            });
            let stats = reactor.port_stats(&port).expect("open");
            let what = format!("{server_ip}, offload {offload}: {stats:?}");
            assert!(stats.kernel_dropped > 0, "{what}");
            assert_eq!(stats.control_truncated, 0, "{what}");
            for (data, _, a) in seen.borrow().iter() {
                assert!(
                    a.destination.is_some() && a.interface.is_some(),
                    "{what}: {a:?}"
                );
                assert_eq!(a.tos, Some(0x2a), "{what}");
                assert!(a.timestamp.is_some(), "{what}");
                assert_eq!(data.len(), 300);
            }
        }
    }
}

/// The test kit's simulation tells each datagram the address it was sent to (on
/// interface 1) and sends replies from it, so that a protocol's reply-from-the-arrival
/// logic is tested in virtual time: a client connected to 127.0.0.2 gets the reply of a
/// wildcard port with `reply_from_arrival`, and not the plain one's (from 127.0.0.1);
/// the TOS byte and timestamps are accepted and not simulated.
#[test]
fn the_simulation_tells_the_arrival_address_and_sends_from_it() {
    let mut sim = twine::testing::Simulation::new(3).expect("simulation");
    let mut results = Vec::new();
    for (number, fixed) in [(53, false), (54, true)] {
        let server = ListenOptions::new(number)
            .interface("0.0.0.0")
            .reply_from_arrival(fixed)
            .arrival_address(true)
            .receive_tos(true)
            .receive_timestamps(true)
            .tos(0x10);
        let (_, server_seen) = listen(&mut sim, server, Answer::default());
        let (client, client_seen) = listen(
            &mut sim,
            ListenOptions::new(0).interface("127.0.0.1"),
            quiet(),
        );
        let to = SocketAddr::new(ip("127.0.0.2"), number);
        with(&mut sim, &client, |t| t.connect(to)).expect("connect");
        with(&mut sim, &client, |t| t.send(b"hi")).expect("send");
        sim.advance(ms(10)).expect("advance");
        let a = server_seen.borrow()[0].2;
        assert_eq!(a.destination, Some(ip("127.0.0.2")));
        assert_eq!(a.reply_source, Some(ip("127.0.0.2")));
        assert_eq!(a.interface, Some(1));
        assert_eq!((a.tos, a.timestamp), (None, None));
        let reply_from = sim
            .sent()
            .iter()
            .find(|s| s.to == client.local_addr())
            .map(|s| s.from);
        results.push((reply_from, client_seen.borrow().len()));
    }
    assert_eq!(
        results,
        [
            (Some(SocketAddr::new(ip("127.0.0.1"), 53)), 0),
            (Some(SocketAddr::new(ip("127.0.0.2"), 54)), 1),
        ],
        "the plain reply leaves from 127.0.0.1 and the connected client never sees it"
    );
}

/// Replies from the arrival address that the kernel's full buffer does not take wait in
/// the send queue with their source, and leave from it: a connected client on a
/// rate-limited loopback gets every one.
#[test]
#[ignore = "needs root for a network namespace: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test arrival -- --ignored"]
fn queued_replies_keep_their_source() {
    Netns::run_rate_limited(
        "arrq",
        "netns_inner_queued_replies_keep_their_source",
        CHILD_FLAG,
    );
}

const CHILD_FLAG: &str = "TWINE_ARRIVAL_CHILD";

#[test]
#[ignore = "run inside a network namespace by queued_replies_keep_their_source"]
fn netns_inner_queued_replies_keep_their_source() {
    if std::env::var_os(CHILD_FLAG).is_none() {
        eprintln!("not a child run ({CHILD_FLAG} unset): nothing to do");
        return;
    }
    /// Answers each request with `COPIES` replies of 1000 bytes.
    struct Burst;
    const COPIES: usize = 120;
    impl DatagramProtocol for Burst {
        fn datagram_received(&mut self, t: &mut UdpTransport<'_>, _: &[u8], from: SocketAddr) {
            for i in 0..COPIES {
                t.write(&[i as u8; 1000], from).expect("write");
            }
        }
    }
    let mut reactor = reactor();
    let port = reactor
        .listen_udp_with(
            ListenOptions::new(0)
                .interface("0.0.0.0")
                .reply_from_arrival(true)
                .send_buffer_size(4096)
                .segmentation(false),
            Burst,
        )
        .expect("listen");
    let to = SocketAddr::new(ip("127.0.0.2"), port.local_addr().port());
    let client = connected_client("127.0.0.1", to);
    SockRef::from(&client)
        .set_recv_buffer_size(1 << 20)
        .expect("rcvbuf");
    client.send(b"go").expect("send");
    let got = receive(&mut reactor, &client, COPIES);
    let stats = reactor.port_stats(&port).expect("open");
    assert!(stats.send_queued > 0, "the buffer filled: {stats:?}");
    assert_eq!(got.len(), COPIES, "{stats:?}");
    assert!(got.iter().all(|(_, from)| *from == to));
    let order: Vec<u8> = got.iter().map(|(d, _)| d[0]).collect();
    assert_eq!(order, (0..COPIES as u8).collect::<Vec<_>>(), "in order");
    println!("INNER-DONE");
}

/// IPv6 on a host with two addresses (a namespace with fd00::1 and fd00::2 on one
/// interface): a port bound to `::` answers a client that asked fd00::2 from fd00::1
/// without the option (the connected client never sees it), and from fd00::2 with it.
#[test]
#[ignore = "needs root for a network namespace: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test arrival -- --ignored"]
fn ipv6_replies_leave_from_the_arrival_address() {
    let ns = Netns::create("arr6")
        .and_then(|ns| {
            ns.ip(&["link", "add", "d0", "type", "veth", "peer", "name", "d1"])?;
            ns.ip(&["link", "set", "d0", "up"])?;
            ns.ip(&["link", "set", "d1", "up"])?;
            ns.ip(&["-6", "addr", "add", "fd00::1/64", "dev", "d0", "nodad"])?;
            ns.ip(&["-6", "addr", "add", "fd00::2/64", "dev", "d0", "nodad"])?;
            Ok(ns)
        })
        .unwrap_or_else(|why| panic!("needs a network namespace with two IPv6 addresses: {why}"));
    ns.run_inner(
        "netns_inner_ipv6_replies_leave_from_the_arrival_address",
        CHILD_FLAG,
    );
}

#[test]
#[ignore = "run inside a network namespace by ipv6_replies_leave_from_the_arrival_address"]
fn netns_inner_ipv6_replies_leave_from_the_arrival_address() {
    if std::env::var_os(CHILD_FLAG).is_none() {
        eprintln!("not a child run ({CHILD_FLAG} unset): nothing to do");
        return;
    }
    let mut reactor = reactor();
    let seen = before_and_after(&mut reactor, "::", "fd00::1", "fd00::2");
    let a = seen.borrow()[0].2;
    assert_eq!(
        (a.destination, a.reply_source),
        (Some(ip("fd00::2")), Some(ip("fd00::2")))
    );
    println!("INNER-DONE");
}
