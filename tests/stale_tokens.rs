//! Slot reuse (crate docs, "Stale handles are harmless"): ports and timers live in slabs
//! whose slots are reused, each slot with a generation. Thousands of short-lived ports of
//! two protocol types open and close beside long-lived witness ports fed by a thread; stale
//! `ListeningPort` handles, stale `DelayedCall`s and cross-thread closures holding stale
//! handles must never reach the slot's later occupant.
//!
//! Every short-lived port binds its own loopback address (127.77.x.y), so a datagram can
//! only ever be meant for one port: the kernel never hands a port number of a closed port
//! to a later one here, and any datagram a protocol gets that names another port is
//! twine's doing.
//!
//! The reactor's `error` lines ("port timer of another protocol type skipped", "lost its
//! slot", a caught panic) are captured; none may appear in this file.

mod util;

use std::cell::RefCell;
use std::collections::VecDeque;
use std::net::{Ipv4Addr, SocketAddr, UdpSocket};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use twine::{
    DatagramProtocol, DelayedCall, Error, ListenOptions, ListeningPort, Reactor, ReactorHandle,
    UdpTransport,
};
use util::procfs::udp_drops;
use util::rng::Rng;
use util::{DEADLINE, drive, drive_for, init_logging, logs_at, loopback, ms, reactor};

// ----- payloads ---------------------------------------------------------------------------

/// `"<tag> <id> <destination> <seq>"`: who a datagram is for, and which one it is.
fn payload(tag: char, id: usize, to: SocketAddr, seq: u32) -> String {
    format!("{tag} {id} {to} {seq}")
}

#[derive(Debug, PartialEq)]
struct Payload {
    tag: char,
    id: usize,
    to: SocketAddr,
    seq: u32,
}

fn parse(data: &[u8]) -> Option<Payload> {
    let text = std::str::from_utf8(data).ok()?;
    let mut words = text.split(' ');
    let tag = words.next()?;
    let mut chars = tag.chars();
    let (Some(tag), None) = (chars.next(), chars.next()) else {
        return None;
    };
    let id = words.next()?.parse().ok()?;
    let to = words.next()?.parse().ok()?;
    let seq = words.next()?.parse().ok()?;
    if words.next().is_some() {
        return None;
    }
    Some(Payload { tag, id, to, seq })
}

// ----- the ledger -------------------------------------------------------------------------

/// What happened to one short-lived port (indexed by its id).
#[derive(Debug, Default)]
struct Rec {
    kind: u8,
    sent: u32,
    received: u32,
    /// Bit `seq` set once datagram `seq` was received.
    seen: u64,
    starts: u32,
    stops: u32,
    /// Set just before anyone asks the port to stop.
    stop_asked: bool,
    timer_runs: u32,
}

#[derive(Debug, Default)]
struct Ledger {
    recs: Vec<Rec>,
    /// Ports opened (anywhere: main, a timer, a witness callback), not yet picked up.
    opened: Vec<(usize, H)>,
    violations: Vec<String>,
    violation_count: usize,
    witness_stops: Vec<u32>,
    /// The witnesses may stop now.
    ending: bool,
    actions_in_witness: usize,
}

impl Ledger {
    fn violate(&mut self, what: String) {
        self.violation_count += 1;
        if self.violations.len() < 20 {
            self.violations.push(what);
        }
    }

    fn new_rec(&mut self, kind: u8) -> usize {
        self.recs.push(Rec {
            kind,
            ..Rec::default()
        });
        self.recs.len() - 1
    }
}

type Shared = Rc<RefCell<Ledger>>;

/// Work a witness port runs inside its own `datagram_received` (one per datagram).
type Actions = Rc<RefCell<VecDeque<Box<dyn FnOnce(&mut Reactor)>>>>;

// ----- short-lived ports ------------------------------------------------------------------

/// A short-lived port's protocol. `KIND` makes two distinct protocol types (`ShortA`,
/// `ShortB`) so that a handle or timer of one type reaching a port of the other would show.
struct Short<const KIND: u8> {
    id: usize,
    local: Option<SocketAddr>,
    stopped: bool,
    /// Calls `stop_listening` itself after this many datagrams.
    stop_after: Option<u32>,
    ledger: Shared,
}

type ShortA = Short<b'A'>;
type ShortB = Short<b'B'>;

impl<const KIND: u8> Short<KIND> {
    fn name(&self) -> String {
        format!("{}#{}", KIND as char, self.id)
    }

    /// A port timer scheduled for port `id` runs here.
    fn timer_ran(&mut self, id: usize) {
        let name = self.name();
        let mut l = self.ledger.borrow_mut();
        if self.stopped {
            l.violate(format!("{name}: a timer ran after stop_protocol"));
        }
        if self.id != id {
            l.violate(format!("{name}: the timer of port #{id} ran on it"));
        }
        l.recs[self.id].timer_runs += 1;
    }

    /// A port timer for port `id` that asks its port to stop.
    fn stop_from_timer(&mut self, t: &mut UdpTransport<'_>, id: usize) {
        self.timer_ran(id);
        self.ledger.borrow_mut().recs[self.id].stop_asked = true;
        t.stop_listening();
    }
}

