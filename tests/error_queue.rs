//! The kernel's error queue is read, whoever meets its errors, and nothing is reported
//! after `stop_protocol`.
//!
//! An unconnected port gets ICMP errors through its error queue (`IP_RECVERR`): a reply to
//! a client that has gone (bound a socket, sent a request, closed it) hits a closed port
//! and comes back as port unreachable. On loopback the error is raised while the reply is
//! being sent, so the next message of the same `sendmmsg` (or the next call) meets it and
//! consumes it. Every entry must still be read: unread entries are charged to the socket's
//! receive buffer, and once it is full the kernel drops new datagrams. Each error is passed
//! to `error_received` naming its destination, or counted in `PortStats::errors_unreported`,
//! and never blamed on another destination.
//!
//! The tests share ports across thousands of short-lived sockets, so they run one at a
//! time.

mod util;

use std::cell::RefCell;
use std::collections::BTreeMap;
use std::mem::MaybeUninit;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::{Mutex, MutexGuard};
use std::time::Duration;

use twine::{DatagramProtocol, Error, ListeningPort, PortStats, Reactor, UdpTransport};
use util::{DEADLINE, collect_then_linger, drive_for, init_logging, logs_about, loopback, reactor};

/// One hook call, as a [`Probe`] saw it.
#[derive(Debug, Clone, PartialEq)]
enum Hook {
    Start,
    Datagram(SocketAddr),
    /// `error_received` with `Error::Unreachable { addr: named, .. }` for `addr`.
    Unreachable {
        addr: SocketAddr,
        named: SocketAddr,
    },
    /// `error_received` with any other error.
    OtherError(String, SocketAddr),
    Refused,
    Paused,
    Resumed,
    Stop,
}

type Hooks = Rc<RefCell<Vec<Hook>>>;

/// Records every hook call; echoes each datagram if `echo`. In `start_protocol` it
/// connects to `connect_to`, if set; in `stop_protocol` it writes "bye" to each address in
/// `bye_to` (or, connected, sends it `bye_sends` times), noting what each write returned.
#[derive(Default)]
struct Probe {
    hooks: Hooks,
    echo: bool,
    connect_to: Option<SocketAddr>,
    bye_to: Rc<RefCell<Vec<SocketAddr>>>,
    bye_sends: u32,
    bye_results: Rc<RefCell<Vec<String>>>,
}

impl Probe {
    fn echo() -> (Probe, Hooks) {
        let p = Probe {
            echo: true,
            ..Probe::default()
        };
        let hooks = p.hooks.clone();
        (p, hooks)
    }

    fn push(&self, hook: Hook) {
        self.hooks.borrow_mut().push(hook);
    }
}

impl DatagramProtocol for Probe {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.push(Hook::Start);
        if let Some(peer) = self.connect_to {
            t.connect(peer).expect("connect");
        }
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.push(Hook::Stop);
        for to in self.bye_to.borrow().iter() {
            let result = t.write(b"bye", *to);
            self.bye_results.borrow_mut().push(format!("{result:?}"));
        }
        for _ in 0..self.bye_sends {
            let result = t.send(b"bye");
            self.bye_results.borrow_mut().push(format!("{result:?}"));
        }
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        self.push(Hook::Datagram(from));
        if self.echo {
            t.write(data, from).expect("echo write");
        }
    }

    fn error_received(&mut self, _: &mut UdpTransport<'_>, error: &Error, addr: SocketAddr) {
        self.push(match error {
            Error::Unreachable { addr: named, .. } => Hook::Unreachable {
                addr,
                named: *named,
            },
            other => Hook::OtherError(format!("{other:?}"), addr),
        });
    }

    fn connection_refused(&mut self, _: &mut UdpTransport<'_>) {
        self.push(Hook::Refused);
    }

    fn pause_producing(&mut self, _: &mut UdpTransport<'_>) {
        self.push(Hook::Paused);
    }

    fn resume_producing(&mut self, _: &mut UdpTransport<'_>) {
        self.push(Hook::Resumed);
    }

    fn log_prefix(&self) -> &str {
        "ErrorQueueProbe"
    }
}

