//! Shared helpers for the integration tests: a capturing logger, a recording protocol,
//! loopback clients, and bounded waits.
#![allow(dead_code)]

pub mod peers;
pub mod process;
pub mod procfs;
pub mod rng;
pub mod running;
pub mod sequence;

use std::cell::RefCell;
use std::net::{SocketAddr, UdpSocket};
use std::path::Path;
use std::rc::Rc;
use std::sync::{Mutex, Once, PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};
use std::time::Duration;

use twine::{DatagramProtocol, ListenOptions, ListeningPort, Reactor, UdpTransport};

/// The longest any single wait in a test may take.
pub const DEADLINE: Duration = Duration::from_secs(5);

/// The repository's root, the folder that holds `tests/`: these helpers are shared by the
/// `twine-benches` member's tests too, whose manifest is in `benches/`.
pub fn root() -> &'static Path {
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR"));
    manifest
        .ancestors()
        .find(|dir| dir.join("tests").join("util").join("mod.rs").is_file())
        .unwrap_or(manifest)
}

/// `n` milliseconds.
pub fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// A new reactor that leaves SIGINT/SIGTERM alone (the tests of a binary share one
/// process).
pub fn reactor() -> Reactor {
    let mut r = Reactor::new().expect("new reactor");
    r.set_handle_signals(false);
    r
}

/// Options for a port on 127.0.0.1, port 0.
pub fn loopback() -> ListenOptions {
    ListenOptions::new(0).interface("127.0.0.1")
}

/// An address nothing listens on (a socket on 127.0.0.1 bound, then closed).
pub fn dead_addr() -> SocketAddr {
    dead_addr_on("127.0.0.1")
}

/// An address on `ip` (an IP literal) where nothing listens: a socket is bound there, then
/// closed.
pub fn dead_addr_on(ip: &str) -> SocketAddr {
    let s = UdpSocket::bind((ip, 0)).expect("bind a socket to free");
    s.local_addr().expect("its address")
}

/// Tests run on parallel threads of one process, and fd numbers are reused at once. A test
/// that adopts a number it has just closed holds this for writing
/// ([`fd_numbers_exclusive`]) and every other test of its binary for reading
/// ([`fd_numbers_shared`]), so that no fd of another test can take that number meanwhile
/// (adopting it would switch another test's socket to non-blocking).
static FD_NUMBERS: RwLock<()> = RwLock::new(());

/// Held by a test that opens fds beside a test that adopts a closed fd number.
pub fn fd_numbers_shared() -> RwLockReadGuard<'static, ()> {
    FD_NUMBERS.read().unwrap_or_else(PoisonError::into_inner)
}

/// Held by a test that adopts an fd number it has just closed: no other test of the binary
/// opens an fd meanwhile.
pub fn fd_numbers_exclusive() -> RwLockWriteGuard<'static, ()> {
    FD_NUMBERS.write().unwrap_or_else(PoisonError::into_inner)
}

static LOGS: Mutex<Vec<String>> = Mutex::new(Vec::new());

struct CaptureLogger;

impl log::Log for CaptureLogger {
    fn enabled(&self, _: &log::Metadata<'_>) -> bool {
        true
    }

    fn log(&self, record: &log::Record<'_>) {
        let line = format!("{} {}", record.level(), record.args());
        if std::env::var_os("TWINE_TEST_LOG").is_some() {
            eprintln!("{line}");
        }
        LOGS.lock().unwrap_or_else(|e| e.into_inner()).push(line);
    }

    fn flush(&self) {}
}

/// Installs the capturing logger once per test binary (trace level).
pub fn init_logging() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        let _ = log::set_logger(&CaptureLogger);
        log::set_max_level(log::LevelFilter::Trace);
    });
}

/// Every captured log line (`"LEVEL message"`) containing `needle`. Tests run in parallel
/// in one process, so filter on something unique to the test, such as a port's address.
pub fn logs_containing(needle: &str) -> Vec<String> {
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| l.contains(needle))
        .cloned()
        .collect()
}

/// Every captured line at `level` (`"ERROR ..."` for [`log::Level::Error`]), from every
/// test of the binary.
pub fn logs_at(level: log::Level) -> Vec<String> {
    let prefix = format!("{level} ");
    LOGS.lock()
        .unwrap_or_else(|e| e.into_inner())
        .iter()
        .filter(|l| l.starts_with(&prefix))
        .cloned()
        .collect()
}

/// Whether `line` names exactly `addr` (`127.0.0.1:4000` does not name `127.0.0.1:40001`).
pub fn mentions(line: &str, addr: SocketAddr) -> bool {
    let needle = addr.to_string();
    line.match_indices(&needle)
        .any(|(i, _)| !line[i + needle.len()..].starts_with(|c: char| c.is_ascii_digit()))
}

/// Every captured log line that names exactly `addr`, from the latest port to start on it
/// (`"... starting on <addr>"`) on: a port number freed by one test may be handed to a
/// later one, and the earlier port's lines are not about the later port.
pub fn logs_about(addr: SocketAddr) -> Vec<String> {
    let mut lines: Vec<String> = logs_containing(&addr.to_string())
        .into_iter()
        .filter(|l| mentions(l, addr))
        .collect();
    let start = format!("starting on {addr}");
    if let Some(latest) = lines
        .iter()
        .rposition(|l| l.contains(&start) && mentions(l, addr))
    {
        lines.drain(..latest);
    }
    lines
}

/// What a [`Recorder`] saw, in order.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Event {
    Start(SocketAddr),
    Datagram(Vec<u8>, SocketAddr),
    Refused,
    Stop,
}

