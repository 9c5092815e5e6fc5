//! Errors reach the protocol: `error_received` with the destination an ICMP error was
//! about (Linux's error queue, `IP_RECVERR`/`IPV6_RECVERR`) on unconnected ports, and
//! with the failures of writes it had accepted; the kernel's habit of handing an earlier
//! datagram's error to the next call costs no datagram; error events never spin the loop.

mod util;

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::{IpAddr, SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::Duration;

use twine::{DatagramProtocol, Error, ListenOptions, ListeningPort, Reactor, UdpTransport};
use util::{DEADLINE, drive, init_logging, loopback, reactor};

/// One error as `error_received` got it: the kind of `Error`, its errno kind, the
/// address passed, and the reporter for an `Unreachable`.
#[derive(Debug, Clone, PartialEq)]
enum Got {
    Unreachable(SocketAddr, ErrorKind, Option<IpAddr>),
    Send(SocketAddr, Option<i32>),
    Other(String),
}

#[derive(Default)]
struct Log {
    errors: Vec<(Got, SocketAddr)>,
    received: Vec<(Vec<u8>, SocketAddr)>,
    write_failures: Vec<String>,
}

/// Echoes, and on each datagram also writes to every address in `also`; writes `start`'s
/// datagrams from `start_protocol`. Records what it sees.
struct Probe {
    log: Rc<RefCell<Log>>,
    start: Vec<(Vec<u8>, SocketAddr)>,
    also: Vec<SocketAddr>,
}

impl Probe {
    fn write(&self, t: &mut UdpTransport<'_>, data: &[u8], to: SocketAddr) {
        if let Err(e) = t.write(data, to) {
            self.log
                .borrow_mut()
                .write_failures
                .push(format!("{to}: {e}"));
        }
    }
}

impl DatagramProtocol for Probe {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        for (data, to) in self.start.clone() {
            self.write(t, &data, to);
        }
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        self.log.borrow_mut().received.push((data.to_vec(), from));
        for to in self.also.clone() {
            self.write(t, b"to nowhere", to);
        }
        self.write(t, data, from);
    }

    fn error_received(&mut self, _: &mut UdpTransport<'_>, error: &Error, addr: SocketAddr) {
        let got = match error {
            Error::Unreachable {
                addr,
                reporter,
                source,
            } => Got::Unreachable(*addr, source.kind(), *reporter),
            Error::Send { addr, source } => Got::Send(*addr, source.raw_os_error()),
            other => Got::Other(other.to_string()),
        };
        self.log.borrow_mut().errors.push((got, addr));
    }
}

fn probe(start: Vec<(Vec<u8>, SocketAddr)>, also: Vec<SocketAddr>) -> (Probe, Rc<RefCell<Log>>) {
    let log = Rc::new(RefCell::new(Log::default()));
    (
        Probe {
            log: log.clone(),
            start,
            also,
        },
        log,
    )
}

/// An address on `ip` where nothing listens (a port bound, then closed).
fn closed_port(ip: &str) -> SocketAddr {
    let s = UdpSocket::bind((ip, 0)).expect("bind");
    s.local_addr().expect("addr")
}

fn listen(reactor: &mut Reactor, ip: &str, p: Probe) -> ListeningPort<Probe> {
    reactor
        .listen_udp_with(ListenOptions::new(0).interface(ip), p)
        .expect("listen")
}

/// Writes from an unconnected port to two closed ports and a live one: each closed one is
/// named to `error_received` as unreachable (port unreachable: connection refused) by
/// loopback, the live one gets its datagram, and the counters agree.
fn names_the_refusing_destination(ip: &str) {
    init_logging();
    let mut reactor = reactor();
    let live = UdpSocket::bind((ip, 0)).expect("bind");
    live.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let (a, b) = (closed_port(ip), closed_port(ip));
    let to = live.local_addr().expect("addr");
    let start = vec![
        (b"one".to_vec(), a),
        (b"live".to_vec(), to),
        (b"two".to_vec(), b),
    ];
    let (p, log) = probe(start, vec![]);
    let port = listen(&mut reactor, ip, p);
    drive(&mut reactor, "two errors", |_| {
        log.borrow().errors.len() >= 2
    });
    let loopback: IpAddr = ip.parse().expect("ip");
    let want = |addr| {
        (
            Got::Unreachable(addr, ErrorKind::ConnectionRefused, Some(loopback)),
            addr,
        )
    };
    assert_eq!(log.borrow().errors, [want(a), want(b)]);
    assert!(
        log.borrow().write_failures.is_empty(),
        "{:?}",
        log.borrow().write_failures
    );
    let mut buf = [0u8; 16];
    let (n, from) = live.recv_from(&mut buf).expect("the live peer's datagram");
    assert_eq!((&buf[..n], from), (&b"live"[..], port.local_addr()));
    let stats = reactor.with_port(&port, |_, t| t.stats()).expect("open");
    assert_eq!(stats.unreachable, 2);
    assert_eq!(stats.datagrams_sent, 3);
    assert_eq!(stats.send_errors, 0);
}

