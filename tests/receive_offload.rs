//! Receive offload (`ListenOptions::receive_offload`, Linux's `UDP_GRO`): a read that the
//! kernel coalesced from several of a sender's datagrams is cut back into exactly those
//! datagrams before any hook sees one: the same bytes, boundaries and order, counted one
//! by one, whatever the mix of lengths, on IPv4 and IPv6, with the option on and off.
//!
//! The sender segments (`UDP_SEGMENT`, through the batches the benchmarks use), so that
//! on loopback its runs reach a receiver with the option on as coalesced reads
//! (`PortStats::coalesced_reads` says they did) and one with it off as single datagrams.

mod util;

use std::cell::RefCell;
use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, Instant};

use socket2::{Domain, Protocol, Socket, Type};
use twine::bench_support::SendBatch;
use twine::{DatagramProtocol, ListenOptions, ListeningPort, PortStats, Reactor, UdpTransport};
use util::rng::Rng;
use util::{DEADLINE, reactor};

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// Room for a whole burst in the receiver's queue (capped by `net.core.rmem_max`).
const BUFFER: usize = 8 << 20;

type Got = Rc<RefCell<Vec<(Vec<u8>, SocketAddr)>>>;
/// Cut-short datagrams as delivered, with their whole lengths.
type Cut = Rc<RefCell<Vec<(Vec<u8>, usize)>>>;

/// Records every datagram (and every cut-short one, with its whole length); optionally
/// stops the port, or panics, at the datagram with a given index.
#[derive(Default)]
struct Collector {
    got: Got,
    truncated: Cut,
    stop_at: Option<usize>,
    panic_at: Option<usize>,
}

impl DatagramProtocol for Collector {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        let n = self.got.borrow().len();
        self.got.borrow_mut().push((data.to_vec(), from));
        if self.stop_at == Some(n) {
            t.stop_listening();
        }
        if self.panic_at == Some(n) {
            panic!("the hook panics at datagram {n}");
        }
    }

    fn datagram_truncated(
        &mut self,
        _t: &mut UdpTransport<'_>,
        data: &[u8],
        len: usize,
        _from: SocketAddr,
    ) {
        self.truncated.borrow_mut().push((data.to_vec(), len));
    }
}

fn options(ip: IpAddr, offload: bool) -> ListenOptions {
    ListenOptions::new(0)
        .interface(ip.to_string())
        .recv_buffer_size(BUFFER)
        .max_packet_size(65_535)
        .receive_offload(offload)
}

/// A sender on `ip` with a large send buffer.
fn sender(ip: IpAddr) -> UdpSocket {
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).expect("sender socket");
    s.set_send_buffer_size(BUFFER).expect("SO_SNDBUF");
    s.bind(&SocketAddr::new(ip, 0).into()).expect("bind sender");
    let s: UdpSocket = s.into();
    s.set_nonblocking(true).expect("non-blocking sender");
    s
}

/// The datagrams of `spec` ((count, length) runs, in order), each distinct: its sequence
/// number (as much as fits), then a fill that depends on the number and the position.
fn payloads(spec: &[(usize, usize)]) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for &(count, len) in spec {
        for _ in 0..count {
            let seq = out.len() as u32;
            let mut d: Vec<u8> = seq.to_be_bytes().into_iter().take(len).collect();
            while d.len() < len {
                let i = d.len() as u32;
                d.push((seq.wrapping_mul(131) ^ i.wrapping_mul(7)) as u8);
            }
            out.push(d);
        }
    }
    out
}

/// Sends `datagrams` to `to` from `from`, segmented where runs allow, in order.
fn send_segmented(from: &UdpSocket, to: SocketAddr, datagrams: &[Vec<u8>]) {
    let bytes = datagrams.iter().map(Vec::len).sum();
    let mut batch = SendBatch::with_capacity(datagrams.len().max(1), bytes);
    for d in datagrams {
        batch.push(d, to);
    }
    let deadline = Instant::now() + DEADLINE;
    let mut next = 0;
    while next < batch.len() {
        match batch.send_segmented(from, next, false) {
            Ok(sent) => next += sent,
            Err(e) if e.kind() == ErrorKind::WouldBlock && Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(1));
            }
            Err(e) => panic!("segmented send from datagram {next}: {e}"),
        }
    }
}

