//! Retrying request client, in the style of a DNS or NTP client: sends one request to a
//! server and waits for its answer; when none comes within the timeout it sends the
//! request again and doubles the timeout (exponential backoff: with the defaults, tries
//! at 0, 1, 3 and 7 s, giving up at 15 s). The first answer from the server is printed as
//! `answer: TEXT`; datagrams from any other address, and answers after the first
//! (duplicates, replies to earlier tries), are ignored. A refusal (ICMP port unreachable:
//! nothing listens there yet) is logged and is not an answer: the tries go on as
//! scheduled, so that a server that comes up in the meantime is still reached.
//!
//! The port is not connected, as a resolver's is not: the server's address is checked on
//! each datagram, and a refusal arrives through `error_received`, naming the destination.
//!
//! Run:  `cargo run --example time_server` in one terminal, then
//!       `cargo run --example retry_client [SERVER_IP:PORT] [--timeout SECONDS] [--tries N]`
//!       (default server `127.0.0.1:9994`, first timeout 1 s, 4 tries)
//! Exit: 0 once answered; 1 without an answer (given up after the last try, or stopped
//!       by Ctrl-C first).

mod common;

use std::cell::Cell;
use std::io::ErrorKind;
use std::net::SocketAddr;
use std::rc::Rc;
use std::time::{Duration, Instant};

use twine::{DatagramProtocol, DelayedCall, Error, ListenOptions, Reactor, UdpTransport};

/// What each try sends.
const REQUEST: &[u8] = b"time?";

/// Where a [`RetryClient`] stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Tries are still going on.
    Waiting,
    /// The server answered.
    Answered,
    /// The last try's timeout passed without an answer.
    GaveUp,
}

/// The retrying client's protocol: one request, resent with a doubling timeout until
/// the server answers or the tries run out.
pub struct RetryClient {
    server: SocketAddr,
    /// The timeout after the next try.
    timeout: Duration,
    tries: u32,
    sent: u32,
    /// The pending timeout, cancelled by the answer.
    timer: Option<DelayedCall>,
    answer: Option<Vec<u8>>,
    answered_at: Option<Instant>,
    /// Shared so that `main` can read it after the port has closed.
    outcome: Rc<Cell<Outcome>>,
    refusals: u32,
    /// Datagrams not taken as the answer: from other addresses, or after the answer.
    ignored: u32,
    /// Whether to stop the reactor once answered or given up (the program does; a test
    /// keeps its reactor to look at the client).
    stop_when_done: bool,
}

impl RetryClient {
    /// A client that asks `server` up to `tries` times, waiting `first_timeout` after the
    /// first try and twice as long after each next one.
    pub fn new(server: SocketAddr, first_timeout: Duration, tries: u32) -> RetryClient {
        RetryClient {
            server,
            timeout: first_timeout,
            tries,
            sent: 0,
            timer: None,
            answer: None,
            answered_at: None,
            outcome: Rc::new(Cell::new(Outcome::Waiting)),
            refusals: 0,
            ignored: 0,
            stop_when_done: false,
        }
    }

    /// This client, stopping the reactor once it is answered or gives up.
    pub fn stopping_the_reactor(mut self) -> RetryClient {
        self.stop_when_done = true;
        self
    }

    /// The server's answer, once it came.
    pub fn answer(&self) -> Option<&[u8]> {
        self.answer.as_deref()
    }

    /// When the answer was taken (reactor time).
    pub fn answered_at(&self) -> Option<Instant> {
        self.answered_at
    }

    /// The requests sent so far.
    pub fn tries_sent(&self) -> u32 {
        self.sent
    }

    /// Whether the last try's timeout passed without an answer.
    pub fn gave_up(&self) -> bool {
        self.outcome.get() == Outcome::GaveUp
    }

    /// Where the client stands, readable after its port has closed.
    pub fn outcome(&self) -> Rc<Cell<Outcome>> {
        Rc::clone(&self.outcome)
    }

    /// The refusals the network reported for requests to the server.
    pub fn refusals(&self) -> u32 {
        self.refusals
    }

    /// The datagrams not taken as the answer (from other senders, or after the answer).
    pub fn ignored(&self) -> u32 {
        self.ignored
    }

