//! SIGINT / SIGTERM: `run` stops gracefully on either, every port's stop_protocol runs,
//! and once `run` has returned the signals have their default effect again. Signals go to
//! the whole process, so only the first test raises them in this process; every other test
//! runs an ignored `child_*` test of this binary as a child process and checks how it
//! ended.

mod util;

use std::cell::{Cell, RefCell};
use std::os::unix::process::ExitStatusExt;
use std::process::{Command, ExitStatus};
use std::rc::Rc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, mpsc};
use std::thread;
use std::time::{Duration, Instant};

use twine::{DatagramProtocol, Reactor, UdpTransport};
use util::process::run_to_end;
use util::{DEADLINE, Event, Recorder, init_logging, listen_loopback, logs_containing};

/// Set in the child process's environment.
const CHILD_ENV: &str = "TWINE_SIGNALS_TEST_CHILD";
const CHILD_TEST: &str = "child_stops_a_reactor_by_handle_then_raises_sigint";

/// The longest a child process may take before it is killed and the test fails.
const CHILD_LIMIT: Duration = Duration::from_secs(180);

/// Runs the ignored test `name` of this binary as a child process (with [`CHILD_ENV`]
/// set); its exit status, stdout and stderr.
fn run_child(name: &str) -> (ExitStatus, String, String) {
    let exe = std::env::current_exe().expect("test binary");
    let mut cmd = Command::new(exe);
    cmd.args(["--exact", name, "--ignored", "--nocapture"])
        .env(CHILD_ENV, "1");
    run_to_end(cmd, CHILD_LIMIT).expect("run the child")
}

/// Whether this process is a child started by [`run_child`].
fn is_child() -> bool {
    std::env::var_os(CHILD_ENV).is_some()
}

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

    let (status, stdout, stderr) = run_child(CHILD_TEST);
    assert!(
        stdout.contains("child: run returned"),
        "the child did not get as far as raising SIGINT: {status:?}\n{stdout}\n{stderr}"
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGINT),
        "the child was not killed by SIGINT: {status:?}\n{stdout}\n{stderr}"
    );
}

/// Child only (no-op without its env flag): once run() was stopped by handle, SIGINT kills.
#[test]
#[ignore = "run as a child process by sigterm_and_sigint_stop_run_gracefully_and_are_given_back_afterwards"]
fn child_stops_a_reactor_by_handle_then_raises_sigint() {
    if !is_child() {
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

// ----- two reactors in two threads ---------------------------------------------------

const STORM_TEST: &str = "child_two_reactors_in_two_threads_under_a_sigterm_storm";
/// Runs each reactor makes at least. All but one in 16 raise SIGTERM themselves as they
/// start (the others end on a signal from elsewhere or on their timer): the reactors then
/// start and stop as fast as they can, and one's stop often overlaps the other's start.
const STORM_RUNS: usize = 20_000;
/// SIGTERMs the third thread raises at least, each while a reactor runs.
const STORM_SENDER_SIGNALS: usize = 400;
/// How long a reactor's run lasts when no signal stops it.
const STORM_RUN: Duration = Duration::from_millis(2);

/// What the two reactor threads and the sender thread share, under one lock. A SIGTERM is
/// raised only while holding it and while a reactor is marked running, and a reactor is
/// marked running only between a call its `run` makes and its stop (in the timer that
/// stops it, or in its port's stop_protocol): every SIGTERM raised finds a reactor inside
/// `run`, so none may end the process.
#[derive(Default)]
struct Storm {
    /// Per reactor: inside `run`.
    running: [bool; 2],
    /// Per reactor: a SIGTERM was raised while it was marked running, since its run began.
    signalled: [bool; 2],
    /// Per reactor: runs completed.
    runs: [usize; 2],
    /// The sender is done: the reactor threads end after their current run.
    done: bool,
}

fn lock(storm: &Mutex<Storm>) -> MutexGuard<'_, Storm> {
    storm.lock().unwrap_or_else(PoisonError::into_inner)
}

/// Raises SIGTERM if a reactor is marked running, marking each running one signalled;
/// whether it raised. raise runs the handler on this thread before it returns, while the
/// lock keeps every reactor marked running inside its `run`.
fn raise_while_running(storm: &mut Storm) -> bool {
    let running = storm.running;
    if !running.contains(&true) {
        return false;
    }
    for (signalled, running) in storm.signalled.iter_mut().zip(running) {
        *signalled |= running;
    }
    signal_hook::low_level::raise(libc::SIGTERM).expect("raise");
    true
}

/// A port that marks its reactor not running when it stops, and counts its stops.
struct Leaving {
    id: usize,
    storm: Arc<Mutex<Storm>>,
    stops: Rc<Cell<usize>>,
}

impl DatagramProtocol for Leaving {
    fn stop_protocol(&mut self, _t: &mut UdpTransport<'_>) {
        lock(&self.storm).running[self.id] = false;
        self.stops.set(self.stops.get() + 1);
    }

    fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: std::net::SocketAddr) {}
}