/// Turns the reactor until `want` datagrams came (or the deadline), then a little longer
/// to catch any extra.
fn collect(reactor: &mut Reactor, got: &Got, want: usize) {
    reactor
        .run_until(DEADLINE, |_| got.borrow().len() >= want)
        .expect("turns");
    reactor
        .run_until(Duration::from_millis(30), |_| false)
        .expect("turns");
}

fn stats<P>(reactor: &Reactor, port: &ListeningPort<P>) -> PortStats {
    reactor.port_stats(port).expect("port is open")
}

#[track_caller]
fn assert_same(what: &str, got: &[(Vec<u8>, SocketAddr)], want: &[Vec<u8>], from: SocketAddr) {
    for (i, (d, src)) in got.iter().enumerate() {
        let Some(w) = want.get(i) else {
            panic!(
                "{what}: {} datagrams delivered, {} sent",
                got.len(),
                want.len()
            );
        };
        assert!(
            d == w,
            "{what}: datagram {i} differs: {} bytes delivered, {} sent",
            d.len(),
            w.len()
        );
        assert_eq!(*src, from, "{what}: datagram {i} from elsewhere");
    }
    assert_eq!(got.len(), want.len(), "{what}: datagrams missing");
}

/// One burst of `spec` from a segmenting sender to a port with the option as given:
/// every datagram delivered once, byte for byte, in order, and counted; returns the
/// port's counters.
fn round_trip(what: &str, ip: IpAddr, offload: bool, spec: &[(usize, usize)]) -> PortStats {
    let mut r = reactor();
    let got = Got::default();
    let port = r
        .listen_udp_with(
            options(ip, offload),
            Collector {
                got: got.clone(),
                ..Collector::default()
            },
        )
        .expect("listen");
    let tx = sender(ip);
    let want = payloads(spec);
    send_segmented(&tx, port.local_addr(), &want);
    collect(&mut r, &got, want.len());
    let what = format!("{what} ({ip}, offload {offload})");
    assert_same(
        &what,
        &got.borrow(),
        &want,
        tx.local_addr().expect("sender address"),
    );
    let s = stats(&r, &port);
    let bytes: usize = want.iter().map(Vec::len).sum();
    assert_eq!(
        (s.datagrams_received, s.bytes_received),
        (want.len() as u64, bytes as u64),
        "{what}: {s:?}"
    );
    assert_eq!(
        (
            s.truncated,
            s.recv_errors,
            s.control_truncated,
            s.kernel_dropped
        ),
        (0, 0, 0, 0),
        "{what}: {s:?}"
    );
    if !offload {
        assert_eq!(
            s.coalesced_reads, 0,
            "{what}: coalesced with the option off"
        );
    }
    s
}

/// The mixes every family is tried with: runs longer than one message carries, a run
/// ending in a shorter datagram, a shorter one in the middle, one-byte and empty
/// datagrams, the longest segmented length and one longer.
const MIXES: &[&[(usize, usize)]] = &[
    &[(40, 64)],
    &[(3, 100), (1, 50), (1, 0), (2, 1452), (2, 1453), (70, 10)],
    &[(5, 200), (1, 150), (5, 200), (1, 1), (2, 30), (3, 31)],
    &[(50, 1452), (1, 1000)],
    &[(1, 1), (1, 1), (1, 1)],
    &[(64, 1)],
];

#[test]
fn coalesced_reads_are_cut_back_into_the_senders_datagrams_on_both_families() {
    for ip in [V4, V6] {
        let mut coalesced = 0;
        for (i, mix) in MIXES.iter().enumerate() {
            let s = round_trip(&format!("mix {i}"), ip, true, mix);
            coalesced += s.coalesced_reads;
        }
        if cfg!(target_os = "linux") {
            assert!(
                coalesced > 0,
                "{ip}: no read came coalesced: the test did not test receive offload"
            );
        }
    }
}

