//! UDP segmentation offload (`ListenOptions::segmentation`, Linux's `UDP_SEGMENT`) of the
//! writes gathered while a batch of received datagrams is dispatched.
//!
//! Whatever the kernel does with a segmented message, a receiver must see exactly the
//! datagrams that were written: the same boundaries, bytes and order, each to its own
//! destination, and the port's counters must agree. A kernel that refuses a segmented
//! message (here: a loopback whose MTU is shorter than the segments, in a network
//! namespace of its own) must cost nothing but the fallback to one datagram per message.

mod util;

use std::io::ErrorKind;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use socket2::{Domain, Protocol, Socket, Type};
use twine::{DatagramProtocol, ListenOptions, ListeningPort, PortStats, Reactor, from_fn};
use util::process::{Netns, run_to_end};
use util::{DEADLINE, init_logging, logs_about, reactor};

// ----- helpers -----------------------------------------------------------------------------

const V4: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);
const V6: IpAddr = IpAddr::V6(Ipv6Addr::LOCALHOST);

/// What the port logs (at debug) when the kernel refuses a segmented message.
const REFUSED_LINE: &str = "segmented send refused";

/// Socket buffers asked for on both sides, so that a whole burst fits in the kernel's
/// receive queue (the kernel caps it at `net.core.rmem_max`, doubled).
const BUFFER: usize = 4 << 20;

/// The burst of the first test, as (count, length) runs in order: a run longer than a
/// default batch, a run ending in a shorter datagram, an empty datagram (never
/// segmented), the longest segmented length, a length too long to segment, and a run
/// longer than the 64 segments one message may carry.
const BURST: &[(usize, usize)] = &[
    (40, 64),
    (3, 100),
    (1, 50),
    (1, 0),
    (2, 1452),
    (2, 1453),
    (70, 10),
];

/// The edges of a run: a shorter datagram in the middle ends it (the next full-length one
/// starts another), a longer one never joins it, one datagram alone, and a run of
/// full-length (1452-byte) datagrams longer than one message's 65,000 bytes.
const EDGES: &[(usize, usize)] = &[
    (5, 200),
    (1, 150),
    (5, 200),
    (1, 1),
    (2, 30),
    (3, 31),
    (1, 1452),
    (1, 7),
    (50, 1452),
    (1, 1000),
];

/// The datagrams of `spec` in order: each its sequence number (big-endian, as much of it
/// as fits), `tag`, then a fill that depends on the sequence number and the position, so
/// that any two of 4 bytes or more differ.
fn payloads(spec: &[(usize, usize)], tag: u8) -> Vec<Vec<u8>> {
    let mut out = Vec::new();
    for &(count, len) in spec {
        for _ in 0..count {
            let seq = out.len() as u32;
            let mut d: Vec<u8> = seq.to_be_bytes().into_iter().take(len).collect();
            if d.len() < len {
                d.push(tag);
            }
            while d.len() < len {
                let i = d.len() as u32;
                d.push((seq.wrapping_mul(31) ^ i.wrapping_mul(7) ^ u32::from(tag)) as u8);
            }
            out.push(d);
        }
    }
    out
}

/// Options for an echo server on `ip`, port 0, with room for a whole burst.
fn server_options(ip: IpAddr, segmentation: bool, batch_size: usize) -> ListenOptions {
    ListenOptions::new(0)
        .interface(ip.to_string())
        .recv_buffer_size(BUFFER)
        .send_buffer_size(BUFFER)
        .batch_size(batch_size)
        .segmentation(segmentation)
}

/// An echo server: every datagram back to its sender.
fn echo_server(reactor: &mut Reactor, opts: ListenOptions) -> ListeningPort<impl DatagramProtocol> {
    reactor
        .listen_udp_with(
            opts,
            from_fn(|t, data, from| t.write(data, from).expect("echo write")),
        )
        .expect("listen for the echo server")
}

