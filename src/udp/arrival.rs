//! What the kernel tells of a received datagram besides its bytes and sender
//! ([`Arrival`]), and what a write can carry besides its bytes ([`WriteOptions`]): the
//! local address a datagram arrived on or leaves from, its TOS byte, its receive time.

use std::net::{IpAddr, SocketAddr};

use crate::error::{Error, Result};
pub use crate::sys::Arrival;
use crate::sys::{self, SendMeta};
use crate::udp::addr::PeerAddr;
use crate::udp::transport::UdpTransport;

impl Arrival {
    /// The ECN bits of [`tos`](Self::tos): 0 not ECN-capable, 1 ECT(1), 2 ECT(0), 3 CE
    /// (congestion experienced).
    ///
    /// # Examples
    ///
    /// ```
    /// # let arrival = twine::Arrival::default();
    /// if arrival.ecn() == Some(3) {
    ///     println!("a router on the path is congested");
    /// }
    /// ```
    pub fn ecn(&self) -> Option<u8> {
        self.tos.map(|tos| tos & 0b11)
    }

    /// The DSCP of [`tos`](Self::tos) (its top six bits).
    ///
    /// # Examples
    ///
    /// ```
    /// # let arrival = twine::Arrival::default();
    /// let expedited = arrival.dscp() == Some(46);
    /// # let _ = expedited;
    /// ```
    pub fn dscp(&self) -> Option<u8> {
        self.tos.map(|tos| tos >> 2)
    }

    /// Write options that send a reply from [`reply_source`](Self::reply_source): for a
    /// reply written later than the hook (from a timer, say), where
    /// [`ListenOptions::reply_from_arrival`](crate::ListenOptions::reply_from_arrival)
    /// no longer applies.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use std::time::Duration;
    /// use twine::{DatagramProtocol, UdpTransport};
    ///
    /// /// Answers each request a second later, still from the address it was sent to.
    /// struct Slow;
    ///
    /// impl DatagramProtocol for Slow {
    ///     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
    ///         let (reply, data) = (t.arrival().reply_options(), data.to_vec());
    ///         let _ = t.call_later(Duration::from_secs(1), move |_: &mut Slow, t| {
    ///             let _ = t.write_with(&data, from, reply);
    ///         });
    ///     }
    /// }
    ///
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("0.0.0.0").arrival_address(true);
    /// reactor.listen_udp_with(opts, Slow)?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn reply_options(&self) -> WriteOptions {
        WriteOptions {
            source: self.reply_source,
            tos: None,
        }
    }
}

/// What one write carries besides its bytes: the local address it leaves from, and its
/// TOS byte; for [`UdpTransport::write_with`]. Empty by default: the kernel chooses the
/// source, and the port's TOS byte applies.
///
/// # Examples
///
/// ```
/// use twine::WriteOptions;
/// let opts = WriteOptions::new().source("127.0.0.2".parse()?).tos(0xb8);
/// # let _ = opts;
/// # Ok::<(), std::net::AddrParseError>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct WriteOptions {
    pub(crate) source: Option<IpAddr>,
    pub(crate) tos: Option<u8>,
}

impl WriteOptions {
    /// Nothing set: the same as a plain [`UdpTransport::write`].
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(twine::WriteOptions::new(), twine::WriteOptions::default());
    /// ```
    pub fn new() -> Self {
        WriteOptions::default()
    }

    /// The local address the datagram leaves from (`IP_PKTINFO`/`IPV6_PKTINFO` with
    /// interface 0, so that the route decides the interface): one of this host's
    /// unicast addresses, of the port's family (an IPv4 address on an IPv6 port is sent
    /// IPv4-mapped, for an IPv4 peer of a dual-stack port).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// let opts = twine::WriteOptions::new().source(Ipv4Addr::LOCALHOST.into());
    /// # let _ = opts;
    /// ```
    pub fn source(mut self, source: IpAddr) -> Self {
        self.source = Some(source);
        self
    }

    /// The datagram's TOS byte (IPv4) or traffic class (IPv6), the whole byte: DSCP in
    /// the top six bits, ECN in the low two. It replaces the port's
    /// ([`ListenOptions::tos`](crate::ListenOptions::tos)) for this datagram, DSCP
    /// included.
    ///
    /// # Examples
    ///
    /// ```
    /// // ECT(0), best effort.
    /// let opts = twine::WriteOptions::new().tos(0b10);
    /// # let _ = opts;
    /// ```
    pub fn tos(mut self, tos: u8) -> Self {
        self.tos = Some(tos);
        self
    }

    pub(crate) fn meta(&self) -> SendMeta {
        SendMeta {
            source: self.source,
            tos: self.tos,
        }
    }
}

