//! The echo servers compared, each on 127.0.0.1 on a port of its own: four threads of this
//! process and, where its virtual environment exists, Twisted as a child process.
//!
//! Each `serve_*` function is the whole life of its server's thread (never inlined), so
//! that callgrind can count that thread's instructions alone (`benches/echo/callgrind.sh`).

use std::future::Future;
use std::io::{self, BufRead, BufReader};
use std::net::{SocketAddr, UdpSocket};
use std::path::{Path, PathBuf};
use std::pin::pin;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::mpsc;
use std::sync::{Arc, Mutex};
use std::task::Poll as TaskPoll;
use std::thread::{self, JoinHandle};
use std::time::Duration;

use mio::{Events, Interest, Poll, Token, Waker};
use twine::bench_support::{RecvBatch, SendBatch, pin_to_cpu};
use twine::{DatagramProtocol, ListenOptions, Reactor, ReactorHandle, UdpTransport};

/// The servers, in table order.
///
/// A variant of twine's (such as one with receive offload,
/// `ListenOptions::receive_offload(true)`) is added as one more kind: a name and label
/// here, a `serve_*` function calling `run_twine` with its options, and, since only (a)
/// is checked against the targets and only [`Kind::SETS_COMMON_RATE`] set the common
/// rates, its figures are shown beside the others without counting toward either.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    Twine,
    TwinePlain,
    /// (a) in latency mode: the reactor spins before it sleeps.
    TwineSpin,
    /// (a) with receive offload: reported apart, not toward the targets.
    TwineGro,
    /// (a) with receive timestamps on: only with `--only`, for the option's cost.
    TwineTs,
    /// (a) with every per-datagram option on (arrival address, replies from it, TOS,
    /// timestamps): only with `--only`.
    TwineMeta,
    Std,
    Mio,
    Tokio,
    Twisted,
}

impl Kind {
    pub const ALL: [Kind; 8] = [
        Kind::Twine,
        Kind::TwinePlain,
        Kind::TwineSpin,
        Kind::TwineGro,
        Kind::Std,
        Kind::Mio,
        Kind::Tokio,
        Kind::Twisted,
    ];

    /// The servers only `--only` runs: variants measured for the cost of an option.
    pub const EXTRA: [Kind; 2] = [Kind::TwineTs, Kind::TwineMeta];

    /// The name `--only` takes.
    pub fn name(self) -> &'static str {
        match self {
            Kind::Twine => "twine",
            Kind::TwinePlain => "twine_plain",
            Kind::TwineSpin => "twine_spin",
            Kind::TwineGro => "twine_gro",
            Kind::TwineTs => "twine_ts",
            Kind::TwineMeta => "twine_meta",
            Kind::Std => "std",
            Kind::Mio => "mio",
            Kind::Tokio => "tokio",
            Kind::Twisted => "twisted",
        }
    }

    /// The row label of the tables.
    pub fn label(self) -> &'static str {
        match self {
            Kind::Twine => "(a) twine",
            Kind::TwinePlain => "(a') twine, no GSO",
            Kind::TwineSpin => "(a-spin) twine, spin",
            Kind::TwineGro => "(a-gro) twine, GRO",
            Kind::TwineTs => "(a-ts) twine, timestamps",
            Kind::TwineMeta => "(a-meta) twine, every per-datagram option",
            Kind::Std => "(b) std blocking",
            Kind::Mio => "(c) mio + mmsg",
            Kind::Tokio => "(d) tokio",
            Kind::Twisted => "(e) Twisted",
        }
    }

    /// The servers whose lowest open-loop maximum sets the rates at which CPU per
    /// datagram and latency under load are measured: the plain servers every operator
    /// could pick, not a variant that spends a core spinning, nor Twisted.
    pub const SETS_COMMON_RATE: [Kind; 5] = [
        Kind::Twine,
        Kind::TwinePlain,
        Kind::Std,
        Kind::Mio,
        Kind::Tokio,
    ];

    /// The servers run at every window of the closed-loop sweep.
    pub const SWEPT: [Kind; 3] = [Kind::Twine, Kind::TwinePlain, Kind::Mio];

    pub fn from_name(name: &str) -> Option<Kind> {
        Kind::ALL
            .into_iter()
            .chain(Kind::EXTRA)
            .find(|k| k.name() == name)
    }
}

