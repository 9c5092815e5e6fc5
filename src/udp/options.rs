//! Listen options: the interface, buffer sizes and limits of a port.

use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use crate::error::{Error, Result};
use crate::udp::addr::parse_ip;

/// Twisted's default `maxPacketSize`: the receive buffer for one datagram.
///
/// # Examples
///
/// ```
/// assert_eq!(twine::DEFAULT_MAX_PACKET_SIZE, 8192);
/// ```
pub const DEFAULT_MAX_PACKET_SIZE: usize = 8192;
/// Datagrams a port reads per reactor turn before it yields to the others.
///
/// # Examples
///
/// ```
/// assert_eq!(twine::DEFAULT_READ_BUDGET, 256);
/// ```
pub const DEFAULT_READ_BUDGET: usize = 256;
/// Bytes a port reads per reactor turn before it yields (Twisted's `maxThroughput`).
///
/// # Examples
///
/// ```
/// assert_eq!(twine::DEFAULT_READ_BUDGET_BYTES, 256 * 1024);
/// ```
pub const DEFAULT_READ_BUDGET_BYTES: usize = 256 * 1024;
/// Bytes a port queues while the kernel's send buffer is full, before `write` refuses.
///
/// # Examples
///
/// ```
/// assert_eq!(twine::DEFAULT_SEND_QUEUE_LIMIT, 1024 * 1024);
/// ```
pub const DEFAULT_SEND_QUEUE_LIMIT: usize = 1024 * 1024;
/// Default high-water mark of the send queue, in bytes: past it the protocol is paused.
///
/// # Examples
///
/// ```
/// assert_eq!(twine::DEFAULT_WRITE_HIGH, 64 * 1024);
/// ```
pub const DEFAULT_WRITE_HIGH: usize = 64 * 1024;
/// Default low-water mark of the send queue, in bytes: down to it a paused protocol is
/// resumed.
///
/// # Examples
///
/// ```
/// assert_eq!(twine::DEFAULT_WRITE_LOW, 16 * 1024);
/// ```
pub const DEFAULT_WRITE_LOW: usize = 16 * 1024;
/// Datagrams read or sent per system call (`recvmmsg`/`sendmmsg`) by default.
///
/// # Examples
///
/// ```
/// assert_eq!(twine::DEFAULT_BATCH_SIZE, 32);
/// ```
pub const DEFAULT_BATCH_SIZE: usize = 32;
/// The largest batch a port may ask for.
pub(crate) const MAX_BATCH_SIZE: usize = 1024;

/// How to open a port: [`Reactor::listen_udp_with`](crate::Reactor::listen_udp_with) and
/// [`Reactor::adopt_with`](crate::Reactor::adopt_with) take one.
///
/// Values are checked when the port is opened, so a bad interface or size is a typed
/// error from the listen call, before any socket exists.
///
/// # Examples
///
/// ```
/// use twine::ListenOptions;
/// let opts = ListenOptions::new(0)
///     .interface("::1")
///     .max_packet_size(1500)
///     .recv_buffer_size(1 << 20);
/// # let _ = opts;
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListenOptions {
    pub(crate) port: u16,
    pub(crate) interface: String,
    pub(crate) max_packet_size: usize,
    pub(crate) recv_buffer_size: Option<usize>,
    pub(crate) send_buffer_size: Option<usize>,
    pub(crate) listen_multiple: bool,
    pub(crate) read_budget: usize,
    pub(crate) read_budget_bytes: usize,
    pub(crate) send_queue_limit: usize,
    pub(crate) batch_size: usize,
    pub(crate) segmentation: bool,
    pub(crate) receive_offload: bool,
    pub(crate) deliver_truncated: bool,
    pub(crate) write_high: usize,
    pub(crate) write_low: usize,
    pub(crate) close_on_panic: bool,
    pub(crate) arrival: bool,
    pub(crate) reply_from_arrival: bool,
    pub(crate) receive_tos: bool,
    pub(crate) tos: Option<u8>,
    pub(crate) timestamps: bool,
}

