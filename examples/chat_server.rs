//! Chat server with heartbeats: every message is acknowledged to every known client as
//! `ack MESSAGE`; heartbeats (`^hb^`) keep a client known without a reply; clients
//! not heard from within `--expire` seconds are dropped; and on stop (Ctrl-C) every
//! client still known is told `bye bye`. The Python original checked expiry in a thread;
//! here it is a repeating call on the port. Times come from the reactor's clock
//! (`UdpTransport::now`), so that `tests/simulated.rs` tests expiry in virtual time.
//!
//! Protocol (datagrams; a trailing newline is ignored, so `nc` works):
//! - `^hb^`: heartbeat, records the sender's last-seen time (and makes it known); no reply;
//! - `quit`: forgets the sender; no reply;
//! - anything else, the empty datagram included: makes the sender known and sends
//!   `ack MESSAGE` to every known client, the sender included.
//!
//! Run:  `cargo run --example chat_server [IP:PORT] [--expire SECONDS]`
//!       (default `127.0.0.1:9995`, 30 s), then `cargo run --example chat_client`
//! Poke: `echo hi | nc -u 127.0.0.1 9995` (prints: ack hi)
//! Stop: Ctrl-C: every known client gets `bye bye`.

mod common;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use twine::{DatagramProtocol, ListenOptions, Reactor, UdpTransport};

const HEARTBEAT: &[u8] = b"^hb^";

/// The chat server's protocol: known clients, acks, heartbeats and expiry.
pub struct ChatServer {
    expire: Duration,
    /// Known clients and when each was last heard from (reactor time).
    clients: BTreeMap<SocketAddr, Instant>,
}

impl ChatServer {
    /// A server that forgets clients silent for `expire`.
    pub fn new(expire: Duration) -> ChatServer {
        ChatServer {
            expire,
            clients: BTreeMap::new(),
        }
    }

    /// The clients known now, in address order.
    pub fn clients(&self) -> Vec<SocketAddr> {
        self.clients.keys().copied().collect()
    }

    /// When `addr` was last heard from (reactor time), if it is known.
    pub fn last_seen(&self, addr: SocketAddr) -> Option<Instant> {
        self.clients.get(&addr).copied()
    }

    /// How often expiry is checked: four times per expiry interval, so that a client is
    /// dropped at most a quarter interval late.
    pub fn check_interval(&self) -> Duration {
        (self.expire / 4).max(Duration::from_millis(10))
    }

    /// Sends `data` to every known client.
    fn tell_all(&self, t: &mut UdpTransport<'_>, data: &[u8]) {
        for addr in self.clients.keys() {
            if let Err(e) = t.write(data, *addr) {
                log::warn!("to {addr}: {e}");
            }
        }
    }

    /// Drops the clients not heard from within `expire` of `now`.
    fn expire(&mut self, now: Instant) {
        self.clients.retain(|addr, seen| {
            let alive = now.duration_since(*seen) < self.expire;
            if !alive {
                log::info!(
                    "expired {addr} (silent for {})",
                    common::duration(now.duration_since(*seen))
                );
            }
            alive
        });
    }
}

impl DatagramProtocol for ChatServer {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        let check = self.check_interval();
        if let Err(e) = Self::call_every(t, check, |me, t| me.expire(t.now())) {
            log::error!("scheduling expiry: {e}");
            t.reactor().stop();
        }
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        let message = data.strip_suffix(b"\n").unwrap_or(data);
        let message = message.strip_suffix(b"\r").unwrap_or(message);
        match message {
            HEARTBEAT => {
                log::debug!("heartbeat from {from}");
                if self.clients.insert(from, t.now()).is_none() {
                    log::info!("{from} joined (by heartbeat)");
                }
            }
            b"quit" => {
                if self.clients.remove(&from).is_some() {
                    log::info!("{from} quit");
                }
            }
            _ => {
                if self.clients.insert(from, t.now()).is_none() {
                    log::info!("{from} joined");
                }
                log::info!("{from} says {:?}", String::from_utf8_lossy(message));
                let ack = [b"ack ", message].concat();
                self.tell_all(t, &ack);
            }
        }
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.tell_all(t, b"bye bye");
        log::info!(
            "said bye bye to {}",
            common::count(self.clients.len(), "client")
        );
    }
}

/// What `--help` prints.
const USAGE: &str = "usage: chat_server [IP:PORT] [--expire SECONDS]\n\nAcknowledges every client (default 127.0.0.1:9995) and forgets one silent for SECONDS\n(default 30); says `bye bye` to all at Ctrl-C.";

fn main() -> Result<(), common::Failed> {
    common::init(USAGE, &["--expire"], 1);
    let addr = common::addr_arg(0, "127.0.0.1:9995");
    let expire = common::seconds_flag("--expire", Duration::from_secs(30));
    let mut reactor = Reactor::new()?;
    let port = reactor.listen_udp_with(ListenOptions::from(addr), ChatServer::new(expire))?;
    let text = format!(
        "listening on {} (expiry after {})",
        port.local_addr(),
        common::duration(expire)
    );
    common::announce(&mut reactor, text);
    Ok(reactor.run()?)
}
