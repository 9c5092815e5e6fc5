//! Requests and their replies: send a request to a peer, resend it on a timeout, and finish
//! it exactly once with the reply, a timeout, a refusal or a cancel.
//!
//! What every UDP client writes by hand (a DNS or NTP query, a SNMP get, a game's join):
//! a table of pending requests, a timer per request, resends with a backoff, and the
//! matching of each reply to its request. A [`Requests`] table is that part, owned by the
//! protocol and fed from its own hooks, so it composes with any protocol:
//!
//! - [`Requests::send`] sends a request to a peer under a key the protocol chooses (a DNS
//!   query id, a sequence number) and a completion, `on_done`;
//! - the protocol's [`datagram_received`](crate::DatagramProtocol::datagram_received)
//!   extracts the key from each datagram and hands it to [`Requests::reply`], which
//!   matches it to the request with that key *to the address it came from*;
//! - [`error_received`](crate::DatagramProtocol::error_received) and
//!   [`connection_refused`](crate::DatagramProtocol::connection_refused) hand the errors
//!   on to [`Requests::error`] and [`Requests::refused`], which end that peer's requests
//!   early;
//! - the table's own port timers resend each request as its [`RetryPolicy`] says, and
//!   finish it with [`Outcome::TimedOut`] after the last try's timeout.
//!
//! # Exactly once
//!
//! Each request whose [`send`](Requests::send) succeeded finishes once: with its reply,
//! a timeout, a refusal, an error or a cancel, whichever comes first. From that moment
//! its key matches nothing more (duplicate replies, replies to earlier tries and replies
//! after a cancel make [`reply`](Requests::reply) return false), its timer is cancelled
//! and its slot is free. Its `on_done` then runs once, on the reactor thread, in a port
//! timer of the table's port: a timeout's at once, in the timer that found it; the others'
//! on the next reactor turn (a zero-delay [`call_later`](UdpTransport::call_later)), never
//! inside the call that finished it, so `on_done` gets the protocol (`&mut P`) while the
//! hook that called [`reply`](Requests::reply) has it borrowed, and may itself send new
//! requests. Completions put off to the next turn run in the order their requests
//! finished.
//!
//! The one exception is the port's close: its port timers never run again once its stop
//! is asked for ([`stop_listening`](UdpTransport::stop_listening), or closing it by
//! handle), nor once the reactor has stopped ([`Reactor::stop`](crate::Reactor::stop), a
//! signal: the timers due in the turn the stop was asked in still run). So the requests
//! still outstanding then are **abandoned**: no more tries are sent and their `on_done`
//! closures are dropped without being called (what they own is freed: a channel's sender
//! inside one is dropped, and its receiver sees the disconnect). So are the completions
//! of finished requests that had not run yet.
//! [`stop_protocol`](crate::DatagramProtocol::stop_protocol) still sees the abandoned
//! requests in [`len`](Requests::len) and [`is_pending`](Requests::is_pending), and may log
//! them.
//!
//! # One port
//!
//! A table serves the one port whose protocol owns it: its timers are that port's. The
//! first [`send`](Requests::send) that goes out ties it to the port of the transport it
//! was handed, for the table's whole life: a send through another port's transport is
//! refused with [`Error::WrongTransport`], and [`reply`](Requests::reply),
//! [`refused`](Requests::refused), [`error`](Requests::error) and
//! [`cancel`](Requests::cancel) through one match nothing. (The table's port timers reach
//! it through its port's protocol, so a request sent through another port would never be
//! resent nor time out.) A protocol taken back with
//! [`Reactor::take_closed`](crate::Reactor::take_closed) to listen again needs a new
//! table; its old one still lists the requests abandoned at the close.
//!
//! # Matching
//!
//! A reply matches a request when its key is equal and it came from the address the
//! request was sent to (the same IP and port; an IPv6 flow label and scope id are
//! ignored): a datagram from anywhere else never finishes a request, so a remote host
//! that guesses a key cannot answer another peer's request. At most one request per key
//! and peer is outstanding ([`Error::DuplicateRequest`]); the same key may be outstanding
//! to two peers. A reply to any try of a request matches it, and so does a late reply to
//! an earlier request that had the same key: draw keys afresh (a random DNS query id, a
//! sequence number), rather than reusing one as soon as its request finished.
//!
//! # Errors about a peer
//!
//! A refusal (ICMP port unreachable, from [`error_received`](Requests::error) or a
//! connected port's [`connection_refused`](Requests::refused)) ends the requests to that
//! peer early, as [`Outcome::Refused`]: nothing listens there. Other ICMP errors (host
//! or network unreachable, which any router on the path may send, and anyone may forge)
//! end nothing: the tries go on, and a request none of them reaches times out. An ICMP
//! refusal can be forged too, by anyone who knows the client's port and the peer's
//! address; a client for which that matters does not hand refusals on. Errors the
//! kernel gave about a later send of a request (a gathered resend refused as too long,
//! say) end it with [`Outcome::Failed`].
//!
//! # Example: a client that asks three times
//!
//! ```
//! use std::net::SocketAddr;
//! use std::time::Duration;
//! use twine::request::{Outcome, Requests, RetryPolicy};
//! use twine::testing::Simulation;
//! use twine::{DatagramProtocol, ListenOptions, UdpTransport};
//!
//! struct Client {
//!     server: SocketAddr,
//!     requests: Requests<Client, u16>,
//!     answer: Option<Outcome>,
//! }
//!
//! impl DatagramProtocol for Client {
//!     fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
//!         // Key 7, written in the request's first two bytes (the server echoes it).
//!         let sent = self.requests.send(t, self.server, 7, b"\x00\x07time?", |me: &mut Client, _t, outcome| {
//!             me.answer = Some(outcome);
//!         });
//!         if let Err(e) = sent {
//!             log::warn!("request to {}: {e}", self.server);
//!         }
//!     }
//!     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
//!         if let [a, b, ..] = *data {
//!             self.requests.reply(t, u16::from_be_bytes([a, b]), data, from);
//!         }
//!     }
//!     fn error_received(&mut self, t: &mut UdpTransport<'_>, error: &twine::Error, addr: SocketAddr) {
//!         self.requests.error(t, error, addr);
//!     }
//! }
//!
//! let mut sim = Simulation::new(1)?;
//! let server: SocketAddr = "127.0.0.1:37".parse()?;
//! let policy = RetryPolicy::new(3, Duration::from_millis(200));
//! let client = Client {
//!     server,
//!     requests: Requests::new(policy, 16, |me: &mut Client| &mut me.requests)?,
//!     answer: None,
//! };
//! let port = sim.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), client)?;
//! // Nobody answers the first two tries (at 0 and 200 ms); the third gets an answer.
//! sim.advance(Duration::from_millis(450))?;
//! assert_eq!(sim.take_sent().len(), 3);
//! sim.inject(port.local_addr(), server, b"\x00\x0712:00");
//! sim.advance(Duration::from_millis(1))?;
//! let answer = sim.with_port(&port, |c, _| c.answer.take())?;
//! assert_eq!(answer.as_ref().and_then(Outcome::reply), Some(&b"\x00\x0712:00"[..]));
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt;
use std::hash::Hash;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crate::error::{Error, Result};
use crate::reactor::timer::DelayedCall;
use crate::reactor::token::PortKey;
use crate::udp::port::copy_io_error;
use crate::udp::{PeerAddr, UdpTransport};

