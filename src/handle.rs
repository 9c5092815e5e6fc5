//! `ReactorHandle`: the one way into a reactor from another thread.

use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use mio::Waker;

use crate::error::{Error, Result};
use crate::reactor::Reactor;

/// A closure queued for the reactor's thread.
pub(crate) type ThreadCall = Box<dyn FnOnce(&mut Reactor) + Send>;

/// What the reactor and its handles share.
pub(crate) struct Shared {
    pub(crate) queue: Mutex<Vec<ThreadCall>>,
    pub(crate) waker: Waker,
    pub(crate) alive: AtomicBool,
}

impl Shared {
    pub(crate) fn new(waker: Waker) -> Self {
        Shared {
            queue: Mutex::new(Vec::new()),
            waker,
            alive: AtomicBool::new(true),
        }
    }

    /// Takes every queued call; `into` is reused to avoid an allocation per wake-up.
    pub(crate) fn drain_into(&self, into: &mut Vec<ThreadCall>) {
        let mut queue = self.queue.lock().unwrap_or_else(PoisonError::into_inner);
        std::mem::swap(&mut *queue, into);
    }
}

/// A `Send + Sync + Clone` handle to a [`Reactor`], for other threads: queue a closure
/// to run on the reactor's thread, or stop it. Each call wakes the reactor at once.
///
/// # Examples
///
/// ```
/// let mut reactor = twine::Reactor::new()?;
/// let handle = reactor.handle();
/// std::thread::spawn(move || {
///     handle.call_from_thread(|r| r.stop()).expect("reactor alive");
/// });
/// reactor.run()?; // returns once the other thread's call ran
/// # Ok::<(), twine::Error>(())
/// ```
#[derive(Clone)]
pub struct ReactorHandle {
    pub(crate) shared: Arc<Shared>,
}

impl fmt::Debug for ReactorHandle {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ReactorHandle")
            .field("alive", &self.shared.alive.load(Ordering::Relaxed))
            .finish()
    }
}

impl ReactorHandle {
    /// Runs `f` on the reactor's thread, on its next turn, with the reactor itself.
    /// Calls run in the order they were made. A panic in `f` is caught and logged.
    ///
    /// # Errors
    ///
    /// [`Error::ReactorGone`] if the reactor was dropped; [`Error::Io`] if waking it failed.
    #[doc(alias = "callFromThread")]
    pub fn call_from_thread(&self, f: impl FnOnce(&mut Reactor) + Send + 'static) -> Result<()> {
        if !self.shared.alive.load(Ordering::Acquire) {
            return Err(Error::ReactorGone);
        }
        self.shared
            .queue
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Box::new(f));
        self.shared.waker.wake().map_err(|source| Error::Io {
            context: "waking the reactor",
            source,
        })
    }

    /// Asks the reactor to stop, as [`Reactor::stop`] does from its own thread.
    ///
    /// # Errors
    ///
    /// As [`call_from_thread`](Self::call_from_thread).
    pub fn stop(&self) -> Result<()> {
        self.call_from_thread(Reactor::stop)
    }

    /// Whether the reactor still exists.
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }
}
