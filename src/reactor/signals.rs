//! SIGINT and SIGTERM while `Reactor::run` runs: caught through signal-hook's self-pipe,
//! registered with the reactor's poll.
//!
//! A reactor makes its pipe (a `Signals`) the first time it runs with signal handling on
//! and keeps it, registered with its poll, until it is dropped: a pipe per `run` would cost
//! two descriptors per call, and a process at its descriptor limit could not run again.
//! Between runs the pipe still receives the process's signals; each `run` discards them as
//! it starts (they came while this reactor was not running: another reactor handled them,
//! or none ran and the default effect applied).
//!
//! signal-hook keeps its process-wide handler installed for good, which would leave the
//! signals ignored outside `run`. So the first time signals are handled, an action is added
//! that emulates the default (ending the process) whenever no reactor is running. A signal
//! the process ignored before twine first looked is left alone altogether.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, OnceLock, PoisonError};

use log::{debug, info, warn};
use mio::{Interest, Registry};
use signal_hook_mio::v1_0::Signals;

use crate::error::{Error, Result};
use crate::reactor::token;
use crate::sys;

/// One reactor's signal pipe, and whether that reactor is inside `run` handling signals.
pub(crate) struct SignalWatch {
    /// Made by the first `run` with handling on, registered under [`token::SIGNALS`].
    signals: Option<Signals>,
    /// Counted in [`RUNNING`]: signals arriving now stop the reactor.
    active: bool,
}

impl SignalWatch {
    /// No pipe yet: nothing is installed until [`start`](Self::start).
    pub(crate) const fn new() -> SignalWatch {
        SignalWatch {
            signals: None,
            active: false,
        }
    }

    /// Starts catching the signals for one `run`, making the pipe on first use. Does
    /// nothing if the process ignores both.
    pub(crate) fn start(&mut self, registry: &Registry) -> Result<()> {
        let wanted = handled_signals();
        if wanted.is_empty() {
            debug!("SIGINT and SIGTERM were ignored when the process started: not handled");
            return Ok(());
        }
        let signals = match &mut self.signals {
            Some(signals) => signals,
            None => self.signals.insert(open(registry, wanted)?),
        };
        // Drained before this reactor counts as running: a signal from before this run is
        // not for it, and one arriving after the drain either ends the process (no reactor
        // runs yet) or stays in the pipe and stops this run on its first turn.
        for _signal in signals.pending() {}
        if !self.active {
            running_changed(1);
            self.active = true;
        }
        Ok(())
    }

    /// Stops catching for this reactor; the signals have their default effect again once
    /// no reactor runs. The pipe stays open and registered for the next `run`.
    pub(crate) fn stop(&mut self) {
        if std::mem::take(&mut self.active) {
            running_changed(-1);
        }
    }

    /// Drains the pipe; whether a signal asked the reactor to stop (never outside `run`).
    pub(crate) fn stop_asked(&mut self) -> bool {
        let Some(signals) = self.signals.as_mut() else {
            return false;
        };
        let mut asked = false;
        for signal in signals.pending() {
            if !self.active {
                continue;
            }
            let name = if signal == libc::SIGINT {
                "SIGINT"
            } else {
                "SIGTERM"
            };
            info!("received {name}, stopping");
            asked = true;
        }
        asked
    }
}

impl Drop for SignalWatch {
    fn drop(&mut self) {
        // Dropping the `Signals` removes its signal-hook actions and closes the pipe.
        self.stop();
    }
}

/// Makes the pipe for `wanted` and registers it with the reactor's poll.
fn open(registry: &Registry, wanted: &[libc::c_int]) -> Result<Signals> {
    install_default_fallback(wanted);
    let io = |context| move |source| Error::Io { context, source };
    let mut signals = Signals::new(wanted).map_err(io("installing SIGINT/SIGTERM handlers"))?;
    registry
        .register(&mut signals, token::SIGNALS, Interest::READABLE)
        .map_err(io("registering the signal pipe"))?;
    Ok(signals)
}

/// Reactors inside `run` with signal handling on. Changed only together with
/// [`default_on_signal`], under this lock: a reactor stopping in one thread while another
/// starts in a second must never leave the flag saying that none runs while one does.
static RUNNING: Mutex<usize> = Mutex::new(0);

/// Counts a reactor in (`1`) or out (`-1`) and sets the default-emulation flag to match.
fn running_changed(by: isize) {
    // Nothing panics while the lock is held; a poisoned count is still the right count.
    let mut running = RUNNING.lock().unwrap_or_else(PoisonError::into_inner);
    *running = running.saturating_add_signed(by);
    default_on_signal().store(*running == 0, Ordering::SeqCst);
}

/// True while no reactor handles signals: SIGINT/SIGTERM then act as if no handler were
/// installed (signal-hook keeps its handler after a `Signals` is dropped). Read by the
/// signal handler, so an atomic rather than the count's lock.
fn default_on_signal() -> &'static Arc<AtomicBool> {
    static FLAG: OnceLock<Arc<AtomicBool>> = OnceLock::new();
    FLAG.get_or_init(|| Arc::new(AtomicBool::new(true)))
}

/// SIGINT and SIGTERM, less those the process ignored before twine first looked (a
/// background job's SIGINT, say): those stay ignored, as Twisted leaves them.
fn handled_signals() -> &'static [libc::c_int] {
    static HANDLED: OnceLock<Vec<libc::c_int>> = OnceLock::new();
    HANDLED.get_or_init(|| {
        [libc::SIGINT, libc::SIGTERM]
            .into_iter()
            .filter(|s| !sys::signal_ignored(*s))
            .collect()
    })
}

/// Once per process: for each of `signals`, a signal-hook action that emulates the default
/// whenever [`default_on_signal`] is set.
fn install_default_fallback(signals: &[libc::c_int]) {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        for &signal in signals {
            let flag = Arc::clone(default_on_signal());
            if let Err(e) = signal_hook::flag::register_conditional_default(signal, flag) {
                warn!("signal {signal}: default action fallback not installed: {e}");
            }
        }
    });
}
