//! The examples' protocols tested as a user of `twine::testing` would test their own: in
//! a `Simulation`, on virtual time and an in-memory network. The chat server's expiry
//! (30 s) and the retry client's backoff (0, 1, 3, 7 s) run in microseconds of real time;
//! loss, duplication and reordering come from a fixed seed, so each run is the same.
//!
//! Every wait is a `run_until` with a virtual deadline, asserted to have been met.

// Each example is its own program with its own `mod common;`: included side by side
// here, each brings a copy of examples/common/mod.rs.
#![allow(clippy::duplicate_mod)]

#[path = "../examples/chat_client.rs"]
#[allow(dead_code)]
mod chat_client;
#[path = "../examples/chat_server.rs"]
#[allow(dead_code)]
mod chat_server;
#[path = "../examples/retry_client.rs"]
#[allow(dead_code)]
mod retry_client;

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use twine::testing::{Link, Sent, Simulation};
use twine::{ListenOptions, ListeningPort, respond};

use chat_client::ChatClient;
use chat_server::ChatServer;
use retry_client::RetryClient;

type TestResult = Result<(), Box<dyn std::error::Error>>;

fn addr(text: &str) -> SocketAddr {
    text.parse().expect("an IP:PORT literal")
}

fn secs(n: u64) -> Duration {
    Duration::from_secs(n)
}

fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

/// Options for a port on `ip`, port 0 (the simulation hands out 49152 first).
fn on(ip: &str) -> ListenOptions {
    ListenOptions::new(0).interface(ip)
}

/// The datagrams in `sent` from `from`, as (destination, text).
fn from_addr(sent: &[Sent], from: SocketAddr) -> Vec<(SocketAddr, String)> {
    sent.iter()
        .filter(|s| s.from == from)
        .map(|s| (s.to, String::from_utf8_lossy(&s.data).into_owned()))
        .collect()
}

// ----- chat_server ----------------------------------------------------------------------

/// A chat client that heartbeats every 10 s stays known; one silent since its message is
/// expired by the check that runs every expire/4 = 7.5 s, between 30 s and 37.5 s after
/// its last datagram. After that only the heartbeating client gets acks, and at stop only
/// it is told `bye bye`.
#[test]
fn chat_server_expires_a_silent_client_and_keeps_a_heartbeating_one() -> TestResult {
    let wall = Instant::now();
    let mut sim = Simulation::new(1)?;
    let server_at = addr("127.0.0.1:9995");
    let server = sim.listen_udp_with(ListenOptions::from(server_at), ChatServer::new(secs(30)))?;
    assert_eq!(
        sim.with_port(&server, |s, _| s.check_interval())?,
        ms(7_500)
    );
    // The heartbeating client says `hello` at once, then `^hb^` every 10 s.
    let beating = sim.listen_udp_with(on("127.0.0.2"), ChatClient::new(server_at, secs(10)))?;
    let a = beating.local_addr();
    // The silent client: one message at 1 s, from an address with no port behind it (what
    // the server sends there is logged, and goes nowhere).
    let b = addr("127.0.0.3:5353");
    sim.advance(secs(1))?;
    sim.inject(server_at, b, b"b here");
    sim.advance(Duration::ZERO)?;
    let b_last = sim.elapsed();
    let now = sim.now();
    assert_eq!(sim.with_port(&server, |s, _| s.clients())?, [a, b]);
    assert_eq!(sim.with_port(&server, |s, _| s.last_seen(b))?, Some(now));
    let before = from_addr(&sim.take_sent(), server_at);
    let acks = |text: &str, to: &[SocketAddr]| -> Vec<(SocketAddr, String)> {
        to.iter().map(|&at| (at, text.to_owned())).collect()
    };
    let mut expected = acks("ack hello", &[a]);
    expected.extend(acks("ack b here", &[a, b]));
    assert_eq!(before, expected, "the acks before the expiry");

    let expired = sim.run_until(secs(60), |r| {
        r.with_port(&server, |s, _| s.last_seen(b).is_none())
            .unwrap_or(false)
    })?;
    assert!(expired, "b not expired within 60 s; at {:?}", sim.elapsed());
    let silent_for = sim.elapsed() - b_last;
    assert!(
        (secs(30)..=ms(37_500)).contains(&silent_for),
        "b expired after {silent_for:?} of silence"
    );
    // The expiry check runs every 7.5 s from the server's start.
    assert_eq!(
        sim.elapsed().as_millis() % 7_500,
        0,
        "at {:?}",
        sim.elapsed()
    );
    assert_eq!(sim.with_port(&server, |s, _| s.clients())?, [a]);
    let a_seen = sim
        .with_port(&server, |s, _| s.last_seen(a))?
        .expect("a known");
    assert!(
        sim.now() - a_seen < secs(10),
        "a's last heartbeat is recent"
    );
    // Heartbeats are not acknowledged: the server sent nothing between the two acks.
    assert_eq!(from_addr(&sim.take_sent(), server_at), []);

    sim.with_port(&beating, |c, t| c.say(t, "after expiry"))?;
    sim.advance(ms(1))?;
    assert_eq!(
        from_addr(&sim.take_sent(), server_at),
        acks("ack after expiry", &[a]),
        "the silent client gets no more acks"
    );

    // A minute later: the heartbeats still keep a known, and b got nothing.
    sim.advance(secs(60))?;
    assert_eq!(sim.with_port(&server, |s, _| s.clients())?, [a]);
    let beats = sim.with_port(&beating, |c, _| c.heartbeats_sent())?;
    assert!(beats >= 9, "{beats} heartbeats in about 98 s");
    assert_eq!(from_addr(&sim.take_sent(), server_at), []);

    sim.stop();
    let stopped = sim.run_until(secs(1), |r| r.port_count() == 0)?;
    assert!(stopped, "ports still open 1 s after the stop");
    assert_eq!(
        from_addr(&sim.take_sent(), server_at),
        acks("bye bye", &[a]),
        "bye bye only to the client still known"
    );
    eprintln!(
        "chat_server expiry: {:?} of virtual time in {:?} of wall-clock time",
        sim.elapsed(),
        wall.elapsed()
    );
    Ok(())
}