/// [`ListenOptions::new(0)`](ListenOptions::new): a free port on every IPv4 interface,
/// with Twisted's defaults.
///
/// # Examples
///
/// ```
/// use twine::ListenOptions;
/// assert_eq!(ListenOptions::default(), ListenOptions::new(0));
/// ```
impl Default for ListenOptions {
    fn default() -> Self {
        ListenOptions::new(0)
    }
}

impl ListenOptions {
    /// Options for `port` (0 picks a free one) on every IPv4 interface, with Twisted's
    /// defaults: max packet size 8192, the kernel's buffer sizes, no port sharing.
    ///
    /// # Examples
    ///
    /// ```
    /// // Port 9999 on every IPv4 interface.
    /// let opts = twine::ListenOptions::new(9999);
    /// assert_eq!(twine::ListenOptions::new(0), twine::ListenOptions::default());
    /// # let _ = opts;
    /// ```
    pub fn new(port: u16) -> Self {
        ListenOptions {
            port,
            interface: String::new(),
            max_packet_size: DEFAULT_MAX_PACKET_SIZE,
            recv_buffer_size: None,
            send_buffer_size: None,
            listen_multiple: false,
            read_budget: DEFAULT_READ_BUDGET,
            read_budget_bytes: DEFAULT_READ_BUDGET_BYTES,
            send_queue_limit: DEFAULT_SEND_QUEUE_LIMIT,
            batch_size: DEFAULT_BATCH_SIZE,
            segmentation: true,
            receive_offload: false,
            deliver_truncated: false,
            write_high: DEFAULT_WRITE_HIGH,
            write_low: DEFAULT_WRITE_LOW,
            close_on_panic: false,
            arrival: false,
            reply_from_arrival: false,
            receive_tos: false,
            tos: None,
            timestamps: false,
        }
    }

    /// Options for exactly `addr` (its IP as the interface, its port).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use twine::ListenOptions;
    /// let addr: SocketAddr = "127.0.0.1:9999".parse()?;
    /// assert_eq!(ListenOptions::from_addr(addr), ListenOptions::new(9999).interface("127.0.0.1"));
    /// # Ok::<(), std::net::AddrParseError>(())
    /// ```
    pub fn from_addr(addr: SocketAddr) -> Self {
        let options = ListenOptions::new(addr.port()).interface(addr.ip().to_string());
        match addr {
            SocketAddr::V6(v6) if v6.scope_id() != 0 => {
                let interface = format!("{}%{}", v6.ip(), v6.scope_id());
                options.interface(interface)
            }
            _ => options,
        }
    }

    /// The interface to bind: an IPv4 or IPv6 address, or its literal (`"127.0.0.1"`,
    /// `"::1"`, `"::"`, `"fe80::1%2"`), or `""` for every IPv4 interface. An IPv6 address
    /// makes an IPv6 port. A hostname, or anything else that is not an address (a number,
    /// an `IP:PORT`), is refused with [`Error::InvalidAddress`] when the port is opened.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::{IpAddr, Ipv6Addr};
    /// use twine::ListenOptions;
    /// let by_text = ListenOptions::new(0).interface("::1");
    /// let by_address = ListenOptions::new(0).interface(IpAddr::V6(Ipv6Addr::LOCALHOST));
    /// assert_eq!(by_text, by_address);
    /// // Options compare by address, however it is spelled.
    /// assert_eq!(by_text, ListenOptions::new(0).interface("0:0:0:0:0:0:0:1"));
    /// assert_eq!(
    ///     ListenOptions::new(0).interface("FE80:0::1%2"),
    ///     ListenOptions::new(0).interface("fe80::1%2"),
    /// );
    /// ```
    pub fn interface(mut self, interface: impl std::fmt::Display) -> Self {
        let text = interface.to_string();
        // An address literal (with its scope, if any) is kept in its canonical spelling, so
        // that options compare by address; anything else is checked when the port opens.
        let (address, scope) = match text.split_once('%') {
            Some((address, scope)) => (address, Some(scope)),
            None => (text.as_str(), None),
        };
        self.interface = match (address.parse::<std::net::IpAddr>(), scope) {
            (Ok(ip), None) => ip.to_string(),
            (Ok(std::net::IpAddr::V6(ip)), Some(scope)) => format!("{ip}%{scope}"),
            _ => text,
        };
        self
    }