impl<const KIND: u8> DatagramProtocol for Short<KIND> {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.local = Some(t.local_addr());
        let name = self.name();
        let mut l = self.ledger.borrow_mut();
        let rec = &mut l.recs[self.id];
        rec.starts += 1;
        let (kind, starts) = (rec.kind, rec.starts);
        if kind != KIND || starts != 1 || self.stopped {
            l.violate(format!(
                "{name}: start #{starts} of a kind {}",
                kind as char
            ));
        }
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], _from: SocketAddr) {
        let here = t.local_addr();
        let name = self.name();
        let mut l = self.ledger.borrow_mut();
        if self.stopped {
            l.violate(format!("{name}: a datagram after stop_protocol"));
        }
        if l.recs[self.id].stop_asked {
            l.violate(format!("{name}: a datagram after its stop was asked for"));
        }
        match parse(data) {
            Some(p)
                if p.tag == 'S' && p.id == self.id && p.to == here && self.local == Some(here) =>
            {
                let rec = &mut l.recs[self.id];
                let bit = 1u64.checked_shl(p.seq).unwrap_or(0);
                let fresh = p.seq < rec.sent && rec.seen & bit == 0;
                rec.seen |= bit;
                rec.received += 1;
                if !fresh {
                    l.violate(format!("{name}: datagram {p:?} twice or never sent"));
                }
            }
            _ => l.violate(format!(
                "{name} on {here}: got {:?}, not sent to it",
                String::from_utf8_lossy(data)
            )),
        }
        if self.stop_after == Some(l.recs[self.id].received) {
            l.recs[self.id].stop_asked = true;
            drop(l);
            t.stop_listening();
        }
    }

    fn connection_refused(&mut self, _t: &mut UdpTransport<'_>) {
        let name = self.name();
        self.ledger
            .borrow_mut()
            .violate(format!("{name}: connection_refused on an unconnected port"));
    }

    fn stop_protocol(&mut self, _t: &mut UdpTransport<'_>) {
        let name = self.name();
        let mut l = self.ledger.borrow_mut();
        if self.stopped {
            l.violate(format!("{name}: stop_protocol twice"));
        }
        self.stopped = true;
        let rec = &mut l.recs[self.id];
        rec.stops += 1;
        if !rec.stop_asked {
            l.violate(format!("{name}: stopped, but nobody asked it to"));
        }
    }
}

/// A short-lived port's handle, of either type.
#[derive(Debug, Clone, Copy)]
enum H {
    A(ListeningPort<ShortA>),
    B(ListeningPort<ShortB>),
}

/// Runs `$e` with `$p` bound to the typed `ListeningPort` inside `$h`.
macro_rules! each {
    ($h:expr, $p:ident => $e:expr) => {
        match $h {
            H::A($p) => $e,
            H::B($p) => $e,
        }
    };
}

impl H {
    fn addr(self) -> SocketAddr {
        each!(self, p => p.local_addr())
    }

    fn stop(self, r: &mut Reactor) -> bool {
        each!(self, p => r.stop_listening(&p))
    }

    fn is_listening(self, r: &Reactor) -> bool {
        each!(self, p => r.is_listening(&p))
    }

    fn has_stats(self, r: &Reactor) -> bool {
        each!(self, p => r.port_stats(&p).is_some())
    }

    /// The id of the protocol `with_port` reaches.
    fn protocol_id(self, r: &mut Reactor) -> twine::Result<usize> {
        each!(self, p => r.with_port(&p, |me, _| me.id))
    }

    /// A one-shot port timer that checks it runs on port `id`.
    fn call_later(self, r: &mut Reactor, delay: Duration, id: usize) -> twine::Result<DelayedCall> {
        each!(self, p => r.call_later_on(&p, delay, move |me, _| me.timer_ran(id)))
    }

    /// A repeating port timer that checks it runs on port `id`.
    fn call_every(self, r: &mut Reactor, every: Duration, id: usize) -> twine::Result<DelayedCall> {
        each!(self, p => r.call_every_on(&p, every, move |me, _| me.timer_ran(id)))
    }

    /// A port timer that stops port `id` from inside.
    fn stop_later(self, r: &mut Reactor, delay: Duration, id: usize) -> twine::Result<DelayedCall> {
        each!(self, p => r.call_later_on(&p, delay, move |me, t| me.stop_from_timer(t, id)))
    }
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    id: usize,
    kind: u8,
    budget: usize,
    stop_after: Option<u32>,
}

/// A loopback address of its own for short-lived port `id`.
fn short_ip(id: usize) -> Ipv4Addr {
    let [_, _, hi, lo] = u32::try_from(id).expect("id fits").to_be_bytes();
    assert!(hi < 200, "id {id} out of range");
    Ipv4Addr::new(127, 77, hi, lo)
}

fn open_short(r: &mut Reactor, ledger: &Shared, plan: Plan) -> H {
    let opts = ListenOptions::new(0)
        .interface(short_ip(plan.id).to_string())
        .read_budget(plan.budget, 64 * 1024);
    macro_rules! open {
        ($variant:ident) => {
            H::$variant(
                r.listen_udp_with(
                    opts,
                    Short {
                        id: plan.id,
                        local: None,
                        stopped: false,
                        stop_after: plan.stop_after,
                        ledger: ledger.clone(),
                    },
                )
                .expect("listen on a short-lived port"),
            )
        };
    }
    let h = if plan.kind == b'A' {
        open!(A)
    } else {
        open!(B)
    };
    ledger.borrow_mut().opened.push((plan.id, h));
    h
}

