//! `twine::request`: requests with a timeout and retries, matched to their replies by key
//! and peer, each finished exactly once. In the test kit (virtual time, lossy links,
//! injected refusals) and over real sockets on 127.0.0.1.

mod util;

use std::cell::{Cell, RefCell};
use std::collections::HashMap;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use twine::request::{Outcome, RequestId, Requests, RetryPolicy};
use twine::testing::{IcmpError, Link, Simulation};
use twine::{DatagramProtocol, Error, ListenOptions, ListeningPort, UdpTransport, from_fn};

use util::{DEADLINE, ms};

/// What a [`Client`] recorded of one finished request.
#[derive(Debug)]
struct Done {
    key: u32,
    /// Virtual (or real) time since the client was made.
    at: Duration,
    outcome: Outcome,
}

/// A client whose requests are `KEY (4 bytes, big-endian) ++ body`, and whose replies
/// carry the key the same way. It sends the keys of `queue` (from its end), keeping up to
/// the table's limit outstanding, and records every completion.
struct Client {
    requests: Requests<Client, u32>,
    server: SocketAddr,
    start: Instant,
    queue: Vec<u32>,
    done: Vec<Done>,
    /// `reply` returned false.
    unmatched: u32,
    /// `len()` as `stop_protocol` saw it (shared: the client is gone once its port closed).
    stopped_with: Rc<Cell<Option<usize>>>,
    /// Completions run (shared, as `stopped_with`).
    completions: Rc<Cell<u32>>,
    /// Set while a hook of the client runs, to catch completions run inside it.
    in_hook: bool,
    /// A completion ran while `in_hook` was set.
    reentered: bool,
    /// Stop the port right after the next matched reply (in the same hook).
    stop_after_reply: bool,
    /// Ask for the reactor's stop right after the next matched reply (in the same hook).
    stop_reactor_after_reply: bool,
}

impl Client {
    fn new(server: SocketAddr, policy: RetryPolicy, limit: usize, start: Instant) -> Client {
        Client {
            requests: Requests::new(policy, limit, |me: &mut Client| &mut me.requests)
                .expect("a valid policy"),
            server,
            start,
            queue: Vec::new(),
            done: Vec::new(),
            unmatched: 0,
            stopped_with: Rc::default(),
            completions: Rc::default(),
            in_hook: false,
            reentered: false,
            stop_after_reply: false,
            stop_reactor_after_reply: false,
        }
    }

    fn ask(&mut self, t: &mut UdpTransport<'_>, key: u32) -> twine::Result<RequestId> {
        let server = self.server;
        self.ask_at(t, server, key)
    }

    fn ask_at(
        &mut self,
        t: &mut UdpTransport<'_>,
        to: SocketAddr,
        key: u32,
    ) -> twine::Result<RequestId> {
        let mut request = key.to_be_bytes().to_vec();
        request.extend_from_slice(b" query");
        self.requests
            .send(t, to, key, &request, move |me: &mut Client, t, outcome| {
                if me.in_hook {
                    me.reentered = true;
                }
                me.completions.set(me.completions.get() + 1);
                let at = t.now().duration_since(me.start);
                me.done.push(Done { key, at, outcome });
                me.fill(t);
            })
    }

    /// Sends queued keys while there is room.
    fn fill(&mut self, t: &mut UdpTransport<'_>) {
        while self.requests.len() < self.requests.limit() {
            let Some(key) = self.queue.pop() else { return };
            if let Err(e) = self.ask(t, key) {
                panic!("request {key}: {e}");
            }
        }
    }
}

fn key_of(data: &[u8]) -> Option<u32> {
    let bytes: [u8; 4] = data.get(..4)?.try_into().ok()?;
    Some(u32::from_be_bytes(bytes))
}

impl DatagramProtocol for Client {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.fill(t);
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        self.in_hook = true;
        if let Some(key) = key_of(data) {
            if self.requests.reply(t, key, data, from) {
                if self.stop_after_reply {
                    t.stop_listening();
                }
                if self.stop_reactor_after_reply {
                    t.reactor().stop();
                }
            } else {
                self.unmatched += 1;
            }
        }
        self.in_hook = false;
    }

    fn error_received(&mut self, t: &mut UdpTransport<'_>, error: &Error, addr: SocketAddr) {
        self.in_hook = true;
        self.requests.error(t, error, addr);
        self.in_hook = false;
    }

    fn connection_refused(&mut self, t: &mut UdpTransport<'_>) {
        if let Some(peer) = t.peer_addr() {
            self.requests.refused(t, peer);
        }
    }

    fn stop_protocol(&mut self, _t: &mut UdpTransport<'_>) {
        self.stopped_with.set(Some(self.requests.len()));
    }
}

const CLIENT: &str = "127.0.0.1:5000";
const SERVER: &str = "127.0.0.1:53";

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("an address")
}

/// A simulation with a client on [`CLIENT`] for [`SERVER`], sending `keys` (in order).
fn client_in(
    sim: &mut Simulation,
    policy: RetryPolicy,
    limit: usize,
    keys: &[u32],
) -> ListeningPort<Client> {
    let mut client = Client::new(addr(SERVER), policy, limit, sim.now());
    client.queue = keys.iter().rev().copied().collect();
    sim.listen_udp_with(ListenOptions::from(addr(CLIENT)), client)
        .expect("listen")
}

/// An echo server on [`SERVER`]: the reply is the request.
fn echo_server(sim: &mut Simulation) {
    sim.listen_udp_with(
        ListenOptions::from(addr(SERVER)),
        from_fn(|t, data, from| {
            let _ = t.write(data, from);
        }),
    )
    .expect("listen server");
}

/// The times of the client's sends of `key`.
fn sends_of(sim: &Simulation, key: u32) -> Vec<Duration> {
    sim.sent()
        .iter()
        .filter(|s| s.from == addr(CLIENT) && key_of(&s.data) == Some(key))
        .map(|s| s.at)
        .collect()
}

