//! Promises of the send queue, the receive path, adoption and the run loop, checked by
//! counts: each queued datagram is charged its payload plus 128 bytes (so empty datagrams
//! are bounded too); a producer that heeds the pause is never refused, from a timer or
//! inside a batch of received datagrams; `kernel_dropped` of an adopted socket counts only
//! the drops since adoption; one turn reads at most the byte budget plus one datagram; an
//! adopted connected socket is served as connected; `local_addr` after `connect` is the
//! kernel's; a stop made between runs ends the next `run` in its first turn; and
//! `call_every(Duration::ZERO)` runs once per turn.
//!
//! The send-queue tests need a kernel send buffer that really fills: they run in a network
//! namespace of their own whose `lo` is rate-limited by a token-bucket qdisc (see
//! `tests/send_queue.rs`), and are ignored by a plain `cargo test`
//! (`cargo test --test promises -- --ignored` runs them, as root).

mod util;

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::net::{SocketAddr, UdpSocket};
use std::rc::Rc;
use std::time::{Duration, Instant};

use socket2::SockRef;
use twine::{DatagramProtocol, Error, ListeningPort, Reactor, UdpTransport, from_fn};
use util::process::{Netns, child_run};
use util::procfs::{rss_kib, udp_drops};
use util::sequence::{Sequence, numbered, sequence_sink};
use util::{DEADLINE, client, dead_addr, drive, init_logging, loopback, ms, reactor};

const CHILD_FLAG: &str = "TWINE_PROMISES_TEST_CHILD";

/// What the send queue charges each entry besides its payload.
const ENTRY_CHARGE: usize = 128;

/// In the child run inside the namespace (see [`child_run`]): a reactor and a
/// [`sequence_sink`] on it. Any other run gets `None`, and the inner test does nothing.
fn child_with_sink() -> Option<(
    Reactor,
    ListeningPort<impl DatagramProtocol + use<>>,
    Sequence,
)> {
    if !child_run(CHILD_FLAG) {
        return None;
    }
    let mut reactor = reactor();
    let (sink, received) = sequence_sink(&mut reactor);
    Some((reactor, sink, received))
}

// ----- the send queue charges each entry -------------------------------------------------

/// Counts the flow-control calls.
#[derive(Default)]
struct FlowCounter {
    pauses: Rc<Cell<u32>>,
    resumes: Rc<Cell<u32>>,
}

impl DatagramProtocol for FlowCounter {
    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}

    fn pause_producing(&mut self, _: &mut UdpTransport<'_>) {
        self.pauses.set(self.pauses.get() + 1);
    }

    fn resume_producing(&mut self, _: &mut UdpTransport<'_>) {
        self.resumes.set(self.resumes.get() + 1);
    }
}

/// Empty datagrams written in a loop while the kernel's send buffer is full are refused
/// once the queue holds `send_queue_limit / 128` of them: each is charged 128 bytes, the
/// refusal says so, memory stays bounded, and the port is paused and resumed as for any
/// other datagrams.
#[test]
#[ignore = "needs root for a network namespace with a tbf qdisc: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test promises -- --ignored"]
fn empty_datagrams_are_charged_per_entry_and_bounded() {
    Netns::run_rate_limited("pe", "inner_empty_datagrams_bounded", CHILD_FLAG);
}