    /// Sends the next try and schedules its timeout, or gives up once every try is spent.
    fn try_next(&mut self, t: &mut UdpTransport<'_>) {
        self.timer = None;
        if self.outcome.get() != Outcome::Waiting {
            return;
        }
        if self.sent == self.tries {
            log::warn!(
                "no answer from {} after {}; giving up",
                self.server,
                common::count(self.sent as usize, "try")
            );
            self.finish(t, Outcome::GaveUp);
            return;
        }
        self.sent += 1;
        match t.write(REQUEST, self.server) {
            Ok(()) => log::info!(
                "try {} of {} to {}, waiting {}",
                self.sent,
                self.tries,
                self.server,
                common::duration(self.timeout)
            ),
            // A failed send is a try without an answer: the next one comes as scheduled.
            Err(e) => log::warn!("try {} to {}: {e}", self.sent, self.server),
        }
        match Self::call_later(t, self.timeout, |me, t| me.try_next(t)) {
            Ok(call) => self.timer = Some(call),
            Err(e) => {
                log::error!("scheduling the next try: {e}");
                self.finish(t, Outcome::GaveUp);
                return;
            }
        }
        self.timeout = self.timeout.saturating_mul(2);
    }

    /// Records the outcome, cancels the pending timeout and, if asked to, stops the reactor.
    fn finish(&mut self, t: &mut UdpTransport<'_>, outcome: Outcome) {
        self.outcome.set(outcome);
        if let Some(timer) = self.timer.take() {
            t.cancel(timer);
        }
        if self.stop_when_done {
            t.reactor().stop();
        }
    }
}

impl DatagramProtocol for RetryClient {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.try_next(t);
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        if from != self.server || self.outcome.get() != Outcome::Waiting {
            log::debug!("ignored {} from {from}", common::count(data.len(), "byte"));
            self.ignored += 1;
            return;
        }
        println!("answer: {}", String::from_utf8_lossy(data));
        self.answer = Some(data.to_vec());
        self.answered_at = Some(t.now());
        self.finish(t, Outcome::Answered);
    }

    fn error_received(&mut self, _t: &mut UdpTransport<'_>, error: &Error, addr: SocketAddr) {
        if addr != self.server {
            log::debug!("error about {addr}: {error}");
            return;
        }
        if let Error::Unreachable { source, .. } = error
            && source.kind() == ErrorKind::ConnectionRefused
        {
            self.refusals += 1;
            log::warn!(
                "{} refused try {} (is the server running?)",
                self.server,
                self.sent
            );
        } else {
            log::warn!("try {} to {}: {error}", self.sent, self.server);
        }
    }

    fn stop_protocol(&mut self, _t: &mut UdpTransport<'_>) {
        if self.outcome.get() == Outcome::Waiting {
            log::info!(
                "stopped after {}, without an answer",
                common::count(self.sent as usize, "try")
            );
        }
    }
}

/// What `--help` prints.
const USAGE: &str = "usage: retry_client [SERVER_IP:PORT] [--timeout SECONDS] [--tries N]\n\nAsks the time server (default 127.0.0.1:9994) for the time, resending with a doubling\ntimeout (first SECONDS, default 1) up to N tries (default 4). Exit 0 once answered,\n1 without an answer.";

fn main() -> Result<(), common::Failed> {
    common::init(USAGE, &["--timeout", "--tries"], 1);
    let server = common::addr_arg(0, "127.0.0.1:9994");
    let timeout = common::seconds_flag("--timeout", Duration::from_secs(1));
    let tries: u32 = common::parsed_flag("--tries", 4);
    if tries == 0 {
        eprintln!("--tries: at least 1, got 0");
        std::process::exit(2);
    }
    let client = RetryClient::new(server, timeout, tries).stopping_the_reactor();
    let outcome = client.outcome();
    let mut reactor = Reactor::new()?;
    reactor.listen_udp_with(
        ListenOptions::from(common::client_bind_addr(server)),
        client,
    )?;
    reactor.run()?;
    if outcome.get() != Outcome::Answered {
        std::process::exit(1);
    }
    Ok(())
}