fn done(sim: &mut Simulation, port: &ListeningPort<Client>) -> Vec<Done> {
    sim.with_port(port, |c, _| std::mem::take(&mut c.done))
        .expect("client port open")
}

fn reply_of(key: u32, body: &[u8]) -> Vec<u8> {
    let mut r = key.to_be_bytes().to_vec();
    r.extend_from_slice(body);
    r
}

// ----- the policy, in virtual time -----------------------------------------------------

/// Nobody answers: the tries go out at 0, 100, 300 and 700 ms (100 ms doubling, at most
/// 400 ms), and the request times out at 1100 ms exactly, after 4 tries, and nothing
/// more is sent.
#[test]
fn tries_and_timeout_follow_the_policy_exactly_in_virtual_time() {
    let mut sim = Simulation::new(1).expect("simulation");
    let policy = RetryPolicy::new(4, ms(100)).backoff(2).max_timeout(ms(400));
    assert_eq!(policy.total(), ms(1100));
    let port = client_in(&mut sim, policy, 4, &[7]);
    sim.advance(Duration::from_secs(10)).expect("advance");
    assert_eq!(sends_of(&sim, 7), [ms(0), ms(100), ms(300), ms(700)]);
    assert_eq!(sim.sent().len(), 4);
    let done = done(&mut sim, &port);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!(done[0].at, ms(1100));
    assert!(matches!(done[0].outcome, Outcome::TimedOut { tries: 4 }));
    assert_eq!(sim.with_port(&port, |c, _| c.requests.len()).ok(), Some(0));
}

/// Many requests over a link that loses 30% of the datagrams each way, duplicates 10% and
/// delays them 5-25 ms, to an echo server: every request finishes exactly once; each was
/// sent exactly on the policy's schedule, as many times as its outcome says and never
/// after it finished; timeouts come exactly at the policy's total; the duplicates and
/// the replies to earlier tries are ignored.
#[test]
fn lossy_link_every_request_finishes_exactly_once_on_the_policys_schedule() {
    const N: u32 = 400;
    let mut sim = Simulation::new(0x5eed).expect("simulation");
    let link = Link::with_delay(ms(5))
        .jitter(ms(20))
        .loss(0.3)
        .duplicate(0.1);
    sim.set_link(addr(CLIENT), addr(SERVER), link);
    sim.set_link(addr(SERVER), addr(CLIENT), link);
    echo_server(&mut sim);
    let policy = RetryPolicy::new(4, ms(100)).backoff(2).max_timeout(ms(300));
    let timeouts: Vec<Duration> = policy.timeouts().collect();
    let keys: Vec<u32> = (1..=N).collect();
    let port = client_in(&mut sim, policy, 16, &keys);
    let finished = sim
        .run_until(Duration::from_secs(600), |r| {
            r.with_port(&port, |c, _| {
                c.done.len() == N as usize && c.requests.is_empty()
            })
            .unwrap_or(true)
        })
        .expect("run");
    assert!(finished, "not every request finished");
    sim.advance(Duration::from_secs(5)).expect("advance");
    let unmatched = sim.with_port(&port, |c, _| c.unmatched).expect("open");
    let done = done(&mut sim, &port);

    let mut seen: HashMap<u32, &Done> = HashMap::new();
    for d in &done {
        assert!(seen.insert(d.key, d).is_none(), "{} finished twice", d.key);
    }
    assert_eq!(seen.len(), N as usize);
    let (mut replies, mut timed_out, mut tries_total) = (0, 0, 0);
    let mut by_tries = [0u32; 5];
    for key in 1..=N {
        let d = seen[&key];
        let sends = sends_of(&sim, key);
        let t0 = sends[0];
        let schedule: Vec<Duration> = timeouts
            .iter()
            .scan(t0, |at, timeout| {
                let this = *at;
                *at += *timeout;
                Some(this)
            })
            .collect();
        let deadline = t0 + policy.total();
        let tries = match d.outcome {
            Outcome::Reply { tries, ref data } => {
                assert_eq!(data, &reply_of(key, b" query"));
                replies += 1;
                tries
            }
            Outcome::TimedOut { tries } => {
                assert_eq!(d.at, deadline, "request {key} timed out at {:?}", d.at);
                timed_out += 1;
                tries
            }
            ref other => panic!("request {key}: {other:?}"),
        };
        assert_eq!(
            sends.len(),
            tries as usize,
            "request {key}: sends {sends:?}"
        );
        assert_eq!(sends[..], schedule[..sends.len()], "request {key}");
        // Finished before the next try was due (or at the last try's deadline).
        let next_due = t0 + timeouts[..tries as usize].iter().sum::<Duration>();
        assert!(
            d.at <= next_due && d.at >= *sends.last().expect("sent"),
            "request {key} finished at {:?}, sends {sends:?}",
            d.at
        );
        tries_total += tries;
        by_tries[tries as usize] += 1;
    }
    assert_eq!(replies + timed_out, N);
    assert!(
        timed_out > 0 && replies > 0,
        "{replies} replies, {timed_out} timeouts"
    );
    assert!(sim.lost() > 0 && sim.duplicated() > 0);
    assert!(unmatched > 0, "no duplicate or late reply was met");
    eprintln!(
        "{N} requests, 30% loss each way, 10% duplicates: {replies} replied, {timed_out} timed \
         out, {tries_total} tries ({by_tries:?} by tries used), {} datagrams lost, {} \
         duplicated, {unmatched} replies ignored",
        sim.lost(),
        sim.duplicated()
    );
}

// ----- ending early ---------------------------------------------------------------------