/// A non-blocking client on `ip`, port 0, whose receive buffer holds a whole burst.
fn client_on(ip: IpAddr) -> UdpSocket {
    let domain = if ip.is_ipv4() {
        Domain::IPV4
    } else {
        Domain::IPV6
    };
    let s = Socket::new(domain, Type::DGRAM, Some(Protocol::UDP)).expect("client socket");
    s.set_recv_buffer_size(BUFFER).expect("client SO_RCVBUF");
    s.bind(&SocketAddr::new(ip, 0).into()).expect("bind client");
    let s: UdpSocket = s.into();
    s.set_nonblocking(true).expect("non-blocking client");
    s
}

/// Reads every datagram waiting on `client` into `got`, without blocking.
fn drain(client: &UdpSocket, buf: &mut [u8], got: &mut Vec<(Vec<u8>, SocketAddr)>) {
    loop {
        match client.recv_from(buf) {
            Ok((n, from)) => got.push((buf[..n].to_vec(), from)),
            Err(e) if e.kind() == ErrorKind::WouldBlock => return,
            Err(e) if e.kind() == ErrorKind::Interrupted => {}
            Err(e) => panic!("client {:?} recv: {e}", client.local_addr()),
        }
    }
}

/// Sends `sends` (the index of the client that sends it, and the datagram) to `server` in
/// one burst, in order, before the reactor turns; then turns the reactor until every
/// client has had as many datagrams as it sent (or one has had more, or [`DEADLINE`]
/// passes), and a little longer to catch any extra. Returns what each client received,
/// and from where.
fn burst(
    what: &str,
    reactor: &mut Reactor,
    server: SocketAddr,
    clients: &[UdpSocket],
    sends: &[(usize, Vec<u8>)],
) -> Vec<Vec<(Vec<u8>, SocketAddr)>> {
    for (i, (who, d)) in sends.iter().enumerate() {
        let sent = clients[*who].send_to(d, server).unwrap_or_else(|e| {
            panic!(
                "{what}: client {who}: send datagram {i} ({} bytes): {e}",
                d.len()
            )
        });
        assert_eq!(
            sent,
            d.len(),
            "{what}: client {who}: datagram {i} sent short"
        );
    }
    let want: Vec<usize> = (0..clients.len())
        .map(|c| sends.iter().filter(|(who, _)| *who == c).count())
        .collect();
    let mut got = vec![Vec::new(); clients.len()];
    let mut buf = vec![0u8; 65536];
    let mut take = |got: &mut Vec<Vec<(Vec<u8>, SocketAddr)>>| {
        for (c, client) in clients.iter().enumerate() {
            drain(client, &mut buf, &mut got[c]);
        }
    };
    let enough = |got: &Vec<Vec<(Vec<u8>, SocketAddr)>>| {
        let all = got.iter().zip(&want).all(|(g, w)| g.len() >= *w);
        let over = got.iter().zip(&want).any(|(g, w)| g.len() > *w);
        all || over
    };
    let done = reactor
        .run_until(DEADLINE, |_| {
            take(&mut got);
            enough(&got)
        })
        .expect("reactor turn");
    // Anything more (a datagram sent twice, or to the wrong client) would come at once
    // on loopback.
    let _ = reactor
        .run_until(Duration::from_millis(100), |_| false)
        .expect("reactor turn");
    take(&mut got);
    let counts: Vec<usize> = got.iter().map(Vec::len).collect();
    assert!(
        done,
        "{what}: timed out after {DEADLINE:?}: the clients got {counts:?} datagrams back of {want:?}"
    );
    got
}

/// A datagram as a short text: its length, sequence number and tag.
fn describe(d: &[u8]) -> String {
    match (d.get(..4), d.get(4)) {
        (Some(seq), tag) => format!(
            "{} bytes, seq {}, tag {tag:?}",
            d.len(),
            u32::from_be_bytes(seq.try_into().expect("4 bytes"))
        ),
        _ => format!("{} bytes {d:?}", d.len()),
    }
}

