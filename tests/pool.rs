//! `ReactorPool`: N reactors sharing one address with `SO_REUSEPORT`.
//!
//! Every pool binds an address of its own test (127.0.0.6x), port 0: port 0 with
//! `SO_REUSEPORT` could otherwise share a port with another test's socket, and an exact
//! address wins over a wildcard bind of the same port.

mod util;

use std::collections::HashMap;
use std::io::ErrorKind;
use std::net::{SocketAddr, UdpSocket};
use std::sync::mpsc;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::{Duration, Instant};

use socket2::{Domain, Socket, Type};
use twine::{
    DatagramProtocol, Error, ListenOptions, PoolHandle, PoolStats, PortStats, ReactorPool,
    UdpTransport,
};
use util::DEADLINE;

/// How long the whole exchange of a test may take before it fails.
const EXCHANGE_DEADLINE: Duration = Duration::from_secs(60);

/// Which hooks ran on which reactor.
#[derive(Debug, Default)]
struct Hooks {
    started: Vec<usize>,
    stopped: Vec<usize>,
}

type SharedHooks = Arc<Mutex<Hooks>>;

fn lock(shared: &SharedHooks) -> std::sync::MutexGuard<'_, Hooks> {
    shared.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Echoes each datagram with the reactor's index in front; notes its start and stop.
struct TaggedEcho {
    index: usize,
    hooks: SharedHooks,
    /// Panics in `start_protocol` when set.
    panic_on_start: bool,
}

impl DatagramProtocol for TaggedEcho {
    fn start_protocol(&mut self, _t: &mut UdpTransport<'_>) {
        lock(&self.hooks).started.push(self.index);
        assert!(!self.panic_on_start, "start_protocol panics on purpose");
    }

    fn stop_protocol(&mut self, _t: &mut UdpTransport<'_>) {
        lock(&self.hooks).stopped.push(self.index);
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        if data == b"stop" {
            t.reactor().stop();
            return;
        }
        let mut reply = Vec::with_capacity(data.len() + 1);
        reply.push(u8::try_from(self.index).unwrap_or(u8::MAX));
        reply.extend_from_slice(data);
        if let Err(e) = t.write(&reply, from) {
            log::warn!("echo to {from}: {e}");
        }
    }
}

fn echo(index: usize, hooks: &SharedHooks) -> TaggedEcho {
    TaggedEcho {
        index,
        hooks: Arc::clone(hooks),
        panic_on_start: false,
    }
}

/// A pool running on a thread of its own (a pool, like a reactor, stays on the thread
/// that made it).
struct Running {
    addr: SocketAddr,
    handle: PoolHandle,
    result: mpsc::Receiver<twine::Result<PoolStats>>,
}

impl Running {
    /// The pool's result, within the deadline.
    #[track_caller]
    fn result(&self) -> twine::Result<PoolStats> {
        self.result
            .recv_timeout(DEADLINE)
            .expect("the pool's run returned within the deadline")
    }

    /// Stops the pool and waits for its stats.
    #[track_caller]
    fn stop(&self) -> PoolStats {
        self.handle.stop().expect("stop the pool");
        self.result().expect("the pool ran without error")
    }
}

/// Binds a pool of `n` reactors on `ip` (port 0) and runs it with `factory` on a new
/// thread; `before_run` sees the pool first (after its address and handle are out).
fn start_pool<P, F>(
    ip: &str,
    n: usize,
    factory: F,
    before_run: impl FnOnce(&mut ReactorPool) + Send + 'static,
) -> Running
where
    P: DatagramProtocol,
    F: Fn(usize) -> P + Send + Sync + 'static,
{
    let opts = ListenOptions::new(0)
        .interface(ip)
        .recv_buffer_size(1 << 20);
    let (ready_tx, ready_rx) = mpsc::channel();
    let (result_tx, result_rx) = mpsc::channel();
    std::thread::spawn(move || {
        let mut pool = ReactorPool::bind(opts, n).expect("bind the pool");
        pool.set_handle_signals(false);
        let _ = ready_tx.send((pool.local_addr(), pool.handle()));
        before_run(&mut pool);
        let _ = result_tx.send(pool.run(factory));
    });
    let (addr, handle) = ready_rx
        .recv_timeout(DEADLINE)
        .expect("the pool was bound within the deadline");
    Running {
        addr,
        handle,
        result: result_rx,
    }
}

