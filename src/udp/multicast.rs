//! Multicast on a transport: group membership (any-source and source-specific), TTL
//! (hops), loopback, outgoing interface.
//!
//! Any UDP port can use these (Twisted keeps them to `MulticastPort`); a port opened with
//! [`Reactor::listen_multicast`](crate::Reactor::listen_multicast) is the usual one, since
//! it may share its port number with other listeners (each then gets every group
//! datagram, while a unicast datagram to the port reaches only one of them: see
//! [`ListenOptions::listen_multiple`](crate::ListenOptions::listen_multiple)). IPv4 and IPv6 alike: on an IPv6
//! port the TTL is the hop limit (`IPV6_MULTICAST_HOPS`), which Twisted lacks.
//!
//! Two Linux facts worth knowing: multicast sent out through `lo` is delivered to this
//! host's members whatever the loopback mode says (the mode matters on real interfaces);
//! and a port receives the groups other sockets on its port number joined, unless
//! [`UdpTransport::set_multicast_all`] turns that off.

use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};

use socket2::InterfaceIndexOrAddress;

use crate::error::{Error, Result};
use crate::sys;
use crate::udp::addr::{Interface, IntoInterface, IpLiteral};
use crate::udp::transport::UdpTransport;

fn option_error(option: &'static str) -> impl FnOnce(io::Error) -> Error {
    move |source| Error::SocketOption { option, source }
}

