//! The kernel's side of the calls an in-memory port makes of its socket (read, send,
//! connect, pending error, error queue, drop count, options), and the socket itself.

use std::cell::RefCell;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::rc::Rc;

use super::{Answer, Network, RX_OVERHEAD, source};
use crate::sys::{Filled, QueuedError, RecvBatch, SendBatch};

/// The socket of one in-memory port: its address on a shared [`Network`].
pub(crate) struct MemSocket {
    pub(crate) net: Rc<RefCell<Network>>,
    pub(crate) addr: SocketAddr,
}

impl std::fmt::Debug for MemSocket {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "MemSocket({})", self.addr)
    }
}

impl Drop for MemSocket {
    fn drop(&mut self) {
        if let Ok(mut net) = self.net.try_borrow_mut() {
            net.unbind(self.addr);
        }
    }
}

impl Network {
    pub(crate) fn recv(
        &mut self,
        at: SocketAddr,
        batch: &mut RecvBatch,
        count: usize,
        max: usize,
    ) -> io::Result<usize> {
        let s = self.state(at)?;
        let mut count = count;
        match s.recv_script.pop_front() {
            Some(Answer::Error(errno)) => return Err(io::Error::from_raw_os_error(errno)),
            Some(Answer::Limit(n)) => count = count.min(n),
            None => {}
        }
        if let Some(errno) = s.pending_error.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if count == 0 || s.rx.is_empty() {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        // The batch is filled from the front of the queue, and only what it took is
        // dequeued: as the kernel, never a datagram the call cannot return (the batch may
        // hold fewer than `count`).
        let mut queued = s.rx.iter();
        let arrival = s.arrival;
        let filled = batch.fill(count, max, || {
            queued.next().map(|(from, data, drops, to)| Filled {
                from: *from,
                data: &data[..],
                drops: *drops,
                destination: arrival.then_some(to.ip()),
            })
        });
        for (_, data, _, _) in s.rx.drain(..filled) {
            s.rx_charge -= data.len() + RX_OVERHEAD;
        }
        Ok(filled)
    }

    /// One send of `data` to `to` (`None`: the peer), from `source` where given: its
    /// scripted answer first.
    pub(crate) fn send_one(
        &mut self,
        at: SocketAddr,
        data: &[u8],
        to: Option<SocketAddr>,
        source: Option<IpAddr>,
    ) -> io::Result<usize> {
        match self.state(at)?.send_script.pop_front() {
            Some(Answer::Error(errno)) => return Err(io::Error::from_raw_os_error(errno)),
            Some(Answer::Limit(0)) => return Err(io::Error::from_raw_os_error(libc::EAGAIN)),
            Some(Answer::Limit(_)) | None => {}
        }
        self.send_datagram(at, data, to, source)
    }

    /// What the kernel does with one datagram sent from `at`: a pending error is
    /// returned (and cleared) instead, a full buffer is `EAGAIN`, a broadcast needs
    /// `SO_BROADCAST`; else it is logged and put on its way.
    fn send_datagram(
        &mut self,
        at: SocketAddr,
        data: &[u8],
        to: Option<SocketAddr>,
        source_ip: Option<IpAddr>,
    ) -> io::Result<usize> {
        let s = self.state(at)?;
        if let Some(errno) = s.pending_error.take() {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if s.send_blocked {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        let Some(to) = to.or(s.peer) else {
            return Err(io::Error::from_raw_os_error(libc::EDESTADDRREQ));
        };
        if is_broadcast(&to) && !s.broadcast {
            return Err(io::Error::from_raw_os_error(libc::EACCES));
        }
        // A source given with the datagram (`IP_PKTINFO`) replaces the one the port's
        // address gives; the port number stays the port's.
        let from = match source_ip {
            Some(ip) => SocketAddr::new(ip, at.port()),
            None => source(at, to),
        };
        self.transmit(from, to, data, true);
        Ok(data.len())
    }

    /// A batch send of datagrams `from..` of `out`.
    pub(crate) fn send_batch(
        &mut self,
        at: SocketAddr,
        out: &mut SendBatch,
        from: usize,
        connected: bool,
    ) -> io::Result<usize> {
        let handed = out.messages_from(from);
        let limit = match self.state(at)?.send_script.pop_front() {
            Some(Answer::Error(errno)) => return Err(io::Error::from_raw_os_error(errno)),
            Some(Answer::Limit(n)) => handed.min(n),
            None => handed,
        };
        let mut sent = 0;
        while sent < limit {
            let (data, addr) = out.get(from + sent);
            let to = (!connected).then_some(addr);
            let source_ip = out.meta(from + sent).source;
            match self.send_datagram(at, data, to, source_ip) {
                Ok(_) => sent += 1,
                Err(e) if sent == 0 => return Err(e),
                // sendmmsg reports the count; the error of the message after is lost.
                Err(_) => break,
            }
        }
        if sent == 0 && handed > 0 {
            return Err(io::Error::from_raw_os_error(libc::EAGAIN));
        }
        out.note_sent(handed, sent);
        Ok(sent)
    }

    pub(crate) fn connect(&mut self, at: SocketAddr, peer: SocketAddr) -> io::Result<()> {
        let s = self.state(at)?;
        s.peer = Some(peer);
        Ok(())
    }

    pub(crate) fn peer(&self, at: SocketAddr) -> Option<SocketAddr> {
        self.sockets.get(&at).and_then(|s| s.peer)
    }

    pub(crate) fn take_error(&mut self, at: SocketAddr) -> io::Result<Option<io::Error>> {
        let s = self.state(at)?;
        Ok(s.pending_error.take().map(io::Error::from_raw_os_error))
    }

    pub(crate) fn read_queued_error(&mut self, at: SocketAddr) -> io::Result<Option<QueuedError>> {
        let s = self.state(at)?;
        let entry = s.error_queue.pop_front();
        if entry.is_some() {
            // The kernel's pending error becomes the next entry's, or none.
            s.pending_error = s.error_queue.front().map(|e| e.errno);
        }
        Ok(entry)
    }

    pub(crate) fn set_error_queue(&mut self, at: SocketAddr, on: bool) -> io::Result<()> {
        let s = self.state(at)?;
        s.error_queue_on = on;
        if !on {
            s.error_queue.clear();
        }
        Ok(())
    }

    pub(crate) fn drops(&self, at: SocketAddr) -> Option<u32> {
        self.sockets.get(&at).map(|s| s.drops)
    }

    pub(crate) fn set_want_writable(&mut self, at: SocketAddr, want: bool) {
        if let Some(s) = self.sockets.get_mut(&at) {
            s.want_writable = want;
        }
    }

    /// Turns on or off telling each datagram read the address it was sent to.
    pub(crate) fn set_arrival(&mut self, at: SocketAddr, on: bool) -> io::Result<()> {
        self.state(at)?.arrival = on;
        Ok(())
    }

    pub(crate) fn set_broadcast(&mut self, at: SocketAddr, on: bool) -> io::Result<()> {
        self.state(at)?.broadcast = on;
        Ok(())
    }

    pub(crate) fn broadcast(&mut self, at: SocketAddr) -> io::Result<bool> {
        Ok(self.state(at)?.broadcast)
    }
}

fn is_broadcast(addr: &SocketAddr) -> bool {
    matches!(addr.ip(), IpAddr::V4(ip) if ip.is_broadcast())
}