/// How often a request is sent and how long each try waits for the reply: `tries` sends,
/// the first waiting `timeout`, each next one `backoff` times as long as the one before
/// (1 by default: the same each time), none longer than `max_timeout` (no bound by
/// default). After the last try's wait the request finishes with
/// [`Outcome::TimedOut`].
///
/// The checks (at least one try, a timeout and a backoff above zero) are made by
/// [`Requests::new`].
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use twine::request::RetryPolicy;
///
/// let ms = Duration::from_millis;
/// // Four tries at 0, 100, 300 and 600 ms; given up at 900 ms.
/// let policy = RetryPolicy::new(4, ms(100)).backoff(2).max_timeout(ms(300));
/// assert_eq!(policy.timeouts().collect::<Vec<_>>(), [ms(100), ms(200), ms(300), ms(300)]);
/// assert_eq!(policy.total(), ms(900));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct RetryPolicy {
    tries: u32,
    timeout: Duration,
    backoff: u32,
    max_timeout: Duration,
}

impl RetryPolicy {
    /// `tries` sends, each waiting `timeout` for the reply.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// // A resolver's 3 tries, 200 ms apart.
    /// let policy = twine::request::RetryPolicy::new(3, Duration::from_millis(200));
    /// assert_eq!(policy.total(), Duration::from_millis(600));
    /// ```
    pub const fn new(tries: u32, timeout: Duration) -> RetryPolicy {
        RetryPolicy {
            tries,
            timeout,
            backoff: 1,
            max_timeout: Duration::MAX,
        }
    }

    /// This policy, each try waiting `factor` times as long as the one before (2: an
    /// exponential backoff; 1: no backoff). Saturates at [`max_timeout`](Self::max_timeout).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = twine::request::RetryPolicy::new(3, Duration::from_secs(1)).backoff(3);
    /// assert_eq!(policy.timeouts().map(|d| d.as_secs()).collect::<Vec<_>>(), [1, 3, 9]);
    /// ```
    pub const fn backoff(mut self, factor: u32) -> RetryPolicy {
        self.backoff = factor;
        self
    }

    /// This policy, no try waiting longer than `max` (the first one included).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = twine::request::RetryPolicy::new(5, Duration::from_secs(1))
    ///     .backoff(2)
    ///     .max_timeout(Duration::from_secs(3));
    /// assert_eq!(policy.timeouts().map(|d| d.as_secs()).collect::<Vec<_>>(), [1, 2, 3, 3, 3]);
    /// ```
    pub const fn max_timeout(mut self, max: Duration) -> RetryPolicy {
        self.max_timeout = max;
        self
    }

    /// The number of sends.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// assert_eq!(twine::request::RetryPolicy::new(3, Duration::from_secs(1)).tries(), 3);
    /// ```
    pub const fn tries(&self) -> u32 {
        self.tries
    }

