//! The in-memory network behind [`Simulation`](super::Simulation): sockets bound to
//! addresses, datagrams in flight with their arrival times, per-link loss, duplication,
//! reordering and delay drawn from one seeded generator, and the kernel's side of a
//! socket as the port sees it (receive queue, pending error, error queue, drop count).
//!
//! It answers what the kernel would: a read of an empty queue is `EAGAIN`; an ICMP
//! refusal leaves the error pending for the next call and, with the error queue on, an
//! entry naming the destination, and reading that entry clears the pending error as the
//! kernel does; a `sendmmsg` that meets a pending error after its first message returns
//! the count and loses the error. Scripted answers come first.

use std::cell::Cell;
use std::collections::{BTreeMap, HashMap, VecDeque};
use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::rc::Rc;
use std::time::{Duration, Instant};

use crate::reactor::token::PortKey;
use crate::sys::QueuedError;

use super::{Link, Sent};

mod calls;

pub(crate) use calls::MemSocket;

/// What a socket's receive queue holds at most, in payload bytes plus [`RX_OVERHEAD`]
/// per datagram (about Linux's default receive buffer); past it arrivals are dropped
/// and counted, as the kernel counts them.
pub(crate) const RX_LIMIT: usize = 212_992;
/// What each queued datagram costs against [`RX_LIMIT`] besides its payload.
const RX_OVERHEAD: usize = 256;
/// The first port number handed out for port 0.
const FIRST_EPHEMERAL: u16 = 49_152;

/// A scripted answer for the next call of one kind (read or send) on one socket.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Answer {
    /// The call fails with this errno.
    Error(i32),
    /// The call handles at most this many datagrams (then `EAGAIN` for a read with
    /// nothing handled, a short count for a send).
    Limit(usize),
}

/// The kernel's side of one in-memory socket.
#[derive(Debug)]
struct SockState {
    key: PortKey,
    /// Sender, bytes, the drop count when it was queued, and the address it was sent to.
    rx: VecDeque<(SocketAddr, Vec<u8>, u32, SocketAddr)>,
    rx_charge: usize,
    rx_limit: usize,
    pending_error: Option<i32>,
    error_queue_on: bool,
    error_queue: VecDeque<QueuedError>,
    peer: Option<SocketAddr>,
    drops: u32,
    send_blocked: bool,
    want_writable: bool,
    recv_script: VecDeque<Answer>,
    send_script: VecDeque<Answer>,
    broadcast: bool,
    /// Each datagram read tells the address it was sent to (`IP_PKTINFO`).
    arrival: bool,
}

impl SockState {
    /// What the socket's port has to do now, if anything: read (datagrams, a scripted
    /// answer, or an error to take), send (it asked to, and its buffer has room).
    fn readiness(&self) -> Option<Readiness> {
        let error = self.pending_error.is_some() || !self.error_queue.is_empty();
        let readable = !self.rx.is_empty() || !self.recv_script.is_empty() || error;
        let writable = self.want_writable && !self.send_blocked;
        (readable || writable).then_some(Readiness {
            key: self.key,
            readable,
            writable,
            error,
        })
    }
}

/// A datagram on its way.
#[derive(Debug)]
struct Flight {
    from: SocketAddr,
    to: SocketAddr,
    data: Vec<u8>,
}

/// Readiness of one socket for a reactor turn.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Readiness {
    pub(crate) key: PortKey,
    pub(crate) readable: bool,
    pub(crate) writable: bool,
    pub(crate) error: bool,
}

/// The whole network: sockets, links, datagrams in flight, the log of every write.
#[derive(Debug)]
pub(crate) struct Network {
    pub(crate) clock: Rc<Cell<Instant>>,
    /// Virtual time zero.
    start: Instant,
    rng: SplitMix,
    /// Ordered, so that sockets are served in the same order on every run.
    sockets: BTreeMap<SocketAddr, SockState>,
    /// Datagrams in flight by arrival time, then by when they were sent.
    flights: BTreeMap<(Instant, u64), Flight>,
    next_flight: u64,
    links: HashMap<(SocketAddr, SocketAddr), Link>,
    pub(crate) default_link: Link,
    pub(crate) refuse_unbound: bool,
    pub(crate) sent: Vec<Sent>,
    pub(crate) lost: u64,
    pub(crate) duplicated: u64,
    next_port: u16,
}