/// One test at a time (see the module's docs).
fn serial() -> MutexGuard<'static, ()> {
    static SERIAL: Mutex<()> = Mutex::new(());
    SERIAL.lock().unwrap_or_else(|e| e.into_inner())
}

/// The `error_received` calls among `hooks`: (addr passed, addr the error names), and
/// the other errors' descriptions.
fn errors(hooks: &Hooks) -> (Vec<(SocketAddr, SocketAddr)>, Vec<String>) {
    let (mut unreachable, mut other) = (Vec::new(), Vec::new());
    for h in hooks.borrow().iter() {
        match h {
            Hook::Unreachable { addr, named } => unreachable.push((*addr, *named)),
            Hook::OtherError(e, addr) => other.push(format!("{e} for {addr}")),
            _ => {}
        }
    }
    (unreachable, other)
}

fn error_count(hooks: &Hooks) -> usize {
    hooks
        .borrow()
        .iter()
        .filter(|h| matches!(h, Hook::Unreachable { .. } | Hook::OtherError(..)))
        .count()
}

fn datagram_count(hooks: &Hooks) -> usize {
    hooks
        .borrow()
        .iter()
        .filter(|h| matches!(h, Hook::Datagram(_)))
        .count()
}

/// Clients that each send one request and then go away together, when the group is
/// dropped: the replies to them meet closed ports. Their sockets stay bound until then,
/// so no two share a port. (A port freed and bound again by the next client would get two
/// replies; two of one length in a row go out as one segmented message, and a closed
/// port answers that with one ICMP error, not two.)
#[derive(Default)]
struct Departing(Vec<UdpSocket>);

impl Departing {
    /// Sends `data` to `server` from a new socket on 127.0.0.1; returns its address.
    fn send(&mut self, server: SocketAddr, data: &[u8]) -> SocketAddr {
        let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
        s.send_to(data, server).expect("send");
        let addr = s.local_addr().expect("addr");
        self.0.push(s);
        addr
    }
}

/// A non-blocking client on 127.0.0.1 that stays.
fn live_client() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    s.set_nonblocking(true).expect("nonblocking");
    s
}

/// Reads every datagram waiting on a non-blocking socket.
fn drain(s: &UdpSocket, into: &mut Vec<Vec<u8>>) {
    let mut buf = [0u8; 2048];
    while let Ok(n) = s.recv(&mut buf) {
        into.push(buf[..n].to_vec());
    }
}

/// Entries left in the kernel's error queue of `socket` (read, and so removed).
fn error_queue_entries(socket: &UdpSocket) -> usize {
    let sock = socket2::SockRef::from(socket);
    let mut buf = [MaybeUninit::<u8>::uninit(); 2048];
    let mut entries = 0;
    while entries < 100_000
        && sock
            .recv_with_flags(&mut buf, libc::MSG_ERRQUEUE | libc::MSG_DONTWAIT)
            .is_ok()
    {
        entries += 1;
    }
    entries
}

fn stats<P>(reactor: &Reactor, port: &ListeningPort<P>) -> PortStats {
    reactor.port_stats(port).expect("port open")
}

fn sorted(mut v: Vec<SocketAddr>) -> Vec<SocketAddr> {
    v.sort();
    v
}