/// A refusal for the server (ICMP port unreachable, through `error_received`) finishes
/// its requests at once as `Refused`, and no more tries are sent; another address's
/// refusal does nothing.
#[test]
fn refusal_through_error_received_ends_the_request_early() {
    let mut sim = Simulation::new(1).expect("simulation");
    let port = client_in(&mut sim, RetryPolicy::new(3, ms(100)), 4, &[1, 2]);
    sim.advance(ms(150)).expect("advance");
    sim.inject_refusal(addr(CLIENT), addr("127.0.0.1:54"));
    sim.advance(ms(10)).expect("advance");
    assert_eq!(sim.with_port(&port, |c, _| c.requests.len()).ok(), Some(2));
    sim.inject_refusal(addr(CLIENT), addr(SERVER));
    sim.advance(Duration::from_secs(5)).expect("advance");
    let done = done(&mut sim, &port);
    let outcomes: Vec<(u32, Duration, bool)> = done
        .iter()
        .map(|d| (d.key, d.at, matches!(d.outcome, Outcome::Refused)))
        .collect();
    assert_eq!(outcomes, [(1, ms(160), true), (2, ms(160), true)]);
    // Two tries each (0 and 100 ms), none after the refusal.
    assert_eq!(sends_of(&sim, 1), [ms(0), ms(100)]);
    assert_eq!(sends_of(&sim, 2), [ms(0), ms(100)]);
}

/// A protocol whose port is connected to the server: its one request's outcome.
struct Connected {
    requests: Requests<Connected, u32>,
    server: SocketAddr,
    outcome: Option<(Duration, Outcome)>,
    start: Instant,
}

impl DatagramProtocol for Connected {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        t.connect(self.server).expect("connect");
        let server = self.server;
        self.requests
            .send(
                t,
                server,
                1,
                b"\0\0\0\x01",
                |me: &mut Connected, t, outcome| {
                    me.outcome = Some((t.now().duration_since(me.start), outcome));
                },
            )
            .expect("send");
    }
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, d: &[u8], from: SocketAddr) {
        if let Some(key) = key_of(d) {
            self.requests.reply(t, key, d, from);
        }
    }
    fn connection_refused(&mut self, t: &mut UdpTransport<'_>) {
        let peer = t.peer_addr().expect("connected");
        assert_eq!(self.requests.refused(t, peer), 1);
    }
}

/// On a connected port, `connection_refused` handed on to `refused` ends the request.
#[test]
fn refusal_on_a_connected_port_ends_the_request_early() {
    let mut sim = Simulation::new(1).expect("simulation");
    let client = Connected {
        requests: Requests::new(RetryPolicy::new(3, ms(100)), 4, |me: &mut Connected| {
            &mut me.requests
        })
        .expect("table"),
        server: addr(SERVER),
        outcome: None,
        start: sim.now(),
    };
    let port = sim
        .listen_udp_with(ListenOptions::from(addr(CLIENT)), client)
        .expect("listen");
    sim.advance(ms(50)).expect("advance");
    sim.inject_refusal(addr(CLIENT), addr(SERVER));
    sim.advance(Duration::from_secs(5)).expect("advance");
    let outcome = sim.with_port(&port, |c, _| c.outcome.take()).expect("open");
    assert!(
        matches!(outcome, Some((at, Outcome::Refused)) if at == ms(50)),
        "{outcome:?}"
    );
    assert_eq!(sim.sent().len(), 1);
}

/// Another ICMP error about the server (host unreachable, which any router may send, or
/// anyone forge) ends nothing: the tries go on to the last, and the request times out.
#[test]
fn other_icmp_errors_end_nothing_and_the_tries_go_on() {
    let mut sim = Simulation::new(1).expect("simulation");
    let port = client_in(&mut sim, RetryPolicy::new(3, ms(100)), 4, &[1]);
    sim.advance(ms(20)).expect("advance");
    sim.inject_icmp_error(addr(CLIENT), addr(SERVER), IcmpError::HostUnreachable);
    sim.advance(ms(20)).expect("advance");
    assert!(
        done(&mut sim, &port).is_empty(),
        "not ended by host unreachable"
    );
    sim.advance(Duration::from_secs(5)).expect("advance");
    let done = done(&mut sim, &port);
    assert_eq!(done.len(), 1);
    assert!(
        matches!(done[0].outcome, Outcome::TimedOut { tries: 3 }),
        "{:?}",
        done[0].outcome
    );
    assert_eq!(sim.sent().len(), 3);
}

// ----- cancel, bound, keys ---------------------------------------------------------------

/// A cancelled request finishes once, as `Cancelled`, on the next turn; no more tries go
/// out; cancelling again, and its reply, do nothing.
#[test]
fn cancel_finishes_once_as_cancelled_and_stops_the_tries() {
    let mut sim = Simulation::new(1).expect("simulation");
    let port = client_in(&mut sim, RetryPolicy::new(3, ms(100)), 4, &[]);
    let id = sim
        .with_port(&port, |c, t| c.ask(t, 5))
        .expect("open")
        .expect("send");
    sim.advance(ms(150)).expect("advance");
    let (first, second, pending) = sim
        .with_port(&port, |c, t| {
            (
                c.requests.cancel(t, id),
                c.requests.cancel(t, id),
                c.requests.is_pending(id),
            )
        })
        .expect("open");
    assert_eq!((first, second, pending), (true, false, false));
    sim.inject(addr(CLIENT), addr(SERVER), &reply_of(5, b" late"));
    sim.advance(Duration::from_secs(5)).expect("advance");
    let done = done(&mut sim, &port);
    assert_eq!(done.len(), 1, "{done:?}");
    assert!(matches!(done[0].outcome, Outcome::Cancelled));
    assert_eq!(done[0].at, ms(150));
    assert_eq!(sends_of(&sim, 5), [ms(0), ms(100)]);
    assert_eq!(sim.with_port(&port, |c, _| c.unmatched).ok(), Some(1));
}

