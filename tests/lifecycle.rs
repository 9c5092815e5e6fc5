//! Port lifecycle, fairness and fault isolation: start_protocol / stop_protocol ordering,
//! stopping from callbacks, reactor stop, stale handles, a flooded port beside a ping-pong
//! port and a timer, read budgets, and panics.

mod util;

use std::cell::{Cell, RefCell};
use std::net::{SocketAddr, UdpSocket};
use std::os::fd::AsRawFd;
use std::rc::Rc;
use std::thread;
use std::time::{Duration, Instant};

use twine::{
    DatagramProtocol, Error, ListenOptions, ListeningPort, Reactor, UdpTransport, from_fn,
};
use util::{
    DEADLINE, Event, Recorder, assert_echoes, client, dead_addr, drive, drive_for, init_logging,
    listen_loopback, logs_containing, loopback, ms, reactor,
};

/// A port on 127.0.0.3 (loopback too), for tests that show a socket closed by binding its
/// address again: a port number freed on 127.0.0.1 may meanwhile go to another test's
/// `127.0.0.1:0`, but nothing else here binds 127.0.0.3.
fn loopback_alone() -> ListenOptions {
    ListenOptions::new(0).interface("127.0.0.3")
}

/// Events with the reactor turn they happened in.
type Log = Rc<RefCell<Vec<(u32, Event)>>>;

