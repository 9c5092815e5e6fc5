//! `UdpPort<P>`: a socket, its protocol, its send queue, its counters.
//!
//! The port is split into disjoint fields (`protocol`, `core`, `ring`) so that a callback
//! can be handed the protocol, a transport over the core, and a slice of the receive batch
//! at the same time: the datagram is borrowed, never copied. The receive batch and the
//! send batch belong to the reactor and are lent to one port at a time, while it reads:
//! their memory does not grow with the number of ports.

use std::any::{Any, TypeId};
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use mio::net::UdpSocket;
use mio::{Interest, Registry};

use crate::error::{Error, Result};
use crate::protocol::{DatagramProtocol, short_type_name};
use crate::reactor::Reactor;
use crate::sys::{self, ErrorClass, RecvBatch, SendBatch};
use crate::token::PortKey;
use crate::udp::addr::{max_datagram, same_family};
use crate::udp::options::ListenOptions;
use crate::udp::transport::UdpTransport;

/// A port's counters, readable at any time with
/// [`UdpTransport::stats`] or [`Reactor::port_stats`](crate::Reactor::port_stats).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PortStats {
    /// Datagrams delivered to `datagram_received`.
    pub datagrams_received: u64,
    /// Payload bytes delivered to `datagram_received`.
    pub bytes_received: u64,
    /// Datagrams handed to the kernel.
    pub datagrams_sent: u64,
    /// Payload bytes handed to the kernel.
    pub bytes_sent: u64,
    /// Datagrams longer than the receive buffer, dropped rather than delivered cut short.
    pub truncated: u64,
    /// Datagrams the kernel refused to send (other than a full buffer).
    pub send_errors: u64,
    /// Datagrams dropped because the send queue was at its bound, or left in the queue
    /// when the port closed.
    pub send_dropped: u64,
    /// Datagrams queued because the kernel's send buffer was full.
    pub send_queued: u64,
    /// Errors read from the socket other than refusals (e.g. an ICMP host unreachable).
    pub recv_errors: u64,
    /// Refusals (ICMP port unreachable) reported to a connected port, each with one
    /// `connection_refused` call. A refusal met by a send (rather than read by the
    /// reactor) also means that datagram was not sent.
    pub refused: u64,
    /// Datagrams the kernel dropped before the port could read them (its receive buffer
    /// was full), since the port opened: read with `SO_RXQ_OVFL` as datagrams arrive and
    /// with `SO_MEMINFO` whenever the counters are read (Linux; 0 elsewhere).
    pub kernel_dropped: u64,
    /// Errors the kernel reported for earlier datagrams of an unconnected port (ICMP
    /// unreachable, read from its error queue), each passed to `error_received`.
    pub unreachable: u64,
}

impl fmt::Display for PortStats {
    /// One line for logs: what came in, what went out, and what was lost where.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {} datagrams ({} bytes), sent {} ({} bytes); dropped: {} truncated, \
             {} by the kernel, {} at the send queue; {} send errors, {} receive errors, \
             {} refused, {} unreachable, {} queued",
            self.datagrams_received,
            self.bytes_received,
            self.datagrams_sent,
            self.bytes_sent,
            self.truncated,
            self.kernel_dropped,
            self.send_dropped,
            self.send_errors,
            self.recv_errors,
            self.refused,
            self.unreachable,
            self.send_queued,
        )
    }
}