impl Network {
    pub(crate) fn new(seed: u64, clock: Rc<Cell<Instant>>) -> Network {
        Network {
            start: clock.get(),
            clock,
            rng: SplitMix(seed),
            sockets: BTreeMap::new(),
            flights: BTreeMap::new(),
            next_flight: 0,
            links: HashMap::new(),
            default_link: Link::default(),
            refuse_unbound: false,
            sent: Vec::new(),
            lost: 0,
            duplicated: 0,
            next_port: FIRST_EPHEMERAL,
        }
    }

    fn now(&self) -> Instant {
        self.clock.get()
    }

    /// Binds a socket for port `key` at `addr` (port 0: the next free one from 49152);
    /// `EADDRINUSE` if a socket holds that address (or a wildcard of its port).
    pub(crate) fn bind(&mut self, addr: SocketAddr, key: PortKey) -> io::Result<SocketAddr> {
        let mut addr = addr;
        if addr.port() == 0 {
            let mut tries = 0u32;
            loop {
                let port = self.next_port;
                self.next_port = self.next_port.checked_add(1).unwrap_or(FIRST_EPHEMERAL);
                addr.set_port(port);
                if !self.taken(addr) {
                    break;
                }
                tries += 1;
                if tries > u32::from(u16::MAX) {
                    return Err(io::Error::from_raw_os_error(libc::EADDRINUSE));
                }
            }
        } else if self.taken(addr) {
            return Err(io::Error::from_raw_os_error(libc::EADDRINUSE));
        }
        self.sockets.insert(
            addr,
            SockState {
                key,
                rx: VecDeque::new(),
                rx_charge: 0,
                rx_limit: RX_LIMIT,
                pending_error: None,
                error_queue_on: false,
                error_queue: VecDeque::new(),
                peer: None,
                drops: 0,
                send_blocked: false,
                want_writable: false,
                recv_script: VecDeque::new(),
                send_script: VecDeque::new(),
                broadcast: false,
                arrival: false,
            },
        );
        Ok(addr)
    }

    fn taken(&self, addr: SocketAddr) -> bool {
        let wildcard = SocketAddr::new(unspecified(&addr), addr.port());
        self.sockets.contains_key(&addr)
            || self.sockets.contains_key(&wildcard)
            || (addr.ip().is_unspecified()
                && self
                    .sockets
                    .keys()
                    .any(|a| a.port() == addr.port() && a.is_ipv4() == addr.is_ipv4()))
    }

    pub(crate) fn unbind(&mut self, addr: SocketAddr) {
        self.sockets.remove(&addr);
    }

    /// The socket that receives what is sent to `to`: bound to it, or to its port on the
    /// wildcard address of its family.
    fn receiver(&self, to: SocketAddr) -> Option<SocketAddr> {
        if self.sockets.contains_key(&to) {
            return Some(to);
        }
        let wildcard = SocketAddr::new(unspecified(&to), to.port());
        self.sockets.contains_key(&wildcard).then_some(wildcard)
    }

    pub(crate) fn set_link(&mut self, from: SocketAddr, to: SocketAddr, link: Link) {
        self.links.insert((from, to), link);
    }

    /// Puts a datagram on its way from `from` to `to` as the link between them says (lost,
    /// duplicated, delayed, held back), and logs it when `log` (a write, not an injection).
    pub(crate) fn transmit(&mut self, from: SocketAddr, to: SocketAddr, data: &[u8], log: bool) {
        let now = self.now();
        if log {
            self.sent.push(Sent {
                at: now.duration_since(self.start),
                from,
                to,
                data: data.to_vec(),
            });
        }
        let link = self
            .links
            .get(&(from, to))
            .copied()
            .unwrap_or(self.default_link);
        if link.loss > 0.0 && self.rng.chance(link.loss) {
            self.lost += 1;
            return;
        }
        let copies = if link.duplicate > 0.0 && self.rng.chance(link.duplicate) {
            self.duplicated += 1;
            2
        } else {
            1
        };
        for _ in 0..copies {
            // Saturating: a link's delay may be any `Duration`, up to the clock's end.
            let mut delay = link.delay.saturating_add(self.rng.below(link.jitter));
            if link.reorder > 0.0 && self.rng.chance(link.reorder) {
                // Held back behind what is sent after it within a delay and a jitter.
                delay = delay
                    .saturating_add(link.delay)
                    .saturating_add(link.jitter)
                    .saturating_add(Duration::from_nanos(1));
            }
            self.launch(
                crate::reactor::timer::deadline_after(now, delay),
                Flight {
                    from,
                    to,
                    data: data.to_vec(),
                },
            );
        }
    }