impl UdpTransport<'_> {
    /// Joins `group` on `interface` (`""` lets the kernel choose; an IPv4 port also takes
    /// the interface's address, an IPv6 port its name or index).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] for a group or interface that is not a literal, name or
    /// index; [`Error::NotMulticast`] for a unicast group; [`Error::AddressFamilyMismatch`]
    /// for a group of the other family; [`Error::Multicast`] if the kernel refuses (e.g.
    /// joined twice).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// reactor.listen_multicast(0, twine::from_fn(|t, _data, _from| {
    ///     let _ = t;
    /// }), true)?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "joinGroup")]
    pub fn join_group(
        &mut self,
        group: impl IpLiteral,
        interface: impl IntoInterface,
    ) -> Result<()> {
        self.membership("join", group.ip()?, interface.interface()?)
    }

    /// Leaves `group` on `interface`.
    ///
    /// # Errors
    ///
    /// As [`join_group`](Self::join_group); leaving a group not joined is an
    /// [`Error::Multicast`].
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     t.join_group("239.77.1.1", "127.0.0.1")?;
    ///     t.leave_group("239.77.1.1", "127.0.0.1")?;
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "leaveGroup")]
    pub fn leave_group(
        &mut self,
        group: impl IpLiteral,
        interface: impl IntoInterface,
    ) -> Result<()> {
        self.membership("leave", group.ip()?, interface.interface()?)
    }

    /// Joins the source-specific group `(source, group)` on `interface`: the port then
    /// receives the group's datagrams sent by `source` only (RFC 4607; Linux's
    /// `IP_ADD_SOURCE_MEMBERSHIP`, and `MCAST_JOIN_SOURCE_GROUP` for IPv6 or an IPv4
    /// interface index). Each call adds one source; call it again for more.
    ///
    /// The group must be in a source-specific range, 232.0.0.0/8 or ff3x::/32 (Linux would
    /// take any group and filter its sources; this crate keeps source filtering of
    /// any-source groups out of this call). The source is a unicast address of the port's
    /// family. The interface is as for [`join_group`](Self::join_group): `""` (the kernel
    /// chooses by its routes), an IPv4 port's interface address, index or name, or an IPv6
    /// port's interface name or index (a name is looked up once, when called).
    ///
    /// Twisted has no such call (its ticket 9098).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] for a source, group or interface that is not a literal,
    /// name or index, for a source that is not unicast (multicast, unspecified,
    /// broadcast), or for an IPv6 group on an interface address;
    /// [`Error::NotMulticast`] for a unicast group; [`Error::NotSourceSpecific`] for a
    /// multicast group outside the source-specific ranges;
    /// [`Error::AddressFamilyMismatch`] for a group or source of the other family than the
    /// port's; [`Error::Multicast`] (op `"join source-specific"`) if the kernel refuses, or
    /// the system lacks source-specific multicast.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let port = reactor.listen_multicast(0, twine::from_fn(|_t, data, from| {
    ///     println!("{} bytes from {from}", data.len());
    /// }), true)?;
    /// reactor.with_port(&port, |_, t| {
    ///     // Datagrams to 232.1.2.3 from 127.0.0.1, on the loopback interface.
    ///     t.join_source_group("127.0.0.1", "232.1.2.3", "127.0.0.1")?;
    ///     assert!(matches!(
    ///         t.join_source_group("127.0.0.1", "239.1.2.3", "127.0.0.1"),
    ///         Err(twine::Error::NotSourceSpecific { .. })
    ///     ));
    ///     t.leave_source_group("127.0.0.1", "232.1.2.3", "127.0.0.1")
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "IP_ADD_SOURCE_MEMBERSHIP")]
    #[doc(alias = "MCAST_JOIN_SOURCE_GROUP")]
    pub fn join_source_group(
        &mut self,
        source: impl IpLiteral,
        group: impl IpLiteral,
        interface: impl IntoInterface,
    ) -> Result<()> {
        let (source, group) = (source.ip()?, group.ip()?);
        self.source_membership(true, source, group, interface.interface()?)
    }

    /// Leaves the source-specific group `(source, group)` on `interface`: the port no
    /// longer receives the group's datagrams from `source` (the membership of the group
    /// ends with its last source).
    ///
    /// # Errors
    ///
    /// As [`join_source_group`](Self::join_source_group); leaving a `(source, group)` not
    /// joined is an [`Error::Multicast`] (op `"leave source-specific"`).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let port = reactor.listen_multicast(0, twine::from_fn(|_t, _data, _from| {}), true)?;
    /// reactor.with_port(&port, |_, t| {
    ///     t.join_source_group("127.0.0.1", "232.1.2.4", "lo")?;
    ///     t.leave_source_group("127.0.0.1", "232.1.2.4", "lo")?;
    ///     // Not joined any more.
    ///     assert!(matches!(
    ///         t.leave_source_group("127.0.0.1", "232.1.2.4", "lo"),
    ///         Err(twine::Error::Multicast { .. })
    ///     ));
    ///     Ok::<(), twine::Error>(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "IP_DROP_SOURCE_MEMBERSHIP")]
    #[doc(alias = "MCAST_LEAVE_SOURCE_GROUP")]
    pub fn leave_source_group(
        &mut self,
        source: impl IpLiteral,
        group: impl IpLiteral,
        interface: impl IntoInterface,
    ) -> Result<()> {
        let (source, group) = (source.ip()?, group.ip()?);
        self.source_membership(false, source, group, interface.interface()?)
    }

    fn source_membership(
        &mut self,
        join: bool,
        source: IpAddr,
        group: IpAddr,
        interface: Interface,
    ) -> Result<()> {
        self.check_group(group)?;
        if !is_source_specific(group) {
            return Err(Error::NotSourceSpecific { group });
        }
        let probe = SocketAddr::new(source, 0);
        if probe.is_ipv4() != self.core.local.is_ipv4() {
            return Err(Error::AddressFamilyMismatch {
                address: probe,
                local: self.core.local,
            });
        }
        if !is_unicast(source) {
            return Err(Error::InvalidAddress {
                address: source.to_string(),
                reason: "a multicast source is a unicast address of the group's family (not IPv4-mapped)",
            });
        }
        if let (IpAddr::V6(_), Interface::V4(a)) = (group, interface) {
            return Err(Error::InvalidAddress {
                address: a.to_string(),
                reason: "an IPv6 group is joined on an interface name or index",
            });
        }
        self.with_sock(|sock| sys::source_membership(&sock, join, source, group, interface))
            .map_err(|e| Error::Multicast {
                op: if join {
                    "join source-specific"
                } else {
                    "leave source-specific"
                },
                group,
                interface: format!("{} for source {source}", describe(interface)),
                source: e,
            })
    }

    fn membership(&mut self, op: &'static str, group: IpAddr, interface: Interface) -> Result<()> {
        self.check_group(group)?;
        let join = op == "join";
        let done = match (group, interface) {
            (IpAddr::V4(g), Interface::Any) => self.with_sock(|sock| {
                v4_membership(
                    &sock,
                    join,
                    g,
                    &InterfaceIndexOrAddress::Address(Ipv4Addr::UNSPECIFIED),
                )
            }),
            (IpAddr::V4(g), Interface::V4(a)) => self.with_sock(|sock| {
                v4_membership(&sock, join, g, &InterfaceIndexOrAddress::Address(a))
            }),
            (IpAddr::V4(g), Interface::Index(i)) => self.with_sock(|sock| {
                v4_membership(&sock, join, g, &InterfaceIndexOrAddress::Index(i))
            }),
            (IpAddr::V6(g), Interface::Any) if join => {
                self.with_sock(|sock| sock.join_multicast_v6(&g, 0))
            }
            (IpAddr::V6(g), Interface::Any) => {
                self.with_sock(|sock| sock.leave_multicast_v6(&g, 0))
            }
            (IpAddr::V6(g), Interface::Index(i)) if join => {
                self.with_sock(|sock| sock.join_multicast_v6(&g, i))
            }
            (IpAddr::V6(g), Interface::Index(i)) => {
                self.with_sock(|sock| sock.leave_multicast_v6(&g, i))
            }
            (IpAddr::V6(_), Interface::V4(a)) => {
                return Err(Error::InvalidAddress {
                    address: a.to_string(),
                    reason: "an IPv6 group is joined on an interface name or index",
                });
            }
        };
        done.map_err(|source| Error::Multicast {
            op,
            group,
            interface: describe(interface),
            source,
        })
    }

    fn check_group(&self, group: IpAddr) -> Result<()> {
        if !group.is_multicast() {
            return Err(Error::NotMulticast { group });
        }
        let probe = SocketAddr::new(group, 0);
        if probe.is_ipv4() != self.core.local.is_ipv4() {
            return Err(Error::AddressFamilyMismatch {
                address: probe,
                local: self.core.local,
            });
        }
        Ok(())
    }

    /// The multicast TTL (IPv4) or hop limit (IPv6); 1 by default.
    ///
    /// # Errors
    ///
    /// [`Error::SocketOption`] if the kernel refuses.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     assert_eq!(t.ttl()?, 1);
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "getTTL")]
    pub fn ttl(&self) -> Result<u32> {
        if self.is_v4() {
            self.with_sock(|sock| sock.multicast_ttl_v4())
                .map_err(option_error("IP_MULTICAST_TTL"))
        } else {
            self.with_sock(|sock| sock.multicast_hops_v6())
                .map_err(option_error("IPV6_MULTICAST_HOPS"))
        }
    }

    /// Sets the multicast TTL (IPv4) or hop limit (IPv6), 0..=255.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] past 255; [`Error::SocketOption`] if the kernel refuses.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     t.set_ttl(4)?;
    ///     assert_eq!(t.ttl()?, 4);
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "setTTL")]
    pub fn set_ttl(&mut self, ttl: u32) -> Result<()> {
        if ttl > 255 {
            return Err(Error::InvalidOption {
                option: "multicast ttl",
                value: ttl as usize,
                expected: "0..=255",
            });
        }
        if self.is_v4() {
            self.with_sock(|sock| sock.set_multicast_ttl_v4(ttl))
                .map_err(option_error("IP_MULTICAST_TTL"))
        } else {
            self.with_sock(|sock| sock.set_multicast_hops_v6(ttl))
                .map_err(option_error("IPV6_MULTICAST_HOPS"))
        }
    }

    /// Whether this host's own multicast datagrams are looped back to its listeners
    /// (on by default).
    ///
    /// # Errors
    ///
    /// [`Error::SocketOption`] if the kernel refuses.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     assert!(t.loopback_mode()?);
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "getLoopbackMode")]
    pub fn loopback_mode(&self) -> Result<bool> {
        if self.is_v4() {
            self.with_sock(|sock| sock.multicast_loop_v4())
                .map_err(option_error("IP_MULTICAST_LOOP"))
        } else {
            self.with_sock(|sock| sock.multicast_loop_v6())
                .map_err(option_error("IPV6_MULTICAST_LOOP"))
        }
    }

    /// Turns looping back of this host's own multicast datagrams on or off.
    ///
    /// # Errors
    ///
    /// [`Error::SocketOption`] if the kernel refuses.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     t.set_loopback_mode(false)?;
    ///     assert!(!t.loopback_mode()?);
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "setLoopbackMode")]
    pub fn set_loopback_mode(&mut self, on: bool) -> Result<()> {
        if self.is_v4() {
            self.with_sock(|sock| sock.set_multicast_loop_v4(on))
                .map_err(option_error("IP_MULTICAST_LOOP"))
        } else {
            self.with_sock(|sock| sock.set_multicast_loop_v6(on))
                .map_err(option_error("IPV6_MULTICAST_LOOP"))
        }
    }

    /// The interface multicast datagrams leave by: [`Interface::Any`] until set.
    ///
    /// # Errors
    ///
    /// [`Error::SocketOption`] if the kernel refuses.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     assert_eq!(t.outgoing_interface()?, twine::Interface::Any);
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "getOutgoingInterface")]
    pub fn outgoing_interface(&self) -> Result<Interface> {
        if self.is_v4() {
            let addr = self
                .with_sock(|sock| sock.multicast_if_v4())
                .map_err(option_error("IP_MULTICAST_IF"))?;
            addr.interface()
        } else {
            let index = self
                .with_sock(|sock| sock.multicast_if_v6())
                .map_err(option_error("IPV6_MULTICAST_IF"))?;
            index.interface()
        }
    }

    /// Sets the interface multicast datagrams leave by: an IPv4 address (IPv4 ports) or an
    /// interface name or index (IPv6 ports).
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] for an interface the family cannot use;
    /// [`Error::SocketOption`] if the kernel refuses.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     t.set_outgoing_interface("127.0.0.1")?;
    ///     assert_eq!(t.outgoing_interface()?, twine::Interface::V4(std::net::Ipv4Addr::LOCALHOST));
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "setOutgoingInterface")]
    pub fn set_outgoing_interface(&mut self, interface: impl IntoInterface) -> Result<()> {
        let interface = interface.interface()?;
        let described = describe(interface);
        match (self.is_v4(), interface) {
            (true, Interface::Any) => {
                self.with_sock(|sock| sock.set_multicast_if_v4(&Ipv4Addr::UNSPECIFIED))
            }
            (true, Interface::V4(a)) => self.with_sock(|sock| sock.set_multicast_if_v4(&a)),
            (false, Interface::Any) => self.with_sock(|sock| sock.set_multicast_if_v6(0)),
            (false, Interface::Index(i)) => self.with_sock(|sock| sock.set_multicast_if_v6(i)),
            (_, other) => {
                return Err(Error::InvalidAddress {
                    address: describe(other),
                    reason: "IPv4 ports send by an interface address, IPv6 ports by an index",
                });
            }
        }
        .map_err(|source| Error::OutgoingInterface {
            interface: described,
            option: if self.is_v4() {
                "IP_MULTICAST_IF"
            } else {
                "IPV6_MULTICAST_IF"
            },
            source,
        })
    }

    /// Whether the port receives datagrams of every group joined by *any* socket on the
    /// host on its port number (Linux's `IP_MULTICAST_ALL`, on by default), rather than
    /// only of the groups it joined itself. Turn it off when several ports share a port
    /// number but want different groups.
    ///
    /// # Errors
    ///
    /// [`Error::SocketOption`] if the kernel refuses, or the OS lacks the option.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     // Linux's default: on.
    ///     assert!(t.multicast_all()?);
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn multicast_all(&self) -> Result<bool> {
        if self.is_v4() {
            self.with_sock(|sock| sys::multicast_all_v4(&sock))
                .map_err(option_error("IP_MULTICAST_ALL"))
        } else {
            self.with_sock(|sock| sys::multicast_all_v6(&sock))
                .map_err(option_error("IPV6_MULTICAST_ALL"))
        }
    }

    /// Sets [`multicast_all`](Self::multicast_all).
    ///
    /// # Errors
    ///
    /// [`Error::SocketOption`] if the kernel refuses, or the OS lacks the option.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// reactor.with_port(&port, |_, t| -> twine::Result<()> {
    ///     t.set_multicast_all(false)?;
    ///     assert!(!t.multicast_all()?);
    ///     Ok(())
    /// })??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn set_multicast_all(&mut self, on: bool) -> Result<()> {
        if self.is_v4() {
            self.with_sock(|sock| sys::set_multicast_all_v4(&sock, on))
                .map_err(option_error("IP_MULTICAST_ALL"))
        } else {
            self.with_sock(|sock| sys::set_multicast_all_v6(&sock, on))
                .map_err(option_error("IPV6_MULTICAST_ALL"))
        }
    }

    /// Runs `f` on the socket; "unsupported" for an in-memory port.
    fn with_sock<R>(&self, f: impl FnOnce(socket2::SockRef<'_>) -> io::Result<R>) -> io::Result<R> {
        f(self.sock()?)
    }

    fn is_v4(&self) -> bool {
        self.core.local.is_ipv4()
    }
}