/// A client datagram: (client id, sequence number).
fn request(client: u16, seq: u32) -> [u8; 6] {
    let mut d = [0; 6];
    d[..2].copy_from_slice(&client.to_be_bytes());
    d[2..].copy_from_slice(&seq.to_be_bytes());
    d
}

/// What the echoes told: per client, the reactor of each reply and how often each
/// sequence number came back.
struct Exchange {
    reactors: Vec<Vec<u8>>,
    seen: Vec<Vec<u32>>,
}

/// `clients` sockets on 127.0.0.1 (distinct source ports) each send `per_client`
/// datagrams to `addr`, at most `window` in flight each, and read the echoes until all
/// came back or the deadline passed.
fn exchange(addr: SocketAddr, clients: usize, per_client: u32, window: u32) -> Exchange {
    let sockets: Vec<UdpSocket> = (0..clients)
        .map(|_| {
            let s = UdpSocket::bind("127.0.0.1:0").expect("bind a client");
            s.set_nonblocking(true).expect("non-blocking client");
            s
        })
        .collect();
    let mut sent = vec![0u32; clients];
    let mut received = vec![0u32; clients];
    let mut out = Exchange {
        reactors: vec![Vec::new(); clients],
        seen: vec![vec![0; per_client as usize]; clients],
    };
    let total = u64::from(per_client) * clients as u64;
    let mut done = 0u64;
    let deadline = Instant::now() + EXCHANGE_DEADLINE;
    let mut buf = [0u8; 64];
    while done < total && Instant::now() < deadline {
        let mut progress = false;
        for (c, socket) in sockets.iter().enumerate() {
            loop {
                match socket.recv_from(&mut buf) {
                    Ok((n, from)) => {
                        assert_eq!(from, addr, "echo from the pool's address");
                        assert_eq!(n, 7, "a tagged echo of a 6-byte datagram");
                        let id = u16::from_be_bytes([buf[1], buf[2]]);
                        assert_eq!(usize::from(id), c, "client {c} got another's echo");
                        let seq = u32::from_be_bytes([buf[3], buf[4], buf[5], buf[6]]);
                        out.reactors[c].push(buf[0]);
                        out.seen[c][seq as usize] += 1;
                        received[c] += 1;
                        done += 1;
                        progress = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client {c} recv: {e}"),
                }
            }
            while sent[c] < per_client && sent[c] - received[c] < window {
                let id = u16::try_from(c).expect("client id fits u16");
                match socket.send_to(&request(id, sent[c]), addr) {
                    Ok(_) => {
                        sent[c] += 1;
                        progress = true;
                    }
                    Err(e) if e.kind() == ErrorKind::WouldBlock => break,
                    Err(e) => panic!("client {c} send: {e}"),
                }
            }
        }
        if !progress {
            std::thread::sleep(Duration::from_micros(200));
        }
    }
    out
}

/// Every datagram echoed exactly once, each client by one reactor only, every reactor
/// serving some clients, and the pool's counters matching what the clients saw.
fn echoes_exactly_once_on_pinned_reactors(ip: &str, n: usize) {
    const CLIENTS: usize = 64;
    const PER_CLIENT: u32 = 200;
    let hooks = SharedHooks::default();
    let factory_hooks = Arc::clone(&hooks);
    let pool = start_pool(ip, n, move |i| echo(i, &factory_hooks), |_| {});
    let got = exchange(pool.addr, CLIENTS, PER_CLIENT, 4);
    let stats = pool.stop();

    let mut clients_of = vec![0usize; n];
    let mut datagrams_of = vec![0u64; n];
    for c in 0..CLIENTS {
        let missing: Vec<usize> = (0..PER_CLIENT as usize)
            .filter(|&s| got.seen[c][s] != 1)
            .collect();
        assert!(
            missing.is_empty(),
            "client {c}: sequence numbers not echoed exactly once: {missing:?}"
        );
        let first = got.reactors[c][0];
        assert!(
            got.reactors[c].iter().all(|&r| r == first),
            "client {c} was answered by more than one reactor"
        );
        clients_of[usize::from(first)] += 1;
        datagrams_of[usize::from(first)] += u64::from(PER_CLIENT);
    }
    assert!(
        clients_of.iter().all(|&k| k > 0),
        "every reactor serves some of the {CLIENTS} clients: {clients_of:?}"
    );

    let total = CLIENTS as u64 * u64::from(PER_CLIENT);
    assert_eq!(stats.per_reactor.len(), n);
    assert_eq!(stats.total.datagrams_received, total);
    assert_eq!(stats.total.datagrams_sent, total);
    assert_eq!(stats.total.bytes_received, total * 6);
    assert_eq!(stats.total.bytes_sent, total * 7);
    let mut sum = PortStats::default();
    for (i, s) in stats.per_reactor.iter().enumerate() {
        assert_eq!(s.datagrams_received, datagrams_of[i], "reactor {i}: {s}");
        assert_eq!(s.datagrams_sent, datagrams_of[i], "reactor {i}: {s}");
        assert_eq!(s.kernel_dropped, 0, "reactor {i}: {s}");
        sum += s;
    }
    assert_eq!(sum, stats.total);

    let hooks = lock(&hooks);
    let mut started = hooks.started.clone();
    let mut stopped = hooks.stopped.clone();
    started.sort_unstable();
    stopped.sort_unstable();
    let all: Vec<usize> = (0..n).collect();
    assert_eq!(started, all, "start_protocol once on each reactor");
    assert_eq!(stopped, all, "stop_protocol once on each reactor");
}

#[test]
fn two_reactors_echo_every_datagram_once_each_client_on_one_reactor() {
    echoes_exactly_once_on_pinned_reactors("127.0.0.61", 2);
}

#[test]
fn three_reactors_on_two_cores_echo_every_datagram_once() {
    echoes_exactly_once_on_pinned_reactors("127.0.0.63", 3);
}

#[test]
fn one_reactor_is_a_pool_too() {
    echoes_exactly_once_on_pinned_reactors("127.0.0.64", 1);
}

#[test]
fn stop_before_run_stops_every_reactor_before_any_traffic() {
    let hooks = SharedHooks::default();
    let factory_hooks = Arc::clone(&hooks);
    let pool = start_pool(
        "127.0.0.65",
        2,
        move |i| echo(i, &factory_hooks),
        |pool| pool.handle().stop().expect("stop before run"),
    );
    let stats = pool.result().expect("a stopped pool returns its stats");
    assert_eq!(stats.per_reactor.len(), 2);
    assert_eq!(stats.total, PortStats::default());
    let hooks = lock(&hooks);
    assert_eq!(hooks.started.len(), 2, "{hooks:?}");
    assert_eq!(hooks.stopped.len(), 2, "{hooks:?}");
    assert!(
        matches!(pool.handle.stop(), Err(Error::ReactorGone)),
        "a handle outliving the pool says so"
    );
}

#[test]
fn a_reactor_stopped_from_inside_stops_the_whole_pool() {
    let hooks = SharedHooks::default();
    let factory_hooks = Arc::clone(&hooks);
    let pool = start_pool("127.0.0.66", 2, move |i| echo(i, &factory_hooks), |_| {});
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    client.send_to(b"stop", pool.addr).expect("send stop");
    let stats = pool.result().expect("the pool ran without error");
    assert_eq!(stats.total.datagrams_received, 1);
    let mut stopped = lock(&hooks).stopped.clone();
    stopped.sort_unstable();
    assert_eq!(stopped, [0, 1]);
}

#[test]
fn a_panicking_factory_stops_the_pool_and_is_reported() {
    let hooks = SharedHooks::default();
    let factory_hooks = Arc::clone(&hooks);
    let pool = start_pool(
        "127.0.0.67",
        2,
        move |i| {
            assert_ne!(i, 1, "factory panics on purpose for reactor 1");
            echo(i, &factory_hooks)
        },
        |_| {},
    );
    match pool.result() {
        Err(Error::ReactorPanicked {
            reactor: 1,
            message,
        }) => {
            assert!(message.contains("on purpose"), "{message}");
        }
        other => panic!("expected reactor 1 to have panicked, got {other:?}"),
    }
    // Reactor 0 may have started before the failure stopped it: then it stopped too.
    let hooks = lock(&hooks);
    assert!(hooks.started.iter().all(|&i| i == 0), "{hooks:?}");
    assert_eq!(hooks.started, hooks.stopped, "{hooks:?}");
}

#[test]
fn a_reactor_whose_port_fails_to_start_fails_the_pool() {
    let hooks = SharedHooks::default();
    let factory_hooks = Arc::clone(&hooks);
    let pool = start_pool(
        "127.0.0.68",
        2,
        move |i| TaggedEcho {
            panic_on_start: i == 0,
            ..echo(i, &factory_hooks)
        },
        |_| {},
    );
    match pool.result() {
        Err(Error::ReactorFailed { reactor: 0, source }) => {
            assert!(matches!(*source, Error::StartPanicked { .. }), "{source}");
        }
        other => panic!("expected reactor 0 to have failed, got {other:?}"),
    }
    let hooks = lock(&hooks);
    assert!(hooks.stopped.iter().all(|&i| i == 1), "{hooks:?}");
}

#[test]
fn a_cpu_that_cannot_be_had_fails_that_reactor() {
    let hooks = SharedHooks::default();
    let factory_hooks = Arc::clone(&hooks);
    let pool = start_pool(
        "127.0.0.69",
        2,
        move |i| echo(i, &factory_hooks),
        |pool| {
            pool.pin_to_cpus(&[0, 1 << 20])
                .expect("one CPU per reactor")
        },
    );
    match pool.result() {
        Err(Error::ReactorFailed { reactor: 1, source }) => {
            assert!(matches!(*source, Error::Io { .. }), "{source}");
        }
        other => panic!("expected reactor 1 to have failed, got {other:?}"),
    }
}

/// The first CPU this process may run on (from `/proc/self/status`).
fn first_allowed_cpu() -> Option<usize> {
    let status = std::fs::read_to_string("/proc/self/status").ok()?;
    let line = status
        .lines()
        .find_map(|l| l.strip_prefix("Cpus_allowed_list:"))?;
    let first = line.trim().split([',', '-']).next()?;
    first.parse().ok()
}

#[test]
fn pinned_reactors_serve_as_the_others_do() {
    let Some(cpu) = first_allowed_cpu() else {
        eprintln!("skipped: no Cpus_allowed_list in /proc/self/status");
        return;
    };
    let hooks = SharedHooks::default();
    let factory_hooks = Arc::clone(&hooks);
    let pool = start_pool(
        "127.0.0.70",
        2,
        move |i| echo(i, &factory_hooks),
        move |pool| pool.pin_to_cpus(&[cpu, cpu]).expect("one CPU per reactor"),
    );
    let got = exchange(pool.addr, 8, 20, 4);
    let stats = pool.stop();
    assert!(got.seen.iter().flatten().all(|&k| k == 1));
    assert_eq!(stats.total.datagrams_received, 8 * 20);
}

#[test]
fn an_address_in_use_is_a_typed_bind_error() {
    // A plain socket, and one with SO_REUSEPORT: the pool's group is its own either way.
    let plain = UdpSocket::bind("127.0.0.71:0").expect("bind a plain socket");
    let reuse = Socket::new(Domain::IPV4, Type::DGRAM, None).expect("socket");
    reuse.set_reuse_port(true).expect("SO_REUSEPORT");
    let reuse_addr: SocketAddr = "127.0.0.72:0".parse().expect("address");
    reuse
        .bind(&reuse_addr.into())
        .expect("bind a reuseport socket");
    let reuse_addr = reuse
        .local_addr()
        .ok()
        .and_then(|a| a.as_socket())
        .expect("its address");
    for taken in [plain.local_addr().expect("its address"), reuse_addr] {
        match ReactorPool::bind(ListenOptions::from_addr(taken), 2) {
            Err(Error::CannotListen { addr, source }) => {
                assert_eq!(addr, taken);
                assert_eq!(source.kind(), ErrorKind::AddrInUse);
            }
            other => panic!("expected CannotListen for {taken}, got {other:?}"),
        }
    }
}

#[test]
fn bad_pool_options_are_refused_before_any_socket() {
    let opts = || ListenOptions::new(0).interface("127.0.0.73");
    assert!(matches!(
        ReactorPool::bind(opts(), 0),
        Err(Error::InvalidOption {
            option: "reactors",
            ..
        })
    ));
    assert!(matches!(
        ReactorPool::bind(opts().listen_multiple(true), 2),
        Err(Error::InvalidOption {
            option: "listen_multiple",
            ..
        })
    ));
    assert!(matches!(
        ReactorPool::bind(ListenOptions::new(0).interface("localhost"), 2),
        Err(Error::InvalidAddress { .. })
    ));
    let mut pool = ReactorPool::bind(opts(), 2).expect("bind");
    assert!(matches!(
        pool.pin_to_cpus(&[0, 1, 2]),
        Err(Error::InvalidOption { .. })
    ));
}

#[test]
fn the_group_is_complete_before_run_and_queues_datagrams() {
    // Datagrams sent between bind and run wait in the sockets' queues and are served.
    let hooks = SharedHooks::default();
    let factory_hooks = Arc::clone(&hooks);
    let (go_tx, go_rx) = mpsc::channel::<()>();
    let pool = start_pool(
        "127.0.0.74",
        2,
        move |i| echo(i, &factory_hooks),
        move |_| {
            let _ = go_rx.recv_timeout(DEADLINE);
        },
    );
    let addr = pool.addr;
    let clients: Vec<UdpSocket> = (0..16).map(|_| util::client_on("127.0.0.1")).collect();
    for (c, s) in clients.iter().enumerate() {
        s.send_to(&request(c as u16, 0), addr)
            .expect("send before run");
    }
    let _ = go_tx.send(());
    let mut per_reactor: HashMap<u8, usize> = HashMap::new();
    let mut buf = [0u8; 16];
    for s in &clients {
        s.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let (n, _) = s
            .recv_from(&mut buf)
            .expect("an echo of the early datagram");
        assert_eq!(n, 7);
        *per_reactor.entry(buf[0]).or_default() += 1;
    }
    let stats = pool.stop();
    assert_eq!(stats.total.datagrams_received, 16);
    for (r, k) in per_reactor {
        assert_eq!(
            stats.per_reactor[usize::from(r)].datagrams_received,
            k as u64
        );
    }
}

#[test]
fn a_stop_under_traffic_stops_every_reactor_and_accounts_for_every_datagram() {
    let hooks = SharedHooks::default();
    let factory_hooks = Arc::clone(&hooks);
    let pool = start_pool("127.0.0.75", 2, move |i| echo(i, &factory_hooks), |_| {});
    let addr = pool.addr;
    let sending = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let senders: Vec<_> = (0..4u16)
        .map(|c| {
            let sending = Arc::clone(&sending);
            std::thread::spawn(move || {
                let socket = UdpSocket::bind("127.0.0.1:0").expect("client");
                let deadline = Instant::now() + DEADLINE;
                let mut seq = 0u32;
                while sending.load(std::sync::atomic::Ordering::Relaxed)
                    && Instant::now() < deadline
                {
                    // The pool may be gone already: refusals are expected then.
                    let _ = socket.send_to(&request(c, seq), addr);
                    seq = seq.wrapping_add(1);
                    if seq.is_multiple_of(64) {
                        std::thread::sleep(Duration::from_micros(100));
                    }
                }
            })
        })
        .collect();
    // Stop once traffic is flowing, while the senders go on.
    let probe = util::client_on("127.0.0.1");
    probe.set_read_timeout(Some(DEADLINE)).expect("timeout");
    probe.send_to(&request(99, 0), addr).expect("probe");
    let mut buf = [0u8; 16];
    probe.recv_from(&mut buf).expect("the pool echoes");
    let stats = pool.stop();
    sending.store(false, std::sync::atomic::Ordering::Relaxed);
    for s in senders {
        s.join().expect("sender thread");
    }
    let mut stopped = lock(&hooks).stopped.clone();
    stopped.sort_unstable();
    assert_eq!(stopped, [0, 1], "stop_protocol once on each reactor");
    let t = &stats.total;
    assert!(t.datagrams_received > 0, "{t}");
    assert_eq!(
        t.datagrams_sent + t.send_dropped + t.send_errors,
        t.datagrams_received,
        "every datagram delivered was echoed or counted as not sent: {t}"
    );
}

/// Set in the environment of the child process of the signal test.
const SIGNAL_CHILD_ENV: &str = "TWINE_POOL_SIGNAL_CHILD";

/// Whether the process catches `signal` (`SigCgt` of `/proc/self/status`).
fn catches(signal: i32) -> bool {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else {
        return false;
    };
    status
        .lines()
        .find_map(|l| l.strip_prefix("SigCgt:"))
        .and_then(|mask| u64::from_str_radix(mask.trim(), 16).ok())
        .is_some_and(|mask| mask & (1 << (signal - 1)) != 0)
}

#[test]
fn sigterm_stops_the_whole_pool_gracefully() {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = std::process::Command::new(exe);
    cmd.args([
        "--exact",
        "child_pool_stopped_by_sigterm",
        "--ignored",
        "--nocapture",
    ])
    .env(SIGNAL_CHILD_ENV, "1");
    let (status, stdout, stderr) =
        util::process::run_to_end(cmd, Duration::from_secs(120)).expect("run the child");
    assert!(
        status.success(),
        "the child failed ({status:?})\n{stdout}\n{stderr}"
    );
    assert!(
        stdout.contains("child: the pool stopped on SIGTERM"),
        "{stdout}\n{stderr}"
    );
}

#[test]
#[ignore = "run as a child process by sigterm_stops_the_whole_pool_gracefully"]
fn child_pool_stopped_by_sigterm() {
    if std::env::var_os(SIGNAL_CHILD_ENV).is_none() {
        return;
    }
    let hooks = SharedHooks::default();
    let factory_hooks = Arc::clone(&hooks);
    let pool =
        ReactorPool::bind(ListenOptions::new(0).interface("127.0.0.76"), 2).expect("bind the pool");
    let addr = pool.local_addr();
    let raiser = std::thread::spawn(move || {
        // Once the pool serves and its thread catches SIGTERM (then it waits in `run`).
        let client = util::client_on("127.0.0.1");
        client.set_read_timeout(Some(DEADLINE)).expect("timeout");
        client.send_to(&request(0, 0), addr).expect("send");
        let mut buf = [0u8; 16];
        client.recv_from(&mut buf).expect("an echo");
        let deadline = Instant::now() + DEADLINE;
        while !catches(libc::SIGTERM) && Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(10));
        }
        assert!(catches(libc::SIGTERM), "the pool's thread catches SIGTERM");
        std::thread::sleep(Duration::from_millis(100));
        signal_hook::low_level::raise(libc::SIGTERM).expect("raise SIGTERM");
    });
    let stats = pool
        .run(move |i| echo(i, &factory_hooks))
        .expect("the pool stops on SIGTERM without error");
    raiser.join().expect("raiser thread");
    assert_eq!(stats.total.datagrams_received, 1);
    let mut stopped = lock(&hooks).stopped.clone();
    stopped.sort_unstable();
    assert_eq!(stopped, [0, 1], "stop_protocol once on each reactor");
    println!("child: the pool stopped on SIGTERM");
}

#[test]
fn port_stats_add_up_counter_by_counter_and_saturate() {
    let mut a = PortStats::default();
    a.datagrams_received = 3;
    a.bytes_sent = u64::MAX;
    a.dropped_at_stop = 1;
    let mut b = PortStats::default();
    b.datagrams_received = 4;
    b.bytes_sent = 1;
    b.panics = 2;
    a += &b;
    assert_eq!(a.datagrams_received, 7);
    assert_eq!(a.bytes_sent, u64::MAX, "saturates");
    assert_eq!(a.panics, 2);
    assert_eq!(a.dropped_at_stop, 1);
    assert_eq!(a.datagrams_sent, 0);
}