/// Ten clients send a request each and leave before the reactor turns, then one that
/// stays sends its own: the eleven replies go out in one batch, where each refusal is met
/// (and consumed) by the next message of the same `sendmmsg`. Each departed client is
/// still named to `error_received` once, the one that stayed gets its reply, and nothing
/// is left in the kernel's error queue.
#[test]
fn replies_to_departed_clients_in_one_batch_are_each_reported() {
    let _serial = serial();
    init_logging();
    let mut reactor = reactor();
    // The port serves a duplicate of this socket: reading its error queue reads the port's.
    let keep = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (p, hooks) = Probe::echo();
    let port = reactor.adopt_socket(&keep, p).expect("adopt");
    let server = port.local_addr();
    let mut departing = Departing::default();
    let gone: Vec<SocketAddr> = (0..10)
        .map(|i| departing.send(server, format!("request {i}").as_bytes()))
        .collect();
    drop(departing);
    let stays = live_client();
    stays.send_to(b"last request", server).expect("send");
    let mut replies = Vec::new();
    reactor
        .run_until(DEADLINE, |_| {
            drain(&stays, &mut replies);
            !replies.is_empty() && error_count(&hooks) >= gone.len()
        })
        .expect("turns");
    // More errors, if any were left, would come in now.
    drive_for(&mut reactor, Duration::from_millis(200));
    drain(&stays, &mut replies);
    let stats = stats(&reactor, &port);
    let left = error_queue_entries(&keep);
    let (unreachable, other) = errors(&hooks);
    println!(
        "received {}, replies to the client that stayed {}, error_received {} ({} other), \
         left in the error queue {left}; {stats}",
        datagram_count(&hooks),
        replies.len(),
        unreachable.len(),
        other.len()
    );
    assert_eq!(datagram_count(&hooks), 11);
    assert_eq!(replies, [b"last request".to_vec()]);
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(
        unreachable.len(),
        10,
        "error_received calls for 10 departed clients: {unreachable:?}"
    );
    for (addr, named) in &unreachable {
        assert_eq!(
            addr, named,
            "error_received's address is the one the error names"
        );
    }
    let named = sorted(unreachable.iter().map(|(a, _)| *a).collect());
    assert_eq!(named, sorted(gone), "each departed client named once");
    assert_eq!(left, 0, "entries left in the kernel's error queue");
    assert_eq!(
        (stats.unreachable, stats.errors_unreported),
        (10, 0),
        "{stats:?}"
    );
    assert_eq!(stats.datagrams_sent, 11, "{stats:?}");
}

/// An echo server whose clients alternate between ones that stay and ones that leave
/// before their reply (4,800 of each, a batch of 32 requests at a time): every client that
/// stays gets its reply, every request is delivered or counted as dropped by the kernel,
/// and every error is reported or counted.
#[test]
fn live_clients_get_every_reply_among_departed_ones() {
    let _serial = serial();
    init_logging();
    const PAIRS: usize = 4800;
    const PER_ROUND: usize = 16;
    let mut reactor = reactor();
    let (p, hooks) = Probe::echo();
    let port = util::listen_loopback(&mut reactor, p);
    let server = port.local_addr();
    let live: Vec<UdpSocket> = (0..PER_ROUND).map(|_| live_client()).collect();
    let mut replies = Vec::new();
    let mut settled = true;
    for round in 0..PAIRS / PER_ROUND {
        let mut departing = Departing::default();
        for (j, client) in live.iter().enumerate() {
            let seq = round * PER_ROUND + j;
            departing.send(server, format!("gone {seq}").as_bytes());
            client
                .send_to(format!("live {seq}").as_bytes(), server)
                .expect("send");
        }
        drop(departing);
        let sent = ((round + 1) * PER_ROUND * 2) as u64;
        settled = reactor
            .run_until(DEADLINE, |r| {
                for c in &live {
                    drain(c, &mut replies);
                }
                let s = r.port_stats(&port).expect("open");
                s.datagrams_received + s.kernel_dropped >= sent
            })
            .expect("turns");
        if !settled {
            break;
        }
    }
    reactor
        .run_until(DEADLINE, |_| {
            for c in &live {
                drain(c, &mut replies);
            }
            replies.len() >= PAIRS
        })
        .expect("turns");
    drive_for(&mut reactor, Duration::from_millis(100));
    for c in &live {
        drain(c, &mut replies);
    }
    let stats = stats(&reactor, &port);
    let (unreachable, other) = errors(&hooks);
    println!(
        "live clients got {} of {PAIRS} replies; error_received {} ({} other); {stats}",
        replies.len(),
        unreachable.len(),
        other.len()
    );
    assert!(settled, "the server never read every request: {stats:?}");
    assert_eq!(
        stats.datagrams_received + stats.kernel_dropped,
        2 * PAIRS as u64,
        "every request delivered or counted as dropped: {stats:?}"
    );
    let mut got: Vec<String> = replies
        .iter()
        .map(|r| String::from_utf8_lossy(r).into_owned())
        .collect();
    got.sort();
    got.dedup();
    assert_eq!(got.len(), replies.len(), "a reply came twice");
    assert_eq!(replies.len(), PAIRS, "replies to the clients that stayed");
    assert_eq!(stats.kernel_dropped, 0, "{stats:?}");
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(stats.datagrams_sent, 2 * PAIRS as u64, "{stats:?}");
    assert_eq!(stats.unreachable, PAIRS as u64, "{stats:?}");
    assert_eq!(
        unreachable.len() as u64 + stats.errors_unreported,
        stats.unreachable,
        "each error reported or counted: {stats:?}"
    );
}