/// The boxed closure of a port-scoped timer, as stored (type-erased) in the reactor's queue.
pub(crate) type PortTimerFn<P> = Box<dyn FnMut(&mut P, &mut UdpTransport<'_>)>;

/// A one-shot port timer closure as the repeating kind the queue stores; it does nothing
/// if it is ever called again.
pub(crate) fn once<P>(
    f: impl FnOnce(&mut P, &mut UdpTransport<'_>) + 'static,
) -> impl FnMut(&mut P, &mut UdpTransport<'_>) + 'static {
    let mut f = Some(f);
    move |p, t| {
        if let Some(f) = f.take() {
            f(p, t)
        }
    }
}

/// What the reactor needs of a port, whatever its protocol type.
pub(crate) trait Port: Any {
    fn core(&self) -> &PortCore;
    fn core_mut(&mut self) -> &mut PortCore;
    /// Runs `start_protocol`.
    fn start(&mut self, r: &mut Reactor);
    /// Handles readiness (or a left-over budget when both are false and `resume` is set).
    /// Returns whether data may be left to read.
    fn on_ready(&mut self, r: &mut Reactor, readable: bool, writable: bool) -> bool;
    /// Runs a port-scoped timer's closure.
    fn fire_timer(&mut self, r: &mut Reactor, action: &mut Box<dyn Any>);
    /// Runs `stop_protocol`, flushes what it can, and logs the close.
    fn shut_down(&mut self, r: &mut Reactor);
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The protocol-independent state of a port: what the transport works on.
#[derive(Debug)]
pub(crate) struct PortCore {
    pub(crate) socket: UdpSocket,
    pub(crate) key: PortKey,
    pub(crate) local: SocketAddr,
    /// `local` is IPv4 (the family every destination must have).
    local_is_v4: bool,
    /// The longest datagram UDP carries in `local`'s family.
    max_send: usize,
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) prefix: String,
    pub(crate) protocol_type: (TypeId, &'static str),
    /// Stop asked for: no more reads; torn down on a later turn.
    pub(crate) closing: bool,
    /// Sends that met ECONNREFUSED: `connection_refused` is called once for each, after the
    /// running hook returns.
    pub(crate) refused_pending: u32,
    /// Errors for the protocol's `error_received`, met where it cannot be called (inside
    /// a hook, or while sending gathered writes); bounded by `ERRORS_KEPT`.
    errors: VecDeque<(Error, SocketAddr)>,
    /// The kernel's error queue is on (`IP_RECVERR`): ICMP errors name their destination.
    error_queue: bool,
    /// The error queue has entries to read (a call met the error they raised).
    error_queue_pending: bool,
    /// The message of a panic caught in a hook.
    pub(crate) panic: Option<String>,
    pub(crate) stats: PortStats,
    pub(crate) max_packet_size: usize,
    read_budget: usize,
    read_budget_bytes: usize,
    /// Datagrams read or sent per system call.
    pub(crate) batch_size: usize,
    /// Gathered writes go out segmented (`UDP_SEGMENT`); cleared for good the first time
    /// the kernel refuses a segmented message.
    segmentation: bool,
    /// Writes gathered while a batch of received datagrams is dispatched (the reactor's
    /// send batch, lent for that time); sent with one `sendmmsg`.
    out: Option<Box<SendBatch>>,
    queue: VecDeque<(Box<[u8]>, SocketAddr)>,
    queued_bytes: usize,
    queue_limit: usize,
    /// Flow control marks (bytes in the queue): paused past `write_high`, resumed at
    /// `write_low`.
    write_high: usize,
    write_low: usize,
    /// The queue went past `write_high` and has not drained to `write_low` since.
    write_paused: bool,
    /// What the protocol was last told (`pause_producing` called, not yet resumed).
    told_paused: bool,
    writable_registered: bool,
    last_truncation_warning: Option<Instant>,
    /// Datagrams longer than the receive buffer go to `datagram_truncated` (else dropped).
    deliver_truncated: bool,
    /// The socket's drop count when last looked at (`SO_RXQ_OVFL`/`SO_MEMINFO`); `None`
    /// where the OS does not tell.
    drops_seen: Option<u32>,
}

/// A port: its protocol, its core, and (while it reads) the reactor's receive batch.
pub(crate) struct UdpPort<P> {
    protocol: P,
    core: PortCore,
    ring: Option<Box<RecvBatch>>,
}

impl<P: DatagramProtocol> UdpPort<P> {
    pub(crate) fn new(
        socket: UdpSocket,
        key: PortKey,
        local: SocketAddr,
        protocol: P,
        opts: &ListenOptions,
    ) -> Self {
        let prefix = protocol.log_prefix().to_owned();
        UdpPort {
            protocol,
            ring: None,
            core: PortCore {
                socket,
                key,
                local,
                local_is_v4: local.is_ipv4(),
                max_send: max_datagram(&local),
                peer: None,
                prefix,
                protocol_type: (TypeId::of::<P>(), short_type_name::<P>()),
                closing: false,
                refused_pending: 0,
                errors: VecDeque::new(),
                error_queue: false,
                error_queue_pending: false,
                panic: None,
                stats: PortStats::default(),
                max_packet_size: opts.max_packet_size,
                read_budget: opts.read_budget,
                read_budget_bytes: opts.read_budget_bytes,
                batch_size: opts.batch_size,
                segmentation: opts.segmentation,
                out: None,
                queue: VecDeque::new(),
                queued_bytes: 0,
                queue_limit: opts.send_queue_limit,
                write_high: opts.write_high.min(opts.send_queue_limit),
                write_low: opts
                    .write_low
                    .min(opts.write_high.min(opts.send_queue_limit)),
                write_paused: false,
                told_paused: false,
                writable_registered: false,
                last_truncation_warning: None,
                deliver_truncated: opts.deliver_truncated,
                drops_seen: None,
            },
        }
        .counting_drops()
    }

    /// Asks the kernel for its drop count on every datagram once any is dropped, and
    /// notes where the count stands (an adopted socket may have dropped already).
    fn counting_drops(mut self) -> Self {
        let fd = self.core.socket.as_raw_fd();
        if let Err(e) = sys::enable_drop_count(fd)
            && e.kind() != std::io::ErrorKind::Unsupported
        {
            debug!(
                "{} on {}: SO_RXQ_OVFL: {e}",
                self.core.prefix, self.core.local
            );
        }
        self.core.drops_seen = sys::drops_or_log(fd);
        self.core.set_error_queue(true);
        self
    }

    /// Runs `f` with the protocol and a transport from outside the hooks
    /// ([`Reactor::with_port`]), with the hooks' panic and refusal handling.
    pub(crate) fn call<R>(
        &mut self,
        r: &mut Reactor,
        f: impl FnOnce(&mut P, &mut UdpTransport<'_>) -> R,
    ) -> Option<R> {
        self.guarded(r, "with_port closure", |p, t, _| f(p, t))
    }

    /// Runs `f` with the protocol and a transport, catching a panic: the panic is logged
    /// with the port's address and closes the port. A refusal met by a write inside `f`
    /// is reported to `connection_refused` afterwards.
    fn guarded<R>(
        &mut self,
        r: &mut Reactor,
        hook: &'static str,
        f: impl FnOnce(&mut P, &mut UdpTransport<'_>, &mut Option<Box<RecvBatch>>) -> R,
    ) -> Option<R> {
        let (protocol, core, ring) = (&mut self.protocol, &mut self.core, &mut self.ring);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut t = UdpTransport::new(core, r);
            let out = f(protocol, &mut t, ring);
            report_pending(protocol, &mut t);
            out
        }));
        match outcome {
            Ok(out) => Some(out),
            Err(panic) => {
                self.core.on_panic(hook, &panic_message(&*panic));
                None
            }
        }
    }
}

/// Calls `connection_refused` for refusals that writes met while a hook ran, and
/// `error_received` for the errors met since (reading the kernel's error queue first if a
/// call found it had entries). Bounded, since those hooks may write and meet more.
fn report_pending<P: DatagramProtocol>(protocol: &mut P, t: &mut UdpTransport<'_>) {
    while t.core.refused_pending > 0 {
        t.core.refused_pending -= 1;
        protocol.connection_refused(t);
    }
    if t.core.error_queue_pending {
        t.core.read_error_queue();
    }
    // Flow control: tell the protocol of a change since it was last told (a pause and
    // resume within one hook cancel out).
    if t.core.write_paused != t.core.told_paused {
        t.core.told_paused = t.core.write_paused;
        if t.core.write_paused {
            protocol.pause_producing(t);
        } else {
            protocol.resume_producing(t);
        }
    }
    for _ in 0..ERRORS_KEPT {
        let Some((error, addr)) = t.core.errors.pop_front() else {
            break;
        };
        protocol.error_received(t, &error, addr);
    }
}

/// The most errors kept for `error_received` at once; more are counted, and logged at
/// debug, but not passed on.
const ERRORS_KEPT: usize = 256;

/// The most entries read from the kernel's error queue at once.
const ERROR_QUEUE_READS: usize = 1024;

impl<P: DatagramProtocol> Port for UdpPort<P> {
    fn core(&self) -> &PortCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut PortCore {
        &mut self.core
    }

    fn start(&mut self, r: &mut Reactor) {
        self.guarded(r, "start_protocol", |p, t, _| p.start_protocol(t));
    }

    fn on_ready(&mut self, r: &mut Reactor, readable: bool, writable: bool) -> bool {
        if !writable && (!readable || self.core.closing) {
            return false;
        }
        if readable && !self.core.closing {
            // The reactor's batches, lent for this dispatch and given back even if a hook
            // panics (what was gathered before the panic is still sent).
            let (ring, out) = r.lend_batches(self.core.batch_size, self.core.max_packet_size);
            self.ring = Some(ring);
            self.core.out = Some(out);
        }
        let more = self
            .guarded(
                r,
                "datagram_received or connection_refused",
                |p, t, ring| {
                    if writable {
                        t.core.flush_queue();
                    }
                    match ring {
                        Some(ring) if !t.core.closing => read_batch(p, t, ring),
                        _ => false,
                    }
                },
            )
            .unwrap_or(false);
        if let (Some(ring), Some(out)) = (self.ring.take(), self.core.take_out()) {
            r.return_batches(ring, out);
        }
        more
    }

    fn fire_timer(&mut self, r: &mut Reactor, action: &mut Box<dyn Any>) {
        let Some(f) = action.downcast_mut::<PortTimerFn<P>>() else {
            // Checked when the timer was scheduled (and port keys are unique across
            // reactors), so this is a bug in twine: say so rather than panic in the loop.
            error!(
                "{} on {}: port timer of another protocol type skipped",
                self.core.prefix, self.core.local
            );
            return;
        };
        self.guarded(r, "timer", |p, t, _| f(p, t));
    }

    fn shut_down(&mut self, r: &mut Reactor) {
        self.core.closing = true;
        info!("({} Port {} Closed)", "UDP", self.core.local);
        self.guarded(r, "stop_protocol", |p, t, _| p.stop_protocol(t));
        self.core.flush_queue();
        let left = self.core.queue.len() as u64;
        if left > 0 {
            self.core.stats.send_dropped += left;
            debug!(
                "{} on {}: {left} queued datagrams dropped at close",
                self.core.prefix, self.core.local
            );
        }
        if let Some(now) = sys::drops_or_log(self.core.socket.as_raw_fd()) {
            self.core.note_drops(now);
        }
        info!(
            "{} on {} closed: {}",
            self.core.prefix, self.core.local, self.core.stats
        );
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Reads datagrams, a batch per system call, until the socket is drained or the budget
/// is spent, dispatching each batch and then sending the writes it gathered; returns
/// whether the budget ran out first (data may be left).
fn read_batch<P: DatagramProtocol>(
    p: &mut P,
    t: &mut UdpTransport<'_>,
    ring: &mut RecvBatch,
) -> bool {
    let (budget, budget_bytes) = (t.core.read_budget, t.core.read_budget_bytes);
    let (mut count, mut bytes) = (0, 0);
    while count < budget && bytes < budget_bytes {
        if must_stop(t) {
            return false;
        }
        let stops = t.reactor.stops_asked();
        let want = (budget - count).min(t.core.batch_size);
        let got = match ring.recv(&t.core.socket, want, t.core.max_packet_size) {
            Ok(got) => got,
            Err(e) => {
                count += 1;
                match sys::classify(&e) {
                    ErrorClass::WouldBlock => return false,
                    // An ICMP error for an earlier datagram: the error queue says which
                    // destination it was about.
                    _ if t.core.stale_error(&e) => report_pending(p, t),
                    ErrorClass::Refused => read_refused(p, t),
                    _ => {
                        t.core.stats.recv_errors += 1;
                        debug!("{} on {}: recv: {e}", t.core.prefix, t.core.local);
                    }
                }
                continue;
            }
        };
        for d in ring.datagrams() {
            count += 1;
            bytes += d.data.len();
            deliver(p, t, d);
            // `stop_listening`, `Reactor::stop` and closing a port by handle all change
            // the count: one comparison per datagram while nothing of the kind happens.
            if t.reactor.stops_asked() != stops && must_stop(t) {
                // Read but not delivered: the port is closing, as if they came later.
                break;
            }
        }
        if let Some(count) = ring.drop_count() {
            t.core.note_drops(count);
        }
        t.core.flush_out();
        report_pending(p, t);
        if got < want {
            // Fewer than asked for: the socket was drained, and the next datagram to
            // arrive raises a new readiness event.
            return false;
        }
    }
    true
}

/// Whether the port may deliver no more: it is closing, or the reactor is stopping.
fn must_stop(t: &UdpTransport<'_>) -> bool {
    t.core.closing || t.reactor.close_requested(t.core.key) || t.reactor.is_stopping()
}

/// Hands one received datagram to the protocol (or counts it, if cut short or from an
/// address that is not IP).
#[inline(always)]
fn deliver<P: DatagramProtocol>(p: &mut P, t: &mut UdpTransport<'_>, d: sys::Datagram<'_>) {
    // One arm per family, so that each builds only its own kind of address for the
    // call (merged, the two would go through a field-by-field copy of both layouts).
    match d.from {
        Some(from @ SocketAddr::V4(_)) => deliver_from(p, t, d.data, d.truncated, d.len, from),
        Some(from @ SocketAddr::V6(_)) => deliver_from(p, t, d.data, d.truncated, d.len, from),
        None => t.core.stats.recv_errors += 1,
    }
}

#[inline(always)]
fn deliver_from<P: DatagramProtocol>(
    p: &mut P,
    t: &mut UdpTransport<'_>,
    data: &[u8],
    truncated: bool,
    len: usize,
    from: SocketAddr,
) {
    if truncated {
        t.core.on_truncated(from, len);
        if t.core.deliver_truncated {
            p.datagram_truncated(t, data, len, from);
        }
        return;
    }
    t.core.stats.datagrams_received += 1;
    t.core.stats.bytes_received += data.len() as u64;
    p.datagram_received(t, data, from);
}

/// A refusal read from the socket: the kernel reports ICMP port unreachable only on
/// connected sockets (without `IP_RECVERR`), and the error is consumed.
fn read_refused<P: DatagramProtocol>(p: &mut P, t: &mut UdpTransport<'_>) {
    if let Some(peer) = t.core.peer {
        t.core.stats.refused += 1;
        debug!("{} on {}: refused by {peer}", t.core.prefix, t.core.local);
        p.connection_refused(t);
    }
}

/// How long between two truncation warnings of one port.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

impl PortCore {
    /// Sends one datagram now, or queues it if the kernel's buffer is full.
    ///
    /// The common case (an unconnected port dispatching a batch, nothing queued, an
    /// address of the port's family, a length UDP can carry) is the few tests here, inlined
    /// into the protocol's callback; everything else is [`send_checked`](Self::send_checked).
    #[inline]
    pub(crate) fn send(&mut self, data: &[u8], addr: SocketAddr) -> Result<()> {
        if self.peer.is_none() && addr.is_ipv4() == self.local_is_v4 && self.gather(data, addr) {
            return Ok(());
        }
        self.send_checked(data, addr)
    }

    /// Sends one datagram to the connected peer: [`send`](Self::send) without the address.
    #[inline]
    pub(crate) fn send_connected(&mut self, data: &[u8]) -> Result<()> {
        let Some(peer) = self.peer else {
            return Err(Error::NotConnected);
        };
        if self.gather(data, peer) {
            return Ok(());
        }
        self.send_checked(data, peer)
    }

    /// Adds the datagram to the batch being gathered, if there is one, nothing is queued
    /// before it and UDP can carry it (sending the batch once full); false otherwise.
    #[inline(always)]
    fn gather(&mut self, data: &[u8], addr: SocketAddr) -> bool {
        if data.len() > self.max_send || !self.queue.is_empty() {
            return false;
        }
        let Some(out) = self.out.as_mut() else {
            return false;
        };
        out.push(data, addr);
        if out.len() >= self.batch_size {
            self.flush_out();
        }
        true
    }

    /// [`send`](Self::send) with every check: connected ports, queued data, writes
    /// outside a dispatch batch, and the errors.
    #[inline(never)]
    fn send_checked(&mut self, data: &[u8], addr: SocketAddr) -> Result<()> {
        if !same_family(&addr, &self.local) {
            return Err(Error::AddressFamilyMismatch {
                address: addr,
                local: self.local,
            });
        }
        if data.len() > self.max_send {
            return Err(Error::MessageTooLong {
                len: data.len(),
                max: self.max_send,
            });
        }
        if let Some(peer) = self.peer.filter(|p| *p != addr) {
            return Err(Error::WrongPeer {
                peer,
                requested: addr,
            });
        }
        if !self.queue.is_empty() {
            return self.enqueue(data, addr);
        }
        if let Some(out) = self.out.as_mut() {
            out.push(data, addr);
            if out.len() >= self.batch_size {
                self.flush_out();
            }
            return Ok(());
        }
        match self.send_now(data, addr) {
            Err(e) if sys::classify(&e) == ErrorClass::WouldBlock => self.enqueue(data, addr),
            Err(e) => self.send_failed(e, data.len(), addr),
            Ok(()) => Ok(()),
        }
    }

    fn send_now(&mut self, data: &[u8], addr: SocketAddr) -> std::io::Result<()> {
        let mut retried = false;
        loop {
            let sent = if self.peer.is_some() {
                self.socket.send(data)
            } else {
                self.socket.send_to(data, addr)
            };
            match sent {
                Ok(_) => {
                    self.stats.datagrams_sent += 1;
                    self.stats.bytes_sent += data.len() as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // An earlier datagram's ICMP error, not this one's: the call that met it
                // cleared it, so once more.
                Err(e) if !retried && self.stale_error(&e) => retried = true,
                Err(e) => return Err(e),
            }
        }
    }

    fn send_failed(&mut self, e: std::io::Error, len: usize, addr: SocketAddr) -> Result<()> {
        match sys::classify(&e) {
            ErrorClass::Refused => {
                let peer = self.peer.unwrap_or(addr);
                if self.peer.is_some() {
                    self.stats.refused += 1;
                    self.refused_pending += 1;
                }
                Err(Error::ConnectionRefused { peer })
            }
            ErrorClass::TooLong => Err(Error::MessageTooLong {
                len,
                max: max_datagram(&self.local),
            }),
            _ => {
                self.stats.send_errors += 1;
                Err(Error::Send { addr, source: e })
            }
        }
    }

    fn enqueue(&mut self, data: &[u8], addr: SocketAddr) -> Result<()> {
        if self.queued_bytes + data.len() > self.queue_limit {
            self.stats.send_dropped += 1;
            return Err(Error::SendQueueFull {
                len: data.len(),
                queued: self.queued_bytes,
            });
        }
        self.stats.send_queued += 1;
        self.queued_bytes += data.len();
        self.queue.push_back((data.into(), addr));
        if self.queued_bytes > self.write_high {
            self.write_paused = true;
        }
        Ok(())
    }

    /// Sends queued datagrams until the kernel's buffer is full again.
    pub(crate) fn flush_queue(&mut self) {
        while let Some((data, addr)) = self.queue.pop_front() {
            match self.send_now(&data, addr) {
                Err(e) if sys::classify(&e) == ErrorClass::WouldBlock => {
                    self.queue.push_front((data, addr));
                    break;
                }
                Err(e) => {
                    self.queued_bytes -= data.len();
                    self.later_send_failed(e, data.len(), addr);
                }
                Ok(()) => self.queued_bytes -= data.len(),
            }
        }
        if self.write_paused && self.queued_bytes <= self.write_low {
            self.write_paused = false;
        }
    }

    /// A send that failed after `write` returned (from the send queue or the gathered
    /// batch): counted, and a refusal reported, as a direct send's would be; a too-long
    /// datagram has no caller left to tell, so it counts as an error.
    fn later_send_failed(&mut self, e: std::io::Error, len: usize, addr: SocketAddr) {
        debug!("{} on {}: send to {addr}: {e}", self.prefix, self.local);
        let kept = copy_io_error(&e);
        match self.send_failed(e, len, addr) {
            // Told through connection_refused.
            Err(Error::ConnectionRefused { .. }) if self.peer.is_some() => {}
            Err(error) => {
                if let Error::MessageTooLong { .. } = error {
                    self.stats.send_errors += 1;
                }
                self.keep_error(Error::Send { addr, source: kept }, addr);
            }
            Ok(()) => {}
        }
    }

    /// Whether `e`, met by a call on an unconnected port whose error queue is on, is an
    /// ICMP error raised for an earlier datagram (the kernel keeps the latest one for the
    /// next call, whatever it is): then the error queue has the details, to be read.
    pub(crate) fn stale_error(&mut self, e: &std::io::Error) -> bool {
        if self.error_queue && self.peer.is_none() && sys::is_icmp_error(e) {
            self.error_queue_pending = true;
            true
        } else {
            false
        }
    }

    /// Reads the kernel's error queue: each entry is counted and kept for
    /// `error_received` with the destination it names.
    pub(crate) fn read_error_queue(&mut self) {
        self.error_queue_pending = false;
        let fd = self.socket.as_raw_fd();
        for _ in 0..ERROR_QUEUE_READS {
            match sys::read_queued_error(fd) {
                Ok(Some(q)) if !q.icmp => {
                    // A local error (the kernel queues one when a send fails at once, as
                    // EMSGSIZE): the call that met it returned or reported it already.
                    debug!(
                        "{} on {}: local error in the error queue: {}",
                        self.prefix,
                        self.local,
                        std::io::Error::from_raw_os_error(q.errno)
                    );
                }
                Ok(Some(q)) => {
                    self.stats.unreachable += 1;
                    let source = std::io::Error::from_raw_os_error(q.errno);
                    let Some(addr) = q.dest else {
                        debug!(
                            "{} on {}: error with no destination: {source}",
                            self.prefix, self.local
                        );
                        continue;
                    };
                    debug!(
                        "{} on {}: {addr} unreachable: {source}",
                        self.prefix, self.local
                    );
                    let error = Error::Unreachable {
                        addr,
                        reporter: q.reporter,
                        source,
                    };
                    self.keep_error(error, addr);
                }
                Ok(None) => return,
                Err(e) => {
                    debug!(
                        "{} on {}: reading the error queue: {e}",
                        self.prefix, self.local
                    );
                    return;
                }
            }
        }
        // More than one read's worth: the rest on the next call.
        self.error_queue_pending = true;
    }

    /// Keeps an error for `error_received`, unless too many are waiting already.
    fn keep_error(&mut self, error: Error, addr: SocketAddr) {
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push_back((error, addr));
        } else {
            debug!(
                "{} on {}: {error} not passed to error_received ({ERRORS_KEPT} waiting)",
                self.prefix, self.local
            );
        }
    }

    /// Turns the kernel's error queue on (unconnected ports) or off (on connect: a
    /// connected port learns of refusals from its calls, as in Twisted).
    pub(crate) fn set_error_queue(&mut self, on: bool) {
        let v6 = self.local.is_ipv6();
        match sys::set_recv_errors(self.socket.as_raw_fd(), v6, on) {
            Ok(()) => self.error_queue = on,
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => self.error_queue = false,
            Err(e) => {
                debug!("{} on {}: IP_RECVERR {on}: {e}", self.prefix, self.local);
                if !on {
                    self.error_queue = false;
                }
            }
        }
        if !self.error_queue {
            self.error_queue_pending = false;
        }
    }

    /// Sends the writes gathered during a dispatch, with as few `sendmmsg` calls as the
    /// batch size allows; what the kernel's full buffer does not take goes to the send
    /// queue, in order.
    pub(crate) fn flush_out(&mut self) {
        let Some(mut out) = self.out.take() else {
            return;
        };
        let connected = self.peer.is_some();
        let mut next = 0;
        let mut retried = false;
        while next < out.len() {
            let sent = if self.segmentation {
                out.send_segmented(&self.socket, next, connected)
            } else {
                out.send(&self.socket, next, connected)
            };
            match sent {
                Err(e) if !retried && self.stale_error(&e) => retried = true,
                Err(e)
                    if self.segmentation
                        && out.first_run() > 1
                        && sys::segmentation_refused(&e) =>
                {
                    // The kernel, route or device cannot segment: the same datagrams go
                    // again one per message, and so does everything after.
                    debug!(
                        "{} on {}: segmented send refused ({e}); sending one datagram per message",
                        self.prefix, self.local
                    );
                    self.segmentation = false;
                }
                Ok(0) => {
                    // Not expected with datagrams left; never spin on it.
                    self.stats.send_dropped += (out.len() - next) as u64;
                    break;
                }
                Ok(sent) => {
                    self.stats.datagrams_sent += sent as u64;
                    self.stats.bytes_sent += out.bytes(next, next + sent) as u64;
                    next += sent;
                }
                Err(e) if sys::classify(&e) == ErrorClass::WouldBlock => {
                    for i in next..out.len() {
                        let (data, addr) = out.get(i);
                        // Past the queue's bound it is counted as dropped; no caller to tell.
                        let _ = self.enqueue(data, addr);
                    }
                    break;
                }
                Err(e) => {
                    let (data, addr) = out.get(next);
                    self.later_send_failed(e, data.len(), addr);
                    next += 1;
                }
            }
        }
        out.clear();
        self.out = Some(out);
    }

    /// Takes back the lent send batch, empty.
    fn take_out(&mut self) -> Option<Box<SendBatch>> {
        self.flush_out();
        self.out.take()
    }

    /// Bytes waiting in the send queue.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
    }

    /// Whether the send queue is between its high- and low-water marks, coming down.
    pub(crate) fn write_paused(&self) -> bool {
        self.write_paused
    }

    /// Asks for WRITABLE events while the queue holds data, and stops asking once it is empty.
    pub(crate) fn sync_interest(&mut self, registry: &Registry) {
        let want = !self.queue.is_empty();
        if want == self.writable_registered {
            return;
        }
        let interest = if want {
            Interest::READABLE | Interest::WRITABLE
        } else {
            Interest::READABLE
        };
        match registry.reregister(&mut self.socket, self.key.token(), interest) {
            Ok(()) => self.writable_registered = want,
            Err(e) => warn!("{} on {}: reregister: {e}", self.prefix, self.local),
        }
    }

    fn on_truncated(&mut self, from: SocketAddr, len: usize) {
        self.stats.truncated += 1;
        let what = if self.deliver_truncated {
            "delivered cut short to datagram_truncated"
        } else {
            "dropped"
        };
        let now = Instant::now();
        let due = self
            .last_truncation_warning
            .is_none_or(|last| now.duration_since(last) >= WARN_INTERVAL);
        if due {
            self.last_truncation_warning = Some(now);
            warn!(
                "{} on {}: datagram of {len} bytes from {from} longer than max packet size {}, {what} ({} so far)",
                self.prefix, self.local, self.max_packet_size, self.stats.truncated
            );
        } else {
            trace!(
                "{} on {}: datagram of {len} bytes from {from} {what}",
                self.prefix, self.local
            );
        }
    }

    /// Takes in the socket's drop count as the kernel reported it.
    pub(crate) fn note_drops(&mut self, count: u32) {
        let seen = self.drops_seen.unwrap_or(0);
        self.stats.kernel_dropped += u64::from(count.wrapping_sub(seen));
        self.drops_seen = Some(count);
    }

    /// The counters, with the kernel's drop count as it stands now.
    pub(crate) fn current_stats(&self) -> PortStats {
        let mut stats = self.stats;
        if let Some(seen) = self.drops_seen
            && let Some(now) = sys::drops_or_log(self.socket.as_raw_fd())
        {
            stats.kernel_dropped += u64::from(now.wrapping_sub(seen));
        }
        stats
    }

    fn on_panic(&mut self, hook: &str, message: &str) {
        error!(
            "{} on {}: {hook} panicked: {message}; closing the port",
            self.prefix, self.local
        );
        self.closing = true;
        self.panic = Some(message.to_owned());
    }
}

/// A copy of an I/O error (they are not `Clone`): the same OS error, or the same kind and
/// message.
fn copy_io_error(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

/// The text of a panic payload.
pub(crate) fn panic_message(panic: &(dyn Any + Send)) -> String {
    if let Some(s) = panic.downcast_ref::<&str>() {
        (*s).to_owned()
    } else if let Some(s) = panic.downcast_ref::<String>() {
        s.clone()
    } else {
        "non-string panic payload".to_owned()
    }
}