/// Not a test of its own: the part of the test above that runs inside the namespace.
#[test]
#[ignore = "runs inside a network namespace, started by empty_datagrams_are_charged_per_entry_and_bounded"]
fn inner_empty_datagrams_bounded() {
    let Some((mut reactor, sink, received)) = child_with_sink() else {
        return;
    };
    const LIMIT: usize = 256 * 1024;
    /// Where the loop gives up if nothing refuses it.
    const MAX_WRITES: u64 = 1_000_000;
    let to = sink.local_addr();
    let flow = FlowCounter::default();
    let (pauses, resumes) = (flow.pauses.clone(), flow.resumes.clone());
    let sender = reactor
        .listen_udp_with(
            loopback().send_buffer_size(4096).send_queue_limit(LIMIT),
            flow,
        )
        .expect("sender");
    let rss_before = rss_kib() * 1024;
    let (accepted, refusal) = reactor
        .with_port(&sender, |_, t| {
            let mut accepted = 0u64;
            while accepted < MAX_WRITES {
                match t.write(&[], to) {
                    Ok(()) => accepted += 1,
                    Err(Error::SendQueueFull { len, queued }) => {
                        return (accepted, Some((len, queued, t.write_buffer_size())));
                    }
                    Err(e) => panic!("empty write {accepted}: {e}"),
                }
            }
            (accepted, None)
        })
        .expect("sender open");
    let grown = (rss_kib() * 1024).saturating_sub(rss_before);
    let stats = reactor.port_stats(&sender).expect("sender open");
    println!(
        "accepted {accepted} empty datagrams (bound {}), refusal {refusal:?}, RSS grew {} KiB, \
         pauses {}; {stats:?}",
        LIMIT / ENTRY_CHARGE,
        grown / 1024,
        pauses.get()
    );
    let Some((len, queued, size)) = refusal else {
        panic!(
            "{accepted} empty datagrams accepted, none refused (RSS grew {} KiB)",
            grown / 1024
        );
    };
    assert_eq!(len, 0);
    assert_eq!(
        queued, size,
        "the refusal reports what write_buffer_size says"
    );
    assert_eq!(
        queued as u64,
        ENTRY_CHARGE as u64 * stats.send_queued,
        "{stats:?}"
    );
    assert!(queued <= LIMIT && queued + ENTRY_CHARGE > LIMIT, "{queued}");
    assert!(
        stats.send_queued <= (LIMIT / ENTRY_CHARGE) as u64,
        "{stats:?}"
    );
    assert_eq!(
        accepted,
        stats.datagrams_sent + stats.send_queued,
        "{stats:?}"
    );
    assert_eq!(stats.send_dropped, 1, "{stats:?}");
    assert!(
        grown < 4 << 20,
        "RSS grew {} KiB for {accepted} queued empty datagrams",
        grown / 1024
    );
    assert_eq!(
        pauses.get(),
        1,
        "pause_producing for a queue of empty datagrams"
    );

    drive(
        &mut reactor,
        "the queue to drain and everything to arrive",
        |r| {
            let drained = r
                .with_port(&sender, |_, t| t.write_buffer_size() == 0)
                .unwrap_or(false);
            drained && received.borrow().len() as u64 == accepted
        },
    );
    assert_eq!(resumes.get(), 1);
    let stats = reactor.port_stats(&sender).expect("sender open");
    assert_eq!(stats.datagrams_sent, accepted, "{stats:?}");
    println!(
        "INNER-DONE accepted {accepted}, queued {}, refused at {queued} bytes",
        stats.send_queued
    );
}

// ----- a producer that heeds the pause is never refused --------------------------------

#[derive(Debug, Default)]
struct Production {
    next: u32,
    refused: u32,
    pauses: u32,
    resumes: u32,
    /// The most bytes seen waiting (write_buffer_size) right before a write.
    peak: usize,
}

/// Writes numbered datagrams every millisecond, up to `burst` a tick, but only while
/// `is_write_paused` is false (checked before each write).
struct TimerProducer {
    to: SocketAddr,
    total: u32,
    burst: u32,
    size: usize,
    state: Rc<RefCell<Production>>,
}

impl TimerProducer {
    fn tick(&mut self, t: &mut UdpTransport<'_>) {
        let mut s = self.state.borrow_mut();
        for _ in 0..self.burst {
            if t.is_write_paused() || s.next == self.total {
                return;
            }
            s.peak = s.peak.max(t.write_buffer_size());
            match t.write(&numbered(s.next, self.size), self.to) {
                Ok(()) => s.next += 1,
                Err(Error::SendQueueFull { .. }) => {
                    s.refused += 1;
                    return;
                }
                Err(e) => panic!("write {}: {e}", s.next),
            }
        }
    }
}

impl DatagramProtocol for TimerProducer {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        t.call_every(ms(1), |p: &mut TimerProducer, t| p.tick(t))
            .expect("repeating call");
    }

    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}

    fn pause_producing(&mut self, _: &mut UdpTransport<'_>) {
        self.state.borrow_mut().pauses += 1;
    }

    fn resume_producing(&mut self, _: &mut UdpTransport<'_>) {
        self.state.borrow_mut().resumes += 1;
    }
}

/// A timer producer that writes only while `is_write_paused` is false is never refused,
/// even with its high mark asked for at the queue's bound (the port lowers it to leave
/// room for one more datagram); it is paused, and everything arrives in order.
#[test]
#[ignore = "needs root for a network namespace with a tbf qdisc: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test promises -- --ignored"]
fn a_timer_producer_that_heeds_is_write_paused_is_never_refused() {
    Netns::run_rate_limited("pt", "inner_timer_producer_never_refused", CHILD_FLAG);
}

