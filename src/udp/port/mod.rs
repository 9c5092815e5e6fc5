//! `UdpPort<P>`: a socket, its protocol, its send queue, its counters.
//!
//! The port is split into disjoint fields (`protocol`, `core`, `recv_batch`) so that a callback
//! can be handed the protocol, a transport over the core, and a slice of the receive batch
//! at the same time: the datagram is borrowed, never copied. The receive batch and the
//! send batch belong to the reactor and are lent to one port at a time, while it reads:
//! their memory does not grow with the number of ports.

mod recv;
mod reports;
mod send;
mod stats;

use std::any::{Any, TypeId};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use mio::Registry;

use crate::error::{Error, Result};
use crate::protocol::{DatagramProtocol, short_type_name};
use crate::reactor::Reactor;
use crate::reactor::token::PortKey;
use crate::sys::{self, ErrorClass, RecvBatch, SendBatch};
use crate::udp::addr::{max_datagram, same_family};
use crate::udp::options::{DEFAULT_BATCH_SIZE, ListenOptions};
use crate::udp::socket::PortSocket;
use crate::udp::transport::UdpTransport;

use recv::*;
use reports::*;
pub(crate) use send::*;
pub use stats::PortStats;

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

/// The receive batch and the send batch the reactor lends to the port it serves: one pair
/// for all its ports, so that their memory does not grow with the number of ports.
pub(crate) type Batches = (Box<RecvBatch>, Box<SendBatch>);

/// A first pair of batches, before any port asked for its sizes.
fn new_batches() -> Batches {
    (
        Box::new(RecvBatch::default()),
        Box::new(SendBatch::with_capacity(DEFAULT_BATCH_SIZE, 64 * 1024)),
    )
}

/// What the reactor needs of a port, whatever its protocol type.
pub(crate) trait Port: Any {
    fn core(&self) -> &PortCore;
    fn core_mut(&mut self) -> &mut PortCore;
    /// Runs `start_protocol`.
    fn start(&mut self, r: &mut Reactor);
    /// Handles readiness: reads if `readable` (the reactor says so only of an open port),
    /// with `batches` (the reactor's, lent for this call: taken, and put back before it
    /// returns), sends the queue if `writable`, and reads the kernel's error queue if
    /// `error` (the kernel flagged an error). Returns whether data may be left to read.
    fn on_ready(
        &mut self,
        r: &mut Reactor,
        batches: &mut Option<Batches>,
        readable: bool,
        writable: bool,
        error: bool,
    ) -> bool;
    /// Runs a port-scoped timer's closure; false if it panicked (the timer is then
    /// cancelled).
    fn fire_timer(&mut self, r: &mut Reactor, action: &mut Box<dyn Any>) -> bool;
    /// Runs `stop_protocol`, flushes what it can, and logs the close.
    fn shut_down(&mut self, r: &mut Reactor);
    fn as_any_mut(&mut self) -> &mut dyn Any;
    /// The protocol, the rest (the socket) dropped: what a closed port leaves when kept.
    fn into_protocol(self: Box<Self>) -> Box<dyn Any>;
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
    /// The last read drained the socket: the next flush sends its first datagram alone
    /// ([`send::DRAINED_LEAD`]).
    pub(super) lead: bool,
    /// Writes gathered while a batch of received datagrams is dispatched (the reactor's
    /// send batch, lent for that time); sent with one `sendmmsg`.
    out: Option<Box<SendBatch>>,
    /// The send batch while the report hooks run (they send at once).
    parked_out: Option<Box<SendBatch>>,
    queue: SendQueue,
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
    /// The kernel coalesces reads (`UDP_GRO` is on): each slot is [`OFFLOAD_SLOT`] bytes,
    /// and a coalesced read is cut back into datagrams.
    pub(crate) receive_offload: bool,
    /// The control messages the options on can attach to a datagram, which each receive
    /// slot has room for.
    control: sys::ControlSpace,
    /// Some option whose messages the hooks read per datagram is on (the arrival address,
    /// the TOS byte, the timestamp): each datagram's are read before its hook runs.
    pub(crate) per_datagram: bool,
    /// What the kernel said of the datagram whose hook runs now (`None` outside it).
    pub(crate) arrival: Option<sys::Arrival>,
    /// Writes to a datagram's sender leave from its arrival address.
    reply_from_arrival: bool,
    /// The sender of the datagram whose hook runs now, and what replies to it carry
    /// (with `reply_from_arrival`).
    pub(crate) reply_to: Option<(SocketAddr, sys::SendMeta)>,
}