/// What is wrong with the handle `h` of port `id`, closed (its `stop_protocol` ran) and
/// its slot possibly reused: empty if it is harmless.
fn stale_problems(r: &mut Reactor, h: H, id: usize) -> Vec<String> {
    let mut problems = Vec::new();
    let mut problem = |what: String| problems.push(format!("stale handle of #{id}: {what}"));
    let timers = r.timer_count();
    if h.is_listening(r) {
        problem("is_listening".into());
    }
    if h.has_stats(r) {
        problem("port_stats is Some".into());
    }
    match h.protocol_id(r) {
        Err(Error::PortClosed) => {}
        Ok(other) => problem(format!("with_port reached protocol #{other}")),
        Err(e) => problem(format!("with_port: {e}")),
    }
    if h.stop(r) {
        problem("stop_listening returned true".into());
    }
    for call in [
        h.call_later(r, Duration::ZERO, id),
        h.call_every(r, ms(1), id),
    ] {
        match call {
            Err(Error::PortClosed) => {}
            Ok(call) => {
                r.cancel(call);
                problem("a port timer was scheduled".into());
            }
            Err(e) => problem(format!("scheduling a port timer: {e}")),
        }
    }
    if r.timer_count() != timers {
        problem(format!("timer count {timers} -> {}", r.timer_count()));
    }
    problems
}

/// What is wrong with a call that already fired, was cancelled or whose port closed: empty
/// if cancelling or resetting it changes nothing.
fn stale_call_problems(r: &mut Reactor, call: DelayedCall) -> Vec<String> {
    let mut problems = Vec::new();
    let timers = r.timer_count();
    if r.is_pending(call) {
        problems.push(format!("{call:?} still pending"));
    }
    if r.cancel(call) {
        problems.push(format!("cancel({call:?}) returned true"));
    }
    if r.reset(call, Duration::from_secs(3600)) {
        problems.push(format!("reset({call:?}) returned true"));
    }
    if r.timer_count() != timers {
        problems.push(format!(
            "{call:?}: timer count {timers} -> {}",
            r.timer_count()
        ));
    }
    problems
}

/// The timer slot a call occupies, from its `Debug` form (`DelayedCall { key: 3, id: 7 }`),
/// to show that a test really reuses a slot.
fn timer_slot(call: DelayedCall) -> usize {
    let text = format!("{call:?}");
    let digits: String = text
        .split_once("key: ")
        .map(|(_, rest)| rest.chars().take_while(char::is_ascii_digit).collect())
        .unwrap_or_default();
    digits
        .parse()
        .unwrap_or_else(|_| panic!("no slot in {text}: update timer_slot"))
}

// ----- witnesses --------------------------------------------------------------------------

/// A long-lived port fed by the sender thread; it also runs queued actions (opening and
/// closing short-lived ports) from inside its `datagram_received`.
struct Witness {
    idx: usize,
    local: Option<SocketAddr>,
    received: Arc<AtomicU64>,
    seen: Vec<bool>,
    ledger: Shared,
    actions: Actions,
}

impl DatagramProtocol for Witness {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.local = Some(t.local_addr());
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], _from: SocketAddr) {
        let here = t.local_addr();
        match parse(data) {
            Some(p)
                if p.tag == 'W' && p.id == self.idx && p.to == here && self.local == Some(here) =>
            {
                let seq = p.seq as usize;
                if self.seen.len() <= seq {
                    self.seen.resize(seq + 1, false);
                }
                if std::mem::replace(&mut self.seen[seq], true) {
                    self.ledger
                        .borrow_mut()
                        .violate(format!("witness {}: {p:?} twice", self.idx));
                }
            }
            _ => self.ledger.borrow_mut().violate(format!(
                "witness {} on {here}: got {:?}, not sent to it",
                self.idx,
                String::from_utf8_lossy(data)
            )),
        }
        self.received.fetch_add(1, Ordering::Release);
        let next = self.actions.borrow_mut().pop_front();
        if let Some(action) = next {
            action(t.reactor());
            self.ledger.borrow_mut().actions_in_witness += 1;
        }
    }

    fn stop_protocol(&mut self, _t: &mut UdpTransport<'_>) {
        let mut l = self.ledger.borrow_mut();
        l.witness_stops[self.idx] += 1;
        if !l.ending {
            l.violate(format!("witness {} stopped early", self.idx));
        }
    }
}

/// Datagrams a witness may have in flight: far below what its receive buffer holds.
const WINDOW: u64 = 64;

/// A thread that sends a steady stream to each witness, at most [`WINDOW`] unread at a
/// time (datagrams the kernel reports dropped no longer count as unread); returns how many
/// it sent to each once `stop` is set.
fn spawn_sender(
    targets: Vec<SocketAddr>,
    received: Vec<Arc<AtomicU64>>,
    stop: Arc<AtomicBool>,
) -> thread::JoinHandle<Vec<u64>> {
    thread::spawn(move || {
        let socket = UdpSocket::bind("127.0.0.1:0").expect("sender socket");
        let mut sent = vec![0u64; targets.len()];
        let mut drops = vec![0u64; targets.len()];
        let mut idle_rounds = 0u32;
        let give_up = Instant::now() + 4 * DEADLINE;
        while !stop.load(Ordering::Acquire) && Instant::now() < give_up {
            let mut progressed = false;
            for (w, to) in targets.iter().enumerate() {
                while sent[w] - received[w].load(Ordering::Acquire) - drops[w] < WINDOW {
                    let seq = u32::try_from(sent[w]).expect("seq fits");
                    socket
                        .send_to(payload('W', w, *to, seq).as_bytes(), to)
                        .expect("send to a witness");
                    sent[w] += 1;
                    progressed = true;
                }
            }
            if progressed {
                idle_rounds = 0;
                continue;
            }
            idle_rounds += 1;
            if idle_rounds.is_multiple_of(100) {
                for (w, to) in targets.iter().enumerate() {
                    drops[w] = udp_drops(*to).unwrap_or(0);
                }
            }
            thread::sleep(Duration::from_micros(100));
        }
        sent
    })
}

