//! The examples over a real lossy network: a client namespace A and a server namespace B,
//! each joined by a veth pair to a router namespace R that forwards between them and loses,
//! duplicates and reorders the packets on the way, in both directions (the ICMP errors
//! too). Over it the chat heartbeats keep a live client known while a killed one expires
//! on time, and a connected port still hears `connection refused` and then talks.
//!
//! ```text
//!   A: eth0 10.201.1.2 ── va 10.201.1.1  R  10.201.2.1 vb ── eth0 10.201.2.2 :B
//! ```
//!
//! The impairment is `tc netem` on R's veths where the kernel has it. Where it has not
//! (no `sch_netem`, as on the machines this was written on), it is done at the IP layer in
//! R by `tests/peers/impair.py`: R's policy routing sends what it forwards between the
//! two subnets (`ip rule iif va|vb lookup 100`) into a TUN device that the script reads;
//! the script drops, duplicates or holds back each packet with a seeded PRNG and writes
//! the rest back into the TUN, whence the main table routes it on to the other veth. The
//! path is first checked unimpaired (a UDP probe answered by B's ICMP port unreachable).
//!
//! The namespaces are the tests' own (named with the pid, deleted when the test ends,
//! even on panic); the host's interfaces and routes are not touched. The tests need root,
//! `ip netns`, veth, a TUN device (or netem) and Python 3, so a plain `cargo test` ignores
//! them; `.ci/run` runs them where `.ci/netns-probe` finds all of these, and so does
//! `cargo test --test lossy -- --ignored` as root. Asked for on a machine that lacks any
//! of them, they fail, saying what is missing.
//!
//! How late an expiry is logged depends on the scheduler as much as on the server, so
//! the tests print those times (against what the server documents) rather than bound
//! them; what they assert is what the server decides: who joined, who expired and after
//! how much silence, who was said `bye bye` to.

mod util;

use std::collections::HashMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::thread;
use std::time::{Duration, Instant};

use util::mentions;
use util::peers::{python3_required, script};
use util::process::{Netns, run_to_end};
use util::running::{Ended, Running, example};

// ----- the lossy network ------------------------------------------------------------------

/// A's address, and R's on A's side.
const A_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 2);
const R_A_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 1, 1);
/// B's address, and R's on B's side.
const B_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 2);
const R_B_IP: Ipv4Addr = Ipv4Addr::new(10, 201, 2, 1);

/// The impairment, applied to every packet R forwards, each way.
const LOSS: f64 = 0.2;
const DUPLICATE: f64 = 0.1;
const REORDER: f64 = 0.1;
/// How long a packet picked for reordering may be held back waiting for the next packet
/// of its flow (netem: the delay of the packets not sent at once).
const HOLD: Duration = Duration::from_millis(300);
/// The routing table that sends forwarded packets into the TUN device.
const TUN_TABLE: &str = "100";
const TUN_DEV: &str = "imp0";

/// Fails `test`, which was asked for on a machine that cannot build the lossy network.
#[track_caller]
fn cannot_build(test: &str, why: &str) -> ! {
    panic!("{test} {NEEDS}; the lossy network cannot be built here: {why}")
}

/// What the tests need, the reason a plain `cargo test` ignores them.
const NEEDS: &str = "needs root, network namespaces, veth, TUN or netem, and python3";

/// `ip netns exec NS program args`: `ip` enters the namespace and execs the program, so
/// the child's pid is the program's.
fn in_ns(ns: &Netns, program: impl AsRef<Path>, args: &[&str]) -> Command {
    let mut cmd = Command::new("ip");
    cmd.args(["netns", "exec", &ns.name])
        .arg(program.as_ref())
        .args(args);
    cmd
}