/// Not a test of its own: the part of the test above that runs inside the namespace.
#[test]
#[ignore = "runs inside a network namespace, started by a_timer_producer_that_heeds_is_write_paused_is_never_refused"]
fn inner_timer_producer_never_refused() {
    let Some((mut reactor, sink, received)) = child_with_sink() else {
        return;
    };
    const LIMIT: usize = 256 * 1024;
    const TOTAL: u32 = 1500;
    let to = sink.local_addr();
    let state = Rc::new(RefCell::new(Production::default()));
    let sender = reactor
        .listen_udp_with(
            loopback()
                .send_buffer_size(4096)
                .send_queue_limit(LIMIT)
                .write_buffer_limits(LIMIT, 16 * 1024),
            TimerProducer {
                to,
                total: TOTAL,
                burst: 100,
                size: 1000,
                state: state.clone(),
            },
        )
        .expect("sender");
    drive(&mut reactor, "every accepted datagram to arrive", |_| {
        let s = state.borrow();
        s.next == TOTAL && received.borrow().len() == TOTAL as usize
    });
    let stats = reactor.port_stats(&sender).expect("sender open");
    let s = state.borrow();
    println!("{s:?}; {stats:?}");
    assert_eq!(s.refused, 0, "refused SendQueueFull: {s:?}; {stats:?}");
    assert_eq!(stats.send_dropped, 0, "{stats:?}");
    assert!(s.pauses > 0, "never paused: {s:?}; {stats:?}");
    assert!(s.peak <= LIMIT, "{s:?}");
    assert_eq!(
        *received.borrow(),
        (0..TOTAL).collect::<Vec<_>>(),
        "in order"
    );
    println!(
        "INNER-DONE {} pauses, {} resumes, peak {} bytes, {} queued",
        s.pauses, s.resumes, s.peak, stats.send_queued
    );
}

#[derive(Debug, Default)]
struct Replies {
    next: u32,
    refused: u32,
    pauses: u32,
    resumes: u32,
    /// Requests answered at once, inside `datagram_received`.
    answered_at_once: u32,
    /// Requests answered, at once or later.
    answered: u32,
    paused: bool,
    backlog: VecDeque<SocketAddr>,
}

/// Answers each request with `per_request` numbered replies, unless paused: it stops at
/// `pause_producing` (and only there: it never looks at `is_write_paused`), keeps later
/// requests in a backlog, and answers one of them a millisecond while not paused.
struct BatchReplier {
    per_request: u32,
    size: usize,
    state: Rc<RefCell<Replies>>,
}

impl BatchReplier {
    fn answer(&mut self, t: &mut UdpTransport<'_>, to: SocketAddr) {
        let mut s = self.state.borrow_mut();
        s.answered += 1;
        for _ in 0..self.per_request {
            match t.write(&numbered(s.next, self.size), to) {
                Ok(()) => s.next += 1,
                Err(Error::SendQueueFull { .. }) => s.refused += 1,
                Err(e) => panic!("reply {}: {e}", s.next),
            }
        }
    }

    fn tick(&mut self, t: &mut UdpTransport<'_>) {
        let next = {
            let mut s = self.state.borrow_mut();
            if s.paused {
                None
            } else {
                s.backlog.pop_front()
            }
        };
        if let Some(to) = next {
            self.answer(t, to);
        }
    }
}

impl DatagramProtocol for BatchReplier {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        t.call_every(ms(1), |p: &mut BatchReplier, t| p.tick(t))
            .expect("repeating call");
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, _: &[u8], from: SocketAddr) {
        {
            let mut s = self.state.borrow_mut();
            if s.paused || !s.backlog.is_empty() {
                s.backlog.push_back(from);
                return;
            }
            s.answered_at_once += 1;
        }
        self.answer(t, from);
    }

    fn pause_producing(&mut self, _: &mut UdpTransport<'_>) {
        let mut s = self.state.borrow_mut();
        s.paused = true;
        s.pauses += 1;
    }

    fn resume_producing(&mut self, _: &mut UdpTransport<'_>) {
        let mut s = self.state.borrow_mut();
        s.paused = false;
        s.resumes += 1;
    }
}

/// A batch of 32 requests, each answered inside `datagram_received` with 16 replies (more
/// than the queue holds in all, a fraction of the room above the high mark each): the
/// replier stops at `pause_producing`, which comes right after the request whose replies
/// crossed the mark (gathered replies count toward it), so it is never refused, and every
/// reply arrives in order.
#[test]
#[ignore = "needs root for a network namespace with a tbf qdisc: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test promises -- --ignored"]
fn a_replier_that_stops_at_pause_producing_inside_a_batch_is_never_refused() {
    Netns::run_rate_limited("pb", "inner_batch_replier_never_refused", CHILD_FLAG);
}