#[test]
fn without_the_option_the_same_mixes_arrive_one_datagram_per_read() {
    for ip in [V4, V6] {
        for (i, mix) in MIXES.iter().enumerate() {
            round_trip(&format!("mix {i}"), ip, false, mix);
        }
    }
}

#[test]
fn random_length_mixes_are_delivered_exactly_on_and_off() {
    let mut rng = Rng::new(0x9e37_79b9_7f4a_7c15);
    for round in 0..12 {
        let runs = 1 + rng.below(12);
        let spec: Vec<(usize, usize)> = (0..runs)
            .map(|_| {
                let len = match rng.below(4) {
                    0 => rng.below(8),
                    1 => 1 + rng.below(200),
                    2 => 1400 + rng.below(60),
                    _ => 1 + rng.below(1500),
                };
                (1 + rng.below(70), len)
            })
            .collect();
        let ip = if round % 2 == 0 { V4 } else { V6 };
        for offload in [true, false] {
            round_trip(&format!("random mix {round} {spec:?}"), ip, offload, &spec);
        }
    }
}

/// A max packet size below the segment size: each datagram of a coalesced read is cut
/// short (or dropped) on its own, exactly as the same datagrams arriving one by one.
#[test]
fn the_max_packet_size_applies_to_each_datagram_of_a_coalesced_read() {
    for deliver in [false, true] {
        let mut counts = Vec::new();
        for offload in [true, false] {
            let mut r = reactor();
            let got = Got::default();
            let truncated = Cut::default();
            let port = r
                .listen_udp_with(
                    options(V4, offload)
                        .max_packet_size(100)
                        .deliver_truncated(deliver),
                    Collector {
                        got: got.clone(),
                        truncated: truncated.clone(),
                        ..Collector::default()
                    },
                )
                .expect("listen");
            let tx = sender(V4);
            let want = payloads(&[(20, 300), (10, 100), (1, 50), (5, 101)]);
            send_segmented(&tx, port.local_addr(), &want);
            r.run_until(DEADLINE, |r| {
                let s = r.port_stats(&port).expect("open");
                s.datagrams_received + s.truncated >= want.len() as u64
            })
            .expect("turns");
            let s = stats(&r, &port);
            let what = format!("offload {offload}, deliver_truncated {deliver}");
            assert_eq!(
                (s.datagrams_received, s.truncated),
                (11, 25),
                "{what}: {s:?}"
            );
            let short: Vec<Vec<u8>> = want.iter().filter(|d| d.len() <= 100).cloned().collect();
            let delivered: Vec<Vec<u8>> = got.borrow().iter().map(|(d, _)| d.clone()).collect();
            assert_eq!(delivered, short, "{what}");
            let cut: Vec<(Vec<u8>, usize)> = want
                .iter()
                .filter(|d| d.len() > 100)
                .map(|d| (d[..100].to_vec(), d.len()))
                .collect();
            let expected_cut = if deliver { cut } else { Vec::new() };
            assert_eq!(*truncated.borrow(), expected_cut, "{what}");
            counts.push((s.datagrams_received, s.truncated));
        }
        assert_eq!(counts[0], counts[1], "the same counts on and off");
    }
}

