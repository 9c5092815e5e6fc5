//! Multicast on a transport: group membership, TTL (hops), loopback, outgoing interface.
//!
//! Any UDP port can use these (Twisted keeps them to `MulticastPort`); a port opened with
//! [`Reactor::listen_multicast`](crate::Reactor::listen_multicast) is the usual one, since
//! it may share its port number with other listeners. IPv4 and IPv6 alike: on an IPv6
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
    #[doc(alias = "leaveGroup")]
    pub fn leave_group(
        &mut self,
        group: impl IpLiteral,
        interface: impl IntoInterface,
    ) -> Result<()> {
        self.membership("leave", group.ip()?, interface.interface()?)
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

fn describe(interface: Interface) -> String {
    match interface {
        Interface::Any => "any interface".to_owned(),
        Interface::V4(a) => a.to_string(),
        Interface::Index(i) => format!("interface #{i}"),
    }
}