/// The receive buffer of every server: twine's default max packet size.
const MAX_PACKET: usize = twine::DEFAULT_MAX_PACKET_SIZE;
/// Datagrams per system call in the hand-written batch loop: twine's default.
const BATCH: usize = twine::DEFAULT_BATCH_SIZE;

/// How a running server is told to stop.
enum Stopper {
    Twine(ReactorHandle),
    Flag(Arc<AtomicBool>),
    Mio(Arc<AtomicBool>, Arc<Waker>),
    Tokio(Arc<AsyncStop>),
    Child(Child),
}

/// A running echo server.
pub struct Server {
    pub kind: Kind,
    pub addr: SocketAddr,
    /// The `schedstat` file of the server's (main) thread, where known.
    pub cpu: Option<PathBuf>,
    stopper: Option<Stopper>,
    thread: Option<JoinHandle<()>>,
}

/// Where the Twisted venv's Python would be.
pub fn twisted_python() -> PathBuf {
    PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/..")).join("target/twisted-venv/bin/python")
}

/// Starts a server of `kind`, pinned to `cpu` when given.
pub fn start(kind: Kind, cpu: Option<usize>) -> Result<Server, String> {
    let spawn = |body: Box<dyn FnOnce() + Send>| {
        thread::Builder::new()
            .name(format!("echo-{}", kind.name()))
            .spawn(body)
            .map_err(|e| format!("spawning the {} thread: {e}", kind.name()))
    };
    let (tx, rx) = mpsc::channel();
    let thread = match kind {
        Kind::Twine => spawn(Box::new(move || serve_twine(cpu, tx)))?,
        Kind::TwinePlain => spawn(Box::new(move || serve_twine_plain(cpu, tx)))?,
        Kind::TwineSpin => {
            if !SPIN_BUILT {
                return Err(NO_SPIN.to_owned());
            }
            spawn(Box::new(move || serve_twine_spin(cpu, tx)))?
        }
        Kind::TwineGro => spawn(Box::new(move || serve_twine_gro(cpu, tx)))?,
        Kind::TwineTs => spawn(Box::new(move || serve_twine_ts(cpu, tx)))?,
        Kind::TwineMeta => spawn(Box::new(move || serve_twine_meta(cpu, tx)))?,
        Kind::Std => spawn(Box::new(move || serve_std(cpu, tx)))?,
        Kind::Mio => spawn(Box::new(move || serve_mio(cpu, tx)))?,
        Kind::Tokio => spawn(Box::new(move || serve_tokio(cpu, tx)))?,
        Kind::Twisted => return start_twisted(cpu),
    };
    let Started(addr, stopper, cpu) = rx
        .recv_timeout(Duration::from_secs(10))
        .map_err(|e| format!("{} server did not start: {e}", kind.name()))??;
    Ok(Server::new(kind, addr, stopper, Some(thread), cpu))
}

/// What a server thread sends once it is bound (or why it could not start).
type Ready = mpsc::Sender<Result<Started, String>>;

/// A server thread, bound: its address, how to stop it, and its `schedstat` file.
struct Started(SocketAddr, Stopper, Option<PathBuf>);

/// Called on the server's thread once it is set up (or failed): tells the starter, and
/// gives back what was set up.
fn announce<T, E: std::fmt::Display>(
    ready: &Ready,
    kind: Kind,
    bound: Result<(T, SocketAddr), E>,
    stopper: impl FnOnce(&T) -> Stopper,
) -> Option<T> {
    match bound {
        Ok((server, addr)) => {
            // `/proc/thread-self` links to `PID/task/TID`.
            let me = std::fs::read_link("/proc/thread-self")
                .ok()
                .map(|task| Path::new("/proc").join(task).join("schedstat"));
            let _ = ready.send(Ok(Started(addr, stopper(&server), me)));
            Some(server)
        }
        Err(e) => {
            let _ = ready.send(Err(format!("{} server: {e}", kind.name())));
            None
        }
    }
}

