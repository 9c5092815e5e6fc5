//! Addresses given by users: IP literals only, never hostnames (Twisted's rule).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr, SocketAddrV4, SocketAddrV6};

use crate::error::{Error, Result};
use crate::sys;

/// Something that names a datagram's destination: a [`SocketAddr`], an `(ip, port)` pair,
/// or text such as `"127.0.0.1:9"`, `"[::1]:9"` or `("127.0.0.1", 9)`.
///
/// Text must be an IP literal: a hostname is refused with [`Error::InvalidAddress`] (no
/// name lookup ever blocks the reactor). `("<broadcast>", port)` means
/// `255.255.255.255:port`, as in Twisted.
///
/// # Examples
///
/// ```
/// use std::net::{Ipv4Addr, SocketAddr};
/// use twine::PeerAddr;
/// let a = SocketAddr::from((Ipv4Addr::LOCALHOST, 53));
/// assert_eq!(("127.0.0.1", 53).peer_addr()?, a);
/// assert_eq!((Ipv4Addr::LOCALHOST, 53).peer_addr()?, a);
/// assert!(("localhost", 53).peer_addr().is_err(), "hostnames are not resolved");
/// # Ok::<(), twine::Error>(())
/// ```
pub trait PeerAddr {
    /// The socket address, or why the text is not one.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::{Ipv6Addr, SocketAddr, SocketAddrV6};
    /// use twine::{Error, PeerAddr};
    /// let dns = SocketAddr::from((Ipv6Addr::LOCALHOST, 53));
    /// // Every form names the same destination.
    /// assert_eq!("[::1]:53".peer_addr()?, dns);
    /// assert_eq!(String::from("[::1]:53").peer_addr()?, dns);
    /// assert_eq!(("::1", 53).peer_addr()?, dns);
    /// assert_eq!(SocketAddrV6::new(Ipv6Addr::LOCALHOST, 53, 0, 0).peer_addr()?, dns);
    /// // Text without a port, or with a hostname, is refused: no name is looked up.
    /// assert!(matches!("::1".peer_addr(), Err(Error::InvalidAddress { .. })));
    /// assert!(matches!("localhost:53".peer_addr(), Err(Error::InvalidAddress { .. })));
    /// # Ok::<(), twine::Error>(())
    /// ```
    fn peer_addr(self) -> Result<SocketAddr>;
}

impl PeerAddr for SocketAddr {
    #[inline]
    fn peer_addr(self) -> Result<SocketAddr> {
        Ok(self)
    }
}

impl PeerAddr for SocketAddrV4 {
    fn peer_addr(self) -> Result<SocketAddr> {
        Ok(self.into())
    }
}

impl PeerAddr for SocketAddrV6 {
    fn peer_addr(self) -> Result<SocketAddr> {
        Ok(self.into())
    }
}

macro_rules! ip_types {
    ($($t:ty),*) => {$(
        impl PeerAddr for ($t, u16) {
            fn peer_addr(self) -> Result<SocketAddr> {
                Ok(SocketAddr::new(self.0.into(), self.1))
            }
        }

        impl IpLiteral for $t {
            fn ip(self) -> Result<IpAddr> {
                Ok(self.into())
            }
        }
    )*};
}

ip_types!(IpAddr, Ipv4Addr, Ipv6Addr);

impl PeerAddr for (&str, u16) {
    fn peer_addr(self) -> Result<SocketAddr> {
        if self.0 == "<broadcast>" {
            return Ok(SocketAddr::new(Ipv4Addr::BROADCAST.into(), self.1));
        }
        let (ip, scope) = parse_ip(self.0, "only IP addresses are accepted, not hostnames")?;
        Ok(scoped(SocketAddr::new(ip, self.1), scope))
    }
}

impl PeerAddr for &str {
    fn peer_addr(self) -> Result<SocketAddr> {
        self.parse().map_err(|_| Error::InvalidAddress {
            address: self.to_owned(),
            reason: "expected IP:PORT or [IPv6]:PORT with an IP literal",
        })
    }
}

impl PeerAddr for &String {
    fn peer_addr(self) -> Result<SocketAddr> {
        self.as_str().peer_addr()
    }
}

impl PeerAddr for String {
    fn peer_addr(self) -> Result<SocketAddr> {
        self.as_str().peer_addr()
    }
}

