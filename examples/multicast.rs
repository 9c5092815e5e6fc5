//! Multicast peer (Twisted's `MulticastPingPong`): joins a group, sends `Notify` to it on
//! start, logs every datagram it receives with its sender, and answers a `Notify` with a
//! unicast `Acknowledge`. Several copies can run at once on one port (`listen_multiple`).
//!
//! Run:  `cargo run --example multicast [GROUP:PORT] [--interface IP_OR_NAME]`
//!       (default `228.0.0.5:8005`, joined via interface 127.0.0.1 for IPv4; an IPv6 group
//!       such as `[ff15::5]:8005` takes an interface name or index, default any)
//! Poke: run a second copy: each logs the other's `Notify` and `Acknowledge`.
//! Stop: Ctrl-C.

mod common;

use std::net::{IpAddr, SocketAddr};

use twine::{DatagramProtocol, ListenOptions, Reactor, UdpTransport};

struct PingPong {
    group: SocketAddr,
    interface: String,
}

impl PingPong {
    fn join(&self, t: &mut UdpTransport<'_>) -> twine::Result<()> {
        t.set_loopback_mode(true)?;
        t.join_group(self.group.ip(), self.interface.as_str())?;
        t.set_outgoing_interface(self.interface.as_str())?;
        t.write(b"Notify", self.group)
    }
}

impl DatagramProtocol for PingPong {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        match self.join(t) {
            Ok(()) => {
                let via = if self.interface.is_empty() {
                    "any interface"
                } else {
                    &self.interface
                };
                let text = format!(
                    "listening on {} (group {} via {via})",
                    t.local_addr(),
                    self.group
                );
                common::announce(t.reactor(), text);
            }
            Err(e) => {
                log::error!("joining {}: {e}", self.group);
                t.reactor().stop();
            }
        }
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        log::info!("received {:?} from {from}", String::from_utf8_lossy(data));
        if data == b"Notify"
            && let Err(e) = t.write(b"Acknowledge", from)
        {
            log::warn!("acknowledge to {from}: {e}");
        }
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        if let Err(e) = t.leave_group(self.group.ip(), self.interface.as_str()) {
            log::debug!("leaving {}: {e}", self.group);
        }
    }
}

fn main() -> Result<(), twine::Error> {
    common::init(&["--interface"]);
    let group = common::addr_arg(0, "228.0.0.5:8005");
    let default_interface = if group.is_ipv4() { "127.0.0.1" } else { "" };
    let interface = common::flag("--interface").unwrap_or_else(|| default_interface.to_owned());
    let any: IpAddr = if group.is_ipv4() {
        [0, 0, 0, 0].into()
    } else {
        [0u16; 8].into()
    };
    let mut reactor = Reactor::new()?;
    let opts = ListenOptions::from(SocketAddr::new(any, group.port())).listen_multiple(true);
    reactor.listen_udp_with(opts, PingPong { group, interface })?;
    reactor.run()
}
