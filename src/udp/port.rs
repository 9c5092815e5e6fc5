//! `UdpPort<P>`: a socket, its protocol, its send queue, its counters.
//!
//! The port is split into disjoint fields (`protocol`, `core`, `recv_batch`) so that a callback
//! can be handed the protocol, a transport over the core, and a slice of the receive batch
//! at the same time: the datagram is borrowed, never copied. The receive batch and the
//! send batch belong to the reactor and are lent to one port at a time, while it reads:
//! their memory does not grow with the number of ports.

use std::any::{Any, TypeId};
use std::collections::VecDeque;
use std::fmt;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use mio::Registry;

use crate::error::{Error, Result};
use crate::protocol::{DatagramProtocol, short_type_name};
use crate::reactor::Reactor;
use crate::sys::{self, ErrorClass, RecvBatch, SendBatch};
use crate::token::PortKey;
use crate::udp::addr::{max_datagram, same_family};
use crate::udp::options::ListenOptions;
use crate::udp::socket::PortSocket;
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
    /// unreachable, read from its error queue), each passed to `error_received` unless
    /// counted in `errors_unreported` too. It counts errors, not datagrams: a run of
    /// replies sent segmented (see `ListenOptions::segmentation`) that meets a closed port
    /// on this host is answered with one ICMP error for the run.
    pub unreachable: u64,
    /// Errors counted above (`unreachable`, `send_errors`, `refused`) that no hook was told
    /// of: more than 1024 waiting at once, still waiting when `stop_protocol` had run (no
    /// hook is called after it), or an ICMP error whose details the kernel had dropped
    /// (its error queue was full).
    pub errors_unreported: u64,
    /// Hooks (and port timers) that panicked: each cost only its own event, unless
    /// [`ListenOptions::close_on_panic`](crate::ListenOptions::close_on_panic) is set.
    pub panics: u64,
    /// Datagrams from another address than the connected peer, read after `connect`
    /// (they reached the socket before it), dropped.
    pub not_from_peer: u64,
    /// Datagrams read in the batch during which the port's stop (or the reactor's) was
    /// asked for, after that point, and so not delivered.
    pub dropped_at_stop: u64,
}

impl fmt::Display for PortStats {
    /// One line for logs: what came in, what went out, and what was lost where.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {} datagrams ({} bytes), sent {} ({} bytes); dropped: {} truncated, \
             {} by the kernel, {} at the send queue, {} from another peer, {} at stop; {} send errors, \
             {} receive errors, {} refused, {} unreachable, {} errors unreported, \
             {} panics, {} queued",
            self.datagrams_received,
            self.bytes_received,
            self.datagrams_sent,
            self.bytes_sent,
            self.truncated,
            self.kernel_dropped,
            self.send_dropped,
            self.not_from_peer,
            self.dropped_at_stop,
            self.send_errors,
            self.recv_errors,
            self.refused,
            self.unreachable,
            self.errors_unreported,
            self.panics,
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
    /// Handles readiness: reads if `readable`, sends the queue if `writable`, and reads
    /// the kernel's error queue if `error` (the kernel flagged an error). Returns whether
    /// data may be left to read.
    fn on_ready(&mut self, r: &mut Reactor, readable: bool, writable: bool, error: bool) -> bool;
    /// Runs a port-scoped timer's closure; false if it panicked (the timer is then
    /// cancelled).
    fn fire_timer(&mut self, r: &mut Reactor, action: &mut Box<dyn Any>) -> bool;
    /// Runs `stop_protocol`, flushes what it can, and logs the close.
    fn shut_down(&mut self, r: &mut Reactor);
    fn as_any_mut(&mut self) -> &mut dyn Any;
}

/// The protocol-independent state of a port: what the transport works on.
#[derive(Debug)]
pub(crate) struct PortCore {
    pub(crate) socket: PortSocket,
    pub(crate) key: PortKey,
    pub(crate) local: SocketAddr,
    /// `local` is IPv4 (the family every destination must have).
    local_is_v4: bool,
    /// The longest datagram UDP carries in `local`'s family.
    max_send: usize,
    pub(crate) peer: Option<SocketAddr>,
    /// The address the kernel gave the socket when it connected (a wildcard bind gets a
    /// concrete address then).
    pub(crate) connected_local: Option<SocketAddr>,
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
    /// A panic in a hook a peer can trigger closes the port (else it costs that event).
    close_on_panic: bool,
    /// The hook `report_pending` is calling, named if it panics.
    reporting: Option<&'static str>,
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
    /// The send batch while the report hooks run (they send at once).
    parked_out: Option<Box<SendBatch>>,
    queue: VecDeque<(Box<[u8]>, SocketAddr)>,
    /// What the queue's entries are charged ([`charge`]), against its marks and bound.
    queue_charge: usize,
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
    recv_batch: Option<Box<RecvBatch>>,
}