/// A shared, inspectable list of events.
pub type Events = Rc<RefCell<Vec<Event>>>;

/// A protocol that records every hook call and, if `echo` is set, echoes datagrams.
pub struct Recorder {
    pub events: Events,
    pub echo: bool,
}

impl Recorder {
    pub fn new() -> (Recorder, Events) {
        let events = Events::default();
        (
            Recorder {
                events: events.clone(),
                echo: false,
            },
            events,
        )
    }

    pub fn echoing() -> (Recorder, Events) {
        let (mut r, e) = Recorder::new();
        r.echo = true;
        (r, e)
    }
}

impl DatagramProtocol for Recorder {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.events.borrow_mut().push(Event::Start(t.local_addr()));
    }

    fn stop_protocol(&mut self, _t: &mut UdpTransport<'_>) {
        self.events.borrow_mut().push(Event::Stop);
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        self.events
            .borrow_mut()
            .push(Event::Datagram(data.to_vec(), from));
        if self.echo {
            t.write(data, from).expect("echo write");
        }
    }

    fn connection_refused(&mut self, _t: &mut UdpTransport<'_>) {
        self.events.borrow_mut().push(Event::Refused);
    }
}

/// A [`Recorder`] that also runs `start` at the end of `start_protocol`.
pub struct OnStart<F> {
    pub rec: Recorder,
    pub start: F,
}

impl<F: FnMut(&mut UdpTransport<'_>) + 'static> DatagramProtocol for OnStart<F> {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.rec.start_protocol(t);
        (self.start)(t);
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.rec.stop_protocol(t);
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        self.rec.datagram_received(t, data, from);
    }

    fn connection_refused(&mut self, t: &mut UdpTransport<'_>) {
        self.rec.connection_refused(t);
    }
}

/// The datagrams among `events`.
pub fn datagrams(events: &Events) -> Vec<(Vec<u8>, SocketAddr)> {
    events
        .borrow()
        .iter()
        .filter_map(|e| match e {
            Event::Datagram(d, a) => Some((d.clone(), *a)),
            _ => None,
        })
        .collect()
}

/// How many events match `pred`.
pub fn count(events: &Events, pred: impl Fn(&Event) -> bool) -> usize {
    events.borrow().iter().filter(|e| pred(e)).count()
}

/// Runs `f` with the port's transport, from outside its hooks.
pub fn with<P: DatagramProtocol, R>(
    reactor: &mut Reactor,
    port: &ListeningPort<P>,
    f: impl FnOnce(&mut UdpTransport<'_>) -> R,
) -> R {
    reactor.with_port(port, |_, t| f(t)).expect("port is open")
}

/// Listens on 127.0.0.1, port 0.
pub fn listen_loopback<P: DatagramProtocol>(
    reactor: &mut Reactor,
    protocol: P,
) -> ListeningPort<P> {
    reactor
        .listen_udp_with(loopback(), protocol)
        .expect("listen on 127.0.0.1:0")
}

/// A plain blocking client socket on `ip`, port 0, with a read timeout.
pub fn client_on(ip: &str) -> UdpSocket {
    let s = UdpSocket::bind((ip, 0)).expect("bind client");
    s.set_read_timeout(Some(Duration::from_millis(20)))
        .expect("read timeout");
    s
}

/// A plain client on 127.0.0.1.
pub fn client() -> UdpSocket {
    client_on("127.0.0.1")
}

/// Turns the reactor until `done` holds; panics with `what` after [`DEADLINE`].
#[track_caller]
pub fn drive(reactor: &mut Reactor, what: &str, done: impl FnMut(&mut Reactor) -> bool) {
    let ok = reactor.run_until(DEADLINE, done).expect("reactor turn");
    assert!(ok, "timed out after {DEADLINE:?} waiting for: {what}");
}

/// Turns the reactor until `client` receives a datagram; returns it and its sender.
#[track_caller]
pub fn drive_recv(reactor: &mut Reactor, client: &UdpSocket) -> (Vec<u8>, SocketAddr) {
    let mut buf = vec![0u8; 65536];
    let mut got = None;
    client.set_nonblocking(true).expect("nonblocking");
    drive(reactor, "a reply on the client", |_| {
        if let Ok((n, from)) = client.recv_from(&mut buf) {
            got = Some((buf[..n].to_vec(), from));
        }
        got.is_some()
    });
    client.set_nonblocking(false).expect("blocking");
    got.expect("checked by drive")
}

/// Turns the reactor until `collect` holds, or for at most [`DEADLINE`] (without failing:
/// the assertions after it say what is missing), then for `linger` more, still calling
/// `collect`, so that anything else on its way arrives meanwhile.
pub fn collect_then_linger(
    reactor: &mut Reactor,
    linger: Duration,
    mut collect: impl FnMut(&mut Reactor) -> bool,
) {
    reactor.run_until(DEADLINE, &mut collect).expect("turns");
    reactor
        .run_until(linger, |r| {
            collect(r);
            false
        })
        .expect("turns");
}

/// Sends `what` to the port from a new client and waits for its echo, which must come
/// from the port's address.
#[track_caller]
pub fn assert_echoes<P>(reactor: &mut Reactor, port: &ListeningPort<P>, what: &[u8]) {
    let c = client();
    c.send_to(what, port.local_addr()).expect("send");
    let (data, from) = drive_recv(reactor, &c);
    assert_eq!(data, what);
    assert_eq!(from, port.local_addr());
}

/// Turns the reactor for `period`, whatever happens (to show that something does *not*
/// happen).
pub fn drive_for(reactor: &mut Reactor, period: Duration) {
    let _ = reactor.run_until(period, |_| false).expect("reactor turn");
}
