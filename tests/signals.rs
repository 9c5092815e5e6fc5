//! SIGINT / SIGTERM (issue item 7): `run` stops gracefully on either, every port's
//! stop_protocol runs, and once `run` has returned the signals have their default effect
//! again. Signals go to the whole process, so this file holds one real test; the second
//! is only ever run as a child process by the first.

mod util;

use std::cell::Cell;
use std::os::unix::process::ExitStatusExt;
use std::process::Command;
use std::rc::Rc;
use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use twine::Reactor;
use util::{DEADLINE, Event, Recorder, init_logging, listen_loopback, logs_containing};

/// Set in the child process's environment.
const CHILD_ENV: &str = "TWINE_SIGNALS_TEST_CHILD";
const CHILD_TEST: &str = "child_stops_a_reactor_by_handle_then_raises_sigint";

/// Where the signal is raised from.
enum RaiseFrom {
    /// A reactor timer, on the reactor's thread.
    Timer,
    /// Another thread, once the reactor is running.
    Thread,
}

/// Runs a reactor with two ports until `signal` arrives; checks the graceful stop.
fn run_until(signal: i32, name: &str, from: RaiseFrom) {
    let mut reactor = Reactor::new().expect("new reactor");
    let (a, events_a) = Recorder::new();
    let (b, events_b) = Recorder::new();
    listen_loopback(&mut reactor, a);
    listen_loopback(&mut reactor, b);
    let watchdog = Rc::new(Cell::new(false));
    {
        let watchdog = watchdog.clone();
        reactor.call_later(DEADLINE, move |r| {
            watchdog.set(true);
            r.stop();
        });
    }
    let raiser = match from {
        RaiseFrom::Timer => {
            reactor.call_later(Duration::from_millis(20), move |_| {
                signal_hook::low_level::raise(signal).expect("raise");
            });
            None
        }
        RaiseFrom::Thread => {
            let (running_tx, running_rx) = mpsc::channel::<()>();
            reactor.call_later(Duration::from_millis(20), move |_| {
                running_tx.send(()).expect("running");
            });
            Some(thread::spawn(move || {
                running_rx.recv_timeout(DEADLINE).expect("reactor running");
                signal_hook::low_level::raise(signal).expect("raise");
            }))
        }
    };

    reactor.run().expect("run returns Ok on a signal");
    if let Some(raiser) = raiser {
        raiser.join().expect("raiser thread");
    }
    assert!(!watchdog.get(), "{name}: run returned only on the watchdog");
    for events in [&events_a, &events_b] {
        assert_eq!(events.borrow().last(), Some(&Event::Stop), "{name}");
        assert_eq!(util::count(events, |e| *e == Event::Stop), 1, "{name}");
    }
    assert_eq!(reactor.port_count(), 0);
    let lines = logs_containing(&format!("received {name}"));
    assert_eq!(lines.len(), 1, "{name}: {lines:?}");
    assert!(lines[0].starts_with("INFO"), "{lines:?}");
}

/// SIGTERM, then SIGINT, each stop run() gracefully; after run() SIGINT kills again (in a child).
#[test]
fn sigterm_and_sigint_stop_run_gracefully_and_are_given_back_afterwards() {
    init_logging();
    run_until(libc::SIGTERM, "SIGTERM", RaiseFrom::Timer);
    run_until(libc::SIGINT, "SIGINT", RaiseFrom::Thread);

    let exe = std::env::current_exe().expect("test binary");
    let out = Command::new(exe)
        .args(["--exact", CHILD_TEST, "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1")
        .output()
        .expect("run the child");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stdout.contains("child: run returned"),
        "the child did not get as far as raising SIGINT: {:?}\n{stdout}\n{stderr}",
        out.status
    );
    assert_eq!(
        out.status.signal(),
        Some(libc::SIGINT),
        "the child was not killed by SIGINT: {:?}\n{stdout}\n{stderr}",
        out.status
    );
}

/// Child only (no-op without its env flag): once run() was stopped by handle, SIGINT kills.
#[test]
#[ignore = "run as a child process by sigterm_and_sigint_stop_run_gracefully_and_are_given_back_afterwards"]
fn child_stops_a_reactor_by_handle_then_raises_sigint() {
    if std::env::var_os(CHILD_ENV).is_none() {
        return;
    }
    let mut reactor = Reactor::new().expect("new reactor");
    let (proto, events) = Recorder::new();
    listen_loopback(&mut reactor, proto);
    let (running_tx, running_rx) = mpsc::channel::<()>();
    reactor.call_later(Duration::ZERO, move |_| {
        running_tx.send(()).expect("running");
    });
    let handle = reactor.handle();
    let stopper = thread::spawn(move || {
        running_rx.recv_timeout(DEADLINE).expect("reactor running");
        handle.stop().expect("reactor alive");
    });
    reactor.run().expect("run");
    stopper.join().expect("stopper thread");
    assert_eq!(events.borrow().last(), Some(&Event::Stop));
    println!("child: run returned");
    signal_hook::low_level::raise(libc::SIGINT).expect("raise");
    // raise delivers before it returns: still here means SIGINT was not given back.
    println!("child: survived SIGINT");
}
