//! `UdpPort<P>`: a socket, its protocol, its receive buffer, its send queue, its counters.
//!
//! The port is split into disjoint fields (`protocol`, `core`, `buf`) so that a callback
//! can be handed the protocol, a transport over the core, and a slice of the buffer at the
//! same time: the datagram is borrowed, never copied.

use std::any::{Any, TypeId};
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::{Duration, Instant};

use log::{debug, error, info, trace, warn};
use mio::net::UdpSocket;
use mio::{Interest, Registry};

use crate::error::{Error, Result};
use crate::protocol::{DatagramProtocol, short_type_name};
use crate::reactor::Reactor;
use crate::sys::{self, ErrorClass};
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
    pub(crate) peer: Option<SocketAddr>,
    pub(crate) prefix: String,
    pub(crate) protocol_type: (TypeId, &'static str),
    /// Stop asked for: no more reads; torn down on a later turn.
    pub(crate) closing: bool,
    /// Sends that met ECONNREFUSED: `connection_refused` is called once for each, after the
    /// running hook returns.
    pub(crate) refused_pending: u32,
    /// The message of a panic caught in a hook.
    pub(crate) panic: Option<String>,
    pub(crate) stats: PortStats,
    pub(crate) max_packet_size: usize,
    read_budget: usize,
    read_budget_bytes: usize,
    queue: VecDeque<(Box<[u8]>, SocketAddr)>,
    queued_bytes: usize,
    queue_limit: usize,
    writable_registered: bool,
    last_truncation_warning: Option<Instant>,
}

