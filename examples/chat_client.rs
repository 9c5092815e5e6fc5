//! Chat client: connects to the chat server, says `hello` (then any MESSAGE given on the
//! command line), sends a heartbeat `^hb^` every `--interval` seconds and prints each
//! datagram that comes back as `got: TEXT`. Lines typed on stdin are sent as messages: a
//! thread reads them and hands each to the reactor with `call_from_thread` (the only
//! thread; the heartbeat is a repeating call). On stop it sends `quit`; when the server
//! says `bye bye` it exits.
//!
//! Run:  `cargo run --example chat_server` in one terminal, then
//!       `cargo run --example chat_client [SERVER_IP:PORT] [MESSAGE ...] [--interval SECONDS]
//!        [--heartbeats N]` (default server `127.0.0.1:9995`, every 5 s; with
//!       `--heartbeats N` it quits after N heartbeats, else it runs until Ctrl-C)
//! Stop: Ctrl-C, after `--heartbeats`, or when the server says `bye bye`.

mod common;

use std::io::BufRead;
use std::net::SocketAddr;
use std::time::Duration;

use twine::{DatagramProtocol, ListenOptions, ListeningPort, Reactor, UdpTransport};

/// The chat client's protocol: hello, messages, heartbeats, `quit` on stop.
pub struct ChatClient {
    server: SocketAddr,
    /// Said right after `hello`.
    messages: Vec<String>,
    interval: Duration,
    /// Heartbeats to send before quitting (`None`: no limit).
    heartbeats: Option<u32>,
    sent_heartbeats: u32,
    /// The server said `bye bye`: nothing to say `quit` to.
    server_gone: bool,
}

impl ChatClient {
    /// A client of `server` that says `hello` and then sends a heartbeat every
    /// `interval`, with no limit.
    pub fn new(server: SocketAddr, interval: Duration) -> ChatClient {
        ChatClient {
            server,
            messages: Vec::new(),
            interval,
            heartbeats: None,
            sent_heartbeats: 0,
            server_gone: false,
        }
    }

    /// The heartbeats sent so far.
    pub fn heartbeats_sent(&self) -> u32 {
        self.sent_heartbeats
    }

    /// Sends `text` to the server as a message.
    pub fn say(&self, t: &mut UdpTransport<'_>, text: &str) {
        if let Err(e) = t.send(text.as_bytes()) {
            log::warn!("sending {text:?}: {e}");
        }
    }

    fn heartbeat(&mut self, t: &mut UdpTransport<'_>) {
        self.say(t, "^hb^");
        self.sent_heartbeats += 1;
        if Some(self.sent_heartbeats) == self.heartbeats {
            log::info!(
                "{} sent, quitting",
                common::count(self.sent_heartbeats as usize, "heartbeat")
            );
            t.reactor().stop();
        }
    }
}

impl DatagramProtocol for ChatClient {
    fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
        if let Err(e) = t.connect(self.server) {
            log::error!("connect to {}: {e}", self.server);
            t.reactor().stop();
            return;
        }
        log::info!("connected to {}", self.server);
        self.say(t, "hello");
        for message in &self.messages {
            self.say(t, message);
        }
        let beat = Self::call_every(t, self.interval, |me, t| me.heartbeat(t));
        if let Err(e) = beat {
            log::error!("scheduling heartbeats: {e}");
            t.reactor().stop();
        }
    }

    fn datagram_received(&mut self, t: &mut UdpTransport<'_>, data: &[u8], _from: SocketAddr) {
        let text = String::from_utf8_lossy(data);
        println!("got: {text}");
        if data == b"bye bye" {
            log::info!("the server said bye bye");
            self.server_gone = true;
            t.reactor().stop();
        }
    }

    fn connection_refused(&mut self, _t: &mut UdpTransport<'_>) {
        log::warn!(
            "connection refused by {} (is the chat server running?)",
            self.server
        );
    }

    fn stop_protocol(&mut self, t: &mut UdpTransport<'_>) {
        if !self.server_gone {
            self.say(t, "quit");
        }
    }
}

/// Sends each stdin line through the reactor, from a thread of its own.
fn forward_stdin(reactor: &Reactor, port: ListeningPort<ChatClient>) {
    let handle = reactor.handle();
    std::thread::spawn(move || {
        for line in std::io::stdin().lock().lines().map_while(Result::ok) {
            loop {
                let line = line.clone();
                let sent = handle.call_from_thread(move |r| {
                    if let Err(e) = r.with_port(&port, |me, t| me.say(t, &line)) {
                        log::debug!("typed line not sent: {e}");
                    }
                });
                match sent {
                    // Lines come faster than the reactor takes them: wait for room.
                    Err(twine::Error::CallQueueFull { .. }) => {
                        std::thread::sleep(std::time::Duration::from_millis(10));
                    }
                    Err(_) => return, // the reactor is gone
                    Ok(()) => break,
                }
            }
        }
    });
}

/// What `--help` prints.
const USAGE: &str = "usage: chat_client [SERVER_IP:PORT] [MESSAGE ...] [--interval SECONDS] [--heartbeats N]\n\nSays hello to the chat server (default 127.0.0.1:9995), sends a heartbeat every\nSECONDS (default 5), each MESSAGE, then each line typed on stdin. With --heartbeats N\nit quits after N heartbeats, else at Ctrl-C. A first argument without a colon is a\nmessage, to the default server.";

fn main() -> Result<(), common::Failed> {
    common::init(USAGE, &["--interval", "--heartbeats"], usize::MAX);
    // The first argument is the server's address if it has a colon (an IP:PORT, which
    // must then parse), else the first message.
    let words = common::positional();
    let addressed = words.first().is_some_and(|w| w.contains(':'));
    let server = common::addr_arg(if addressed { 0 } else { usize::MAX }, "127.0.0.1:9995");
    let interval = common::seconds_flag("--interval", Duration::from_secs(5));
    let client = ChatClient {
        messages: words.into_iter().skip(usize::from(addressed)).collect(),
        heartbeats: common::optional_flag("--heartbeats"),
        ..ChatClient::new(server, interval)
    };
    let quit_at_once = client.heartbeats == Some(0);
    let mut reactor = Reactor::new()?;
    let port = reactor.listen_udp_with(
        ListenOptions::from(common::client_bind_addr(server)),
        client,
    )?;
    forward_stdin(&reactor, port);
    if quit_at_once {
        reactor.stop();
    }
    Ok(reactor.run()?)
}