/// Something that names an IP address: an [`IpAddr`] or an IP literal as text.
///
/// # Examples
///
/// ```
/// use twine::IpLiteral;
/// assert_eq!("239.1.2.3".ip()?, std::net::IpAddr::from([239, 1, 2, 3]));
/// assert!("example.test".ip().is_err());
/// # Ok::<(), twine::Error>(())
/// ```
pub trait IpLiteral {
    /// The address, or why the text is not one.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
    /// use twine::{Error, IpLiteral};
    /// assert_eq!("::1".ip()?, IpAddr::V6(Ipv6Addr::LOCALHOST));
    /// // A setting read from a file, as `join_group` and the other multicast calls take it.
    /// let setting = String::from("127.0.0.1");
    /// assert_eq!((&setting).ip()?, IpAddr::V4(Ipv4Addr::LOCALHOST));
    /// assert_eq!(Ipv4Addr::LOCALHOST.ip()?, IpAddr::V4(Ipv4Addr::LOCALHOST));
    /// // A hostname is refused, never resolved; so is an address with a port.
    /// assert!(matches!("localhost".ip(), Err(Error::InvalidAddress { .. })));
    /// assert!(matches!("127.0.0.1:53".ip(), Err(Error::InvalidAddress { .. })));
    /// # Ok::<(), twine::Error>(())
    /// ```
    fn ip(self) -> Result<IpAddr>;
}

impl IpLiteral for &str {
    fn ip(self) -> Result<IpAddr> {
        parse_ip(self, "not an IPv4 or IPv6 address").map(|(ip, _)| ip)
    }
}

impl IpLiteral for &String {
    fn ip(self) -> Result<IpAddr> {
        self.as_str().ip()
    }
}

/// A network interface for multicast: which one joins a group, or sends to one.
///
/// # Examples
///
/// ```
/// use twine::{Interface, IntoInterface};
/// assert_eq!("".interface()?, Interface::Any);
/// assert_eq!("127.0.0.1".interface()?, Interface::V4(std::net::Ipv4Addr::LOCALHOST));
/// assert_eq!(3u32.interface()?, Interface::Index(3));
/// # Ok::<(), twine::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[non_exhaustive]
pub enum Interface {
    /// Let the kernel pick by its routes (`0.0.0.0`, or index 0 for IPv6).
    Any,
    /// The IPv4 interface with this address (IPv4 ports only).
    V4(Ipv4Addr),
    /// The interface with this index (as `if_nametoindex` gives).
    Index(u32),
}

/// Something that names an [`Interface`]: `""` (any), an IPv4 literal, an interface name
/// such as `"lo"`, an index, or an [`Ipv4Addr`].
///
/// # Examples
///
/// ```
/// use twine::{Interface, IntoInterface};
/// // A name is looked up among this host's interfaces.
/// assert!(matches!("lo".interface()?, Interface::Index(_)));
/// # Ok::<(), twine::Error>(())
/// ```
pub trait IntoInterface {
    /// The interface, or why the text names none.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::Ipv4Addr;
    /// use twine::{Error, Interface, IntoInterface};
    /// assert_eq!(Ipv4Addr::LOCALHOST.interface()?, Interface::V4(Ipv4Addr::LOCALHOST));
    /// // The wildcard address and index 0 both leave the choice to the kernel.
    /// assert_eq!("0.0.0.0".interface()?, Interface::Any);
    /// assert_eq!(0u32.interface()?, Interface::Any);
    /// assert_eq!("2".interface()?, Interface::Index(2));
    /// // An IPv6 interface is named by its name or index, never by an address.
    /// assert!(matches!("::1".interface(), Err(Error::InvalidAddress { .. })));
    /// // A name must be one of this host's interfaces.
    /// assert!(matches!("no-such-if0".interface(), Err(Error::InvalidAddress { .. })));
    /// # Ok::<(), twine::Error>(())
    /// ```
    fn interface(self) -> Result<Interface>;
}

impl IntoInterface for Interface {
    fn interface(self) -> Result<Interface> {
        Ok(self)
    }
}

impl IntoInterface for Ipv4Addr {
    fn interface(self) -> Result<Interface> {
        Ok(if self.is_unspecified() {
            Interface::Any
        } else {
            Interface::V4(self)
        })
    }
}

