//! `DatagramProtocol`: the hooks the reactor calls, and the closure adapter.

use std::fmt;
use std::marker::PhantomData;
use std::net::SocketAddr;

use crate::udp::UdpTransport;

/// What a UDP server or client implements: the reactor calls these hooks, and the protocol
/// talks back through the [`UdpTransport`] each hook is handed.
///
/// Every hook but [`datagram_received`](Self::datagram_received) has an empty default.
///
/// # Panics in hooks
///
/// A panic in a hook is caught and logged (at ERROR, with the port's address). What
/// follows depends on who can trigger the hook:
///
/// - In a hook a remote peer can trigger ([`datagram_received`](Self::datagram_received),
///   [`datagram_truncated`](Self::datagram_truncated),
///   [`error_received`](Self::error_received),
///   [`connection_refused`](Self::connection_refused),
///   [`pause_producing`](Self::pause_producing), [`resume_producing`](Self::resume_producing))
///   and in a port timer, the panic costs that one event (the datagram, the report, the
///   timer's run; a repeating timer that panics is cancelled): it is counted in
///   [`PortStats::panics`](crate::PortStats::panics), the sender is named in the log, and
///   the port goes on with the next datagram, as in Twisted. Otherwise one datagram that
///   trips a bug in a parser would shut a public server down.
///   [`ListenOptions::close_on_panic`](crate::ListenOptions::close_on_panic) makes such a
///   panic close the port instead.
/// - In [`start_protocol`](Self::start_protocol) the port is closed at once (the listen
///   call returns [`Error::StartPanicked`](crate::Error::StartPanicked) and
///   `stop_protocol` is not called: the port never started); in
///   [`stop_protocol`](Self::stop_protocol) the port closes as it was going to.
///
/// **Unwind safety:** the protocol is used again after a panic in one of its hooks, so its
/// state is whatever the hook left when it panicked, possibly half-updated (the hooks run
/// under `AssertUnwindSafe`). A protocol whose invariants a panic can break should
/// restore them, or ask for `close_on_panic`.
///
/// The reactor and its other ports go on in every case.
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use twine::{DatagramProtocol, UdpTransport};
///
/// struct Upper;
/// impl DatagramProtocol for Upper {
///     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
///         if let Err(e) = t.write(&data.to_ascii_uppercase(), from) {
///             log::warn!("reply to {from}: {e}");
///         }
///     }
/// }
///
/// let mut reactor = twine::Reactor::new()?;
/// let port = reactor.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), Upper)?;
/// assert!(reactor.is_listening(&port));
/// # Ok::<(), twine::Error>(())
/// ```
pub trait DatagramProtocol: 'static {
    /// Called once when the port is up, before any datagram: inside `listen_udp` (and the
    /// other listen calls), as in Twisted. A good place to join groups, connect, or start
    /// a repeating call.
    #[doc(alias = "startProtocol")]
    fn start_protocol(&mut self, transport: &mut UdpTransport<'_>) {
        let _ = transport;
    }

    /// Called once when the port goes down, on a reactor turn after the stop was asked for
    /// (`stop_listening`, `Reactor::stop`, SIGINT/SIGTERM, or a panic in a hook with
    /// `close_on_panic`). The socket is still open: writes made here are sent (or dropped
    /// if the kernel buffer is full), then it is closed.
    ///
    /// It is the last hook: no `error_received`, `connection_refused` or flow-control hook
    /// runs after it. What was still to be reported then (and what the writes made here
    /// meet) is counted in [`PortStats::errors_unreported`](crate::PortStats::errors_unreported).
    /// It is not called if the [`Reactor`](crate::Reactor) is dropped without a stop.
    #[doc(alias = "stopProtocol")]
    fn stop_protocol(&mut self, transport: &mut UdpTransport<'_>) {
        let _ = transport;
    }

    /// Called for each datagram, with a slice borrowed from the port's receive buffer
    /// (never copied) and the sender's address. An empty datagram arrives as an empty slice.
    ///
    /// A panic here costs this datagram only (see [Panics in hooks](Self#panics-in-hooks)).
    #[doc(alias = "datagramReceived")]
    fn datagram_received(
        &mut self,
        transport: &mut UdpTransport<'_>,
        data: &[u8],
        from: SocketAddr,
    );

    /// Called on a connected port when its peer refused an *earlier* datagram (an ICMP
    /// port unreachable came back: nothing listens there), once per refusal counted in
    /// [`PortStats::refused`](crate::PortStats::refused). The port keeps working.
    ///
    /// Unconnected ports are told through
    /// [`error_received`](Self::error_received), with the destination that refused
    /// (Linux), where Twisted says nothing.
    #[doc(alias = "connectionRefused")]
    fn connection_refused(&mut self, transport: &mut UdpTransport<'_>) {
        let _ = transport;
    }

    /// Called when the port's send queue grows past its high-water mark
    /// ([`ListenOptions::write_buffer_limits`](crate::ListenOptions::write_buffer_limits)):
    /// the kernel's buffer is full and writes are piling up. Stop producing until
    /// [`resume_producing`](Self::resume_producing); writes past the hard bound are refused
    /// with [`Error::SendQueueFull`](crate::Error::SendQueueFull). Twisted's
    /// `IPushProducer.pauseProducing`, asyncio's `pause_writing`. Runs right after the
    /// hook whose write crossed the mark returns (inside a batch of received datagrams,
    /// before the next one is delivered); within a hook,
    /// [`UdpTransport::is_write_paused`](crate::UdpTransport::is_write_paused) turns true
    /// at the write that crossed it.
    #[doc(alias = "pauseProducing")]
    #[doc(alias = "pause_writing")]
    fn pause_producing(&mut self, transport: &mut UdpTransport<'_>) {
        let _ = transport;
    }

    /// Called once the send queue has drained to its low-water mark after a
    /// [`pause_producing`](Self::pause_producing): writing may go on.
    #[doc(alias = "resumeProducing")]
    #[doc(alias = "resume_writing")]
    fn resume_producing(&mut self, transport: &mut UdpTransport<'_>) {
        let _ = transport;
    }

    /// Called when the kernel reports that an earlier datagram was not delivered, with
    /// the destination it was for:
    ///
    /// - [`Error::Unreachable`](crate::Error::Unreachable): an ICMP error came back for a
    ///   datagram this (unconnected) port sent to `addr`, e.g. port unreachable
    ///   (`ECONNREFUSED`: nothing listens there). Linux only (`IP_RECVERR`), where the
    ///   kernel's error queue names the destination; neither Twisted nor asyncio can say
    ///   which destination refused. Connected ports get `connection_refused` instead.
    /// - [`Error::Send`](crate::Error::Send): a datagram `write` had accepted (gathered
    ///   into a batch, or queued while the kernel's buffer was full) was refused when it
    ///   was handed to the kernel. A write that fails at once returns its error instead.
    ///
    /// Each is also counted in [`PortStats`](crate::PortStats). Calls run after the hook
    /// during which the error was met returns, or on the turn the kernel reports it.
    #[doc(alias = "errorReceived")]
    fn error_received(
        &mut self,
        transport: &mut UdpTransport<'_>,
        error: &crate::Error,
        addr: SocketAddr,
    ) {
        let _ = (transport, error, addr);
    }

    /// Called for a datagram longer than the port's max packet size, only when the port
    /// was opened with [`ListenOptions::deliver_truncated`](crate::ListenOptions::deliver_truncated)
    /// (otherwise such datagrams are dropped): `data` is its first max-packet-size bytes,
    /// `len` its whole length as sent (on Linux; elsewhere `data.len()`). It is counted in
    /// [`PortStats::truncated`](crate::PortStats::truncated) either way, and never reaches
    /// `datagram_received`.
    fn datagram_truncated(
        &mut self,
        transport: &mut UdpTransport<'_>,
        data: &[u8],
        len: usize,
        from: SocketAddr,
    ) {
        let _ = (transport, data, len, from);
    }

    /// The name used in the port's log lines (`"<prefix> starting on <addr>"`); by
    /// default the type's name without its module path (Twisted's `logPrefix`).
    #[doc(alias = "logPrefix")]
    fn log_prefix(&self) -> &str {
        short_type_name::<Self>()
    }
}