    /// The wait after each try, in order: `tries` values.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = twine::request::RetryPolicy::new(2, Duration::from_millis(50)).backoff(4);
    /// let ms: Vec<u128> = policy.timeouts().map(|d| d.as_millis()).collect();
    /// assert_eq!(ms, [50, 200]);
    /// ```
    pub fn timeouts(&self) -> impl Iterator<Item = Duration> + use<> {
        let policy = *self;
        let mut next = self.first_timeout();
        (0..self.tries).map(move |_| {
            let this = next;
            next = policy.after(this);
            this
        })
    }

    /// How long a request that gets no reply takes to time out: the sum of the
    /// [`timeouts`](Self::timeouts) (saturating).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let policy = twine::request::RetryPolicy::new(3, Duration::from_secs(1)).backoff(2);
    /// assert_eq!(policy.total(), Duration::from_secs(7));
    /// ```
    pub fn total(&self) -> Duration {
        self.timeouts()
            .fold(Duration::ZERO, |sum, d| sum.saturating_add(d))
    }

    fn first_timeout(&self) -> Duration {
        self.timeout.min(self.max_timeout)
    }

    /// The wait after the try that follows one that waited `timeout`.
    fn after(&self, timeout: Duration) -> Duration {
        timeout.saturating_mul(self.backoff).min(self.max_timeout)
    }

    fn check(&self) -> Result<()> {
        let bad = |option, expected| {
            Err(Error::InvalidOption {
                option,
                value: 0,
                expected,
            })
        };
        if self.tries == 0 {
            return bad("RetryPolicy tries", "at least 1");
        }
        if self.timeout.is_zero() {
            return bad("RetryPolicy timeout", "more than zero");
        }
        if self.backoff == 0 {
            return bad("RetryPolicy backoff", "at least 1");
        }
        if self.max_timeout.is_zero() {
            return bad("RetryPolicy max_timeout", "more than zero");
        }
        Ok(())
    }
}

/// Names one request of a [`Requests`] table, for [`Requests::cancel`] and
/// [`Requests::is_pending`]. Never reused, by any table of the process: a stale id (and
/// the timer of a table since dropped or replaced) names nothing.
///
/// # Examples
///
/// ```
/// # use std::net::SocketAddr;
/// # use std::time::Duration;
/// # use twine::request::{Requests, RetryPolicy};
/// # use twine::{DatagramProtocol, ListenOptions, UdpTransport};
/// # struct Client { requests: Requests<Client, u8> }
/// # impl DatagramProtocol for Client {
/// #     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
/// # }
/// # let mut sim = twine::testing::Simulation::new(1)?;
/// # let policy = RetryPolicy::new(3, Duration::from_millis(100));
/// # let client = Client { requests: Requests::new(policy, 8, |me: &mut Client| &mut me.requests)? };
/// # let port = sim.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), client)?;
/// let server: SocketAddr = "127.0.0.1:9".parse()?;
/// let id = sim.with_port(&port, |c, t| {
///     c.requests.send(t, server, 1, b"hi", |_: &mut Client, _, _| {})
/// })??;
/// assert!(sim.with_port(&port, |c, _| c.requests.is_pending(id))?);
/// sim.advance(Duration::from_secs(1))?; // three tries, then the timeout
/// assert!(!sim.with_port(&port, |c, _| c.requests.is_pending(id))?);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct RequestId(u64);

/// How a request finished: what its `on_done` is given.
///
/// # Examples
///
/// ```
/// use twine::request::Outcome;
///
/// fn describe(outcome: &Outcome) -> String {
///     match outcome {
///         Outcome::Reply { data, tries } => format!("{} bytes after {tries} tries", data.len()),
///         Outcome::TimedOut { tries } => format!("no reply to {tries} tries"),
///         Outcome::Refused => "refused".to_owned(),
///         Outcome::Failed(e) => format!("failed: {e}"),
///         Outcome::Cancelled => "cancelled".to_owned(),
///         _ => "finished".to_owned(),
///     }
/// }
/// assert_eq!(describe(&Outcome::TimedOut { tries: 3 }), "no reply to 3 tries");
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Outcome {
    /// The reply came: the datagram given to [`Requests::reply`].
    Reply {
        /// The reply's bytes.
        data: Vec<u8>,
        /// The sends made until it came (it may answer any of them).
        tries: u32,
    },
    /// No reply came within the last try's timeout.
    TimedOut {
        /// The sends made: the policy's [`tries`](RetryPolicy::tries).
        tries: u32,
    },
    /// The peer refused: an ICMP port unreachable came back (nothing listens there),
    /// told through [`Requests::refused`] or [`Requests::error`], or met by a resend on a
    /// connected port.
    Refused,
    /// An error about a send to the peer, told through [`Requests::error`] (a gathered
    /// write the kernel refused), or the table's timer could not be armed.
    Failed(Error),
    /// [`Requests::cancel`] was called.
    Cancelled,
}

