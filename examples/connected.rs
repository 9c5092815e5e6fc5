//! Connected UDP client: connects to a server, sends a greeting with the time every
//! second (a repeating call, not a thread), prints each reply, and exits after `--count`
//! datagrams. Against a port where nothing listens it logs `connection refused` and goes on.
//!
//! Run:  `cargo run --example echo` in one terminal, then
//!       `cargo run --example connected [SERVER_IP:PORT] [--count N]`
//!       (default server `127.0.0.1:9999`, count 5)
//! Stop: after N datagrams, or Ctrl-C.

mod common;

use std::net::SocketAddr;
use std::time::Duration;

use twine::{DatagramProtocol, ListenOptions, Reactor, UdpTransport};

/// How long to wait for the last reply before exiting.
const LINGER: Duration = Duration::from_secs(1);

struct Greeter {
    server: SocketAddr,
    count: u32,
    sent: u32,
}

impl Greeter {
    fn greet(&mut self, t: &mut UdpTransport<'_>) {
        if self.sent == self.count {
            return;
        }
        self.sent += 1;
        let text = format!("hello #{} at {}", self.sent, common::time_of_day());
        match t.send(text.as_bytes()) {
            Ok(()) => log::info!("sent {text:?}"),
            Err(e) => log::warn!("send: {e}"),
        }
        if self.sent == self.count {
            t.reactor().call_later(LINGER, |r| r.stop());
        }
    }
}

impl DatagramProtocol for Greeter {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        if let Err(e) = t.connect(self.server) {
            log::error!("connect to {}: {e}", self.server);
            t.reactor().stop();
            return;
        }
        log::info!("connected to {} from {}", self.server, t.local_addr());
        self.greet(t);
        let every = Self::call_every(t, Duration::from_secs(1), |me, t| me.greet(t));
        if let Err(e) = every {
            log::error!("scheduling the greeting: {e}");
        }
    }

    fn datagram_received(&mut self, _t: &mut UdpTransport<'_>, data: &[u8], from: SocketAddr) {
        println!("reply from {from}: {}", String::from_utf8_lossy(data));
    }

    fn connection_refused(&mut self, _t: &mut UdpTransport<'_>) {
        log::warn!(
            "connection refused by {} (nothing listens there?)",
            self.server
        );
    }

    fn stop_protocol(&mut self, _t: &mut UdpTransport<'_>) {
        log::info!(
            "sent {}, done",
            common::count(self.sent as usize, "datagram")
        );
    }
}

/// What `--help` prints.
const USAGE: &str = "usage: connected [SERVER_IP:PORT] [--count N]\n\nA connected client of the echo example (default 127.0.0.1:9999): a greeting with the\ntime every second, N of them (default 5), each reply printed.";

fn main() -> Result<(), common::Failed> {
    common::init(USAGE, &["--count"], 1);
    let server = common::addr_arg(0, "127.0.0.1:9999");
    let count: u32 = common::parsed_flag("--count", 5);
    let local = common::client_bind_addr(server);
    let mut reactor = Reactor::new()?;
    let greeter = Greeter {
        server,
        count,
        sent: 0,
    };
    reactor.listen_udp_with(ListenOptions::from(local), greeter)?;
    if count == 0 {
        reactor.stop();
    }
    Ok(reactor.run()?)
}