    fn launch(&mut self, at: Instant, flight: Flight) {
        let id = self.next_flight;
        self.next_flight += 1;
        self.flights.insert((at, id), flight);
    }

    /// When the next datagram in flight arrives.
    pub(crate) fn next_arrival(&self) -> Option<Instant> {
        self.flights.first_key_value().map(|(&(at, _), _)| at)
    }

    /// Hands every datagram due by now to its socket (or drops it, or refuses it).
    pub(crate) fn deliver_due(&mut self) {
        let now = self.now();
        while self.next_arrival().is_some_and(|at| at <= now) {
            if let Some((_, flight)) = self.flights.pop_first() {
                self.arrive(flight);
            }
        }
    }

    fn arrive(&mut self, f: Flight) {
        // A connected socket takes its peer's datagrams only: for anyone else's, the
        // kernel finds no socket, as if none were bound (and answers with a refusal).
        let taker = self
            .receiver(f.to)
            .filter(|at| self.sockets[at].peer.is_none_or(|p| p == f.from));
        let Some(at) = taker else {
            if self.refuse_unbound {
                self.icmp_error(f.from, f.to, libc::ECONNREFUSED);
            }
            return;
        };
        let Some(s) = self.sockets.get_mut(&at) else {
            return;
        };
        let charge = f.data.len() + RX_OVERHEAD;
        if s.rx_charge + charge > s.rx_limit {
            s.drops = s.drops.wrapping_add(1);
            return;
        }
        s.rx_charge += charge;
        s.rx.push_back((f.from, f.data, s.drops, f.to));
    }

    /// Queues a datagram at the socket bound to `to` now, as if it had just arrived.
    pub(crate) fn inject(&mut self, to: SocketAddr, from: SocketAddr, data: &[u8]) {
        self.arrive(Flight {
            from,
            to,
            data: data.to_vec(),
        });
    }

    /// An ICMP error at the socket that sends from `at` (bound to it, or to its port on the
    /// wildcard address), about a datagram it sent to `about`, as Linux's `__udp4_lib_err`/`__udp6_lib_err` take it:
    ///
    /// - a socket connected to another address than `about` is not the one the error is
    ///   for (the kernel matches the offending datagram's addresses), and hears nothing;
    /// - with the error queue on (`IP_RECVERR`), an entry naming `about` is queued and the
    ///   error is pending for the next call, connected or not;
    /// - else only a connected socket hears of it, and only of a hard error (port or
    ///   protocol unreachable, fragmentation needed): host and network unreachable are
    ///   soft errors, which the kernel drops there;
    /// - an unconnected socket without the error queue hears nothing.
    pub(crate) fn icmp_error(&mut self, at: SocketAddr, about: SocketAddr, errno: i32) {
        // The socket that sent from `at`: bound to it, or to its port on the wildcard
        // address (whose datagrams leave from a concrete address, see `source`).
        let Some(s) = self.receiver(at).and_then(|a| self.sockets.get_mut(&a)) else {
            return;
        };
        if s.peer.is_some_and(|peer| peer != about) {
            return;
        }
        if s.error_queue_on {
            s.error_queue.push_back(QueuedError {
                dest: Some(about),
                errno,
                reporter: Some(about.ip()),
                icmp: true,
            });
            s.pending_error = Some(errno);
        } else if s.peer.is_some() && crate::sys::is_hard_icmp_error(errno) {
            s.pending_error = Some(errno);
        }
    }

