//! The receive path: batches read until the budget is spent, each datagram delivered
//! (or counted: truncated, from another peer, read after a stop), coalesced reads cut
//! back into datagrams, the drop count.

use super::*;

/// Where a dispatch of received datagrams stands; kept outside the panic guard, so that
/// after a panicking hook the dispatch goes on with the next datagram.
#[derive(Default)]
pub(super) struct ReadState {
    /// Datagrams (and errors) read so far this dispatch, against the budget.
    pub(super) count: usize,
    /// Payload bytes read so far this dispatch, against the byte budget.
    pub(super) bytes: usize,
    /// The batch being delivered: how many were asked for and read, and how many of them
    /// were handed on (or are being).
    pub(super) want: usize,
    pub(super) got: usize,
    pub(super) next: usize,
    pub(super) in_batch: bool,
    /// The reactor's stop count when the batch was read.
    pub(super) stops: u64,
    /// Of the coalesced read `next - 1`, how many datagrams were handed on (or are being);
    /// 0 between reads.
    pub(super) seg: usize,
    /// Datagrams handed on beyond one per read (coalesced reads), against the budget.
    pub(super) extra: usize,
}

impl ReadState {
    /// The datagrams of the batch being delivered that are not handed on yet (a coalesced
    /// read counts the datagrams it carries).
    pub(super) fn left(&self, batch: &RecvBatch) -> u64 {
        if !self.in_batch {
            return 0;
        }
        let mut left = 0;
        if self.seg > 0 {
            left += carried(batch, self.next - 1).saturating_sub(self.seg) as u64;
        }
        left + (self.next..self.got)
            .map(|i| carried(batch, i) as u64)
            .sum::<u64>()
    }
}

/// How many datagrams read `i` carries: several for a coalesced one.
fn carried(batch: &RecvBatch, i: usize) -> usize {
    match (batch.segment_size(i), batch.datagrams_from(i).next()) {
        (Some(size), Some(d)) => d.len.div_ceil(size).max(1),
        _ => 1,
    }
}