#[test]
fn an_unconnected_port_learns_which_destination_refused_over_ipv4() {
    names_the_refusing_destination("127.0.0.1");
}

#[test]
fn an_unconnected_port_learns_which_destination_refused_over_ipv6() {
    names_the_refusing_destination("::1");
}

/// The kernel hands an ICMP error to the socket's next call, whatever it is: replies to
/// live clients interleaved with writes to a closed port must all get through, in the
/// gathered (batched) path and in direct writes, and each refusal is reported once.
#[test]
fn errors_for_earlier_datagrams_never_cost_a_later_one() {
    init_logging();
    let mut reactor = reactor();
    let nowhere = closed_port("127.0.0.1");
    // Direct writes from start_protocol: nowhere, then a live client, ten times.
    let live = UdpSocket::bind("127.0.0.1:0").expect("bind");
    live.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let to = live.local_addr().expect("addr");
    let start = (0..10u8)
        .flat_map(|i| [(vec![i], nowhere), (vec![100 + i], to)])
        .collect();
    let (p, log) = probe(start, vec![nowhere]);
    let port = listen(&mut reactor, "127.0.0.1", p);
    let mut buf = [0u8; 64];
    for i in 0..10u8 {
        let (n, _) = live.recv_from(&mut buf).expect("each direct write arrives");
        assert_eq!(&buf[..n], [100 + i]);
    }
    // Gathered writes: each datagram from a client makes the port write to nowhere and
    // echo; 200 datagrams in bursts, every echo must come back.
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.set_nonblocking(true).expect("nonblocking");
    let mut echoed = 0;
    for round in 0..20u8 {
        for i in 0..10u8 {
            c.send_to(&[round, i], port.local_addr()).expect("send");
        }
        drive(&mut reactor, "a burst's datagrams", |_| {
            log.borrow().received.len() == usize::from(round + 1) * 10
        });
        drive(&mut reactor, "a burst's echoes at the client", |_| {
            while c.recv_from(&mut buf).is_ok() {
                echoed += 1;
            }
            echoed >= usize::from(round + 1) * 10
        });
    }
    assert_eq!(echoed, 200);
    assert!(
        log.borrow().write_failures.is_empty(),
        "{:?}",
        log.borrow().write_failures
    );
    // Turn until a refusal has reached error_received (how many of the 210 writes to
    // nowhere are refused is the kernel's to say: its ICMP rate limit is shared with the
    // tests running beside this one), then: every error names nowhere, none is anything
    // but a refusal, and the counter agrees with what error_received saw.
    drive(&mut reactor, "a refusal reaching error_received", |_| {
        !log.borrow().errors.is_empty()
    });
    let errors = log.borrow().errors.clone();
    for (got, addr) in &errors {
        assert_eq!(*addr, nowhere);
        assert_eq!(
            *got,
            Got::Unreachable(
                nowhere,
                ErrorKind::ConnectionRefused,
                Some("127.0.0.1".parse().expect("ip"))
            )
        );
    }
    let stats = reactor.with_port(&port, |_, t| t.stats()).expect("open");
    assert_eq!(stats.unreachable, errors.len() as u64);
    assert_eq!(stats.send_errors, 0);
    // 10 + 200 writes to nowhere, 10 + 200 to live peers: all handed to the kernel.
    assert_eq!(stats.datagrams_sent, 420);
}