/// Sends `signal` to `pid` (a zombie not yet reaped still takes it).
#[track_caller]
fn signal(pid: u32, signal: &str) {
    let status = Command::new("kill")
        .args([&format!("-{signal}"), &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(status.success(), "kill -{signal} {pid}");
}

/// Runs `ns`'s sysctl `key` (a path under /proc/sys) = `value`.
#[track_caller]
fn sysctl(ns: &Netns, key: &str, value: &str) {
    let mut cmd = in_ns(ns, "sh", &["-c", "echo \"$1\" > \"/proc/sys/$2\"", "sh"]);
    cmd.args([value, key]);
    let (status, _, err) = run_to_end(cmd, Duration::from_secs(10)).expect("run sh");
    assert!(
        status.success(),
        "sysctl {key}={value} in {}: {err}",
        ns.name
    );
}

/// How the packets are impaired.
enum Impairer {
    /// `tc netem` on R's two veths.
    Netem,
    /// `impair.py` on R's TUN device.
    Tun(Running),
}

/// The three namespaces and what impairs the path between A and B.
struct Lossy {
    /// Dropped (killed) before the namespaces.
    impairer: Option<Impairer>,
    python: PathBuf,
    a: Netns,
    r: Netns,
    b: Netns,
}

/// The impairer's counts, `impair summary:` parsed (none under netem).
type Figures = HashMap<String, u64>;

impl Lossy {
    /// Builds the lossy network for `test` (`tag` names its namespaces), impairing with
    /// `seed`; or fails the test, saying why it cannot.
    #[track_caller]
    fn build(test: &str, tag: &str, seed: u64) -> Lossy {
        let python = real_python(&python3_required(test));
        let mut spaces = Vec::new();
        for side in ["a", "r", "b"] {
            match Netns::create(&format!("lossy-{tag}-{side}")) {
                Ok(ns) => spaces.push(ns),
                Err(why) => cannot_build(test, &format!("needs network namespaces: {why}")),
            }
        }
        let b = spaces.pop().expect("b");
        let r = spaces.pop().expect("r");
        let a = spaces.pop().expect("a");
        for (end, ns) in [("va", &a), ("vb", &b)] {
            let peer = ["link", "add", end, "type", "veth", "peer", "name", "eth0"];
            if let Err(why) = r.ip(&[&peer[..], &["netns", &ns.name]].concat()) {
                cannot_build(test, &format!("needs veth pairs: {why}"));
            }
        }
        let setup = |ns: &Netns, args: &[&str]| ns.ip(args).unwrap_or_else(|e| panic!("{e}"));
        for (ns, ip, gw) in [(&a, A_IP, R_A_IP), (&b, B_IP, R_B_IP)] {
            setup(ns, &["addr", "add", &format!("{ip}/24"), "dev", "eth0"]);
            setup(ns, &["link", "set", "eth0", "up"]);
            setup(ns, &["route", "add", "default", "via", &gw.to_string()]);
        }
        for (dev, ip) in [("va", R_A_IP), ("vb", R_B_IP)] {
            setup(&r, &["addr", "add", &format!("{ip}/24"), "dev", dev]);
            setup(&r, &["link", "set", dev, "up"]);
        }
        sysctl(&r, "net/ipv4/ip_forward", "1");
        // Packets come back out of the TUN with sources the main table routes elsewhere.
        sysctl(&r, "net/ipv4/conf/all/rp_filter", "0");
        sysctl(&r, "net/ipv4/conf/default/rp_filter", "0");
        let mut net = Lossy {
            impairer: None,
            python,
            a,
            r,
            b,
        };
        // netem, unimpaired until the path is checked; else the TUN.
        let netem = ["va", "vb"]
            .iter()
            .try_for_each(|dev| net.r.tc(&["qdisc", "add", "dev", dev, "root", "netem"]));
        match netem {
            Ok(()) => net.impairer = Some(Impairer::Netem),
            Err(no_netem) => match net.start_tun(seed) {
                Ok(tun) => net.impairer = Some(Impairer::Tun(tun)),
                Err(no_tun) => cannot_build(test, &format!("no netem ({no_netem}) and {no_tun}")),
            },
        }
        net.probe();
        net.impair();
        net
    }

    /// Starts `impair.py` on a TUN device in R and routes what R forwards through it; or
    /// says why there is no TUN device.
    fn start_tun(&self, seed: u64) -> Result<Running, String> {
        let script = script("impair.py");
        let (loss, dup, reorder) = (LOSS.to_string(), DUPLICATE.to_string(), REORDER.to_string());
        let (hold, seed) = (HOLD.as_millis().to_string(), seed.to_string());
        let mut args = vec![
            script.to_str().expect("UTF-8 path"),
            "tun",
            "--dev",
            TUN_DEV,
        ];
        args.extend(["--loss", &loss, "--duplicate", &dup, "--reorder", &reorder]);
        args.extend(["--hold-ms", &hold, "--seed", &seed, "--lifetime", "120"]);
        let mut tun = Running::spawn(in_ns(&self.r, &self.python, &args));
        tun.wait_for("tun");
        if let Some(no) = tun.seen.iter().find(|l| l.starts_with("no tun:")) {
            return Err(no.clone());
        }
        let ready = format!("tun {TUN_DEV} ready");
        assert!(
            tun.seen.contains(&ready),
            "impair.py did not start: {:#?}",
            tun.seen
        );
        let setup = |args: &[&str]| self.r.ip(args).unwrap_or_else(|e| panic!("{e}"));
        setup(&["link", "set", TUN_DEV, "up"]);
        sysctl(&self.r, &format!("net/ipv4/conf/{TUN_DEV}/rp_filter"), "0");
        for subnet in ["10.201.1.0/24", "10.201.2.0/24"] {
            setup(&["route", "add", subnet, "dev", TUN_DEV, "table", TUN_TABLE]);
        }
        for dev in ["va", "vb"] {
            setup(&["rule", "add", "iif", dev, "lookup", TUN_TABLE]);
        }
        Ok(tun)
    }

    /// Checks the path before impairing it: a UDP datagram from A to a port in B where
    /// nothing listens comes back as ECONNREFUSED (B's ICMP port unreachable), and, with
    /// the TUN, both went through it.
    fn probe(&mut self) {
        let script = script("impair.py");
        let args = [
            script.to_str().expect("UTF-8 path"),
            "probe",
            "10.201.2.2",
            "9",
        ];
        let cmd = in_ns(&self.a, &self.python, &args);
        let (status, out, err) = run_to_end(cmd, Duration::from_secs(15)).expect("run probe");
        assert!(
            status.success() && out.contains("probe refused after"),
            "the unimpaired path from A to B does not work ({status}): {out}{err}"
        );
    }

    /// Switches the impairment on.
    fn impair(&mut self) {
        match self.impairer.as_mut().expect("an impairer") {
            Impairer::Netem => {
                let (loss, dup) = (pct(LOSS), pct(DUPLICATE));
                // netem sends `reorder` of the packets at once and delays the rest.
                let (delay, at_once) = (format!("{}ms", HOLD.as_millis()), pct(1.0 - REORDER));
                for dev in ["va", "vb"] {
                    let netem = ["qdisc", "change", "dev", dev, "root", "netem"];
                    let more = ["loss", &loss, "duplicate", &dup, "delay", &delay];
                    let args = [&netem[..], &more[..], &["reorder", &at_once]].concat();
                    self.r.tc(&args).unwrap_or_else(|e| panic!("{e}"));
                }
            }
            Impairer::Tun(tun) => {
                signal(tun.pid(), "USR1");
                let line = tun.wait_for("impairing after ");
                let passed: u64 = line["impairing after ".len()..]
                    .trim_end_matches(" packets")
                    .parse()
                    .expect("a count");
                // The probe's datagram and the ICMP error, at least.
                assert!(passed >= 2, "the probe did not go through the TUN: {line}");
            }
        }
    }

    /// Starts example `name` with `args` in namespace `ns` (`RUST_LOG=level`).
    fn example(&self, ns: &Netns, name: &str, args: &[&str], level: &str) -> Running {
        let mut cmd = in_ns(ns, example(name), args);
        cmd.env("RUST_LOG", level);
        Running::spawn(cmd)
    }

    /// Stops the impairer; prints its figures (for `--nocapture`) and returns its counts
    /// (empty under netem).
    fn finish(mut self, test: &str) -> Figures {
        let mut figures = Figures::new();
        match self.impairer.take().expect("an impairer") {
            Impairer::Netem => {
                let mut cmd = Command::new("tc");
                cmd.args(["-s", "-n", &self.r.name, "qdisc", "show"]);
                let (_, out, _) = run_to_end(cmd, Duration::from_secs(10)).expect("run tc");
                println!("{test}: netem in {}:\n{out}", self.r.name);
            }
            Impairer::Tun(tun) => {
                signal(tun.pid(), "TERM");
                let end = tun.finish();
                assert!(end.success, "impair.py: {:#?}", end.lines);
                for line in end.lines_with("impair ") {
                    println!("{test}: {line}");
                }
                let summary = end.lines_with("impair summary: ");
                assert_eq!(summary.len(), 1, "impair.py: {:#?}", end.lines);
                for pair in summary[0]["impair summary: ".len()..].split_whitespace() {
                    let (k, v) = pair.split_once('=').expect("key=value");
                    figures.insert(k.to_owned(), v.parse().expect("a count"));
                }
            }
        }
        figures
    }
}

/// Whether netem impairs `net` (so impair.py's seeded decisions do not apply).
fn impaired_by_netem(net: &Lossy) -> bool {
    matches!(net.impairer, Some(Impairer::Netem))
}

/// `fraction` as netem's percentage.
fn pct(fraction: f64) -> String {
    format!("{:.1}%", fraction * 100.0)
}

/// The interpreter itself rather than a launcher (pyenv's shims are scripts), so that the
/// pid `ip netns exec` leaves is Python's and the signals reach it.
fn real_python(python: &Path) -> PathBuf {
    let mut cmd = Command::new(python);
    cmd.args(["-c", "import sys; print(sys.executable)"]);
    let (status, out, err) = run_to_end(cmd, Duration::from_secs(30)).expect("run python");
    assert!(status.success(), "{python:?}: {err}");
    PathBuf::from(out.trim())
}

/// With `seed`, impair.py's first `n` decisions include a loss, a duplicate and a packet
/// held back; so once `n` packets went in, each must have happened.
#[track_caller]
fn assert_impaired(figures: &Figures, n: u64) {
    if figures.is_empty() {
        return; // netem: its statistics are printed
    }
    let got = |k: &str| figures.get(k).copied().unwrap_or(0);
    assert!(
        got("in") >= n,
        "only {} packets impaired: {figures:?}",
        got("in")
    );
    assert!(got("dropped") > 0, "{figures:?}");
    assert!(got("duplicated") > 0, "{figures:?}");
    assert!(got("reordered") + got("delayed") > 0, "{figures:?}");
    assert_eq!(got("write_errors"), 0, "{figures:?}");
}

/// The address a server in B sees for a client in A, from the client's
/// `... starting on 0.0.0.0:PORT` line.
#[track_caller]
fn client_addr(client: &mut Running) -> SocketAddr {
    let line = client.wait_for(" starting on ");
    let (_, addr) = line.split_once(" starting on ").expect("found");
    let port = addr.trim().parse::<SocketAddr>().expect("IP:PORT").port();
    SocketAddr::from((A_IP, port))
}

/// The lines of `end` that contain `needle` and name exactly `addr`.
fn lines_about<'a>(end: &'a Ended, needle: &str, addr: SocketAddr) -> Vec<&'a str> {
    end.lines_with(needle)
        .into_iter()
        .filter(|l| mentions(l, addr))
        .collect()
}

