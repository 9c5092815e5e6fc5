//! SIGINT and SIGTERM while `Reactor::run` runs: caught through signal-hook's self-pipe,
//! registered with the reactor's poll, and given back afterwards.
//!
//! signal-hook keeps its handler installed after a `Signals` is dropped, which would leave
//! the signals ignored once `run` returns. So the first time signals are handled, an action
//! is added that emulates the default (ending the process) whenever no reactor is running.
//! A signal the process ignored before twine first looked is left alone altogether.

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use log::{debug, info, warn};
use mio::{Interest, Registry};
use signal_hook_mio::v1_0::Signals;

use crate::error::{Error, Result};
use crate::sys;
use crate::token;

/// The signal pipe of one running reactor.
pub(crate) struct SignalWatch {
    signals: Signals,
}

impl SignalWatch {
    /// Starts catching the signals, registered under [`token::SIGNALS`]; `None` if the
    /// process ignores both.
    pub(crate) fn install(registry: &Registry) -> Result<Option<SignalWatch>> {
        let wanted = handled_signals();
        if wanted.is_empty() {
            debug!("SIGINT and SIGTERM were ignored when the process started: not handled");
            return Ok(None);
        }
        install_default_fallback(wanted);
        let io = |context| move |source| Error::Io { context, source };
        let mut signals = Signals::new(wanted).map_err(io("installing SIGINT/SIGTERM handlers"))?;
        registry
            .register(&mut signals, token::SIGNALS, Interest::READABLE)
            .map_err(io("registering the signal pipe"))?;
        RUNNING.fetch_add(1, Ordering::SeqCst);
        default_on_signal().store(false, Ordering::SeqCst);
        Ok(Some(SignalWatch { signals }))
    }

    /// Stops catching; the signals have their default effect again once no reactor runs.
    pub(crate) fn remove(mut self, registry: &Registry) {
        let _ = registry.deregister(&mut self.signals);
        if RUNNING.fetch_sub(1, Ordering::SeqCst) == 1 {
            default_on_signal().store(true, Ordering::SeqCst);
        }
    }

    /// Drains the pipe; whether a signal asked the reactor to stop.
    pub(crate) fn stop_asked(&mut self) -> bool {
        let mut asked = false;
        for signal in self.signals.pending() {
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

/// Reactors inside `run` with signal handling on.
static RUNNING: AtomicUsize = AtomicUsize::new(0);

/// True while no reactor handles signals: SIGINT/SIGTERM then act as if no handler were
/// installed (signal-hook keeps its handler after a `Signals` is dropped).
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