    /// The receive buffer for one datagram (1..=65535). A longer datagram is dropped and
    /// counted as truncated, never delivered cut short.
    ///
    /// # Examples
    ///
    /// ```
    /// let opts = twine::ListenOptions::new(0).max_packet_size(1500);
    /// # let _ = opts;
    /// ```
    #[doc(alias = "maxPacketSize")]
    pub fn max_packet_size(mut self, bytes: usize) -> Self {
        self.max_packet_size = bytes;
        self
    }

    /// The kernel receive buffer (`SO_RCVBUF`); the kernel may double or cap it.
    ///
    /// # Examples
    ///
    /// ```
    /// // Room for bursts: 4 MiB asked for (the kernel caps it at `net.core.rmem_max`).
    /// let opts = twine::ListenOptions::new(0).recv_buffer_size(4 << 20);
    /// # let _ = opts;
    /// ```
    pub fn recv_buffer_size(mut self, bytes: usize) -> Self {
        self.recv_buffer_size = Some(bytes);
        self
    }

    /// The kernel send buffer (`SO_SNDBUF`); the kernel may double or cap it.
    ///
    /// # Examples
    ///
    /// ```
    /// let opts = twine::ListenOptions::new(0).send_buffer_size(1 << 20);
    /// # let _ = opts;
    /// ```
    pub fn send_buffer_size(mut self, bytes: usize) -> Self {
        self.send_buffer_size = Some(bytes);
        self
    }