/// Not a test of its own: the part of the test above that runs inside the namespace.
#[test]
#[ignore = "runs inside a network namespace, started by a_replier_that_stops_at_pause_producing_inside_a_batch_is_never_refused"]
fn inner_batch_replier_never_refused() {
    let Some((mut reactor, sink, received)) = child_with_sink() else {
        return;
    };
    const REQUESTS: u32 = 32;
    const PER_REQUEST: u32 = 16;
    const SIZE: usize = 1000;
    let state = Rc::new(RefCell::new(Replies::default()));
    let server = reactor
        .listen_udp_with(
            loopback()
                .send_buffer_size(4096)
                .send_queue_limit(256 * 1024)
                .write_buffer_limits(64 * 1024, 16 * 1024),
            BatchReplier {
                per_request: PER_REQUEST,
                size: SIZE,
                state: state.clone(),
            },
        )
        .expect("server");
    // The requests go out from the sink's port (the replies go back to it) before the
    // reactor turns, so that the server reads them as one batch.
    let to = server.local_addr();
    reactor
        .with_port(&sink, |_, t| {
            for i in 0..REQUESTS {
                t.write(&i.to_be_bytes(), to).expect("request");
            }
        })
        .expect("sink open");
    drive(
        &mut reactor,
        "every request answered and its replies in",
        |r| {
            let dropped = r.port_stats(&server).map_or(0, |s| s.send_dropped);
            let s = state.borrow();
            s.answered == REQUESTS && received.borrow().len() as u64 + dropped == u64::from(s.next)
        },
    );
    let stats = reactor.port_stats(&server).expect("server open");
    let s = state.borrow();
    println!("{s:?}; {stats:?}");
    assert_eq!(
        (s.refused, stats.send_dropped),
        (0, 0),
        "refused SendQueueFull, dropped gathered: {s:?}; {stats:?}"
    );
    assert!(s.pauses > 0, "never paused: {s:?}");
    assert!(
        s.answered_at_once < REQUESTS,
        "paused inside the batch: {s:?}"
    );
    assert_eq!(s.next, REQUESTS * PER_REQUEST);
    assert_eq!(
        *received.borrow(),
        (0..s.next).collect::<Vec<_>>(),
        "in order"
    );
    println!(
        "INNER-DONE {} of {REQUESTS} answered inside the batch, {} pauses, {} queued",
        s.answered_at_once, s.pauses, stats.send_queued
    );
}

// ----- kernel_dropped of an adopted socket ------------------------------------------------

/// The kernel's drop count of the IPv4 UDP socket bound to `addr`, which must be listed.
fn proc_drops(addr: SocketAddr) -> u64 {
    udp_drops(addr).unwrap_or_else(|| panic!("no IPv4 socket {addr} in /proc/net/udp"))
}

/// Sends `n` small datagrams to `to` from `from` and waits until the kernel has put each in
/// the receive queue or counted it dropped (the drop count stops moving); returns how many
/// were dropped.
fn flood(from: &UdpSocket, to: SocketAddr, n: u32) -> u64 {
    let before = proc_drops(to);
    for i in 0..n {
        from.send_to(&i.to_be_bytes(), to).expect("flood send");
    }
    let end = Instant::now() + DEADLINE;
    let mut last = proc_drops(to);
    loop {
        std::thread::sleep(ms(5));
        let now = proc_drops(to);
        if now == last || Instant::now() > end {
            return now - before;
        }
        last = now;
    }
}

/// A socket on 127.0.0.1 with the smallest receive buffer the kernel allows, so that a few
/// datagrams fill it.
fn tiny_socket() -> UdpSocket {
    let s = UdpSocket::bind("127.0.0.1:0").expect("bind");
    SockRef::from(&s)
        .set_recv_buffer_size(1)
        .expect("SO_RCVBUF");
    s
}

/// Counts the datagrams delivered.
fn counting(count: &Rc<Cell<u64>>) -> impl DatagramProtocol + use<> {
    let count = count.clone();
    from_fn(move |_, _, _| count.set(count.get() + 1))
}

/// `SO_RXQ_OVFL` in asm-generic/socket.h (x86_64, aarch64, riscv64 ...); libc does not
/// export it for these targets.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "x86"
    )
))]
const SO_RXQ_OVFL: libc::c_int = 40;

