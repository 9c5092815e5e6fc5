//! The one error type of the crate.

use std::fmt;
use std::io;
use std::net::{IpAddr, SocketAddr};
use std::os::fd::RawFd;

/// Every failure `twine` reports, each variant carrying the context a log line needs.
///
/// `Display` is short and specific, in the manner of Twisted's `CannotListenError`
/// ("couldn't listen on 127.0.0.1:9: Address already in use"). Where the operating system
/// gave the cause, [`std::error::Error::source`] returns it.
///
/// # Examples
///
/// ```
/// let mut reactor = twine::Reactor::new()?;
/// match reactor.listen_udp_with(twine::ListenOptions::new(0).interface("localhost"), twine::respond(|_, _| None::<Vec<u8>>)) {
///     Err(twine::Error::InvalidAddress { address, reason }) => println!("{address}: {reason}"),
///     Err(e) => return Err(e),
///     Ok(_) => unreachable!("a hostname is not an IP literal"),
/// }
/// # Ok::<(), twine::Error>(())
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum Error {
    /// Creating or binding a port's socket failed (Twisted: `CannotListenError`).
    CannotListen {
        /// The address the port was to bind.
        addr: SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
    /// An address that must be an IP literal was not one (Twisted: `InvalidAddressError`).
    InvalidAddress {
        /// The text as given.
        address: String,
        /// Why it was refused.
        reason: &'static str,
    },
    /// An address of the wrong family for the port: IPv6 on an IPv4 port or the other way.
    AddressFamilyMismatch {
        /// The address as given.
        address: SocketAddr,
        /// The port's own address.
        local: SocketAddr,
    },
    /// A datagram longer than UDP can carry (Twisted: `MessageLengthError`).
    MessageTooLong {
        /// The datagram's length in bytes.
        len: usize,
        /// The most this port can send in one datagram.
        max: usize,
    },
    /// The port's send queue is at its bound; the datagram was not sent and was counted.
    SendQueueFull {
        /// The datagram's length in bytes.
        len: usize,
        /// Bytes already waiting in the queue.
        queued: usize,
    },
    /// The kernel refused to send a datagram.
    Send {
        /// The destination.
        addr: SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
    /// The kernel reported that an earlier datagram to `addr` could not be delivered: an
    /// ICMP error came back (port unreachable: `source` is `ECONNREFUSED`; host or
    /// network unreachable, ...). Passed to
    /// [`DatagramProtocol::error_received`](crate::DatagramProtocol::error_received).
    Unreachable {
        /// The destination of the datagram the error is about.
        addr: SocketAddr,
        /// The host that sent the ICMP message, when the kernel said.
        reporter: Option<IpAddr>,
        /// The error, as the kernel names it.
        source: io::Error,
    },
    /// A connected port's peer refused an earlier datagram (ICMP port unreachable); this
    /// datagram was not sent. `connection_refused` is called too.
    ConnectionRefused {
        /// The connected peer.
        peer: SocketAddr,
    },
    /// `connect` was called on a port that is already connected.
    AlreadyConnected {
        /// The peer it is connected to.
        peer: SocketAddr,
    },
    /// A connected port was asked to write to another address than its peer.
    WrongPeer {
        /// The connected peer.
        peer: SocketAddr,
        /// The address given.
        requested: SocketAddr,
    },
    /// An address-less send on a port that is not connected.
    NotConnected,
    /// The kernel refused to connect the port.
    Connect {
        /// The address given.
        addr: SocketAddr,
        /// What the kernel said.
        source: io::Error,
    },
    /// A group address that is not a multicast address.
    NotMulticast {
        /// The address given.
        group: IpAddr,
    },
    /// A group given for a source-specific join that is multicast but outside the
    /// source-specific ranges, 232.0.0.0/8 and ff3x::/32 (RFC 4607).
    NotSourceSpecific {
        /// The address given.
        group: IpAddr,
    },
    /// Joining or leaving a multicast group failed (Twisted: `MulticastJoinError`).
    Multicast {
        /// `"join"` or `"leave"`; `"join source-specific"` or `"leave source-specific"`.
        op: &'static str,
        /// The group.
        group: IpAddr,
        /// The interface as described to the kernel; for a source-specific membership,
        /// followed by `for source S`.
        interface: String,
        /// What the kernel said.
        source: io::Error,
    },
    /// The kernel refused the interface given for outgoing multicast.
    OutgoingInterface {
        /// The interface as given (an address, or an index).
        interface: String,
        /// The option set: `"IP_MULTICAST_IF"` or `"IPV6_MULTICAST_IF"`.
        option: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// Reading or setting a socket option failed.
    SocketOption {
        /// The option's name, e.g. `"IP_MULTICAST_TTL"`.
        option: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
    /// A listen option out of its range.
    InvalidOption {
        /// The option's name.
        option: &'static str,
        /// The value given.
        value: usize,
        /// The accepted range, in words.
        expected: &'static str,
    },
    /// The fd given to `adopt_datagram_port` is not an open socket.
    BadDescriptor {
        /// The fd given.
        fd: RawFd,
        /// What the kernel said.
        source: io::Error,
    },
    /// The fd given to `adopt_datagram_port` is a socket, but not a datagram one
    /// (Twisted: `UnsupportedSocketType`).
    UnsupportedSocketType {
        /// The fd given.
        fd: RawFd,
        /// Its `SO_TYPE`.
        socket_type: i32,
    },
    /// The fd given to `adopt_datagram_port` is not an IPv4 or IPv6 socket
    /// (Twisted: `UnsupportedAddressFamily`).
    UnsupportedAddressFamily {
        /// The fd given.
        fd: RawFd,
        /// Its address family.
        family: i32,
    },
    /// The socket given to `adopt_datagram_port` is not bound to a port.
    NotBound {
        /// The fd given.
        fd: RawFd,
    },
    /// The port is closed or closing.
    PortClosed,
    /// The port is the one whose callback is running: reach it through the callback's
    /// transport instead ([`Reactor::with_port`](crate::Reactor::with_port) from its own
    /// hook, say).
    PortBusy,
    /// A port-scoped timer was scheduled with a closure for another protocol type. The
    /// closure of [`DatagramProtocol::call_later`](crate::DatagramProtocol::call_later)
    /// and `call_every` takes `Self`, so a protocol's own hooks cannot write this mistake;
    /// it remains possible only through another port's transport.
    ProtocolMismatch {
        /// The protocol type of the port.
        port: &'static str,
        /// The protocol type the closure takes.
        requested: &'static str,
    },
    /// [`Requests::send`](crate::request::Requests::send) found its table at its bound of
    /// outstanding requests; nothing was sent.
    TooManyRequests {
        /// The bound ([`Requests::limit`](crate::request::Requests::limit)).
        limit: usize,
    },
    /// [`Requests::send`](crate::request::Requests::send) was given the key of a request
    /// to the same peer that is still outstanding; nothing was sent.
    DuplicateRequest {
        /// The peer.
        peer: SocketAddr,
    },
    /// [`Requests::send`](crate::request::Requests::send) was handed the transport of
    /// another port than the one the table's first request went through (a table serves
    /// one port for its whole life: its timers and completions are that port's); nothing
    /// was sent.
    WrongTransport {
        /// The port the table serves.
        table: SocketAddr,
        /// The port whose transport was handed.
        transport: SocketAddr,
    },
    /// The protocol panicked in `start_protocol`; the port was closed.
    StartPanicked {
        /// The port's address.
        addr: SocketAddr,
        /// The panic message.
        message: String,
    },
    /// `run` or `iterate` was called from inside a callback of the same reactor.
    Reentrant,
    /// The reactor behind a [`ReactorHandle`](crate::ReactorHandle) is gone.
    ReactorGone,
    /// [`ReactorHandle::call_from_thread`](crate::ReactorHandle::call_from_thread) found
    /// the reactor's queue of cross-thread calls at its bound; the call was not queued.
    CallQueueFull {
        /// The bound ([`Reactor::set_thread_call_limit`](crate::Reactor::set_thread_call_limit)).
        limit: usize,
    },
    /// A reactor of a [`ReactorPool`](crate::ReactorPool) failed: its port could not be
    /// opened (`start_protocol` panicked, say), its thread could not be pinned, or its run
    /// returned an error. The pool stopped its other reactors.
    ReactorFailed {
        /// The reactor's index in the pool (what the protocol factory was called with).
        reactor: usize,
        /// What went wrong.
        source: Box<Error>,
    },
    /// Code on the thread of a [`ReactorPool`](crate::ReactorPool)'s reactor panicked
    /// where the reactor does not catch it: the protocol factory, say, or a protocol's
    /// `Drop`. The pool stopped its other reactors.
    ReactorPanicked {
        /// The reactor's index in the pool.
        reactor: usize,
        /// The panic message.
        message: String,
    },
    /// An operating-system call of the reactor itself failed (poll, waker, signals).
    Io {
        /// What the reactor was doing.
        context: &'static str,
        /// What the kernel said.
        source: io::Error,
    },
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        use Error::*;
        match self {
            CannotListen { addr, source } => write!(f, "couldn't listen on {addr}: {source}"),
            InvalidAddress { address, reason } => {
                write!(f, "invalid address {address:?}: {reason}")
            }
            AddressFamilyMismatch { address, local } => {
                write!(
                    f,
                    "address {address} is of another family than the port's {local}"
                )
            }
            MessageTooLong { len, max } => {
                write!(f, "message is too long to send: {len} bytes, at most {max}")
            }
            SendQueueFull { len, queued } => write!(
                f,
                "send queue full: {len}-byte datagram dropped, {queued} bytes already queued"
            ),
            Send { addr, source } => write!(f, "couldn't send to {addr}: {source}"),
            OutgoingInterface {
                interface,
                option,
                source,
            } => write!(
                f,
                "couldn't send multicast through {interface} ({option}): {source}"
            ),
            Unreachable {
                addr,
                reporter: Some(by),
                source,
            } => write!(f, "{addr} unreachable: {source} (reported by {by})"),
            Unreachable {
                addr,
                reporter: None,
                source,
            } => write!(f, "{addr} unreachable: {source}"),
            ConnectionRefused { peer } => write!(f, "connection refused by {peer}"),
            AlreadyConnected { peer } => write!(
                f,
                "already connected to {peer}, reconnecting is not supported"
            ),
            WrongPeer { peer, requested } => {
                write!(f, "port is connected to {peer}, not {requested}")
            }
            NotConnected => write!(f, "port is not connected: write needs an address"),
            Connect { addr, source } => write!(f, "couldn't connect to {addr}: {source}"),
            NotMulticast { group } => write!(f, "{group} is not a multicast group address"),
            NotSourceSpecific { group } => write!(
                f,
                "{group} is not a source-specific multicast group (232.0.0.0/8, ff3x::/32)"
            ),
            Multicast {
                op,
                group,
                interface,
                source,
            } => write!(f, "couldn't {op} group {group} on {interface}: {source}"),
            SocketOption { option, source } => write!(f, "socket option {option}: {source}"),
            InvalidOption {
                option,
                value,
                expected,
            } => write!(f, "{option} = {value} is out of range, expected {expected}"),
            BadDescriptor { fd, source } => write!(f, "fd {fd} is not an open socket: {source}"),
            UnsupportedSocketType { fd, socket_type } => write!(
                f,
                "fd {fd} is not a datagram socket (SO_TYPE {socket_type})"
            ),
            UnsupportedAddressFamily { fd, family } => {
                write!(f, "fd {fd} is not an IPv4 or IPv6 socket (family {family})")
            }
            NotBound { fd } => write!(f, "fd {fd} is not bound to a port"),
            PortClosed => write!(f, "port is closed"),
            PortBusy => write!(
                f,
                "port is running a callback: use the transport the callback was handed"
            ),
            ProtocolMismatch { port, requested } => write!(
                f,
                "timer closure takes {requested} but the port's protocol is {port}"
            ),
            TooManyRequests { limit } => {
                write!(f, "too many requests outstanding: at most {limit} at once")
            }
            DuplicateRequest { peer } => write!(
                f,
                "a request with the same key to {peer} is still outstanding"
            ),
            WrongTransport { table, transport } => write!(
                f,
                "this request table's requests go through the port on {table}, \
                 not the one on {transport}"
            ),
            StartPanicked { addr, message } => {
                write!(f, "start_protocol on {addr} panicked: {message}")
            }
            Reentrant => write!(
                f,
                "the reactor is already running a turn (called from a callback?)"
            ),
            ReactorGone => write!(f, "the reactor is gone"),
            CallQueueFull { limit } => write!(
                f,
                "the reactor's cross-thread call queue is full ({limit} calls waiting)"
            ),
            ReactorFailed { reactor, source } => {
                write!(f, "reactor {reactor} of the pool failed: {source}")
            }
            ReactorPanicked { reactor, message } => {
                write!(f, "reactor {reactor} of the pool panicked: {message}")
            }
            Io { context, source } => write!(f, "{context}: {source}"),
        }
    }
}

impl std::error::Error for Error {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        use Error::*;
        match self {
            CannotListen { source, .. }
            | Send { source, .. }
            | Unreachable { source, .. }
            | OutgoingInterface { source, .. }
            | Connect { source, .. }
            | Multicast { source, .. }
            | SocketOption { source, .. }
            | BadDescriptor { source, .. }
            | Io { source, .. } => Some(source),
            ReactorFailed { source, .. } => Some(&**source),
            _ => None,
        }
    }
}

/// `Result` with [`Error`] as its error.
///
/// # Examples
///
/// ```
/// fn open(reactor: &mut twine::Reactor) -> twine::Result<std::net::SocketAddr> {
///     let port = reactor.listen_udp(0, twine::respond(|_, _| None::<Vec<u8>>))?;
///     Ok(port.local_addr())
/// }
/// let mut reactor = twine::Reactor::new()?;
/// open(&mut reactor)?;
/// # Ok::<(), twine::Error>(())
/// ```
pub type Result<T, E = Error> = std::result::Result<T, E>;