/// A thread that, for each closed port's handle it is sent, queues a `call_from_thread`
/// closure checking that the handle reaches nothing; returns how many it queued.
fn spawn_checker(
    handle: ReactorHandle,
    problems: Arc<Mutex<Vec<String>>>,
    done: Arc<AtomicU64>,
) -> (mpsc::Sender<(usize, H)>, thread::JoinHandle<u64>) {
    let (tx, rx) = mpsc::channel::<(usize, H)>();
    let thread = thread::spawn(move || {
        let mut queued = 0;
        for (id, h) in rx {
            let problems = problems.clone();
            let done = done.clone();
            handle
                .call_from_thread(move |r| {
                    let found = stale_problems(r, h, id);
                    problems
                        .lock()
                        .unwrap_or_else(|e| e.into_inner())
                        .extend(found);
                    done.fetch_add(1, Ordering::Release);
                })
                .expect("reactor alive");
            queued += 1;
        }
        queued
    });
    (tx, thread)
}

// ----- the stress test --------------------------------------------------------------------

const CYCLES: usize = 3000;
const WITNESSES: usize = 3;

#[derive(Debug, Clone, Copy, PartialEq)]
enum Close {
    /// `stop_listening` inside its own `datagram_received`.
    Itself,
    /// By handle, before any turn: every datagram sent stays unread.
    Immediately,
    /// By handle, two cycles after it opened.
    Later(usize),
    /// From one of its own port timers.
    PortTimer,
    /// By handle, from inside a witness's `datagram_received`.
    FromWitness,
}

#[derive(Debug)]
struct Live {
    id: usize,
    close: Close,
    datagrams: u32,
    h: Option<H>,
    stop_asked: bool,
    calls: Vec<DelayedCall>,
}

#[derive(Debug, Default)]
struct Counts {
    opened_main: usize,
    opened_timer: usize,
    opened_witness: usize,
    closes: [usize; 5],
    stale_handle_checks: usize,
    stale_call_checks: usize,
    max_ports: usize,
    max_timers: usize,
    timers_scheduled: usize,
}

struct Stress {
    ledger: Shared,
    actions: Actions,
    client: UdpSocket,
    live: Vec<Live>,
    recent: VecDeque<(usize, H)>,
    checker: Option<mpsc::Sender<(usize, H)>>,
    problems: Vec<String>,
    counts: Counts,
}

impl Stress {
    /// Picks up ports opened since the last call (sends to them, schedules their timers and
    /// their close), closes those due, and retires those stopped.
    fn service(&mut self, r: &mut Reactor, cycle: usize) {
        let opened = std::mem::take(&mut self.ledger.borrow_mut().opened);
        for (id, h) in opened {
            let live = self
                .live
                .iter_mut()
                .find(|l| l.id == id)
                .expect("a planned port");
            live.h = Some(h);
            let to = h.addr();
            self.ledger.borrow_mut().recs[id].sent = live.datagrams;
            for seq in 0..live.datagrams {
                self.client
                    .send_to(payload('S', id, to, seq).as_bytes(), to)
                    .expect("send to a short-lived port");
            }
            let once = Duration::from_millis(id as u64 % 3 / 2);
            live.calls
                .push(h.call_later(r, once, id).expect("port timer"));
            live.calls.push(
                h.call_every(r, Duration::from_micros(100), id)
                    .expect("repeating"),
            );
            self.counts.timers_scheduled += 2;
            match live.close {
                Close::Itself => self.counts.closes[0] += 1,
                Close::Immediately => {
                    self.counts.closes[1] += 1;
                    ask_stop(r, &self.ledger, id, h);
                    live.stop_asked = true;
                }
                Close::Later(_) => {
                    self.counts.closes[2] += 1;
                    live.close = Close::Later(cycle.saturating_add(2));
                }
                Close::PortTimer => {
                    self.counts.closes[3] += 1;
                    let delay = Duration::from_millis(id as u64 % 2);
                    live.calls
                        .push(h.stop_later(r, delay, id).expect("stop timer"));
                    self.counts.timers_scheduled += 1;
                }
                Close::FromWitness => {
                    self.counts.closes[4] += 1;
                    let ledger = self.ledger.clone();
                    self.actions
                        .borrow_mut()
                        .push_back(Box::new(move |r| ask_stop(r, &ledger, id, h)));
                }
            }
        }
        for live in &mut self.live {
            if let (Close::Later(due), Some(h), false) = (live.close, live.h, live.stop_asked)
                && due <= cycle
            {
                ask_stop(r, &self.ledger, live.id, h);
                live.stop_asked = true;
            }
        }
        let mut i = 0;
        while i < self.live.len() {
            if self.ledger.borrow().recs[self.live[i].id].stops == 0 {
                i += 1;
                continue;
            }
            let live = self.live.swap_remove(i);
            let h = live.h.expect("a stopped port was opened");
            for call in live.calls {
                self.problems.extend(stale_call_problems(r, call));
                self.counts.stale_call_checks += 1;
            }
            if let Some(checker) = &self.checker {
                checker.send((live.id, h)).expect("checker thread alive");
            }
            self.recent.push_front((live.id, h));
            self.recent.truncate(8);
        }
        for &(id, h) in &self.recent {
            self.problems.extend(stale_problems(r, h, id));
            self.counts.stale_handle_checks += 1;
        }
        self.counts.max_ports = self.counts.max_ports.max(r.port_count());
        self.counts.max_timers = self.counts.max_timers.max(r.timer_count());
    }
}