/// Asserts that `got` is exactly `want`, each from `server`, in order; says where they
/// first differ.
#[track_caller]
fn assert_same(what: &str, got: &[(Vec<u8>, SocketAddr)], want: &[Vec<u8>], server: SocketAddr) {
    for (i, (d, from)) in got.iter().enumerate() {
        let Some(w) = want.get(i) else {
            panic!(
                "{what}: {} datagrams back, {} sent; the first extra: {}",
                got.len(),
                want.len(),
                describe(d)
            );
        };
        assert!(
            d == w,
            "{what}: datagram {i} differs: got {}, sent {}",
            describe(d),
            describe(w)
        );
        assert_eq!(*from, server, "{what}: datagram {i} from elsewhere");
    }
    assert_eq!(got.len(), want.len(), "{what}: datagrams missing");
}

/// The counters of a port, read from outside its callbacks.
#[track_caller]
fn stats<P>(reactor: &Reactor, port: &ListeningPort<P>) -> PortStats {
    reactor.port_stats(port).expect("port is open")
}

/// Asserts that the port received and sent exactly `datagrams` datagrams of `bytes` bytes
/// in all, with no error, drop, queueing or truncation.
#[track_caller]
fn assert_counted(what: &str, s: PortStats, datagrams: usize, bytes: usize) {
    let (datagrams, bytes) = (datagrams as u64, bytes as u64);
    assert_eq!(
        (s.datagrams_received, s.bytes_received),
        (datagrams, bytes),
        "{what}: received {s:?}"
    );
    assert_eq!(
        (s.datagrams_sent, s.bytes_sent),
        (datagrams, bytes),
        "{what}: sent {s:?}"
    );
    assert_eq!(
        (s.send_errors, s.send_dropped, s.send_queued, s.truncated),
        (0, 0, 0, 0),
        "{what}: {s:?}"
    );
}

/// The captured lines saying that the port on `addr` had a segmented message refused.
fn refusals(addr: SocketAddr) -> Vec<String> {
    logs_about(addr)
        .into_iter()
        .filter(|l| l.contains(REFUSED_LINE))
        .collect()
}

/// One client sends `spec` as one burst to an echo server on `ip` and gets back exactly
/// the same datagrams; the server's counters agree, and the kernel refused nothing.
fn echo_burst(ip: IpAddr, segmentation: bool, batch_size: usize, spec: &[(usize, usize)]) {
    let what = format!("{ip} segmentation {segmentation} batch {batch_size}");
    let mut reactor = reactor();
    let port = echo_server(&mut reactor, server_options(ip, segmentation, batch_size));
    let server = port.local_addr();
    let client = client_on(ip);
    let want = payloads(spec, 0xa5);
    let sends: Vec<(usize, Vec<u8>)> = want.iter().map(|d| (0, d.clone())).collect();
    let got = burst(
        &what,
        &mut reactor,
        server,
        std::slice::from_ref(&client),
        &sends,
    );
    assert_same(&what, &got[0], &want, server);
    let bytes = want.iter().map(Vec::len).sum();
    assert_counted(&what, stats(&reactor, &port), want.len(), bytes);
    // Plain loopback takes segmented messages (Linux 4.18 and later): a refusal here
    // would mean the segmented path is broken and silently never used.
    assert_eq!(refusals(server), Vec::<String>::new(), "{what}");
}

// ----- 1. one client, every kind of run ----------------------------------------------------

/// The burst of [`BURST`] comes back exactly over IPv4, with segmentation on and off, with
/// the default batch (32: runs cut by batches) and a large one (256: the whole burst in
/// one batch, so that the 70-datagram run is cut at 64).
#[test]
fn burst_of_every_kind_of_run_comes_back_exactly_over_ipv4() {
    init_logging();
    for segmentation in [true, false] {
        for batch_size in [32, 256] {
            echo_burst(V4, segmentation, batch_size, BURST);
        }
    }
}