/// After 240 clients have left before their replies (15 at a time, each batch ending
/// with a request from a client that stays, so that every refusal is consumed inside
/// `sendmmsg`), a burst of 64 requests is delivered whole: the errors did not stay behind
/// in the socket's receive buffer.
#[test]
fn a_burst_after_many_departed_clients_is_fully_delivered() {
    let _serial = serial();
    init_logging();
    const ROUNDS: usize = 16;
    const GONE_PER_ROUND: usize = 15;
    const GONE: usize = ROUNDS * GONE_PER_ROUND;
    const BURST: usize = 64;
    let mut reactor = reactor();
    let (p, hooks) = Probe::echo();
    let port = util::listen_loopback(&mut reactor, p);
    let server = port.local_addr();
    let client = live_client();
    let mut replies = Vec::new();
    for round in 0..ROUNDS {
        let mut departing = Departing::default();
        for j in 0..GONE_PER_ROUND {
            departing.send(server, format!("gone {round}.{j}").as_bytes());
        }
        drop(departing);
        client
            .send_to(format!("stays {round}").as_bytes(), server)
            .expect("send");
        let sent = ((round + 1) * (GONE_PER_ROUND + 1)) as u64;
        let settled = reactor
            .run_until(DEADLINE, |r| {
                drain(&client, &mut replies);
                let s = r.port_stats(&port).expect("open");
                s.datagrams_received + s.kernel_dropped >= sent && replies.len() > round
            })
            .expect("turns");
        assert!(
            settled,
            "round {round} never answered: {:?}",
            stats(&reactor, &port)
        );
    }
    let before = stats(&reactor, &port);
    replies.clear();
    for i in 0..BURST {
        client
            .send_to(format!("burst {i}").as_bytes(), server)
            .expect("send");
    }
    let total = (GONE + ROUNDS + BURST) as u64;
    reactor
        .run_until(DEADLINE, |r| {
            drain(&client, &mut replies);
            let s = r.port_stats(&port).expect("open");
            s.datagrams_received + s.kernel_dropped >= total
                && replies.len() as u64 + s.kernel_dropped >= BURST as u64
        })
        .expect("turns");
    drive_for(&mut reactor, Duration::from_millis(100));
    drain(&client, &mut replies);
    let stats = stats(&reactor, &port);
    let burst_delivered = stats.datagrams_received - before.datagrams_received;
    println!(
        "before the burst: {before}\nburst: {burst_delivered} of {BURST} delivered, {} replies; {stats}",
        replies.len()
    );
    assert_eq!(
        burst_delivered, BURST as u64,
        "the burst's datagrams delivered: {stats:?}"
    );
    assert_eq!(replies.len(), BURST, "replies to the burst");
    assert_eq!(stats.kernel_dropped, 0, "{stats:?}");
    let (unreachable, other) = errors(&hooks);
    assert!(other.is_empty(), "{other:?}");
    assert_eq!(stats.unreachable, GONE as u64, "{stats:?}");
    assert_eq!(
        unreachable.len() as u64 + stats.errors_unreported,
        stats.unreachable,
        "{stats:?}"
    );
}

/// Ports on 127.0.0.1 below the ephemeral range (so no port-0 bind gets one meanwhile)
/// that nothing holds: each is bound, then closed.
fn closed_ports(n: usize) -> Vec<SocketAddr> {
    let mut ports = Vec::with_capacity(n);
    for port in 20_000..32_000u16 {
        if ports.len() == n {
            break;
        }
        if let Ok(s) = UdpSocket::bind(("127.0.0.1", port)) {
            ports.push(s.local_addr().expect("addr"));
        }
    }
    assert_eq!(ports.len(), n, "not enough free ports in 20000..32000");
    ports
}