// ----- retry_client ---------------------------------------------------------------------

const SERVER: &str = "127.0.0.1:9994";
/// Where the retry client listens: a fixed address, so that a test can set the links
/// before the client sends its first try (in `start_protocol`, inside the listen call).
const CLIENT: &str = "127.0.0.2:5300";

/// A retry client at [`CLIENT`] asking [`SERVER`].
fn retry_client(
    sim: &mut Simulation,
    first_timeout: Duration,
    tries: u32,
) -> twine::Result<ListeningPort<RetryClient>> {
    let client = RetryClient::new(addr(SERVER), first_timeout, tries);
    sim.listen_udp_with(ListenOptions::from(addr(CLIENT)), client)
}

/// Sets `link` for both directions between [`CLIENT`] and [`SERVER`].
fn link_both_ways(sim: &mut Simulation, link: Link) {
    sim.set_link(addr(CLIENT), addr(SERVER), link);
    sim.set_link(addr(SERVER), addr(CLIENT), link);
}

/// Runs until the client has an answer or has given up, for at most `limit` of virtual
/// time; returns whether it did.
fn run_until_done(
    sim: &mut Simulation,
    client: &ListeningPort<RetryClient>,
    limit: Duration,
) -> twine::Result<bool> {
    sim.run_until(limit, |r| {
        r.with_port(client, |c, _| c.answer().is_some() || c.gave_up())
            .unwrap_or(false)
    })
}

/// A time server in the simulation: answers every datagram with `time #N`, N counting
/// its answers.
fn time_server(sim: &mut Simulation) -> twine::Result<()> {
    let mut answers = 0u32;
    let server = respond(move |_data, _from| {
        answers += 1;
        Some(format!("time #{answers}"))
    });
    sim.listen_udp_with(
        ListenOptions::from(addr(SERVER)),
        server.named("TimeServer"),
    )?;
    Ok(())
}

/// The times of the requests in `sent` from `client` to the server.
fn request_times(sent: &[Sent], client: SocketAddr) -> Vec<Duration> {
    sent.iter()
        .filter(|s| s.from == client && s.to == addr(SERVER))
        .map(|s| s.at)
        .collect()
}