/// A socket that had `SO_RXQ_OVFL` on and had dropped datagrams before it is adopted (its
/// queued datagrams carry the drop counts of their time, below the count at adoption):
/// `kernel_dropped` starts at 0 and then counts exactly the drops since adoption.
#[cfg(all(
    target_os = "linux",
    any(
        target_arch = "x86_64",
        target_arch = "aarch64",
        target_arch = "riscv64",
        target_arch = "x86"
    )
))]
#[test]
fn kernel_dropped_of_an_adopted_socket_counts_only_drops_since_adoption() {
    use std::os::fd::AsRawFd;
    init_logging();
    let sock = tiny_socket();
    let on: libc::c_int = 1;
    // SAFETY: `sock` is an open socket for the duration of the call; the option value is a
    // c_int that lives across the call, and its size is passed with it.
    let rc = unsafe {
        libc::setsockopt(
            sock.as_raw_fd(),
            libc::SOL_SOCKET,
            SO_RXQ_OVFL,
            (&on as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        )
    };
    assert_eq!(rc, 0, "SO_RXQ_OVFL: {}", std::io::Error::last_os_error());
    let addr = sock.local_addr().expect("addr");
    let peer = client();
    // Drops, then room made by reading, then datagrams queued with the count of that time,
    // then more drops: what waits in the queue carries a count below the socket's.
    let first = flood(&peer, addr, 200);
    sock.set_nonblocking(true).expect("nonblocking");
    let mut buf = [0u8; 64];
    let mut read_before = 0;
    while sock.recv(&mut buf).is_ok() {
        read_before += 1;
    }
    let second = flood(&peer, addr, 200);
    let at_adoption = proc_drops(addr);
    let waiting = 200 - second;

    let mut reactor = reactor();
    let delivered = Rc::new(Cell::new(0));
    let port = reactor
        .adopt_socket(&sock, counting(&delivered))
        .expect("adopt");
    let at_start = reactor.port_stats(&port).expect("open").kernel_dropped;
    drive(&mut reactor, "the datagrams queued before adoption", |_| {
        delivered.get() >= waiting
    });
    let after_queue = reactor.port_stats(&port).expect("open").kernel_dropped;
    let third = flood(&peer, addr, 200);
    let since = proc_drops(addr) - at_adoption;
    drive(&mut reactor, "the datagrams of the third flood", |_| {
        delivered.get() >= waiting + (200 - third)
    });
    let stats = reactor.port_stats(&port).expect("open");
    println!(
        "drops: {first} then {second} before adoption (count {at_adoption}; {read_before} read \
         in between), {third} after; kernel_dropped at adoption {at_start}, after the queue \
         {after_queue}, at the end {} (expected {since}); delivered {}",
        stats.kernel_dropped,
        delivered.get()
    );
    assert!(
        first > 0 && second > 0 && third > 0,
        "the floods dropped nothing"
    );
    assert_eq!(at_start, 0, "at adoption");
    assert_eq!(after_queue, 0, "after the datagrams queued before adoption");
    assert_eq!(
        stats.kernel_dropped, since,
        "the drops since adoption, exactly"
    );
    assert_eq!(delivered.get(), waiting + (200 - third));
}

/// A socket adopted, released (the port stopped) and adopted again, the way a program
/// hands its socket on: the second port's `kernel_dropped` counts only the drops since its
/// own adoption, although datagrams queued before it carry older (lower) counts.
#[test]
fn kernel_dropped_counts_from_each_adoption_of_the_same_socket() {
    init_logging();
    let sock = tiny_socket();
    let addr = sock.local_addr().expect("addr");
    let peer = client();
    let mut reactor = reactor();

    let delivered = Rc::new(Cell::new(0));
    let first_port = reactor
        .adopt_socket(&sock, counting(&delivered))
        .expect("first adoption");
    let first_start = proc_drops(addr);
    let dropped = flood(&peer, addr, 200);
    drive(
        &mut reactor,
        "the first port to read what was queued",
        |_| delivered.get() >= 200 - dropped,
    );
    let first_stats = reactor.port_stats(&first_port).expect("open");
    assert!(reactor.stop_listening(&first_port));
    drive(&mut reactor, "the first port to close", |r| {
        r.port_count() == 0
    });

    // Queued with the count of now, then more drops.
    let before = flood(&peer, addr, 200);
    let at_adoption = proc_drops(addr);
    let delivered_again = Rc::new(Cell::new(0));
    let second_port = reactor
        .adopt_socket(&sock, counting(&delivered_again))
        .expect("second adoption");
    drive(
        &mut reactor,
        "the datagrams queued before the second adoption",
        |_| delivered_again.get() >= 200 - before,
    );
    let after_queue = reactor
        .port_stats(&second_port)
        .expect("open")
        .kernel_dropped;
    let after = flood(&peer, addr, 200);
    drive(&mut reactor, "the datagrams of the last flood", |_| {
        delivered_again.get() >= (200 - before) + (200 - after)
    });
    let second_stats = reactor.port_stats(&second_port).expect("open");
    let since = proc_drops(addr) - at_adoption;
    println!(
        "first port: {dropped} dropped (from count {first_start}), kernel_dropped {}; second \
         port: {before} dropped before it, {after} after, kernel_dropped after the queue \
         {after_queue}, at the end {} (expected {since})",
        first_stats.kernel_dropped, second_stats.kernel_dropped
    );
    assert!(
        dropped > 0 && before > 0 && after > 0,
        "the floods dropped nothing"
    );
    assert_eq!(first_stats.kernel_dropped, dropped, "the first port");
    assert_eq!(after_queue, 0, "the second port, after the queue");
    assert_eq!(
        second_stats.kernel_dropped, since,
        "the second port, at the end"
    );
}

// ----- the byte budget ----------------------------------------------------------------------

/// With 64 KiB datagrams waiting and a read budget of 256 datagrams or 256 KiB, one turn
/// delivers at most 256 KiB and one datagram (the batch asked of the kernel is cut to what
/// the byte budget has room for), and the rest follows on later turns.
#[test]
fn one_turn_reads_at_most_the_byte_budget_and_one_datagram() {
    init_logging();
    const BUDGET: usize = 256 * 1024;
    const SIZE: usize = 65507;
    const SENT: u64 = 40;
    let mut reactor = reactor();
    let bytes = Rc::new(Cell::new(0usize));
    let port = {
        let bytes = bytes.clone();
        reactor
            .listen_udp_with(
                loopback()
                    .max_packet_size(65535)
                    .read_budget(256, BUDGET)
                    .recv_buffer_size(8 << 20),
                from_fn(move |_, data, _| bytes.set(bytes.get() + data.len())),
            )
            .expect("listen")
    };
    let c = client();
    let payload = vec![7u8; SIZE];
    for _ in 0..SENT {
        c.send_to(&payload, port.local_addr()).expect("send");
    }
    let mut per_turn = Vec::new();
    let end = Instant::now() + DEADLINE;
    loop {
        let s = reactor.port_stats(&port).expect("open");
        if s.datagrams_received + s.kernel_dropped >= SENT || Instant::now() > end {
            break;
        }
        let before = bytes.get();
        reactor.iterate(ms(50)).expect("turn");
        if bytes.get() > before {
            per_turn.push(bytes.get() - before);
        }
    }
    let stats = reactor.port_stats(&port).expect("open");
    let kib: Vec<usize> = per_turn.iter().map(|b| b / 1024).collect();
    println!(
        "KiB per turn {kib:?}; {} of {SENT} delivered, {} dropped by the kernel",
        stats.datagrams_received, stats.kernel_dropped
    );
    assert_eq!(
        stats.datagrams_received + stats.kernel_dropped,
        SENT,
        "{stats:?}"
    );
    let max = per_turn.iter().copied().max().unwrap_or(0);
    assert!(
        max <= BUDGET + SIZE,
        "a turn delivered {max} bytes ({} KiB), over {BUDGET} + {SIZE}: {kib:?}",
        max / 1024
    );
    if stats.datagrams_received * (SIZE as u64) <= (BUDGET + SIZE) as u64 {
        eprintln!(
            "skipped: the kernel kept only {} datagrams of {SIZE} bytes (net.core.rmem_max too \
             small): the budget was never reached",
            stats.datagrams_received
        );
        return;
    }
    assert!(per_turn.len() > 1, "{kib:?}");
}

// ----- adopted connected sockets ------------------------------------------------------------

#[derive(Default, Debug)]
struct Reports {
    refused: u32,
    errors: u32,
    datagrams: Vec<Vec<u8>>,
}

/// Records refusals, other errors and datagrams.
struct ReportCounter(Rc<RefCell<Reports>>);

impl DatagramProtocol for ReportCounter {
    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, data: &[u8], _: SocketAddr) {
        self.0.borrow_mut().datagrams.push(data.to_vec());
    }

    fn connection_refused(&mut self, _: &mut UdpTransport<'_>) {
        self.0.borrow_mut().refused += 1;
    }

    fn error_received(&mut self, _: &mut UdpTransport<'_>, _: &Error, _: SocketAddr) {
        self.0.borrow_mut().errors += 1;
    }
}