/// [`burst_of_every_kind_of_run_comes_back_exactly_over_ipv4`] over ::1.
#[test]
fn burst_of_every_kind_of_run_comes_back_exactly_over_ipv6() {
    init_logging();
    for segmentation in [true, false] {
        for batch_size in [32, 256] {
            echo_burst(V6, segmentation, batch_size, BURST);
        }
    }
}

/// The edges of a run ([`EDGES`]): shorter in the middle, longer after, alone, and more
/// full-length datagrams than one message's byte limit allows.
#[test]
fn edges_of_runs_come_back_exactly() {
    init_logging();
    for ip in [V4, V6] {
        for segmentation in [true, false] {
            for batch_size in [32, 256] {
                echo_burst(ip, segmentation, batch_size, EDGES);
            }
        }
    }
}

// ----- 2. several destinations in one batch ------------------------------------------------

/// Two clients' datagrams, all of one length and interleaved in one burst (one by one,
/// then in runs of a few), are answered in one batch: replies to different destinations
/// are never merged into one run, and each client gets exactly its own datagrams, in
/// order.
#[test]
fn interleaved_clients_each_get_exactly_their_own_replies() {
    init_logging();
    // Which client sends each datagram: alternating, then runs of 3, 1 and 5.
    let mut order: Vec<usize> = (0..24).map(|i| i % 2).collect();
    for (who, n) in [(0, 3), (1, 3), (0, 1), (1, 5), (0, 5), (1, 1), (0, 3)] {
        order.extend(std::iter::repeat_n(who, n));
    }
    for ip in [V4, V6] {
        for segmentation in [true, false] {
            for batch_size in [32, 256] {
                let what = format!("{ip} segmentation {segmentation} batch {batch_size}");
                let mut reactor = reactor();
                let port = echo_server(&mut reactor, server_options(ip, segmentation, batch_size));
                let server = port.local_addr();
                let clients = [client_on(ip), client_on(ip)];
                // One length for all, so that only the destination can end a run.
                let mut own = [
                    payloads(&[(order.len(), 100)], b'A').into_iter(),
                    payloads(&[(order.len(), 100)], b'B').into_iter(),
                ];
                let sends: Vec<(usize, Vec<u8>)> = order
                    .iter()
                    .map(|&who| (who, own[who].next().expect("enough payloads")))
                    .collect();
                let got = burst(&what, &mut reactor, server, &clients, &sends);
                for (c, tag) in [(0, "A"), (1, "B")] {
                    let want: Vec<Vec<u8>> = sends
                        .iter()
                        .filter(|(who, _)| *who == c)
                        .map(|(_, d)| d.clone())
                        .collect();
                    assert_same(&format!("{what}, client {tag}"), &got[c], &want, server);
                }
                assert_counted(
                    &what,
                    stats(&reactor, &port),
                    sends.len(),
                    100 * sends.len(),
                );
                assert_eq!(refusals(server), Vec::<String>::new(), "{what}");
            }
        }
    }
}

// ----- 3. a kernel that refuses segmentation -----------------------------------------------

/// The environment variable that marks the run of the test binary inside the namespace.
const CHILD_FLAG: &str = "TWINE_NETNS_CHILD";
/// This test's name, for `--exact`.
const FALLBACK_TEST: &str = "refused_segmentation_falls_back_and_delivers_every_datagram";
/// The namespace's loopback MTU: shorter than the segments.
const SMALL_MTU: usize = 1280;
/// The datagrams of the fallback burst: segmentable by length (<= 1452), but longer than
/// the MTU, so a segmented message is refused (`EINVAL`) while plain sends are fragmented
/// and reassembled.
const LONG: usize = 1400;
const LONG_COUNT: usize = 20;