/// A closure `FnMut(&mut UdpTransport, &[u8], SocketAddr)` is a protocol whose only hook is
/// `datagram_received`.
///
/// Closures given to a generic function often need their argument types written out; use
/// [`from_fn`] to have them inferred.
impl<F> DatagramProtocol for F
where
    F: FnMut(&mut UdpTransport<'_>, &[u8], SocketAddr) + 'static,
{
    fn datagram_received(
        &mut self,
        transport: &mut UdpTransport<'_>,
        data: &[u8],
        from: SocketAddr,
    ) {
        self(transport, data, from)
    }

    fn log_prefix(&self) -> &str {
        "FnProtocol"
    }
}

/// Makes a protocol of a closure, with its argument types inferred.
///
/// # Examples
///
/// ```
/// let mut reactor = twine::Reactor::new()?;
/// let port = reactor.listen_udp_with(
///     twine::ListenOptions::new(0).interface("127.0.0.1"),
///     twine::from_fn(|t, data, from| {
///         let _ = t.write(data, from);
///     }),
/// )?;
/// assert_ne!(port.local_addr().port(), 0);
/// # Ok::<(), twine::Error>(())
/// ```
pub fn from_fn<F>(f: F) -> F
where
    F: FnMut(&mut UdpTransport<'_>, &[u8], SocketAddr) + 'static,
{
    f
}

/// A request/response protocol made of a closure, like a `socketserver.UDPServer`
/// handler: each datagram and its sender go to `handler`, and the bytes it returns, if
/// any, are written back to the sender. Made by [`respond`].
///
/// A reply that cannot be sent (too long, queue full) is logged as a warning with the
/// sender's address; the port goes on. For anything more (state per client, timers,
/// replies to others) implement [`DatagramProtocol`] itself.
///
/// # Examples
///
/// ```
/// let mut reactor = twine::Reactor::new()?;
/// let upper = twine::respond(|data, _from| Some(data.to_ascii_uppercase()));
/// reactor.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), upper)?;
/// # Ok::<(), twine::Error>(())
/// ```
pub struct Responder<F, R> {
    handler: F,
    name: &'static str,
    reply: PhantomData<fn() -> R>,
}

/// Makes a [`Responder`]: `handler(data, from)` returns the reply to send back to `from`,
/// or `None` for no reply. The reply is anything that is bytes (`Vec<u8>`, `String`,
/// `&'static str`, a fixed array ...).
///
/// Python's `socketserver.UDPServer` with a `handle` method becomes one call; its
/// `ThreadingUDPServer` variant needs nothing more, since one reactor serves every
/// client in turn without a thread each.
///
/// # Examples
///
/// ```
/// let mut reactor = twine::Reactor::new()?;
/// let upper = twine::respond(|data, _from| Some(data.to_ascii_uppercase()));
/// let port = reactor.listen_udp_with(
///     twine::ListenOptions::new(0).interface("127.0.0.1"),
///     upper.named("UpperServer"),
/// )?;
/// assert!(reactor.is_listening(&port));
/// # Ok::<(), twine::Error>(())
/// ```
pub fn respond<F, R>(handler: F) -> Responder<F, R>
where
    F: FnMut(&[u8], SocketAddr) -> Option<R> + 'static,
    R: AsRef<[u8]> + 'static,
{
    Responder {
        handler,
        name: "Responder",
        reply: PhantomData,
    }
}

impl<F, R> Responder<F, R> {
    /// Sets the name the port's log lines use (its [`log_prefix`](DatagramProtocol::log_prefix));
    /// `"Responder"` by default.
    ///
    /// # Examples
    ///
    /// ```
    /// let time = twine::respond(|_, _| Some(b"12:00".to_vec())).named("TimeServer");
    /// let mut reactor = twine::Reactor::new()?;
    /// reactor.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), time)?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn named(mut self, name: &'static str) -> Self {
        self.name = name;
        self
    }
}

impl<F, R> fmt::Debug for Responder<F, R> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Responder")
            .field("name", &self.name)
            .finish_non_exhaustive()
    }
}