    /// Runs `f` on the socket bound to `at`; false if there is none.
    fn with_socket(&mut self, at: SocketAddr, f: impl FnOnce(&mut SockState)) -> bool {
        self.sockets.get_mut(&at).map(f).is_some()
    }

    pub(crate) fn add_drops(&mut self, at: SocketAddr, n: u32) -> bool {
        self.with_socket(at, |s| s.drops = s.drops.wrapping_add(n))
    }

    pub(crate) fn script(&mut self, at: SocketAddr, recv: bool, answer: Answer) -> bool {
        self.with_socket(at, |s| {
            let script = if recv {
                &mut s.recv_script
            } else {
                &mut s.send_script
            };
            script.push_back(answer);
        })
    }

    pub(crate) fn set_send_blocked(&mut self, at: SocketAddr, blocked: bool) -> bool {
        self.with_socket(at, |s| s.send_blocked = blocked)
    }

    pub(crate) fn set_rx_limit(&mut self, at: SocketAddr, limit: usize) -> bool {
        self.with_socket(at, |s| s.rx_limit = limit)
    }

    pub(crate) fn queued(&self, at: SocketAddr) -> Option<usize> {
        self.sockets.get(&at).map(|s| s.rx.len())
    }

    /// Whether any socket has something for its port to do, or a datagram is due.
    pub(crate) fn any_ready(&self) -> bool {
        let now = self.now();
        self.next_arrival().is_some_and(|at| at <= now)
            || self.sockets.values().any(|s| s.readiness().is_some())
    }

    /// Every socket with something for its port to do (level-triggered).
    pub(crate) fn readiness(&self, into: &mut Vec<Readiness>) {
        into.extend(self.sockets.values().filter_map(SockState::readiness));
    }

    fn state(&mut self, at: SocketAddr) -> io::Result<&mut SockState> {
        self.sockets
            .get_mut(&at)
            .ok_or_else(|| io::Error::from_raw_os_error(libc::EBADF))
    }
}

/// The address a socket bound to `at` sends from when it sends to `to`: its own, or for
/// a wildcard bind the loopback address of its family.
fn source(at: SocketAddr, to: SocketAddr) -> SocketAddr {
    if !at.ip().is_unspecified() {
        return at;
    }
    let ip = match to.ip() {
        IpAddr::V4(_) => IpAddr::V4(Ipv4Addr::LOCALHOST),
        IpAddr::V6(_) => IpAddr::V6(Ipv6Addr::LOCALHOST),
    };
    SocketAddr::new(ip, at.port())
}

fn unspecified(addr: &SocketAddr) -> IpAddr {
    match addr {
        SocketAddr::V4(_) => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
        SocketAddr::V6(_) => IpAddr::V6(Ipv6Addr::UNSPECIFIED),
    }
}

/// SplitMix64: a small, well-mixed, seeded generator (the draws of one seed are the same
/// on every run and platform).
#[derive(Debug, Clone)]
pub(crate) struct SplitMix(pub(crate) u64);