/// Asks short-lived port `id` to stop by handle; it must not have been asked before.
fn ask_stop(r: &mut Reactor, ledger: &Shared, id: usize, h: H) {
    ledger.borrow_mut().recs[id].stop_asked = true;
    if !h.stop(r) {
        ledger
            .borrow_mut()
            .violate(format!("#{id}: stop_listening by handle returned false"));
    }
}

/// Thousands of ports of two types open and close (closed from inside, by handle, by a
/// port timer, from another port's callback, some with unread datagrams) beside witness
/// ports under a steady stream; every datagram reaches only the port it was sent to, no
/// hook runs after `stop_protocol`, each port starts and stops once, stale handles and
/// calls (checked here and from another thread) reach nothing, witnesses lose nothing.
#[test]
fn thousands_of_ports_reuse_slots_under_load_without_crossing() {
    init_logging();
    let started = Instant::now();
    let mut reactor = reactor();
    let ledger = Shared::default();
    ledger.borrow_mut().witness_stops = vec![0; WITNESSES];
    let actions = Actions::default();

    let mut witnesses = Vec::new();
    let mut received = Vec::new();
    for idx in 0..WITNESSES {
        let count = Arc::new(AtomicU64::new(0));
        let opts = loopback().recv_buffer_size(1 << 20);
        let w = reactor
            .listen_udp_with(
                opts,
                Witness {
                    idx,
                    local: None,
                    received: count.clone(),
                    seen: Vec::new(),
                    ledger: ledger.clone(),
                    actions: actions.clone(),
                },
            )
            .expect("listen on a witness port");
        witnesses.push(w);
        received.push(count);
    }
    let stop_sender = Arc::new(AtomicBool::new(false));
    let sender = spawn_sender(
        witnesses.iter().map(|w| w.local_addr()).collect(),
        received.clone(),
        stop_sender.clone(),
    );
    let thread_problems = Arc::new(Mutex::new(Vec::new()));
    let thread_checked = Arc::new(AtomicU64::new(0));
    let (checker_tx, checker) = spawn_checker(
        reactor.handle(),
        thread_problems.clone(),
        thread_checked.clone(),
    );

    let mut st = Stress {
        ledger: ledger.clone(),
        actions: actions.clone(),
        client: UdpSocket::bind("127.0.0.1:0").expect("client"),
        live: Vec::new(),
        recent: VecDeque::new(),
        checker: Some(checker_tx),
        problems: Vec::new(),
        counts: Counts::default(),
    };
    let mut rng = Rng::new(0x9E37_79B9_7F4A_7C15);
    for cycle in 0..CYCLES {
        let kind = if rng.below(2) == 0 { b'A' } else { b'B' };
        let id = ledger.borrow_mut().new_rec(kind);
        assert_eq!(id, cycle);
        let datagrams = 1 + rng.below(6) as u32;
        let close = match rng.below(5) {
            0 => Close::Itself,
            1 => Close::Immediately,
            2 => Close::Later(0),
            3 => Close::PortTimer,
            _ => Close::FromWitness,
        };
        let plan = Plan {
            id,
            kind,
            budget: 1 + rng.below(3),
            stop_after: (close == Close::Itself).then(|| 1 + rng.below(datagrams as usize) as u32),
        };
        st.live.push(Live {
            id,
            close,
            datagrams,
            h: None,
            stop_asked: false,
            calls: Vec::new(),
        });
        match rng.below(4) {
            0 | 1 => {
                open_short(&mut reactor, &ledger, plan);
                st.counts.opened_main += 1;
            }
            2 => {
                let ledger = ledger.clone();
                reactor.call_later(Duration::ZERO, move |r| {
                    open_short(r, &ledger, plan);
                });
                st.counts.opened_timer += 1;
            }
            _ => {
                let ledger = ledger.clone();
                actions.borrow_mut().push_back(Box::new(move |r| {
                    open_short(r, &ledger, plan);
                }));
                st.counts.opened_witness += 1;
            }
        }
        reactor.iterate(Duration::ZERO).expect("turn");
        st.service(&mut reactor, cycle);
    }
    let cycles_done = started.elapsed();
    drive(&mut reactor, "every short-lived port to stop", |r| {
        st.service(r, usize::MAX);
        st.live.is_empty() && actions.borrow().is_empty()
    });

    // Cross-thread checks: every closed port's handle, from a closure queued by a thread.
    st.checker = None;
    let queued = checker.join().expect("checker thread");
    drive(&mut reactor, "the checker thread's calls", |_| {
        thread_checked.load(Ordering::Acquire) == queued
    });

    // Witnesses: everything sent arrived, or the kernel says it dropped it.
    stop_sender.store(true, Ordering::Release);
    let sent = sender.join().expect("sender thread");
    let addrs: Vec<SocketAddr> = witnesses.iter().map(|w| w.local_addr()).collect();
    let mut drops = vec![0u64; WITNESSES];
    drive(&mut reactor, "every witness datagram or its drop", |_| {
        (0..WITNESSES).all(|w| {
            let got = received[w].load(Ordering::Acquire);
            if got < sent[w] {
                drops[w] = udp_drops(addrs[w]).unwrap_or(0);
            }
            got + drops[w] == sent[w]
        })
    });
    let got: Vec<u64> = received.iter().map(|c| c.load(Ordering::Acquire)).collect();
    for (w, port) in witnesses.iter().enumerate() {
        let stats = reactor.port_stats(port).expect("witness open");
        assert_eq!(stats.datagrams_received, got[w], "witness {w} stats");
        assert_eq!(stats.truncated, 0);
        assert!(sent[w] >= WINDOW, "witness {w}: only {} sent", sent[w]);
    }

    let l = ledger.borrow();
    assert!(
        l.violations.is_empty(),
        "{} violations, first ones: {:#?}",
        l.violation_count,
        l.violations
    );
    assert!(
        st.problems.is_empty(),
        "stale handles or calls: {:#?}",
        &st.problems[..st.problems.len().min(20)]
    );
    let thread_problems = thread_problems.lock().expect("problems");
    assert!(
        thread_problems.is_empty(),
        "from the thread: {thread_problems:#?}"
    );
    assert_eq!(
        queued, CYCLES as u64,
        "every handle checked from the thread"
    );
    let (mut short_sent, mut short_got, mut timer_runs) = ([0u64; 2], [0u64; 2], 0);
    let mut ports = [0usize; 2];
    for (id, rec) in l.recs.iter().enumerate() {
        assert_eq!((rec.starts, rec.stops), (1, 1), "#{id} starts and stops");
        assert!(rec.received <= rec.sent && rec.seen.count_ones() == rec.received);
        let k = usize::from(rec.kind == b'B');
        ports[k] += 1;
        short_sent[k] += u64::from(rec.sent);
        short_got[k] += u64::from(rec.received);
        timer_runs += rec.timer_runs;
    }
    assert!(ports[0] > 0 && ports[1] > 0, "both protocol types used");
    assert!(
        l.actions_in_witness > 0,
        "actions ran inside witness callbacks"
    );
    let c = &st.counts;
    // At most `max_ports` slots ever existed, so thousands of opens reused them.
    assert!(c.max_ports < CYCLES / 2, "{} ports at once", c.max_ports);
    assert!(
        logs_at(log::Level::Error).is_empty(),
        "errors logged: {:?}",
        logs_at(log::Level::Error)
    );
    eprintln!(
        "stale_tokens: {CYCLES} cycles in {cycles_done:?} ({:?} in all); ports A {} B {}; \
         opened in main {} / timer {} / witness callback {}; closed itself {} / by handle at \
         once {} / by handle later {} / by port timer {} / from a witness {}; at most {} \
         ports and {} timers at once ({} port timers scheduled, {} ran); short-lived datagrams \
         A {}/{} B {}/{} received/sent; witnesses sent {sent:?} received {got:?} kernel \
         drops {drops:?}; stale checks: {} handles, {} calls, {queued} from a thread",
        started.elapsed(),
        ports[0],
        ports[1],
        c.opened_main,
        c.opened_timer,
        c.opened_witness,
        c.closes[0],
        c.closes[1],
        c.closes[2],
        c.closes[3],
        c.closes[4],
        c.max_ports,
        c.max_timers,
        c.timers_scheduled,
        timer_runs,
        short_got[0],
        short_sent[0],
        short_got[1],
        short_sent[1],
        c.stale_handle_checks,
        c.stale_call_checks,
    );
    drop(l);

    ledger.borrow_mut().ending = true;
    for w in &witnesses {
        assert!(reactor.stop_listening(w));
    }
    drive(&mut reactor, "the witnesses to stop", |r| {
        r.port_count() == 0
    });
    assert_eq!(ledger.borrow().witness_stops, vec![1; WITNESSES]);
    assert_eq!(ledger.borrow().violation_count, 0);
}