/// The receive slot of a port with receive offload: the most a coalesced read carries
/// (the kernel coalesces at most 64 KiB, IP and UDP headers included).
pub(crate) const OFFLOAD_SLOT: usize = 65_536;

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
                lead: false,
                out: None,
                parked_out: None,
                queue: SendQueue::default(),
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
                receive_offload: false,
                control: datagram_control(opts, local.is_ipv6()),
                per_datagram: false,
                arrival: None,
                reply_from_arrival: opts.reply_from_arrival,
                reply_to: None,
            },
        }
        .with_kernel_reports(opts.receive_offload)
    }

    /// Turns on what the kernel reports besides datagrams: its drop count on every datagram
    /// once any is dropped (noting where the count stands: an adopted socket may have
    /// dropped already), the error queue, and receive offload as asked (turned off where
    /// not asked, so that an adopted socket never hands the port coalesced reads it does
    /// not cut up); and sizes the control room of each receive slot for them.
    fn with_kernel_reports(mut self, receive_offload: bool) -> Self {
        match self.core.socket.enable_drop_count() {
            Ok(()) => self.core.control.drop_count = true,
            Err(e) if e.kind() == std::io::ErrorKind::Unsupported => {}
            Err(e) => debug!(
                "{} on {}: SO_RXQ_OVFL: {e}",
                self.core.prefix, self.core.local
            ),
        }
        self.core.drops_seen = self.core.socket.drops();
        self.core.set_error_queue(true);
        match self.core.socket.set_receive_offload(receive_offload) {
            Ok(()) => self.core.receive_offload = receive_offload,
            Err(e) if receive_offload => debug!(
                "{} on {}: UDP_GRO unavailable ({e}); one datagram per read",
                self.core.prefix, self.core.local
            ),
            Err(_) => {}
        }
        self.core.control.segment_size = self.core.receive_offload;
        self.core.per_datagram = self.core.control.per_datagram();
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
        let out = self.catch(r, f);
        if let Err(message) = &out {
            self.core.on_panic(hook, message);
            r.request_close(self.core.key);
        }
        out.ok()
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
        .map_err(|panic| {
            // A hook that panicked leaves its datagram's arrival behind.
            self.core.clear_arrival();
            panic_message(&*panic)
        })
    }

    /// A hook that panicked during a dispatch: logs and counts it, naming the hook and
    /// the sender of the datagram it was given; returns whether the dispatch goes on (with
    /// `close_on_panic` the port closes, and what is left of the batch is counted).
    fn panicked_in_dispatch(&mut self, r: &mut Reactor, state: &ReadState, message: &str) -> bool {
        self.core.unpark_out();
        let (hook, from) = match self.core.reporting.take() {
            Some(hook) => (hook, None),
            None => {
                let d = self
                    .recv_batch
                    .as_ref()
                    .filter(|_| state.in_batch && state.next > 0)
                    .and_then(|recv_batch| recv_batch.datagrams_from(state.next - 1).next());
                match d {
                    Some(d) if d.truncated => ("datagram_truncated", d.from),
                    Some(d) => ("datagram_received", d.from),
                    None => ("datagram_received", None),
                }
            }
        };
        if self.core.hook_panicked(hook, message, from) {
            return true;
        }
        r.request_close(self.core.key);
        // The port closes: what is left of the batch is read, not delivered, and counted.
        self.core.stats.dropped_at_stop += self.recv_batch.as_deref().map_or(0, |b| state.left(b));
        false
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
                r.request_close(self.core.key);
                return;
            }
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

    fn on_ready(
        &mut self,
        r: &mut Reactor,
        batches: &mut Option<Batches>,
        readable: bool,
        writable: bool,
        error: bool,
    ) -> bool {
        if error && self.core.error_queue {
            // The kernel queued an error (its flag may already be consumed by a send).
            self.core.error_queue_pending = true;
        }
        if !writable && !self.core.error_queue_pending && !readable {
            return false;
        }
        let reading = readable;
        if reading {
            // The reactor's batches, lent for this dispatch and given back even if a hook
            // panics (what was gathered before the panic is still sent); they grow (once)
            // to this port's batch and packet sizes.
            let (mut recv_batch, mut out) = batches.take().unwrap_or_else(new_batches);
            recv_batch.reserve(self.core.batch_size, self.core.slot());
            recv_batch.reserve_control(self.core.control);
            out.reserve(self.core.batch_size);
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
                    if !self.panicked_in_dispatch(r, &state, &message) {
                        more = Some(false);
                        break;
                    }
                }
            }
        }
        let more = more.unwrap_or_else(|| {
            // Hooks that panic while raising new events (writes that fail, say): the rest
            // waits for the next turn, but what is left of this batch is lost, and counted.
            let lost = self.recv_batch.as_deref().map_or(0, |b| state.left(b));
            self.core.stats.recv_errors += lost;
            warn!(
                "{} on {}: {resumes} panicking hooks in one dispatch; {lost} datagrams dropped",
                self.core.prefix, self.core.local
            );
            true
        });
        if let (Some(recv_batch), Some(out)) = (self.recv_batch.take(), self.core.take_out()) {
            *batches = Some((recv_batch, out));
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
                if !self.core.hook_panicked("port timer", &message, None) {
                    r.request_close(self.core.key);
                }
                false
            }
        };
        self.report(r);
        fine
    }

    fn shut_down(&mut self, r: &mut Reactor) {
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

    fn into_protocol(self: Box<Self>) -> Box<dyn Any> {
        Box::new(self.protocol)
    }
}

