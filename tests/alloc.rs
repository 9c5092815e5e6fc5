//! Zero heap allocations per datagram on the reactor's hot path.
//!
//! A counting global allocator wraps `System`. Each thread has its own count and its own
//! on/off switch (both thread-locals with `const` initialisers and no destructor, so
//! reading them never allocates): the count is switched on only around the reactor's
//! turns, so the client's work (run in the same thread, between turns) and the other
//! tests of this binary (run in parallel, on their own threads) never count.
//!
//! A non-blocking std client sends 64-byte datagrams in windows of 32 and reads the echoes
//! back between turns. After a warm-up (the receive and send batches, the event buffer and
//! the slab are allocated once, on first use), the count must not move at all while
//! another 90,000 datagrams are echoed. No logger is installed, so the `log` macros
//! format nothing.
//!
//! `counter_sees_one_allocation_per_datagram` runs the same harness with a protocol that
//! copies each datagram into a `Vec`, to show the instrument does catch it.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::hint::black_box;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use twine::bench_support::SendBatch;
use twine::{DatagramProtocol, ListenOptions, Reactor, UdpTransport};

struct CountingAlloc;

thread_local! {
    static COUNTING: Cell<bool> = const { Cell::new(false) };
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

fn note_allocation() {
    // `try_with`: never panic inside the allocator, even while the thread is exiting.
    let _ = COUNTING.try_with(|on| {
        if on.get() {
            let _ = ALLOCATIONS.try_with(|n| n.set(n.get() + 1));
        }
    });
}

// SAFETY: every method forwards to `System` unchanged; counting touches only
// thread-locals that need no allocation and no destructor.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: the caller's contract for `alloc` is passed on as it is.
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        note_allocation();
        // SAFETY: as above.
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        note_allocation();
        // SAFETY: as above; `ptr` came from this allocator, that is from `System`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as above.
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: CountingAlloc = CountingAlloc;

/// Allocations (alloc, alloc_zeroed, realloc) this thread made inside [`counted`].
fn allocations() -> u64 {
    ALLOCATIONS.with(Cell::get)
}

/// Runs `f` with this thread's allocations counted.
fn counted<R>(f: impl FnOnce() -> R) -> R {
    COUNTING.with(|on| on.set(true));
    let out = f();
    COUNTING.with(|on| on.set(false));
    out
}

const PAYLOAD: usize = 64;
const WINDOW: usize = 32;
const WARM_UP: usize = 10_000;
const MEASURED: usize = 90_000;
/// The longest one window of echoes may take.
const WINDOW_DEADLINE: Duration = Duration::from_secs(5);

/// Echoes to the sender with `write`.
struct Echo;

impl DatagramProtocol for Echo {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        t.write(data, from).expect("echo write");
    }
}

/// Connects to `peer` on start and echoes with `send`.
struct ConnectedEcho {
    peer: SocketAddr,
}

impl DatagramProtocol for ConnectedEcho {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        t.connect(self.peer).expect("connect to the client");
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], _from: SocketAddr) {
        t.send(data).expect("echo send");
    }
}

/// Echoes, but first copies the datagram to the heap: one allocation per datagram.
struct CopyingEcho;

impl DatagramProtocol for CopyingEcho {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        let copy = black_box(data.to_vec());
        t.write(&copy, from).expect("echo write");
    }
}

/// A client of one port, and the reactor that serves it.
struct Bench {
    reactor: Reactor,
    client: UdpSocket,
    server: SocketAddr,
    /// Datagrams echoed so far, and the sequence number of the next one.
    echoed: u64,
    /// Sends each window as one segmented burst (so that a port with receive offload
    /// reads it coalesced), through a batch made once, before anything is counted.
    segmenting: Option<SendBatch>,
}

