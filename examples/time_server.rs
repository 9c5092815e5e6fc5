//! Time server (Python's `socketserver.UDPServer` with a `handle` method): every datagram,
//! the empty one included, is answered with the current time as a `ctime`-style string,
//! `Sun Nov 22 14:03:07 2026` (UTC). The `ThreadingUDPServer` variant needs no change:
//! one reactor answers every client in turn, without a thread each.
//!
//! Run:  `cargo run --example time_server [IP:PORT]` (default `127.0.0.1:9994`)
//! Poke: `echo | nc -u -w1 127.0.0.1 9994`
//! Stop: Ctrl-C.

mod common;

use twine::{ListenOptions, Reactor, respond};

fn main() -> Result<(), twine::Error> {
    common::init(&[]);
    let addr = common::addr_arg(0, "127.0.0.1:9994");
    let mut reactor = Reactor::new()?;
    let time = respond(|_data, _from| Some(common::ctime()));
    let port = reactor.listen_udp_with(ListenOptions::from(addr), time.named("TimeServer"))?;
    common::announce(&mut reactor, format!("listening on {}", port.local_addr()));
    reactor.run()
}