/// 5,000 writes to closed ports from one `with_port` closure: each write is handed to the
/// kernel, and each of the 5,000 errors reaches `error_received` (naming its port) or is
/// counted in `errors_unreported`; none is left in the error queue.
#[test]
fn errors_from_thousands_of_writes_in_one_hook_are_all_accounted_for() {
    let _serial = serial();
    init_logging();
    const WRITES: usize = 5000;
    let mut reactor = reactor();
    let keep = UdpSocket::bind("127.0.0.1:0").expect("bind");
    let (p, hooks) = Probe::echo();
    let port = reactor.adopt_socket(&keep, p).expect("adopt");
    let dead = closed_ports(WRITES);
    let failed = util::with(&mut reactor, &port, |t| {
        dead.iter()
            .filter_map(|to| t.write(b"anyone?", *to).err().map(|e| e.to_string()))
            .collect::<Vec<_>>()
    });
    reactor
        .run_until(DEADLINE, |r| {
            let s = r.port_stats(&port).expect("open");
            error_count(&hooks) as u64 + s.errors_unreported >= WRITES as u64
        })
        .expect("turns");
    drive_for(&mut reactor, Duration::from_millis(200));
    let stats = stats(&reactor, &port);
    let left = error_queue_entries(&keep);
    let (unreachable, other) = errors(&hooks);
    println!(
        "failed writes {}, error_received {} ({} other), errors_unreported {}, \
         left in the error queue {left}; {stats}",
        failed.len(),
        unreachable.len(),
        other.len(),
        stats.errors_unreported
    );
    assert!(failed.is_empty(), "{:?}", &failed[..failed.len().min(5)]);
    assert!(other.is_empty(), "{:?}", &other[..other.len().min(5)]);
    assert_eq!(
        unreachable.len() as u64 + stats.errors_unreported,
        WRITES as u64,
        "errors reported + counted as unreported: {stats:?}"
    );
    assert_eq!(stats.unreachable, WRITES as u64, "{stats:?}");
    assert_eq!(stats.datagrams_sent, WRITES as u64, "{stats:?}");
    let mut told: BTreeMap<SocketAddr, usize> = BTreeMap::new();
    for (addr, named) in &unreachable {
        assert_eq!(addr, named);
        *told.entry(*addr).or_default() += 1;
    }
    assert!(told.values().all(|&n| n == 1), "a destination named twice");
    assert!(
        told.keys().all(|a| dead.contains(a)),
        "an error for another address"
    );
    assert_eq!(left, 0, "entries left in the kernel's error queue");
}

