//! `connect` never changes where earlier writes go, nor lets in datagrams from others.
//!
//! A port that connects changes the socket's default destination and the set of senders
//! the kernel accepts from then on. Writes made before the call (gathered for a batch, or
//! waiting in the send queue behind a full kernel buffer) must still reach the addresses
//! they were written to, never the new peer; datagrams from other addresses that reached
//! the socket before the call must not be delivered to a protocol that now talks to one
//! peer only (they are counted in `PortStats::not_from_peer`).

mod util;

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::Duration;

use twine::{DatagramProtocol, ListeningPort, PortStats, Reactor, UdpTransport, from_fn};
use util::process::{Netns, child_run};
use util::sequence::{numbered, sequence_sink};
use util::{
    DEADLINE, collect_then_linger, drive_for, init_logging, listen_loopback, loopback, reactor,
};

const CHILD_FLAG: &str = "TWINE_MISDELIVERY_TEST_CHILD";

/// Datagrams as they arrived: payload (as text) and sender.
type Arrivals = Rc<RefCell<Vec<(String, SocketAddr)>>>;

fn text(data: &[u8]) -> String {
    String::from_utf8_lossy(data).into_owned()
}

/// On its first datagram, while the batch it came in is being dispatched: writes
/// `"for A"` to `a`, replies to the sender, connects to `b` and sends `"for B"`. Records
/// every datagram delivered to it, and what each of those calls returned.
struct SwitchOnFirst {
    a: SocketAddr,
    b: SocketAddr,
    delivered: Arrivals,
    calls: Rc<RefCell<Vec<String>>>,
}

impl DatagramProtocol for SwitchOnFirst {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        self.delivered.borrow_mut().push((text(data), from));
        if t.peer_addr().is_some() {
            return;
        }
        let mut reply = b"reply to ".to_vec();
        reply.extend_from_slice(data);
        let results = [
            format!("write A: {:?}", t.write(b"for A", self.a)),
            format!("write sender: {:?}", t.write(&reply, from)),
            format!("connect B: {:?}", t.connect(self.b)),
            format!("send B: {:?}", t.send(b"for B")),
        ];
        self.calls.borrow_mut().extend(results);
    }
}

/// A non-blocking plain socket on 127.0.0.1.
fn peer() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind peer");
    s.set_nonblocking(true).expect("nonblocking");
    s
}

fn addr(s: &UdpSocket) -> SocketAddr {
    s.local_addr().expect("local addr")
}

/// Reads everything waiting on a non-blocking socket.
fn drain(s: &UdpSocket, into: &mut Vec<(String, SocketAddr)>) {
    let mut buf = [0u8; 2048];
    while let Ok((n, from)) = s.recv_from(&mut buf) {
        into.push((text(&buf[..n]), from));
    }
}

/// Turns the reactor for 50 ms more (for anything else on its way), prints what the port
/// delivered and its counters, and asserts that nothing from `third` was delivered; returns
/// the counters.
#[track_caller]
fn settle_and_check_none_from(
    reactor: &mut Reactor,
    port: &ListeningPort<impl DatagramProtocol>,
    delivered: &Arrivals,
    third: &UdpSocket,
) -> PortStats {
    drive_for(reactor, Duration::from_millis(50));
    let stats = reactor.port_stats(port).expect("open");
    println!("delivered: {:?}", delivered.borrow());
    println!("stats: {stats}");
    let from_third = delivered
        .borrow()
        .iter()
        .filter(|(_, from)| *from == addr(third))
        .count();
    assert_eq!(from_third, 0, "datagrams from the third address delivered");
    stats
}

fn switcher(
    reactor: &mut Reactor,
    a: SocketAddr,
    b: SocketAddr,
) -> (
    ListeningPort<SwitchOnFirst>,
    Arrivals,
    Rc<RefCell<Vec<String>>>,
) {
    let delivered = Arrivals::default();
    let calls = Rc::new(RefCell::new(Vec::new()));
    let p = SwitchOnFirst {
        a,
        b,
        delivered: delivered.clone(),
        calls: calls.clone(),
    };
    (listen_loopback(reactor, p), delivered, calls)
}