/// `cancel` called from inside a completion. Of the request that just finished: false (it
/// had finished). Of one still outstanding: true, and it finishes as `Cancelled`, its
/// completion running on a later turn (after those already put off), with no more tries;
/// a second cancel of it is false. Of one that finished in the same turn but whose
/// completion has not run yet: false, and it keeps its reply. Nothing panics, and each
/// request's completion runs exactly once.
#[test]
fn cancel_from_inside_a_completion_finishes_each_request_exactly_once() {
    let mut sim = Simulation::new(1).expect("simulation");
    let port = client_in(&mut sim, RetryPolicy::new(3, ms(100)), 8, &[]);
    let mut ids = HashMap::new();
    for key in [2, 3, 4] {
        let id = sim
            .with_port(&port, |c, t| c.ask(t, key))
            .expect("open")
            .expect("send");
        ids.insert(key, id);
    }
    let cancels: Rc<RefCell<Vec<(&'static str, bool)>>> = Rc::default();
    let own: Rc<Cell<Option<RequestId>>> = Rc::default();
    let (pending, replied) = (ids[&2], ids[&3]);
    let (cancels_in, own_in) = (Rc::clone(&cancels), Rc::clone(&own));
    let id = sim
        .with_port(&port, |c, t| {
            c.requests.send(
                t,
                addr(SERVER),
                1,
                &reply_of(1, b" query"),
                move |me: &mut Client, t, outcome| {
                    me.completions.set(me.completions.get() + 1);
                    let at = t.now().duration_since(me.start);
                    me.done.push(Done {
                        key: 1,
                        at,
                        outcome,
                    });
                    let own = own_in.get().expect("the request's id");
                    let mut cancels = cancels_in.borrow_mut();
                    cancels.push(("itself", me.requests.cancel(t, own)));
                    cancels.push(("outstanding", me.requests.cancel(t, pending)));
                    cancels.push(("outstanding, again", me.requests.cancel(t, pending)));
                    cancels.push(("replied, not yet run", me.requests.cancel(t, replied)));
                },
            )
        })
        .expect("open")
        .expect("send");
    own.set(Some(id));
    sim.advance(ms(50)).expect("advance");
    // Replies to 1 and then 3 in one turn: both completions are put off, 1's first.
    sim.inject(addr(CLIENT), addr(SERVER), &reply_of(1, b" one"));
    sim.inject(addr(CLIENT), addr(SERVER), &reply_of(3, b" three"));
    sim.advance(Duration::from_secs(5)).expect("advance");

    assert_eq!(
        *cancels.borrow(),
        [
            ("itself", false),
            ("outstanding", true),
            ("outstanding, again", false),
            ("replied, not yet run", false),
        ]
    );
    let completions = sim
        .with_port(&port, |c, _| c.completions.get())
        .expect("open");
    let done = done(&mut sim, &port);
    let got: Vec<(u32, Duration, String)> = done
        .iter()
        .map(|d| (d.key, d.at, d.outcome.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            (1, ms(50), "8-byte reply".to_owned()),
            (3, ms(50), "10-byte reply".to_owned()),
            (2, ms(50), "cancelled".to_owned()),
            (4, ms(300), "timed out after 3 tries".to_owned()),
        ]
    );
    assert_eq!(completions, 4, "one completion per request");
    assert_eq!(sends_of(&sim, 2), [ms(0)], "no try after the cancel");
    assert_eq!(sends_of(&sim, 4), [ms(0), ms(100), ms(200)]);
    assert!(sim.is_listening(&port));
    assert_eq!(sim.port_stats(&port).map(|s| s.panics), Some(0));
    let after = sim
        .with_port(&port, |c, t| {
            (
                c.requests.is_empty(),
                c.requests.cancel(t, id),
                c.requests.cancel(t, pending),
            )
        })
        .expect("open");
    assert_eq!(after, (true, false, false));
}

/// Past the limit `send` says `TooManyRequests` and sends nothing; a finished request
/// frees its slot.
#[test]
fn limit_refuses_past_the_bound_until_a_request_finishes() {
    let mut sim = Simulation::new(1).expect("simulation");
    let port = client_in(&mut sim, RetryPolicy::new(2, ms(100)), 2, &[1, 2]);
    let third = sim.with_port(&port, |c, t| c.ask(t, 3)).expect("open");
    assert!(
        matches!(third, Err(Error::TooManyRequests { limit: 2 })),
        "{third:?}"
    );
    assert_eq!(sim.sent().len(), 2);
    sim.inject(addr(CLIENT), addr(SERVER), &reply_of(1, b""));
    sim.advance(ms(1)).expect("advance");
    let third = sim.with_port(&port, |c, t| c.ask(t, 3)).expect("open");
    assert!(third.is_ok(), "{third:?}");
    assert_eq!(sim.with_port(&port, |c, _| c.requests.len()).ok(), Some(2));
}

/// A second request with the key of an outstanding one to the same peer is refused with
/// `DuplicateRequest`; the same key to another peer is not; once finished, the key may
/// be used again.
#[test]
fn same_key_to_the_same_peer_is_refused_until_it_finishes() {
    let mut sim = Simulation::new(1).expect("simulation");
    let port = client_in(&mut sim, RetryPolicy::new(2, ms(100)), 8, &[1]);
    let again = sim.with_port(&port, |c, t| c.ask(t, 1)).expect("open");
    assert!(
        matches!(again, Err(Error::DuplicateRequest { peer }) if peer == addr(SERVER)),
        "{again:?}"
    );
    let elsewhere = sim
        .with_port(&port, |c, t| c.ask_at(t, addr("127.0.0.2:53"), 1))
        .expect("open");
    assert!(elsewhere.is_ok(), "{elsewhere:?}");
    // The other peer's reply with key 1 finishes its own request only.
    sim.inject(addr(CLIENT), addr("127.0.0.2:53"), &reply_of(1, b" two"));
    sim.advance(ms(1)).expect("advance");
    assert_eq!(sim.with_port(&port, |c, _| c.requests.len()).ok(), Some(1));
    sim.advance(Duration::from_secs(1)).expect("advance");
    let again = sim.with_port(&port, |c, t| c.ask(t, 1)).expect("open");
    assert!(again.is_ok(), "{again:?}");
}

/// A datagram with the right key from another address (another IP, or another port of
/// the server's IP) never finishes the request: it times out as if nothing came.
#[test]
fn reply_from_another_address_is_ignored() {
    let mut sim = Simulation::new(1).expect("simulation");
    let port = client_in(&mut sim, RetryPolicy::new(2, ms(100)), 4, &[3]);
    for from in ["127.0.0.2:53", "127.0.0.1:54", "[::1]:53"] {
        sim.inject(addr(CLIENT), addr(from), &reply_of(3, b" forged"));
    }
    sim.advance(Duration::from_secs(1)).expect("advance");
    let done = done(&mut sim, &port);
    assert_eq!(done.len(), 1);
    assert!(matches!(done[0].outcome, Outcome::TimedOut { tries: 2 }));
    assert_eq!(sim.with_port(&port, |c, _| c.unmatched).ok(), Some(3));
}

/// The first reply finishes the request; a duplicate, a reply to an earlier try, a
/// refusal after it and a reply after the timeout change nothing.
#[test]
fn duplicate_and_late_replies_and_refusals_after_the_reply_are_ignored() {
    let mut sim = Simulation::new(1).expect("simulation");
    let port = client_in(&mut sim, RetryPolicy::new(3, ms(100)), 4, &[1, 2]);
    sim.advance(ms(150)).expect("advance");
    sim.inject(addr(CLIENT), addr(SERVER), &reply_of(1, b" first"));
    sim.inject(addr(CLIENT), addr(SERVER), &reply_of(1, b" second"));
    sim.advance(ms(10)).expect("advance");
    sim.inject(addr(CLIENT), addr(SERVER), &reply_of(1, b" third"));
    // Request 2 has only one request outstanding now: this refusal ends it, not 1 again.
    sim.inject_refusal(addr(CLIENT), addr(SERVER));
    sim.advance(Duration::from_secs(1)).expect("advance");
    sim.inject(addr(CLIENT), addr(SERVER), &reply_of(2, b" after"));
    sim.advance(ms(10)).expect("advance");
    let done = done(&mut sim, &port);
    let got: Vec<(u32, String)> = done
        .iter()
        .map(|d| (d.key, d.outcome.to_string()))
        .collect();
    assert_eq!(
        got,
        [
            (1, "10-byte reply after 2 tries".to_owned()),
            (2, "refused".to_owned())
        ]
    );
    assert_eq!(done[0].outcome.reply(), Some(&reply_of(1, b" first")[..]));
    assert_eq!(sim.with_port(&port, |c, _| c.unmatched).ok(), Some(3));
}

/// `on_done` never runs inside the call that finished the request (`reply`, `error`):
/// it runs on a later turn, at the same virtual instant, and may send the next request.
#[test]
fn completions_run_after_the_hook_that_finished_the_request() {
    let mut sim = Simulation::new(1).expect("simulation");
    echo_server(&mut sim);
    let port = client_in(&mut sim, RetryPolicy::new(2, ms(100)), 1, &[1, 2, 3]);
    sim.advance(ms(10)).expect("advance");
    let (reentered, done) = sim
        .with_port(&port, |c, _| (c.reentered, c.done.len()))
        .expect("open");
    assert!(!reentered);
    assert_eq!(done, 3);
    // All three answered at once (a zero-delay link), one after the other.
    for d in self::done(&mut sim, &port) {
        assert_eq!(d.at, Duration::ZERO);
        assert!(d.outcome.reply().is_some());
    }
}

/// A first write that fails (too long for UDP) is returned by `send`: nothing is
/// outstanding and no timer is left.
#[test]
fn a_first_write_error_is_returned_and_nothing_is_outstanding() {
    let mut sim = Simulation::new(1).expect("simulation");
    let port = client_in(&mut sim, RetryPolicy::new(2, ms(100)), 4, &[]);
    let timers = sim.timer_count();
    let sent = sim
        .with_port(&port, |c, t| {
            c.requests
                .send(t, addr(SERVER), 1, &[0; 70_000], |_: &mut Client, _, _| {
                    panic!("never called")
                })
        })
        .expect("open");
    assert!(
        matches!(sent, Err(Error::MessageTooLong { .. })),
        "{sent:?}"
    );
    assert_eq!(sim.timer_count(), timers);
    assert_eq!(sim.with_port(&port, |c, _| c.requests.len()).ok(), Some(0));
    sim.advance(Duration::from_secs(1)).expect("advance");
}

/// Bad policies and limits are typed errors, and a hostname is refused as an address.
#[test]
fn bad_policy_limit_and_address_are_typed_errors() {
    fn access(me: &mut Client) -> &mut Requests<Client, u32> {
        &mut me.requests
    }
    for policy in [
        RetryPolicy::new(0, ms(100)),
        RetryPolicy::new(1, Duration::ZERO),
        RetryPolicy::new(1, ms(100)).backoff(0),
        RetryPolicy::new(1, ms(100)).max_timeout(Duration::ZERO),
    ] {
        let table = Requests::new(policy, 4, access);
        assert!(
            matches!(table, Err(Error::InvalidOption { .. })),
            "{policy:?}: {table:?}"
        );
    }
    let table = Requests::new(RetryPolicy::new(1, ms(1)), 0, access);
    assert!(
        matches!(table, Err(Error::InvalidOption { .. })),
        "{table:?}"
    );
    let mut sim = Simulation::new(1).expect("simulation");
    let port = client_in(&mut sim, RetryPolicy::new(2, ms(100)), 4, &[]);
    let sent = sim
        .with_port(&port, |c, t| {
            c.requests
                .send(t, "localhost:53", 1, b"x", |_: &mut Client, _, _| {})
        })
        .expect("open");
    assert!(
        matches!(sent, Err(Error::InvalidAddress { .. })),
        "{sent:?}"
    );
}

// ----- the port's stop ------------------------------------------------------------------

/// Counts its drops: a completion's closure owns one.
struct DropCount(Rc<Cell<u32>>);

impl Drop for DropCount {
    fn drop(&mut self) {
        self.0.set(self.0.get() + 1);
    }
}

/// Stopping the port abandons the outstanding requests: no more tries, and their
/// `on_done` closures are dropped, never called; `stop_protocol` still sees them in
/// `len()`.
#[test]
fn stopping_the_port_abandons_outstanding_requests_uncalled() {
    let mut sim = Simulation::new(1).expect("simulation");
    let port = client_in(&mut sim, RetryPolicy::new(3, ms(100)), 4, &[]);
    let (stopped_with, completions) = sim
        .with_port(&port, |c, _| {
            (Rc::clone(&c.stopped_with), Rc::clone(&c.completions))
        })
        .expect("open");
    let drops = Rc::new(Cell::new(0));
    for key in 1..=3 {
        let guard = DropCount(Rc::clone(&drops));
        sim.with_port(&port, |c, t| {
            c.requests.send(
                t,
                addr(SERVER),
                key,
                &key.to_be_bytes(),
                move |me: &mut Client, _, _| {
                    let _guard = &guard;
                    me.completions.set(me.completions.get() + 1);
                },
            )
        })
        .expect("open")
        .expect("send");
    }
    sim.advance(ms(50)).expect("advance");
    sim.with_port(&port, |_, t| t.stop_listening())
        .expect("open");
    sim.advance(Duration::from_secs(5)).expect("advance");
    assert!(!sim.is_listening(&port));
    assert_eq!(stopped_with.get(), Some(3));
    assert_eq!(completions.get(), 0);
    assert_eq!(sim.sent().len(), 3, "no more tries after the stop");
    assert_eq!(drops.get(), 3, "the closures are dropped with the protocol");
}

/// A request that finished in the hook that asked for the stop is abandoned too: its
/// completion would run on a later turn, and no port timer runs once the stop is asked
/// for. `stop_protocol` sees only the requests still outstanding.
#[test]
fn a_request_finished_as_the_port_stops_is_abandoned() {
    let mut sim = Simulation::new(1).expect("simulation");
    let mut client = Client::new(addr(SERVER), RetryPolicy::new(3, ms(100)), 4, sim.now());
    client.queue = vec![3, 2, 1];
    client.stop_after_reply = true;
    let (stopped_with, completions) = (
        Rc::clone(&client.stopped_with),
        Rc::clone(&client.completions),
    );
    let port = sim
        .listen_udp_with(ListenOptions::from(addr(CLIENT)), client)
        .expect("listen");
    sim.inject(addr(CLIENT), addr(SERVER), &reply_of(1, b""));
    sim.advance(Duration::from_secs(5)).expect("advance");
    assert!(!sim.is_listening(&port));
    assert_eq!(stopped_with.get(), Some(2));
    assert_eq!(completions.get(), 0);
    assert_eq!(sim.sent().len(), 3);
}

/// What [`send_counted`] records of each completion it ran: the key, the address of the
/// port whose timer ran it, and the outcome.
type Calls = Rc<RefCell<Vec<(u32, SocketAddr, String)>>>;

/// Sends `key` (its 4 bytes) to `to` from `requests` through `t`, with a completion that
/// owns a [`DropCount`] on `drops`, counts itself in the protocol's `completions` and
/// appends to `calls`.
fn send_counted(
    requests: &mut Requests<Client, u32>,
    t: &mut UdpTransport<'_>,
    to: SocketAddr,
    key: u32,
    drops: &Rc<Cell<u32>>,
    calls: &Calls,
) -> twine::Result<RequestId> {
    let guard = DropCount(Rc::clone(drops));
    let calls = Rc::clone(calls);
    requests.send(
        t,
        to,
        key,
        &key.to_be_bytes(),
        move |me: &mut Client, t, outcome| {
            let _guard = &guard;
            me.completions.set(me.completions.get() + 1);
            calls
                .borrow_mut()
                .push((key, t.local_addr(), outcome.to_string()));
        },
    )
}

/// `Reactor::stop` asked from the hook that matched a reply. The port timers due in that
/// turn still run: the completion of a request cancelled before the turn is called. Then
/// the reactor closes the port, and the rest is abandoned: the reply's completion (put
/// off to the next turn) and the requests still outstanding are never called, their
/// closures are dropped, no more tries go out, and `stop_protocol` sees the outstanding
/// ones in `len()`.
#[test]
fn reactor_stop_runs_the_completions_due_in_its_turn_and_abandons_the_rest() {
    let mut sim = Simulation::new(1).expect("simulation");
    let mut client = Client::new(addr(SERVER), RetryPolicy::new(3, ms(100)), 8, sim.now());
    client.stop_reactor_after_reply = true;
    let (stopped_with, completions) = (
        Rc::clone(&client.stopped_with),
        Rc::clone(&client.completions),
    );
    let port = sim
        .listen_udp_with(ListenOptions::from(addr(CLIENT)), client)
        .expect("listen");
    let drops = Rc::new(Cell::new(0));
    let calls = Calls::default();
    let mut ids = HashMap::new();
    for key in 1..=4 {
        let id = sim
            .with_port(&port, |c, t| {
                send_counted(&mut c.requests, t, addr(SERVER), key, &drops, &calls)
            })
            .expect("open")
            .expect("send");
        ids.insert(key, id);
    }
    sim.advance(ms(150)).expect("advance");
    // Cancelled between turns: its completion is due in the next turn, the stop's.
    let cancelled = sim
        .with_port(&port, |c, t| c.requests.cancel(t, ids[&4]))
        .expect("open");
    assert!(cancelled);
    sim.inject(addr(CLIENT), addr(SERVER), &reply_of(2, b""));
    sim.advance(Duration::from_secs(5)).expect("advance");

    assert!(!sim.is_listening(&port));
    assert_eq!(sim.port_count(), 0, "the reactor's stop closed every port");
    assert_eq!(
        *calls.borrow(),
        [(4, addr(CLIENT), "cancelled".to_owned())],
        "only the completion due in the stop's turn ran"
    );
    assert_eq!(completions.get(), 1);
    assert_eq!(
        stopped_with.get(),
        Some(2),
        "requests 1 and 3 were outstanding"
    );
    assert_eq!(drops.get(), 4, "every closure is dropped, called or not");
    // Two tries each (0 and 100 ms); the next were due at 200 ms, after the stop.
    for key in 1..=4 {
        assert_eq!(sends_of(&sim, key), [ms(0), ms(100)], "request {key}");
    }
    assert_eq!(sim.sent().len(), 8);
}

// ----- real sockets ---------------------------------------------------------------------

/// A server that ignores the first `drop` copies of each request it gets, then echoes.
struct Forgetful {
    drop: u32,
    seen: HashMap<Vec<u8>, u32>,
}

impl DatagramProtocol for Forgetful {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        let seen = self.seen.entry(data.to_vec()).or_insert(0);
        *seen += 1;
        if *seen > self.drop {
            let _ = t.write(data, from);
        }
    }
}

