//! Multicast peer (after Twisted's `MulticastPingPong`): joins a group, sends `Notify` to
//! it on start, logs every datagram it receives with its sender, and answers another
//! copy's `Notify` with a unicast `Acknowledge`. Several copies can run at once on one
//! machine, each logging the others' `Notify` and `Acknowledge`.
//!
//! Each copy has two ports. The group's port is shared (`listen_multiple`): every copy
//! gets every group datagram there. But a unicast datagram to a shared port reaches only
//! one of the sockets on it, the one the kernel's hash of the sender's address picks (so
//! replies to it would all land on one copy). So each copy also has a port of its own,
//! on which it sends its `Notify` and `Acknowledge` and receives the answers. When it
//! hears a copy for the first time it sends `Notify` again, so that a copy started after
//! it learns of it too.
//!
//! Run:  `cargo run --example multicast [GROUP:PORT] [--interface IP_OR_NAME]`
//!       (default `228.0.0.5:8005`, joined via interface 127.0.0.1 for IPv4; an IPv6 group
//!       such as `[ff15::5]:8005` takes an interface name or index, default any)
//! Poke: run a second copy: each logs the other's `Notify` and `Acknowledge`, both from
//!       the other's own port (`speaking from IP:PORT` in its first line).
//! Stop: Ctrl-C.

mod common;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::time::Duration;

use twine::{DatagramProtocol, ListenOptions, ListeningPort, Reactor, UdpTransport};

/// The copy's own, unshared port: sends to the group and to other copies, and logs what
/// comes back.
struct Speaker {
    interface: String,
}

impl DatagramProtocol for Speaker {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        let set = t
            .set_loopback_mode(true)
            .and_then(|()| t.set_outgoing_interface(self.interface.as_str()));
        if let Err(e) = set {
            log::error!("sending by {:?}: {e}", self.interface);
            t.reactor().stop();
        }
    }

    fn datagram_received(&mut self, _t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        log::info!("received {:?} from {from}", String::from_utf8_lossy(data));
    }
}

/// The group's port, shared with the other copies: hears every `Notify` and answers
/// through the copy's own port.
struct Listener {
    group: SocketAddr,
    interface: String,
    speaker: ListeningPort<Speaker>,
    /// The copies heard so far, by their own ports.
    peers: HashSet<SocketAddr>,
}

impl Listener {
    /// Sends `data` to `to` from the copy's own port.
    fn speak(&self, t: &mut UdpTransport<'_>, data: &[u8], to: SocketAddr) -> twine::Result<()> {
        t.reactor()
            .with_port(&self.speaker, |_, own| own.write(data, to))
            .and_then(|sent| sent)
    }

    /// Whether `from` is this copy's own port (bound to an interface address, it is the
    /// address others see; bound to the wildcard, its port number tells).
    fn is_own(&self, from: SocketAddr) -> bool {
        let own = self.speaker.local_addr();
        from.port() == own.port() && (own.ip().is_unspecified() || from.ip() == own.ip())
    }
}

impl DatagramProtocol for Listener {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        if let Err(e) = t.join_group(self.group.ip(), self.interface.as_str()) {
            log::error!("joining {}: {e}", self.group);
            t.reactor().stop();
            return;
        }
        let via = if self.interface.is_empty() {
            "any interface"
        } else {
            &self.interface
        };
        let text = format!(
            "listening on {} (group {} via {via}), speaking from {}",
            t.local_addr(),
            self.group,
            self.speaker.local_addr()
        );
        common::announce(t.reactor(), text);
        // Timers due at one instant run in the order they were scheduled: the first
        // `Notify` goes out after the line above is logged.
        let notify = Self::call_later(t, Duration::ZERO, |me, t| {
            if let Err(e) = me.speak(t, b"Notify", me.group) {
                log::error!("notify {}: {e}", me.group);
            }
        });
        if let Err(e) = notify {
            log::error!("scheduling the first notify: {e}");
        }
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        let text = String::from_utf8_lossy(data);
        if self.is_own(from) {
            log::info!("received {text:?} from {from} (ourselves)");
            return;
        }
        log::info!("received {text:?} from {from}");
        if data != b"Notify" {
            return;
        }
        if let Err(e) = self.speak(t, b"Acknowledge", from) {
            log::warn!("acknowledge to {from}: {e}");
        }
        if self.peers.insert(from)
            && let Err(e) = self.speak(t, b"Notify", self.group)
        {
            log::warn!("notify {}: {e}", self.group);
        }
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        if let Err(e) = t.leave_group(self.group.ip(), self.interface.as_str()) {
            log::debug!("leaving {}: {e}", self.group);
        }
    }
}

/// What `--help` prints.
const USAGE: &str = "usage: multicast [GROUP:PORT] [--interface IP_OR_NAME]\n\nJoins GROUP (default 228.0.0.5:8005, via 127.0.0.1 for IPv4; an IPv6 group takes an\ninterface name or index), sends Notify, and answers other copies' Notify with\nAcknowledge. Run two copies. Ctrl-C stops it.";

fn main() -> Result<(), common::Failed> {
    common::init(USAGE, &["--interface"], 1);
    let group = common::addr_arg(0, "228.0.0.5:8005");
    let default_interface = if group.is_ipv4() { "127.0.0.1" } else { "" };
    let interface = common::flag("--interface").unwrap_or_else(|| default_interface.to_owned());
    let any: IpAddr = if group.is_ipv4() {
        Ipv4Addr::UNSPECIFIED.into()
    } else {
        Ipv6Addr::UNSPECIFIED.into()
    };
    // The own port sits on the interface's address where it is one (IPv4), so that the
    // address the others see is its local address.
    let own_ip = match interface.parse::<Ipv4Addr>() {
        Ok(ip) if group.is_ipv4() => ip.into(),
        _ => any,
    };
    let mut reactor = Reactor::new()?;
    let speaker = reactor.listen_udp_with(
        ListenOptions::from(SocketAddr::new(own_ip, 0)),
        Speaker {
            interface: interface.clone(),
        },
    )?;
    let shared = ListenOptions::from(SocketAddr::new(any, group.port())).listen_multiple(true);
    reactor.listen_udp_with(
        shared,
        Listener {
            group,
            interface,
            speaker,
            peers: HashSet::new(),
        },
    )?;
    Ok(reactor.run()?)
}