impl<F, R> DatagramProtocol for Responder<F, R>
where
    F: FnMut(&[u8], SocketAddr) -> Option<R> + 'static,
    R: AsRef<[u8]> + 'static,
{
    fn datagram_received(
        &mut self,
        transport: &mut UdpTransport<'_>,
        data: &[u8],
        from: SocketAddr,
    ) {
        if let Some(reply) = (self.handler)(data, from)
            && let Err(e) = transport.write(reply.as_ref(), from)
        {
            log::warn!("{}: reply to {from}: {e}", self.name);
        }
    }

    fn log_prefix(&self) -> &str {
        self.name
    }
}

/// The last path segment of a type's name, generics kept: `my::mod::Echo` -> `Echo`.
pub(crate) fn short_type_name<T: ?Sized>() -> &'static str {
    let full = std::any::type_name::<T>();
    let head = full.split('<').next().unwrap_or(full);
    match head.rfind("::") {
        Some(i) => &full[i + 2..],
        None => full,
    }
}

#[cfg(test)]
mod tests {
    use super::short_type_name;

    struct Echo;

    #[test]
    fn short_names() {
        assert_eq!(short_type_name::<Echo>(), "Echo");
        assert_eq!(short_type_name::<Vec<u8>>(), "Vec<u8>");
    }
}