/// With no server, the client sends its 4 tries at 0, 1, 3 and 7 s (the timeout doubling
/// from 1 s), gives up when the last one's 8 s have passed, and sends nothing more.
#[test]
fn retry_client_without_a_server_backs_off_then_gives_up() -> TestResult {
    let mut sim = Simulation::new(2)?;
    let client = retry_client(&mut sim, secs(1), 4)?;
    assert!(run_until_done(&mut sim, &client, secs(60))?);
    assert_eq!(sim.elapsed(), secs(15), "gave up 8 s after the last try");
    let sent = sim.sent();
    assert_eq!(
        request_times(&sent, client.local_addr()),
        [0, 1, 3, 7].map(secs)
    );
    assert!(sent.iter().all(|s| s.data == b"time?"), "{sent:?}");
    sim.advance(secs(60))?;
    assert_eq!(
        sim.sent().len(),
        4,
        "nothing after giving up: {:?}",
        sim.sent()
    );
    let (tries, gave_up, answer) = sim.with_port(&client, |c, _| {
        (c.tries_sent(), c.gave_up(), c.answer().is_some())
    })?;
    assert_eq!((tries, gave_up, answer), (4, true, false));
    Ok(())
}

/// A refusal (ICMP port unreachable, as on loopback where nothing listens) is reported
/// for every try and is not an answer: the tries go on as scheduled.
#[test]
fn retry_client_counts_refusals_and_goes_on_trying() -> TestResult {
    let mut sim = Simulation::new(3)?;
    sim.set_refuse_unbound(true);
    let client = retry_client(&mut sim, secs(1), 4)?;
    assert!(run_until_done(&mut sim, &client, secs(60))?);
    assert_eq!(
        request_times(&sim.sent(), client.local_addr()),
        [0, 1, 3, 7].map(secs)
    );
    let (refusals, gave_up) = sim.with_port(&client, |c, _| (c.refusals(), c.gave_up()))?;
    assert_eq!((refusals, gave_up), (4, true));
    Ok(())
}

/// Datagrams from another address than the server (same port on another IP, another
/// port on the server's IP) are not answers; the server's own is, and ends the tries.
#[test]
fn retry_client_takes_an_answer_from_the_server_only() -> TestResult {
    let mut sim = Simulation::new(4)?;
    let client = retry_client(&mut sim, secs(1), 4)?;
    let me = client.local_addr();
    sim.advance(ms(500))?;
    sim.inject(me, addr("127.0.0.9:9994"), b"forged");
    sim.inject(me, addr("127.0.0.1:9995"), b"forged");
    sim.advance(ms(2_000))?;
    let (ignored, answered, tries) = sim.with_port(&client, |c, _| {
        (c.ignored(), c.answer().is_some(), c.tries_sent())
    })?;
    assert_eq!((ignored, answered, tries), (2, false, 2));
    sim.inject(me, addr(SERVER), b"12:00");
    assert!(run_until_done(&mut sim, &client, secs(1))?);
    assert_eq!(sim.elapsed(), ms(2_500));
    let answer = sim.with_port(&client, |c, _| c.answer().map(<[u8]>::to_vec))?;
    assert_eq!(answer.as_deref(), Some(&b"12:00"[..]));
    sim.advance(secs(60))?;
    assert_eq!(
        request_times(&sim.sent(), me),
        [0, 1].map(secs),
        "no try after the answer"
    );
    Ok(())
}

/// What a run over a lossy link did: every datagram written, the answer, the tries.
#[derive(Debug, PartialEq)]
struct LossyRun {
    sent: Vec<Sent>,
    answer: Option<Vec<u8>>,
    tries: u32,
    lost: u64,
}

/// The client asks the time server over a link that loses half of the datagrams each
/// way (20 ms one-way delay) with `seed`.
fn lossy_run(seed: u64) -> twine::Result<LossyRun> {
    let mut sim = Simulation::new(seed)?;
    time_server(&mut sim)?;
    link_both_ways(&mut sim, Link::with_delay(ms(20)).loss(0.5));
    let client = retry_client(&mut sim, secs(1), 6)?;
    // Tries at 0, 1, 3, 7, 15 and 31 s, the last one's timeout 32 s.
    assert!(run_until_done(&mut sim, &client, secs(64))?);
    let (answer, tries) = sim.with_port(&client, |c, _| {
        (c.answer().map(<[u8]>::to_vec), c.tries_sent())
    })?;
    Ok(LossyRun {
        sent: sim.sent(),
        answer,
        tries,
        lost: sim.lost(),
    })
}

