//! Hostile and unusual uses of a port: hooks that stop and then panic, peers given in odd
//! forms, writes made from the report hooks, ICMP errors that are not the call's own, and
//! ports of very different sizes sharing the reactor's buffers. Each test names the
//! promise it holds.
//!
//! The tests that need a network namespace (root, `ip netns`, `tc`) are ignored by a plain
//! `cargo test`; `cargo test --test attacks -- --ignored` runs them, and fails them where
//! the namespace cannot be made. Each builds its namespace and runs its `inner_` half
//! inside it as a child process; the `inner_` tests do nothing unless run so.

mod util;

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::{BorrowedFd, RawFd};
use std::rc::Rc;
use std::time::{Duration, Instant};

use twine::{
    DatagramProtocol, Error, ListenOptions, ListeningPort, PortStats, Reactor, UdpTransport,
};
use util::process::{Netns, child_run};
use util::{DEADLINE, drive, drive_recv, init_logging, loopback, reactor};

/// Set in the environment of the `inner_` tests run inside a namespace.
const CHILD_FLAG: &str = "TWINE_ATTACKS_CHILD";

/// A reactor for a child run of an `inner_` test; `None` (the test then does nothing) in
/// any other run, which says so.
fn child_reactor() -> Option<Reactor> {
    child_run(CHILD_FLAG).then(reactor)
}

/// Sends `n` numbered datagrams from `client` to `to` while the reactor does not turn:
/// loopback queues them in the port's receive buffer at once, so that its first read takes
/// them all in one batch (fewer than the default batch size of 32).
fn preload(client: &UdpSocket, to: SocketAddr, n: u32) {
    for i in 0..n {
        client.send_to(&i.to_be_bytes(), to).expect("send");
    }
}

/// The number a [`preload`]ed datagram carries.
fn number(data: &[u8]) -> u32 {
    u32::from_be_bytes(data[..4].try_into().expect("a numbered datagram"))
}

/// Everything a port read, as its counters have it: delivered, or counted where it went.
fn accounted(s: &PortStats) -> u64 {
    s.datagrams_received
        + s.dropped_at_stop
        + s.recv_errors
        + s.truncated
        + s.not_from_peer
        + s.kernel_dropped
}

// ----- a stop asked for in a hook that then panics ---------------------------------------

#[derive(Default)]
struct Seen {
    got: Vec<u32>,
    stats_at_stop: Option<PortStats>,
}

/// On datagram 0 asks for a stop (of the port, or of the reactor) and then panics; records
/// every datagram and the counters at stop_protocol.
struct StopThenPanic {
    seen: Rc<RefCell<Seen>>,
    via_reactor: bool,
}

impl DatagramProtocol for StopThenPanic {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], _from: SocketAddr) {
        let n = number(data);
        self.seen.borrow_mut().got.push(n);
        if n == 0 {
            if self.via_reactor {
                t.reactor().stop();
            } else {
                t.stop_listening();
            }
            panic!("a parser fails after asking for the stop");
        }
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.seen.borrow_mut().stats_at_stop = Some(t.stats());
    }
}

/// [`preload`]s `n` datagrams to the port on `to` and turns the reactor until its
/// stop_protocol has recorded the counters in `seen`; prints what was delivered and returns
/// it, with the counters at stop.
fn preload_until_stopped(
    r: &mut Reactor,
    to: SocketAddr,
    seen: &Rc<RefCell<Seen>>,
    n: u32,
) -> (Vec<u32>, PortStats) {
    let client = UdpSocket::bind("127.0.0.1:0").expect("bind client");
    preload(&client, to, n);
    drive(r, "stop_protocol", |_| {
        seen.borrow().stats_at_stop.is_some()
    });
    let s = seen.borrow();
    let stats = s.stats_at_stop.expect("checked by drive");
    println!("delivered {:?}; at stop: {stats}", s.got);
    (s.got.clone(), stats)
}

/// Preloads 8 datagrams on a port whose hook stops (as `via_reactor` says) and panics on
/// the first; asserts that all 8 were read, only the first delivered, the other 7 counted
/// in `dropped_at_stop`, and one panic counted.
#[track_caller]
fn stop_then_panic(via_reactor: bool) {
    const N: u32 = 8;
    init_logging();
    let mut r = reactor();
    let seen = Rc::new(RefCell::new(Seen::default()));
    let port = r
        .listen_udp_with(
            loopback(),
            StopThenPanic {
                seen: seen.clone(),
                via_reactor,
            },
        )
        .expect("listen");
    let (got, stats) = preload_until_stopped(&mut r, port.local_addr(), &seen, N);
    assert_eq!(accounted(&stats), u64::from(N), "all 8 read: {stats}");
    let stop = if via_reactor {
        "Reactor::stop"
    } else {
        "stop_listening"
    };
    assert_eq!(got, vec![0], "delivered after {stop} and a panic: {stats}");
    assert_eq!(stats.dropped_at_stop, 7, "{stats}");
    assert_eq!(stats.panics, 1, "{stats}");
}

