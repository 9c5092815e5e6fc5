mod util;

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, Instant};

use twine::{DatagramProtocol, Error, ListenOptions, ListeningPort, Reactor, UdpTransport};
use util::{
    DEADLINE, Event, Events, OnStart, Recorder, client, client_on, count, datagrams, dead_addr_on,
    drive, drive_for, drive_recv, init_logging, listen_loopback, reactor, with,
};

fn on_start<F: FnMut(&mut UdpTransport<'_>) + 'static>(start: F) -> (OnStart<F>, Events) {
    let (rec, events) = Recorder::new();
    (OnStart { rec, start }, events)
}

/// Where the dead addresses are ([`dead_addr_on`]): 127.0.0.2 (loopback too). The tests
/// re-bind a dead address later to show a port works again, and a port number freed on
/// 127.0.0.1 may meanwhile be handed to another test's `127.0.0.1:0` (seen in CI as
/// `AddrInUse`); nothing here binds 127.0.0.2 but these dead addresses.
const DEAD_IP: &str = "127.0.0.2";

fn refusals(events: &Events) -> usize {
    count(events, |e| *e == Event::Refused)
}

fn stats_refused<P>(reactor: &Reactor, port: &ListeningPort<P>) -> u64 {
    reactor.port_stats(port).expect("port is open").refused
}

/// Connects a loopback port to `peer` from outside its hooks.
fn connect<P: DatagramProtocol>(reactor: &mut Reactor, port: &ListeningPort<P>, peer: SocketAddr) {
    with(reactor, port, |t| t.connect(peer)).expect("connect to a literal address");
}

/// Sends on a connected port until a send returns [`Error::ConnectionRefused`] (the
/// refusal of an earlier one), sleeping a little between tries: the reactor is not turned
/// meanwhile, so only the write path can see the refusal. Returns the sends that went out
/// before it, and the error's peer. Panics if none is refused within [`DEADLINE`].
fn send_until_refused(t: &mut UdpTransport<'_>) -> (usize, SocketAddr) {
    let deadline = Instant::now() + DEADLINE;
    let mut sent = 0;
    loop {
        match t.send(b"probe") {
            Ok(()) => sent += 1,
            Err(Error::ConnectionRefused { peer }) => return (sent, peer),
            Err(e) => panic!("send to a dead peer: unexpected error {e:?}"),
        }
        assert!(
            Instant::now() < deadline,
            "no send was refused within {DEADLINE:?} ({sent} went out)"
        );
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Shows that `port` (connected to `addr`, where nothing listened) still works: a socket
/// bound at `addr` now gets the port's next send and the port gets its reply.
fn assert_port_works_again(
    reactor: &mut Reactor,
    port: &ListeningPort<impl DatagramProtocol>,
    events: &Events,
    addr: SocketAddr,
) {
    let revived = UdpSocket::bind(addr).expect("re-bind the refused address");
    revived
        .set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    with(reactor, port, |t| t.send(b"alive")).expect("send after a refusal");
    let (data, from) = drive_recv(reactor, &revived);
    assert_eq!((data.as_slice(), from), (&b"alive"[..], port.local_addr()));
    revived
        .send_to(b"reply", port.local_addr())
        .expect("reply to the port");
    drive(reactor, "the peer's reply after a refusal", |_| {
        datagrams(events).contains(&(b"reply".to_vec(), addr))
    });
    assert!(reactor.is_listening(port));
}

/// `connect` called in `start_protocol` makes `send(data)` reach the peer, from the port.
#[test]
fn connect_in_start_protocol_then_send_reaches_the_peer() {
    init_logging();
    let mut reactor = reactor();
    let peer = client();
    let peer_addr = peer.local_addr().unwrap();
    let (proto, _events) = on_start(move |t| t.connect(peer_addr).expect("connect in start"));
    let port = listen_loopback(&mut reactor, proto);
    with(&mut reactor, &port, |t| t.send(b"hello")).expect("send to the peer");
    let (data, from) = drive_recv(&mut reactor, &peer);
    assert_eq!((data.as_slice(), from), (&b"hello"[..], port.local_addr()));
    assert_eq!(reactor.port_stats(&port).unwrap().datagrams_sent, 1);
}

/// On a connected port, `write(data, peer)` with the peer's own address reaches the peer.
#[test]
fn write_to_the_connected_peer_reaches_it() {
    let mut reactor = reactor();
    let peer = client();
    let peer_addr = peer.local_addr().unwrap();
    let (rec, _events) = Recorder::new();
    let port = listen_loopback(&mut reactor, rec);
    connect(&mut reactor, &port, peer_addr);
    with(&mut reactor, &port, |t| t.write(b"by-write", peer_addr)).expect("write to the peer");
    let (data, from) = drive_recv(&mut reactor, &peer);
    assert_eq!(
        (data.as_slice(), from),
        (&b"by-write"[..], port.local_addr())
    );
    // The peer given as text is the same peer.
    let text = peer_addr.to_string();
    with(&mut reactor, &port, |t| t.write(b"by-text", &text)).expect("write to the peer as text");
    let (data, _) = drive_recv(&mut reactor, &peer);
    assert_eq!(data, b"by-text");
}

/// `peer_addr()` is `None` before `connect` and the peer's address after it.
#[test]
fn peer_addr_reports_the_connected_peer() {
    let mut reactor = reactor();
    let peer = client();
    let peer_addr = peer.local_addr().unwrap();
    let (rec, _events) = Recorder::new();
    let port = listen_loopback(&mut reactor, rec);
    assert_eq!(with(&mut reactor, &port, |t| t.peer_addr()), None);
    connect(&mut reactor, &port, peer_addr);
    assert_eq!(
        with(&mut reactor, &port, |t| t.peer_addr()),
        Some(peer_addr)
    );
}

/// On a connected port, `write` to any other address is `WrongPeer` and sends nothing.
#[test]
fn write_to_another_address_on_a_connected_port_is_wrong_peer() {
    let mut reactor = reactor();
    let peer = client();
    let peer_addr = peer.local_addr().unwrap();
    let other = client();
    let other_addr = other.local_addr().unwrap();
    let (rec, _events) = Recorder::new();
    let port = listen_loopback(&mut reactor, rec);
    connect(&mut reactor, &port, peer_addr);
    let err = with(&mut reactor, &port, |t| t.write(b"stray", other_addr)).unwrap_err();
    assert!(
        matches!(err, Error::WrongPeer { peer, requested } if peer == peer_addr && requested == other_addr),
        "{err:?}"
    );
    assert_eq!(reactor.port_stats(&port).unwrap().datagrams_sent, 0);
    // The peer still gets the next datagram, and it is the first one it sees.
    with(&mut reactor, &port, |t| t.send(b"right")).expect("send to the peer");
    let (data, _) = drive_recv(&mut reactor, &peer);
    assert_eq!(data, b"right");
    other.set_nonblocking(true).unwrap();
    let mut buf = [0u8; 64];
    assert!(
        other.recv_from(&mut buf).is_err(),
        "the other address got a datagram"
    );
}

/// A second `connect` is `AlreadyConnected` naming the first peer, which stays the peer.
#[test]
fn second_connect_is_already_connected_and_the_first_peer_is_kept() {
    let mut reactor = reactor();
    let first = client();
    let first_addr = first.local_addr().unwrap();
    let second_addr = client().local_addr().unwrap();
    let (rec, _events) = Recorder::new();
    let port = listen_loopback(&mut reactor, rec);
    connect(&mut reactor, &port, first_addr);
    let err = with(&mut reactor, &port, |t| t.connect(second_addr)).unwrap_err();
    assert!(
        matches!(err, Error::AlreadyConnected { peer } if peer == first_addr),
        "{err:?}"
    );
    // Connecting to the same peer again is refused too.
    let again = with(&mut reactor, &port, |t| t.connect(first_addr)).unwrap_err();
    assert!(matches!(again, Error::AlreadyConnected { .. }), "{again:?}");
    assert_eq!(
        with(&mut reactor, &port, |t| t.peer_addr()),
        Some(first_addr)
    );
    with(&mut reactor, &port, |t| t.send(b"still-first")).expect("send to the first peer");
    let (data, _) = drive_recv(&mut reactor, &first);
    assert_eq!(data, b"still-first");
}

/// `connect` with a hostname is `InvalidAddress`, leaves the port unconnected, and a later
/// `connect` to a literal works.
#[test]
fn connect_with_a_hostname_is_invalid_address_and_leaves_the_port_unconnected() {
    let mut reactor = reactor();
    let peer = client();
    let peer_addr = peer.local_addr().unwrap();
    let (rec, _events) = Recorder::new();
    let port = listen_loopback(&mut reactor, rec);
    let err = with(&mut reactor, &port, |t| {
        t.connect(("localhost", peer_addr.port()))
    })
    .unwrap_err();
    assert!(
        matches!(&err, Error::InvalidAddress { address, .. } if address == "localhost"),
        "{err:?}"
    );
    let err = with(&mut reactor, &port, |t| t.connect("example.invalid:9")).unwrap_err();
    assert!(matches!(err, Error::InvalidAddress { .. }), "{err:?}");
    assert_eq!(with(&mut reactor, &port, |t| t.peer_addr()), None);
    let not_connected = with(&mut reactor, &port, |t| t.send(b"x")).unwrap_err();
    assert!(
        matches!(not_connected, Error::NotConnected),
        "{not_connected:?}"
    );
    with(&mut reactor, &port, |t| {
        t.connect(("127.0.0.1", peer_addr.port()))
    })
    .expect("connect to a literal after a hostname");
    with(&mut reactor, &port, |t| t.send(b"literal")).expect("send");
    let (data, from) = drive_recv(&mut reactor, &peer);
    assert_eq!(
        (data.as_slice(), from),
        (&b"literal"[..], port.local_addr())
    );
}

/// `connect` to an address of the other family is `AddressFamilyMismatch` and the port
/// stays unconnected, on an IPv4 port and on an IPv6 one.
#[test]
fn connect_to_the_other_family_is_address_family_mismatch() {
    let mut reactor = reactor();
    let (rec, _events) = Recorder::new();
    let v4 = listen_loopback(&mut reactor, rec);
    let v6_peer: SocketAddr = "[::1]:9".parse().unwrap();
    let err = with(&mut reactor, &v4, |t| t.connect(v6_peer)).unwrap_err();
    assert!(
        matches!(err, Error::AddressFamilyMismatch { address, local } if address == v6_peer && local == v4.local_addr()),
        "{err:?}"
    );
    assert_eq!(with(&mut reactor, &v4, |t| t.peer_addr()), None);

    let (rec, _events) = Recorder::new();
    let v6 = reactor
        .listen_udp_with(ListenOptions::new(0).interface("::1"), rec)
        .expect("listen on ::1");
    let err = with(&mut reactor, &v6, |t| t.connect(("127.0.0.1", 9))).unwrap_err();
    assert!(
        matches!(err, Error::AddressFamilyMismatch { .. }),
        "{err:?}"
    );
    assert_eq!(with(&mut reactor, &v6, |t| t.peer_addr()), None);
}

/// A connected port delivers its peer's datagrams and not those of another sender.
#[test]
fn connected_port_delivers_only_the_peers_datagrams() {
    let mut reactor = reactor();
    let peer = client();
    let peer_addr = peer.local_addr().unwrap();
    let stranger = client();
    let (rec, events) = Recorder::new();
    let port = listen_loopback(&mut reactor, rec);
    connect(&mut reactor, &port, peer_addr);
    // The stranger's datagram is sent first, so it would arrive first if it arrived.
    stranger.send_to(b"stranger", port.local_addr()).unwrap();
    peer.send_to(b"peer", port.local_addr()).unwrap();
    drive(&mut reactor, "the peer's datagram", |_| {
        !datagrams(&events).is_empty()
    });
    drive_for(&mut reactor, Duration::from_millis(50));
    assert_eq!(datagrams(&events), vec![(b"peer".to_vec(), peer_addr)]);
    assert_eq!(reactor.port_stats(&port).unwrap().datagrams_received, 1);
}

/// `send` on a port that is not connected is `NotConnected`, and nothing is sent.
#[test]
fn send_on_an_unconnected_port_is_not_connected() {
    let mut reactor = reactor();
    let (rec, _events) = Recorder::new();
    let port = listen_loopback(&mut reactor, rec);
    let err = with(&mut reactor, &port, |t| t.send(b"nowhere")).unwrap_err();
    assert!(matches!(err, Error::NotConnected), "{err:?}");
    assert_eq!(reactor.port_stats(&port).unwrap().datagrams_sent, 0);
}

/// A refusal the reactor reads (the ICMP error met on the next poll) calls
/// `connection_refused` once, counts it, and the port keeps sending and receiving.
#[test]
fn refusal_read_by_the_reactor_calls_connection_refused_once_and_the_port_keeps_working() {
    init_logging();
    let mut reactor = reactor();
    let dead = dead_addr_on(DEAD_IP);
    let (rec, events) = Recorder::new();
    let port = listen_loopback(&mut reactor, rec);
    connect(&mut reactor, &port, dead);
    with(&mut reactor, &port, |t| t.send(b"into the void")).expect("first send goes out");
    drive(&mut reactor, "connection_refused", |_| {
        refusals(&events) >= 1
    });
    drive_for(&mut reactor, Duration::from_millis(100));
    assert_eq!(refusals(&events), 1, "{:?}", events.borrow());
    assert_eq!(stats_refused(&reactor, &port), 1);
    assert!(reactor.is_listening(&port));
    assert_eq!(
        count(&events, |e| *e == Event::Stop),
        0,
        "a refusal must not stop the port"
    );
    assert_port_works_again(&mut reactor, &port, &events, dead);
    assert_eq!(refusals(&events), 1);
}

/// A send inside a hook that meets an earlier refusal returns `ConnectionRefused` (naming
/// the peer) and `connection_refused` is called once, as soon as the hook returns.
#[test]
fn refused_send_in_a_hook_returns_connection_refused_and_calls_the_hook_once_it_returns() {
    let mut reactor = reactor();
    let dead = dead_addr_on(DEAD_IP);
    let seen: Rc<RefCell<Option<(usize, SocketAddr, usize)>>> = Rc::default();
    let (rec, events) = Recorder::new();
    let hook_events = events.clone();
    let seen_in_hook = seen.clone();
    let proto = OnStart {
        rec,
        start: move |t: &mut UdpTransport<'_>| {
            t.connect(dead).expect("connect");
            let (sent, peer) = send_until_refused(t);
            // Not yet: the hook is still running.
            let during = refusals(&hook_events);
            *seen_in_hook.borrow_mut() = Some((sent, peer, during));
        },
    };
    let port = listen_loopback(&mut reactor, proto);
    let (sent, peer, during) = seen.borrow().expect("start_protocol ran");
    assert!(sent >= 1, "the first send must go out");
    assert_eq!(peer, dead);
    assert_eq!(during, 0, "connection_refused ran inside the hook");
    // Called once `start_protocol` returned, before any reactor turn.
    assert_eq!(refusals(&events), 1, "{:?}", events.borrow());
    assert!(stats_refused(&reactor, &port) >= 1);
    // A refusal of a send that went out after the one refused is read later; every
    // refusal counted is reported once.
    drive_for(&mut reactor, Duration::from_millis(200));
    assert_eq!(refusals(&events) as u64, stats_refused(&reactor, &port));
    assert_port_works_again(&mut reactor, &port, &events, dead);
}

/// A send from `with_port` that meets an earlier refusal returns `ConnectionRefused`, and
/// `connection_refused` is called once, as soon as the `with_port` closure returns.
#[test]
fn refused_send_from_with_port_calls_connection_refused_once_it_returns() {
    let mut reactor = reactor();
    let dead = dead_addr_on(DEAD_IP);
    let (rec, events) = Recorder::new();
    let port = listen_loopback(&mut reactor, rec);
    connect(&mut reactor, &port, dead);
    let (sent, peer, during) = reactor
        .with_port(&port, |rec, t| {
            let (sent, peer) = send_until_refused(t);
            (sent, peer, refusals(&rec.events))
        })
        .expect("port is open");
    assert!(sent >= 1, "the first send must go out");
    assert_eq!(peer, dead);
    assert_eq!(during, 0, "connection_refused ran inside the closure");
    assert_eq!(refusals(&events), 1, "{:?}", events.borrow());
    assert!(stats_refused(&reactor, &port) >= 1);
    drive_for(&mut reactor, Duration::from_millis(200));
    assert_eq!(refusals(&events) as u64, stats_refused(&reactor, &port));
    assert_port_works_again(&mut reactor, &port, &events, dead);
}

/// `PortStats::refused` counts every refusal, and each one calls `connection_refused`.
#[test]
fn port_stats_refused_counts_each_refusal() {
    let mut reactor = reactor();
    let dead = dead_addr_on(DEAD_IP);
    let (rec, events) = Recorder::new();
    let port = listen_loopback(&mut reactor, rec);
    connect(&mut reactor, &port, dead);
    assert_eq!(stats_refused(&reactor, &port), 0);
    for n in 1..=3 {
        with(&mut reactor, &port, |t| t.send(b"again")).expect("send after a refusal");
        drive(&mut reactor, "one more connection_refused", |_| {
            refusals(&events) >= n
        });
        assert_eq!(stats_refused(&reactor, &port), n as u64);
    }
    drive_for(&mut reactor, Duration::from_millis(100));
    assert_eq!(refusals(&events), 3);
    assert_eq!(stats_refused(&reactor, &port), 3);
    let stats = reactor.port_stats(&port).unwrap();
    assert_eq!((stats.datagrams_sent, stats.recv_errors), (3, 0));
}

/// An unconnected port writing to an address where nothing listens is never told:
/// no `connection_refused`, nothing counted, and its writes keep succeeding.
#[test]
fn unconnected_port_writing_to_a_dead_address_gets_no_connection_refused() {
    let mut reactor = reactor();
    let dead = dead_addr_on(DEAD_IP);
    let (rec, events) = Recorder::new();
    let port = listen_loopback(&mut reactor, rec);
    with(&mut reactor, &port, |t| t.write(b"one", dead)).expect("first write");
    drive_for(&mut reactor, Duration::from_millis(100));
    with(&mut reactor, &port, |t| t.write(b"two", dead)).expect("second write");
    drive_for(&mut reactor, Duration::from_millis(200));
    assert_eq!(refusals(&events), 0, "{:?}", events.borrow());
    let stats = reactor.port_stats(&port).unwrap();
    assert_eq!(
        (stats.refused, stats.recv_errors, stats.datagrams_sent),
        (0, 0, 2)
    );
    // It still receives.
    let peer = client();
    peer.send_to(b"hi", port.local_addr()).unwrap();
    drive(&mut reactor, "a datagram after the dead writes", |_| {
        !datagrams(&events).is_empty()
    });
}

/// A connected IPv6 port sends to its peer on ::1, receives its replies, and a refusal by
/// an IPv6 address where nothing listens calls `connection_refused`.
#[test]
fn connected_ipv6_port_talks_to_its_peer_and_hears_refusals() {
    let mut reactor = reactor();
    let peer = client_on("::1");
    let peer_addr = peer.local_addr().unwrap();
    let (rec, events) = Recorder::new();
    let port = reactor
        .listen_udp_with(ListenOptions::new(0).interface("::1"), rec)
        .expect("listen on ::1");
    with(&mut reactor, &port, |t| {
        t.connect(("::1", peer_addr.port()))
    })
    .expect("connect");
    assert_eq!(
        with(&mut reactor, &port, |t| t.peer_addr()),
        Some(peer_addr)
    );
    with(&mut reactor, &port, |t| t.send(b"six")).expect("send");
    let (data, from) = drive_recv(&mut reactor, &peer);
    assert_eq!((data.as_slice(), from), (&b"six"[..], port.local_addr()));
    peer.send_to(b"back", port.local_addr()).unwrap();
    drive(&mut reactor, "the IPv6 peer's reply", |_| {
        datagrams(&events) == vec![(b"back".to_vec(), peer_addr)]
    });

    let dead = dead_addr_on("::1");
    let (rec, events) = Recorder::new();
    let refused = reactor
        .listen_udp_with(ListenOptions::new(0).interface("::1"), rec)
        .expect("listen on ::1");
    connect(&mut reactor, &refused, dead);
    with(&mut reactor, &refused, |t| t.send(b"void")).expect("send");
    drive(&mut reactor, "an IPv6 connection_refused", |_| {
        refusals(&events) >= 1
    });
    assert_eq!(stats_refused(&reactor, &refused), 1);
}