    /// Lets several sockets bind the same port (`SO_REUSEADDR` + `SO_REUSEPORT`, set as
    /// Twisted's `listenMultiple` sets them), in this program or others of the same user.
    /// This is for sharing a multicast port. What reaches which socket:
    ///
    /// - **A multicast or broadcast datagram reaches every socket on the port**: on Linux,
    ///   for a group, every socket that joined it and, while any socket on the host has
    ///   joined it, every other socket too, unless it turned
    ///   [`multicast_all`](crate::UdpTransport::set_multicast_all) off.
    /// - **A unicast datagram reaches exactly one of them**, picked by the kernel's hash of
    ///   the sender's address and port (Linux): every datagram of one sender reaches the
    ///   same socket as long as no socket is bound to the port or closed, and which one has
    ///   nothing to do with what the sender meant. A reply sent to a shared port therefore
    ///   reaches one copy of the kernel's choosing, not necessarily the one that sent what
    ///   it answers. A program that wants answers sends from a second port of its own,
    ///   unshared (as the `multicast` example does). Other Unix systems do not spread
    ///   unicast: one socket may get all of it.
    ///
    /// To spread one program's load over several reactors, use
    /// [`ReactorPool`](crate::ReactorPool), which sets `SO_REUSEPORT` alone and refuses
    /// this option.
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::{ListenOptions, Reactor, respond};
    /// let mut reactor = Reactor::new()?;
    /// let opts = |port| ListenOptions::new(port).interface("127.0.0.1").listen_multiple(true);
    /// let first = reactor.listen_udp_with(opts(0), respond(|_, _| None::<Vec<u8>>))?;
    /// // A second socket on the same port.
    /// let second = reactor.listen_udp_with(opts(first.local_addr().port()), respond(|_, _| None::<Vec<u8>>))?;
    /// assert_eq!(first.local_addr(), second.local_addr());
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "listenMultiple")]
    pub fn listen_multiple(mut self, yes: bool) -> Self {
        self.listen_multiple = yes;
        self
    }

    /// The most datagrams and bytes (each at least 1) the port reads in one reactor turn before
    /// the other ports and the timers get theirs (256 and 256 KiB by default). Each read
    /// asks for no more datagrams of the max packet size than the bytes left have room for
    /// (at least one), so a turn takes at most one datagram past the byte budget.
    ///
    /// # Examples
    ///
    /// ```
    /// // At most 64 datagrams or 64 KiB per turn, then the other ports and the timers.
    /// let opts = twine::ListenOptions::new(0).read_budget(64, 64 * 1024);
    /// # let _ = opts;
    /// ```
    pub fn read_budget(mut self, datagrams: usize, bytes: usize) -> Self {
        self.read_budget = datagrams;
        self.read_budget_bytes = bytes;
        self
    }

    /// The most bytes queued while the kernel's send buffer is full (1 MiB by default),
    /// each datagram charged its payload plus 128 bytes for its entry (see
    /// [`UdpTransport::write_buffer_size`](crate::UdpTransport::write_buffer_size)); past
    /// it `write` returns [`Error::SendQueueFull`].
    ///
    /// # Examples
    ///
    /// ```
    /// let opts = twine::ListenOptions::new(0).send_queue_limit(256 * 1024);
    /// # let _ = opts;
    /// ```
    pub fn send_queue_limit(mut self, bytes: usize) -> Self {
        self.send_queue_limit = bytes;
        self
    }

    /// How many datagrams one system call reads (`recvmmsg`) or sends (`sendmmsg`) on
    /// Linux, 1..=1024; 32 by default. A read also asks for no more than the byte budget
    /// has room for (see [`read_budget`](Self::read_budget): with the default 256 KiB and
    /// max packet size 8192, 32). It also bounds the writes gathered while a batch is
    /// dispatched: see [gathered writes](crate::UdpTransport#gathered-writes).
    ///
    /// # Examples
    ///
    /// ```
    /// let opts = twine::ListenOptions::new(0).batch_size(64);
    /// # let _ = opts;
    /// ```
    pub fn batch_size(mut self, datagrams: usize) -> Self {
        self.batch_size = datagrams;
        self
    }

    /// Flow control: when the bytes waiting in the send queue (the kernel's buffer being
    /// full) go past `high`, the protocol's
    /// [`pause_producing`](crate::DatagramProtocol::pause_producing) is called; once they
    /// are down to `low` or less, [`resume_producing`](crate::DatagramProtocol::resume_producing).
    /// 64 KiB and 16 KiB by default (asyncio's). The hard bound stays
    /// [`send_queue_limit`](Self::send_queue_limit); `high` is lowered, if need be, to
    /// leave room below that bound for one more datagram of the largest size, so that a
    /// producer that heeds the pause never meets the bound (see
    /// [`UdpTransport::write_buffer_size`](crate::UdpTransport::write_buffer_size) for how
    /// the bytes are counted), and `low` above `high` acts as `high`.
    ///
    /// # Examples
    ///
    /// ```
    /// // Paused past 32 KiB waiting, resumed at 8 KiB.
    /// let opts = twine::ListenOptions::new(0).write_buffer_limits(32 * 1024, 8 * 1024);
    /// # let _ = opts;
    /// ```
    #[doc(alias = "set_write_buffer_limits")]
    pub fn write_buffer_limits(mut self, high: usize, low: usize) -> Self {
        self.write_high = high;
        self.write_low = low;
        self
    }

    /// Whether gathered writes use UDP segmentation offload (Linux's `UDP_SEGMENT`, "GSO";
    /// on by default): a run of gathered datagrams to one destination, all of one length
    /// (up to 1452 bytes; the run's last may be shorter), goes to the kernel as one
    /// message that it cuts back into the same datagrams, so the network stack is walked
    /// once per run instead of once per datagram. After a read that emptied the socket's
    /// queue (its senders may all be waiting for these replies), the first reply goes in
    /// a message of its own: a run reaches its receiver only once its whole message is
    /// sent, so a receiver woken by the first datagram works while the rest is sent,
    /// rather than both sides taking turns to wait. Receivers see no difference. If the
    /// kernel or the route refuses it, the port falls back to one message per datagram for
    /// the rest of its life, losing nothing. Off: always one message per datagram.
    ///
    /// # Examples
    ///
    /// ```
    /// // One message per datagram, for a path that mishandles segmented sends.
    /// let opts = twine::ListenOptions::new(0).segmentation(false);
    /// # let _ = opts;
    /// ```
    #[doc(alias = "gso")]
    #[doc(alias = "UDP_SEGMENT")]
    pub fn segmentation(mut self, enabled: bool) -> Self {
        self.segmentation = enabled;
        self
    }

    /// Whether the kernel may coalesce datagrams arriving from one sender into one read
    /// (UDP generic receive offload, Linux's `UDP_GRO`; off by default): a read then
    /// carries up to 64 KiB of one sender's datagrams of one size, which the port cuts
    /// back into the sender's datagrams, byte for byte and in order, before any hook sees
    /// them: every hook, counter and truncation rule sees one datagram at a time, as with
    /// it off. It pays where many datagrams of one size arrive back to back from the same
    /// senders (bulk transfers, a sender that segments), saving the stack's walk per
    /// datagram; each slot of the receive batch then holds 64 KiB rather than
    /// [`max_packet_size`](Self::max_packet_size) bytes. Where the kernel lacks it (before
    /// Linux 5.0, or elsewhere) the port reads one datagram per slot, as with it off;
    /// [`PortStats::coalesced_reads`](crate::PortStats::coalesced_reads) counts the reads
    /// that carried more than one. An adopted socket on which `UDP_GRO` was on is switched
    /// to what this option says.
    ///
    /// # Examples
    ///
    /// ```
    /// let opts = twine::ListenOptions::new(0).receive_offload(true);
    /// # let _ = opts;
    /// ```
    #[doc(alias = "gro")]
    #[doc(alias = "UDP_GRO")]
    pub fn receive_offload(mut self, enabled: bool) -> Self {
        self.receive_offload = enabled;
        self
    }

    /// What becomes of a datagram longer than the max packet size (the kernel says so
    /// with `MSG_TRUNC`): by default it is dropped, never delivered cut short; with
    /// `true` its first max-packet-size bytes and its whole length go to
    /// [`DatagramProtocol::datagram_truncated`](crate::DatagramProtocol::datagram_truncated).
    /// Either way it is counted in [`PortStats::truncated`](crate::PortStats::truncated)
    /// and logged (at most once a second per port).
    ///
    /// # Examples
    ///
    /// ```
    /// let opts = twine::ListenOptions::new(0).max_packet_size(512).deliver_truncated(true);
    /// # let _ = opts;
    /// ```
    pub fn deliver_truncated(mut self, deliver: bool) -> Self {
        self.deliver_truncated = deliver;
        self
    }

    /// Whether a panic in a hook a remote peer can trigger (`datagram_received`,
    /// `datagram_truncated`, `error_received`, `connection_refused`, `pause_producing`,
    /// `resume_producing`) or in a port timer closes the port. Off by default, as in
    /// Twisted: the panic is caught, logged with the port and the sender, counted in
    /// [`PortStats::panics`](crate::PortStats::panics), that one event is dropped and the
    /// port goes on, so that one datagram tripping a bug in a parser cannot shut a public
    /// server down. On: the port closes after such a panic (its `stop_protocol` still
    /// runs). A panic in `start_protocol` or `stop_protocol` closes the port either way.
    ///
    /// # Examples
    ///
    /// ```
    /// let opts = twine::ListenOptions::new(0).close_on_panic(true);
    /// # let _ = opts;
    /// ```
    pub fn close_on_panic(mut self, close: bool) -> Self {
        self.close_on_panic = close;
        self
    }

    /// Whether the port learns, per datagram, the local address it was sent to and the
    /// interface it arrived on (`IP_PKTINFO`; `IPV6_RECVPKTINFO` on an IPv6 port, with
    /// `IP_PKTINFO` too for the IPv4 datagrams of a dual-stack port; off by default), for
    /// [`UdpTransport::arrival`](crate::UdpTransport::arrival) to tell inside
    /// `datagram_received`. The use: a port bound to a wildcard address on a host with
    /// several addresses, which must know which of them a client asked, or answer from it
    /// ([`reply_from_arrival`](Self::reply_from_arrival)). Where the OS lacks it, the
    /// listen call fails with [`Error::SocketOption`].
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::{ListenOptions, Reactor, from_fn};
    /// let mut reactor = Reactor::new()?;
    /// reactor.listen_udp_with(
    ///     ListenOptions::new(0).interface("0.0.0.0").arrival_address(true),
    ///     from_fn(|t, _data, from| {
    ///         let to = t.arrival().destination;
    ///         log::info!("{from} asked {to:?}");
    ///     }),
    /// )?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "IP_PKTINFO")]
    #[doc(alias = "pktinfo")]
    pub fn arrival_address(mut self, on: bool) -> Self {
        self.arrival = on;
        self
    }

    /// Whether the writes a hook makes to the sender of the datagram it was handed leave
    /// from the address that datagram arrived on (off by default; turns
    /// [`arrival_address`](Self::arrival_address) on). It fixes the classic bug of a
    /// server bound to `0.0.0.0` on a host with several addresses: a client that asked
    /// 192.0.2.7 gets its answer from whichever address the route prefers, and a client
    /// that checks where answers come from (a connected socket, a DNS resolver) drops it.
    ///
    /// The source used is the arrival's
    /// [`reply_source`](crate::Arrival::reply_source): for a datagram sent to a multicast
    /// or broadcast address, IPv4 gives a unicast address of the interface it arrived on,
    /// and on IPv6 the kernel chooses (a group is never a source). It applies to writes
    /// to the datagram's sender made in `datagram_received` and `datagram_truncated`;
    /// writes to other addresses, and writes from timers and other hooks, leave from where
    /// the kernel chooses, unless [`UdpTransport::write_with`](crate::UdpTransport::write_with)
    /// names a source.
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::{ListenOptions, Reactor, from_fn};
    /// let mut reactor = Reactor::new()?;
    /// reactor.listen_udp_with(
    ///     ListenOptions::new(0).interface("0.0.0.0").reply_from_arrival(true),
    ///     from_fn(|t, data, from| {
    ///         let _ = t.write(data, from);
    ///     }),
    /// )?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn reply_from_arrival(mut self, on: bool) -> Self {
        self.reply_from_arrival = on;
        self
    }

    /// Whether the port learns each datagram's TOS byte (IPv4) or traffic class (IPv6):
    /// its DSCP and ECN bits (`IP_RECVTOS`; `IPV6_RECVTCLASS` on an IPv6 port, with
    /// `IP_RECVTOS` too, without which a dual-stack port's IPv4 datagrams come without
    /// one), for [`UdpTransport::arrival`](crate::UdpTransport::arrival). Off by default.
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::{ListenOptions, Reactor, from_fn};
    /// let mut reactor = Reactor::new()?;
    /// reactor.listen_udp_with(
    ///     ListenOptions::new(0).interface("127.0.0.1").receive_tos(true),
    ///     from_fn(|t, _data, _from| {
    ///         if t.arrival().ecn() == Some(3) {
    ///             log::debug!("congestion experienced");
    ///         }
    ///     }),
    /// )?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "IP_RECVTOS")]
    #[doc(alias = "ecn")]
    pub fn receive_tos(mut self, on: bool) -> Self {
        self.receive_tos = on;
        self
    }

    /// The TOS byte (IPv4) or traffic class (IPv6) of every datagram the port sends: DSCP
    /// in the top six bits, ECN in the low two (`IP_TOS`; `IPV6_TCLASS` on an IPv6 port,
    /// with `IP_TOS` too for the IPv4 peers of a dual-stack port). The kernel's default
    /// (0) when not set. A write can carry its own
    /// ([`WriteOptions::tos`](crate::WriteOptions::tos)), which replaces this whole byte
    /// for that datagram, DSCP included.
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::ListenOptions;
    /// // Expedited forwarding (DSCP 46), ECN-capable transport ECT(0).
    /// let opts = ListenOptions::new(0).tos(46 << 2 | 0b10);
    /// # let _ = opts;
    /// ```
    #[doc(alias = "IP_TOS")]
    #[doc(alias = "dscp")]
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = Some(tos);
        self
    }

    /// Whether the kernel stamps each datagram with the time it queued it
    /// (`SO_TIMESTAMPNS`; off by default), for
    /// [`UdpTransport::arrival`](crate::UdpTransport::arrival): the receive-to-reply
    /// delay of a time server, the time a datagram waited in the socket's queue. The
    /// stamp is the **wall clock** (`CLOCK_REALTIME`, a [`std::time::SystemTime`]): it
    /// jumps when the clock is set, and cannot be compared with the reactor's
    /// [`Instant`](std::time::Instant)s; compare it with `SystemTime::now()`. A coalesced
    /// read ([`receive_offload`](Self::receive_offload)) has one stamp for all its
    /// datagrams. Turning it on makes the kernel stamp every datagram the host receives,
    /// for every socket, while any socket asks for it. Where the OS lacks it, the listen
    /// call fails with [`Error::SocketOption`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::SystemTime;
    /// use twine::{ListenOptions, Reactor, from_fn};
    /// let mut reactor = Reactor::new()?;
    /// reactor.listen_udp_with(
    ///     ListenOptions::new(0).interface("127.0.0.1").receive_timestamps(true),
    ///     from_fn(|t, _data, _from| {
    ///         if let Some(at) = t.arrival().timestamp {
    ///             let waited = SystemTime::now().duration_since(at).unwrap_or_default();
    ///             log::debug!("queued for {waited:?}");
    ///         }
    ///     }),
    /// )?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "SO_TIMESTAMPNS")]
    pub fn receive_timestamps(mut self, on: bool) -> Self {
        self.timestamps = on;
        self
    }

    /// The address to bind, or a typed error for a bad interface or size.
    pub(crate) fn bind_addr(&self) -> Result<SocketAddr> {
        self.check()?;
        let ip = if self.interface.is_empty() {
            IpAddr::V4(Ipv4Addr::UNSPECIFIED)
        } else {
            return parse_ip(&self.interface, "not an IPv4 or IPv6 address")
                .map(|(ip, scope)| with_scope(SocketAddr::new(ip, self.port), scope));
        };
        Ok(SocketAddr::new(ip, self.port))
    }

    /// Checks the sizes and budgets (everything but the address).
    pub(crate) fn check(&self) -> Result<()> {
        if !(1..=65535).contains(&self.max_packet_size) {
            return Err(Error::InvalidOption {
                option: "max_packet_size",
                value: self.max_packet_size,
                expected: "1..=65535",
            });
        }
        if !(1..=MAX_BATCH_SIZE).contains(&self.batch_size) {
            return Err(Error::InvalidOption {
                option: "batch_size",
                value: self.batch_size,
                expected: "1..=1024",
            });
        }
        if self.read_budget == 0 {
            return Err(Error::InvalidOption {
                option: "read_budget datagrams",
                value: 0,
                expected: "at least 1",
            });
        }
        if self.read_budget_bytes == 0 {
            return Err(Error::InvalidOption {
                option: "read_budget bytes",
                value: 0,
                expected: "at least 1",
            });
        }
        Ok(())
    }
}