impl Bench {
    /// Echoes `n` datagrams, `WINDOW` at a time; returns the reactor thread's allocations
    /// during those turns.
    fn echo(&mut self, n: usize) -> u64 {
        let before = allocations();
        let mut out = [0u8; PAYLOAD];
        let mut back = [0u8; PAYLOAD + 1];
        let mut left = n;
        while left > 0 {
            let window = left.min(WINDOW);
            if let Some(batch) = self.segmenting.as_mut() {
                batch.clear();
                for i in 0..window as u64 {
                    out[..8].copy_from_slice(&(self.echoed + i).to_le_bytes());
                    batch.push(&out, self.server);
                }
                let mut next = 0;
                while next < batch.len() {
                    next += batch
                        .send_segmented(&self.client, next, false)
                        .expect("client segmented send");
                }
            } else {
                for i in 0..window as u64 {
                    out[..8].copy_from_slice(&(self.echoed + i).to_le_bytes());
                    let sent = self.client.send_to(&out, self.server).expect("client send");
                    assert_eq!(sent, PAYLOAD);
                }
            }
            let deadline = Instant::now() + WINDOW_DEADLINE;
            let mut got = 0;
            while got < window {
                assert!(
                    Instant::now() < deadline,
                    "only {got} of {window} echoes within {WINDOW_DEADLINE:?} \
                     (after {} echoed)",
                    self.echoed
                );
                counted(|| self.reactor.iterate(Duration::from_millis(10))).expect("turn");
                loop {
                    match self.client.recv(&mut back) {
                        Ok(len) => {
                            assert_eq!(len, PAYLOAD, "echo of the wrong length");
                            let seq = u64::from_le_bytes(back[..8].try_into().unwrap());
                            assert_eq!(seq, self.echoed, "echo out of order");
                            self.echoed += 1;
                            got += 1;
                        }
                        Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                        Err(e) => panic!("client recv: {e}"),
                    }
                }
            }
            left -= window;
        }
        allocations() - before
    }
}

fn client_socket() -> UdpSocket {
    let client = UdpSocket::bind("127.0.0.1:0").expect("client bind");
    client.set_nonblocking(true).expect("client non-blocking");
    client
}

fn listen<P: DatagramProtocol>(protocol: P, client: UdpSocket) -> Bench {
    listen_with(ListenOptions::new(0), protocol, client)
}

fn listen_with<P: DatagramProtocol>(opts: ListenOptions, protocol: P, client: UdpSocket) -> Bench {
    let mut reactor = Reactor::new().expect("reactor");
    let port = reactor
        .listen_udp_with(opts.interface("127.0.0.1"), protocol)
        .expect("listen");
    Bench {
        reactor,
        client,
        server: port.local_addr(),
        echoed: 0,
        segmenting: None,
    }
}

/// The most allocations the warm-up may make: the reactor's receive and send batches
/// (a box and four or five vectors each) are made on the first read; nothing else is
/// expected. A bound, not an exact count, so that a change in how the batches are laid
/// out does not fail this test; what matters is the next phase.
const WARM_UP_BOUND: u64 = 64;

/// Warms up, then echoes the rest of the datagrams, and checks that only the warm-up
/// allocated (a bounded, one-time amount) and the rest allocated nothing at all.
fn assert_steady_state_allocates_nothing(what: &str, bench: &mut Bench) {
    let warm_up = bench.echo(WARM_UP);
    let measured = bench.echo(MEASURED);
    eprintln!(
        "{what}: {warm_up} allocations in the first {WARM_UP} datagrams, \
         {measured} in the next {MEASURED}"
    );
    assert!(
        warm_up <= WARM_UP_BOUND,
        "{what}: {warm_up} allocations while warming up with {WARM_UP} datagrams"
    );
    assert_eq!(
        measured, 0,
        "{what}: {measured} allocations while echoing {MEASURED} datagrams after warm-up"
    );
}

#[test]
fn echo_allocates_nothing_per_datagram() {
    let mut bench = listen(Echo, client_socket());
    assert_steady_state_allocates_nothing("write echo", &mut bench);
}

#[test]
fn connected_echo_allocates_nothing_per_datagram() {
    let client = client_socket();
    let peer = client.local_addr().expect("client address");
    let mut bench = listen(ConnectedEcho { peer }, client);
    bench.client.connect(bench.server).expect("client connect");
    assert_steady_state_allocates_nothing("connected echo", &mut bench);
}

/// With receive offload, each window arrives as one coalesced read that the port cuts up:
/// still nothing allocated per datagram.
#[test]
fn echo_of_coalesced_reads_allocates_nothing_per_datagram() {
    let mut reactor = Reactor::new().expect("reactor");
    let port = reactor
        .listen_udp_with(
            ListenOptions::new(0)
                .interface("127.0.0.1")
                .receive_offload(true),
            Echo,
        )
        .expect("listen");
    let mut bench = Bench {
        reactor,
        client: client_socket(),
        server: port.local_addr(),
        echoed: 0,
        segmenting: Some(SendBatch::with_capacity(WINDOW, WINDOW * PAYLOAD)),
    };
    assert_steady_state_allocates_nothing("echo of coalesced reads", &mut bench);
    let stats = bench.reactor.port_stats(&port).expect("open");
    assert!(
        stats.coalesced_reads > 0,
        "no read came coalesced: {stats:?}"
    );
}

