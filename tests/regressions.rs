//! Regressions found by review of the reactor core, one test per finding.

mod util;

use std::cell::Cell;
use std::net::{SocketAddr, UdpSocket};
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::rc::Rc;
use std::time::Duration;

use twine::{DatagramProtocol, Error, UdpTransport, from_fn};
use util::process::run_to_end;
use util::{init_logging, logs_containing, loopback, reactor};

const CHILD_FLAG: &str = "TWINE_REGRESSION_CHILD";

/// Counts its `stop_protocol` calls.
struct Life {
    stopped: Rc<Cell<u32>>,
}

impl DatagramProtocol for Life {
    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}

    fn stop_protocol(&mut self, _: &mut UdpTransport<'_>) {
        self.stopped.set(self.stopped.get() + 1);
    }
}

/// A turn started from a `with_port` closure is refused with `Reentrant`, so the port that
/// is out of its slot can neither be torn down half-way nor have its slot reused.
#[test]
fn nested_turn_from_with_port_is_reentrant() {
    let mut r = reactor();
    let stopped = Rc::new(Cell::new(0));
    let port = r
        .listen_udp_with(
            loopback(),
            Life {
                stopped: stopped.clone(),
            },
        )
        .expect("listen");
    let nested = r
        .with_port(&port, |_, t| {
            t.reactor().stop_listening(&port);
            t.reactor().iterate(Duration::ZERO)
        })
        .expect("port open");
    assert!(matches!(nested, Err(Error::Reentrant)), "{nested:?}");
    r.iterate(Duration::from_millis(10)).expect("turn");
    assert_eq!(
        stopped.get(),
        1,
        "stop_protocol runs once, in the outer turn"
    );
    assert_eq!(r.port_count(), 0);
}

/// `start_protocol` of a port opened from `main` cannot run a turn either.
#[test]
fn nested_turn_from_start_protocol_is_reentrant() {
    struct Turner(Rc<Cell<bool>>);
    impl DatagramProtocol for Turner {
        fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
            let refused = matches!(t.reactor().iterate(Duration::ZERO), Err(Error::Reentrant));
            self.0.set(refused);
        }
        fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    }
    let refused = Rc::new(Cell::new(false));
    let mut r = reactor();
    r.listen_udp_with(loopback(), Turner(refused.clone()))
        .expect("listen");
    assert!(refused.get());
}

/// After `Reactor::stop` is asked from `datagram_received`, no further datagram is
/// delivered, though more were waiting.
#[test]
fn no_datagram_is_delivered_after_reactor_stop() {
    let mut r = reactor();
    let got = Rc::new(Cell::new(0));
    let seen = got.clone();
    let port = r
        .listen_udp_with(
            loopback(),
            from_fn(move |t, _, _| {
                seen.set(seen.get() + 1);
                t.reactor().stop();
            }),
        )
        .expect("listen");
    let c = UdpSocket::bind("127.0.0.1:0").expect("client");
    for _ in 0..10 {
        c.send_to(b"x", port.local_addr()).expect("send");
    }
    // A watchdog, so that a regression fails instead of hanging.
    r.call_later(Duration::from_secs(10), |r| r.stop());
    r.run().expect("run returns once stopped");
    assert_eq!(r.port_count(), 0);
    assert_eq!(got.get(), 1);
}

/// A handle from one reactor never reaches a port of another (generations are unique in
/// the process).
#[test]
fn handle_from_another_reactor_reaches_nothing() {
    let mut ra = reactor();
    let mut rb = reactor();
    let pa = ra
        .listen_udp_with(loopback(), from_fn(|_, _, _| {}))
        .expect("a");
    let pb = rb
        .listen_udp_with(loopback(), from_fn(|_, _, _| {}))
        .expect("b");
    assert!(!rb.is_listening(&pa));
    assert!(rb.port_stats(&pa).is_none());
    assert!(matches!(
        rb.call_later_on(&pa, Duration::ZERO, |_, _| {}),
        Err(Error::PortClosed)
    ));
    assert!(!rb.stop_listening(&pa));
    rb.iterate(Duration::from_millis(5)).expect("turn");
    assert!(rb.is_listening(&pb) && ra.is_listening(&pa));
}