/// Writes gathered in `datagram_received` before `connect` go where they were written:
/// A gets "for A", the sender its reply, and B only what was sent after the connect.
#[test]
fn writes_gathered_before_connect_reach_their_own_destinations() {
    init_logging();
    let mut reactor = reactor();
    let (a, b, sender) = (peer(), peer(), peer());
    let (port, _delivered, calls) = switcher(&mut reactor, addr(&a), addr(&b));
    let server = port.local_addr();
    sender.send_to(b"hello", server).expect("send");

    let (mut at_a, mut at_b, mut at_sender) = (Vec::new(), Vec::new(), Vec::new());
    collect_then_linger(&mut reactor, Duration::from_millis(100), |_| {
        drain(&a, &mut at_a);
        drain(&b, &mut at_b);
        drain(&sender, &mut at_sender);
        !at_a.is_empty() && !at_b.is_empty() && !at_sender.is_empty()
    });
    println!("calls: {:?}", calls.borrow());
    println!("A got {at_a:?}\nsender got {at_sender:?}\nB got {at_b:?}");

    assert_eq!(
        *calls.borrow(),
        [
            "write A: Ok(())",
            "write sender: Ok(())",
            "connect B: Ok(())",
            "send B: Ok(())"
        ]
    );
    assert_eq!(at_a, [("for A".to_owned(), server)], "what A received");
    assert_eq!(
        at_sender,
        [("reply to hello".to_owned(), server)],
        "what the sender received"
    );
    assert_eq!(at_b, [("for B".to_owned(), server)], "what B received");
    let stats = reactor.port_stats(&port).expect("open");
    println!("stats: {stats}");
    assert_eq!(stats.datagrams_sent, 3, "{stats:?}");
}

/// Datagrams from a third address that were already in the socket when the port
/// connected, in the same batch as the datagram whose hook connected, are dropped and
/// counted; the peer's own early datagrams, and its later ones, are delivered.
#[test]
fn datagrams_from_others_read_after_connect_in_the_same_batch_are_dropped() {
    init_logging();
    let mut reactor = reactor();
    let (a, b, sender, third) = (peer(), peer(), peer(), peer());
    let (port, delivered, _calls) = switcher(&mut reactor, addr(&a), addr(&b));
    let server = port.local_addr();
    // All in the socket before the reactor reads: one batch.
    sender.send_to(b"hello", server).expect("send");
    for i in 0..5 {
        third
            .send_to(format!("c{i}").as_bytes(), server)
            .expect("send");
    }
    for i in 0..2 {
        b.send_to(format!("b{i}").as_bytes(), server).expect("send");
    }
    util::drive(&mut reactor, "the peer's two early datagrams", |_| {
        delivered.borrow().len() >= 3
    });
    // After the connect the kernel itself filters: only B's datagram reaches the socket.
    third.send_to(b"c late", server).expect("send");
    b.send_to(b"b late", server).expect("send");
    let ok = reactor
        .run_until(DEADLINE, |_| {
            delivered.borrow().iter().any(|(d, _)| d == "b late")
        })
        .expect("turns");
    let stats = settle_and_check_none_from(&mut reactor, &port, &delivered, &third);
    assert!(ok, "B's later datagram never arrived");
    let want = [
        ("hello".to_owned(), addr(&sender)),
        ("b0".to_owned(), addr(&b)),
        ("b1".to_owned(), addr(&b)),
        ("b late".to_owned(), addr(&b)),
    ];
    assert_eq!(*delivered.borrow(), want);
    assert_eq!(stats.not_from_peer, 5, "{stats:?}");
    assert_eq!(stats.datagrams_received, 4, "{stats:?}");
}

/// The same when the port connects from outside its hooks, with datagrams from a third
/// address and from the peer waiting in the socket: only the peer's are delivered.
#[test]
fn datagrams_from_others_waiting_when_the_port_connects_are_dropped() {
    init_logging();
    let mut reactor = reactor();
    let delivered = Arrivals::default();
    let sink = delivered.clone();
    let port = listen_loopback(
        &mut reactor,
        from_fn(move |_, data, from| sink.borrow_mut().push((text(data), from))),
    );
    let server = port.local_addr();
    let (b, third) = (peer(), peer());
    for i in 0..5 {
        third
            .send_to(format!("c{i}").as_bytes(), server)
            .expect("send");
        b.send_to(format!("b{i}").as_bytes(), server).expect("send");
    }
    util::with(&mut reactor, &port, |t| t.connect(addr(&b))).expect("connect");
    let ok = reactor
        .run_until(DEADLINE, |_| delivered.borrow().len() >= 5)
        .expect("turns");
    let stats = settle_and_check_none_from(&mut reactor, &port, &delivered, &third);
    assert!(ok, "the peer's datagrams never arrived");
    let want: Vec<_> = (0..5).map(|i| (format!("b{i}"), addr(&b))).collect();
    assert_eq!(*delivered.borrow(), want);
    assert_eq!(stats.not_from_peer, 5, "{stats:?}");
}

/// In a namespace whose loopback is rate-limited (so the kernel's send buffer really
/// fills), 200 writes to A from `datagram_received`, then `connect(B)` and one send to B:
/// the writes the kernel could not take at once wait in the send queue, and every one of
/// them still goes to A, in order; B gets only its own datagram.
#[test]
#[ignore = "needs root for a network namespace with a tbf qdisc: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test misdelivery -- --ignored"]
fn queued_writes_before_connect_reach_their_destination_from_a_hook() {
    Netns::run_rate_limited("mis-hook", "inner_queued_writes_from_a_hook", CHILD_FLAG);
}