impl Outcome {
    /// The reply's bytes, if the request got one.
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::request::Outcome;
    /// let outcome = Outcome::Reply { data: b"pong".to_vec(), tries: 1 };
    /// assert_eq!(outcome.reply(), Some(&b"pong"[..]));
    /// assert_eq!(Outcome::Cancelled.reply(), None);
    /// ```
    pub fn reply(&self) -> Option<&[u8]> {
        match self {
            Outcome::Reply { data, .. } => Some(data),
            _ => None,
        }
    }

    /// The reply's bytes, or the outcome itself when there was no reply.
    ///
    /// # Errors
    ///
    /// The outcome, unless it is [`Outcome::Reply`].
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::request::Outcome;
    /// let reply = Outcome::Reply { data: b"pong".to_vec(), tries: 2 }.into_reply();
    /// assert_eq!(reply.ok(), Some(b"pong".to_vec()));
    /// assert!(matches!(Outcome::Refused.into_reply(), Err(Outcome::Refused)));
    /// ```
    pub fn into_reply(self) -> Result<Vec<u8>, Outcome> {
        match self {
            Outcome::Reply { data, .. } => Ok(data),
            other => Err(other),
        }
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Outcome::Reply { data, tries: 1 } => write!(f, "{}-byte reply", data.len()),
            Outcome::Reply { data, tries } => {
                write!(f, "{}-byte reply after {tries} tries", data.len())
            }
            Outcome::TimedOut { tries } => write!(f, "timed out after {tries} tries"),
            Outcome::Refused => write!(f, "refused"),
            Outcome::Failed(e) => write!(f, "failed: {e}"),
            Outcome::Cancelled => write!(f, "cancelled"),
        }
    }
}

/// The next request's id, for every table: a timer left behind by a table that was
/// dropped or replaced in its protocol must not reach a request of the new one.
static NEXT_ID: AtomicU64 = AtomicU64::new(0);

/// What a request's completion is.
type OnDone<P> = Box<dyn FnOnce(&mut P, &mut UdpTransport<'_>, Outcome)>;

/// How a port timer reaches the table inside its protocol.
type Access<P, K> = fn(&mut P) -> &mut Requests<P, K>;

struct Entry<P, K> {
    peer: SocketAddr,
    key: K,
    data: Vec<u8>,
    /// Sends made so far.
    tries: u32,
    /// The wait after the last send.
    timeout: Duration,
    timer: Option<DelayedCall>,
    on_done: OnDone<P>,
}

/// A table of outstanding requests of one port, owned by its protocol `P`, matched to
/// their replies by a key `K`: see the [module docs](self).
///
/// At most [`limit`](Self::limit) requests are outstanding at once. The table reaches
/// itself from its port timers through the accessor given to [`new`](Self::new), so it
/// must live in the protocol of the port whose transport is passed to
/// [`send`](Self::send): a transport of another protocol type is refused with
/// [`Error::ProtocolMismatch`], another port's with [`Error::WrongTransport`] (see
/// [one port](self#one-port)).
///
/// # Examples
///
/// ```
/// use std::time::Duration;
/// use twine::request::{Requests, RetryPolicy};
///
/// struct Client {
///     requests: Requests<Client, u32>,
/// }
/// # impl twine::DatagramProtocol for Client {
/// #     fn datagram_received(&mut self, _: &mut twine::UdpTransport<'_>, _: &[u8], _: std::net::SocketAddr) {}
/// # }
///
/// let policy = RetryPolicy::new(3, Duration::from_millis(200)).backoff(2);
/// let client = Client { requests: Requests::new(policy, 64, |me: &mut Client| &mut me.requests)? };
/// assert!(client.requests.is_empty());
/// # Ok::<(), twine::Error>(())
/// ```
pub struct Requests<P, K> {
    policy: RetryPolicy,
    limit: usize,
    access: Access<P, K>,
    /// In the order they were sent, so that a refusal finishes a peer's requests in order.
    by_id: BTreeMap<RequestId, Entry<P, K>>,
    by_key: HashMap<(SocketAddr, K), RequestId>,
    /// The outstanding requests to each peer (as compared), so that an error about a peer
    /// costs its own requests, not a walk of the table.
    by_peer: HashMap<SocketAddr, BTreeSet<RequestId>>,
    /// The port the table serves (its first request went through it), and its address
    /// (for the error): the requests' timers are that port's, and so are their
    /// completions.
    port: Option<(PortKey, SocketAddr)>,
}

impl<P, K> fmt::Debug for Requests<P, K> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Requests")
            .field("policy", &self.policy)
            .field("limit", &self.limit)
            .field("outstanding", &self.by_id.len())
            .finish_non_exhaustive()
    }
}

/// The address a reply must come from, as compared: an IPv6 flow label and scope id are
/// not part of it (a request sent without a scope gets its reply with the interface's).
fn matched(addr: SocketAddr) -> SocketAddr {
    match addr {
        SocketAddr::V6(mut v6) => {
            v6.set_flowinfo(0);
            v6.set_scope_id(0);
            SocketAddr::V6(v6)
        }
        v4 => v4,
    }
}

