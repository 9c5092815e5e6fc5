//! The send path: writes sent at once, gathered for one `sendmmsg`, or queued while the
//! kernel's buffer is full, with the queue's charge and flow-control marks.

use super::*;

use crate::sys::SendMeta;

/// What one entry of the send queue is charged besides its payload, against the flow
/// control marks and the queue's bound: what it costs in memory, at least (48 bytes in
/// the queue's ring buffer, as much again while that buffer is half empty after growing,
/// and up to 32 bytes the allocator adds to the payload's block).
pub(crate) const QUEUE_ENTRY_OVERHEAD: usize = 128;

/// What a queue entry that carries a source address or a TOS byte is charged on top of
/// [`QUEUE_ENTRY_OVERHEAD`]: its entry in the queue's second ring (32 bytes, and as much
/// again while that ring is half empty).
pub(crate) const QUEUE_META_OVERHEAD: usize = 64;

/// What a datagram of `len` bytes is charged once queued.
#[inline(always)]
pub(super) fn charge(len: usize) -> usize {
    len + QUEUE_ENTRY_OVERHEAD
}

/// What a datagram of `len` bytes carrying `meta` is charged once queued.
#[inline(always)]
pub(super) fn charge_meta(len: usize, meta: &SendMeta) -> usize {
    charge(len)
        + if meta.is_empty() {
            0
        } else {
            QUEUE_META_OVERHEAD
        }
}

/// What the datagrams gathered in `out` would be charged once queued.
#[inline(always)]
pub(super) fn gathered_charge(out: &SendBatch) -> usize {
    out.total_bytes() + out.len() * QUEUE_ENTRY_OVERHEAD + out.meta_count() * QUEUE_META_OVERHEAD
}

/// The send queue: datagrams the kernel's full buffer did not take, in order. What an
/// entry carries besides its bytes (a source, a TOS byte) is kept in a second ring, by
/// the entry's sequence number, so that the common entry stays its payload and address.
#[derive(Debug, Default)]
pub(crate) struct SendQueue {
    entries: VecDeque<(Box<[u8]>, SocketAddr)>,
    metas: VecDeque<(u64, SendMeta)>,
    /// The sequence number of the front entry.
    front: u64,
}

impl SendQueue {
    #[inline(always)]
    pub(crate) fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn push_back(&mut self, data: Box<[u8]>, addr: SocketAddr, meta: SendMeta) {
        if !meta.is_empty() {
            let seq = self.front.wrapping_add(self.entries.len() as u64);
            self.metas.push_back((seq, meta));
        }
        self.entries.push_back((data, addr));
    }

    fn push_front(&mut self, data: Box<[u8]>, addr: SocketAddr, meta: SendMeta) {
        self.front = self.front.wrapping_sub(1);
        if !meta.is_empty() {
            self.metas.push_front((self.front, meta));
        }
        self.entries.push_front((data, addr));
    }

    fn pop_front(&mut self) -> Option<(Box<[u8]>, SocketAddr, SendMeta)> {
        let (data, addr) = self.entries.pop_front()?;
        let seq = self.front;
        self.front = self.front.wrapping_add(1);
        let meta = match self.metas.front() {
            Some(&(at, meta)) if at == seq => {
                self.metas.pop_front();
                meta
            }
            _ => SendMeta::default(),
        };
        Some((data, addr, meta))
    }

    fn shrink(&mut self) {
        if self.entries.is_empty() && self.entries.capacity() > QUEUE_KEPT_CAPACITY {
            // A burst's ring buffer is not kept for ever.
            self.entries.shrink_to(QUEUE_KEPT_CAPACITY);
        }
        if self.metas.is_empty() && self.metas.capacity() > QUEUE_KEPT_CAPACITY {
            self.metas.shrink_to(QUEUE_KEPT_CAPACITY);
        }
    }
}

/// The high-water mark of a port: the one asked for, lowered if need be to leave room
/// below the queue's bound for one more datagram of the largest size (with a source or a
/// TOS byte of its own), so that a producer that stops once paused never meets the bound.
pub(super) fn write_high(opts: &ListenOptions, local: &SocketAddr) -> usize {
    let room = opts
        .send_queue_limit
        .saturating_sub(charge(max_datagram(local)) + QUEUE_META_OVERHEAD);
    opts.write_high.min(room)
}

