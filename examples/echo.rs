//! Echo server: every datagram, the empty one included, goes back to its sender. Bound to
//! a wildcard address (`0.0.0.0:9999`, `[::]:9999`), each echo leaves from the address its
//! datagram arrived on, so that a client that asked one of the host's several addresses
//! gets the answer from that one (`ListenOptions::reply_from_arrival`).
//!
//! Run:  `cargo run --example echo [IP:PORT]` (default `127.0.0.1:9999`; port 0 picks one)
//! Poke: `echo hello | nc -u -w1 127.0.0.1 9999`
//! Stop: Ctrl-C (SIGINT) or SIGTERM: the port closes cleanly, then the program exits.

mod common;

use std::net::SocketAddr;

use twine::{DatagramProtocol, ListenOptions, Reactor, UdpTransport};

/// Twisted's `Echo(DatagramProtocol)`.
struct Echo;

impl DatagramProtocol for Echo {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        if let Err(e) = t.write(data, from) {
            log::warn!("echo to {from}: {e}");
        }
    }
}

/// What `--help` prints.
const USAGE: &str = "usage: echo [IP:PORT]\n\nEchoes every datagram to its sender (default 127.0.0.1:9999; port 0 picks one); bound\nto a wildcard address, from the address each arrived on. Ctrl-C stops it.";

fn main() -> Result<(), common::Failed> {
    common::init(USAGE, &[], 1);
    let addr = common::addr_arg(0, "127.0.0.1:9999");
    let mut reactor = Reactor::new()?;
    let wildcard = addr.ip().is_unspecified();
    let port = match reactor
        .listen_udp_with(ListenOptions::from(addr).reply_from_arrival(wildcard), Echo)
    {
        // An OS without the arrival address (IP_PKTINFO): echo from where the kernel says.
        Err(twine::Error::SocketOption { option, source }) if wildcard => {
            log::warn!("{option}: {source}; echoes leave from the kernel's choice of address");
            reactor.listen_udp_with(ListenOptions::from(addr), Echo)?
        }
        other => other?,
    };
    common::announce(&mut reactor, format!("listening on {}", port.local_addr()));
    reactor.run()?;
    log::info!("bye");
    Ok(())
}