/// A port whose `start_protocol` scheduled timers and then panicked leaves no timer behind.
#[test]
fn start_protocol_panic_leaves_no_port_timer() {
    init_logging();
    struct P;
    impl DatagramProtocol for P {
        fn start_protocol(&mut self, t: &mut UdpTransport<'_>) {
            t.call_every(Duration::from_secs(3600), |_: &mut P, _| {})
                .expect("schedule");
            panic!("regression start boom");
        }
        fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    }
    let mut r = reactor();
    assert!(matches!(
        r.listen_udp_with(loopback(), P),
        Err(Error::StartPanicked { .. })
    ));
    assert_eq!(r.timer_count(), 0);
    assert_eq!(logs_containing("regression start boom").len(), 1);
}

/// Runs this binary's ignored test `name` as a child with the flag set, optionally with
/// SIGINT ignored from the start; returns its status and stdout.
fn child(name: &str, ignore_sigint: bool) -> (std::process::ExitStatus, String) {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = if ignore_sigint {
        let mut sh = Command::new("sh");
        sh.arg("-c").arg("trap '' INT; exec \"$0\" \"$@\"").arg(exe);
        sh
    } else {
        Command::new(exe)
    };
    cmd.args([
        "--exact",
        name,
        "--ignored",
        "--nocapture",
        "--test-threads=1",
    ])
    .env(CHILD_FLAG, "1");
    let (status, out, err) = run_to_end(cmd, Duration::from_secs(20)).expect("run child");
    (status, format!("{out}\n--- stderr\n{err}"))
}

/// When a panic escapes `run` (here from a protocol's `Drop`), the signal handling is
/// given back all the same: SIGINT then kills the process.
#[test]
fn sigint_kills_after_run_unwound() {
    let (status, out) = child("child_run_unwinds_then_sigint", false);
    assert!(out.contains("run unwound"), "{out}");
    assert_eq!(status.signal(), Some(libc::SIGINT), "{status:?}\n{out}");
}

#[test]
#[ignore = "child process of sigint_kills_after_run_unwound"]
fn child_run_unwinds_then_sigint() {
    if std::env::var_os(CHILD_FLAG).is_none() {
        return;
    }
    struct Bomb;
    impl DatagramProtocol for Bomb {
        fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    }
    impl Drop for Bomb {
        fn drop(&mut self) {
            panic!("drop panics");
        }
    }
    let mut r = reactor();
    let p = r.listen_udp_with(loopback(), Bomb).expect("listen");
    r.stop_listening(&p);
    let unwound = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| r.run())).is_err();
    println!("run unwound: {unwound}");
    signal_hook::low_level::raise(libc::SIGINT).expect("raise");
    std::thread::sleep(Duration::from_millis(500));
    println!("SURVIVED");
}

/// A process that starts with SIGINT ignored keeps ignoring it: `run` neither stops on it
/// nor makes it fatal afterwards (Twisted leaves an ignored SIGINT alone too).
#[test]
fn ignored_sigint_stays_ignored() {
    let (status, out) = child("child_with_sigint_ignored", true);
    assert!(status.success(), "{status:?}\n{out}");
    assert!(
        out.contains("stopped by timer") && out.contains("SURVIVED"),
        "{out}"
    );
}

#[test]
#[ignore = "child process of ignored_sigint_stays_ignored"]
fn child_with_sigint_ignored() {
    if std::env::var_os(CHILD_FLAG).is_none() {
        return;
    }
    let mut r = reactor();
    r.call_later(Duration::from_millis(10), |_| {
        signal_hook::low_level::raise(libc::SIGINT).expect("raise");
    });
    let by_timer = Rc::new(Cell::new(false));
    let flag = by_timer.clone();
    r.call_later(Duration::from_millis(300), move |r| {
        flag.set(true);
        r.stop();
    });
    r.run().expect("run");
    if by_timer.get() {
        println!("stopped by timer");
    }
    signal_hook::low_level::raise(libc::SIGINT).expect("raise");
    std::thread::sleep(Duration::from_millis(100));
    println!("SURVIVED");
}
