//! Echo server on a socket made elsewhere: the program creates and binds a socket with
//! socket2 (as a process manager or a parent process might), then hands its raw fd to
//! the reactor with `adopt_datagram_port`.
//!
//! Run:  `cargo run --example adopt [IP:PORT]` (default `127.0.0.1:9997`; port 0 picks one)
//! Poke: `echo hello | nc -u -w1 127.0.0.1 9997`
//! Stop: Ctrl-C.
//!
//! The reactor works on its own duplicate of the fd: this program closes its socket right
//! after adopting it, and the port goes on.

mod common;

use std::net::SocketAddr;
use std::os::fd::AsRawFd;

use socket2::{Domain, Protocol, Socket, Type};
use twine::{DatagramProtocol, Reactor, UdpTransport};

struct Echo;

impl DatagramProtocol for Echo {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        if let Err(e) = t.write(data, from) {
            log::warn!("echo to {from}: {e}");
        }
    }
}

/// What `--help` prints.
const USAGE: &str = "usage: adopt [IP:PORT]\n\nServes echo on a socket made and bound with socket2 and handed over by fd\n(default 127.0.0.1:9997; port 0 picks one). Ctrl-C stops it.";

fn main() -> Result<(), common::Failed> {
    common::init(USAGE, &[], 1);
    let addr = common::addr_arg(0, "127.0.0.1:9997");
    let socket = Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP))?;
    socket.bind(&addr.into())?;
    let mut reactor = Reactor::new()?;
    let port = reactor.adopt_datagram_port(socket.as_raw_fd(), Echo)?;
    drop(socket); // the reactor holds its own duplicate
    common::announce(&mut reactor, format!("listening on {}", port.local_addr()));
    reactor.run()?;
    Ok(())
}