/// Adopts `sock` for a [`ReportCounter`]; returns the port and what it records.
fn adopt_reporting(
    reactor: &mut Reactor,
    sock: &UdpSocket,
) -> (ListeningPort<ReportCounter>, Rc<RefCell<Reports>>) {
    let reports = Rc::new(RefCell::new(Reports::default()));
    let port = reactor
        .adopt_socket(sock, ReportCounter(reports.clone()))
        .expect("adopt");
    (port, reports)
}

/// Turns the reactor until a refusal is reported (at most [`DEADLINE`]); asserts that it
/// went to `connection_refused` once (never to `error_received`) and was counted once.
#[track_caller]
fn assert_one_refusal(
    reactor: &mut Reactor,
    port: &ListeningPort<ReportCounter>,
    reports: &Rc<RefCell<Reports>>,
) {
    let in_time = reactor
        .run_until(DEADLINE, |_| reports.borrow().refused > 0)
        .expect("turns");
    let stats = reactor.port_stats(port).expect("open");
    println!(
        "refused within {DEADLINE:?}: {in_time}; {:?}; {stats:?}",
        reports.borrow()
    );
    assert_eq!(
        (reports.borrow().refused, reports.borrow().errors),
        (1, 0),
        "one connection_refused, no error_received"
    );
    assert_eq!(stats.refused, 1, "{stats:?}");
}