impl PortCore {
    /// Sends one datagram now, or queues it if the kernel's buffer is full.
    ///
    /// The common case (an unconnected port dispatching a batch, nothing queued, an
    /// address of the port's family, a length UDP can carry) is the few tests here, inlined
    /// into the protocol's callback; everything else is [`send_checked`](Self::send_checked).
    #[inline]
    pub(crate) fn send(&mut self, data: &[u8], addr: SocketAddr) -> Result<()> {
        if self.peer.is_none()
            && addr.is_ipv4() == self.local_is_v4
            && self.reply_to.is_none()
            && self.gather(data, addr)
        {
            return Ok(());
        }
        self.send_reply(data, addr)
    }

    /// [`send_checked`](Self::send_checked) of a write to `addr` with what it carries as
    /// a reply ([`reply_meta`](Self::reply_meta)); kept out of line, so that the common
    /// case inlined into the hook only compares and copies the address.
    #[inline(never)]
    fn send_reply(&mut self, data: &[u8], addr: SocketAddr) -> Result<()> {
        let meta = self.reply_meta(&addr);
        self.send_checked(data, addr, meta)
    }

    /// What a write to `addr` carries: with `reply_from_arrival`, inside the hook of a
    /// datagram from `addr`, its arrival address as the source; else nothing.
    #[inline]
    fn reply_meta(&self, addr: &SocketAddr) -> SendMeta {
        match self.reply_to {
            Some((to, meta)) if is_peer(&to, addr) => meta,
            _ => SendMeta::default(),
        }
    }

    /// [`send`](Self::send) of a datagram carrying `meta` (checked by the caller).
    pub(crate) fn send_meta(
        &mut self,
        data: &[u8],
        addr: SocketAddr,
        mut meta: SendMeta,
    ) -> Result<()> {
        if meta.is_empty() {
            return self.send(data, addr);
        }
        // A reply that sets only its TOS byte still leaves from the arrival address.
        if meta.source.is_none() {
            meta.source = self.reply_meta(&addr).source;
        }
        self.send_checked(data, addr, meta)
    }

    /// Sends one datagram to the connected peer: [`send`](Self::send) without the address.
    #[inline]
    pub(crate) fn send_connected(&mut self, data: &[u8]) -> Result<()> {
        let Some(peer) = self.peer else {
            return Err(Error::NotConnected);
        };
        if self.reply_to.is_none() && self.gather(data, peer) {
            return Ok(());
        }
        self.send_reply(data, peer)
    }

    /// Adds the datagram to the batch being gathered, if there is one, nothing is queued
    /// before it and UDP can carry it (sending the batch once full); false otherwise.
    #[inline(always)]
    pub(super) fn gather(&mut self, data: &[u8], addr: SocketAddr) -> bool {
        self.gather_into(data, |out| out.push(data, addr))
    }

    /// [`gather`](Self::gather) of a datagram carrying `meta`.
    pub(super) fn gather_meta(&mut self, data: &[u8], addr: SocketAddr, meta: SendMeta) -> bool {
        self.gather_into(data, |out| out.push_with(data, addr, meta))
    }

    /// Gathers a datagram of `data`'s length with `push`, if there is a batch to gather
    /// into, nothing is queued and UDP can carry it; see [`gather`](Self::gather).
    #[inline(always)]
    fn gather_into(&mut self, data: &[u8], push: impl FnOnce(&mut SendBatch)) -> bool {
        if data.len() > self.max_send || !self.queue.is_empty() {
            return false;
        }
        let Some(out) = self.out.as_mut() else {
            return false;
        };
        push(out);
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
    pub(super) fn send_checked(
        &mut self,
        data: &[u8],
        addr: SocketAddr,
        meta: SendMeta,
    ) -> Result<()> {
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
            return self.enqueue(data, addr, meta);
        }
        if self.gather_meta(data, addr, meta) {
            return Ok(());
        }
        match self.send_now(data, addr, meta) {
            Err(e) if sys::classify(&e) == ErrorClass::WouldBlock => self.enqueue(data, addr, meta),
            Err(e) => self.send_failed(e, data.len(), addr),
            Ok(()) => Ok(()),
        }
    }