/// "No datagram is delivered after the stop is asked for" holds for a hook that calls
/// `stop_listening` and then panics (the default policy: the panic costs that one event):
/// the dispatch goes on after the panic only to count the rest of the batch, which is
/// read but not delivered.
#[test]
fn a_hook_that_stops_listening_then_panics_gets_none_of_the_rest_of_its_batch() {
    stop_then_panic(false);
}

/// The same for a hook that calls `Reactor::stop` and then panics.
#[test]
fn a_hook_that_stops_the_reactor_then_panics_gets_none_of_the_rest_of_its_batch() {
    stop_then_panic(true);
}

/// Panics on datagram 0; records every datagram and the counters at stop_protocol.
struct PanicOnFirst {
    seen: Rc<RefCell<Seen>>,
}

impl DatagramProtocol for PanicOnFirst {
    fn datagram_received(&mut self, _t: &mut UdpTransport<'_>, data: &[u8], _from: SocketAddr) {
        let n = number(data);
        self.seen.borrow_mut().got.push(n);
        if n == 0 {
            panic!("a parser fails");
        }
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.seen.borrow_mut().stats_at_stop = Some(t.stats());
    }
}

/// "Nothing is lost silently": with `close_on_panic`, a panic closes the port, and the
/// datagrams of its batch after the panicking one (read from the kernel, never delivered)
/// are counted in `dropped_at_stop`.
#[test]
fn a_port_closed_by_a_panic_counts_the_rest_of_its_batch_as_dropped_at_stop() {
    const N: u32 = 8;
    init_logging();
    let mut r = reactor();
    let seen = Rc::new(RefCell::new(Seen::default()));
    let port = r
        .listen_udp_with(
            loopback().close_on_panic(true),
            PanicOnFirst { seen: seen.clone() },
        )
        .expect("listen");
    let (got, stats) = preload_until_stopped(&mut r, port.local_addr(), &seen, N);
    assert_eq!(got, vec![0], "{stats}");
    assert_eq!(
        accounted(&stats),
        u64::from(N),
        "every datagram read is delivered or counted: {stats}"
    );
    assert_eq!(stats.dropped_at_stop, u64::from(N - 1), "{stats}");
    assert!(!r.is_listening(&port));
}

// ----- peers given in odd forms -----------------------------------------------------------

/// What a port received and whether each echo to its `from` was accepted.
type Echoes = Rc<RefCell<Vec<(SocketAddr, Result<(), Error>)>>>;

/// Connects to `peer` in start_protocol, records the peer the port then names, and echoes
/// every datagram to its `from`.
struct ConnectedEcho {
    peer: SocketAddr,
    connected_to: Rc<RefCell<Option<SocketAddr>>>,
    got: Echoes,
}

impl ConnectedEcho {
    fn new(peer: SocketAddr) -> (ConnectedEcho, Rc<RefCell<Option<SocketAddr>>>, Echoes) {
        let connected_to = Rc::new(RefCell::new(None));
        let got = Echoes::default();
        let echo = ConnectedEcho {
            peer,
            connected_to: connected_to.clone(),
            got: got.clone(),
        };
        (echo, connected_to, got)
    }
}

impl DatagramProtocol for ConnectedEcho {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        t.connect(self.peer).expect("connect");
        *self.connected_to.borrow_mut() = t.peer_addr();
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        let res = t.write(data, from);
        self.got.borrow_mut().push((from, res));
    }
}

/// A port connected to `unspecified` (which names `peer`'s port) is sent 5 datagrams by
/// `peer` on `peer_ip`: all are delivered, from the peer the kernel connected to, which
/// `peer_addr` names; every echo is accepted and arrives.
fn connected_to_unspecified(peer_ip: &str, unspecified: &str) {
    init_logging();
    let mut r = reactor();
    let peer = util::client_on(peer_ip);
    let real = peer.local_addr().expect("peer address");
    let asked: SocketAddr = format!("{unspecified}:{}", real.port())
        .parse()
        .expect("an address");
    let (echo, connected_to, got) = ConnectedEcho::new(asked);
    let port = r
        .listen_udp_with(ListenOptions::new(0).interface(peer_ip), echo)
        .expect("listen");
    assert_eq!(
        *connected_to.borrow(),
        Some(real),
        "the peer the kernel chose"
    );
    preload(&peer, port.local_addr(), 5);
    drive(&mut r, "5 datagrams from the peer", |_| {
        got.borrow().len() == 5
    });
    let stats = r.port_stats(&port).expect("open");
    println!(
        "connected to {asked}, peer {:?}: got {:?}; {stats}",
        connected_to.borrow(),
        got.borrow()
    );
    for (from, res) in got.borrow().iter() {
        assert_eq!(*from, real);
        assert!(res.is_ok(), "echo to {from}: {res:?}");
    }
    assert_eq!(stats.not_from_peer, 0, "{stats}");
    for i in 0..5u32 {
        let (data, from) = drive_recv(&mut r, &peer);
        assert_eq!((number(&data), from), (i, port.local_addr()));
    }
}