/// An owned copy of an error the port reported about a send, for [`Outcome::Failed`]
/// (its `io::Error` cannot be cloned). Refusals and other ICMP errors never get here.
fn copy_error(error: &Error) -> Error {
    match error {
        Error::Send { addr, source } => Error::Send {
            addr: *addr,
            source: copy_io_error(source),
        },
        other => Error::Io {
            context: "request",
            source: io::Error::other(other.to_string()),
        },
    }
}

fn is_refusal(error: &Error) -> bool {
    match error {
        Error::Unreachable { source, .. } | Error::Send { source, .. } => {
            source.kind() == io::ErrorKind::ConnectionRefused
        }
        Error::ConnectionRefused { .. } => true,
        _ => false,
    }
}

impl<P: 'static, K: Eq + Hash + Clone + 'static> Requests<P, K> {
    /// An empty table whose requests follow `policy`, at most `limit` outstanding at once.
    /// `access` leads from the protocol to this table (`|me: &mut Client| &mut me.requests`):
    /// the table's port timers use it to reach the table again.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for a `limit` of zero, or a policy with no tries, a zero
    /// timeout, a zero backoff or a zero `max_timeout`.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::request::{Requests, RetryPolicy};
    /// # struct Client { requests: Requests<Client, u16> }
    /// let policy = RetryPolicy::new(0, Duration::from_secs(1));
    /// let table = Requests::new(policy, 16, |me: &mut Client| &mut me.requests);
    /// assert!(matches!(table, Err(twine::Error::InvalidOption { .. })));
    /// ```
    pub fn new(policy: RetryPolicy, limit: usize, access: Access<P, K>) -> Result<Self> {
        policy.check()?;
        if limit == 0 {
            return Err(Error::InvalidOption {
                option: "Requests limit",
                value: 0,
                expected: "at least 1",
            });
        }
        Ok(Requests {
            policy,
            limit,
            access,
            by_id: BTreeMap::new(),
            by_key: HashMap::new(),
            by_peer: HashMap::new(),
            port: None,
        })
    }

    /// Sends `request` to `peer` and waits for a reply with `key` from `peer`, resending as
    /// the policy says; `on_done` runs once when the request finishes (see
    /// [Exactly once](self#exactly-once)). `t` must be the transport of the port whose
    /// protocol owns this table.
    ///
    /// The first try is written at once (through `t`); its errors are returned, and then
    /// nothing is outstanding and `on_done` is dropped without being called. A resend
    /// that fails is a try without a reply (it is logged), except a refusal on a
    /// connected port, which finishes the request with [`Outcome::Refused`].
    ///
    /// # Errors
    ///
    /// [`Error::TooManyRequests`] when [`limit`](Self::limit) requests are outstanding;
    /// [`Error::DuplicateRequest`] when one with this key to this peer is;
    /// [`Error::PortClosed`] once the port's stop was asked for;
    /// [`Error::ProtocolMismatch`] if `t` is the transport of a port whose protocol is not
    /// `P`; [`Error::WrongTransport`] if it is another port's than the one this table serves
    /// (see [one port](self#one-port)); and what [`UdpTransport::write`] returns.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::net::SocketAddr;
    /// # use std::time::Duration;
    /// # use twine::request::{Outcome, Requests, RetryPolicy};
    /// # use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    /// struct Client {
    ///     requests: Requests<Client, u8>,
    ///     timed_out: u32,
    /// }
    /// # impl DatagramProtocol for Client {
    /// #     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    /// # }
    /// # let mut sim = twine::testing::Simulation::new(1)?;
    /// # let policy = RetryPolicy::new(2, Duration::from_millis(100));
    /// # let client = Client { requests: Requests::new(policy, 8, |me: &mut Client| &mut me.requests)?, timed_out: 0 };
    /// # let port = sim.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), client)?;
    /// let server: SocketAddr = "127.0.0.1:9".parse()?;
    /// sim.with_port(&port, |c, t| {
    ///     c.requests.send(t, server, 1, b"\x01ping", |me: &mut Client, _t, outcome| {
    ///         if let Outcome::TimedOut { .. } = outcome {
    ///             me.timed_out += 1;
    ///         }
    ///     })
    /// })??;
    /// sim.advance(Duration::from_secs(1))?;
    /// assert_eq!(sim.with_port(&port, |c, _| c.timed_out)?, 1);
    /// assert_eq!(sim.sent().len(), 2);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn send(
        &mut self,
        t: &mut UdpTransport<'_>,
        peer: impl PeerAddr,
        key: K,
        request: &[u8],
        on_done: impl FnOnce(&mut P, &mut UdpTransport<'_>, Outcome) + 'static,
    ) -> Result<RequestId> {
        let peer = peer.peer_addr()?;
        if let Some((key, table)) = self.port
            && key != t.core.key
        {
            return Err(Error::WrongTransport {
                table,
                transport: t.local_addr(),
            });
        }
        if self.by_id.len() >= self.limit {
            return Err(Error::TooManyRequests { limit: self.limit });
        }
        let index = (matched(peer), key);
        if self.by_key.contains_key(&index) {
            return Err(Error::DuplicateRequest { peer });
        }
        let id = RequestId(NEXT_ID.fetch_add(1, Ordering::Relaxed));
        let timeout = self.policy.first_timeout();
        let timer = arm(self.access, t, id, timeout)?;
        if let Err(e) = t.write(request, peer) {
            t.cancel(timer);
            return Err(e);
        }
        // Tied by the first send that went out, never by one refused.
        self.port.get_or_insert((t.core.key, t.local_addr()));
        let key = index.1.clone();
        self.by_peer.entry(index.0).or_default().insert(id);
        self.by_key.insert(index, id);
        self.by_id.insert(
            id,
            Entry {
                peer,
                key,
                data: request.to_vec(),
                tries: 1,
                timeout,
                timer: Some(timer),
                on_done: Box::new(on_done),
            },
        );
        Ok(id)
    }