impl UdpTransport<'_> {
    /// What the kernel said of the datagram being delivered: the address it was sent to,
    /// its interface, TOS byte and receive time, each as its listen option asked (see
    /// [`Arrival`]). Every field is `None` outside `datagram_received` and
    /// `datagram_truncated`.
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::{ListenOptions, Reactor, from_fn};
    /// let mut reactor = Reactor::new()?;
    /// reactor.listen_udp_with(
    ///     ListenOptions::new(0).interface("0.0.0.0").arrival_address(true),
    ///     from_fn(|t, data, from| {
    ///         if t.arrival().destination == Some(std::net::IpAddr::from([127, 0, 0, 2])) {
    ///             let _ = t.write(data, from);
    ///         }
    ///     }),
    /// )?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[inline]
    pub fn arrival(&self) -> Arrival {
        self.core.arrival.unwrap_or_default()
    }

    /// [`write`](Self::write) with a source address and a TOS byte of its own (see
    /// [`WriteOptions`]). The datagram goes through the same path as a plain write
    /// (gathered, queued, counted), with its options kept.
    ///
    /// # Errors
    ///
    /// As [`write`](Self::write); and [`Error::AddressFamilyMismatch`] for an IPv6 source on
    /// an IPv4 port, [`Error::InvalidAddress`] for a multicast or unspecified source or one
    /// of the other family than the destination (an IPv4 peer of a dual-stack port takes
    /// an IPv4 or IPv4-mapped source, an IPv6 peer an IPv6 one),
    /// [`Error::Send`] for a source that is not one of this host's (`EINVAL` or
    /// `ENETUNREACH`, from the kernel; for a gathered write, counted and told to
    /// `error_received` instead), or where the OS cannot carry these options
    /// (unsupported).
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::{ListenOptions, Reactor, WriteOptions, from_fn};
    /// let mut reactor = Reactor::new()?;
    /// reactor.listen_udp_with(
    ///     ListenOptions::new(0).interface("0.0.0.0"),
    ///     from_fn(|t, data, from| {
    ///         let from_lo = WriteOptions::new().source(std::net::Ipv4Addr::LOCALHOST.into());
    ///         if let Err(e) = t.write_with(data, from, from_lo) {
    ///             log::warn!("reply to {from}: {e}");
    ///         }
    ///     }),
    /// )?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn write_with(
        &mut self,
        data: &[u8],
        addr: impl PeerAddr,
        options: WriteOptions,
    ) -> Result<()> {
        let addr = addr.peer_addr()?;
        let meta = self.check_write_options(options, addr)?;
        self.core.send_meta(data, addr, meta)
    }

    /// Sets the TOS byte (IPv4) or traffic class (IPv6) of every datagram the port sends
    /// from now on (see [`ListenOptions::tos`](crate::ListenOptions::tos)).
    ///
    /// # Errors
    ///
    /// [`Error::SocketOption`] if the kernel refuses.
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::{Reactor, from_fn};
    /// let mut reactor = Reactor::new()?;
    /// let port = reactor.listen_udp(0, from_fn(|_, _, _| {}))?;
    /// reactor.with_port(&port, |_, t| t.set_tos(0b10))??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "IP_TOS")]
    pub fn set_tos(&mut self, tos: u8) -> Result<()> {
        let v6 = self.core.local.is_ipv6();
        self.core
            .socket
            .set_tos(v6, tos)
            .map_err(|source| Error::SocketOption {
                option: if v6 { "IPV6_TCLASS" } else { "IP_TOS" },
                source,
            })
    }

    fn check_write_options(&self, options: WriteOptions, addr: SocketAddr) -> Result<SendMeta> {
        let meta = options.meta();
        if meta.is_empty() {
            return Ok(meta);
        }
        if !sys::SEND_META {
            return Err(Error::Send {
                addr,
                source: std::io::Error::new(
                    std::io::ErrorKind::Unsupported,
                    "this OS cannot set a datagram's source address or TOS byte",
                ),
            });
        }
        if let Some(source) = meta.source {
            check_source(source, self.core.local)?;
            // On a dual-stack port an IPv4 peer (IPv4-mapped) takes an IPv4 source, an IPv6
            // peer an IPv6 one: the kernel refuses the others (EINVAL).
            if source.to_canonical().is_ipv4() != addr.ip().to_canonical().is_ipv4() {
                return Err(Error::InvalidAddress {
                    address: source.to_string(),
                    reason: "a source must be of the destination's family (IPv4, or IPv4-mapped, for an IPv4 peer)",
                });
            }
        }
        Ok(meta)
    }
}

/// Whether `source` can be the source of a datagram sent by a port bound to `local`.
pub(crate) fn check_source(source: IpAddr, local: SocketAddr) -> Result<()> {
    if local.is_ipv4() && source.is_ipv6() {
        return Err(Error::AddressFamilyMismatch {
            address: SocketAddr::new(source, 0),
            local,
        });
    }
    let canonical = source.to_canonical();
    if canonical.is_multicast() || canonical.is_unspecified() {
        return Err(Error::InvalidAddress {
            address: source.to_string(),
            reason: "a source address must be one of this host's unicast addresses",
        });
    }
    Ok(())
}