/// Connecting to `0.0.0.0:p` connects the kernel to `127.0.0.1:p`; the port takes that as
/// its peer and delivers all its datagrams.
#[test]
fn a_port_connected_to_the_v4_unspecified_address_serves_the_peer_the_kernel_chose() {
    connected_to_unspecified("127.0.0.1", "0.0.0.0");
}

/// The same for `[::]:p`, which the kernel connects to `[::1]:p`.
#[test]
fn a_port_connected_to_the_v6_unspecified_address_serves_the_peer_the_kernel_chose() {
    connected_to_unspecified("::1", "[::]");
}

/// A port connected to a peer given with a scope id (`[::1%1]:p`, which the kernel takes)
/// delivers that peer's datagrams, whose `from` carries no scope id, and may write back to
/// that `from`: a scope id counts only where both addresses give one.
#[test]
fn a_port_connected_to_a_scoped_peer_writes_back_to_the_from_it_was_given() {
    init_logging();
    let mut r = reactor();
    let peer = util::client_on("::1");
    let pport = peer.local_addr().expect("peer address").port();
    let scoped: SocketAddr = format!("[::1%1]:{pport}").parse().expect("an address");
    let (echo, connected_to, got) = ConnectedEcho::new(scoped);
    let port = r
        .listen_udp_with(ListenOptions::new(0).interface("::1"), echo)
        .expect("listen");
    peer.send_to(b"hi", port.local_addr()).expect("send");
    drive(&mut r, "a datagram", |_| !got.borrow().is_empty());
    let g = got.borrow();
    println!(
        "connected to {scoped} (peer {:?}); got {:?}",
        connected_to.borrow(),
        g[0]
    );
    assert_eq!(g[0].0.port(), pport);
    assert!(
        g[0].1.is_ok(),
        "echo to the from of a delivered datagram: {:?}",
        g[0]
    );
    drop(g);
    let (data, from) = drive_recv(&mut r, &peer);
    assert_eq!((data.as_slice(), from), (&b"hi"[..], port.local_addr()));
}

/// A dual-stack port connected to a v4-mapped peer (`[::ffff:127.0.0.1]:p`) delivers that
/// peer's datagrams, from the mapped address, and may write back to them.
#[test]
fn a_dual_stack_port_connected_to_a_v4_mapped_peer_delivers_and_writes_back() {
    init_logging();
    let mut r = reactor();
    let peer = util::client();
    let mapped: SocketAddr = format!(
        "[::ffff:127.0.0.1]:{}",
        peer.local_addr().expect("peer address").port()
    )
    .parse()
    .expect("an address");
    let (echo, _, got) = ConnectedEcho::new(mapped);
    let port = r
        .listen_udp_with(ListenOptions::new(0).interface("::"), echo)
        .expect("listen");
    let to: SocketAddr = SocketAddr::from(([127, 0, 0, 1], port.local_addr().port()));
    peer.send_to(b"hi", to).expect("send");
    drive(&mut r, "delivery", |_| !got.borrow().is_empty());
    println!("got {:?}", got.borrow());
    assert_eq!(got.borrow()[0].0, mapped);
    assert!(got.borrow()[0].1.is_ok(), "{:?}", got.borrow());
    let (data, from) = drive_recv(&mut r, &peer);
    assert_eq!((data.as_slice(), from), (&b"hi"[..], to));
}

// ----- what the report hooks are told, and what they meet ---------------------------------

/// What a [`Probe`] saw.
#[derive(Default)]
struct ProbeLog {
    got: Vec<(Vec<u8>, SocketAddr)>,
    errors: Vec<(SocketAddr, String)>,
    refused: u32,
    stats_at_stop: Option<PortStats>,
}

/// Records every datagram, error_received, connection_refused, and the counters at stop.
struct Probe {
    log: Rc<RefCell<ProbeLog>>,
}

impl Probe {
    fn new() -> (Probe, Rc<RefCell<ProbeLog>>) {
        let log = Rc::new(RefCell::new(ProbeLog::default()));
        (Probe { log: log.clone() }, log)
    }
}

impl DatagramProtocol for Probe {
    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        self.log.borrow_mut().got.push((data.to_vec(), from));
    }

    fn error_received(&mut self, _: &mut UdpTransport<'_>, e: &Error, addr: SocketAddr) {
        self.log.borrow_mut().errors.push((addr, e.to_string()));
    }

    fn connection_refused(&mut self, _: &mut UdpTransport<'_>) {
        self.log.borrow_mut().refused += 1;
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.log.borrow_mut().stats_at_stop = Some(t.stats());
    }
}

/// Listens with `options` for a [`Probe`]; returns the port and what it sees.
fn listen_probe(
    r: &mut Reactor,
    options: ListenOptions,
) -> (ListeningPort<Probe>, Rc<RefCell<ProbeLog>>) {
    let (probe, log) = Probe::new();
    let port = r.listen_udp_with(options, probe).expect("listen");
    (port, log)
}