/// How one reactor's runs ended.
#[derive(Debug, Default)]
struct Tally {
    runs: usize,
    /// SIGTERMs this reactor raised itself, at the start of a run.
    raised: usize,
    /// Signalled while marked running, and stopped by that signal.
    by_signal: usize,
    /// Stopped by a signal raised once it was inside `run` but before it was marked
    /// running.
    by_early_signal: usize,
    /// Not signalled: stopped by its timer.
    by_timer: usize,
    /// Stopped only by the watchdog: a SIGTERM raised while it ran did not stop it.
    by_watchdog: usize,
    /// Runs after which its port's stop_protocol had not run exactly once.
    ungraceful: usize,
}

/// Runs a reactor of its own again and again until the sender is done; how the runs ended.
fn storm_reactor(id: usize, storm: &Arc<Mutex<Storm>>) -> Tally {
    let mut reactor = Reactor::new().expect("new reactor");
    let tally = Rc::new(RefCell::new(Tally::default()));
    while !lock(storm).done {
        let stops = Rc::new(Cell::new(0));
        let port = Leaving {
            id,
            storm: Arc::clone(storm),
            stops: Rc::clone(&stops),
        };
        listen_loopback(&mut reactor, port);
        let raises = tally.borrow().runs % 16 != 15;
        let began = {
            let (storm, tally) = (Arc::clone(storm), Rc::clone(&tally));
            reactor.call_later(Duration::ZERO, move |_| {
                let mut storm = lock(&storm);
                storm.running[id] = true;
                if raises && raise_while_running(&mut storm) {
                    tally.borrow_mut().raised += 1;
                }
            })
        };
        let by_timer = Rc::new(Cell::new(false));
        let timer = {
            let (storm, by_timer) = (Arc::clone(storm), Rc::clone(&by_timer));
            reactor.call_later(STORM_RUN, move |r| {
                let mut storm = lock(&storm);
                // A signalled run is left to its signal, so that a lost one shows.
                if !storm.signalled[id] {
                    storm.running[id] = false;
                    by_timer.set(true);
                    r.stop();
                }
            })
        };
        let by_watchdog = Rc::new(Cell::new(false));
        let watchdog = {
            let by_watchdog = Rc::clone(&by_watchdog);
            reactor.call_later(DEADLINE, move |r| {
                by_watchdog.set(true);
                r.stop();
            })
        };
        reactor.run().expect("run returns Ok");
        // Timers outlive a stop: none of this run's may fire in the next.
        for call in [began, timer, watchdog] {
            reactor.cancel(call);
        }
        let signalled = {
            let mut storm = lock(storm);
            storm.runs[id] += 1;
            std::mem::take(&mut storm.signalled[id])
        };
        let mut tally = tally.borrow_mut();
        tally.runs += 1;
        if stops.get() != 1 || reactor.port_count() != 0 {
            tally.ungraceful += 1;
        }
        match (by_watchdog.get(), signalled, by_timer.get()) {
            (true, _, _) => tally.by_watchdog += 1,
            (false, true, _) => tally.by_signal += 1,
            (false, false, true) => tally.by_timer += 1,
            (false, false, false) => tally.by_early_signal += 1,
        }
    }
    tally.take()
}