/// The same from a `with_port` closure (writes sent at once, then queued).
#[test]
#[ignore = "needs root for a network namespace with a tbf qdisc: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test misdelivery -- --ignored"]
fn queued_writes_before_connect_reach_their_destination_from_with_port() {
    Netns::run_rate_limited("mis-with", "inner_queued_writes_from_with_port", CHILD_FLAG);
}

/// Not a test of its own: the part of
/// `queued_writes_before_connect_reach_their_destination_from_a_hook` that runs inside the
/// namespace.
#[test]
#[ignore = "runs inside a network namespace, started by queued_writes_before_connect_reach_their_destination_from_a_hook"]
fn inner_queued_writes_from_a_hook() {
    queued_writes_then_connect(true);
}

/// Not a test of its own: the part of
/// `queued_writes_before_connect_reach_their_destination_from_with_port` that runs inside
/// the namespace.
#[test]
#[ignore = "runs inside a network namespace, started by queued_writes_before_connect_reach_their_destination_from_with_port"]
fn inner_queued_writes_from_with_port() {
    queued_writes_then_connect(false);
}

const WRITES: u32 = 200;
const SIZE: usize = 1000;
/// The sequence number of the datagram sent to B after the connect.
const FOR_B: u32 = 1_000_000;

/// Writes 200 datagrams to `a`, connects to `b` and sends one datagram there; returns
/// the calls that failed.
fn write_then_connect(t: &mut UdpTransport<'_>, a: SocketAddr, b: SocketAddr) -> Vec<String> {
    let mut failed = Vec::new();
    for seq in 0..WRITES {
        if let Err(e) = t.write(&numbered(seq, SIZE), a) {
            failed.push(format!("write {seq} to A: {e}"));
        }
    }
    if let Err(e) = t.connect(b) {
        failed.push(format!("connect: {e}"));
    }
    if let Err(e) = t.send(&numbered(FOR_B, SIZE)) {
        failed.push(format!("send to B: {e}"));
    }
    failed
}

fn queued_writes_then_connect(in_hook: bool) {
    if !child_run(CHILD_FLAG) {
        return;
    }
    let mut reactor = reactor();
    let (port_a, at_a) = sequence_sink(&mut reactor);
    let (port_b, at_b) = sequence_sink(&mut reactor);
    let (a, b) = (port_a.local_addr(), port_b.local_addr());
    let failed = Rc::new(RefCell::new(None));
    let seen = failed.clone();
    let opts = loopback().send_buffer_size(4096);
    let sender = reactor
        .listen_udp_with(
            opts,
            from_fn(move |t, _, _| {
                if t.peer_addr().is_none() {
                    *seen.borrow_mut() = Some(write_then_connect(t, a, b));
                }
            }),
        )
        .expect("sender");
    if in_hook {
        let trigger = UdpSocket::bind("127.0.0.1:0").expect("bind");
        trigger.send_to(b"go", sender.local_addr()).expect("send");
    } else {
        let f = util::with(&mut reactor, &sender, |t| write_then_connect(t, a, b));
        *failed.borrow_mut() = Some(f);
    }
    let done = reactor
        .run_until(DEADLINE, |r| {
            let drained = r
                .with_port(&sender, |_, t| t.write_buffer_size() == 0)
                .unwrap_or(false);
            drained && at_a.borrow().len() + at_b.borrow().len() > WRITES as usize
        })
        .expect("turns");
    drive_for(&mut reactor, Duration::from_millis(100));
    let stats = reactor.port_stats(&sender).expect("sender open");
    let (at_a, at_b) = (at_a.borrow(), at_b.borrow());
    println!(
        "{}: A got {}, B got {} (B's: {:?}); sender: {stats}",
        if in_hook {
            "from a hook"
        } else {
            "from with_port"
        },
        at_a.len(),
        at_b.len(),
        &at_b[..at_b.len().min(8)],
    );
    assert_eq!(*failed.borrow(), Some(vec![]), "calls that failed");
    assert!(
        stats.send_queued > 0,
        "the kernel never pushed back, nothing was queued: {stats:?}"
    );
    let sent_to_b = at_b.iter().filter(|&&seq| seq != FOR_B).count();
    assert_eq!(
        (at_a.len(), sent_to_b),
        (WRITES as usize, 0),
        "datagrams written to A that reached A, and that reached B instead"
    );
    let want_a: Vec<u32> = (0..WRITES).collect();
    assert_eq!(*at_a, want_a, "A gets all its datagrams, in order");
    assert_eq!(*at_b, [FOR_B], "B gets only its own datagram");
    assert!(done, "the queue never drained");
    assert_eq!(stats.datagrams_sent, u64::from(WRITES) + 1, "{stats:?}");
    assert_eq!(stats.send_errors + stats.send_dropped, 0, "{stats:?}");
    println!("INNER-DONE");
}
