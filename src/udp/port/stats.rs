//! A port's counters.

use std::fmt;

/// A port's counters, readable at any time with
/// [`UdpTransport::stats`](crate::UdpTransport::stats) or [`Reactor::port_stats`](crate::Reactor::port_stats).
///
/// # Examples
///
/// ```
/// let mut reactor = twine::Reactor::new()?;
/// let port = reactor.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), twine::respond(|_, _| None::<Vec<u8>>))?;
/// let stats: twine::PortStats = reactor.port_stats(&port).expect("open");
/// println!("{stats}"); // received 0 datagrams (0 bytes), sent 0 (0 bytes); ...
/// assert_eq!(stats.datagrams_received + stats.truncated + stats.kernel_dropped, 0);
/// # Ok::<(), twine::Error>(())
/// ```
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
    /// Datagrams longer than the receive buffer (the max packet size): dropped, or with
    /// [`ListenOptions::deliver_truncated`](crate::ListenOptions::deliver_truncated)
    /// handed to `datagram_truncated` cut short; never to `datagram_received`.
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
    /// Reads whose control messages (the drop count, a coalesced read's segment size) the
    /// kernel cut short for want of room (`MSG_CTRUNC`). The port reserves room for every
    /// message the options it turned on can bring, so this stays 0 unless the kernel
    /// attaches messages nobody asked for. The datagram itself is delivered, unless
    /// [`receive_offload`](crate::ListenOptions::receive_offload) is on: then it may be
    /// several datagrams whose boundaries were in the lost message, and it is dropped.
    pub control_truncated: u64,
    /// Reads that carried several datagrams coalesced by the kernel
    /// ([`receive_offload`](crate::ListenOptions::receive_offload)), each cut back into
    /// the sender's datagrams (counted one by one in the other counters).
    pub coalesced_reads: u64,
}

impl fmt::Display for PortStats {
    /// One line for logs: what came in, what went out, and what was lost where
    /// (`received 1 datagram (4 bytes), sent 2 (8 bytes); dropped: ...`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "received {}, sent {}; dropped: {} truncated, {} by the kernel, {} at the send queue, \
             {} from another peer, {} at stop; {}, {}, {} refused, {} unreachable, {} unreported, \
             {}, {} queued",
            Counted(
                self.datagrams_received,
                "datagram",
                Some(self.bytes_received)
            ),
            Counted(self.datagrams_sent, "", Some(self.bytes_sent)),
            self.truncated,
            self.kernel_dropped,
            self.send_dropped,
            self.not_from_peer,
            self.dropped_at_stop,
            Counted(self.send_errors, "send error", None),
            Counted(self.recv_errors, "receive error", None),
            self.refused,
            self.unreachable,
            Counted(self.errors_unreported, "error", None),
            Counted(self.panics, "panic", None),
            self.send_queued,
        )?;
        // The receive offload's counters, only where they have something to say.
        if self.control_truncated != 0 {
            write!(f, ", {} control truncated", self.control_truncated)?;
        }
        if self.coalesced_reads != 0 {
            write!(
                f,
                ", {}",
                Counted(self.coalesced_reads, "coalesced read", None)
            )?;
        }
        Ok(())
    }
}

/// `n` of `what` in words: `1 datagram`, `2 datagrams`, `1 datagram (1 byte)`; with an
/// empty `what`, the number alone (with its bytes).
struct Counted(u64, &'static str, Option<u64>);

impl fmt::Display for Counted {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let Counted(n, what, bytes) = *self;
        let s = |n: u64| if n == 1 { "" } else { "s" };
        if what.is_empty() {
            write!(f, "{n}")?;
        } else {
            write!(f, "{n} {what}{}", s(n))?;
        }
        if let Some(b) = bytes {
            write!(f, " ({b} byte{})", s(b))?;
        }
        Ok(())
    }
}

/// Adds every counter of `other` (saturating): how a
/// [`ReactorPool`](crate::ReactorPool) sums its ports' counters.
///
/// # Examples
///
/// ```
/// let mut total = twine::PortStats::default();
/// total += &twine::PortStats::default();
/// assert_eq!(total, twine::PortStats::default());
/// ```
impl std::ops::AddAssign<&PortStats> for PortStats {
    fn add_assign(&mut self, other: &PortStats) {
        // Destructured whole, so that a new counter cannot be left out of the sum.
        let PortStats {
            datagrams_received,
            bytes_received,
            datagrams_sent,
            bytes_sent,
            truncated,
            send_errors,
            send_dropped,
            send_queued,
            recv_errors,
            refused,
            kernel_dropped,
            unreachable,
            errors_unreported,
            panics,
            not_from_peer,
            dropped_at_stop,
            control_truncated,
            coalesced_reads,
        } = *other;
        let add = |mine: &mut u64, theirs: u64| *mine = mine.saturating_add(theirs);
        add(&mut self.datagrams_received, datagrams_received);
        add(&mut self.bytes_received, bytes_received);
        add(&mut self.datagrams_sent, datagrams_sent);
        add(&mut self.bytes_sent, bytes_sent);
        add(&mut self.truncated, truncated);
        add(&mut self.send_errors, send_errors);
        add(&mut self.send_dropped, send_dropped);
        add(&mut self.send_queued, send_queued);
        add(&mut self.recv_errors, recv_errors);
        add(&mut self.refused, refused);
        add(&mut self.kernel_dropped, kernel_dropped);
        add(&mut self.unreachable, unreachable);
        add(&mut self.errors_unreported, errors_unreported);
        add(&mut self.panics, panics);
        add(&mut self.not_from_peer, not_from_peer);
        add(&mut self.dropped_at_stop, dropped_at_stop);
        add(&mut self.control_truncated, control_truncated);
        add(&mut self.coalesced_reads, coalesced_reads);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_log_line_says_one_datagram_and_two_datagrams() {
        let one = PortStats {
            datagrams_received: 1,
            bytes_received: 1,
            datagrams_sent: 2,
            bytes_sent: 8,
            panics: 1,
            errors_unreported: 1,
            ..PortStats::default()
        };
        let line = one.to_string();
        assert!(
            line.starts_with("received 1 datagram (1 byte), sent 2 (8 bytes);"),
            "{line}"
        );
        assert!(
            line.contains(", 1 error unreported, 1 panic, 0 queued"),
            "{line}"
        );
        let none = PortStats::default().to_string();
        assert!(
            none.starts_with("received 0 datagrams (0 bytes), sent 0 (0 bytes);"),
            "{none}"
        );
        assert!(none.contains("0 send errors, 0 receive errors"), "{none}");
    }
}