/// Asserts that `what` (a write or a send, which returned `result`) failed with its own
/// `Error::Send`, naming `to`, for OS error `errno`.
#[track_caller]
fn assert_send_error(what: &str, result: &Result<(), Error>, to: SocketAddr, errno: i32) {
    match result {
        Err(Error::Send { addr, source }) => {
            assert_eq!(*addr, to);
            assert_eq!(source.raw_os_error(), Some(errno), "{source}");
        }
        other => panic!("{what} returned {other:?}, not Error::Send"),
    }
}

/// Stops `port` and returns its counters as stop_protocol saw them (what was still to be
/// reported then is counted in `errors_unreported` by that time).
fn stop_and_count(
    r: &mut Reactor,
    port: &ListeningPort<Probe>,
    log: &Rc<RefCell<ProbeLog>>,
) -> PortStats {
    assert!(r.stop_listening(port));
    drive(r, "stop_protocol", |_| log.borrow().stats_at_stop.is_some());
    log.borrow().stats_at_stop.expect("checked by drive")
}

/// What [`ErrorChain`] saw.
#[derive(Default)]
struct ChainLog {
    errors: Vec<(SocketAddr, String)>,
    second: Option<Result<(), Error>>,
    stats_at_stop: Option<PortStats>,
}

/// Writes to a destination the kernel refuses (port 0: `EINVAL`) from datagram_received,
/// and once more from the error_received that reports it.
struct ErrorChain {
    log: Rc<RefCell<ChainLog>>,
}

impl DatagramProtocol for ErrorChain {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, _data: &[u8], _from: SocketAddr) {
        // Gathered with the batch's other writes: its failure comes from the sendmmsg
        // after the batch and goes to error_received.
        t.write(b"first", "127.0.0.1:0")
            .expect("write accepted (gathered)");
    }

    fn error_received(&mut self, t: &mut UdpTransport<'_>, e: &Error, addr: SocketAddr) {
        self.log.borrow_mut().errors.push((addr, e.to_string()));
        if self.log.borrow().second.is_none() {
            // Sent at once: a report hook's write is not gathered.
            let res = t.write(b"second", "127.0.0.1:0");
            self.log.borrow_mut().second = Some(res);
        }
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.log.borrow_mut().stats_at_stop = Some(t.stats());
    }
}

/// A write made in error_received (as in the other report hooks: connection_refused,
/// pause_producing, resume_producing) is sent at once, not gathered, so `write` itself
/// returns its failure (`Error::Send`); error_received is called once, for the gathered
/// write's failure, and nothing is left to report when the port closes.
#[test]
fn a_write_made_in_error_received_is_sent_at_once_and_returns_its_own_failure() {
    init_logging();
    let mut r = reactor();
    let log = Rc::new(RefCell::new(ChainLog::default()));
    let port = r
        .listen_udp_with(loopback(), ErrorChain { log: log.clone() })
        .expect("listen");
    let client = util::client();
    client.send_to(b"go", port.local_addr()).expect("send");
    drive(&mut r, "error_received", |_| {
        !log.borrow().errors.is_empty()
    });
    assert!(r.stop_listening(&port));
    drive(&mut r, "stop_protocol", |_| {
        log.borrow().stats_at_stop.is_some()
    });
    let l = log.borrow();
    let stats = l.stats_at_stop.expect("checked by drive");
    println!(
        "error_received: {:?}; the second write returned {:?}; at stop: {stats}",
        l.errors, l.second
    );
    let zero: SocketAddr = "127.0.0.1:0".parse().expect("an address");
    assert_eq!(l.errors.len(), 1, "error_received once: {:?}", l.errors);
    assert_eq!(l.errors[0].0, zero);
    match &l.second {
        Some(Err(Error::Send { addr, .. })) => assert_eq!(*addr, zero),
        other => panic!("the write in error_received returned {other:?}, not Error::Send"),
    }
    assert_eq!(stats.send_errors, 2, "both writes failed: {stats}");
    assert_eq!(stats.errors_unreported, 0, "{stats}");
}

/// A dual-stack port's error_received for a datagram written to a v4-mapped address names
/// that address as it was written.
#[test]
fn a_dual_stack_ports_error_received_names_the_v4_mapped_destination_as_written() {
    init_logging();
    let mut r = reactor();
    let (port, log) = listen_probe(&mut r, ListenOptions::new(0).interface("::"));
    let closed = util::client().local_addr().expect("an address");
    let mapped: SocketAddr = format!("[::ffff:127.0.0.1]:{}", closed.port())
        .parse()
        .expect("an address");
    r.with_port(&port, |_, t| t.write(b"x", mapped))
        .expect("open")
        .expect("write");
    drive(&mut r, "error_received", |_| {
        !log.borrow().errors.is_empty()
    });
    let errors = log.borrow().errors.clone();
    println!("error_received: {errors:?}");
    assert_eq!(errors[0].0, mapped);
}