fn v4_membership(
    sock: &socket2::SockRef<'_>,
    join: bool,
    group: Ipv4Addr,
    interface: &InterfaceIndexOrAddress,
) -> io::Result<()> {
    if join {
        sock.join_multicast_v4_n(&group, interface)
    } else {
        sock.leave_multicast_v4_n(&group, interface)
    }
}

/// Whether `group` is in a source-specific range: 232.0.0.0/8, or ff3x::/32 (flags P and
/// T set, any scope, the prefix-length and network-prefix fields zero).
fn is_source_specific(group: IpAddr) -> bool {
    match group {
        IpAddr::V4(g) => g.octets()[0] == 232,
        IpAddr::V6(g) => {
            let s = g.segments();
            s[0] & 0xfff0 == 0xff30 && s[1] == 0
        }
    }
}

/// Whether `ip` may be the source of a multicast datagram of its family: not multicast,
/// unspecified or broadcast, and not IPv4-mapped (an IPv4 host never sends IPv6
/// multicast).
fn is_unicast(ip: IpAddr) -> bool {
    match ip {
        IpAddr::V4(a) => !(a.is_multicast() || a.is_unspecified() || a.is_broadcast()),
        IpAddr::V6(a) => !(a.is_multicast() || a.is_unspecified() || a.to_ipv4_mapped().is_some()),
    }
}