impl Server {
    fn new(
        kind: Kind,
        addr: SocketAddr,
        stopper: Stopper,
        thread: Option<JoinHandle<()>>,
        cpu: Option<PathBuf>,
    ) -> Self {
        Server {
            kind,
            addr,
            cpu,
            stopper: Some(stopper),
            thread,
        }
    }

    /// The process id of a server run as a child process.
    pub fn child_pid(&self) -> Option<u32> {
        match &self.stopper {
            Some(Stopper::Child(child)) => Some(child.id()),
            _ => None,
        }
    }

    /// Stops the server and waits for it.
    pub fn stop(mut self) {
        self.shut_down();
    }

    fn shut_down(&mut self) {
        match self.stopper.take() {
            Some(Stopper::Twine(handle)) => {
                let _ = handle.stop();
            }
            Some(Stopper::Flag(flag)) => flag.store(true, Ordering::Release),
            Some(Stopper::Mio(flag, waker)) => {
                flag.store(true, Ordering::Release);
                let _ = waker.wake();
            }
            Some(Stopper::Tokio(stop)) => stop.stop(),
            Some(Stopper::Child(mut child)) => {
                let _ = child.kill();
                let _ = child.wait();
            }
            None => {}
        }
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.shut_down();
    }
}

fn pin(cpu: Option<usize>) {
    if let Some(cpu) = cpu {
        // The caller checked that pinning works here; a failure now only loses the pin.
        let _ = pin_to_cpu(cpu);
    }
}

fn localhost() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// (a): the README's echo protocol on a reactor with the default options.
struct Echo;

impl DatagramProtocol for Echo {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        if let Err(e) = t.write(data, from) {
            log::warn!("echo to {from}: {e}");
        }
    }
}

#[inline(never)]
fn serve_twine(cpu: Option<usize>, ready: Ready) {
    run_twine(cpu, ready, Kind::Twine, ListenOptions::new(0));
}

/// (a'): (a) with `segmentation(false)`: gathered replies go one datagram per message of
/// one `sendmmsg`, as (c) sends them.
#[inline(never)]
fn serve_twine_plain(cpu: Option<usize>, ready: Ready) {
    run_twine(
        cpu,
        ready,
        Kind::TwinePlain,
        ListenOptions::new(0).segmentation(false),
    );
}

/// How long (a-spin)'s reactor polls without blocking before it sleeps: longer than the
/// load generator takes between an echo and its next datagram in ping-pong.
pub const SPIN: Duration = Duration::from_micros(50);

/// Whether this build has (a-spin) (`Reactor::set_spin`).
pub const SPIN_BUILT: bool = true;
/// Why (a-spin) is skipped.
pub const NO_SPIN: &str = "Reactor::set_spin is not in this build yet (see SPIN_BUILT)";

/// (a-spin): (a) in latency mode, the reactor spinning for [`SPIN`] before it sleeps.
#[inline(never)]
fn serve_twine_spin(cpu: Option<usize>, ready: Ready) {
    run_twine(cpu, ready, Kind::TwineSpin, ListenOptions::new(0));
}

/// Sets (a-spin)'s spin on `reactor`.
fn set_spin(reactor: &mut Reactor) {
    reactor.set_spin(SPIN);
}

/// (a-gro): (a) with receive offload (`ListenOptions::receive_offload(true)`): the load
/// generator segments its sends, so on loopback its runs reach this port coalesced, with
/// no segmentation by the kernel at all, which no real network gives; shown apart.
#[inline(never)]
fn serve_twine_gro(cpu: Option<usize>, ready: Ready) {
    run_twine(
        cpu,
        ready,
        Kind::TwineGro,
        ListenOptions::new(0).receive_offload(true),
    );
}

/// (a-ts): (a) with receive timestamps (`ListenOptions::receive_timestamps(true)`).
#[inline(never)]
fn serve_twine_ts(cpu: Option<usize>, ready: Ready) {
    let options = ListenOptions::new(0).receive_timestamps(true);
    run_twine(cpu, ready, Kind::TwineTs, options);
}

