//! Push service: clients register by sending their name; every `--every` seconds the
//! server sends the current time to every registered client. The Python original ran a
//! thread for the pushes; here they are a repeating call on the port.
//!
//! Protocol (text datagrams; a trailing newline is ignored, so `nc` works):
//! - `NAME` (1 to 32 bytes, no spaces or control characters) registers NAME at the sender's address (again:
//!   moves it) and is answered `registered NAME`;
//! - `unregister NAME` removes it: `unregistered NAME`, or `not registered NAME`;
//! - anything else is answered `error: ...`;
//! - each push is `time <ctime>` (`time Sun Nov 22 14:03:07 2026`, UTC).
//!
//! A client that went away without unregistering is dropped at the next push: the kernel
//! reports which destination refused (ICMP port unreachable, Linux), through
//! `error_received` (`dropped NAME at ADDR: ...` in the log).
//!
//! Run:  `cargo run --example push_server [IP:PORT] [--every SECONDS]`
//!       (default `127.0.0.1:9996`, every 10 s), then `cargo run --example push_client`
//! Poke: `echo alice | nc -u 127.0.0.1 9996` (stays open to print the pushes)
//! Stop: Ctrl-C.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::Duration;

use twine::{DatagramProtocol, Error, ListenOptions, Reactor, UdpTransport};

/// The longest name accepted.
const MAX_NAME: usize = 32;

struct PushServer {
    every: Duration,
    /// Registered names and where they are, in name order.
    clients: BTreeMap<String, SocketAddr>,
}

impl PushServer {
    /// The reply to one datagram, changing the registrations as it asks.
    fn handle(&mut self, text: &str, from: SocketAddr) -> String {
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.len() <= MAX_NAME
                && !n.chars().any(|c| c.is_whitespace() || c.is_control())
        };
        if let Some(name) = text.strip_prefix("unregister ") {
            return match self.clients.remove(name) {
                Some(_) => {
                    log::info!("unregistered {name}");
                    format!("unregistered {name}")
                }
                None => format!("not registered {name}"),
            };
        }
        if !name_ok(text) || text == "unregister" {
            return format!(
                "error: send a name (1 to {MAX_NAME} bytes, no spaces or control characters) or `unregister NAME`"
            );
        }
        log::info!("registered {text} at {from}");
        self.clients.insert(text.to_owned(), from);
        format!("registered {text}")
    }

    fn push(&mut self, t: &mut UdpTransport<'_>) {
        if self.clients.is_empty() {
            return;
        }
        let now = format!("time {}", common::ctime());
        for (name, addr) in &self.clients {
            if let Err(e) = t.write(now.as_bytes(), *addr) {
                log::warn!("push to {name} at {addr}: {e}");
            }
        }
        log::info!(
            "pushed {now:?} to {}",
            common::count(self.clients.len(), "client")
        );
    }
}

impl DatagramProtocol for PushServer {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        if let Err(e) = Self::call_every(t, self.every, |me, t| me.push(t)) {
            log::error!("scheduling the pushes: {e}");
            t.reactor().stop();
        }
    }

    /// A push refused by a client's host: nothing listens there any more, so the name
    /// registered at that address is dropped.
    fn error_received(&mut self, _: &mut UdpTransport<'_>, error: &Error, addr: SocketAddr) {
        let refused = matches!(
            error,
            Error::Unreachable { source, .. }
                if source.kind() == std::io::ErrorKind::ConnectionRefused
        );
        if !refused {
            log::warn!("{addr}: {error}");
            return;
        }
        let gone: Vec<String> = self
            .clients
            .iter()
            .filter(|(_, at)| **at == addr)
            .map(|(name, _)| name.clone())
            .collect();
        for name in gone {
            self.clients.remove(&name);
            log::info!("dropped {name} at {addr}: {error}");
        }
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        let reply = match std::str::from_utf8(data) {
            Ok(text) => self.handle(text.trim_end_matches(['\r', '\n']), from),
            Err(_) => "error: names are UTF-8 text".to_owned(),
        };
        if let Err(e) = t.write(reply.as_bytes(), from) {
            log::warn!("reply to {from}: {e}");
        }
    }
}

/// What `--help` prints.
const USAGE: &str = "usage: push_server [IP:PORT] [--every SECONDS]\n\nPushes the time to every registered client every SECONDS (default 10), on\n127.0.0.1:9996 by default. Ctrl-C stops it.";

fn main() -> Result<(), common::Failed> {
    common::init(USAGE, &["--every"], 1);
    let addr = common::addr_arg(0, "127.0.0.1:9996");
    let every = common::seconds_flag("--every", Duration::from_secs(10));
    let mut reactor = Reactor::new()?;
    let server = PushServer {
        every,
        clients: BTreeMap::new(),
    };
    let port = reactor.listen_udp_with(ListenOptions::from(addr), server)?;
    let text = format!(
        "listening on {} (pushing every {})",
        port.local_addr(),
        common::duration(every)
    );
    common::announce(&mut reactor, text);
    Ok(reactor.run()?)
}