// ----- stale handles and timers, one slot at a time --------------------------------------

/// A closed port's handle and port timers, once its slot holds a new port (of the same
/// type or the other): the handle reaches nothing and stops nothing, the timers never run
/// there, and cancelling or resetting them leaves the new port's timers (in the old
/// timers' slots) alone.
#[test]
fn stale_handle_and_port_timers_never_reach_the_next_occupant_of_the_slot() {
    init_logging();
    let mut reactor = reactor();
    let ledger = Shared::default();
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    let send = |h: H, id: usize, seqs: std::ops::Range<u32>| {
        for seq in seqs {
            client
                .send_to(payload('S', id, h.addr(), seq).as_bytes(), h.addr())
                .expect("send");
        }
    };
    let open = |r: &mut Reactor, kind: u8| {
        let id = ledger.borrow_mut().new_rec(kind);
        let plan = Plan {
            id,
            kind,
            budget: 64,
            stop_after: None,
        };
        let h = open_short(r, &ledger, plan);
        ledger.borrow_mut().opened.clear();
        (id, h)
    };
    let stop = |r: &mut Reactor, id: usize, h: H| {
        ask_stop(r, &ledger, id, h);
        drive(r, "the port to stop", |_| {
            ledger.borrow().recs[id].stops == 1
        });
    };

    for (old_kind, new_kind) in [(b'A', b'A'), (b'A', b'B'), (b'B', b'A'), (b'B', b'B')] {
        assert_eq!(reactor.port_count(), 0);
        assert_eq!(reactor.timer_count(), 0);
        let (old_id, old) = open(&mut reactor, old_kind);
        let old_calls = [
            old.call_later(&mut reactor, ms(40), old_id)
                .expect("old once"),
            old.call_every(&mut reactor, ms(10), old_id)
                .expect("old every"),
        ];
        // Left unread in its kernel buffer when it closes.
        ledger.borrow_mut().recs[old_id].sent = 3;
        send(old, old_id, 0..3);
        stop(&mut reactor, old_id, old);
        assert_eq!(ledger.borrow().recs[old_id].received, 0);
        assert_eq!(reactor.port_count(), 0);
        assert_eq!(
            reactor.timer_count(),
            0,
            "closing the port cancels its timers"
        );

        // The only port slot there is, and the old timers' slots.
        let (new_id, new) = open(&mut reactor, new_kind);
        let new_calls = [
            new.call_later(&mut reactor, ms(60), new_id)
                .expect("new once"),
            new.call_every(&mut reactor, ms(4), new_id)
                .expect("new every"),
        ];
        let mut old_slots = old_calls.map(timer_slot);
        let mut new_slots = new_calls.map(timer_slot);
        old_slots.sort_unstable();
        new_slots.sort_unstable();
        assert_eq!(old_slots, new_slots, "precondition: timer slots reused");

        let problems = stale_problems(&mut reactor, old, old_id);
        assert!(problems.is_empty(), "{problems:#?}");
        for call in old_calls {
            let problems = stale_call_problems(&mut reactor, call);
            assert!(problems.is_empty(), "{problems:#?}");
        }
        assert!(new_calls.iter().all(|c| reactor.is_pending(*c)));
        assert!(new.is_listening(&reactor));
        assert_eq!(new.protocol_id(&mut reactor).ok(), Some(new_id));

        // Past the old timers' deadlines: only the new port's timers run, on it.
        ledger.borrow_mut().recs[new_id].sent = 2;
        send(new, new_id, 0..2);
        drive(&mut reactor, "the new port's datagrams and timers", |r| {
            let l = ledger.borrow();
            let rec = &l.recs[new_id];
            rec.received == 2 && !r.is_pending(new_calls[0]) && rec.timer_runs >= 3
        });
        assert!(reactor.is_pending(new_calls[1]), "repeating call cancelled");
        assert!(
            new.is_listening(&reactor),
            "the stale stop closed the new port"
        );
        {
            let l = ledger.borrow();
            assert_eq!(l.recs[old_id].timer_runs, 0, "an old timer ran");
            assert_eq!(l.recs[new_id].stops, 0);
            assert!(l.violations.is_empty(), "{:#?}", l.violations);
        }
        stop(&mut reactor, new_id, new);
        let problems = stale_problems(&mut reactor, new, new_id);
        assert!(problems.is_empty(), "{problems:#?}");
    }
    assert!(ledger.borrow().violations.is_empty());
    assert!(
        logs_at(log::Level::Error).is_empty(),
        "errors logged: {:?}",
        logs_at(log::Level::Error)
    );
}