/// Raises SIGTERMs while a reactor runs until it has raised [`STORM_SENDER_SIGNALS`] and
/// each reactor has made [`STORM_RUNS`] runs, or until its deadline; how many it raised.
fn storm_sender(storm: &Mutex<Storm>) -> usize {
    let mut sent = 0;
    let deadline = Instant::now() + CHILD_LIMIT / 2;
    while Instant::now() < deadline {
        {
            let mut storm = lock(storm);
            if sent >= STORM_SENDER_SIGNALS && storm.runs.iter().all(|r| *r >= STORM_RUNS) {
                break;
            }
            if raise_while_running(&mut storm) {
                sent += 1;
            }
        }
        thread::sleep(Duration::from_micros(300));
    }
    lock(storm).done = true;
    sent
}

/// Two reactors in two threads, run again and again while SIGTERMs arrive from both and
/// from a third thread: every signal stops the reactors that run, gracefully, and none
/// ends the process (in a child).
#[test]
fn sigterm_stops_reactors_running_in_two_threads_and_never_kills_the_process() {
    let (status, stdout, stderr) = run_child(STORM_TEST);
    let summary: Vec<&str> = stdout.lines().filter(|l| l.starts_with("child:")).collect();
    println!("{summary:#?}");
    assert!(
        status.success(),
        "the child did not exit 0 ({status:?}, killed by signal {:?})\n{stdout}\n{stderr}",
        status.signal()
    );
    assert!(stdout.contains("child: storm passed"), "{stdout}\n{stderr}");
}

/// Child only: the storm itself.
#[test]
#[ignore = "run as a child process by sigterm_stops_reactors_running_in_two_threads_and_never_kills_the_process"]
fn child_two_reactors_in_two_threads_under_a_sigterm_storm() {
    if !is_child() {
        return;
    }
    let storm = Arc::new(Mutex::new(Storm::default()));
    let reactors: Vec<_> = (0..2)
        .map(|id| {
            let storm = Arc::clone(&storm);
            thread::spawn(move || storm_reactor(id, &storm))
        })
        .collect();
    let sent = storm_sender(&storm);
    let tallies: Vec<Tally> = reactors
        .into_iter()
        .map(|t| t.join().expect("reactor thread"))
        .collect();
    println!("child: the third thread raised {sent} SIGTERMs");
    for (id, tally) in tallies.iter().enumerate() {
        println!("child: reactor {id}: {tally:?}");
    }
    assert!(sent >= STORM_SENDER_SIGNALS, "the reactors stopped running");
    for tally in &tallies {
        assert!(tally.runs >= STORM_RUNS, "{tally:?}");
        assert_eq!(
            tally.by_watchdog, 0,
            "a SIGTERM did not stop a running reactor"
        );
        assert_eq!(tally.ungraceful, 0, "a stop skipped stop_protocol");
    }
    println!("child: storm passed");
}

// ----- descriptors -------------------------------------------------------------------

const FD_TEST: &str = "child_runs_again_and_again_at_the_descriptor_limit";

/// Runs `reactor` until a timer stops it.
fn run_briefly(reactor: &mut Reactor) -> Result<(), twine::Error> {
    let call = reactor.call_later(Duration::from_millis(1), |r| r.stop());
    let outcome = reactor.run();
    reactor.cancel(call);
    outcome
}