/// Reads datagrams, a batch per system call, until the socket is drained or the budget
/// is spent, dispatching each batch and then sending the writes it gathered; returns
/// whether the budget ran out first (data may be left). Called again after a panicking
/// hook, it goes on where `st` says.
pub(super) fn read_until_budget<P: DatagramProtocol>(
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
        if t.must_stop() {
            return false;
        }
        st.stops = t.stops_asked();
        // Bounded by bytes too: no more datagrams of the largest size than the byte
        // budget has room for (at least one).
        let by_bytes = (budget_bytes - st.bytes).div_ceil(t.core.max_packet_size.max(1));
        let want = (budget - st.count).min(t.core.batch_size).min(by_bytes);
        let got = match t.core.socket.recv(recv_batch, want, t.core.slot()) {
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
        // Fewer than asked for: the socket is drained, and its senders may be waiting.
        t.core.lead = got < want;
        // Counted once per read: the control messages only a port with receive offload
        // needs per datagram (the drop count is the last datagram's).
        t.core.stats.control_truncated += recv_batch.control_truncated_count() as u64;
        st.want = want;
        st.got = got;
        st.next = 0;
        st.seg = 0;
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
pub(super) fn finish_batch<P: DatagramProtocol>(
    p: &mut P,
    t: &mut UdpTransport<'_>,
    recv_batch: &mut RecvBatch,
    st: &mut ReadState,
) -> bool {
    let mut next = st.next;
    // Going on after a hook that asked for a stop and then panicked: none of the rest.
    let mut stopped = next > 0 && t.stops_asked() != st.stops && t.must_stop();
    // Counted against the budgets once the batch is done; going on after a panic, the
    // datagrams handed on before it count too.
    let mut bytes: usize = recv_batch
        .datagrams_from(0)
        .take(next)
        .map(|d| d.data.len())
        .sum();
    // Going on inside a coalesced read whose hook panicked: the rest of that read first.
    if !stopped && st.seg > 0 {
        stopped = deliver_offloaded(p, t, recv_batch, next - 1, st);
    }
    let rest = if stopped { st.got } else { next };
    if t.core.receive_offload {
        // A read may carry several datagrams, or one longer than the max packet size.
        for i in rest..st.got {
            next = i + 1;
            st.next = next;
            bytes += recv_batch.get(i).data.len();
            if deliver_offloaded(p, t, recv_batch, i, st) {
                stopped = true;
                break;
            }
        }
    } else if t.core.per_datagram {
        stopped |= deliver_each_with_arrival(p, t, recv_batch, rest, &mut next, &mut bytes, st);
    } else {
        stopped |= deliver_each::<P, false>(p, t, recv_batch, rest, &mut next, &mut bytes, st);
    }
    if stopped {
        t.core.stats.dropped_at_stop += st.left(recv_batch);
    }
    st.seg = 0;
    st.count += st.next + std::mem::take(&mut st.extra);
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

/// Delivers datagrams `rest..` of the batch one by one (each told its arrival, with
/// `ARRIVAL`), counting them in `next` and `bytes`; returns whether a stop came meanwhile
/// (the rest is then read but not delivered).
#[inline(always)]
fn deliver_each<P: DatagramProtocol, const ARRIVAL: bool>(
    p: &mut P,
    t: &mut UdpTransport<'_>,
    batch: &RecvBatch,
    rest: usize,
    next: &mut usize,
    bytes: &mut usize,
    st: &mut ReadState,
) -> bool {
    for d in batch.datagrams_from(rest) {
        *next += 1;
        // Where to go on from if this datagram's hook panics.
        st.next = *next;
        *bytes += d.data.len();
        if ARRIVAL {
            deliver_with_arrival(p, t, d);
        } else {
            deliver(p, t, d);
        }
        // Flow control at once, after the hook whose write crossed a mark.
        tell_flow(p, t);
        // `stop_listening`, `Reactor::stop` and closing a port by handle all change the
        // count: one comparison per datagram while nothing of the kind happens.
        if t.stops_asked() != st.stops && t.must_stop() {
            return true;
        }
    }
    false
}

/// [`deliver_each`] on a port with a per-datagram option on, apart from the plain loop.
#[inline(never)]
fn deliver_each_with_arrival<P: DatagramProtocol>(
    p: &mut P,
    t: &mut UdpTransport<'_>,
    batch: &RecvBatch,
    rest: usize,
    next: &mut usize,
    bytes: &mut usize,
    st: &mut ReadState,
) -> bool {
    deliver_each::<P, true>(p, t, batch, rest, next, bytes, st)
}

/// Delivers read `i` of the batch of a port with receive offload: a coalesced read
/// datagram by datagram (from `st.seg` on, going on after a panic), each cut short as the
/// max packet size says, each told the read's arrival. Returns whether a stop came
/// meanwhile.
#[inline(never)]
fn deliver_offloaded<P: DatagramProtocol>(
    p: &mut P,
    t: &mut UdpTransport<'_>,
    batch: &RecvBatch,
    i: usize,
    st: &mut ReadState,
) -> bool {
    let Some(d) = batch.datagrams_from(i).next() else {
        return false;
    };
    if !t.core.per_datagram {
        return deliver_read(p, t, batch, i, d, st);
    }
    t.core.set_arrival(d.control);
    if let Some(from) = d.from {
        t.core.note_reply_to(from);
    }
    let stopped = deliver_read(p, t, batch, i, d, st);
    t.core.clear_arrival();
    stopped
}

/// [`deliver_offloaded`] of read `i`, `d`.
#[inline(always)]
fn deliver_read<P: DatagramProtocol>(
    p: &mut P,
    t: &mut UdpTransport<'_>,
    batch: &RecvBatch,
    i: usize,
    d: sys::Datagram<'_>,
    st: &mut ReadState,
) -> bool {
    let control_truncated = batch.control_truncated(i);
    let Some(size) = batch.segment_size(i) else {
        if control_truncated {
            // The segment size may have been the message lost: this may be several
            // datagrams run together, which are never delivered as one.
            return false;
        }
        deliver_from_slot(p, t, d.data, d.len, d.from);
        tell_flow(p, t);
        return t.stops_asked() != st.stops && t.must_stop();
    };
    let count = d.len.div_ceil(size).max(1);
    t.core.stats.coalesced_reads += u64::from(st.seg == 0 && count > 1);
    for k in st.seg..count {
        st.seg = k + 1;
        let start = k * size;
        let whole = size.min(d.len - start);
        // Past the slot (it was too small for the read): counted as truncated.
        let data = d.data.get(start..).unwrap_or(&[]);
        let data = &data[..whole.min(data.len())];
        if k > 0 {
            st.extra += 1;
        }
        deliver_from_slot(p, t, data, whole, d.from);
        tell_flow(p, t);
        if t.stops_asked() != st.stops && t.must_stop() {
            return true;
        }
    }
    st.seg = 0;
    false
}

/// Delivers one datagram of `len` bytes whose first `data.len()` bytes the slot holds,
/// cut short (as truncated) if longer than the max packet size or than the slot.
#[inline]
fn deliver_from_slot<P: DatagramProtocol>(
    p: &mut P,
    t: &mut UdpTransport<'_>,
    data: &[u8],
    len: usize,
    from: Option<SocketAddr>,
) {
    let Some(from) = from else {
        t.core.stats.recv_errors += 1;
        return;
    };
    let kept = data.len().min(t.core.max_packet_size);
    let truncated = len > kept;
    deliver_from(p, t, &data[..kept], truncated, len, from);
}

/// Hands one received datagram to the protocol (or counts it, if cut short or from an
/// address that is not IP).
#[inline(always)]
pub(super) fn deliver<P: DatagramProtocol>(
    p: &mut P,
    t: &mut UdpTransport<'_>,
    d: sys::Datagram<'_>,
) {
    // One arm per family, so that each builds only its own kind of address for the
    // call (merged, the two would go through a field-by-field copy of both layouts).
    match d.from {
        Some(from @ SocketAddr::V4(_)) => deliver_from(p, t, d.data, d.truncated, d.len, from),
        Some(from @ SocketAddr::V6(_)) => deliver_from(p, t, d.data, d.truncated, d.len, from),
        None => t.core.stats.recv_errors += 1,
    }
}

/// [`deliver`] on a port with a per-datagram option on: the hook is told the datagram's
/// arrival (its control messages read first), and nothing of it outlives the hook.
#[inline(always)]
fn deliver_with_arrival<P: DatagramProtocol>(
    p: &mut P,
    t: &mut UdpTransport<'_>,
    d: sys::Datagram<'_>,
) {
    t.core.set_arrival(d.control);
    // One arm per family, as in `deliver`.
    match d.from {
        Some(from @ SocketAddr::V4(_)) => {
            t.core.note_reply_to(from);
            deliver_from(p, t, d.data, d.truncated, d.len, from);
        }
        Some(from @ SocketAddr::V6(_)) => {
            t.core.note_reply_to(from);
            deliver_from(p, t, d.data, d.truncated, d.len, from);
        }
        None => t.core.stats.recv_errors += 1,
    }
    t.core.clear_arrival();
}

#[inline(always)]
pub(super) fn deliver_from<P: DatagramProtocol>(
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
pub(super) fn read_refused<P: DatagramProtocol>(p: &mut P, t: &mut UdpTransport<'_>) {
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
pub(super) const WARN_INTERVAL: Duration = Duration::from_secs(1);

impl PortCore {
    /// The bytes of each receive slot: the max packet size, or with receive offload the
    /// most a coalesced read carries.
    #[inline(always)]
    pub(crate) fn slot(&self) -> usize {
        if self.receive_offload {
            OFFLOAD_SLOT
        } else {
            self.max_packet_size
        }
    }

    pub(super) fn on_truncated(&mut self, from: SocketAddr, len: usize) {
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

    /// Reads what a datagram's control messages say, for the hook about to run.
    #[inline(never)]
    pub(super) fn set_arrival(&mut self, control: &[u8]) {
        let arrival = self.arrival.insert(sys::Arrival::default());
        sys::recv_meta(control, arrival);
    }

    /// With `reply_from_arrival`, has writes to `from` (the sender of the datagram whose
    /// arrival was just set) leave from its reply source.
    #[inline(always)]
    pub(super) fn note_reply_to(&mut self, from: SocketAddr) {
        if self.reply_from_arrival
            && let Some(source) = self.arrival.and_then(|a| a.reply_source)
        {
            self.reply_to = Some((
                from,
                sys::SendMeta {
                    source: Some(source),
                    tos: None,
                },
            ));
        }
    }

    /// Forgets the arrival of the datagram whose hook returned.
    #[inline]
    pub(crate) fn clear_arrival(&mut self) {
        self.arrival = None;
        self.reply_to = None;
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
}

/// How many drops the kernel's count `now` adds to `seen`, or `None` if it adds none: the
/// count only grows (modulo 2^32), but a datagram queued before the port opened carries
/// the count of its time, which may be below the baseline read at opening.
pub(super) fn new_drops(seen: u32, now: u32) -> Option<u32> {
    let new = now.wrapping_sub(seen);
    (new != 0 && new <= u32::MAX / 2).then_some(new)
}
