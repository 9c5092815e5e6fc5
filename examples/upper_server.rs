//! Upper-case server: each datagram comes back to its sender upper-cased (ASCII letters;
//! other bytes unchanged), the empty one included.
//!
//! Run:  `cargo run --example upper_server [IP:PORT]` (default `127.0.0.1:9993`)
//! Poke: `echo hello | nc -u -w1 127.0.0.1 9993`   (prints: HELLO)
//! Stop: Ctrl-C.

mod common;

use twine::{ListenOptions, Reactor, respond};

/// What `--help` prints.
const USAGE: &str = "usage: upper_server [IP:PORT]\n\nAnswers each datagram upper-cased (default 127.0.0.1:9993). Ctrl-C stops it.";

fn main() -> Result<(), common::Failed> {
    common::init(USAGE, &[], 1);
    let addr = common::addr_arg(0, "127.0.0.1:9993");
    let mut reactor = Reactor::new()?;
    let upper = respond(|data, _from| Some(data.to_ascii_uppercase()));
    let port = reactor.listen_udp_with(ListenOptions::from(addr), upper.named("UpperServer"))?;
    common::announce(&mut reactor, format!("listening on {}", port.local_addr()));
    Ok(reactor.run()?)
}