/// A stop asked for by the hook of the third datagram of a coalesced read: the rest of
/// that read, and of the batch, is counted at stop, one per datagram.
#[test]
fn a_stop_in_the_middle_of_a_coalesced_read_counts_every_datagram_left() {
    let mut r = reactor();
    let got = Got::default();
    let port = r
        .listen_udp_with(
            options(V4, true),
            Collector {
                got: got.clone(),
                stop_at: Some(2),
                ..Collector::default()
            },
        )
        .expect("listen");
    let tx = sender(V4);
    let want = payloads(&[(30, 64)]);
    send_segmented(&tx, port.local_addr(), &want);
    let mut last = PortStats::default();
    r.run_until(DEADLINE, |r| match r.port_stats(&port) {
        Some(s) => {
            last = s;
            false
        }
        None => true,
    })
    .expect("turns");
    assert_eq!(got.borrow().len(), 3, "delivered up to the stop");
    assert_eq!(last.datagrams_received, 3, "{last:?}");
    assert!(
        last.coalesced_reads >= 1,
        "the burst came coalesced: {last:?}"
    );
    assert_eq!(
        last.dropped_at_stop, 27,
        "every datagram after the stop counted: {last:?}"
    );
}

/// A hook that panics on one datagram of a coalesced read costs that datagram only: the
/// next one is the one after it, never one delivered again.
#[test]
fn a_panic_in_the_middle_of_a_coalesced_read_costs_one_datagram() {
    let mut r = reactor();
    let got = Got::default();
    let port = r
        .listen_udp_with(
            options(V6, true),
            Collector {
                got: got.clone(),
                panic_at: Some(4),
                ..Collector::default()
            },
        )
        .expect("listen");
    let tx = sender(V6);
    let want = payloads(&[(20, 500)]);
    send_segmented(&tx, port.local_addr(), &want);
    collect(&mut r, &got, want.len());
    // The panicking hook recorded its datagram before it panicked: all 20 once each.
    assert_same(
        "panic",
        &got.borrow(),
        &want,
        tx.local_addr().expect("addr"),
    );
    let s = stats(&r, &port);
    assert_eq!((s.panics, s.datagrams_received), (1, 20), "{s:?}");
    assert!(s.coalesced_reads >= 1, "{s:?}");
}

/// Records each datagram's sequence number with how many coalesced reads its port had
/// seen when it was delivered (so a datagram that came alone shows the count before the
/// next coalesced read).
struct ReadsSeen {
    seen: Rc<RefCell<Vec<(u32, u64)>>>,
}

impl DatagramProtocol for ReadsSeen {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], _from: SocketAddr) {
        let seq = data
            .get(..4)
            .and_then(|b| b.try_into().ok())
            .map_or(u32::MAX, u32::from_be_bytes);
        self.seen
            .borrow_mut()
            .push((seq, t.stats().coalesced_reads));
    }
}

/// The replies to a read that drained the socket (its senders may all be waiting): the
/// first goes alone, to wake its receiver at once, the rest segmented. A port with
/// receive offload shows it: the first reply arrives as a read of its own, the others as
/// one coalesced read.
#[test]
fn the_replies_to_a_read_that_drained_the_socket_lead_with_one_alone() {
    let mut r = reactor();
    let server = r
        .listen_udp_with(
            ListenOptions::new(0).interface("127.0.0.1"),
            twine::from_fn(|t, data, from| t.write(data, from).expect("echo")),
        )
        .expect("listen the echo server");
    let seen = Rc::new(RefCell::new(Vec::new()));
    let client = r
        .listen_udp_with(options(V4, true), ReadsSeen { seen: seen.clone() })
        .expect("listen the client");
    let to = server.local_addr();
    let burst = payloads(&[(20, 64)]);
    r.with_port(&client, |_, t| {
        for d in &burst {
            t.write(d, to).expect("client write");
        }
    })
    .expect("client open");
    r.run_until(DEADLINE, |_| seen.borrow().len() >= burst.len())
        .expect("turns");
    let seen = seen.borrow().clone();
    let seqs: Vec<u32> = seen.iter().map(|(seq, _)| *seq).collect();
    assert_eq!(seqs, (0..20).collect::<Vec<u32>>(), "every reply, in order");
    let reads: Vec<u64> = seen.iter().map(|(_, reads)| *reads).collect();
    let mut want = vec![1u64; 20];
    want[0] = 0;
    assert_eq!(
        reads, want,
        "the first reply alone, then the other 19 in one coalesced read"
    );
}