/// A write accepted into a batch that the kernel then refuses (port 0 is not a valid
/// destination) reaches `error_received` as `Error::Send` with its address; the echo
/// gathered with it still goes.
#[test]
fn a_gathered_write_refused_later_reaches_error_received() {
    init_logging();
    let mut reactor = reactor();
    let zero: SocketAddr = "127.0.0.1:0".parse().expect("addr");
    let (p, log) = probe(vec![], vec![zero]);
    let port = listen(&mut reactor, "127.0.0.1", p);
    let c = UdpSocket::bind("127.0.0.1:0").expect("bind");
    c.set_read_timeout(Some(DEADLINE)).expect("timeout");
    c.send_to(b"ping", port.local_addr()).expect("send");
    drive(&mut reactor, "the error", |_| {
        !log.borrow().errors.is_empty()
    });
    let mut buf = [0u8; 16];
    let (n, _) = c.recv_from(&mut buf).expect("echo");
    assert_eq!(&buf[..n], b"ping");
    let (got, addr) = log.borrow().errors[0].clone();
    assert_eq!(addr, zero);
    assert!(matches!(got, Got::Send(a, Some(_)) if a == zero), "{got:?}");
    let stats = reactor.with_port(&port, |_, t| t.stats()).expect("open");
    assert_eq!(stats.send_errors, 1);
}

/// CPU time this thread has used, from /proc (clock ticks).
fn thread_cpu_ticks() -> u64 {
    let stat = std::fs::read_to_string("/proc/thread-self/stat").expect("/proc/thread-self/stat");
    // Fields after the command (which is in parentheses and may hold spaces).
    let rest = &stat[stat.rfind(')').expect("stat format") + 2..];
    let fields: Vec<&str> = rest.split(' ').collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 here.
    fields[11].parse::<u64>().expect("utime") + fields[12].parse::<u64>().expect("stime")
}

/// Many ICMP errors arrive while nothing is readable: they are read and reported, and
/// then an idle reactor sleeps (a loop spinning on an error event would burn the CPU).
#[test]
fn error_events_never_spin_the_loop() {
    init_logging();
    let mut reactor = reactor();
    let targets: Vec<SocketAddr> = (0..50).map(|_| closed_port("127.0.0.1")).collect();
    let start = targets.iter().map(|&t| (b"x".to_vec(), t)).collect();
    let (p, log) = probe(start, vec![]);
    let _port = listen(&mut reactor, "127.0.0.1", p);
    drive(&mut reactor, "50 errors", |_| {
        log.borrow().errors.len() == 50
    });
    let before = thread_cpu_ticks();
    reactor
        .run_until(Duration::from_millis(500), |_| false)
        .expect("idle");
    let used = thread_cpu_ticks() - before;
    // 500 ms of spinning is ~50 ticks; idle is 0 or 1.
    assert!(used <= 10, "an idle reactor used {used} ticks in 500 ms");
}

/// A connected port keeps Twisted's behaviour: refusals go to `connection_refused`, not
/// to `error_received`.
#[test]
fn a_connected_port_still_gets_connection_refused() {
    init_logging();
    struct Connected {
        refused: Rc<RefCell<u32>>,
        errors: Rc<RefCell<u32>>,
        peer: SocketAddr,
    }
    impl DatagramProtocol for Connected {
        fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
            t.connect(self.peer).expect("connect");
            let _ = t.send(b"hello?");
        }
        fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
        fn connection_refused(&mut self, _: &mut UdpTransport<'_>) {
            *self.refused.borrow_mut() += 1;
        }
        fn error_received(&mut self, _: &mut UdpTransport<'_>, _: &Error, _: SocketAddr) {
            *self.errors.borrow_mut() += 1;
        }
    }
    let mut reactor = reactor();
    let (refused, errors) = (Rc::new(RefCell::new(0)), Rc::new(RefCell::new(0)));
    let p = Connected {
        refused: refused.clone(),
        errors: errors.clone(),
        peer: closed_port("127.0.0.1"),
    };
    reactor.listen_udp_with(loopback(), p).expect("listen");
    drive(&mut reactor, "the refusal", |_| *refused.borrow() == 1);
    reactor
        .run_until(Duration::from_millis(50), |_| false)
        .expect("turn");
    assert_eq!((*refused.borrow(), *errors.borrow()), (1, 0));
}