/// The descriptors open in this process, in order, less the one listing them.
fn open_fds() -> Vec<i32> {
    // The listing's own descriptor takes the lowest free number, the one this probe had.
    let probe = std::fs::File::open("/dev/null").expect("open /dev/null");
    let listing = std::os::fd::AsRawFd::as_raw_fd(&probe);
    drop(probe);
    let mut fds: Vec<i32> = std::fs::read_dir("/proc/self/fd")
        .expect("list /proc/self/fd")
        .filter_map(|entry| entry.ok()?.file_name().to_str()?.parse().ok())
        .filter(|fd| *fd != listing)
        .collect();
    fds.sort_unstable();
    fds
}

/// Sets the soft RLIMIT_NOFILE: no descriptor numbered `limit` or more can be opened.
fn set_fd_limit(limit: i32) {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes one rlimit into `lim`, which outlives the call.
    let got = unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) };
    assert_eq!(got, 0, "getrlimit: {}", std::io::Error::last_os_error());
    lim.rlim_cur = libc::rlim_t::try_from(limit).expect("a positive limit");
    // SAFETY: setrlimit only reads `lim`, which outlives the call.
    let set = unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) };
    assert_eq!(set, 0, "setrlimit: {}", std::io::Error::last_os_error());
}

/// At the descriptor limit, run() still works, again and again; and repeated runs open
/// no descriptors (in a child).
#[test]
fn run_needs_no_new_descriptor_after_the_first() {
    let (status, stdout, stderr) = run_child(FD_TEST);
    let summary: Vec<&str> = stdout.lines().filter(|l| l.starts_with("child:")).collect();
    println!("{summary:?}");
    assert!(status.success(), "{status:?}\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("child: fd limit passed"),
        "{stdout}\n{stderr}"
    );
}

/// Child only: lowers RLIMIT_NOFILE to one above what is open after a first run.
#[test]
#[ignore = "run as a child process by run_needs_no_new_descriptor_after_the_first"]
fn child_runs_again_and_again_at_the_descriptor_limit() {
    if !is_child() {
        return;
    }
    let mut reactor = Reactor::new().expect("new reactor");
    run_briefly(&mut reactor).expect("first run");
    let after_first = open_fds();
    for i in 0..200 {
        run_briefly(&mut reactor).unwrap_or_else(|e| panic!("run {i}: {e}"));
    }
    let after_200 = open_fds();
    println!(
        "child: {} descriptors open after the first run, {} after 200 more",
        after_first.len(),
        after_200.len()
    );
    assert_eq!(
        after_200, after_first,
        "descriptors changed across 200 runs"
    );

    // Fill the holes below the highest descriptor, then allow exactly one more: the one
    // the final listing needs.
    let highest = *after_first.last().expect("stdio is open");
    let mut fillers = Vec::new();
    loop {
        let filler = std::fs::File::open("/dev/null").expect("open /dev/null");
        if std::os::fd::AsRawFd::as_raw_fd(&filler) > highest {
            break;
        }
        fillers.push(filler);
    }
    set_fd_limit(highest + 2);
    let failures: Vec<String> = (0..50)
        .filter_map(|i| {
            run_briefly(&mut reactor)
                .err()
                .map(|e| format!("run {i}: {e}"))
        })
        .collect();
    let at_limit = open_fds();
    println!(
        "child: limit {}, {} of 50 runs failed, {} descriptors open after them",
        highest + 2,
        failures.len(),
        at_limit.len()
    );
    assert!(
        failures.is_empty(),
        "runs failed at the limit: {failures:?}"
    );
    assert_eq!(at_limit.len(), after_first.len() + fillers.len());
    println!("child: fd limit passed");
}

// ----- the program's own handler -----------------------------------------------------

const OWN_HANDLER_OFF_TEST: &str = "child_handles_sigterm_itself_with_twine_handling_off";
const OWN_HANDLER_ON_TEST: &str = "child_handles_sigterm_itself_with_twine_handling_on";