fn describe(interface: Interface) -> String {
    match interface {
        Interface::Any => "any interface".to_owned(),
        Interface::V4(a) => a.to_string(),
        Interface::Index(i) => format!("interface #{i}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn source_specific_ranges() {
        for yes in [
            "232.0.0.0",
            "232.1.2.3",
            "232.255.255.255",
            "ff3e::8000:1",
            "ff32::1",
        ] {
            assert!(is_source_specific(yes.parse().unwrap()), "{yes}");
        }
        for no in [
            "231.255.255.255",
            "233.0.0.1",
            "239.1.2.3",
            "ff1e::1",
            "ff02::1",
            "ff3e:40:fd00::1",
            "ff2e::1",
        ] {
            assert!(!is_source_specific(no.parse().unwrap()), "{no}");
        }
    }

    #[test]
    fn sources_are_unicast() {
        for yes in ["127.0.0.1", "10.0.0.1", "::1", "fd00::1", "fe80::1"] {
            assert!(is_unicast(yes.parse().unwrap()), "{yes}");
        }
        for no in [
            "0.0.0.0",
            "255.255.255.255",
            "224.0.0.1",
            "::",
            "ff02::1",
            "::ffff:10.0.0.1",
            "::ffff:0.0.0.0",
        ] {
            assert!(!is_unicast(no.parse().unwrap()), "{no}");
        }
    }
}
