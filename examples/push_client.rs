//! Push clients: simulated users (A to E by default), each on its own port of one
//! reactor (the Python original ran a thread per user). Each registers its name with the
//! push server and prints what it receives, as `A got: TEXT`; on stop each unregisters.
//! A name the server refuses (`error: ...`) stops the client.
//!
//! Run:  `cargo run --example push_server` in one terminal, then
//!       `cargo run --example push_client [SERVER_IP:PORT] [--users A,B,C] [--pushes N]`
//!       (default server `127.0.0.1:9996`, users A to E; with `--pushes N` it exits once
//!       every user has received N pushes, else it runs until Ctrl-C)
//! Stop: Ctrl-C, or after `--pushes`.

mod common;

use std::cell::Cell;
use std::net::SocketAddr;
use std::rc::Rc;

use twine::{DatagramProtocol, ListenOptions, Reactor, UdpTransport};

struct User {
    name: String,
    server: SocketAddr,
    /// Pushes to receive before this user is done (`None`: no limit).
    wanted: Option<u32>,
    pushes: u32,
    /// Users still waiting for their pushes, shared by all users of the reactor.
    waiting: Rc<Cell<usize>>,
}

impl User {
    fn send(&self, t: &mut UdpTransport<'_>, text: &str) {
        if let Err(e) = t.send(text.as_bytes()) {
            log::warn!("{}: sending {text:?}: {e}", self.name);
        }
    }
}

impl DatagramProtocol for User {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        if let Err(e) = t.connect(self.server) {
            log::error!("{}: connect to {}: {e}", self.name, self.server);
            t.reactor().stop();
            return;
        }
        log::info!("user {} registering with {}", self.name, self.server);
        self.send(t, &self.name);
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], _from: SocketAddr) {
        let text = String::from_utf8_lossy(data);
        println!("{} got: {text}", self.name);
        if text.starts_with("error:") {
            log::error!("{}: the server refused the name; stopping", self.name);
            t.reactor().stop();
            return;
        }
        if !text.starts_with("time ") {
            return;
        }
        self.pushes += 1;
        if Some(self.pushes) == self.wanted {
            self.waiting.set(self.waiting.get() - 1);
            if self.waiting.get() == 0 {
                log::info!(
                    "every user got {}",
                    common::count(self.pushes as usize, "push")
                );
                t.reactor().stop();
            }
        }
    }

    fn connection_refused(&mut self, _t: &mut UdpTransport<'_>) {
        log::warn!(
            "{}: connection refused by {} (is the push server running?)",
            self.name,
            self.server
        );
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        self.send(t, &format!("unregister {}", self.name));
    }
}

/// What `--help` prints.
const USAGE: &str = "usage: push_client [SERVER_IP:PORT] [--users A,B,C] [--pushes N]\n\nRegisters each user (default A to E) with the push server (default 127.0.0.1:9996)\nand prints their pushes; with --pushes N it exits once each got N, else at Ctrl-C.";

fn main() -> Result<(), common::Failed> {
    common::init(USAGE, &["--users", "--pushes"], 1);
    let server = common::addr_arg(0, "127.0.0.1:9996");
    let users = common::flag("--users").unwrap_or_else(|| "A,B,C,D,E".to_owned());
    let wanted = common::optional_flag::<u32>("--pushes");
    let mut names: Vec<&str> = users.split(',').filter(|n| !n.is_empty()).collect();
    let given = names.len();
    names.sort_unstable();
    names.dedup();
    if names.len() != given {
        // Two users of one name would share one registration: one would never get a push.
        eprintln!("--users: each name once, got {users:?}");
        std::process::exit(2);
    }
    let waiting = Rc::new(Cell::new(names.len()));
    let mut reactor = Reactor::new()?;
    for name in names {
        let user = User {
            name: name.to_owned(),
            server,
            wanted,
            pushes: 0,
            waiting: Rc::clone(&waiting),
        };
        reactor.listen_udp_with(ListenOptions::from(common::client_bind_addr(server)), user)?;
    }
    if waiting.get() == 0 || wanted == Some(0) {
        reactor.stop();
    }
    Ok(reactor.run()?)
}