/// Over real sockets on 127.0.0.1: a server that ignores the first two tries of each
/// request answers the third (or a later one, on a slow machine), and each request
/// finishes once with that reply; a request to an address where nothing listens is
/// refused (Linux reports the ICMP error with its destination).
#[test]
fn over_real_sockets_requests_get_their_reply_after_ignored_tries() {
    let mut reactor = util::reactor();
    let server = reactor
        .listen_udp_with(
            util::loopback(),
            Forgetful {
                drop: 2,
                seen: HashMap::new(),
            },
        )
        .expect("listen server");
    let policy = RetryPolicy::new(6, ms(150));
    let mut client = Client::new(server.local_addr(), policy, 8, reactor.now());
    client.queue = vec![4, 3, 2, 1];
    let port = reactor
        .listen_udp_with(util::loopback(), client)
        .expect("listen client");
    let finished = reactor
        .run_until(DEADLINE * 4, |r| {
            r.with_port(&port, |c, _| c.done.len() == 4).unwrap_or(true)
        })
        .expect("run");
    assert!(finished, "the requests did not finish in time");
    let mut done = reactor
        .with_port(&port, |c, _| std::mem::take(&mut c.done))
        .expect("open");
    done.sort_by_key(|d| d.key);
    for (d, key) in done.iter().zip(1..) {
        assert_eq!(d.key, key);
        match &d.outcome {
            Outcome::Reply { data, tries } => {
                assert_eq!(data, &reply_of(key, b" query"));
                assert!(*tries >= 3, "request {key} answered after {tries} tries");
            }
            other => panic!("request {key}: {other:?}"),
        }
    }
    if cfg!(target_os = "linux") {
        let dead = util::dead_addr();
        reactor
            .with_port(&port, |c, t| c.ask_at(t, dead, 99))
            .expect("open")
            .expect("send");
        let finished = reactor
            .run_until(DEADLINE, |r| {
                r.with_port(&port, |c, _| !c.done.is_empty())
                    .unwrap_or(true)
            })
            .expect("run");
        assert!(finished, "no refusal in time");
        let done = reactor
            .with_port(&port, |c, _| std::mem::take(&mut c.done))
            .expect("open");
        assert!(
            matches!(
                done[..],
                [Done {
                    key: 99,
                    outcome: Outcome::Refused,
                    ..
                }]
            ),
            "{done:?}"
        );
    }
}