impl SplitMix {
    pub(crate) fn next_u64(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// True with probability `p` (0.0 ..= 1.0).
    fn chance(&mut self, p: f64) -> bool {
        ((self.next_u64() >> 11) as f64 / (1u64 << 53) as f64) < p
    }

    /// A duration uniformly in `0..=max`.
    fn below(&mut self, max: Duration) -> Duration {
        let nanos = u64::try_from(max.as_nanos()).unwrap_or(u64::MAX);
        if nanos == 0 {
            return Duration::ZERO;
        }
        Duration::from_nanos(self.next_u64() % nanos.saturating_add(1))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sys::RecvBatch;

    fn net_with_socket() -> (Network, SocketAddr) {
        let mut net = Network::new(1, Rc::new(Cell::new(Instant::now())));
        let key = PortKey {
            index: 0,
            generation: 0,
        };
        let at = net.bind("127.0.0.1:0".parse().unwrap(), key).unwrap();
        (net, at)
    }

    /// Refusals reach the socket that sent, bound to the wildcard address too (its
    /// datagrams leave from 127.0.0.1), for a datagram to an address where nothing
    /// listens and for one to a socket connected to another peer (which does not take
    /// it).
    #[test]
    fn refusals_reach_a_wildcard_sender_and_cover_ports_connected_elsewhere() {
        let mut net = Network::new(1, Rc::new(Cell::new(Instant::now())));
        net.refuse_unbound = true;
        let key = |index| PortKey {
            index,
            generation: 0,
        };
        let wild = net.bind("0.0.0.0:0".parse().unwrap(), key(0)).unwrap();
        net.set_error_queue(wild, true).unwrap();
        let busy = net.bind("127.0.0.2:0".parse().unwrap(), key(1)).unwrap();
        net.connect(busy, "127.0.0.3:9".parse().unwrap()).unwrap();
        let nobody: SocketAddr = "127.0.0.9:9".parse().unwrap();
        for to in [nobody, busy] {
            net.send_one(wild, b"x", Some(to), None).unwrap();
            net.deliver_due();
            let q = net.read_queued_error(wild).unwrap().expect("refused");
            assert_eq!((q.dest, q.errno), (Some(to), libc::ECONNREFUSED));
        }
        assert_eq!(net.queued(busy), Some(0));
    }

    /// A read into a batch with room for fewer datagrams than asked for dequeues only
    /// what the batch took: the rest stays queued, in order, for the next read.
    #[test]
    fn recv_dequeues_only_what_the_batch_holds() {
        let (mut net, at) = net_with_socket();
        let from: SocketAddr = "127.0.0.2:9".parse().unwrap();
        for i in 0..3u8 {
            net.inject(at, from, &[i]);
        }
        let mut batch = RecvBatch::default();
        batch.reserve(2, 16);
        assert_eq!(net.recv(at, &mut batch, 3, 16).unwrap(), 2);
        let first: Vec<Vec<u8>> = batch.datagrams().map(|d| d.data.to_vec()).collect();
        assert_eq!(first, [[0], [1]]);
        assert_eq!(net.queued(at), Some(1));
        assert_eq!(net.recv(at, &mut batch, 3, 16).unwrap(), 1);
        assert_eq!(batch.get(0).data, [2]);
        let err = net.recv(at, &mut batch, 3, 16).unwrap_err();
        assert_eq!(err.raw_os_error(), Some(libc::EAGAIN));
    }

    /// ICMP errors as Linux takes them for UDP: a connected socket without the error
    /// queue hears only hard errors about its peer; with the queue on, every error is
    /// queued and pending; a socket connected elsewhere hears nothing.
    #[test]
    fn icmp_errors_follow_the_kernel() {
        let (mut net, at) = net_with_socket();
        let peer: SocketAddr = "127.0.0.3:9".parse().unwrap();
        let other: SocketAddr = "127.0.0.4:9".parse().unwrap();
        net.connect(at, peer).unwrap();
        for soft in [libc::EHOSTUNREACH, libc::ENETUNREACH] {
            net.icmp_error(at, peer, soft);
            assert!(net.take_error(at).unwrap().is_none(), "soft {soft}");
        }
        for hard in [libc::ECONNREFUSED, libc::EMSGSIZE, libc::ENOPROTOOPT] {
            net.icmp_error(at, peer, hard);
            let e = net
                .take_error(at)
                .unwrap()
                .expect("hard errors are pending");
            assert_eq!(e.raw_os_error(), Some(hard));
        }
        net.icmp_error(at, other, libc::ECONNREFUSED);
        assert!(net.take_error(at).unwrap().is_none(), "not about the peer");

        net.set_error_queue(at, true).unwrap();
        net.icmp_error(at, peer, libc::EHOSTUNREACH);
        let e = net
            .take_error(at)
            .unwrap()
            .expect("pending with IP_RECVERR");
        assert_eq!(e.raw_os_error(), Some(libc::EHOSTUNREACH));
        let q = net.read_queued_error(at).unwrap().expect("queued");
        assert_eq!((q.dest, q.errno), (Some(peer), libc::EHOSTUNREACH));
        net.icmp_error(at, other, libc::EHOSTUNREACH);
        assert!(
            net.read_queued_error(at).unwrap().is_none(),
            "not about the peer"
        );
    }
}