impl From<SocketAddr> for ListenOptions {
    fn from(addr: SocketAddr) -> Self {
        ListenOptions::from_addr(addr)
    }
}

fn with_scope(mut addr: SocketAddr, scope: u32) -> SocketAddr {
    if let SocketAddr::V6(v6) = &mut addr {
        v6.set_scope_id(scope);
    }
    addr
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn default_binds_ipv4_wildcard() {
        assert_eq!(
            ListenOptions::new(5).bind_addr().unwrap(),
            "0.0.0.0:5".parse().unwrap()
        );
    }

    #[test]
    fn from_addr_round_trips() {
        for a in ["127.0.0.1:7", "[::1]:8", "[fe80::1%3]:9"] {
            let addr: SocketAddr = a.parse().unwrap();
            assert_eq!(ListenOptions::from(addr).bind_addr().unwrap(), addr);
        }
    }

    #[test]
    fn hostname_interface_is_invalid_address() {
        let err = ListenOptions::new(0).interface("example.com").bind_addr();
        assert!(matches!(err, Err(Error::InvalidAddress { .. })));
    }

    #[test]
    fn zero_read_budgets_are_refused() {
        for (n, b) in [(0, 1), (1, 0)] {
            let err = ListenOptions::new(0).read_budget(n, b).bind_addr();
            assert!(matches!(err, Err(Error::InvalidOption { .. })), "{n} {b}");
        }
    }

    #[test]
    fn packet_size_is_checked() {
        for bad in [0, 65536] {
            let err = ListenOptions::new(0).max_packet_size(bad).bind_addr();
            assert!(matches!(err, Err(Error::InvalidOption { .. })), "{bad}");
        }
    }
}