/// An adopted socket is served as connected only when the kernel names its peer. One
/// connected to port 0 (Linux takes it, then names no peer and delivers datagrams from any
/// port of that host) is served as an unconnected port: it delivers its datagrams, writes
/// back to their `from`, and `send` without an address says `NotConnected`.
#[test]
fn an_adopted_socket_connected_to_port_zero_is_served_unconnected() {
    init_logging();
    let mut r = reactor();
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.connect("127.0.0.1:0")
        .expect("Linux takes a connect to port 0");
    println!("the kernel's peer: {:?}", s.peer_addr());
    let (probe, log) = Probe::new();
    let port = r.adopt_socket(&s, probe).expect("adopt");
    let client = util::client();
    client.send_to(b"hi", port.local_addr()).expect("send");
    drive(&mut r, "the datagram", |_| !log.borrow().got.is_empty());
    let from = log.borrow().got[0].1;
    assert_eq!(from, client.local_addr().expect("client address"));
    let (peer, send, reply) = r
        .with_port(&port, |_, t| {
            (t.peer_addr(), t.send(b"x"), t.write(b"back", from))
        })
        .expect("open");
    let stats = r.port_stats(&port).expect("open");
    println!(
        "got {:?}; peer {peer:?}; send: {send:?}; write: {reply:?}; {stats}",
        log.borrow().got
    );
    assert_eq!(peer, None);
    assert!(matches!(send, Err(Error::NotConnected)), "{send:?}");
    assert!(reply.is_ok(), "{reply:?}");
    assert_eq!(stats.not_from_peer, 0, "{stats}");
    let (data, _) = drive_recv(&mut r, &client);
    assert_eq!(data, b"back");
}

// ----- a port opened while the reactor stops ---------------------------------------------

/// The port a stop_protocol opened, and its events.
type Opened = Rc<RefCell<Option<(ListeningPort<util::Recorder>, util::Events)>>>;

/// Opens another port (a [`util::Recorder`]) from stop_protocol.
struct OpensInStop {
    opened: Opened,
}

impl DatagramProtocol for OpensInStop {
    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        let (rec, events) = util::Recorder::new();
        let p = t
            .reactor()
            .listen_udp_with(loopback(), rec)
            .expect("listen from stop_protocol");
        *self.opened.borrow_mut() = Some((p, events));
    }
}

/// `Reactor::stop` closes every port before `run` returns (each stop_protocol runs),
/// including a port opened by a stop_protocol of that teardown.
#[test]
fn a_port_opened_by_a_stop_protocol_during_the_reactors_stop_is_closed_by_that_stop() {
    init_logging();
    let mut r = reactor();
    let opened = Rc::new(RefCell::new(None));
    r.listen_udp_with(
        loopback(),
        OpensInStop {
            opened: opened.clone(),
        },
    )
    .expect("listen");
    // Asked for before `run`: its first turn closes the ports and returns.
    r.stop();
    r.run().expect("run");
    let o = opened.borrow();
    let (p, events) = o.as_ref().expect("opened in stop_protocol");
    println!(
        "after run returned: {} ports, the new one listening: {}, its events {:?}",
        r.port_count(),
        r.is_listening(p),
        events.borrow()
    );
    assert_eq!(r.port_count(), 0, "every port closed by the stop");
    assert!(!r.is_listening(p));
    assert_eq!(events.borrow().last(), Some(&util::Event::Stop));
}

// ----- one reactor buffer for ports of different sizes -----------------------------------

mod biggest {
    use std::alloc::{GlobalAlloc, Layout, System};
    use std::cell::Cell;

    thread_local! {
        /// The largest allocation this thread made since it was last set to 0.
        pub static LARGEST: Cell<usize> = const { Cell::new(0) };
    }

    /// The system allocator, noting each thread's largest allocation.
    pub struct Tracking;

    // SAFETY: every call is passed on to the system allocator unchanged.
    unsafe impl GlobalAlloc for Tracking {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
            // SAFETY: as the caller promised us.
            unsafe { System.alloc(layout) }
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            let _ = LARGEST.try_with(|l| l.set(l.get().max(layout.size())));
            // SAFETY: as the caller promised us.
            unsafe { System.alloc_zeroed(layout) }
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: as the caller promised us.
            unsafe { System.dealloc(ptr, layout) }
        }
    }
}

#[global_allocator]
static ALLOC: biggest::Tracking = biggest::Tracking;