    /// Hands on a datagram from `from` whose key the protocol read as `key`: if a request
    /// with that key to `from` is outstanding, it finishes with [`Outcome::Reply`] (its
    /// `on_done` runs on the next turn) and this returns true. Otherwise (no such request:
    /// another sender, a duplicate, a late reply, a reply after a cancel or the timeout)
    /// it returns false and nothing changes.
    ///
    /// Call it from [`datagram_received`](crate::DatagramProtocol::datagram_received)
    /// once the datagram is known to be a reply (a datagram that merely carries a known
    /// key, but is not a well-formed reply, had better be dropped before).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::net::SocketAddr;
    /// # use std::time::Duration;
    /// # use twine::request::{Requests, RetryPolicy};
    /// # use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    /// struct Client {
    ///     requests: Requests<Client, u8>,
    ///     replies: Vec<Vec<u8>>,
    /// }
    /// impl DatagramProtocol for Client {
    ///     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
    ///         if let Some(&key) = data.first()
    ///             && !self.requests.reply(t, key, data, from)
    ///         {
    ///             log::debug!("no request {key} to {from}");
    ///         }
    ///     }
    /// }
    /// # let mut sim = twine::testing::Simulation::new(1)?;
    /// # let policy = RetryPolicy::new(2, Duration::from_millis(100));
    /// # let client = Client { requests: Requests::new(policy, 8, |me: &mut Client| &mut me.requests)?, replies: vec![] };
    /// # let port = sim.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), client)?;
    /// let server: SocketAddr = "127.0.0.1:9".parse()?;
    /// sim.with_port(&port, |c, t| {
    ///     c.requests.send(t, server, 1, b"\x01ping", |me: &mut Client, _t, outcome| {
    ///         me.replies.extend(outcome.into_reply());
    ///     })
    /// })??;
    /// let impostor: SocketAddr = "127.0.0.2:9".parse()?;
    /// sim.inject(port.local_addr(), impostor, b"\x01forged");
    /// sim.inject(port.local_addr(), server, b"\x01pong");
    /// sim.inject(port.local_addr(), server, b"\x01pong again");
    /// sim.advance(Duration::from_millis(1))?;
    /// assert_eq!(sim.with_port(&port, |c, _| c.replies.clone())?, [b"\x01pong".to_vec()]);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn reply(
        &mut self,
        t: &mut UdpTransport<'_>,
        key: K,
        data: &[u8],
        from: SocketAddr,
    ) -> bool {
        if !self.serves(t) {
            return false;
        }
        let Some(&id) = self.by_key.get(&(matched(from), key)) else {
            return false;
        };
        let Some(entry) = self.remove(t, id) else {
            return false;
        };
        let outcome = Outcome::Reply {
            data: data.to_vec(),
            tries: entry.tries,
        };
        deliver(t, entry.on_done, outcome);
        true
    }

    /// Finishes every request to `peer` with [`Outcome::Refused`]: call it from
    /// [`connection_refused`](crate::DatagramProtocol::connection_refused) of a connected
    /// port, with its peer ([`UdpTransport::peer_addr`]). Returns how many it finished.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::net::SocketAddr;
    /// # use std::time::Duration;
    /// # use twine::request::{Outcome, Requests, RetryPolicy};
    /// # use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    /// struct Client {
    ///     requests: Requests<Client, u8>,
    ///     refused: bool,
    /// }
    /// impl DatagramProtocol for Client {
    ///     fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
    ///         let server: SocketAddr = "127.0.0.1:9".parse().expect("an address");
    ///         let _ = t.connect(server);
    ///         let _ = self.requests.send(t, server, 1, b"\x01ping", |me: &mut Client, _t, outcome| {
    ///             me.refused = matches!(outcome, Outcome::Refused);
    ///         });
    ///     }
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    ///     fn connection_refused(&mut self, t: &mut UdpTransport<'_>) {
    ///         if let Some(peer) = t.peer_addr() {
    ///             self.requests.refused(t, peer);
    ///         }
    ///     }
    /// }
    /// # let mut sim = twine::testing::Simulation::new(1)?;
    /// # let policy = RetryPolicy::new(3, Duration::from_secs(1));
    /// # let client = Client { requests: Requests::new(policy, 8, |me: &mut Client| &mut me.requests)?, refused: false };
    /// # let port = sim.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), client)?;
    /// sim.inject_refusal(port.local_addr(), "127.0.0.1:9".parse()?);
    /// sim.advance(Duration::from_millis(1))?;
    /// assert!(sim.with_port(&port, |c, _| c.refused)?);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn refused(&mut self, t: &mut UdpTransport<'_>, peer: SocketAddr) -> usize {
        self.finish_peer(t, peer, || Outcome::Refused)
    }

    /// Hands on an error the port reported about `addr`, from
    /// [`error_received`](crate::DatagramProtocol::error_received): a refusal (an ICMP
    /// port unreachable: `ECONNREFUSED`) finishes every request to `addr` with
    /// [`Outcome::Refused`]; another ICMP error ([`Error::Unreachable`]: host or network
    /// unreachable ...) finishes none, and the tries go on (see
    /// [Errors about a peer](self#errors-about-a-peer)); any other error the port reported
    /// about a send to `addr` finishes them with [`Outcome::Failed`] and a copy of it.
    /// Returns how many it finished.
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::net::SocketAddr;
    /// # use std::time::Duration;
    /// # use twine::request::{Outcome, Requests, RetryPolicy};
    /// # use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    /// struct Client {
    ///     requests: Requests<Client, u8>,
    ///     outcome: Option<Outcome>,
    /// }
    /// impl DatagramProtocol for Client {
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    ///     fn error_received(&mut self, t: &mut UdpTransport<'_>, error: &twine::Error, addr: SocketAddr) {
    ///         self.requests.error(t, error, addr);
    ///     }
    /// }
    /// # let mut sim = twine::testing::Simulation::new(1)?;
    /// # let policy = RetryPolicy::new(3, Duration::from_secs(1));
    /// # let client = Client { requests: Requests::new(policy, 8, |me: &mut Client| &mut me.requests)?, outcome: None };
    /// # let port = sim.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), client)?;
    /// let server: SocketAddr = "127.0.0.1:9".parse()?;
    /// sim.with_port(&port, |c, t| {
    ///     c.requests.send(t, server, 1, b"\x01ping", |me: &mut Client, _t, outcome| me.outcome = Some(outcome))
    /// })??;
    /// sim.inject_refusal(port.local_addr(), server);
    /// sim.advance(Duration::from_millis(1))?;
    /// assert!(matches!(sim.with_port(&port, |c, _| c.outcome.take())?, Some(Outcome::Refused)));
    /// assert_eq!(sim.sent().len(), 1); // no more tries
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn error(&mut self, t: &mut UdpTransport<'_>, error: &Error, addr: SocketAddr) -> usize {
        if is_refusal(error) {
            self.finish_peer(t, addr, || Outcome::Refused)
        } else if let Error::Unreachable { .. } = error {
            0
        } else {
            self.finish_peer(t, addr, || Outcome::Failed(copy_error(error)))
        }
    }

    /// Cancels a request: it finishes with [`Outcome::Cancelled`] (its `on_done` runs on
    /// the next turn) and sends no more tries. Returns false, doing nothing, if it had
    /// already finished, if it was abandoned at the port's close (it is still listed by
    /// [`is_pending`](Self::is_pending) then), or if `t` is another port's transport (see
    /// [one port](self#one-port)).
    ///
    /// # Examples
    ///
    /// ```
    /// # use std::net::SocketAddr;
    /// # use std::time::Duration;
    /// # use twine::request::{Outcome, Requests, RetryPolicy};
    /// # use twine::{DatagramProtocol, ListenOptions, UdpTransport};
    /// # struct Client { requests: Requests<Client, u8>, cancelled: bool }
    /// # impl DatagramProtocol for Client {
    /// #     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    /// # }
    /// # let mut sim = twine::testing::Simulation::new(1)?;
    /// # let policy = RetryPolicy::new(3, Duration::from_secs(1));
    /// # let client = Client { requests: Requests::new(policy, 8, |me: &mut Client| &mut me.requests)?, cancelled: false };
    /// # let port = sim.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), client)?;
    /// let server: SocketAddr = "127.0.0.1:9".parse()?;
    /// sim.with_port(&port, |c, t| {
    ///     let id = c.requests.send(t, server, 1, b"\x01ping", |me: &mut Client, _t, outcome| {
    ///         me.cancelled = matches!(outcome, Outcome::Cancelled);
    ///     })?;
    ///     assert!(c.requests.cancel(t, id));
    ///     assert!(!c.requests.cancel(t, id));
    ///     Ok::<_, twine::Error>(())
    /// })??;
    /// sim.advance(Duration::from_secs(5))?;
    /// assert!(sim.with_port(&port, |c, _| c.cancelled)?);
    /// assert_eq!(sim.sent().len(), 1);
    /// # Ok::<(), Box<dyn std::error::Error>>(())
    /// ```
    pub fn cancel(&mut self, t: &mut UdpTransport<'_>, id: RequestId) -> bool {
        if !self.serves(t) {
            return false;
        }
        match self.remove(t, id) {
            Some(entry) => {
                deliver(t, entry.on_done, Outcome::Cancelled);
                true
            }
            None => false,
        }
    }

    /// Whether a request is outstanding: sent, and not finished.
    ///
    /// # Examples
    ///
    /// See [`RequestId`].
    pub fn is_pending(&self, id: RequestId) -> bool {
        self.by_id.contains_key(&id)
    }

    /// The outstanding requests: sent, and not finished.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::request::{Requests, RetryPolicy};
    /// # struct Client { requests: Requests<Client, u16> }
    /// let policy = RetryPolicy::new(3, Duration::from_secs(1));
    /// let table = Requests::new(policy, 16, |me: &mut Client| &mut me.requests)?;
    /// assert_eq!((table.len(), table.limit()), (0, 16));
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    /// Whether no request is outstanding.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::request::{Requests, RetryPolicy};
    /// # struct Client { requests: Requests<Client, u16> }
    /// let policy = RetryPolicy::new(3, Duration::from_secs(1));
    /// assert!(Requests::new(policy, 16, |me: &mut Client| &mut me.requests)?.is_empty());
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }

    /// The most requests outstanding at once.
    ///
    /// # Examples
    ///
    /// See [`len`](Self::len).
    pub fn limit(&self) -> usize {
        self.limit
    }

    /// The policy the requests follow.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// use twine::request::{Requests, RetryPolicy};
    /// # struct Client { requests: Requests<Client, u16> }
    /// let policy = RetryPolicy::new(3, Duration::from_secs(1));
    /// let table = Requests::new(policy, 16, |me: &mut Client| &mut me.requests)?;
    /// assert_eq!(table.policy().tries(), 3);
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// Whether `t` is the transport of the port this table's requests were sent through.
    fn serves(&self, t: &UdpTransport<'_>) -> bool {
        self.port.is_some_and(|(key, _)| key == t.core.key)
    }

    /// Removes a request and cancels its timer.
    fn remove(&mut self, t: &mut UdpTransport<'_>, id: RequestId) -> Option<Entry<P, K>> {
        let mut entry = self.by_id.remove(&id)?;
        let peer = matched(entry.peer);
        self.by_key.remove(&(peer, entry.key.clone()));
        if let Some(ids) = self.by_peer.get_mut(&peer) {
            ids.remove(&id);
            if ids.is_empty() {
                self.by_peer.remove(&peer);
            }
        }
        if let Some(timer) = entry.timer.take() {
            t.cancel(timer);
        }
        Some(entry)
    }

    fn finish_peer(
        &mut self,
        t: &mut UdpTransport<'_>,
        peer: SocketAddr,
        outcome: impl Fn() -> Outcome,
    ) -> usize {
        if !self.serves(t) {
            return 0;
        }
        let Some(ids) = self.by_peer.get(&matched(peer)) else {
            return 0;
        };
        let ids: Vec<RequestId> = ids.iter().copied().collect();
        for &id in &ids {
            if let Some(entry) = self.remove(t, id) {
                deliver(t, entry.on_done, outcome());
            }
        }
        ids.len()
    }

    /// The timer of request `id` fired: resend it, or finish it if that was the last try.
    /// Returns the completion to run, if it finished.
    fn timed_out(
        &mut self,
        t: &mut UdpTransport<'_>,
        id: RequestId,
    ) -> Option<(OnDone<P>, Outcome)> {
        let entry = self.by_id.get_mut(&id)?;
        entry.timer = None;
        if entry.tries >= self.policy.tries {
            let tries = entry.tries;
            let entry = self.remove(t, id)?;
            return Some((entry.on_done, Outcome::TimedOut { tries }));
        }
        let timeout = self.policy.after(entry.timeout);
        let armed = arm(self.access, t, id, timeout);
        let entry = self.by_id.get_mut(&id)?;
        entry.tries += 1;
        entry.timeout = timeout;
        let failed = match armed {
            Ok(timer) => {
                entry.timer = Some(timer);
                match t.write(&entry.data, entry.peer) {
                    Ok(()) => None,
                    Err(e) if is_refusal(&e) => Some(Outcome::Refused),
                    Err(e) => {
                        log::debug!("try {} to {}: {e}", entry.tries, entry.peer);
                        None
                    }
                }
            }
            Err(e) => Some(Outcome::Failed(e)),
        };
        let outcome = failed?;
        let entry = self.remove(t, id)?;
        Some((entry.on_done, outcome))
    }
}

/// Schedules the timeout of request `id`, `delay` from now.
fn arm<P: 'static, K: Eq + Hash + Clone + 'static>(
    access: Access<P, K>,
    t: &mut UdpTransport<'_>,
    id: RequestId,
    delay: Duration,
) -> Result<DelayedCall> {
    t.call_later(delay, move |me: &mut P, t| {
        if let Some((on_done, outcome)) = access(me).timed_out(t, id) {
            on_done(me, t, outcome);
        }
    })
}

/// Runs a completion on the next turn, in a port timer (dropped if the port is stopping).
fn deliver<P: 'static>(t: &mut UdpTransport<'_>, on_done: OnDone<P>, outcome: Outcome) {
    let delivered = t.call_later(Duration::ZERO, move |me: &mut P, t| on_done(me, t, outcome));
    if let Err(e) = delivered {
        log::debug!("a request's completion is dropped: {e}");
    }
}