/// A std socket connected to a peer, adopted, is served as a connected port: its transport
/// names the peer, `send` reaches it, the peer's datagrams are delivered, and once the peer
/// is gone a refusal goes to `connection_refused` (not `error_received`) and is counted.
#[test]
fn an_adopted_connected_socket_is_served_as_connected() {
    init_logging();
    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
    peer.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let peer_addr = peer.local_addr().expect("peer addr");
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.connect(peer_addr).expect("connect");
    let mut reactor = reactor();
    let (port, reports) = adopt_reporting(&mut reactor, &sock);
    let seen_peer = reactor.with_port(&port, |_, t| t.peer_addr());
    println!("peer_addr {seen_peer:?} (connected to {peer_addr})");
    assert!(
        matches!(seen_peer, Ok(Some(p)) if p == peer_addr),
        "{seen_peer:?}"
    );

    let sent = reactor.with_port(&port, |_, t| t.send(b"to the peer"));
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    let mut buf = [0u8; 64];
    let (n, from) = peer.recv_from(&mut buf).expect("the peer receives");
    assert_eq!((&buf[..n], from), (&b"to the peer"[..], port.local_addr()));
    peer.send_to(b"from the peer", port.local_addr())
        .expect("peer send");
    drive(&mut reactor, "the peer's datagram", |_| {
        !reports.borrow().datagrams.is_empty()
    });

    drop(peer);
    let sent = reactor.with_port(&port, |_, t| t.send(b"to nobody"));
    assert!(matches!(sent, Ok(Ok(()))), "{sent:?}");
    assert_one_refusal(&mut reactor, &port, &reports);
}

/// A refusal already pending on a connected socket when it is adopted (it sent to a closed
/// peer just before) is read by the reactor, counted and reported to `connection_refused`.
#[test]
fn a_refusal_pending_at_adoption_reaches_connection_refused() {
    init_logging();
    let dead = dead_addr();
    let sock = UdpSocket::bind("127.0.0.1:0").expect("bind");
    sock.connect(dead).expect("connect");
    sock.send(b"to nobody").expect("send");
    wait_for_socket_error(&sock);
    let mut reactor = reactor();
    let (port, reports) = adopt_reporting(&mut reactor, &sock);
    assert_one_refusal(&mut reactor, &port, &reports);
    assert!(reactor.is_listening(&port));
}

/// Waits (bounded) until the kernel flags an error on `sock` (the ICMP refusal arrived),
/// without consuming it: a clone is watched with a poll of its own.
fn wait_for_socket_error(sock: &UdpSocket) {
    let mut poll = mio::Poll::new().expect("poll");
    let mut watched = mio::net::UdpSocket::from_std(sock.try_clone().expect("clone"));
    poll.registry()
        .register(&mut watched, mio::Token(0), mio::Interest::READABLE)
        .expect("register");
    let mut events = mio::Events::with_capacity(4);
    let end = Instant::now() + DEADLINE;
    while Instant::now() < end {
        poll.poll(&mut events, Some(ms(50))).expect("poll");
        if events.iter().any(|e| e.is_error()) {
            return;
        }
    }
    panic!("no refusal reached the socket within {DEADLINE:?}");
}

// ----- local_addr after connect -------------------------------------------------------------