    pub(super) fn send_now(
        &mut self,
        data: &[u8],
        addr: SocketAddr,
        meta: SendMeta,
    ) -> std::io::Result<()> {
        let mut retries = 0;
        loop {
            // A datagram written before `connect` to another address still goes there
            // (Linux takes a destination on a connected UDP socket), never to the peer.
            let to_peer = self.peer.is_some_and(|p| is_peer(&p, &addr));
            let sent = if meta.is_empty() {
                self.socket.send_one(data, addr, to_peer)
            } else {
                self.socket.send_one_with(data, addr, to_peer, &meta)
            };
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

    pub(super) fn send_failed(
        &mut self,
        e: std::io::Error,
        len: usize,
        addr: SocketAddr,
    ) -> Result<()> {
        match sys::classify(&e) {
            ErrorClass::Refused => {
                let peer = self.peer.unwrap_or(addr);
                if self.peer.is_some() {
                    self.stats.refused += 1;
                    self.refused_pending += 1;
                }
                Err(Error::ConnectionRefused { peer })
            }
            ErrorClass::TooLong => {
                // The kernel's own refusal (the path, or the interface, allows less).
                self.stats.send_errors += 1;
                Err(Error::MessageTooLong {
                    len,
                    max: max_datagram(&self.local),
                })
            }
            _ => {
                self.stats.send_errors += 1;
                Err(Error::Send { addr, source: e })
            }
        }
    }

    /// Queues a datagram the kernel's full buffer did not take, unless the queue is at
    /// its bound: each entry is charged its payload and [`QUEUE_ENTRY_OVERHEAD`].
    pub(super) fn enqueue(&mut self, data: &[u8], addr: SocketAddr, meta: SendMeta) -> Result<()> {
        if self.queue_charge + charge_meta(data.len(), &meta) > self.queue_limit {
            self.stats.send_dropped += 1;
            return Err(Error::SendQueueFull {
                len: data.len(),
                queued: self.queue_charge,
            });
        }
        self.queue_entry(data, addr, meta);
        Ok(())
    }

    /// Queues a datagram already accepted (gathered by `write`, then not taken by the
    /// kernel). Gathered writes are sent before they could count past the high-water mark
    /// and only while the queue is empty, so this stays below the bound.
    pub(super) fn queue_entry(&mut self, data: &[u8], addr: SocketAddr, meta: SendMeta) {
        self.stats.send_queued += 1;
        self.queue_charge += charge_meta(data.len(), &meta);
        self.queue.push_back(data.into(), addr, meta);
        if self.queue_charge > self.write_high {
            self.write_paused = true;
        }
    }

    /// Sends queued datagrams until the kernel's buffer is full again.
    pub(crate) fn flush_queue(&mut self) {
        while let Some((data, addr, meta)) = self.queue.pop_front() {
            match self.send_now(&data, addr, meta) {
                Err(e) if sys::classify(&e) == ErrorClass::WouldBlock => {
                    self.queue.push_front(data, addr, meta);
                    break;
                }
                Err(e) => self.later_send_failed(e, data.len(), addr),
                Ok(()) => {}
            }
            self.queue_charge -= charge_meta(data.len(), &meta);
        }
        self.queue.shrink();
        if self.write_paused && self.queue_charge <= self.write_low {
            self.write_paused = false;
        }
    }

    /// A send that failed after `write` returned (from the send queue or the gathered
    /// batch): counted, and a refusal reported, as a direct send's would be; a too-long
    /// datagram has no caller left to tell, so it reaches `error_received` as an error.
    pub(super) fn later_send_failed(&mut self, e: std::io::Error, len: usize, addr: SocketAddr) {
        debug!("{} on {}: send to {addr}: {e}", self.prefix, self.local);
        let kept = copy_io_error(&e);
        match self.send_failed(e, len, addr) {
            // Told through connection_refused.
            Err(Error::ConnectionRefused { .. }) if self.peer.is_some() => {}
            Err(_) => self.keep_error(Error::Send { addr, source: kept }, addr),
            Ok(()) => {}
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
        // After a read that drained the socket, whoever sent it may now wait on these
        // replies: the first goes alone, so that it wakes its receiver at once and the
        // receiver's wake-up overlaps the sending of the rest, instead of the whole run
        // reaching it at the end of one message, with both sides taking turns to idle.
        let mut lead = if std::mem::take(&mut self.lead) {
            DRAINED_LEAD
        } else {
            usize::MAX
        };
        let mut next = 0;
        // Stale errors met since the last datagram the kernel took: each was raised by an
        // earlier datagram and consumed by the call that met it, so the call is retried.
        let mut retries = 0;
        while next < out.len() {
            let sent = self.socket.send_batch(
                &mut out,
                next,
                connected,
                self.segmentation,
                std::mem::replace(&mut lead, usize::MAX),
            );
            match sent {
                Err(e) if retries < STALE_RETRIES && self.stale_error(&e) => retries += 1,
                // A message with a source or TOS byte of its own may be refused for those
                // (EINVAL for a source the kernel will not use): that is its datagram's
                // error, not the kernel's refusal to segment.
                Err(e)
                    if self.segmentation
                        && out.first_run() > 1
                        && out.meta(next).is_empty()
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
                        self.queue_entry(data, addr, out.meta(i));
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
    pub(super) fn take_out(&mut self) -> Option<Box<SendBatch>> {
        self.unpark_out();
        self.flush_out();
        self.out.take()
    }

    /// Sends what is gathered and stops gathering (writes go out at once) until
    /// [`unpark_out`](Self::unpark_out).
    pub(super) fn park_out(&mut self) {
        if self.out.as_ref().is_some_and(|out| !out.is_empty()) {
            self.flush_out();
        }
        if self.out.is_some() {
            self.parked_out = self.out.take();
        }
    }

    /// Gathers writes again, if [`park_out`](Self::park_out) stopped it (also after a
    /// panic in between).
    pub(super) fn unpark_out(&mut self) {
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
}

/// How many datagrams the first message of a flush carries after a read that drained the
/// socket (see [`PortCore::flush_out`]).
pub(super) const DRAINED_LEAD: usize = 1;

/// How often a send meeting an earlier datagram's ICMP error is retried without the
/// kernel taking anything in between.
pub(super) const STALE_RETRIES: u32 = 8;

/// The send queue's ring buffer is shrunk back to this many entries once it empties.
pub(super) const QUEUE_KEPT_CAPACITY: usize = 1024;

/// A copy of an I/O error (they are not `Clone`): the same OS error, or the same kind and
/// message.
pub(crate) fn copy_io_error(e: &std::io::Error) -> std::io::Error {
    match e.raw_os_error() {
        Some(code) => std::io::Error::from_raw_os_error(code),
        None => std::io::Error::new(e.kind(), e.to_string()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Entries with and without a source keep theirs through pushes and pops at both
    /// ends, in order.
    #[test]
    fn the_queue_keeps_each_entrys_meta_in_order() {
        let addr: SocketAddr = "127.0.0.1:9".parse().expect("addr");
        let meta = |n: u8| SendMeta {
            source: None,
            tos: Some(n),
        };
        let mut q = SendQueue::default();
        for n in 0..6u8 {
            let m = if n % 2 == 0 {
                meta(n)
            } else {
                SendMeta::default()
            };
            q.push_back(vec![n].into(), addr, m);
        }
        let (data, _, m) = q.pop_front().expect("first");
        assert_eq!((data[0], m), (0, meta(0)));
        let (data, _, m) = q.pop_front().expect("second");
        assert_eq!((data[0], m), (1, SendMeta::default()));
        // Put back, as a send that met a full buffer does.
        q.push_front(data, addr, m);
        let (data, _, m) = q.pop_front().expect("second again");
        assert_eq!((data[0], m), (1, SendMeta::default()));
        let (data, _, m) = q.pop_front().expect("third");
        q.push_front(data, addr, m);
        let rest: Vec<(u8, SendMeta)> = std::iter::from_fn(|| q.pop_front())
            .map(|(d, _, m)| (d[0], m))
            .collect();
        assert_eq!(
            rest,
            [
                (2, meta(2)),
                (3, SendMeta::default()),
                (4, meta(4)),
                (5, SendMeta::default())
            ]
        );
        assert!(q.is_empty() && q.metas.is_empty());
    }
}