/// A table replaced inside its protocol leaves its timers behind; when they fire they
/// reach the new table, and must not touch its requests (ids are never reused).
#[test]
fn a_replaced_tables_timers_do_not_reach_the_new_tables_requests() {
    let mut sim = Simulation::new(1).expect("simulation");
    let policy = RetryPolicy::new(3, ms(100));
    let port = client_in(&mut sim, policy, 4, &[1]);
    sim.advance(ms(50)).expect("advance");
    sim.with_port(&port, |c, t| {
        c.requests = Requests::new(policy, 4, |me: &mut Client| &mut me.requests).expect("table");
        c.ask(t, 2)
    })
    .expect("open")
    .expect("send");
    sim.advance(Duration::from_secs(5)).expect("advance");
    assert_eq!(sends_of(&sim, 1), [ms(0)]);
    assert_eq!(sends_of(&sim, 2), [ms(50), ms(150), ms(250)]);
    let done = done(&mut sim, &port);
    assert_eq!(done.len(), 1, "{done:?}");
    assert_eq!((done[0].key, done[0].at), (2, ms(350)));
}

// ----- one table, two ports ------------------------------------------------------------

/// The times and sources of every send of `key`, from any port.
fn sends_from(sim: &Simulation, key: u32) -> Vec<(Duration, SocketAddr)> {
    sim.sent()
        .iter()
        .filter(|s| key_of(&s.data) == Some(key))
        .map(|s| (s.at, s.from))
        .collect()
}