/// A duration as the examples print it (`3.001 s`, `750 ms`) or as `Debug` does (`3.0012s`,
/// `12µs`, `5ns`).
fn parse_duration(text: &str) -> Duration {
    let units = [("ms", 1e-3), ("µs", 1e-6), ("ns", 1e-9), ("s", 1.0)];
    let (number, scale) = units
        .iter()
        .find_map(|(unit, scale)| text.strip_suffix(unit).map(|n| (n, *scale)))
        .unwrap_or_else(|| panic!("not a duration: {text:?}"));
    let number: f64 = number
        .trim_end()
        .parse()
        .unwrap_or_else(|_| panic!("not a duration: {text:?}"));
    Duration::from_secs_f64(number * scale)
}

// ----- chat heartbeats --------------------------------------------------------------------

/// This test's name, for its messages.
const CHAT_TEST: &str = "chat_heartbeats_keep_a_live_client_and_a_killed_one_expires_over_loss";
/// The first 5 decisions of seed 1: drop, pass, hold, drop, duplicate. The first packet
/// impaired is the `hello` of the client that starts first: that client joins by heartbeat.
const CHAT_SEED: u64 = 1;
/// The clients' heartbeat interval and the server's expiry. The server checks every
/// `EXPIRE / 4`, so it documents dropping a client between `EXPIRE` and `EXPIRE * 5 / 4`
/// after it was last heard; a killed client's last heartbeat may arrive up to `HOLD`
/// after its death.
const INTERVAL: Duration = Duration::from_millis(100);
const EXPIRE: Duration = Duration::from_secs(3);

