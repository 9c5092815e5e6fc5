//! Time server (Python's `socketserver.UDPServer` with a `handle` method): every datagram,
//! the empty one included, is answered with the current time as a `ctime`-style string,
//! `Sun Nov 22 14:03:07 2026` (UTC). The `ThreadingUDPServer` variant needs no change:
//! one reactor answers every client in turn, without a thread each.
//!
//! The kernel stamps each request as it queues it (`ListenOptions::receive_timestamps`),
//! and each answer is logged with how long after that stamp it was written: the time the
//! request waited in the socket's queue and in the reactor (`RUST_LOG=debug`).
//!
//! Run:  `cargo run --example time_server [IP:PORT]` (default `127.0.0.1:9994`)
//! Poke: `echo | nc -u -w1 127.0.0.1 9994`
//! Stop: Ctrl-C.

mod common;

use std::net::SocketAddr;
use std::time::SystemTime;

use twine::{DatagramProtocol, ListenOptions, Reactor, UdpTransport};

/// Answers every datagram with the time now.
struct TimeServer;

impl DatagramProtocol for TimeServer {
    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, _data: &[u8], from: SocketAddr) {
        let stamped = t.arrival().timestamp;
        if let Err(e) = t.write(common::ctime().as_bytes(), from) {
            log::warn!("answer to {from}: {e}");
            return;
        }
        // The wall clock, as the kernel's stamp: a clock step in between shows as 0.
        if let Some(at) = stamped {
            let delay = SystemTime::now().duration_since(at).unwrap_or_default();
            log::debug!(
                "answered {from} {} µs after its request arrived",
                delay.as_micros()
            );
        }
    }
}

/// What `--help` prints.
const USAGE: &str = "usage: time_server [IP:PORT]\n\nAnswers any datagram with the time as a ctime string (default 127.0.0.1:9994).\nRUST_LOG=debug logs each answer's receive-to-reply delay. Ctrl-C stops it.";

fn main() -> Result<(), common::Failed> {
    common::init(USAGE, &[], 1);
    let addr = common::addr_arg(0, "127.0.0.1:9994");
    let mut reactor = Reactor::new()?;
    let plain = ListenOptions::from(addr).reply_from_arrival(addr.ip().is_unspecified());
    let port = match reactor.listen_udp_with(plain.clone().receive_timestamps(true), TimeServer) {
        // An OS without SO_TIMESTAMPNS: answers as well, without the delay.
        Err(twine::Error::SocketOption { option, source }) => {
            log::warn!("{option}: {source}; the receive-to-reply delay is not logged");
            reactor.listen_udp_with(plain, TimeServer)?
        }
        other => other?,
    };
    common::announce(&mut reactor, format!("listening on {}", port.local_addr()));
    Ok(reactor.run()?)
}