/// The reactor's receive buffer, shared by its ports, holds what the most demanding port
/// reads in one call (its batch size times its max packet size), not the largest batch
/// size of any port times the largest max packet size of any port: a port reading 1024
/// datagrams of 64 bytes and one reading 1 of 65535 bytes (64 KiB each) need no buffer
/// near 1024 x 65535 bytes (64 MiB).
#[test]
fn the_receive_buffer_fits_the_most_demanding_port_not_a_product_of_two_ports() {
    init_logging();
    let mut r = reactor();
    let count = |n: &Rc<RefCell<u32>>| {
        let n = n.clone();
        twine::from_fn(move |_, _, _| *n.borrow_mut() += 1)
    };
    let (small_got, big_got) = (Rc::new(RefCell::new(0)), Rc::new(RefCell::new(0)));
    let small = r
        .listen_udp_with(
            loopback().batch_size(1024).max_packet_size(64),
            count(&small_got),
        )
        .expect("listen");
    let big = r
        .listen_udp_with(
            loopback().batch_size(1).max_packet_size(65535),
            count(&big_got),
        )
        .expect("listen");
    let c = util::client();
    c.send_to(b"a", small.local_addr()).expect("send");
    drive(&mut r, "the small port's datagram", |_| {
        *small_got.borrow() == 1
    });
    biggest::LARGEST.with(|l| l.set(0));
    c.send_to(b"b", big.local_addr()).expect("send");
    drive(&mut r, "the big port's datagram", |_| {
        *big_got.borrow() == 1
    });
    let largest = biggest::LARGEST.with(|l| l.get());
    println!("largest single allocation serving the big port: {largest} bytes");
    assert!(
        largest <= 4 << 20,
        "the receive buffer took {largest} bytes for ports needing 64 KiB each"
    );
}

// ----- in network namespaces -------------------------------------------------------------

/// This process's descriptor for the socket bound to `local`: the port's own socket,
/// which the reactor shares, so that a test can wait for the kernel to hold an error on it
/// without reading the error.
fn socket_fd(local: SocketAddr) -> RawFd {
    let fds: Vec<RawFd> = std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|e| e.ok()?.file_name().to_str()?.parse().ok())
        .collect();
    for fd in fds {
        // SAFETY: only a child run calls this, a single test in its process, so that no
        // other thread closes a descriptor while it is looked at here.
        let sock = unsafe { BorrowedFd::borrow_raw(fd) };
        let bound = socket2::SockRef::from(&sock)
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket());
        if bound == Some(local) {
            return fd;
        }
    }
    panic!("no socket of this process is bound to {local}");
}

/// Waits (at most [`DEADLINE`]) until the kernel holds an error on `fd`'s socket (an ICMP
/// error has come back), without reading it.
#[track_caller]
fn wait_for_socket_error(fd: RawFd) {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let mut p = libc::pollfd {
            fd,
            events: 0,
            revents: 0,
        };
        // SAFETY: one valid pollfd.
        let n = unsafe { libc::poll(&mut p, 1, left.as_millis() as libc::c_int) };
        if n > 0 && p.revents & libc::POLLERR != 0 {
            return;
        }
        assert!(
            n >= 0 || std::io::Error::last_os_error().kind() == std::io::ErrorKind::Interrupted,
            "poll: {}",
            std::io::Error::last_os_error()
        );
        assert!(
            !left.is_zero(),
            "no error on the socket after {DEADLINE:?} (revents {:#x})",
            p.revents
        );
    }
}

/// Makes a namespace with only `lo` up (no route off the host) and runs the ignored test
/// `inner` in it; fails where the namespace cannot be made.
#[track_caller]
fn in_bare_netns(tag: &str, inner: &str) {
    let ns =
        Netns::create(tag).unwrap_or_else(|why| panic!("{inner} needs a network namespace: {why}"));
    ns.run_inner(inner, CHILD_FLAG);
}

/// Makes two namespaces, `a` (twine) and `router`, joined by a veth pair (10.77.0.1 and
/// .2); the router forwards, and answers for 10.88.0.0/16 with ICMP "administratively
/// prohibited" (a host unreachable, `EHOSTUNREACH`). Runs the ignored test `inner` in `a`;
/// fails where the namespaces cannot be made.
#[track_caller]
fn behind_prohibiting_router(inner: &str) {
    use util::process::{ip, run_to_end};
    let need = |step: Result<(), String>| {
        if let Err(why) = step {
            panic!("{inner} needs two network namespaces and a veth pair: {why}");
        }
    };
    let made = Netns::create("icmp-a").and_then(|a| Ok((a, Netns::create("icmp-r")?)));
    let (a, router) =
        made.unwrap_or_else(|why| panic!("{inner} needs two network namespaces: {why}"));
    need(ip(&[
        "link",
        "add",
        "icmpva",
        "netns",
        &a.name,
        "type",
        "veth",
        "peer",
        "name",
        "icmpvb",
        "netns",
        &router.name,
    ]));
    for (ns, args) in [
        (&a, &["addr", "add", "10.77.0.1/24", "dev", "icmpva"][..]),
        (&a, &["link", "set", "icmpva", "up"]),
        (&a, &["route", "add", "default", "via", "10.77.0.2"]),
        (&router, &["addr", "add", "10.77.0.2/24", "dev", "icmpvb"]),
        (&router, &["link", "set", "icmpvb", "up"]),
        (&router, &["route", "add", "prohibit", "10.88.0.0/16"]),
    ] {
        need(ns.ip(args));
    }
    // The router's own /proc/sys/net, as `ip netns exec` shows it to its command.
    let mut cmd = std::process::Command::new("ip");
    cmd.args(["netns", "exec", &router.name, "sh", "-c"])
        .arg("echo 1 > /proc/sys/net/ipv4/ip_forward");
    need(
        run_to_end(cmd, Duration::from_secs(10)).and_then(|(st, _, err)| {
            if st.success() {
                Ok(())
            } else {
                Err(format!("turning forwarding on in the router: {st}: {err}"))
            }
        }),
    );
    a.run_inner(inner, CHILD_FLAG);
}