/// 128 clients send a request each, read in one batch; the clients whose replies are the
/// 32nd and the 64th leave first. With a batch size of 128 and no segmentation the replies
/// go out in several `sendmmsg` calls, and a call that meets the refusal raised by the
/// previous call's last message fails at once and is retried: every client that stayed
/// gets its reply, `error_received` names only the two that left (never a live client,
/// never as a send error), and every reply is handed to the kernel.
#[test]
fn sends_retried_after_a_refusal_blame_only_departed_clients() {
    let _serial = serial();
    init_logging();
    const CLIENTS: usize = 128;
    const GONE: [usize; 2] = [31, 63];
    let mut reactor = reactor();
    let (p, hooks) = Probe::echo();
    let opts = loopback()
        .batch_size(CLIENTS)
        .segmentation(false)
        // Small enough for the read budget's bytes to allow a whole batch at once.
        .max_packet_size(512);
    let port = reactor.listen_udp_with(opts, p).expect("listen");
    let server = port.local_addr();
    let mut clients: Vec<Option<UdpSocket>> = (0..CLIENTS).map(|_| Some(live_client())).collect();
    let addrs: Vec<SocketAddr> = clients
        .iter()
        .map(|c| c.as_ref().expect("bound").local_addr().expect("addr"))
        .collect();
    for (i, c) in clients.iter().enumerate() {
        let c = c.as_ref().expect("bound");
        c.send_to(format!("request {i}").as_bytes(), server)
            .expect("send");
    }
    for i in GONE {
        clients[i] = None;
    }
    let mut replies: Vec<Vec<Vec<u8>>> = vec![Vec::new(); CLIENTS];
    collect_then_linger(&mut reactor, Duration::from_millis(100), |_| {
        for (i, c) in clients.iter().enumerate() {
            if let Some(c) = c {
                drain(c, &mut replies[i]);
            }
        }
        let answered = replies.iter().filter(|r| !r.is_empty()).count();
        answered >= CLIENTS - GONE.len() && error_count(&hooks) >= GONE.len()
    });
    let stats = stats(&reactor, &port);
    let (unreachable, other) = errors(&hooks);
    let unanswered: Vec<usize> = (0..CLIENTS)
        .filter(|i| !GONE.contains(i) && replies[*i].is_empty())
        .collect();
    let client_of = |a: &SocketAddr| addrs.iter().position(|x| x == a);
    let other_for: Vec<_> = hooks
        .borrow()
        .iter()
        .filter_map(|h| match h {
            Hook::OtherError(_, a) => Some(client_of(a)),
            _ => None,
        })
        .collect();
    println!(
        "received {}, unanswered live clients {unanswered:?}, error_received Unreachable for \
         clients {:?}, other errors for clients {other_for:?}: {other:?}; {stats}",
        datagram_count(&hooks),
        unreachable
            .iter()
            .map(|(a, _)| client_of(a))
            .collect::<Vec<_>>(),
    );
    assert_eq!(datagram_count(&hooks), CLIENTS);
    assert!(
        other.is_empty(),
        "errors other than the two unreachable: {other:?}"
    );
    let blamed_live: Vec<usize> = unreachable
        .iter()
        .filter_map(|(a, _)| client_of(a))
        .filter(|i| !GONE.contains(i))
        .collect();
    assert!(
        blamed_live.is_empty(),
        "live clients blamed: {blamed_live:?}"
    );
    assert!(
        unanswered.is_empty(),
        "live clients without a reply: {unanswered:?}"
    );
    for (i, r) in replies.iter().enumerate() {
        if !GONE.contains(&i) {
            assert_eq!(
                r,
                &[format!("request {i}").into_bytes()],
                "client {i}'s replies"
            );
        }
    }
    let named = sorted(unreachable.iter().map(|(a, _)| *a).collect());
    assert_eq!(named, sorted(GONE.iter().map(|&i| addrs[i]).collect()));
    for (addr, named) in &unreachable {
        assert_eq!(addr, named);
    }
    assert_eq!(stats.datagrams_sent, CLIENTS as u64, "{stats:?}");
    assert_eq!(stats.send_errors, 0, "{stats:?}");
    assert_eq!(stats.unreachable, GONE.len() as u64, "{stats:?}");
}

/// Figures from the port's close line (`"<prefix> on <addr> closed: <stats>"`): the number
/// before each of `names`.
fn close_figures(server: SocketAddr, names: &[&str]) -> Vec<Option<u64>> {
    let lines = logs_about(server);
    let line = lines
        .iter()
        .rev()
        .find(|l| l.contains("ErrorQueueProbe on") && l.contains(" closed: "))
        .unwrap_or_else(|| panic!("no close line for {server} in {lines:#?}"));
    println!("close line: {line}");
    names
        .iter()
        .map(|name| {
            let end = line.find(&format!(" {name}"))?;
            let start = line[..end].rfind(' ').map_or(0, |i| i + 1);
            line[start..end].parse().ok()
        })
        .collect()
}

/// How a port is stopped.
#[derive(Clone, Copy, Debug)]
enum Stop {
    Listening,
    Reactor,
}

fn stop(reactor: &mut Reactor, port: &ListeningPort<Probe>, how: Stop) {
    match how {
        Stop::Listening => assert!(reactor.stop_listening(port)),
        Stop::Reactor => reactor.stop(),
    }
    util::drive(reactor, "the port to close", |r| {
        r.port_stats(port).is_none()
    });
    // A hook called late would be called by now.
    drive_for(reactor, Duration::from_millis(100));
}