/// A table serves one port: while its port is open, a send through another port's
/// transport (of the same protocol type) is refused with `WrongTransport` and sends
/// nothing, and a reply, refusal or cancel through it matches nothing. The table's own
/// requests go on, on their own port and schedule, and each finishes exactly once.
#[test]
fn a_table_refuses_another_ports_transport_while_its_port_is_open() {
    let mut sim = Simulation::new(1).expect("simulation");
    echo_server(&mut sim);
    let policy = RetryPolicy::new(3, ms(100));
    let (a_addr, b_addr, silent) = (addr(CLIENT), addr("127.0.0.1:5001"), addr("127.0.0.1:60"));
    let a = client_in(&mut sim, policy, 8, &[]);
    let b_client = Client::new(addr(SERVER), policy, 8, sim.now());
    let b = sim
        .listen_udp_with(ListenOptions::from(b_addr), b_client)
        .expect("listen");
    let drops = Rc::new(Cell::new(0));
    let calls = Calls::default();
    // A's own requests: 1 is echoed, 4 gets no answer.
    let mut ids = Vec::new();
    for (key, to) in [(1, addr(SERVER)), (4, silent)] {
        let id = sim
            .with_port(&a, |c, t| {
                send_counted(&mut c.requests, t, to, key, &drops, &calls)
            })
            .expect("open")
            .expect("send");
        ids.push(id);
    }
    // A's table through B's transport.
    let (sent, replied, refused, cancelled) = sim
        .with_port(&a, |ca, ta| {
            ta.reactor().with_port(&b, |_, tb| {
                let sent = send_counted(&mut ca.requests, tb, addr(SERVER), 5, &drops, &calls);
                let replied = ca.requests.reply(tb, 4, &4u32.to_be_bytes(), silent);
                let refused = ca.requests.refused(tb, silent);
                let cancelled = ca.requests.cancel(tb, ids[1]);
                (sent, replied, refused, cancelled)
            })
        })
        .expect("A open")
        .expect("B open");
    assert!(
        matches!(
            sent,
            Err(Error::WrongTransport { table, transport })
                if table == a_addr && transport == b_addr
        ),
        "{sent:?}"
    );
    assert_eq!((replied, refused, cancelled), (false, 0, false));
    sim.advance(Duration::from_secs(5)).expect("advance");
    for port in [&a, &b] {
        assert!(sim.is_listening(port));
        assert_eq!(sim.port_stats(port).map(|s| s.panics), Some(0));
    }
    let calls_of = |key: u32| -> Vec<(SocketAddr, String)> {
        calls
            .borrow()
            .iter()
            .filter(|c| c.0 == key)
            .map(|c| (c.1, c.2.clone()))
            .collect()
    };
    assert_eq!(calls_of(1), [(a_addr, "4-byte reply".to_owned())]);
    assert_eq!(
        calls_of(4),
        [(a_addr, "timed out after 3 tries".to_owned())]
    );
    assert_eq!(calls_of(5), []);
    assert_eq!(sends_from(&sim, 5), []);
    assert_eq!(
        sends_from(&sim, 4),
        [(ms(0), a_addr), (ms(100), a_addr), (ms(200), a_addr)]
    );
    assert_eq!(drops.get(), 3, "the refused send's closure is dropped too");
    assert!(
        sim.with_port(&a, |c, _| c.requests.is_empty())
            .expect("open")
    );
}