/// Listens on one port, raises SIGTERM from a timer, and stops from a later one; whether
/// the later timer was what stopped run().
fn run_raising_sigterm(reactor: &mut Reactor) -> bool {
    let (proto, _events) = Recorder::new();
    listen_loopback(reactor, proto);
    reactor.call_later(Duration::from_millis(10), |_| {
        signal_hook::low_level::raise(libc::SIGTERM).expect("raise");
    });
    let by_timer = Rc::new(Cell::new(false));
    let stopper = {
        let by_timer = Rc::clone(&by_timer);
        reactor.call_later(Duration::from_millis(50), move |r| {
            by_timer.set(true);
            r.stop();
        })
    };
    let watchdog = reactor.call_later(DEADLINE, |r| r.stop());
    reactor.run().expect("run");
    reactor.cancel(stopper);
    reactor.cancel(watchdog);
    by_timer.get()
}

/// With handling off, twine installs nothing: the program's own SIGTERM handler sees the
/// signal, during and after run(), and the process lives on (in a child).
#[test]
fn with_handling_off_the_programs_own_sigterm_handler_works() {
    let (status, stdout, stderr) = run_child(OWN_HANDLER_OFF_TEST);
    assert!(status.success(), "{status:?}\n{stdout}\n{stderr}");
    assert!(
        stdout.contains("child: survived SIGTERM"),
        "{stdout}\n{stderr}"
    );
}

/// Child only: registers a signal-hook flag for SIGTERM, runs with handling off.
#[test]
#[ignore = "run as a child process by with_handling_off_the_programs_own_sigterm_handler_works"]
fn child_handles_sigterm_itself_with_twine_handling_off() {
    if !is_child() {
        return;
    }
    init_logging();
    let seen = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(libc::SIGTERM, Arc::clone(&seen)).expect("register the flag");
    let mut reactor = Reactor::new().expect("new reactor");
    reactor.set_handle_signals(false);
    assert!(
        run_raising_sigterm(&mut reactor),
        "SIGTERM stopped run() with handling off"
    );
    assert!(
        seen.swap(false, Ordering::SeqCst),
        "the program's handler missed SIGTERM"
    );
    assert!(logs_containing("received SIGTERM").is_empty());
    signal_hook::low_level::raise(libc::SIGTERM).expect("raise");
    // raise delivers before it returns: still here means twine's action did not end us.
    assert!(
        seen.load(Ordering::SeqCst),
        "the program's handler missed SIGTERM"
    );
    println!("child: survived SIGTERM");
}

/// What the docs of `set_handle_signals` say happens with handling on: the program's own
/// handler runs too, but once no reactor runs a SIGTERM ends the process (in a child).
#[test]
fn with_handling_on_sigterm_ends_the_process_between_runs_despite_the_programs_handler() {
    let (status, stdout, stderr) = run_child(OWN_HANDLER_ON_TEST);
    assert!(
        stdout.contains("child: raising SIGTERM after run"),
        "{status:?}\n{stdout}\n{stderr}"
    );
    assert_eq!(
        status.signal(),
        Some(libc::SIGTERM),
        "{status:?}\n{stdout}\n{stderr}"
    );
}

/// Child only: registers a signal-hook flag for SIGTERM, runs with handling on.
#[test]
#[ignore = "run as a child process by with_handling_on_sigterm_ends_the_process_between_runs_despite_the_programs_handler"]
fn child_handles_sigterm_itself_with_twine_handling_on() {
    if !is_child() {
        return;
    }
    let seen = Arc::new(AtomicBool::new(false));
    signal_hook::flag::register(libc::SIGTERM, Arc::clone(&seen)).expect("register the flag");
    let mut reactor = Reactor::new().expect("new reactor");
    assert!(
        !run_raising_sigterm(&mut reactor),
        "SIGTERM did not stop run() with handling on"
    );
    assert!(
        seen.load(Ordering::SeqCst),
        "the program's handler missed SIGTERM"
    );
    println!("child: raising SIGTERM after run");
    signal_hook::low_level::raise(libc::SIGTERM).expect("raise");
    println!("child: survived SIGTERM");
}