/// chat_server in B (`--expire 3`) and two chat_clients in A (`--interval 0.1`), across
/// 20% loss, 10% duplication and 10% reordering each way. Both clients join exactly once
/// (a lost `hello` makes a heartbeat join them; a duplicate or a reordered `hello` or
/// heartbeat does not join them again); one is then killed (SIGKILL: no `quit`) and is
/// logged `expired`, silent for at least `expire` (how long after its death is printed,
/// beside the documented `expire * 5/4`); the other is never expired, and on Ctrl-C the
/// server, which never crashed, says `bye bye` to exactly that one.
///
/// False expiry of the live client: it takes no heartbeat arriving for `EXPIRE` (3 s).
/// Each heartbeat is lost with probability 0.2 on its own (a duplicate or a held one
/// still arrives, at most `HOLD` = 0.3 s late), so a heartbeat sent in the first 2.7 s of
/// any 3 s window arrives within it unless lost: 26 heartbeats or more at 0.1 s, or 13 if
/// a loaded machine stretched the interval to 0.2 s. That all are lost has probability
/// 0.2^13 ~ 8e-10 per window start, and the test covers fewer than 100 heartbeats:
/// under 1e-7 in all (0.2^26 * 100 ~ 7e-17 at the nominal rate).
#[test]
#[ignore = "needs root, network namespaces, veth, TUN or netem, and python3: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test lossy -- --ignored"]
fn chat_heartbeats_keep_a_live_client_and_a_killed_one_expires_over_loss() {
    let net = Lossy::build(CHAT_TEST, "chat", CHAT_SEED);
    let server_at = SocketAddr::from((B_IP, 9995));
    let (server_arg, expire, interval) = (
        server_at.to_string(),
        EXPIRE.as_secs_f64().to_string(),
        INTERVAL.as_secs_f64().to_string(),
    );
    let mut server = net.example(
        &net.b,
        "chat_server",
        &[&server_arg, "--expire", &expire],
        "debug",
    );
    assert_eq!(server.listening_addr(), server_at);
    let client_args = [server_arg.as_str(), "--interval", &interval];
    let mut live = net.example(&net.a, "chat_client", &client_args, "info");
    let mut victim = net.example(&net.a, "chat_client", &client_args, "info");
    let (live_at, victim_at) = (client_addr(&mut live), client_addr(&mut victim));
    server.wait_for(&format!("{live_at} joined"));
    server.wait_for(&format!("{victim_at} joined"));
    let started = Instant::now();

    signal(victim.pid(), "KILL");
    let killed = Instant::now();
    let victim_end = victim.finish();
    assert_eq!(victim_end.code, None, "killed by a signal");
    let expired = server.wait_for(&format!("expired {victim_at} ("));
    let took = killed.elapsed();
    let silent = expired
        .split_once("(silent for ")
        .and_then(|(_, rest)| rest.strip_suffix(')'))
        .map(parse_duration)
        .unwrap_or_else(|| panic!("no silence in {expired:?}"));
    // The server's own clock says how long the client was silent: never less than the
    // expiry. How much more depends on when the server got a CPU, so it is printed.
    let latest = EXPIRE + EXPIRE / 4;
    assert!(
        silent >= EXPIRE,
        "expired after {silent:?} of silence, less than {EXPIRE:?}: {expired}"
    );

    // The live client goes on for another expiry period after that.
    thread::sleep(EXPIRE);
    let alive_for = started.elapsed();
    let end = server.interrupt();
    let lines = &end.lines;
    assert!(end.success, "chat_server exits 0 on Ctrl-C: {lines:#?}");
    assert_eq!(end.lines_with("received SIGINT").len(), 1, "{lines:#?}");
    for who in [live_at, victim_at] {
        assert_eq!(
            lines_about(&end, " joined", who).len(),
            1,
            "{who}: {lines:#?}"
        );
    }
    if !impaired_by_netem(&net) {
        let by_heartbeat = end.lines_with(" joined (by heartbeat)");
        assert!(!by_heartbeat.is_empty(), "a lost hello: {lines:#?}");
    }
    assert_eq!(lines_about(&end, "expired ", victim_at).len(), 1);
    assert_eq!(
        lines_about(&end, "expired ", live_at),
        Vec::<&str>::new(),
        "the live client was expired"
    );
    assert_eq!(
        end.lines_with("said bye bye to 1 client").len(),
        1,
        "{lines:#?}"
    );

    // `bye bye` may be lost: then Ctrl-C stops the live client (a zombie takes it too).
    let live_end = live.interrupt();
    assert!(live_end.success, "{:#?}", live_end.lines);
    let heard = lines_about(&end, "heartbeat from ", live_at).len();
    let figures = net.finish(CHAT_TEST);
    println!(
        "{CHAT_TEST}: heard {heard} heartbeats from the live client in {alive_for:?} after \
         it joined (one each {INTERVAL:?} sent); the killed one expired {took:?} after its \
         death ({:.2}x the documented {latest:?}, {:.2}x with the {HOLD:?} a heartbeat may \
         be held), silent for {silent:?} ({:.2}x {latest:?})",
        took.as_secs_f64() / latest.as_secs_f64(),
        took.as_secs_f64() / (latest + HOLD).as_secs_f64(),
        silent.as_secs_f64() / latest.as_secs_f64(),
    );
    assert_impaired(&figures, 5);
}