/// A port bound to 0.0.0.0:0 and connected to 127.0.0.1: its transport's `local_addr` is
/// the address the kernel gave it (127.0.0.1 and its port, what the peer sees and what
/// std's `local_addr` says), while the `ListeningPort` keeps the bound address.
#[test]
fn local_addr_after_connect_is_the_kernels() {
    init_logging();
    let peer = UdpSocket::bind("127.0.0.1:0").expect("peer");
    peer.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut reactor = reactor();
    let port = reactor
        .listen_udp(0, from_fn(|_, _, _| {}))
        .expect("listen on 0.0.0.0:0");
    let bound = port.local_addr();
    let (before, after) = reactor
        .with_port(&port, |_, t| {
            let before = t.local_addr();
            t.connect(peer.local_addr().expect("peer addr"))
                .expect("connect");
            t.send(b"who am I").expect("send");
            (before, t.local_addr())
        })
        .expect("open");
    let mut buf = [0u8; 16];
    let (_, seen_by_peer) = peer.recv_from(&mut buf).expect("peer receives");
    // What std says of a socket bound and connected the same way.
    let std_sock = UdpSocket::bind("0.0.0.0:0").expect("std socket");
    std_sock
        .connect(peer.local_addr().expect("peer addr"))
        .expect("connect");
    let std_local = std_sock.local_addr().expect("std local_addr");
    println!(
        "bound {bound}; transport before connect {before}, after {after}; the peer sees \
         {seen_by_peer}; std's connected wildcard socket says {std_local}; ListeningPort \
         says {}",
        port.local_addr()
    );
    assert_eq!(before, bound);
    assert_eq!(after, seen_by_peer);
    assert_eq!(after, SocketAddr::new(std_local.ip(), bound.port()));
    assert_eq!(port.local_addr(), bound);
    assert!(bound.ip().is_unspecified());
}

// ----- the run loop -------------------------------------------------------------------------

/// `ReactorHandle::stop` called while no `run` runs is kept: the next `run` closes the
/// ports and returns in its first turn (a zero-interval timer counts the turns; a backstop
/// timer would stop a run that went on).
#[test]
fn a_handle_stop_between_runs_ends_the_next_run_in_its_first_turn() {
    init_logging();
    let mut reactor = reactor();
    let handle = reactor.handle();
    let first = reactor.call_later(ms(1), |r| r.stop());
    reactor.run().expect("first run");
    assert!(!reactor.is_pending(first));

    let (proto, events) = util::Recorder::new();
    let port = util::listen_loopback(&mut reactor, proto);
    let turns = Rc::new(Cell::new(0u32));
    let counter = {
        let turns = turns.clone();
        reactor.call_every(Duration::ZERO, move |_| turns.set(turns.get() + 1))
    };
    let backstop_fired = Rc::new(Cell::new(false));
    let backstop = {
        let fired = backstop_fired.clone();
        reactor.call_later(DEADLINE, move |r| {
            fired.set(true);
            r.stop();
        })
    };
    std::thread::spawn(move || handle.stop())
        .join()
        .expect("stop thread")
        .expect("reactor alive");
    reactor.run().expect("second run");
    let stops = util::count(&events, |e| *e == util::Event::Stop);
    println!(
        "second run: {} turns of the zero-interval timer, backstop fired {}, stop_protocol {stops}",
        turns.get(),
        backstop_fired.get()
    );
    assert!(!backstop_fired.get(), "the run went on until the backstop");
    assert!(turns.get() <= 1, "{} turns", turns.get());
    assert_eq!(stops, 1);
    assert!(!reactor.is_listening(&port));
    reactor.cancel(counter);
    reactor.cancel(backstop);
}

/// `call_every(Duration::ZERO)`, reactor-level or port-scoped, runs once per turn: never
/// twice in one turn (a call scheduled for "now" from a timer waits for the next turn),
/// never skipping one.
#[test]
fn call_every_zero_runs_once_per_turn() {
    init_logging();
    let mut reactor = reactor();
    let calls = Rc::new(Cell::new(0u32));
    let port_calls = Rc::new(Cell::new(0u32));
    let reactor_timer = {
        let calls = calls.clone();
        reactor.call_every(Duration::ZERO, move |_| calls.set(calls.get() + 1))
    };
    let port = util::listen_loopback(&mut reactor, from_fn(|_, _, _| {}));
    let port_timer = {
        let port_calls = port_calls.clone();
        reactor
            .call_every_on(&port, Duration::ZERO, move |_, _| {
                port_calls.set(port_calls.get() + 1)
            })
            .expect("port timer")
    };
    let mut per_turn = Vec::new();
    for _ in 0..50 {
        let (a, b) = (calls.get(), port_calls.get());
        reactor.iterate(ms(50)).expect("turn");
        per_turn.push((calls.get() - a, port_calls.get() - b));
    }
    println!("calls per turn (reactor, port): {per_turn:?}");
    assert!(per_turn.iter().all(|&c| c == (1, 1)), "{per_turn:?}");
    assert!(reactor.cancel(reactor_timer) && reactor.cancel(port_timer));
}