type Hook = Box<dyn FnMut(&mut UdpTransport<'_>)>;
type DataHook = Box<dyn FnMut(&mut UdpTransport<'_>, &[u8], SocketAddr)>;

/// A protocol that records each hook call (with the current turn number) and then runs a
/// script for it.
struct Scripted {
    prefix: &'static str,
    log: Log,
    turn: Rc<Cell<u32>>,
    on_start: Hook,
    on_datagram: DataHook,
    on_refused: Hook,
    on_stop: Hook,
}

impl Scripted {
    fn new(turn: &Rc<Cell<u32>>) -> (Scripted, Log) {
        let log = Log::default();
        (
            Scripted {
                prefix: "Scripted",
                log: log.clone(),
                turn: turn.clone(),
                on_start: Box::new(|_| {}),
                on_datagram: Box::new(|_, _, _| {}),
                on_refused: Box::new(|_| {}),
                on_stop: Box::new(|_| {}),
            },
            log,
        )
    }

    fn prefix(mut self, prefix: &'static str) -> Self {
        self.prefix = prefix;
        self
    }

    fn on_start(mut self, f: impl FnMut(&mut UdpTransport<'_>) + 'static) -> Self {
        self.on_start = Box::new(f);
        self
    }

    fn on_datagram(
        mut self,
        f: impl FnMut(&mut UdpTransport<'_>, &[u8], SocketAddr) + 'static,
    ) -> Self {
        self.on_datagram = Box::new(f);
        self
    }

    fn on_refused(mut self, f: impl FnMut(&mut UdpTransport<'_>) + 'static) -> Self {
        self.on_refused = Box::new(f);
        self
    }

    fn on_stop(mut self, f: impl FnMut(&mut UdpTransport<'_>) + 'static) -> Self {
        self.on_stop = Box::new(f);
        self
    }

    fn record(&self, event: Event) {
        self.log.borrow_mut().push((self.turn.get(), event));
    }
}

impl DatagramProtocol for Scripted {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.record(Event::Start(t.local_addr()));
        (self.on_start)(t);
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        self.record(Event::Datagram(data.to_vec(), from));
        (self.on_datagram)(t, data, from);
    }

    fn connection_refused(&mut self, t: &mut UdpTransport<'_>) {
        self.record(Event::Refused);
        (self.on_refused)(t);
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.record(Event::Stop);
        (self.on_stop)(t);
    }

    fn log_prefix(&self) -> &str {
        self.prefix
    }
}

fn events(log: &Log) -> Vec<Event> {
    log.borrow().iter().map(|(_, e)| e.clone()).collect()
}

fn payloads(log: &Log) -> Vec<Vec<u8>> {
    log.borrow()
        .iter()
        .filter_map(|(_, e)| match e {
            Event::Datagram(d, _) => Some(d.clone()),
            _ => None,
        })
        .collect()
}

fn turn_of(log: &Log, pred: impl Fn(&Event) -> bool) -> u32 {
    log.borrow()
        .iter()
        .find(|(_, e)| pred(e))
        .map(|(t, _)| *t)
        .expect("event recorded")
}

fn stops(log: &Log) -> usize {
    log.borrow()
        .iter()
        .filter(|(_, e)| *e == Event::Stop)
        .count()
}

/// One turn, numbered: the turn counter is bumped first, so hooks record the new number.
fn turn(reactor: &mut Reactor, turns: &Rc<Cell<u32>>) {
    turns.set(turns.get() + 1);
    reactor.iterate(ms(500)).expect("iterate");
}

/// Like `util::drive`, numbering each turn.
#[track_caller]
fn drive_turns(
    reactor: &mut Reactor,
    turns: &Rc<Cell<u32>>,
    what: &str,
    mut done: impl FnMut(&mut Reactor) -> bool,
) {
    drive(reactor, what, |r| {
        turns.set(turns.get() + 1);
        done(r)
    });
}

/// Checks made inside hooks, asserted by the test afterwards: an assert failing inside a hook
/// would only be caught by the reactor (and close the port).
#[derive(Clone, Default)]
struct Checks(Rc<RefCell<Vec<(&'static str, bool)>>>);

impl Checks {
    fn check(&self, what: &'static str, ok: bool) {
        self.0.borrow_mut().push((what, ok));
    }

    #[track_caller]
    fn assert_all(&self, expected: usize) {
        let made = self.0.borrow();
        assert_eq!(made.len(), expected, "checks made inside hooks: {made:?}");
        let failed: Vec<_> = made.iter().filter(|(_, ok)| !ok).collect();
        assert!(failed.is_empty(), "failed inside hooks: {failed:?}");
    }
}

// ----- start and stop ----------------------------------------------------------------------

/// start_protocol runs once, inside listen, before any datagram, after the "starting on" log line.
#[test]
fn start_protocol_runs_once_inside_listen_before_any_datagram() {
    init_logging();
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let (proto, log) = Scripted::new(&turns);
    let prefix = "StartOnceProbe";
    // A datagram to itself is in the socket before listen returns; it must wait its turn.
    let proto = proto.prefix(prefix).on_start(move |t| {
        log::info!("{prefix} start_protocol ran");
        let me = t.local_addr();
        t.write(b"to myself", me).expect("write to self");
    });
    let port = reactor.listen_udp_with(loopback(), proto).expect("listen");
    let addr = port.local_addr();
    assert_eq!(events(&log), vec![Event::Start(addr)], "right after listen");
    drive_turns(&mut reactor, &turns, "the datagram to itself", |_| {
        log.borrow().len() >= 2
    });
    drive_for(&mut reactor, ms(20));
    assert_eq!(
        events(&log),
        vec![
            Event::Start(addr),
            Event::Datagram(b"to myself".to_vec(), addr)
        ]
    );
    assert_eq!(turn_of(&log, |e| matches!(e, Event::Start(_))), 0);
    let lines = logs_containing(prefix);
    assert_eq!(
        lines.get(..2),
        Some(
            &[
                format!("INFO {prefix} starting on {addr}"),
                format!("INFO {prefix} start_protocol ran"),
            ][..]
        ),
        "the port's first log lines"
    );
}

/// reactor.stop_listening: stop_protocol runs once on a later turn; waiting datagrams are dropped.
#[test]
fn stop_listening_from_outside_runs_stop_protocol_once_on_a_later_turn() {
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let (proto, log) = Scripted::new(&turns);
    let port = reactor.listen_udp_with(loopback(), proto).expect("listen");
    let c = client();
    c.send_to(b"unread", port.local_addr()).expect("send");

    assert!(reactor.stop_listening(&port), "first stop");
    assert_eq!(stops(&log), 0, "stop_protocol ran inside stop_listening");
    assert!(!reactor.is_listening(&port));
    assert!(!reactor.stop_listening(&port), "second stop");
    turn(&mut reactor, &turns);
    assert_eq!(stops(&log), 1);
    assert_eq!(turn_of(&log, |e| *e == Event::Stop), 1);
    drive_for(&mut reactor, ms(20));
    assert_eq!(
        events(&log),
        vec![Event::Start(port.local_addr()), Event::Stop]
    );
    assert_eq!(reactor.port_count(), 0);
}

/// stop_listening in datagram_received: the rest is dropped, stop_protocol once on a later turn.
#[test]
fn stop_listening_inside_datagram_received_drops_the_rest_and_stops_on_a_later_turn() {
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let (proto, log) = Scripted::new(&turns);
    let checks = Checks::default();
    let proto = {
        let (log, checks) = (log.clone(), checks.clone());
        proto.on_datagram(move |t, data, _| {
            if data == b"stop" {
                t.stop_listening();
                t.stop_listening();
                checks.check("is_closing after stop_listening", t.is_closing());
                let stopped = log.borrow().iter().any(|(_, e)| *e == Event::Stop);
                checks.check("stop_protocol not run inside the callback", !stopped);
            }
        })
    };
    let port = reactor.listen_udp_with(loopback(), proto).expect("listen");
    let c = client();
    for msg in [&b"a"[..], b"stop", b"b", b"c"] {
        c.send_to(msg, port.local_addr()).expect("send");
    }

    turn(&mut reactor, &turns);
    assert_eq!(payloads(&log), vec![b"a".to_vec(), b"stop".to_vec()]);
    checks.assert_all(2);
    assert_eq!(stops(&log), 0, "stop_protocol ran in the same turn");
    assert!(!reactor.is_listening(&port));
    assert!(!reactor.stop_listening(&port), "stop of a closing port");

    drive_turns(&mut reactor, &turns, "stop_protocol", |_| stops(&log) > 0);
    drive_for(&mut reactor, ms(20));
    let stop_turn = turn_of(&log, |e| *e == Event::Stop);
    let request_turn = turn_of(&log, |e| matches!(e, Event::Datagram(d, _) if d == b"stop"));
    assert!(
        stop_turn > request_turn,
        "stop in turn {stop_turn}, asked in {request_turn}"
    );
    assert_eq!(stops(&log), 1);
    assert_eq!(payloads(&log), vec![b"a".to_vec(), b"stop".to_vec()]);
    assert_eq!(reactor.port_count(), 0);
    assert!(reactor.port_stats(&port).is_none());
}

/// Stopping its own port via the reactor in a callback acts as t.stop_listening() does.
#[test]
fn stopping_its_own_port_through_the_reactor_inside_a_callback_acts_like_stop_listening() {
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let own: Rc<Cell<Option<ListeningPort<Scripted>>>> = Rc::default();
    let checks = Checks::default();
    let (proto, log) = Scripted::new(&turns);
    let proto = {
        let (own, checks) = (own.clone(), checks.clone());
        proto.on_datagram(move |t, data, _| {
            if data == b"stop" {
                let me = own.get().expect("own handle set");
                checks.check("first stop", t.reactor().stop_listening(&me));
                checks.check("second stop", !t.reactor().stop_listening(&me));
                checks.check("not listening", !t.reactor().is_listening(&me));
            }
        })
    };
    let port = reactor.listen_udp_with(loopback(), proto).expect("listen");
    own.set(Some(port));
    let c = client();
    for msg in [&b"a"[..], b"stop", b"b"] {
        c.send_to(msg, port.local_addr()).expect("send");
    }
    turn(&mut reactor, &turns);
    checks.assert_all(3);
    assert_eq!(payloads(&log), vec![b"a".to_vec(), b"stop".to_vec()]);
    assert_eq!(stops(&log), 0, "stop_protocol ran in the same turn");
    assert!(!reactor.is_listening(&port));
    drive_turns(&mut reactor, &turns, "stop_protocol", |_| stops(&log) > 0);
    drive_for(&mut reactor, ms(20));
    assert_eq!(stops(&log), 1);
    assert_eq!(payloads(&log), vec![b"a".to_vec(), b"stop".to_vec()]);
    assert_eq!(reactor.port_count(), 0);
}

/// After a callback stops its own port via the reactor, its transport's is_closing() is true.
#[test]
fn transport_is_closing_after_its_port_is_stopped_through_the_reactor() {
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let own: Rc<Cell<Option<ListeningPort<Scripted>>>> = Rc::default();
    let closing: Rc<Cell<Option<bool>>> = Rc::default();
    let (proto, log) = Scripted::new(&turns);
    let proto = {
        let (own, closing) = (own.clone(), closing.clone());
        proto.on_datagram(move |t, _, _| {
            let me = own.get().expect("own handle set");
            t.reactor().stop_listening(&me);
            closing.set(Some(t.is_closing()));
        })
    };
    let port = reactor.listen_udp_with(loopback(), proto).expect("listen");
    own.set(Some(port));
    client().send_to(b"stop", port.local_addr()).expect("send");
    drive_turns(&mut reactor, &turns, "stop_protocol", |_| stops(&log) > 0);
    assert_eq!(closing.get(), Some(true), "is_closing inside the callback");
}

/// stop_listening in start_protocol: listen returns; stop_protocol runs on a later turn, not in it.
#[test]
fn stop_listening_inside_start_protocol_defers_stop_protocol_to_a_later_turn() {
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let (proto, log) = Scripted::new(&turns);
    let proto = proto.on_start(|t| {
        t.stop_listening();
        let me = t.local_addr();
        t.write(b"never delivered", me).expect("write to self");
    });
    let port = reactor.listen_udp_with(loopback(), proto).expect("listen");
    assert_eq!(events(&log), vec![Event::Start(port.local_addr())]);
    assert!(!reactor.is_listening(&port));
    assert_eq!(reactor.port_count(), 1, "torn down inside listen");
    turn(&mut reactor, &turns);
    drive_for(&mut reactor, ms(20));
    assert_eq!(
        events(&log),
        vec![Event::Start(port.local_addr()), Event::Stop]
    );
    assert_eq!(turn_of(&log, |e| *e == Event::Stop), 1);
    assert_eq!(reactor.port_count(), 0);
}

/// reactor.stop() from a datagram callback: run() returns after both ports' stop_protocol ran.
#[test]
fn reactor_stop_from_a_callback_stops_every_port_before_run_returns() {
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let (a, log_a) = Scripted::new(&turns);
    let checks = Checks::default();
    let a = {
        let checks = checks.clone();
        a.on_datagram(move |t, _, _| {
            t.reactor().stop();
            checks.check("is_stopping after stop", t.reactor().is_stopping());
        })
    };
    let (b, log_b) = Scripted::new(&turns);
    let port_a = reactor.listen_udp_with(loopback(), a).expect("listen a");
    let port_b = reactor.listen_udp_with(loopback(), b).expect("listen b");
    let watchdog = Rc::new(Cell::new(false));
    {
        let watchdog = watchdog.clone();
        reactor.call_later(DEADLINE, move |r| {
            watchdog.set(true);
            r.stop();
        });
    }
    let c = client();
    c.send_to(b"stop the reactor", port_a.local_addr())
        .expect("send");
    reactor.run().expect("run");
    assert!(!watchdog.get(), "run returned only on the watchdog");
    checks.assert_all(1);
    assert_eq!(events(&log_a).last(), Some(&Event::Stop));
    assert_eq!(stops(&log_a), 1);
    assert_eq!(
        events(&log_b),
        vec![Event::Start(port_b.local_addr()), Event::Stop]
    );
    assert_eq!(reactor.port_count(), 0);
    assert!(!reactor.is_stopping());
}

/// reactor.stop() from a timer: run() returns after both ports' stop_protocol ran.
#[test]
fn reactor_stop_from_a_timer_stops_every_port_before_run_returns() {
    let mut reactor = reactor();
    let (a, events_a) = Recorder::new();
    let (b, events_b) = Recorder::new();
    listen_loopback(&mut reactor, a);
    listen_loopback(&mut reactor, b);
    let fired = Rc::new(Cell::new(false));
    {
        let fired = fired.clone();
        reactor.call_later(ms(20), move |r| {
            fired.set(true);
            r.stop();
        });
    }
    let watchdog = Rc::new(Cell::new(false));
    {
        let watchdog = watchdog.clone();
        reactor.call_later(DEADLINE, move |r| {
            watchdog.set(true);
            r.stop();
        });
    }
    reactor.run().expect("run");
    assert!(fired.get() && !watchdog.get());
    for events in [&events_a, &events_b] {
        assert_eq!(events.borrow().last(), Some(&Event::Stop));
        assert_eq!(util::count(events, |e| *e == Event::Stop), 1);
    }
    assert_eq!(reactor.port_count(), 0);
}

/// stop_protocol can still write: its "bye" reaches a plain client after the stop.
#[test]
fn stop_protocol_can_still_write_a_goodbye() {
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let c = client();
    let target = c.local_addr().expect("client addr");
    let (proto, _log) = Scripted::new(&turns);
    let proto = proto.on_stop(move |t| t.write(b"bye", target).expect("write bye"));
    let port = reactor.listen_udp_with(loopback(), proto).expect("listen");
    reactor.call_later(ms(10), |r| r.stop());
    reactor.run().expect("run");
    c.set_read_timeout(Some(DEADLINE)).expect("timeout");
    let mut buf = [0u8; 64];
    let (n, from) = c.recv_from(&mut buf).expect("the goodbye");
    assert_eq!(&buf[..n], b"bye");
    assert_eq!(from, port.local_addr());
}

/// A callback may listen on a new port, stop another and cancel a timer; the reactor goes on.
#[test]
fn callback_may_listen_stop_another_port_and_cancel_a_timer() {
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let (victim, victim_events) = Recorder::new();
    let victim = listen_loopback(&mut reactor, victim);
    let doomed_fired = Rc::new(Cell::new(false));
    let doomed = {
        let doomed_fired = doomed_fired.clone();
        reactor.call_later(ms(100), move |_| doomed_fired.set(true))
    };
    let opened: Rc<Cell<Option<ListeningPort<Recorder>>>> = Rc::default();
    let checks = Checks::default();
    let (ctl, _log) = Scripted::new(&turns);
    let ctl = {
        let (opened, checks) = (opened.clone(), checks.clone());
        ctl.on_datagram(move |t, data, from| {
            if data == b"go" {
                let r = t.reactor();
                let (echo, _) = Recorder::echoing();
                let new = r.listen_udp_with(loopback(), echo);
                checks.check("listen inside a callback", new.is_ok());
                opened.set(new.ok());
                checks.check("stop the other port", r.stop_listening(&victim));
                checks.check("cancel the timer", r.cancel(doomed));
            }
            t.write(data, from).expect("reply");
        })
    };
    let ctl = reactor
        .listen_udp_with(loopback(), ctl)
        .expect("listen ctl");
    assert_echoes(&mut reactor, &ctl, b"go");
    checks.assert_all(3);

    let new = opened.get().expect("a port opened from the callback");
    assert!(reactor.is_listening(&new));
    assert_echoes(&mut reactor, &new, b"to the new port");
    drive(&mut reactor, "the victim's stop_protocol", |_| {
        victim_events.borrow().last() == Some(&Event::Stop)
    });
    assert!(!reactor.is_listening(&victim));
    let sentinel = Rc::new(Cell::new(false));
    {
        let sentinel = sentinel.clone();
        reactor.call_later(ms(150), move |_| sentinel.set(true));
    }
    drive(&mut reactor, "a timer past the cancelled one", |_| {
        sentinel.get()
    });
    assert!(!doomed_fired.get(), "the cancelled timer fired");
    assert_echoes(&mut reactor, &ctl, b"still here");
    assert_eq!(reactor.port_count(), 2);
}

/// A closed port's handle never reaches the port that reuses its slot.
#[test]
fn stale_port_handle_does_not_reach_the_port_reusing_its_slot() {
    let mut reactor = reactor();
    let (old_proto, old_events) = Recorder::echoing();
    let old = listen_loopback(&mut reactor, old_proto);
    let stale_timer = reactor
        .call_later_on(&old, ms(30), |me: &mut Recorder, _| {
            me.events.borrow_mut().push(Event::Refused);
        })
        .expect("timer on the old port");
    assert!(reactor.stop_listening(&old));
    drive(&mut reactor, "the old port to close", |r| {
        r.port_count() == 0
    });
    assert_eq!(old_events.borrow().last(), Some(&Event::Stop));

    let (new_proto, new_events) = Recorder::echoing();
    let new = listen_loopback(&mut reactor, new_proto);
    assert!(!reactor.is_listening(&old));
    assert!(reactor.port_stats(&old).is_none());
    assert!(
        !reactor.stop_listening(&old),
        "stop through the stale handle"
    );
    assert!(matches!(
        reactor.with_port(&old, |_, _| ()),
        Err(Error::PortClosed)
    ));
    assert!(matches!(
        reactor.call_later_on(&old, ms(1), |_, _| {}),
        Err(Error::PortClosed)
    ));
    assert!(!reactor.is_pending(stale_timer));
    drive_for(&mut reactor, ms(60));

    assert!(reactor.is_listening(&new));
    assert!(reactor.port_stats(&new).is_some());
    assert_echoes(&mut reactor, &new, b"new port");
    assert!(
        !new_events.borrow().contains(&Event::Refused),
        "the old port's timer reached the new port: {new_events:?}"
    );
    assert_eq!(util::count(&new_events, |e| *e == Event::Stop), 0);
    assert_eq!(reactor.port_count(), 1);
}

// ----- fairness ----------------------------------------------------------------------------

/// A port adopted from a socket the test keeps: the kept socket is a view of the port's own
/// (the same open socket), which the test only peeks at, to see whether the port has data
/// queued.
fn adopted_with_view<P: DatagramProtocol>(
    reactor: &mut Reactor,
    opts: ListenOptions,
    protocol: P,
) -> (ListeningPort<P>, UdpSocket) {
    let socket = UdpSocket::bind("127.0.0.1:0").expect("bind a socket to adopt");
    let port = reactor
        .adopt_with(socket.as_raw_fd(), opts, protocol)
        .expect("adopt");
    socket.set_nonblocking(true).expect("non-blocking view");
    (port, socket)
}

/// Whether a datagram is queued on `view`'s socket (peeked at, not taken).
fn has_data(view: &UdpSocket) -> bool {
    view.peek_from(&mut [0u8; 1]).is_ok()
}

/// Port A's queue is topped up past its read budget before every turn, so that it ends
/// turn after turn with data left over, while port B plays ping-pong (one ping at a time)
/// and a 5 ms `call_every` runs. The test drives the reactor one `iterate` per turn and
/// checks, in turns, what holds whatever the scheduler does:
///
/// - A delivers at most its read budget in a turn, and, having ended turn `t` with data
///   queued, is served again by turn `t + 2`.
/// - A ping seen in B's queue before turn `j` began is delivered in turn `j` or `j + 1`.
/// - The timer runs in every turn that begins once its next run is surely due.
///
/// Why `t + 2` and `j + 1`: the kernel raises a socket's readiness right after queueing a
/// datagram, so a poll may just miss a datagram the test has already seen queued; the
/// next turn polls after that one has run to its end, and the readiness is raised by
/// then. (A port that read its whole budget is served again in the next turn without
/// waiting for readiness.) Why "surely due": `call_every` schedules the next run at the
/// first tick after the reactor's clock reading when the run fired, which comes before the
/// closure's own reading, so the next run is due at most one interval after that.
///
/// It goes on until `ROUNDS` pings have been delivered, and the timer has run `TICKS`
/// times, in turns that A ended with data left over (within [`DEADLINE`]): the neighbours
/// were served while A was flooded. Every echo reaches the client, and A's count agrees
/// with its stats.
#[test]
fn flooded_port_does_not_starve_another_port_or_a_timer() {
    const BUDGET: u64 = 16;
    const ROUNDS: u64 = 20;
    const TICKS: u64 = 10;
    const TICK: Duration = Duration::from_millis(5);
    /// Failures of one kind kept for the message (their count is exact).
    const KEPT: usize = 10;
    let mut reactor = reactor();
    // The number of the turn in progress (bumped before each `iterate`), for the hooks.
    let turn = Rc::new(Cell::new(0u64));
    let a_count = Rc::new(Cell::new(0u64));
    let (a, a_view) = {
        let a_count = a_count.clone();
        adopted_with_view(
            &mut reactor,
            ListenOptions::new(0)
                .read_budget(BUDGET as usize, 1 << 20)
                .recv_buffer_size(1 << 20),
            from_fn(move |_, _, _| a_count.set(a_count.get() + 1)),
        )
    };
    // B records and echoes each ping.
    let b_delivered: Rc<RefCell<Vec<Vec<u8>>>> = Rc::default();
    let (b, b_view) = {
        let delivered = b_delivered.clone();
        adopted_with_view(
            &mut reactor,
            ListenOptions::new(0),
            from_fn(move |t, data, from| {
                delivered.borrow_mut().push(data.to_vec());
                t.write(data, from).expect("echo the ping");
            }),
        )
    };
    // The timer's runs: how many, the turn of the last, and when the next is surely due.
    let runs = Rc::new(Cell::new(0u64));
    let fired_in = Rc::new(Cell::new(0u64));
    let due_by = Rc::new(Cell::new(Instant::now()));
    {
        let (runs, fired_in, due_by, turn) =
            (runs.clone(), fired_in.clone(), due_by.clone(), turn.clone());
        reactor.call_every(TICK, move |_| {
            runs.set(runs.get() + 1);
            fired_in.set(turn.get());
            due_by.set(Instant::now() + TICK);
        });
    }
    due_by.set(Instant::now() + TICK);

    let flooder = client();
    let pinger = client();
    pinger.set_nonblocking(true).expect("non-blocking");
    // The echoes, read as they come (the pinger's receive buffer holds only so many).
    let mut echoes: Vec<Vec<u8>> = Vec::new();
    let read_echoes = |echoes: &mut Vec<Vec<u8>>| {
        let mut buf = [0u8; 64];
        while let Ok((n, from)) = pinger.recv_from(&mut buf) {
            assert_eq!(from, b.local_addr(), "an echo from B");
            echoes.push(buf[..n].to_vec());
        }
    };
    let mut failures: Vec<String> = Vec::new();
    let mut failed = 0u64;
    let mut fail = |note: String| {
        failed += 1;
        if failures.len() < KEPT {
            failures.push(note);
        }
    };
    let (mut flooded, mut most_in_a_turn) = (0u64, 0u64);
    // The turn at whose end A was last seen with data queued and not served since.
    let mut a_waiting_since: Option<u64> = None;
    // The ping in flight, and the turn before which it was seen in B's queue.
    let mut ping: Option<(u64, u64)> = None;
    let (mut pings_sent, mut delivered_loaded, mut runs_loaded) = (0u64, 0u64, 0u64);
    let deadline = Instant::now() + DEADLINE;
    while delivered_loaded < ROUNDS || runs_loaded < TICKS {
        assert!(
            Instant::now() < deadline,
            "after {DEADLINE:?} and {} turns: {delivered_loaded} of {ROUNDS} pings and \
             {runs_loaded} of {TICKS} timer runs in turns that A ended with data left over",
            turn.get()
        );
        for _ in 0..2 * BUDGET {
            flooder
                .send_to(&flooded.to_le_bytes(), a.local_addr())
                .expect("flood A");
            flooded += 1;
        }
        if ping.is_none() {
            pinger
                .send_to(format!("ping {pings_sent}").as_bytes(), b.local_addr())
                .expect("send a ping");
            while !has_data(&b_view) {
                assert!(
                    Instant::now() < deadline,
                    "ping {pings_sent} never reached B"
                );
                thread::sleep(Duration::from_micros(100));
            }
            ping = Some((pings_sent, turn.get() + 1));
            pings_sent += 1;
        }
        let now_turn = turn.get() + 1;
        turn.set(now_turn);
        let began = Instant::now();
        let timer_due = began >= due_by.get();
        let (a_before, b_before, runs_before) =
            (a_count.get(), b_delivered.borrow().len(), runs.get());
        reactor.iterate(Duration::ZERO).expect("reactor turn");
        let a_left_over = has_data(&a_view);

        let a_now = a_count.get() - a_before;
        most_in_a_turn = most_in_a_turn.max(a_now);
        if a_now > 0 {
            a_waiting_since = None;
        } else if let Some(since) = a_waiting_since
            && now_turn > since + 2
        {
            fail(format!(
                "A had data queued at the end of turn {since} and was not served by turn {now_turn}"
            ));
            a_waiting_since = None;
        }
        if a_left_over && a_waiting_since.is_none() {
            a_waiting_since = Some(now_turn);
        }

        if let Some((seq, seen_before)) = ping {
            if b_delivered.borrow().len() > b_before {
                ping = None;
                if a_left_over {
                    delivered_loaded += 1;
                }
            } else if now_turn > seen_before {
                fail(format!(
                    "ping {seq}, queued before turn {seen_before} began, not delivered by \
                     turn {now_turn}"
                ));
                ping = None;
            }
        }

        read_echoes(&mut echoes);

        let ran = runs.get() > runs_before;
        if ran && a_left_over {
            runs_loaded += 1;
        }
        if timer_due && !ran {
            fail(format!(
                "turn {now_turn} began {:?} after the timer was surely due and did not run it \
                 (last run in turn {})",
                began - due_by.get(),
                fired_in.get()
            ));
        }
    }
    println!(
        "{} turns; A: {} datagrams delivered of {flooded} sent; B: {pings_sent} pings; \
         the timer: {} runs",
        turn.get(),
        a_count.get(),
        runs.get()
    );
    assert!(
        failed == 0,
        "{failed} turns went wrong, the first {}: {failures:#?}",
        failures.len()
    );
    assert!(
        most_in_a_turn <= BUDGET,
        "A delivered {most_in_a_turn} datagrams in one turn, its budget is {BUDGET}"
    );
    // Every ping delivered, in order, and every echo reaches the pinger.
    let expected: Vec<Vec<u8>> = (0..pings_sent)
        .map(|i| format!("ping {i}").into_bytes())
        .collect();
    assert_eq!(*b_delivered.borrow(), expected, "B's pings, in order");
    drive(&mut reactor, "every echo at the pinger", |_| {
        read_echoes(&mut echoes);
        echoes.len() as u64 >= pings_sent
    });
    assert_eq!(echoes, expected, "the echoes, in order");
    assert_eq!(
        reactor.port_stats(&a).expect("A open").datagrams_received,
        a_count.get()
    );
}

/// read_budget(16, ..) caps a turn at 16 datagrams; the rest is served on later turns unprompted.
#[test]
fn read_budget_caps_each_turn_and_left_over_data_is_served_without_new_sends() {
    const SENT: usize = 100;
    const BUDGET: usize = 16;
    let mut reactor = reactor();
    let count = Rc::new(Cell::new(0usize));
    let port = {
        let count = count.clone();
        reactor
            .listen_udp_with(
                loopback()
                    .read_budget(BUDGET, 1 << 20)
                    .recv_buffer_size(1 << 20),
                from_fn(move |_, _, _| count.set(count.get() + 1)),
            )
            .expect("listen")
    };
    let c = client();
    for i in 0..SENT {
        c.send_to(format!("{i}").as_bytes(), port.local_addr())
            .expect("send");
    }
    let mut per_turn = Vec::new();
    let start = Instant::now();
    while count.get() < SENT && per_turn.len() < 4 * SENT / BUDGET && start.elapsed() < DEADLINE {
        let before = count.get();
        reactor.iterate(ms(500)).expect("iterate");
        per_turn.push(count.get() - before);
    }
    assert_eq!(count.get(), SENT, "delivered per turn: {per_turn:?}");
    assert!(
        per_turn.iter().all(|&n| n <= BUDGET),
        "a turn went over the budget: {per_turn:?}"
    );
    assert!(
        per_turn.iter().all(|&n| n > 0),
        "a turn delivered nothing while data was left: {per_turn:?}"
    );
    assert_eq!(per_turn.len(), SENT.div_ceil(BUDGET), "{per_turn:?}");
}

// ----- faults ------------------------------------------------------------------------------

/// Asserts that exactly one log line names `addr` and `message`, at ERROR level.
#[track_caller]
fn assert_one_error(addr: SocketAddr, message: &str) {
    let lines: Vec<String> = logs_containing(&addr.to_string())
        .into_iter()
        .filter(|l| l.contains(message))
        .collect();
    assert!(
        lines.len() == 1 && lines[0].starts_with("ERROR"),
        "{lines:?}"
    );
}

/// With close_on_panic, a panic in datagram_received closes only its port: ERROR log with
/// its address, stop_protocol. (Without it the port goes on: tests/panics.rs.)
#[test]
fn panic_in_datagram_received_closes_only_that_port_with_close_on_panic() {
    init_logging();
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let (bad, log) = Scripted::new(&turns);
    let bad = bad.on_datagram(|_, _, _| panic!("lifecycle datagram boom"));
    let bad = reactor
        .listen_udp_with(loopback().close_on_panic(true), bad)
        .expect("listen");
    let (good, good_events) = Recorder::echoing();
    let good = listen_loopback(&mut reactor, good);

    let c = client();
    c.send_to(b"boom", bad.local_addr()).expect("send");
    c.send_to(b"after boom", bad.local_addr()).expect("send");
    drive(&mut reactor, "the panicking port to stop", |_| {
        stops(&log) > 0
    });
    drive_for(&mut reactor, ms(20));
    assert_eq!(
        payloads(&log),
        vec![b"boom".to_vec()],
        "delivered after the panic"
    );
    assert_eq!(stops(&log), 1);
    assert!(!reactor.is_listening(&bad));
    assert_one_error(bad.local_addr(), "lifecycle datagram boom");

    assert!(reactor.is_listening(&good));
    assert_echoes(&mut reactor, &good, b"still echoing");
    assert_eq!(util::count(&good_events, |e| *e == Event::Stop), 0);
    assert_eq!(reactor.port_count(), 1);
}

/// A panic in start_protocol makes listen return StartPanicked and leaves no port open.
#[test]
fn panic_in_start_protocol_is_start_panicked_and_leaves_no_port() {
    init_logging();
    let mut reactor = reactor();
    let (bystander, _) = Recorder::echoing();
    let bystander = listen_loopback(&mut reactor, bystander);
    let before = reactor.port_count();
    let timers_before = reactor.timer_count();
    let turns = Rc::new(Cell::new(0));
    let (bad, log) = Scripted::new(&turns);
    let bad = bad.on_start(|t| {
        t.call_every(ms(1), |_: &mut Scripted, _| panic!("timer of a dead port"))
            .expect("schedule");
        panic!("lifecycle start boom");
    });
    let err = reactor
        .listen_udp_with(loopback_alone(), bad)
        .expect_err("start panicked");
    let addr = match err {
        Error::StartPanicked { addr, message } => {
            assert!(message.contains("lifecycle start boom"), "{message}");
            addr
        }
        other => panic!("expected StartPanicked, got {other:?}"),
    };
    assert_eq!(reactor.port_count(), before);
    assert_one_error(addr, "lifecycle start boom");
    // The socket is closed: its address can be bound again.
    UdpSocket::bind(addr).expect("the failed port's address is free again");
    drive_for(&mut reactor, ms(20));
    assert!(
        payloads(&log).is_empty(),
        "a datagram reached a port whose start failed"
    );
    assert_eq!(
        reactor.timer_count(),
        timers_before,
        "the dead port's timer lingers"
    );
    assert_echoes(&mut reactor, &bystander, b"unaffected");
}

/// With close_on_panic, a panic in connection_refused closes only that port, logged at
/// ERROR with its address.
#[test]
fn panic_in_connection_refused_closes_only_that_port_with_close_on_panic() {
    init_logging();
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let (bad, log) = Scripted::new(&turns);
    let bad = bad.on_refused(|_| panic!("lifecycle refused boom"));
    let bad = reactor
        .listen_udp_with(loopback().close_on_panic(true), bad)
        .expect("listen");
    let (good, _) = Recorder::echoing();
    let good = listen_loopback(&mut reactor, good);
    let dead = dead_addr();
    reactor
        .with_port(&bad, |_, t| {
            t.connect(dead).expect("connect");
            t.send(b"to nobody").expect("first send");
        })
        .expect("port open");
    drive(&mut reactor, "the refused port to stop", |_| {
        stops(&log) > 0
    });
    let evs = events(&log);
    assert_eq!(
        evs,
        vec![Event::Start(bad.local_addr()), Event::Refused, Event::Stop]
    );
    assert!(!reactor.is_listening(&bad));
    assert_one_error(bad.local_addr(), "lifecycle refused boom");
    assert_echoes(&mut reactor, &good, b"unaffected");
    assert_eq!(reactor.port_count(), 1);
}

/// With close_on_panic, a panic in a port-scoped timer closes only that port, logged at
/// ERROR with its address.
#[test]
fn panic_in_a_port_timer_closes_only_that_port_with_close_on_panic() {
    init_logging();
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let (bad, log) = Scripted::new(&turns);
    let bad = reactor
        .listen_udp_with(loopback().close_on_panic(true), bad)
        .expect("listen");
    let (good, _) = Recorder::echoing();
    let good = listen_loopback(&mut reactor, good);
    let ticks = Rc::new(Cell::new(0u32));
    {
        let ticks = ticks.clone();
        reactor
            .call_every_on(&good, ms(5), move |_, _| ticks.set(ticks.get() + 1))
            .expect("good timer");
    }
    let call = reactor
        .call_every_on(&bad, ms(5), |_, _| panic!("lifecycle timer boom"))
        .expect("bad timer");
    drive(
        &mut reactor,
        "the port with the panicking timer to stop",
        |_| stops(&log) > 0,
    );
    let ticks_then = ticks.get();
    drive(&mut reactor, "the other port's timer to go on", |_| {
        ticks.get() >= ticks_then + 3
    });
    assert_eq!(
        events(&log),
        vec![Event::Start(bad.local_addr()), Event::Stop]
    );
    assert!(!reactor.is_pending(call));
    assert_one_error(bad.local_addr(), "lifecycle timer boom");
    assert_echoes(&mut reactor, &good, b"unaffected");
    assert_eq!(reactor.port_count(), 1);
}

/// A panic in stop_protocol is caught and logged; the port still closes and the reactor goes on.
#[test]
fn panic_in_stop_protocol_is_logged_and_the_port_still_closes() {
    init_logging();
    let mut reactor = reactor();
    let turns = Rc::new(Cell::new(0));
    let (bad, log) = Scripted::new(&turns);
    let bad = bad.on_stop(|_| panic!("lifecycle stop boom"));
    let bad = reactor
        .listen_udp_with(loopback_alone(), bad)
        .expect("listen");
    let addr = bad.local_addr();
    let (good, _) = Recorder::echoing();
    let good = listen_loopback(&mut reactor, good);
    assert!(reactor.stop_listening(&bad));
    drive(&mut reactor, "the port to close", |r| r.port_count() == 1);
    assert_eq!(stops(&log), 1);
    assert_one_error(addr, "lifecycle stop boom");
    UdpSocket::bind(addr).expect("the socket was closed");
    assert_echoes(&mut reactor, &good, b"unaffected");
}

/// `keep_after_close`: the protocol and its final counters are handed over once after the
/// port closes (by `stop_listening` here), what `stop_protocol` did included; a port not
/// kept leaves nothing, and an open one hands nothing over.
#[test]
fn a_kept_port_hands_over_its_protocol_and_final_counters_once() {
    #[derive(Default)]
    struct Tally {
        seen: usize,
        stopped: bool,
    }
    impl DatagramProtocol for Tally {
        fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {
            self.seen += 1;
        }
        fn stop_protocol(&mut self, _: &mut UdpTransport<'_>) {
            self.stopped = true;
        }
    }
    let mut reactor = util::reactor();
    let kept = reactor
        .listen_udp_with(util::loopback(), Tally::default())
        .expect("listen");
    let dropped = reactor
        .listen_udp_with(util::loopback(), Tally::default())
        .expect("listen");
    reactor.keep_after_close(&kept);
    assert!(reactor.take_closed(&kept).is_none(), "still open");
    let c = util::client();
    for _ in 0..3 {
        c.send_to(b"x", kept.local_addr()).expect("send");
    }
    util::drive(&mut reactor, "three datagrams", |r| {
        r.port_stats(&kept)
            .is_some_and(|s| s.datagrams_received == 3)
    });
    reactor.stop_listening(&kept);
    reactor.stop_listening(&dropped);
    util::drive(&mut reactor, "both closed", |r| r.port_count() == 0);
    let (tally, stats) = reactor.take_closed(&kept).expect("kept");
    assert_eq!((tally.seen, tally.stopped), (3, true));
    assert_eq!(stats.datagrams_received, 3);
    assert!(reactor.take_closed(&kept).is_none(), "handed over once");
    assert!(reactor.take_closed(&dropped).is_none(), "not kept");
}