// ----- connected refusal ------------------------------------------------------------------

const CONNECTED_TEST: &str = "connected_hears_refusal_over_loss_then_talks";
/// The first 4 decisions of seed 7: pass, drop, drop, duplicate and hold.
const CONNECTED_SEED: u64 = 7;

/// The connected example in A greets a port in B where nothing listens, once a second,
/// across 20% loss, 10% duplication and 10% reordering each way: some of B's ICMP port
/// unreachables come back, and it logs `connection refused by ADDR` and goes on; once the
/// echo example listens on that port, the replies come back (`reply from ADDR: hello #N`),
/// and it stops cleanly on Ctrl-C, closing its port.
///
/// Each greeting gets a refusal (and later, a reply) back with probability 0.8 * 0.8 =
/// 0.64 or more; the 20 s wait covers 19 greetings or more: 0.36^19 ~ 4e-9 that none does.
#[test]
#[ignore = "needs root, network namespaces, veth, TUN or netem, and python3: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test lossy -- --ignored"]
fn connected_hears_refusal_over_loss_then_talks() {
    let net = Lossy::build(CONNECTED_TEST, "conn", CONNECTED_SEED);
    let target = SocketAddr::from((B_IP, 9999));
    let target_arg = target.to_string();
    let mut client = net.example(
        &net.a,
        "connected",
        &[&target_arg, "--count", "100"],
        "info",
    );
    client.wait_for(&format!("connection refused by {target}"));
    let refused_after = client.seen.iter().filter(|l| l.contains("sent \"")).count();

    let mut echo = net.example(&net.b, "echo", &[&target_arg], "info");
    assert_eq!(echo.listening_addr(), target);
    let reply = client.wait_for(&format!("reply from {target}: hello #"));

    let end = client.interrupt();
    let lines = &end.lines;
    assert!(end.success, "connected exits 0 on Ctrl-C: {lines:#?}");
    assert_eq!(end.lines_with("received SIGINT").len(), 1, "{lines:#?}");
    assert_eq!(end.lines_with(" Closed)").len(), 1, "{lines:#?}");
    let refusals = end.lines_with("connection refused by ").len();
    let sent = end.lines_with("sent \"").len();
    let replies = end.lines_with("reply from ").len();
    assert!(
        sent > refused_after,
        "it went on sending after the refusal: {lines:#?}"
    );
    let echo_end = echo.interrupt();
    assert!(echo_end.success, "{:#?}", echo_end.lines);

    let figures = net.finish(CONNECTED_TEST);
    println!(
        "{CONNECTED_TEST}: {sent} greetings sent, {refusals} refusals, {replies} replies \
         (first refusal after {refused_after} greetings; first reply: {reply:?})"
    );
    assert_impaired(&figures, 4);
}