/// In a network namespace whose loopback MTU is 1280, a segmented run of 1400-byte
/// datagrams is refused by the kernel; the port logs it once, falls back to one datagram
/// per message for good, and every datagram still arrives whole, in order, counted as
/// sent and not as an error. A port with segmentation off is the control: no refusal.
///
/// The part in the namespace is this same test run again by `ip netns exec` with
/// `TWINE_NETNS_CHILD=1`. It needs root, so a plain `cargo test` ignores it; asked for, on
/// a machine that cannot make the namespace it fails.
#[test]
#[ignore = "needs root for a network namespace: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test segmentation -- --ignored"]
fn refused_segmentation_falls_back_and_delivers_every_datagram() {
    if std::env::var_os(CHILD_FLAG).is_some() {
        fallback_in_namespace();
        return;
    }
    let ns = Netns::create("gso")
        .and_then(|ns| {
            ns.ip(&["link", "set", "lo", "up", "mtu", &SMALL_MTU.to_string()])?;
            Ok(ns)
        })
        .unwrap_or_else(|why| panic!("{FALLBACK_TEST} needs a network namespace: {why}"));
    let mut show = Command::new("ip");
    show.args(["-n", &ns.name, "link", "show", "lo"]);
    let (status, out, err) = run_to_end(show, Duration::from_secs(10)).expect("run ip link show");
    assert!(
        status.success() && out.contains(&format!("mtu {SMALL_MTU} ")),
        "lo in {} has not MTU {SMALL_MTU} ({status}): {out}{err}",
        ns.name
    );

    let exe = std::env::current_exe().expect("the test binary");
    let mut child = Command::new("ip");
    child
        .args(["netns", "exec", &ns.name])
        .arg(exe)
        .args([
            "--exact",
            FALLBACK_TEST,
            "--ignored",
            "--nocapture",
            "--test-threads=1",
        ])
        .env(CHILD_FLAG, "1");
    // Killed (and the test failed) past 30 s.
    let (status, out, err) = run_to_end(child, Duration::from_secs(30)).expect("run ip netns exec");
    assert!(
        status.success() && out.contains("FALLBACK-DONE") && out.contains("1 passed"),
        "{FALLBACK_TEST} in namespace {} failed ({status}):\n--- stdout\n{out}\n--- stderr\n{err}",
        ns.name
    );
    // The child's account of each refusal, for `--nocapture`.
    for line in out.lines().filter(|l| l.contains(REFUSED_LINE)) {
        println!("in {}: {line}", ns.name);
    }
}

/// The part of the test above inside the namespace.
fn fallback_in_namespace() {
    init_logging();
    let mtu = std::fs::read_to_string("/sys/class/net/lo/mtu").expect("read lo's MTU");
    assert_eq!(
        mtu.trim(),
        SMALL_MTU.to_string(),
        "{CHILD_FLAG} is set but this is not the namespace with the small MTU"
    );
    for ip in [V4, V6] {
        for segmentation in [true, false] {
            let what = format!("{ip} MTU {SMALL_MTU} segmentation {segmentation}");
            let mut reactor = reactor();
            let port = echo_server(&mut reactor, server_options(ip, segmentation, 32));
            let server = port.local_addr();
            let client = client_on(ip);
            // Twice: the second burst finds segmentation already off for this port.
            let mut sent = 0;
            for round in 0..2u8 {
                let want = payloads(&[(LONG_COUNT, LONG)], round);
                let sends: Vec<(usize, Vec<u8>)> = want.iter().map(|d| (0, d.clone())).collect();
                let what = format!("{what}, round {round}");
                let got = burst(
                    &what,
                    &mut reactor,
                    server,
                    std::slice::from_ref(&client),
                    &sends,
                );
                assert_same(&what, &got[0], &want, server);
                sent += want.len();
                assert_counted(&what, stats(&reactor, &port), sent, sent * LONG);
            }
            let refused = refusals(server);
            if segmentation {
                assert_eq!(
                    refused.len(),
                    1,
                    "{what}: the refusal is met (and logged) once, then segmentation stays off: {refused:?}"
                );
                println!("{what}: {}", refused[0]);
            } else {
                assert_eq!(refused, Vec::<String>::new(), "{what}: nothing segmented");
            }
        }
    }
    println!("FALLBACK-DONE");
}