/// The instrument itself: a protocol that allocates once per datagram is seen doing so.
#[test]
fn counter_sees_one_allocation_per_datagram() {
    let mut bench = listen(CopyingEcho, client_socket());
    bench.echo(WARM_UP);
    let n = 10_000;
    let measured = bench.echo(n);
    eprintln!("copying echo: {measured} allocations in {n} datagrams after warm-up");
    assert!(
        measured >= n as u64,
        "only {measured} allocations counted for {n} copied datagrams"
    );
}

/// Echoes, and counts the allocations of its own (reactor) thread between its
/// `WARM_UP`th and its `WARM_UP + MEASURED`th datagram: everything the reactor does on
/// that thread in between (turns, reads, sends) counts.
struct CountingEcho {
    seen: usize,
    start: u64,
    result: std::sync::Arc<std::sync::Mutex<Option<u64>>>,
}

impl DatagramProtocol for CountingEcho {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        t.write(data, from).expect("echo write");
        self.seen += 1;
        if self.seen == WARM_UP {
            COUNTING.with(|on| on.set(true));
            self.start = allocations();
        } else if self.seen == WARM_UP + MEASURED {
            let counted = allocations() - self.start;
            COUNTING.with(|on| on.set(false));
            if let Ok(mut result) = self.result.lock() {
                *result = Some(counted);
            }
        }
    }
}

/// A reactor of a `ReactorPool` allocates nothing per datagram either: its thread is
/// counted from inside its protocol, once warmed up.
#[test]
fn a_pool_reactor_allocates_nothing_per_datagram() {
    use std::sync::{Arc, Mutex, mpsc};
    let result = Arc::new(Mutex::new(None));
    let (ready_tx, ready_rx) = mpsc::channel();
    let shared = result.clone();
    let runner = std::thread::spawn(move || {
        let mut pool = twine::ReactorPool::bind(ListenOptions::new(0).interface("127.0.0.71"), 2)
            .expect("bind the pool");
        pool.set_handle_signals(false);
        let _ = ready_tx.send((pool.local_addr(), pool.handle()));
        pool.run(|_| CountingEcho {
            seen: 0,
            start: 0,
            result: shared.clone(),
        })
    });
    let (server, handle) = ready_rx
        .recv_timeout(WINDOW_DEADLINE)
        .expect("the pool was bound");
    let client = UdpSocket::bind("127.0.0.71:0").expect("client bind");
    client.set_nonblocking(true).expect("non-blocking");
    let mut out = [0u8; PAYLOAD];
    let mut back = [0u8; PAYLOAD + 1];
    let mut echoed = 0usize;
    while echoed < WARM_UP + MEASURED {
        let window = (WARM_UP + MEASURED - echoed).min(WINDOW);
        for i in 0..window {
            out[..8].copy_from_slice(&((echoed + i) as u64).to_le_bytes());
            client.send_to(&out, server).expect("client send");
        }
        let deadline = Instant::now() + WINDOW_DEADLINE;
        let mut got = 0;
        while got < window {
            assert!(Instant::now() < deadline, "only {got} of {window} echoes");
            match client.recv(&mut back) {
                Ok(len) => {
                    assert_eq!(len, PAYLOAD);
                    got += 1;
                }
                Err(e) if e.kind() == ErrorKind::WouldBlock => std::thread::yield_now(),
                Err(e) => panic!("client recv: {e}"),
            }
        }
        echoed += window;
    }
    handle.stop().expect("stop the pool");
    let stats = runner
        .join()
        .expect("the pool's thread")
        .expect("the pool ran");
    assert_eq!(stats.total.datagrams_received, echoed as u64);
    let counted = result.lock().expect("result").take();
    eprintln!("pool reactor: {counted:?} allocations in {MEASURED} datagrams after warm-up");
    assert_eq!(counted, Some(0), "allocations on the reactor's thread");
}