/// (a-meta): (a) with every per-datagram option: the arrival address, replies from it,
/// the TOS byte received, timestamps.
#[inline(never)]
fn serve_twine_meta(cpu: Option<usize>, ready: Ready) {
    let options = ListenOptions::new(0)
        .reply_from_arrival(true)
        .receive_tos(true)
        .receive_timestamps(true);
    run_twine(cpu, ready, Kind::TwineMeta, options);
}

fn run_twine(cpu: Option<usize>, ready: Ready, kind: Kind, options: ListenOptions) {
    pin(cpu);
    let opened = (|| {
        let mut reactor = Reactor::new()?;
        reactor.set_handle_signals(false);
        if kind == Kind::TwineSpin {
            set_spin(&mut reactor);
        }
        let port = reactor.listen_udp_with(options.interface("127.0.0.1"), Echo)?;
        Ok::<_, twine::Error>((reactor, port.local_addr()))
    })();
    let stopper = |reactor: &Reactor| Stopper::Twine(reactor.handle());
    if let Some(mut reactor) = announce(&ready, kind, opened, stopper)
        && let Err(e) = reactor.run()
    {
        eprintln!("twine server: {e}");
    }
}

/// (b): blocking `recv_from` / `send_to`. The read timeout only matters when idle: it is
/// when the stop flag is looked at.
#[inline(never)]
fn serve_std(cpu: Option<usize>, ready: Ready) {
    pin(cpu);
    let stop = Arc::new(AtomicBool::new(false));
    let bound = UdpSocket::bind(localhost()).and_then(|sock| {
        sock.set_read_timeout(Some(Duration::from_millis(20)))?;
        let addr = sock.local_addr()?;
        Ok((sock, addr))
    });
    let stopper = |_: &UdpSocket| Stopper::Flag(Arc::clone(&stop));
    let Some(sock) = announce(&ready, Kind::Std, bound, stopper) else {
        return;
    };
    let mut buf = vec![0u8; MAX_PACKET];
    loop {
        match sock.recv_from(&mut buf) {
            Ok((n, from)) => {
                let _ = sock.send_to(&buf[..n], from);
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                if stop.load(Ordering::Acquire) {
                    return;
                }
            }
            Err(_) => {}
        }
    }
}

const SOCKET: Token = Token(0);
const WAKE: Token = Token(1);

/// (c): the batch-I/O limit: edge-triggered readiness, then `recvmmsg` of up to 32,
/// every echo pushed, one `sendmmsg`, again until `EAGAIN`.
#[inline(never)]
fn serve_mio(cpu: Option<usize>, ready: Ready) {
    pin(cpu);
    let stop = Arc::new(AtomicBool::new(false));
    let setup = (|| {
        let poll = Poll::new()?;
        let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
        let mut sock = mio::net::UdpSocket::bind(localhost())?;
        poll.registry()
            .register(&mut sock, SOCKET, Interest::READABLE)?;
        let addr = sock.local_addr()?;
        Ok::<_, io::Error>(((poll, waker, sock), addr))
    })();
    // The waker is kept here too: closed by the stopper alone right after waking us, its
    // eventfd would leave epoll with the wake-up unread.
    let stopper =
        |(_, waker, _): &(Poll, Arc<Waker>, _)| Stopper::Mio(Arc::clone(&stop), Arc::clone(waker));
    let Some((mut poll, _waker, sock)) = announce(&ready, Kind::Mio, setup, stopper) else {
        return;
    };
    let mut events = Events::with_capacity(16);
    let mut rx = RecvBatch::default();
    rx.reserve(BATCH, MAX_PACKET);
    let mut tx = SendBatch::with_capacity(BATCH, 64 * 1024);
    loop {
        if let Err(e) = poll.poll(&mut events, None)
            && e.kind() != io::ErrorKind::Interrupted
        {
            eprintln!("mio server: poll: {e}");
            return;
        }
        for event in events.iter() {
            if event.token() == WAKE && stop.load(Ordering::Acquire) {
                return;
            }
        }
        // Until EAGAIN (drained); any other error also waits for the next event.
        while rx.recv(&sock, BATCH, MAX_PACKET).is_ok() {
            for d in rx.datagrams() {
                if let (Some(from), false) = (d.from, d.truncated) {
                    tx.push(d.data, from);
                }
            }
            let mut next = 0;
            while next < tx.len() {
                match tx.send(&sock, next, false) {
                    Ok(0) | Err(_) => break, // a full send buffer drops the rest
                    Ok(sent) => next += sent,
                }
            }
            tx.clear();
        }
    }
}