impl IntoInterface for u32 {
    fn interface(self) -> Result<Interface> {
        Ok(if self == 0 {
            Interface::Any
        } else {
            Interface::Index(self)
        })
    }
}

impl IntoInterface for &str {
    fn interface(self) -> Result<Interface> {
        if self.is_empty() {
            return Ok(Interface::Any);
        }
        if let Ok(ip) = self.parse::<IpAddr>() {
            return match ip {
                IpAddr::V4(v4) => v4.interface(),
                IpAddr::V6(v6) if v6.is_unspecified() => Ok(Interface::Any),
                IpAddr::V6(_) => Err(Error::InvalidAddress {
                    address: self.to_owned(),
                    reason: "an IPv6 interface is named by its name or index, not an address",
                }),
            };
        }
        if let Ok(index) = self.parse::<u32>() {
            return index.interface();
        }
        sys::interface_index(self)
            .map(Interface::Index)
            .map_err(|_| Error::InvalidAddress {
                address: self.to_owned(),
                reason: "not an IPv4 address, interface index or interface name",
            })
    }
}

/// Parses an IP literal, with an optional `%scope` (index or interface name) for IPv6.
pub(crate) fn parse_ip(text: &str, reason: &'static str) -> Result<(IpAddr, u32)> {
    let invalid = || Error::InvalidAddress {
        address: text.to_owned(),
        reason,
    };
    let (host, scope) = match text.split_once('%') {
        Some((host, scope)) => (host, Some(scope)),
        None => (text, None),
    };
    let ip: IpAddr = host.parse().map_err(|_| invalid())?;
    let scope = match scope {
        None => 0,
        Some(_) if ip.is_ipv4() => return Err(invalid()),
        Some(s) => match s.parse::<u32>() {
            Ok(index) => index,
            Err(_) => sys::interface_index(s).map_err(|_| invalid())?,
        },
    };
    Ok((ip, scope))
}

fn scoped(mut addr: SocketAddr, scope: u32) -> SocketAddr {
    if let SocketAddr::V6(v6) = &mut addr {
        v6.set_scope_id(scope);
    }
    addr
}

/// The largest UDP payload for the family: 65535 minus the IPv4 and UDP headers, or minus
/// the UDP header alone for IPv6 (whose header is not counted in its payload length).
pub(crate) fn max_datagram(addr: &SocketAddr) -> usize {
    match addr {
        SocketAddr::V4(_) => 65_507,
        SocketAddr::V6(_) => 65_527,
    }
}

/// Whether `a` and `b` are of one family.
pub(crate) fn same_family(a: &SocketAddr, b: &SocketAddr) -> bool {
    a.is_ipv4() == b.is_ipv4()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn literals_parse_hostnames_do_not() {
        assert_eq!(
            ("127.0.0.1", 9).peer_addr().unwrap(),
            "127.0.0.1:9".parse().unwrap()
        );
        assert_eq!("[::1]:9".peer_addr().unwrap(), "[::1]:9".parse().unwrap());
        assert!(matches!(
            ("localhost", 9).peer_addr(),
            Err(Error::InvalidAddress { .. })
        ));
        assert!(matches!(
            "localhost:9".peer_addr(),
            Err(Error::InvalidAddress { .. })
        ));
    }

    #[test]
    fn broadcast_alias() {
        assert_eq!(
            ("<broadcast>", 7).peer_addr().unwrap(),
            "255.255.255.255:7".parse().unwrap()
        );
    }

    #[test]
    fn interfaces() {
        assert_eq!("".interface().unwrap(), Interface::Any);
        assert_eq!(
            "127.0.0.1".interface().unwrap(),
            Interface::V4(Ipv4Addr::LOCALHOST)
        );
        assert_eq!("3".interface().unwrap(), Interface::Index(3));
        assert!(matches!(
            "lo".interface().unwrap(),
            Interface::Index(i) if i > 0
        ));
        assert!("no-such-if-x".interface().is_err());
    }

    #[test]
    fn ipv6_scope() {
        let (ip, scope) = parse_ip("fe80::1%7", "x").unwrap();
        assert_eq!((ip, scope), ("fe80::1".parse().unwrap(), 7));
        assert!(parse_ip("127.0.0.1%1", "x").is_err());
    }
}