/// Over a link losing half the datagrams each way the client's retries get an answer
/// (with this seed, after losses on the way), and the same seed gives the same run: the
/// same datagrams at the same virtual times, the same answer.
#[test]
fn retry_client_gets_an_answer_over_a_lossy_link_the_same_way_each_run() -> TestResult {
    const SEED: u64 = 11;
    let first = lossy_run(SEED)?;
    assert!(first.answer.is_some(), "no answer: {:#?}", first.sent);
    assert!(
        first.lost > 0 && first.tries > 1,
        "the seed should lose a datagram and make the client retry: {first:#?}"
    );
    let client = first.sent[0].from;
    let times = request_times(&first.sent, client);
    let schedule = [0, 1, 3, 7, 15, 31].map(secs);
    assert_eq!(times, schedule[..times.len()], "the backoff schedule");
    let second = lossy_run(SEED)?;
    assert_eq!(first, second, "the same seed, another run");
    Ok(())
}

/// Over a link that delivers every datagram twice, holds half of them back and is slower
/// than the first timeout, several answers arrive (to several tries, each twice): the
/// client takes the first, once, stops trying, and ignores the rest.
#[test]
fn retry_client_takes_one_answer_over_a_duplicating_reordering_link() -> TestResult {
    let mut sim = Simulation::new(5)?;
    time_server(&mut sim)?;
    let messy = Link::with_delay(ms(300))
        .duplicate(1.0)
        .reorder(0.5)
        .jitter(ms(100));
    link_both_ways(&mut sim, messy);
    let client = retry_client(&mut sim, ms(200), 5)?;
    let me = client.local_addr();
    assert!(run_until_done(&mut sim, &client, secs(30))?);
    let taken = sim.with_port(&client, |c, _| {
        (
            c.answer().map(<[u8]>::to_vec),
            c.answered_at(),
            c.tries_sent(),
        )
    })?;
    assert!(taken.0.is_some(), "gave up instead: {:#?}", sim.sent());
    assert!(
        taken.2 > 1,
        "the link is slower than the first timeout: more than one try"
    );
    // Everything still in flight arrives, and nothing more is sent by the client.
    sim.advance(secs(30))?;
    let after = sim.with_port(&client, |c, _| {
        (
            c.answer().map(<[u8]>::to_vec),
            c.answered_at(),
            c.tries_sent(),
        )
    })?;
    assert_eq!(
        after, taken,
        "the answer, its time and the tries are unchanged"
    );
    let sent = sim.sent();
    let requests = request_times(&sent, me).len() as u32;
    assert_eq!(requests, taken.2, "no try after the answer");
    // Each request arrived twice and was answered twice; each answer arrived twice; all
    // but the one taken were ignored.
    let answers = from_addr(&sent, addr(SERVER)).len() as u32;
    assert_eq!(answers, 2 * requests, "{sent:#?}");
    let ignored = sim.with_port(&client, |c, _| c.ignored())?;
    assert_eq!(ignored, 2 * answers - 1, "{sent:#?}");
    Ok(())
}

// ----- links ----------------------------------------------------------------------------

/// A link's delay, jitter and holding back may be any `Duration`: the longest hold a
/// datagram until the end of the virtual clock, and a write over them neither panics nor
/// fails. An advance past that end is refused, running nothing.
#[test]
fn a_link_of_the_longest_delay_holds_datagrams_forever_without_a_panic() -> TestResult {
    let mut sim = Simulation::new(9)?;
    let forever = Link::with_delay(Duration::MAX)
        .jitter(Duration::MAX)
        .reorder(1.0)
        .duplicate(1.0);
    sim.set_default_link(forever);
    let echo = sim.listen_udp_with(on("127.0.0.1"), respond(|d, _| Some(d.to_vec())))?;
    let other = sim.listen_udp_with(on("127.0.0.2"), respond(|_, _| None::<Vec<u8>>))?;
    sim.inject(echo.local_addr(), other.local_addr(), b"ping");
    sim.advance(secs(3600))?;
    let stats = sim.port_stats(&echo).ok_or("the echo port is open")?;
    assert_eq!((stats.panics, stats.send_errors), (0, 0), "{stats:?}");
    let echoed = from_addr(&sim.sent(), echo.local_addr());
    assert_eq!(echoed, [(other.local_addr(), "ping".to_owned())]);
    let held = sim.port_stats(&other).ok_or("the other port is open")?;
    assert_eq!(held.datagrams_received, 0, "{held:?}");
    let elapsed = sim.elapsed();
    let past_the_end = sim.advance(Duration::MAX);
    assert!(
        matches!(past_the_end, Err(twine::Error::InvalidOption { .. })),
        "{past_the_end:?}"
    );
    assert_eq!(sim.elapsed(), elapsed, "nothing ran");
    Ok(())
}