/// What [`ErrWriter`] saw, in order.
#[derive(Default)]
struct FlowLog {
    events: Vec<String>,
}

/// error_received writes 40 datagrams of 1000 bytes (well past the high mark of 10000) to
/// `sink`; the flow-control hooks record themselves.
struct ErrWriter {
    sink: SocketAddr,
    log: Rc<RefCell<FlowLog>>,
}

impl DatagramProtocol for ErrWriter {
    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}

    fn error_received(&mut self, t: &mut UdpTransport<'_>, e: &Error, addr: SocketAddr) {
        self.log
            .borrow_mut()
            .events
            .push(format!("error_received {addr}: {e}"));
        for _ in 0..40 {
            if t.write(&[7u8; 1000], self.sink).is_err() {
                break;
            }
        }
        self.log.borrow_mut().events.push(format!(
            "error_received wrote: paused={} size={}",
            t.is_write_paused(),
            t.write_buffer_size()
        ));
    }

    fn pause_producing(&mut self, t: &mut UdpTransport<'_>) {
        self.log
            .borrow_mut()
            .events
            .push(format!("pause_producing size={}", t.write_buffer_size()));
    }

    fn resume_producing(&mut self, t: &mut UdpTransport<'_>) {
        self.log
            .borrow_mut()
            .events
            .push(format!("resume_producing size={}", t.write_buffer_size()));
    }
}

/// pause_producing runs right after the hook whose writes crossed the high mark, error
/// received among them: when errors met in `with_port` are reported as it returns, the
/// error_received whose writes cross the mark is followed by pause_producing before
/// `with_port` returns (and resume_producing once the queue drains).
#[test]
#[ignore = "needs root and network namespaces (ip netns); run by .ci/run, or: cargo test --test attacks -- --ignored"]
fn pause_producing_follows_the_error_received_whose_writes_crossed_the_high_mark() {
    Netns::run_rate_limited("flow", "inner_pause_follows_error_received", CHILD_FLAG);
}

/// Not a test of its own: the part of
/// `pause_producing_follows_the_error_received_whose_writes_crossed_the_high_mark` run
/// inside the namespace.
#[test]
#[ignore = "runs inside a network namespace, started by pause_producing_follows_the_error_received_whose_writes_crossed_the_high_mark"]
fn inner_pause_follows_error_received() {
    let Some(mut r) = child_reactor() else {
        return;
    };
    let sink = UdpSocket::bind("127.0.0.1:0").expect("bind sink");
    let closed = util::client().local_addr().expect("an address");
    let log = Rc::new(RefCell::new(FlowLog::default()));
    let port = r
        .listen_udp_with(
            loopback()
                .send_buffer_size(4096)
                .send_queue_limit(200_000)
                .write_buffer_limits(10_000, 2_000),
            ErrWriter {
                sink: sink.local_addr().expect("sink address"),
                log: log.clone(),
            },
        )
        .expect("listen");
    let fd = socket_fd(port.local_addr());
    r.with_port(&port, |_, t| {
        t.write(b"x", closed)
            .expect("first write to the closed port");
        wait_for_socket_error(fd);
        // Meets the refusal of "x": the error queue is read and the error kept, to be
        // reported as with_port returns.
        t.write(b"y", closed)
            .expect("second write (the earlier refusal is not its own)");
    })
    .expect("open");
    let after_with_port = log.borrow().events.clone();
    println!("after with_port returned: {after_with_port:#?}");
    let wrote = after_with_port
        .iter()
        .position(|e| e.contains("paused=true"))
        .unwrap_or_else(|| panic!("error_received did not cross the mark: {after_with_port:?}"));
    assert!(
        after_with_port[wrote..]
            .iter()
            .any(|e| e.starts_with("pause_producing")),
        "no pause_producing after the error_received that crossed the mark: {after_with_port:?}"
    );
    drive(&mut r, "resume_producing", |_| {
        log.borrow()
            .events
            .iter()
            .any(|e| e.starts_with("resume_producing"))
    });
    println!("after the queue drained: {:#?}", log.borrow().events);
    println!("INNER-DONE");
}

/// A write to an address with no route fails at once (`ENETUNREACH`, the call's own
/// error, returned as `Error::Send`); no ICMP error is counted for it and error_received
/// is not called.
#[test]
#[ignore = "needs root and network namespaces (ip netns); run by .ci/run, or: cargo test --test attacks -- --ignored"]
fn a_write_with_no_route_fails_at_once_and_counts_no_icmp_error() {
    in_bare_netns("noroute", "inner_write_with_no_route");
}