/// A reactor-level call that fired or was cancelled, and a port timer whose port closed:
/// their handles neither cancel nor reset the call that takes their slot next.
#[test]
fn stale_delayed_call_does_not_cancel_or_reset_the_call_reusing_its_slot() {
    init_logging();
    let mut reactor = reactor();
    let runs: Rc<RefCell<Vec<&'static str>>> = Rc::default();
    let note = |what: &'static str| {
        let runs = runs.clone();
        move |_: &mut Reactor| runs.borrow_mut().push(what)
    };
    let ran = |what: &'static str| runs.borrow().iter().filter(|w| **w == what).count();

    // Fired.
    let fired = reactor.call_later(Duration::ZERO, note("fired"));
    drive(&mut reactor, "the first call", |r| !r.is_pending(fired));
    let after_fired = reactor.call_later(ms(10), note("after fired"));
    assert_eq!(timer_slot(fired), timer_slot(after_fired), "precondition");
    assert!(stale_call_problems(&mut reactor, fired).is_empty());
    assert!(reactor.is_pending(after_fired));

    // Cancelled.
    let cancelled = reactor.call_later(ms(10), note("cancelled"));
    assert!(reactor.cancel(cancelled));
    let after_cancelled = reactor.call_later(ms(10), note("after cancelled"));
    assert_eq!(
        timer_slot(cancelled),
        timer_slot(after_cancelled),
        "precondition"
    );
    assert!(stale_call_problems(&mut reactor, cancelled).is_empty());

    // A repeating call, cancelled.
    let every = reactor.call_every(ms(2), note("every"));
    assert!(reactor.cancel(every));
    let next_every = reactor.call_every(ms(2), note("next every"));
    assert_eq!(timer_slot(every), timer_slot(next_every), "precondition");
    assert!(stale_call_problems(&mut reactor, every).is_empty());

    // A port timer, cancelled by its port's close, its slot taken by a reactor-level call.
    let ledger = Shared::default();
    let id = ledger.borrow_mut().new_rec(b'A');
    let plan = Plan {
        id,
        kind: b'A',
        budget: 64,
        stop_after: None,
    };
    let port = open_short(&mut reactor, &ledger, plan);
    let port_call = port
        .call_later(&mut reactor, ms(10), id)
        .expect("port timer");
    let timers = reactor.timer_count();
    ask_stop(&mut reactor, &ledger, id, port);
    drive(&mut reactor, "the port to stop", |_| {
        ledger.borrow().recs[id].stops == 1
    });
    assert_eq!(
        reactor.timer_count(),
        timers - 1,
        "closing the port cancels its timer"
    );
    let after_port = reactor.call_later(ms(10), note("after port"));
    assert_eq!(
        timer_slot(port_call),
        timer_slot(after_port),
        "precondition"
    );
    assert!(stale_call_problems(&mut reactor, port_call).is_empty());

    // Every new call still fires (none was cancelled or pushed an hour out).
    drive(&mut reactor, "every new call", |_| {
        ran("after fired") == 1
            && ran("after cancelled") == 1
            && ran("after port") == 1
            && ran("next every") >= 2
    });
    assert!(reactor.cancel(next_every));
    assert_eq!((ran("fired"), ran("cancelled"), ran("every")), (1, 0, 0));
    assert_eq!(ledger.borrow().recs[id].timer_runs, 0);
    assert!(ledger.borrow().violations.is_empty());
}