/// The hooks recorded after `Stop`.
fn after_stop(hooks: &Hooks) -> Vec<Hook> {
    let hooks = hooks.borrow();
    let at = hooks
        .iter()
        .position(|h| *h == Hook::Stop)
        .expect("stop_protocol ran");
    hooks[at + 1..].to_vec()
}

/// `stop_protocol` writes to three clients that have left: the errors those writes raise
/// reach no hook (none runs after `stop_protocol`), and each is counted as unreachable and
/// unreported in the counters logged at close.
fn no_error_received_after_stop_protocol(how: Stop) {
    let _serial = serial();
    init_logging();
    let mut reactor = reactor();
    let p = Probe::default();
    let (hooks, bye_to, results) = (p.hooks.clone(), p.bye_to.clone(), p.bye_results.clone());
    let port = util::listen_loopback(&mut reactor, p);
    let server = port.local_addr();
    let mut departing = Departing::default();
    let gone: Vec<SocketAddr> = (0..3).map(|_| departing.send(server, b"hello")).collect();
    drop(departing);
    util::drive(&mut reactor, "three requests", |_| {
        datagram_count(&hooks) == 3
    });
    bye_to.borrow_mut().extend(&gone);
    stop(&mut reactor, &port, how);
    let figures = close_figures(server, &["unreachable", "errors unreported"]);
    println!(
        "{how:?}: hooks {:?}; bye writes {:?}; figures {figures:?}",
        hooks.borrow(),
        results.borrow()
    );
    assert_eq!(after_stop(&hooks), [], "hooks called after stop_protocol");
    assert_eq!(
        *results.borrow(),
        ["Ok(())"; 3],
        "the writes in stop_protocol"
    );
    assert_eq!(
        figures,
        [Some(3), Some(3)],
        "unreachable and errors unreported at close"
    );
}

#[test]
fn no_error_received_after_stop_protocol_on_stop_listening() {
    no_error_received_after_stop_protocol(Stop::Listening);
}

#[test]
fn no_error_received_after_stop_protocol_on_reactor_stop() {
    no_error_received_after_stop_protocol(Stop::Reactor);
}

/// A connected port whose peer has no listener sends from `stop_protocol`: the refusal
/// its sends meet reaches no `connection_refused` (none runs after `stop_protocol`), and
/// is counted as refused and unreported in the counters logged at close.
fn no_connection_refused_after_stop_protocol(how: Stop) {
    let _serial = serial();
    init_logging();
    let mut reactor = reactor();
    let dead = closed_ports(1)[0];
    let p = Probe {
        connect_to: Some(dead),
        bye_sends: 3,
        ..Probe::default()
    };
    let (hooks, results) = (p.hooks.clone(), p.bye_results.clone());
    let port = util::listen_loopback(&mut reactor, p);
    let server = port.local_addr();
    stop(&mut reactor, &port, how);
    let figures = close_figures(server, &["refused", "errors unreported"]);
    println!(
        "{how:?}: hooks {:?}; bye sends {:?}; figures {figures:?}",
        hooks.borrow(),
        results.borrow()
    );
    assert_eq!(after_stop(&hooks), [], "hooks called after stop_protocol");
    let refused = results
        .borrow()
        .iter()
        .filter(|r| r.contains("ConnectionRefused"))
        .count() as u64;
    assert!(
        refused > 0,
        "no send met the refusal: {:?}",
        results.borrow()
    );
    // Every datagram that left raised one refusal: those met by a later send, and the
    // last one's, still held by the kernel when the port closed, all counted.
    let sent = results.borrow().iter().filter(|r| *r == "Ok(())").count() as u64;
    assert_eq!(
        figures,
        [Some(sent), Some(sent)],
        "refused and errors unreported at close"
    );
}

#[test]
fn no_connection_refused_after_stop_protocol_on_stop_listening() {
    no_connection_refused_after_stop_protocol(Stop::Listening);
}

#[test]
fn no_connection_refused_after_stop_protocol_on_reactor_stop() {
    no_connection_refused_after_stop_protocol(Stop::Reactor);
}