/// The control messages the per-datagram options in `opts` attach (on an IPv6 port, the
/// IPv4 kind too, for the IPv4 datagrams of a dual-stack socket).
fn datagram_control(opts: &ListenOptions, v6: bool) -> sys::ControlSpace {
    let arrival = opts.arrival || opts.reply_from_arrival;
    sys::ControlSpace {
        pktinfo_v4: arrival,
        pktinfo_v6: arrival && v6,
        tos_v4: opts.receive_tos,
        tclass_v6: opts.receive_tos && v6,
        timestamp: opts.timestamps,
        ..sys::ControlSpace::default()
    }
}

/// Turns on the per-datagram options `opts` asks for (and, on an adopted socket, off the
/// ones it does not): the arrival address, the TOS byte received, the timestamp, and the
/// TOS byte sent.
pub(crate) fn apply_datagram_options(
    socket: &mut PortSocket,
    local: SocketAddr,
    opts: &ListenOptions,
) -> Result<()> {
    let v6 = local.is_ipv6();
    let failed = |option: &'static str| move |source| Error::SocketOption { option, source };
    let arrival = opts.arrival || opts.reply_from_arrival;
    let quiet = |asked: bool, done: std::io::Result<()>, option: &'static str| match done {
        // Turning off what was never on: nothing to do where the OS lacks it.
        Err(_) if !asked => Ok(()),
        other => other.map_err(failed(option)),
    };
    quiet(
        arrival,
        socket.set_arrival(v6, arrival),
        if v6 { "IPV6_RECVPKTINFO" } else { "IP_PKTINFO" },
    )?;
    quiet(
        opts.receive_tos,
        socket.set_recv_tos(v6, opts.receive_tos),
        if v6 { "IPV6_RECVTCLASS" } else { "IP_RECVTOS" },
    )?;
    quiet(
        opts.timestamps,
        socket.set_timestamps(opts.timestamps),
        "SO_TIMESTAMPNS",
    )?;
    if let Some(tos) = opts.tos {
        socket
            .set_tos(v6, tos)
            .map_err(failed(if v6 { "IPV6_TCLASS" } else { "IP_TOS" }))?;
    }
    Ok(())
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