/// Not a test of its own: the part of
/// `a_write_with_no_route_fails_at_once_and_counts_no_icmp_error` run inside the
/// namespace.
#[test]
#[ignore = "runs inside a network namespace, started by a_write_with_no_route_fails_at_once_and_counts_no_icmp_error"]
fn inner_write_with_no_route() {
    let Some(mut r) = child_reactor() else {
        return;
    };
    let (port, log) = listen_probe(&mut r, ListenOptions::new(0));
    let nowhere: SocketAddr = "10.123.45.67:9".parse().expect("an address");
    let direct = r
        .with_port(&port, |_, t| t.write(b"x", nowhere))
        .expect("open");
    let after = r.port_stats(&port).expect("open");
    println!("the write: {direct:?}; {after}");
    assert_send_error("the write", &direct, nowhere, libc::ENETUNREACH);
    let stats = stop_and_count(&mut r, &port, &log);
    println!(
        "at stop: {stats}; error_received: {:?}",
        log.borrow().errors
    );
    assert_eq!(stats.send_errors, 1, "{stats}");
    assert_eq!(stats.datagrams_sent, 0, "{stats}");
    assert_eq!(
        (stats.unreachable, stats.errors_unreported),
        (0, 0),
        "the write's own error counted as ICMP errors: {stats}"
    );
    assert!(log.borrow().errors.is_empty(), "{:?}", log.borrow().errors);
    println!("INNER-DONE");
}

/// On a connected port the error queue is off (as in Twisted), so an ICMP host unreachable
/// for an earlier datagram comes back as the next send's own `Error::Send`
/// (`EHOSTUNREACH`), counted in `send_errors`; no hook is told. The port goes on: once its
/// peer is reachable, its next send reaches the peer and the peer's reply is delivered.
#[test]
#[ignore = "needs root and network namespaces (ip netns); run by .ci/run, or: cargo test --test attacks -- --ignored"]
fn a_connected_ports_host_unreachable_comes_back_as_the_next_sends_error() {
    behind_prohibiting_router("inner_connected_host_unreachable");
}

/// Not a test of its own: the part of
/// `a_connected_ports_host_unreachable_comes_back_as_the_next_sends_error` run inside
/// namespace `a`.
#[test]
#[ignore = "runs inside a network namespace, started by a_connected_ports_host_unreachable_comes_back_as_the_next_sends_error"]
fn inner_connected_host_unreachable() {
    let Some(mut r) = child_reactor() else {
        return;
    };
    let peer: SocketAddr = "10.88.0.1:9".parse().expect("an address");
    let (port, log) = listen_probe(&mut r, ListenOptions::new(0));
    let (local, first) = r
        .with_port(&port, |_, t| {
            t.connect(peer).expect("connect");
            (t.local_addr(), t.send(b"1"))
        })
        .expect("open");
    first.expect("the first send");
    // The router's ICMP error for "1" is held by the kernel for the socket's next call.
    wait_for_socket_error(socket_fd(local));
    let second = r.with_port(&port, |_, t| t.send(b"2")).expect("open");
    let after = r.port_stats(&port).expect("open");
    println!("the second send: {second:?}; {after}");
    assert_send_error("the second send", &second, peer, libc::EHOSTUNREACH);
    assert_eq!((after.send_errors, after.datagrams_sent), (1, 1), "{after}");

    // The peer's host comes up here: its address on this namespace's lo.
    util::process::ip(&["addr", "add", "10.88.0.1/32", "dev", "lo"])
        .expect("add the peer's address");
    let remote = UdpSocket::bind(peer).expect("bind the peer");
    remote
        .set_read_timeout(Some(DEADLINE))
        .expect("read timeout");
    let third = r.with_port(&port, |_, t| t.send(b"3")).expect("open");
    println!("the third send: {third:?}");
    third.expect("the third send");
    let mut buf = [0u8; 16];
    let (n, from) = remote.recv_from(&mut buf).expect("the peer receives");
    assert_eq!((&buf[..n], from), (&b"3"[..], local));
    remote.send_to(b"reply", local).expect("the peer replies");
    drive(&mut r, "the peer's reply", |_| !log.borrow().got.is_empty());
    let stats = stop_and_count(&mut r, &port, &log);
    let l = log.borrow();
    println!(
        "got {:?}; refused hooks {}, error_received {:?}; at stop: {stats}",
        l.got, l.refused, l.errors
    );
    assert_eq!(l.got, vec![(b"reply".to_vec(), peer)]);
    assert_eq!((l.refused, l.errors.len()), (0, 0), "{:?}", l.errors);
    assert_eq!(stats.send_errors, 1, "{stats}");
    assert_eq!(stats.datagrams_sent, 2, "{stats}");
    assert_eq!(stats.datagrams_received, 1, "{stats}");
    assert_eq!(stats.errors_unreported, 0, "{stats}");
    assert_eq!(stats.panics, 0, "{stats}");
    println!("INNER-DONE");
}