/// A table serves its port for its whole life: once that port has closed, a send through
/// another port (its protocol taken back with `keep_after_close`/`take_closed` and
/// listening again) is refused too, since the new port's timers could not reach the
/// requests the table still lists; a new table serves the new port.
#[test]
fn a_table_serves_its_port_for_its_whole_life() {
    let mut sim = Simulation::new(1).expect("simulation");
    echo_server(&mut sim);
    let policy = RetryPolicy::new(3, ms(100));
    let (a_addr, b_addr, silent) = (addr(CLIENT), addr("127.0.0.1:5001"), addr("127.0.0.1:60"));
    let a = client_in(&mut sim, policy, 8, &[]);
    sim.reactor().keep_after_close(&a);
    let drops = Rc::new(Cell::new(0));
    let calls = Calls::default();
    sim.with_port(&a, |c, t| {
        send_counted(&mut c.requests, t, silent, 4, &drops, &calls)
    })
    .expect("open")
    .expect("send");
    sim.with_port(&a, |_, t| t.stop_listening()).expect("open");
    sim.advance(ms(1)).expect("advance");
    let (client, _) = sim.reactor().take_closed(&a).expect("kept");
    assert_eq!(
        client.requests.len(),
        1,
        "the abandoned request is still listed"
    );
    let b = sim
        .listen_udp_with(ListenOptions::from(b_addr), client)
        .expect("listen");
    let refused = sim
        .with_port(&b, |c, t| {
            send_counted(&mut c.requests, t, addr(SERVER), 7, &drops, &calls)
        })
        .expect("open");
    assert!(
        matches!(
            refused,
            Err(Error::WrongTransport { table, transport })
                if table == a_addr && transport == b_addr
        ),
        "{refused:?}"
    );
    sim.with_port(&b, |c, t| {
        c.requests =
            Requests::new(policy, 8, |me: &mut Client| &mut me.requests).expect("a valid policy");
        send_counted(&mut c.requests, t, addr(SERVER), 7, &drops, &calls)
    })
    .expect("open")
    .expect("send");
    assert_eq!(
        drops.get(),
        2,
        "the refused send's closure and the old table's"
    );
    sim.advance(Duration::from_secs(1)).expect("advance");
    let calls = calls.borrow().clone();
    assert_eq!(calls, [(7, b_addr, "4-byte reply".to_owned())]);
    assert_eq!(sends_from(&sim, 4), [(ms(0), a_addr)]);
    assert_eq!(
        sends_from(&sim, 7),
        [(ms(1), b_addr), (ms(1), addr(SERVER))],
        "the request, from the new port, and its echo"
    );
    assert!(
        sim.with_port(&b, |c, _| c.requests.is_empty())
            .expect("open")
    );
    assert_eq!(drops.get(), 3);
}

/// Another protocol's port whose transport a table's first send is handed refuses the
/// send (`ProtocolMismatch`), and the table is left free: its next send, through its own
/// port, goes out.
#[test]
fn a_refused_first_send_leaves_the_table_free() {
    let mut sim = Simulation::new(1).expect("simulation");
    echo_server(&mut sim);
    let policy = RetryPolicy::new(3, ms(100));
    let a = client_in(&mut sim, policy, 8, &[]);
    let other = sim
        .listen_udp_with(
            ListenOptions::from(addr("127.0.0.1:5001")),
            from_fn(|_, _, _| {}),
        )
        .expect("listen");
    let drops = Rc::new(Cell::new(0));
    let calls = Calls::default();
    let refused = sim
        .with_port(&a, |c, ta| {
            ta.reactor().with_port(&other, |_, to| {
                send_counted(&mut c.requests, to, addr(SERVER), 1, &drops, &calls)
            })
        })
        .expect("A open")
        .expect("the other open");
    assert!(
        matches!(refused, Err(Error::ProtocolMismatch { .. })),
        "{refused:?}"
    );
    sim.with_port(&a, |c, t| {
        send_counted(&mut c.requests, t, addr(SERVER), 2, &drops, &calls)
    })
    .expect("open")
    .expect("send through its own port");
    sim.advance(ms(10)).expect("advance");
    let calls = calls.borrow().clone();
    assert_eq!(calls, [(2, addr(CLIENT), "4-byte reply".to_owned())]);
    assert_eq!(drops.get(), 2);
}