impl<P: DatagramProtocol> UdpPort<P> {
    pub(crate) fn new(
        socket: PortSocket,
        key: PortKey,
        local: SocketAddr,
        protocol: P,
        opts: &ListenOptions,
    ) -> Self {
        let prefix = protocol.log_prefix().to_owned();
        UdpPort {
            protocol,
            recv_batch: None,
            core: PortCore {
                socket,
                key,
                local,
                local_is_v4: local.is_ipv4(),
                max_send: max_datagram(&local),
                peer: None,
                connected_local: None,
                prefix,
                protocol_type: (TypeId::of::<P>(), short_type_name::<P>()),
                closing: false,
                refused_pending: 0,
                errors: VecDeque::new(),
                error_queue: false,
                error_queue_pending: false,
                close_on_panic: opts.close_on_panic,
                reporting: None,
                panic: None,
                stats: PortStats::default(),
                max_packet_size: opts.max_packet_size,
                read_budget: opts.read_budget,
                read_budget_bytes: opts.read_budget_bytes,
                batch_size: opts.batch_size,
                segmentation: opts.segmentation,
                out: None,
                parked_out: None,
                queue: VecDeque::new(),
                queue_charge: 0,
                queue_limit: opts.send_queue_limit,
                write_high: write_high(opts, &local),
                write_low: opts.write_low.min(write_high(opts, &local)),
                write_paused: false,
                told_paused: false,
                writable_registered: false,
                last_truncation_warning: None,
                deliver_truncated: opts.deliver_truncated,
                drops_seen: None,
            },
        }
        .with_kernel_reports()
    }

    /// Turns on what the kernel reports besides datagrams: its drop count on every datagram
    /// once any is dropped (noting where the count stands: an adopted socket may have
    /// dropped already), and the error queue.
    fn with_kernel_reports(mut self) -> Self {
        if let Err(e) = self.core.socket.enable_drop_count()
            && e.kind() != std::io::ErrorKind::Unsupported
        {
            debug!(
                "{} on {}: SO_RXQ_OVFL: {e}",
                self.core.prefix, self.core.local
            );
        }
        self.core.drops_seen = self.core.socket.drops();
        self.core.set_error_queue(true);
        self
    }