/// A port: its protocol, its core and its receive buffer.
pub(crate) struct UdpPort<P> {
    protocol: P,
    core: PortCore,
    buf: Vec<u8>,
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
            buf: vec![0; opts.max_packet_size],
            core: PortCore {
                socket,
                key,
                local,
                peer: None,
                prefix,
                protocol_type: (TypeId::of::<P>(), short_type_name::<P>()),
                closing: false,
                refused_pending: 0,
                panic: None,
                stats: PortStats::default(),
                max_packet_size: opts.max_packet_size,
                read_budget: opts.read_budget,
                read_budget_bytes: opts.read_budget_bytes,
                queue: VecDeque::new(),
                queued_bytes: 0,
                queue_limit: opts.send_queue_limit,
                writable_registered: false,
                last_truncation_warning: None,
            },
        }
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
        f: impl FnOnce(&mut P, &mut UdpTransport<'_>, &mut Vec<u8>) -> R,
    ) -> Option<R> {
        let (protocol, core, buf) = (&mut self.protocol, &mut self.core, &mut self.buf);
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            let mut t = UdpTransport::new(core, r);
            let out = f(protocol, &mut t, buf);
            report_refusals(protocol, &mut t);
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

/// Calls `connection_refused` for refusals that writes met while a hook ran.
fn report_refusals<P: DatagramProtocol>(protocol: &mut P, t: &mut UdpTransport<'_>) {
    while t.core.refused_pending > 0 {
        t.core.refused_pending -= 1;
        protocol.connection_refused(t);
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
        self.guarded(r, "start_protocol", |p, t, _| p.start_protocol(t));
    }

    fn on_ready(&mut self, r: &mut Reactor, readable: bool, writable: bool) -> bool {
        if !writable && (!readable || self.core.closing) {
            return false;
        }
        self.guarded(r, "datagram_received or connection_refused", |p, t, buf| {
            if writable {
                t.core.flush_queue();
            }
            readable && !t.core.closing && read_batch(p, t, buf)
        })
        .unwrap_or(false)
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
        debug!(
            "{} on {} closed: {:?}",
            self.core.prefix, self.core.local, self.core.stats
        );
    }

    fn as_any_mut(&mut self) -> &mut dyn Any {
        self
    }
}

/// Reads datagrams until the socket is drained or the budget is spent; returns whether
/// the budget ran out first (data may be left).
fn read_batch<P: DatagramProtocol>(p: &mut P, t: &mut UdpTransport<'_>, buf: &mut [u8]) -> bool {
    let (budget, budget_bytes) = (t.core.read_budget, t.core.read_budget_bytes);
    let (mut count, mut bytes) = (0, 0);
    while count < budget && bytes < budget_bytes {
        if t.core.closing || t.reactor.close_requested(t.core.key) || t.reactor.is_stopping() {
            return false;
        }
        match sys::recv_from(&t.core.socket, buf) {
            Ok(rcv) => {
                count += 1;
                bytes += rcv.len;
                if rcv.truncated {
                    t.core.on_truncated(rcv.from);
                    continue;
                }
                t.core.stats.datagrams_received += 1;
                t.core.stats.bytes_received += rcv.len as u64;
                p.datagram_received(t, &buf[..rcv.len], rcv.from);
                report_refusals(p, t);
            }
            Err(e) => match sys::classify(&e) {
                ErrorClass::WouldBlock => return false,
                ErrorClass::Refused => {
                    // The kernel reports ICMP port unreachable only on connected sockets
                    // (without IP_RECVERR); the error is consumed, so keep reading.
                    count += 1;
                    if let Some(peer) = t.core.peer {
                        t.core.stats.refused += 1;
                        debug!("{} on {}: refused by {peer}", t.core.prefix, t.core.local);
                        p.connection_refused(t);
                    }
                }
                _ => {
                    count += 1;
                    t.core.stats.recv_errors += 1;
                    debug!("{} on {}: recv: {e}", t.core.prefix, t.core.local);
                }
            },
        }
    }
    true
}

/// How long between two truncation warnings of one port.
const WARN_INTERVAL: Duration = Duration::from_secs(1);

impl PortCore {
    /// Sends one datagram now, or queues it if the kernel's buffer is full.
    pub(crate) fn send(&mut self, data: &[u8], addr: SocketAddr) -> Result<()> {
        if !same_family(&addr, &self.local) {
            return Err(Error::AddressFamilyMismatch {
                address: addr,
                local: self.local,
            });
        }
        let max = max_datagram(&self.local);
        if data.len() > max {
            return Err(Error::MessageTooLong {
                len: data.len(),
                max,
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
        match self.send_now(data, addr) {
            Err(e) if sys::classify(&e) == ErrorClass::WouldBlock => self.enqueue(data, addr),
            Err(e) => self.send_failed(e, data.len(), addr),
            Ok(()) => Ok(()),
        }
    }

    fn send_now(&mut self, data: &[u8], addr: SocketAddr) -> std::io::Result<()> {
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
        Ok(())
    }

    /// Sends queued datagrams until the kernel's buffer is full again.
    pub(crate) fn flush_queue(&mut self) {
        while let Some((data, addr)) = self.queue.pop_front() {
            match self.send_now(&data, addr) {
                Err(e) if sys::classify(&e) == ErrorClass::WouldBlock => {
                    self.queue.push_front((data, addr));
                    return;
                }
                Err(e) => {
                    self.queued_bytes -= data.len();
                    debug!(
                        "{} on {}: queued send to {addr}: {e}",
                        self.prefix, self.local
                    );
                    // Counted (and a refusal reported) as a direct send's would be; a
                    // too-long datagram has no caller left to tell, so it counts as an error.
                    if let Err(Error::MessageTooLong { .. }) = self.send_failed(e, data.len(), addr)
                    {
                        self.stats.send_errors += 1;
                    }
                }
                Ok(()) => self.queued_bytes -= data.len(),
            }
        }
    }

    /// Bytes waiting in the send queue.
    pub(crate) fn queued_bytes(&self) -> usize {
        self.queued_bytes
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

    fn on_truncated(&mut self, from: SocketAddr) {
        self.stats.truncated += 1;
        let now = Instant::now();
        let due = self
            .last_truncation_warning
            .is_none_or(|last| now.duration_since(last) >= WARN_INTERVAL);
        if due {
            self.last_truncation_warning = Some(now);
            warn!(
                "{} on {}: datagram from {from} longer than max packet size {} dropped ({} so far)",
                self.prefix, self.local, self.max_packet_size, self.stats.truncated
            );
        } else {
            trace!(
                "{} on {}: truncated datagram from {from} dropped",
                self.prefix, self.local
            );
        }
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
