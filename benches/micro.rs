//! Micro-benchmarks through the public API (criterion; `cargo bench --bench micro`).
//!
//! - `timers/*`: the timer queue. `call_later+cancel` and `reset` never fire and make no
//!   system call; `call_later+fire` schedules a zero-delay call and turns the reactor once,
//!   so it includes one `epoll_wait`. Each runs with no other timer pending and with 10,000
//!   far-future ones, to show the cost of a deeper heap.
//! - `dispatch/*`: event -> protocol callback -> write. A reactor with one echo port and a
//!   client socket in the same thread: each iteration sends one datagram, turns the reactor
//!   until the echo is back and reads it (`write` to the sender, or `send` on a connected
//!   port); `window_32` does the same with 32 datagrams at a time, sent and read with the
//!   crate's `sendmmsg`/`recvmmsg` batches, and reports per datagram. The kernel's share
//!   (four system calls a datagram, or four a window) is included.
//!
//! Short measurements (0.5 s warm-up, 2 s, 20 samples): the whole run takes about a minute.

use std::hint::black_box;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use twine::bench_support::{RecvBatch, SendBatch};
use twine::{DatagramProtocol, ListenOptions, ListeningPort, Reactor, UdpTransport};

/// Far-future timers kept pending in the `timers` benches' second run.
const BACKGROUND: usize = 10_000;
const FAR: Duration = Duration::from_secs(3600);
/// The longest one echo may take before the bench gives up.
const ECHO_DEADLINE: Duration = Duration::from_secs(5);
const PAYLOAD: usize = 64;
const WINDOW: usize = 32;

/// A reactor with `pending` far-future timers.
fn reactor_with_timers(pending: usize) -> Reactor {
    let mut reactor = Reactor::new().expect("reactor");
    for i in 0..pending {
        reactor.call_later(FAR + Duration::from_micros(i as u64), |_| {});
    }
    reactor
}

fn timers(c: &mut Criterion) {
    let mut group = c.benchmark_group("timers");
    for pending in [0, BACKGROUND] {
        let mut reactor = reactor_with_timers(pending);
        group.bench_function(BenchmarkId::new("call_later+cancel", pending), |b| {
            b.iter(|| {
                let call = reactor.call_later(black_box(FAR), |_| {});
                black_box(reactor.cancel(call))
            })
        });
        assert_eq!(reactor.timer_count(), pending, "every call cancelled");

        let mut reactor = reactor_with_timers(pending);
        group.bench_function(BenchmarkId::new("call_later+fire", pending), |b| {
            b.iter(|| {
                reactor.call_later(Duration::ZERO, |r| {
                    black_box(r);
                });
                reactor.iterate(Duration::ZERO).expect("turn");
            })
        });
        assert_eq!(
            reactor.timer_count(),
            pending,
            "every zero-delay call fired"
        );

        let mut reactor = reactor_with_timers(pending);
        let call = reactor.call_later(FAR, |_| {});
        group.bench_function(BenchmarkId::new("reset", pending), |b| {
            b.iter(|| black_box(reactor.reset(call, black_box(FAR))))
        });
        assert!(reactor.is_pending(call));
    }
    group.finish();
}

fn echo(t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
    let _ = t.write(data, from);
}

fn client_socket() -> UdpSocket {
    let client = UdpSocket::bind("127.0.0.1:0").expect("client bind");
    client.set_nonblocking(true).expect("client non-blocking");
    client
}

fn listen<P: DatagramProtocol>(reactor: &mut Reactor, protocol: P) -> ListeningPort<P> {
    reactor
        .listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), protocol)
        .expect("listen")
}

/// Turns the reactor until `received` reports that `want` datagrams have come back;
/// panics past the deadline.
fn turn_until_back(reactor: &mut Reactor, want: usize, mut received: impl FnMut() -> usize) {
    let deadline = Instant::now() + ECHO_DEADLINE;
    let mut got = 0;
    while got < want {
        assert!(
            Instant::now() < deadline,
            "echo not back in {ECHO_DEADLINE:?}"
        );
        reactor.iterate(Duration::from_millis(10)).expect("turn");
        got += received();
    }
}

/// Reads what is waiting on a non-blocking client: 1 if a datagram came, 0 if none.
fn recv_one(client: &UdpSocket, buf: &mut [u8]) -> usize {
    match client.recv(buf) {
        Ok(_) => 1,
        Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
        Err(e) => panic!("client recv: {e}"),
    }
}

fn dispatch(c: &mut Criterion) {
    let mut group = c.benchmark_group("dispatch");
    let payload = [0x5a; PAYLOAD];
    let mut buf = [0; 2 * PAYLOAD];

    let mut reactor = Reactor::new().expect("reactor");
    let server = listen(&mut reactor, twine::from_fn(echo)).local_addr();
    let client = client_socket();
    group.throughput(Throughput::Elements(1));
    group.bench_function("echo_write", |b| {
        b.iter(|| {
            client.send_to(&payload, server).expect("client send");
            turn_until_back(&mut reactor, 1, || recv_one(&client, &mut buf));
        })
    });

    let mut reactor = Reactor::new().expect("reactor");
    let port = listen(
        &mut reactor,
        twine::from_fn(|t, data, _| {
            let _ = t.send(data);
        }),
    );
    let client = client_socket();
    let peer = client.local_addr().expect("client address");
    reactor
        .with_port(&port, |_, t| t.connect(peer))
        .expect("port open")
        .expect("connect to the client");
    client.connect(port.local_addr()).expect("client connect");
    group.bench_function("echo_connected_send", |b| {
        b.iter(|| {
            client.send(&payload).expect("client send");
            turn_until_back(&mut reactor, 1, || recv_one(&client, &mut buf));
        })
    });

    let mut reactor = Reactor::new().expect("reactor");
    let server = listen(&mut reactor, twine::from_fn(echo)).local_addr();
    let client = client_socket();
    let mut out = SendBatch::with_capacity(WINDOW, WINDOW * PAYLOAD);
    for _ in 0..WINDOW {
        out.push(&payload, server);
    }
    let mut back = RecvBatch::default();
    back.reserve(WINDOW, 2 * PAYLOAD);
    group.throughput(Throughput::Elements(WINDOW as u64));
    group.bench_function("echo_window_32", |b| {
        b.iter(|| {
            let mut sent = 0;
            while sent < WINDOW {
                sent += out.send(&client, sent, false).expect("client send");
            }
            turn_until_back(&mut reactor, WINDOW, || {
                match back.recv(&client, WINDOW, 2 * PAYLOAD) {
                    Ok(n) => n,
                    Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
                    Err(e) => panic!("client recv: {e}"),
                }
            });
        })
    });
    group.finish();
}

fn config() -> Criterion {
    Criterion::default()
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2))
        .sample_size(20)
}

criterion_group! {
    name = benches;
    config = config();
    targets = timers, dispatch
}
criterion_main!(benches);