    /// Runs `f` with the protocol and a transport from outside the hooks
    /// ([`Reactor::with_port`]); a panic in `f` closes the port.
    pub(crate) fn call<R>(
        &mut self,
        r: &mut Reactor,
        f: impl FnOnce(&mut P, &mut UdpTransport<'_>) -> R,
    ) -> Option<R> {
        let out = self.closing_on_panic(r, "with_port closure", f);
        self.report(r);
        out
    }

    /// Runs `f` with the protocol and a transport, catching a panic, which is logged with
    /// the port's address and closes the port (`start_protocol`, `stop_protocol`,
    /// `with_port`). Nothing is reported to the protocol afterwards: see [`report`](Self::report).
    fn closing_on_panic<R>(
        &mut self,
        r: &mut Reactor,
        hook: &'static str,
        f: impl FnOnce(&mut P, &mut UdpTransport<'_>) -> R,
    ) -> Option<R> {
        self.catch(r, f)
            .map_err(|message| self.core.on_panic(hook, &message))
            .ok()
    }

    /// Runs `f` with the protocol and a transport; a panic comes back as its message.
    fn catch<R>(
        &mut self,
        r: &mut Reactor,
        f: impl FnOnce(&mut P, &mut UdpTransport<'_>) -> R,
    ) -> std::result::Result<R, String> {
        let (protocol, core) = (&mut self.protocol, &mut self.core);
        catch_unwind(AssertUnwindSafe(|| {
            f(protocol, &mut UdpTransport::new(core, r))
        }))
        .map_err(|panic| panic_message(&*panic))
    }

    /// Tells the protocol what happened while its last hook ran (see [`report_pending`]).
    /// A panic in one of those hooks costs that one report (or closes the port, with
    /// `close_on_panic`); the rest are still told.
    fn report(&mut self, r: &mut Reactor) {
        for _ in 0..MAX_RESUMES {
            let Err(message) = self.catch(r, report_pending) else {
                return;
            };
            let hook = self.core.reporting.take().unwrap_or("hook");
            if !self.core.hook_panicked(hook, &message, None) {
                return;
            }
        }
    }
}

/// How many times one dispatch goes on after panicking hooks, beyond the port's read
/// budget, before it leaves the rest for the next turn: it only bounds a turn's length.
const MAX_RESUMES: usize = 4 * ERRORS_KEPT;

/// Calls `connection_refused` for refusals that writes met while a hook ran, and
/// `error_received` for the errors met since (reading the kernel's error queue first if a
/// call found it had entries). Bounded, since those hooks may write and meet more.
fn report_pending<P: DatagramProtocol>(protocol: &mut P, t: &mut UdpTransport<'_>) {
    if !t.core.has_pending() {
        return;
    }
    // What was gathered goes now (its errors are reported below), and writes made by the
    // hooks below are sent at once, their errors returned to them: a batch gathered here
    // would be sent after the last report of the dispatch, and its errors wait for the
    // next event.
    t.core.park_out();
    while t.core.refused_pending > 0 {
        t.core.refused_pending -= 1;
        t.core.reporting = Some("connection_refused");
        protocol.connection_refused(t);
    }
    if t.core.error_queue_pending {
        t.core.read_error_queue();
    }
    tell_flow(protocol, t);
    for _ in 0..ERRORS_KEPT {
        let Some((error, addr)) = t.core.errors.pop_front() else {
            break;
        };
        t.core.reporting = Some("error_received");
        protocol.error_received(t, &error, addr);
        // Its writes may have crossed a mark.
        tell_flow(protocol, t);
    }
    t.core.reporting = None;
    t.core.unpark_out();
}

/// Flow control: tells the protocol of a change since it was last told (a pause and a
/// resume in between cancel out).
#[inline]
fn tell_flow<P: DatagramProtocol>(protocol: &mut P, t: &mut UdpTransport<'_>) {
    if t.core.write_paused != t.core.told_paused {
        t.core.told_paused = t.core.write_paused;
        if t.core.write_paused {
            t.core.reporting = Some("pause_producing");
            protocol.pause_producing(t);
        } else {
            t.core.reporting = Some("resume_producing");
            protocol.resume_producing(t);
        }
        t.core.reporting = None;
    }
}

/// The most errors kept for `error_received` at once; more are counted in
/// `errors_unreported`, and logged at debug.
const ERRORS_KEPT: usize = 1024;

/// The most entries read from the kernel's error queue at once (its memory, the socket's
/// receive buffer, holds about 256 with the default size).
const ERROR_QUEUE_READS: usize = 1024;

/// What one entry of the send queue is charged besides its payload, against the flow
/// control marks and the queue's bound: what it costs in memory, at least (48 bytes in
/// the queue's ring buffer, as much again while that buffer is half empty after growing,
/// and up to 32 bytes the allocator adds to the payload's block).
pub(crate) const QUEUE_ENTRY_OVERHEAD: usize = 128;

/// What a datagram of `len` bytes is charged once queued.
#[inline(always)]
fn charge(len: usize) -> usize {
    len + QUEUE_ENTRY_OVERHEAD
}

/// What the datagrams gathered in `out` would be charged once queued.
#[inline(always)]
fn gathered_charge(out: &SendBatch) -> usize {
    out.total_bytes() + out.len() * QUEUE_ENTRY_OVERHEAD
}

/// The high-water mark of a port: the one asked for, lowered if need be to leave room
/// below the queue's bound for one more datagram of the largest size, so that a producer
/// that stops once paused never meets the bound.
fn write_high(opts: &ListenOptions, local: &SocketAddr) -> usize {
    let room = opts
        .send_queue_limit
        .saturating_sub(charge(max_datagram(local)));
    opts.write_high.min(room)
}

/// Where a dispatch of received datagrams stands; kept outside the panic guard, so that
/// after a panicking hook the dispatch goes on with the next datagram.
#[derive(Default)]
struct ReadState {
    /// Datagrams (and errors) read so far this dispatch, against the budget.
    count: usize,
    /// Payload bytes read so far this dispatch, against the byte budget.
    bytes: usize,
    /// The batch being delivered: how many were asked for and read, and how many of them
    /// were handed on (or are being).
    want: usize,
    got: usize,
    next: usize,
    in_batch: bool,
    /// The reactor's stop count when the batch was read.
    stops: u64,
}

impl ReadState {
    /// The datagrams of the batch being delivered that are not handed on yet.
    fn left(&self) -> u64 {
        if self.in_batch {
            (self.got - self.next) as u64
        } else {
            0
        }
    }
}

impl<P: DatagramProtocol> Port for UdpPort<P> {
    fn core(&self) -> &PortCore {
        &self.core
    }

    fn core_mut(&mut self) -> &mut PortCore {
        &mut self.core
    }

    fn start(&mut self, r: &mut Reactor) {
        self.closing_on_panic(r, "start_protocol", |p, t| p.start_protocol(t));
        if self.core.panic.is_none() {
            self.report(r);
        }
    }

    fn on_ready(&mut self, r: &mut Reactor, readable: bool, writable: bool, error: bool) -> bool {
        if error && self.core.error_queue {
            // The kernel queued an error (its flag may already be consumed by a send).
            self.core.error_queue_pending = true;
        }
        if !writable && !self.core.error_queue_pending && (!readable || self.core.closing) {
            return false;
        }
        let reading = readable && !self.core.closing;
        if reading {
            // The reactor's batches, lent for this dispatch and given back even if a hook
            // panics (what was gathered before the panic is still sent).
            let (recv_batch, out) = r.lend_batches(self.core.batch_size, self.core.max_packet_size);
            self.recv_batch = Some(recv_batch);
            self.core.out = Some(out);
        }
        let mut state = ReadState::default();
        let mut more = None;
        let mut flush = writable;
        // Each panic costs one event (a datagram, a report), so this many resumes cover
        // every event one dispatch can have, unless hooks raise new events as they panic.
        let resumes = self.core.read_budget.saturating_add(MAX_RESUMES);
        for _ in 0..resumes {
            // Lent to this dispatch only; back in place before anything else uses it.
            let mut recv_batch = self.recv_batch.take();
            let st = &mut state;
            let outcome = self.catch(r, |protocol, t| {
                if std::mem::take(&mut flush) {
                    t.core.flush_queue();
                }
                let more = match recv_batch.as_deref_mut() {
                    Some(recv_batch) if reading => read_until_budget(protocol, t, recv_batch, st),
                    _ => false,
                };
                report_pending(protocol, t);
                more
            });
            self.recv_batch = recv_batch;
            match outcome {
                Ok(m) => {
                    more = Some(m);
                    break;
                }
                Err(message) => {
                    self.core.unpark_out();
                    let (hook, from) = match self.core.reporting.take() {
                        Some(hook) => (hook, None),
                        None => {
                            let d = self
                                .recv_batch
                                .as_ref()
                                .filter(|_| state.in_batch && state.next > 0)
                                .and_then(|recv_batch| {
                                    recv_batch.datagrams_from(state.next - 1).next()
                                });
                            match d {
                                Some(d) if d.truncated => ("datagram_truncated", d.from),
                                Some(d) => ("datagram_received", d.from),
                                None => ("datagram_received", None),
                            }
                        }
                    };
                    if !self.core.hook_panicked(hook, &message, from) {
                        // The port closes: what is left of the batch is read, not
                        // delivered, and counted.
                        self.core.stats.dropped_at_stop += state.left();
                        more = Some(false);
                        break;
                    }
                }
            }
        }
        let more = more.unwrap_or_else(|| {
            // Hooks that panic while raising new events (writes that fail, say): the rest
            // waits for the next turn, but what is left of this batch is lost, and counted.
            let lost = state.left();
            self.core.stats.recv_errors += lost;
            warn!(
                "{} on {}: {resumes} panicking hooks in one dispatch; {lost} datagrams dropped",
                self.core.prefix, self.core.local
            );
            true
        });
        if let (Some(recv_batch), Some(out)) = (self.recv_batch.take(), self.core.take_out()) {
            r.return_batches(recv_batch, out);
        }
        more
    }

    fn fire_timer(&mut self, r: &mut Reactor, action: &mut Box<dyn Any>) -> bool {
        let Some(f) = action.downcast_mut::<PortTimerFn<P>>() else {
            // Checked when the timer was scheduled (and port keys are unique across
            // reactors), so this is a bug in twine: say so rather than panic in the loop.
            error!(
                "{} on {}: port timer of another protocol type skipped",
                self.core.prefix, self.core.local
            );
            return false;
        };
        let fine = match self.catch(r, |p, t| f(p, t)) {
            Ok(()) => true,
            Err(message) => {
                self.core.hook_panicked("port timer", &message, None);
                false
            }
        };
        self.report(r);
        fine
    }

    fn shut_down(&mut self, r: &mut Reactor) {
        self.core.closing = true;
        info!("({} Port {} Closed)", "UDP", self.core.local);
        // What the protocol was not told before its last hook is counted, not reported:
        // stop_protocol is the last hook.
        self.core.discard_pending();
        self.closing_on_panic(r, "stop_protocol", |p, t| p.stop_protocol(t));
        self.core.flush_queue();
        let left = self.core.queue.len() as u64;
        if left > 0 {
            self.core.stats.send_dropped += left;
            debug!(
                "{} on {}: {left} queued datagrams dropped at close",
                self.core.prefix, self.core.local
            );
        }
        self.core.discard_pending();
        if let Some(now) = self.core.socket.drops() {
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
/// whether the budget ran out first (data may be left). Called again after a panicking
/// hook, it goes on where `st` says.
fn read_until_budget<P: DatagramProtocol>(
    p: &mut P,
    t: &mut UdpTransport<'_>,
    recv_batch: &mut RecvBatch,
    st: &mut ReadState,
) -> bool {
    if st.in_batch && !finish_batch(p, t, recv_batch, st) {
        return false;
    }
    let (budget, budget_bytes) = (t.core.read_budget, t.core.read_budget_bytes);
    while st.count < budget && st.bytes < budget_bytes {
        if must_stop(t) {
            return false;
        }
        st.stops = t.reactor.stops_asked();
        // Bounded by bytes too: no more datagrams of the largest size than the byte
        // budget has room for (at least one).
        let by_bytes = (budget_bytes - st.bytes).div_ceil(t.core.max_packet_size.max(1));
        let want = (budget - st.count).min(t.core.batch_size).min(by_bytes);
        let got = match t.core.socket.recv(recv_batch, want, t.core.max_packet_size) {
            Ok(got) => got,
            Err(e) => {
                st.count += 1;
                match sys::classify(&e) {
                    ErrorClass::WouldBlock => return false,
                    // An ICMP error for an earlier datagram: the error queue (read at
                    // once) says which destination it was about.
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
        st.want = want;
        st.got = got;
        st.next = 0;
        st.in_batch = true;
        if !finish_batch(p, t, recv_batch, st) {
            return false;
        }
    }
    true
}

/// Delivers the rest of the batch read last, sends the writes it gathered and reports
/// what they met; returns whether to read on (the batch was full and no stop came).
#[inline]
fn finish_batch<P: DatagramProtocol>(
    p: &mut P,
    t: &mut UdpTransport<'_>,
    recv_batch: &mut RecvBatch,
    st: &mut ReadState,
) -> bool {
    let mut next = st.next;
    // Going on after a hook that asked for a stop and then panicked: none of the rest.
    let mut stopped = next > 0 && t.reactor.stops_asked() != st.stops && must_stop(t);
    // Counted against the budgets once the batch is done; going on after a panic, the
    // datagrams handed on before it count too.
    let mut bytes: usize = recv_batch
        .datagrams_from(0)
        .take(next)
        .map(|d| d.data.len())
        .sum();
    let rest = if stopped { st.got } else { next };
    for d in recv_batch.datagrams_from(rest) {
        next += 1;
        // Where to go on from if this datagram's hook panics.
        st.next = next;
        bytes += d.data.len();
        deliver(p, t, d);
        // Flow control at once, after the hook whose write crossed a mark.
        tell_flow(p, t);
        // `stop_listening`, `Reactor::stop` and closing a port by handle all change
        // the count: one comparison per datagram while nothing of the kind happens.
        if t.reactor.stops_asked() != st.stops && must_stop(t) {
            // Read but not delivered (the port is closing), and counted.
            stopped = true;
            break;
        }
    }
    if stopped {
        t.core.stats.dropped_at_stop += st.left();
    }
    st.count += st.next;
    st.bytes += bytes;
    st.in_batch = false;
    if let Some(count) = recv_batch.drop_count() {
        t.core.note_drops(count);
    }
    t.core.flush_out();
    report_pending(p, t);
    // Fewer than asked for: the socket was drained, and the next datagram to arrive
    // raises a new readiness event.
    !stopped && st.got >= st.want
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
    if let Some(peer) = t.core.peer
        && !is_peer(&peer, &from)
    {
        // Queued before `connect`: not the peer's, so not delivered.
        t.core.stats.not_from_peer += 1;
        return;
    }
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
        // As from report_pending: this hook's writes are sent at once.
        t.core.park_out();
        t.core.reporting = Some("connection_refused");
        p.connection_refused(t);
        t.core.reporting = None;
        t.core.unpark_out();
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
        // Sent at once when the batch is full, or when what it holds would count past the
        // high-water mark once queued: then the kernel says at once whether it takes them,
        // and what it does not take is queued and pauses the producer in time.
        if out.len() >= self.batch_size || gathered_charge(out) > self.write_high {
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
        if let Some(peer) = self.peer.filter(|p| !is_peer(p, &addr)) {
            return Err(Error::WrongPeer {
                peer,
                requested: addr,
            });
        }
        if !self.queue.is_empty() {
            return self.enqueue(data, addr);
        }
        if self.gather(data, addr) {
            return Ok(());
        }
        match self.send_now(data, addr) {
            Err(e) if sys::classify(&e) == ErrorClass::WouldBlock => self.enqueue(data, addr),
            Err(e) => self.send_failed(e, data.len(), addr),
            Ok(()) => Ok(()),
        }
    }

    fn send_now(&mut self, data: &[u8], addr: SocketAddr) -> std::io::Result<()> {
        let mut retries = 0;
        loop {
            // A datagram written before `connect` to another address still goes there
            // (Linux takes a destination on a connected UDP socket), never to the peer.
            let to_peer = self.peer.is_some_and(|p| is_peer(&p, &addr));
            let sent = self.socket.send_one(data, addr, to_peer);
            match sent {
                Ok(_) => {
                    self.stats.datagrams_sent += 1;
                    self.stats.bytes_sent += data.len() as u64;
                    return Ok(());
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                // An earlier datagram's ICMP error, not this one's: the call that met it
                // cleared it, so once more (another can only be raised by a datagram sent
                // meanwhile, so a few tries are plenty).
                Err(e) if retries < STALE_RETRIES && self.stale_error(&e) => retries += 1,
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

    /// Queues a datagram the kernel's full buffer did not take, unless the queue is at
    /// its bound: each entry is charged its payload and [`QUEUE_ENTRY_OVERHEAD`].
    fn enqueue(&mut self, data: &[u8], addr: SocketAddr) -> Result<()> {
        if self.queue_charge + charge(data.len()) > self.queue_limit {
            self.stats.send_dropped += 1;
            return Err(Error::SendQueueFull {
                len: data.len(),
                queued: self.queue_charge,
            });
        }
        self.queue_entry(data, addr);
        Ok(())
    }

    /// Queues a datagram already accepted (gathered by `write`, then not taken by the
    /// kernel). Gathered writes are sent before they could count past the high-water mark
    /// and only while the queue is empty, so this stays below the bound.
    fn queue_entry(&mut self, data: &[u8], addr: SocketAddr) {
        self.stats.send_queued += 1;
        self.queue_charge += charge(data.len());
        self.queue.push_back((data.into(), addr));
        if self.queue_charge > self.write_high {
            self.write_paused = true;
        }
    }

    /// Sends queued datagrams until the kernel's buffer is full again.
    pub(crate) fn flush_queue(&mut self) {
        while let Some((data, addr)) = self.queue.pop_front() {
            match self.send_now(&data, addr) {
                Err(e) if sys::classify(&e) == ErrorClass::WouldBlock => {
                    self.queue.push_front((data, addr));
                    break;
                }
                Err(e) => self.later_send_failed(e, data.len(), addr),
                Ok(()) => {}
            }
            self.queue_charge -= charge(data.len());
        }
        if self.queue.is_empty() && self.queue.capacity() > QUEUE_KEPT_CAPACITY {
            // A burst's ring buffer is not kept for ever.
            self.queue.shrink_to(QUEUE_KEPT_CAPACITY);
        }
        if self.write_paused && self.queue_charge <= self.write_low {
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
    ///
    /// The queue is read at once, so that it never fills up (its entries are charged to
    /// the socket's receive buffer, and past it the kernel drops new errors and datagrams).
    ///
    /// Only a refusal is surely stale (a UDP send never fails with one of its own); other
    /// ICMP-class errors (host or network unreachable, too long) are stale when the error
    /// queue holds an ICMP entry, and else are the call's own (a route missing here).
    pub(crate) fn stale_error(&mut self, e: &std::io::Error) -> bool {
        if !(self.error_queue && self.peer.is_none() && sys::is_icmp_error(e)) {
            return false;
        }
        let icmp = self.read_error_queue();
        let refused = sys::classify(e) == ErrorClass::Refused;
        if icmp == 0 && refused {
            // A refusal whose entry is not in the queue: the kernel could not queue it
            // (the queue was full). Its destination is unknown, but it is counted.
            self.stats.unreachable += 1;
            self.stats.errors_unreported += 1;
            debug!(
                "{} on {}: an ICMP error was dropped by the kernel",
                self.prefix, self.local
            );
        }
        icmp > 0 || refused
    }

    /// Reads the kernel's error queue: each entry is counted and kept for
    /// `error_received` with the destination it names. Returns how many ICMP errors it
    /// read.
    pub(crate) fn read_error_queue(&mut self) -> usize {
        self.error_queue_pending = false;
        if !self.error_queue {
            return 0;
        }
        let mut icmp = 0;
        for _ in 0..ERROR_QUEUE_READS {
            match self.socket.read_queued_error() {
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
                    icmp += 1;
                    self.stats.unreachable += 1;
                    let source = std::io::Error::from_raw_os_error(q.errno);
                    let Some(addr) = q.dest else {
                        self.stats.errors_unreported += 1;
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
                Ok(None) => return icmp,
                Err(e) => {
                    debug!(
                        "{} on {}: reading the error queue: {e}",
                        self.prefix, self.local
                    );
                    return icmp;
                }
            }
        }
        // More than one read's worth: the rest on the next call.
        self.error_queue_pending = true;
        icmp
    }

    /// Keeps an error for `error_received`, unless too many are waiting already (then it
    /// is counted as unreported).
    fn keep_error(&mut self, error: Error, addr: SocketAddr) {
        if self.errors.len() < ERRORS_KEPT {
            self.errors.push_back((error, addr));
        } else {
            self.stats.errors_unreported += 1;
            debug!(
                "{} on {}: {error} not passed to error_received ({ERRORS_KEPT} waiting)",
                self.prefix, self.local
            );
        }
    }

    /// Counts, without telling the protocol, everything it has not been told yet: the
    /// errors waiting (the kernel's queue read first) and the refusals. Used around
    /// `stop_protocol`, after which no hook is called.
    pub(crate) fn discard_pending(&mut self) {
        self.read_error_queue();
        if self.peer.is_some()
            && let Ok(Some(e)) = self.socket.take_error()
            && sys::classify(&e) == ErrorClass::Refused
        {
            // A refusal the kernel holds for the next call, which will not come.
            self.stats.refused += 1;
            self.refused_pending += 1;
        }
        let waiting = self.errors.len() + self.refused_pending as usize;
        if waiting > 0 {
            debug!(
                "{} on {}: {waiting} errors not reported (the port is closing)",
                self.prefix, self.local
            );
        }
        self.stats.errors_unreported += waiting as u64;
        self.errors.clear();
        self.refused_pending = 0;
        self.told_paused = self.write_paused;
    }

    /// Serves an adopted socket that is connected already as a connected port.
    pub(crate) fn adopt_peer(&mut self, peer: SocketAddr) {
        self.peer = Some(peer);
        self.connected_local = self.socket.local_addr().ok();
        self.set_error_queue(false);
    }

    /// Turns the kernel's error queue on (unconnected ports) or off (on connect: a
    /// connected port learns of refusals from its calls, as in Twisted).
    pub(crate) fn set_error_queue(&mut self, on: bool) {
        let v6 = self.local.is_ipv6();
        match self.socket.set_recv_errors(v6, on) {
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
        // Stale errors met since the last datagram the kernel took: each was raised by an
        // earlier datagram and consumed by the call that met it, so the call is retried.
        let mut retries = 0;
        while next < out.len() {
            let sent = self
                .socket
                .send_batch(&mut out, next, connected, self.segmentation);
            match sent {
                Err(e) if retries < STALE_RETRIES && self.stale_error(&e) => retries += 1,
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
                    retries = 0;
                    if out.was_short() && self.error_queue {
                        // The next message failed and sendmmsg kept its error to itself:
                        // on loopback, an ICMP error raised by a message of this very call
                        // (its entry is in the error queue; the datagram is sent again).
                        self.error_queue_pending = true;
                    }
                }
                Err(e) if sys::classify(&e) == ErrorClass::WouldBlock => {
                    for i in next..out.len() {
                        let (data, addr) = out.get(i);
                        self.queue_entry(data, addr);
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
        if self.error_queue_pending {
            self.read_error_queue();
        }
    }

    /// Takes back the lent send batch, empty.
    fn take_out(&mut self) -> Option<Box<SendBatch>> {
        self.unpark_out();
        self.flush_out();
        self.out.take()
    }

    /// Whether something waits to be told to the protocol.
    #[inline]
    fn has_pending(&self) -> bool {
        self.refused_pending > 0
            || self.error_queue_pending
            || self.write_paused != self.told_paused
            || !self.errors.is_empty()
    }

    /// Sends what is gathered and stops gathering (writes go out at once) until
    /// [`unpark_out`](Self::unpark_out).
    fn park_out(&mut self) {
        if self.out.as_ref().is_some_and(|out| !out.is_empty()) {
            self.flush_out();
        }
        if self.out.is_some() {
            self.parked_out = self.out.take();
        }
    }

    /// Gathers writes again, if [`park_out`](Self::park_out) stopped it (also after a
    /// panic in between).
    fn unpark_out(&mut self) {
        if let Some(out) = self.parked_out.take() {
            self.out = Some(out);
        }
    }

    /// What waits to be handed to the kernel, as charged against the flow-control marks
    /// and the queue's bound: the send queue's entries and the writes gathered for the
    /// batch being dispatched, each its payload and [`QUEUE_ENTRY_OVERHEAD`].
    pub(crate) fn charged_bytes(&self) -> usize {
        self.queue_charge + self.out.as_deref().map_or(0, gathered_charge)
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
        match self.socket.reregister(registry, self.key, want) {
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
        if let Some(new) = new_drops(seen, count) {
            self.stats.kernel_dropped += u64::from(new);
            self.drops_seen = Some(count);
        }
    }

    /// The counters, with the kernel's drop count as it stands now.
    pub(crate) fn current_stats(&self) -> PortStats {
        let mut stats = self.stats;
        if let Some(seen) = self.drops_seen
            && let Some(now) = self.socket.drops()
            && let Some(new) = new_drops(seen, now)
        {
            stats.kernel_dropped += u64::from(new);
        }
        stats
    }

    /// A panic in a hook a remote peer can trigger, or in a port timer: logged with the
    /// port and the sender, counted; it closes the port only with `close_on_panic`.
    /// Returns whether the port goes on.
    fn hook_panicked(&mut self, hook: &str, message: &str, from: Option<SocketAddr>) -> bool {
        self.stats.panics += 1;
        let then = if self.close_on_panic {
            "closing the port"
        } else if from.is_some() {
            "datagram dropped"
        } else {
            "event dropped"
        };
        match from {
            Some(from) => error!(
                "{} on {}: {hook} panicked on a datagram from {from}: {message}; {then}",
                self.prefix, self.local
            ),
            None => error!(
                "{} on {}: {hook} panicked: {message}; {then}",
                self.prefix, self.local
            ),
        }
        if self.close_on_panic {
            self.closing = true;
            return false;
        }
        true
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

/// Whether `addr` names the connected peer `peer` (as the kernel gave it at connect): the
/// same IP and port; a scope id counts only where both give one, a flow label never.
#[inline]
pub(crate) fn is_peer(peer: &SocketAddr, addr: &SocketAddr) -> bool {
    match (peer, addr) {
        (SocketAddr::V4(p), SocketAddr::V4(a)) => p == a,
        (SocketAddr::V6(p), SocketAddr::V6(a)) => {
            p.ip() == a.ip()
                && p.port() == a.port()
                && (p.scope_id() == 0 || a.scope_id() == 0 || p.scope_id() == a.scope_id())
        }
        _ => false,
    }
}

/// How often a send meeting an earlier datagram's ICMP error is retried without the
/// kernel taking anything in between.
const STALE_RETRIES: u32 = 8;

/// The send queue's ring buffer is shrunk back to this many entries once it empties.
const QUEUE_KEPT_CAPACITY: usize = 1024;

/// How many drops the kernel's count `now` adds to `seen`, or `None` if it adds none: the
/// count only grows (modulo 2^32), but a datagram queued before the port opened carries
/// the count of its time, which may be below the baseline read at opening.
fn new_drops(seen: u32, now: u32) -> Option<u32> {
    let new = now.wrapping_sub(seen);
    (new != 0 && new <= u32::MAX / 2).then_some(new)
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