// ----- cross-thread -----------------------------------------------------------------------

type TLog = Arc<Mutex<Vec<(usize, &'static str)>>>;

/// A protocol that can be made on another thread's closure: it logs its hooks by id.
struct Tagged {
    id: usize,
    log: TLog,
}

impl Tagged {
    fn note(&self, what: &'static str) {
        self.log.lock().expect("log").push((self.id, what));
    }
}

impl DatagramProtocol for Tagged {
    fn start_protocol(&mut self, _t: &mut UdpTransport<'_>) {
        self.note("start");
    }

    fn datagram_received(&mut self, _t: &mut UdpTransport<'_>, _data: &[u8], _from: SocketAddr) {
        self.note("datagram");
    }

    fn stop_protocol(&mut self, _t: &mut UdpTransport<'_>) {
        self.note("stop");
    }
}

type NewPort = (ListeningPort<Tagged>, bool, usize);

/// What `call_from_thread` closures saw of a stale handle.
#[derive(Debug, Default, PartialEq)]
struct Seen {
    listening: bool,
    stats: bool,
    with_port: Option<usize>,
    stopped: bool,
    timer: bool,
}

fn look(r: &mut Reactor, old: &ListeningPort<Tagged>) -> Seen {
    let timer = r.call_later_on(old, Duration::ZERO, |me: &mut Tagged, _| {
        me.note("stale timer")
    });
    Seen {
        listening: r.is_listening(old),
        stats: r.port_stats(old).is_some(),
        with_port: r.with_port(old, |me, _| me.id).ok(),
        stopped: r.stop_listening(old),
        timer: timer.is_ok(),
    }
}

/// A closure from another thread holding the handle of a closed port: whether it was
/// queued before the port closed and runs after a new port took the slot, or was queued
/// after that, it reaches nothing and closes nothing.
#[test]
fn call_from_thread_with_a_stale_handle_does_not_reach_the_port_reusing_its_slot() {
    init_logging();
    let mut reactor = reactor();
    let log = TLog::default();
    let old = reactor
        .listen_udp_with(
            loopback(),
            Tagged {
                id: 1,
                log: log.clone(),
            },
        )
        .expect("old port");
    // The new port, whether the old one had stopped when it opened, the ports before it.
    let new_port: Arc<Mutex<Option<NewPort>>> = Arc::default();
    let seen: Arc<Mutex<Vec<Seen>>> = Arc::default();

    // Queued while `old` is open; run on the turn that tears it down, in order: the first
    // opens a port in the freed slot, the second uses the old handle.
    let handle = reactor.handle();
    let (log2, new2, seen2) = (log.clone(), new_port.clone(), seen.clone());
    thread::spawn(move || {
        handle
            .call_from_thread(move |r| {
                let old_stopped = log2.lock().expect("log").contains(&(1, "stop"));
                let ports_before = r.port_count();
                let p = r
                    .listen_udp_with(loopback(), Tagged { id: 2, log: log2 })
                    .expect("new port");
                *new2.lock().expect("new") = Some((p, old_stopped, ports_before));
            })
            .expect("queue the open");
        handle
            .call_from_thread(move |r| seen2.lock().expect("seen").push(look(r, &old)))
            .expect("queue the look");
    })
    .join()
    .expect("thread");
    assert!(reactor.stop_listening(&old));
    drive(&mut reactor, "both calls from the thread", |_| {
        !seen.lock().expect("seen").is_empty()
    });
    let (new, old_stopped, ports_before) = new_port.lock().expect("new").expect("opened");
    assert!(
        old_stopped && ports_before == 0,
        "precondition: the old port was torn down and its slot free when the new one opened"
    );

    // Queued after the slot was reused.
    let handle = reactor.handle();
    let seen2 = seen.clone();
    thread::spawn(move || {
        handle
            .call_from_thread(move |r| seen2.lock().expect("seen").push(look(r, &old)))
            .expect("queue the look");
    })
    .join()
    .expect("thread");
    drive(&mut reactor, "the second look", |_| {
        seen.lock().expect("seen").len() == 2
    });
    assert_eq!(
        *seen.lock().expect("seen"),
        vec![Seen::default(), Seen::default()]
    );

    // The new port is untouched: still listening, no stale timer, it gets its datagram.
    drive_for(&mut reactor, ms(20));
    assert!(reactor.is_listening(&new));
    let client = UdpSocket::bind("127.0.0.1:0").expect("client");
    client.send_to(b"hi", new.local_addr()).expect("send");
    drive(&mut reactor, "the new port's datagram", |_| {
        log.lock().expect("log").contains(&(2, "datagram"))
    });
    assert!(reactor.stop_listening(&new));
    drive(&mut reactor, "the new port to stop", |r| {
        r.port_count() == 0
    });
    assert_eq!(
        *log.lock().expect("log"),
        vec![
            (1, "start"),
            (1, "stop"),
            (2, "start"),
            (2, "datagram"),
            (2, "stop")
        ]
    );
    assert!(
        logs_at(log::Level::Error).is_empty(),
        "errors logged: {:?}",
        logs_at(log::Level::Error)
    );
}