/// A stop signal for an async task without tokio's `sync` feature: a flag and the waker
/// of the task that waits on it.
#[derive(Default)]
struct AsyncStop {
    stopped: AtomicBool,
    waker: Mutex<Option<std::task::Waker>>,
}

impl AsyncStop {
    fn stop(&self) {
        self.stopped.store(true, Ordering::Release);
        let waker = self.waker.lock().map(|mut w| w.take());
        if let Ok(Some(waker)) = waker {
            waker.wake();
        }
    }

    /// Runs `fut` until it ends or [`stop`](Self::stop) is called.
    async fn until_stopped(&self, fut: impl Future<Output = ()>) {
        let mut fut = pin!(fut);
        let mut registered = false;
        std::future::poll_fn(|cx| {
            if !registered {
                // `block_on`'s waker does not change between polls: stored once.
                if let Ok(mut w) = self.waker.lock() {
                    *w = Some(cx.waker().clone());
                }
                registered = true;
            }
            if self.stopped.load(Ordering::Acquire) {
                return TaskPoll::Ready(());
            }
            fut.as_mut().poll(cx)
        })
        .await;
    }
}

/// (d): tokio's current-thread runtime, `recv_from` then `send_to`.
#[inline(never)]
fn serve_tokio(cpu: Option<usize>, ready: Ready) {
    pin(cpu);
    let stop = Arc::new(AsyncStop::default());
    let rt = match tokio::runtime::Builder::new_current_thread()
        .enable_io()
        .build()
    {
        Ok(rt) => rt,
        Err(e) => {
            let _ = ready.send(Err(format!("tokio server: runtime: {e}")));
            return;
        }
    };
    rt.block_on(async {
        let bound = tokio::net::UdpSocket::bind(localhost())
            .await
            .and_then(|sock| sock.local_addr().map(|addr| (sock, addr)));
        let stopper = |_: &tokio::net::UdpSocket| Stopper::Tokio(Arc::clone(&stop));
        let Some(sock) = announce(&ready, Kind::Tokio, bound, stopper) else {
            return;
        };
        let mut buf = vec![0u8; MAX_PACKET];
        stop.until_stopped(async {
            loop {
                match sock.recv_from(&mut buf).await {
                    Ok((n, from)) => {
                        let _ = sock.send_to(&buf[..n], from).await;
                    }
                    Err(e) => {
                        eprintln!("tokio server: recv: {e}");
                        return;
                    }
                }
            }
        })
        .await;
    });
}

/// (e): `benches/echo/twisted_echo.py` under the Twisted venv's Python; it prints its
/// port once listening and exits when its stdin closes (or it is killed).
fn start_twisted(cpu: Option<usize>) -> Result<Server, String> {
    let python = twisted_python();
    let script = PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/.."))
        .join("benches/echo/twisted_echo.py");
    let mut cmd = Command::new(&python);
    cmd.arg("-B").arg(&script);
    if let Some(cpu) = cpu {
        cmd.arg(cpu.to_string());
    }
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .spawn()
        .map_err(|e| format!("starting {}: {e}", python.display()))?;
    let mut line = String::new();
    let mut port = None;
    if let Some(mut out) = child.stdout.take().map(BufReader::new) {
        if out.read_line(&mut line).is_ok() {
            port = line.trim().parse::<u16>().ok();
        }
        // Kept open: the script's stdio would see a closed stdout as the end, too.
        child.stdout = Some(out.into_inner());
    }
    let Some(port) = port else {
        let _ = child.kill();
        let _ = child.wait();
        return Err(format!("{} printed no port: {line:?}", script.display()));
    };
    let addr = SocketAddr::from(([127, 0, 0, 1], port));
    let cpu = Some(PathBuf::from(format!(
        "/proc/{0}/task/{0}/schedstat",
        child.id()
    )));
    Ok(Server::new(
        Kind::Twisted,
        addr,
        Stopper::Child(child),
        None,
        cpu,
    ))
}
