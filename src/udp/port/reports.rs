//! What the port tells its protocol besides datagrams: refusals, errors read from the
//! kernel's error queue, flow control, and panics in hooks.

use super::*;

/// How many times one dispatch goes on after panicking hooks, beyond the port's read
/// budget, before it leaves the rest for the next turn: it only bounds a turn's length.
pub(super) const MAX_RESUMES: usize = 4 * ERRORS_KEPT;

/// Calls `connection_refused` for refusals that writes met while a hook ran, and
/// `error_received` for the errors met since (reading the kernel's error queue first if a
/// call found it had entries). Bounded, since those hooks may write and meet more.
pub(super) fn report_pending<P: DatagramProtocol>(protocol: &mut P, t: &mut UdpTransport<'_>) {
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
pub(super) fn tell_flow<P: DatagramProtocol>(protocol: &mut P, t: &mut UdpTransport<'_>) {
    if t.core.write_paused != t.core.told_paused {
        t.core.told_paused = t.core.write_paused;
        // Neither hook is about a datagram: the arrival of the one being delivered (on a
        // port with receive offload, whose reads carry several) is put aside meanwhile.
        let arrival = (t.core.arrival.take(), t.core.reply_to.take());
        if t.core.write_paused {
            t.core.reporting = Some("pause_producing");
            protocol.pause_producing(t);
        } else {
            t.core.reporting = Some("resume_producing");
            protocol.resume_producing(t);
        }
        t.core.reporting = None;
        (t.core.arrival, t.core.reply_to) = arrival;
    }
}

/// The most errors kept for `error_received` at once; more are counted in
/// `errors_unreported`, and logged at debug.
pub(super) const ERRORS_KEPT: usize = 1024;

/// The most entries read from the kernel's error queue at once (its memory, the socket's
/// receive buffer, holds about 256 with the default size).
pub(super) const ERROR_QUEUE_READS: usize = 1024;

impl PortCore {
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
    pub(super) fn keep_error(&mut self, error: Error, addr: SocketAddr) {
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

    /// Whether something waits to be told to the protocol.
    #[inline]
    pub(super) fn has_pending(&self) -> bool {
        self.refused_pending > 0
            || self.error_queue_pending
            || self.write_paused != self.told_paused
            || !self.errors.is_empty()
    }

    /// A panic in a hook a remote peer can trigger, or in a port timer: logged with the
    /// port and the sender, counted; it closes the port only with `close_on_panic`.
    /// Returns whether the port goes on.
    pub(super) fn hook_panicked(
        &mut self,
        hook: &str,
        message: &str,
        from: Option<SocketAddr>,
    ) -> bool {
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
        !self.close_on_panic
    }

    pub(super) fn on_panic(&mut self, hook: &str, message: &str) {
        error!(
            "{} on {}: {hook} panicked: {message}; closing the port",
            self.prefix, self.local
        );
        self.panic = Some(message.to_owned());
    }
}
