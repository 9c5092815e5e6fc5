//! Latency mode (`Reactor::set_spin`): a reactor that polls without blocking before it
//! sleeps serves datagrams, timers and stops as one that sleeps at once does, and never
//! spins past a deadline it has to meet.
//!
//! No test bounds a time: each holds whatever the scheduler does. The spins are far
//! longer than any test's deadline, so a spin that ignored a timer or a stop would make
//! the test fail at its deadline rather than pass slowly.

mod util;

use std::sync::mpsc;
use std::thread;
use std::time::Duration;

use twine::{Reactor, from_fn};
use util::{DEADLINE, client, listen_loopback, reactor};

/// A spin no test could wait out.
const HOUR: Duration = Duration::from_secs(3600);

#[test]
fn the_spin_is_off_by_default_and_set_as_asked() {
    let mut r = reactor();
    assert_eq!(r.spin(), Duration::ZERO);
    r.set_spin(Duration::from_micros(50));
    assert_eq!(r.spin(), Duration::from_micros(50));
    r.set_spin(Duration::ZERO);
    assert_eq!(r.spin(), Duration::ZERO);
}

#[test]
fn a_spinning_reactor_echoes_every_datagram_of_a_ping_pong() {
    let mut r = reactor();
    r.set_spin(Duration::from_millis(1));
    let port = listen_loopback(
        &mut r,
        from_fn(|t, data, from| {
            t.write(data, from).expect("echo");
        }),
    );
    let to = port.local_addr();
    let handle = r.handle();
    let (done_tx, done_rx) = mpsc::channel();
    let pinger = thread::spawn(move || {
        let c = client();
        c.set_read_timeout(Some(DEADLINE)).expect("timeout");
        let mut buf = [0u8; 16];
        let mut echoed = 0u32;
        for i in 0u32..500 {
            c.send_to(&i.to_be_bytes(), to).expect("send");
            match c.recv_from(&mut buf) {
                Ok((4, from)) if from == to && buf[..4] == i.to_be_bytes() => echoed += 1,
                _ => break,
            }
        }
        let _ = done_tx.send(echoed);
        handle.stop().expect("stop");
    });
    r.run().expect("run");
    pinger.join().expect("pinger");
    assert_eq!(done_rx.recv().expect("count"), 500);
}

#[test]
fn a_timer_fires_in_time_however_long_the_spin() {
    let (tx, rx) = mpsc::channel();
    let runner = thread::spawn(move || {
        let mut r = reactor();
        r.set_spin(HOUR);
        r.call_later(Duration::from_millis(20), |r: &mut Reactor| r.stop());
        let _ = tx.send(r.run().is_ok());
    });
    let stopped = rx.recv_timeout(DEADLINE * 4);
    assert_eq!(
        stopped,
        Ok(true),
        "the timer's stop ended run within the deadline"
    );
    runner.join().expect("runner");
}

#[test]
fn a_handle_stop_ends_a_spin_that_has_no_deadline() {
    let (tx, rx) = mpsc::channel();
    let (handle_tx, handle_rx) = mpsc::channel();
    let runner = thread::spawn(move || {
        let mut r = reactor();
        r.set_spin(HOUR);
        let _ = handle_tx.send(r.handle());
        let _ = tx.send(r.run().is_ok());
    });
    let handle = handle_rx
        .recv_timeout(DEADLINE)
        .expect("the reactor's handle");
    thread::sleep(Duration::from_millis(20));
    handle.stop().expect("stop");
    let stopped = rx.recv_timeout(DEADLINE * 4);
    assert_eq!(
        stopped,
        Ok(true),
        "the handle's stop ended run within the deadline"
    );
    runner.join().expect("runner");
}

#[test]
fn iterate_with_a_timeout_returns_once_it_has_passed_whatever_the_spin() {
    let (tx, rx) = mpsc::channel();
    let runner = thread::spawn(move || {
        let mut r = reactor();
        r.set_spin(HOUR);
        let _ = tx.send(r.iterate(Duration::from_millis(10)).is_ok());
    });
    assert_eq!(rx.recv_timeout(DEADLINE * 4), Ok(true));
    runner.join().expect("runner");
}
