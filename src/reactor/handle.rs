//! `ReactorHandle`: the one way into a reactor from another thread.
//!
//! Calls from other threads wait in a bounded FIFO queue behind a mutex. A caller wakes
//! the reactor (through its `mio::Waker`) only when it finds the queue empty: a queue that
//! is not empty already has a wake-up on its way, or a reactor that will come back to it
//! without one (see [`Shared::take_calls`]). A stop is a flag beside the queue, not a
//! queued call, so that neither the bound nor the per-turn budget can hold it back.

use std::collections::VecDeque;
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};

use mio::Waker;

use crate::error::{Error, Result};
use crate::reactor::Reactor;

/// A closure queued for the reactor's thread.
pub(crate) type ThreadCall = Box<dyn FnOnce(&mut Reactor) + Send>;

/// The queued calls and their bound, under one lock.
struct CallQueue {
    calls: VecDeque<ThreadCall>,
    limit: usize,
}

/// What the reactor and its handles share.
pub(crate) struct Shared {
    queue: Mutex<CallQueue>,
    waker: Waker,
    pub(crate) alive: AtomicBool,
    /// A stop asked for through a handle and not yet seen by the reactor.
    stop: AtomicBool,
}

impl Shared {
    pub(crate) fn new(waker: Waker) -> Self {
        Shared {
            queue: Mutex::new(CallQueue {
                calls: VecDeque::new(),
                limit: ReactorHandle::DEFAULT_CALL_LIMIT,
            }),
            waker,
            alive: AtomicBool::new(true),
            stop: AtomicBool::new(false),
        }
    }

    fn lock(&self) -> MutexGuard<'_, CallQueue> {
        self.queue.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sets the bound on queued calls. Calls already queued beyond it stay queued.
    pub(crate) fn set_limit(&self, limit: usize) {
        self.lock().limit = limit;
    }

    /// Moves the first `max` queued calls (all of them if fewer) into `into`, in order,
    /// and returns whether any were left behind.
    ///
    /// Left behind, they get no wake-up from the callers (they find the queue not
    /// empty), so a reactor told `true` must come back to the queue by itself. Told
    /// `false`, it may sleep: the queue was empty when the lock was released, and the
    /// next caller wakes it.
    pub(crate) fn take_calls(&self, into: &mut Vec<ThreadCall>, max: usize) -> bool {
        let mut queue = self.lock();
        let n = queue.calls.len().min(max);
        into.extend(queue.calls.drain(..n));
        !queue.calls.is_empty()
    }

    /// The reactor is gone: no call is queued any more, and those waiting are dropped
    /// (after the lock is released: their Drop may use a handle).
    pub(crate) fn close(&self) {
        let calls = {
            let mut queue = self.lock();
            self.alive.store(false, Ordering::Release);
            std::mem::take(&mut queue.calls)
        };
        drop(calls);
    }

    /// Whether a stop was asked for through a handle since the last look; clears it.
    ///
    /// Read before taking the queued calls: a call queued before the stop is then in
    /// the queue already (the caller's push happens before its store of the flag).
    pub(crate) fn take_stop(&self) -> bool {
        self.stop.swap(false, Ordering::AcqRel)
    }

    pub(crate) fn wake(&self) -> Result<()> {
        self.waker.wake().map_err(|source| Error::Io {
            context: "waking the reactor",
            source,
        })
    }
}

/// A `Send + Sync + Clone` handle to a [`Reactor`], for other threads: queue a closure
/// to run on the reactor's thread, or stop it.
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
    /// The most cross-thread calls one reactor turn runs. The rest wait for the next
    /// turn, which does not sleep, so that a flood of calls cannot starve the ports and
    /// timers (they get their share of every turn).
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(twine::ReactorHandle::CALLS_PER_TURN, 1024);
    /// ```
    pub const CALLS_PER_TURN: usize = 1024;

    /// How many calls may wait in the queue unless
    /// [`Reactor::set_thread_call_limit`] says otherwise.
    ///
    /// # Examples
    ///
    /// ```
    /// assert_eq!(twine::ReactorHandle::DEFAULT_CALL_LIMIT, 65_536);
    /// ```
    pub const DEFAULT_CALL_LIMIT: usize = 65_536;

    /// Runs `f` on the reactor's thread, on a later turn, with the reactor itself
    /// (Twisted's `callFromThread`).
    ///
    /// Calls run in the order they were queued (from one thread, in the order they were
    /// made). A turn runs the calls that were queued when it started on them, at most
    /// [`CALLS_PER_TURN`](Self::CALLS_PER_TURN) of them; the rest run on the next turns,
    /// which do not sleep, with the reactor's ports and timers served in between. A call
    /// queued by a running call runs on a later turn. A panic in `f` is caught and
    /// logged; the calls after it still run.
    ///
    /// At most [`DEFAULT_CALL_LIMIT`](Self::DEFAULT_CALL_LIMIT) calls wait at a time
    /// (see [`Reactor::set_thread_call_limit`]): a call that finds the queue at its bound
    /// is not queued, `f` is dropped on the caller's thread before this returns, and the
    /// caller gets [`Error::CallQueueFull`] (back off and try again, or shed the work).
    /// [`stop`](Self::stop) is never refused for a full queue.
    ///
    /// Only a call that finds the queue empty wakes the reactor; a reactor that is not
    /// running keeps the calls queued for its next turn.
    ///
    /// # Errors
    ///
    /// [`Error::ReactorGone`] if the reactor was dropped; [`Error::CallQueueFull`] if the
    /// queue is at its bound; [`Error::Io`] if waking the reactor failed (the call stays
    /// queued and runs when the reactor next looks at its queue).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let handle = reactor.handle();
    /// let worker = std::thread::spawn(move || handle.call_from_thread(|r| r.stop()));
    /// reactor.run()?;
    /// assert!(worker.join().expect("the worker").is_ok());
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "callFromThread")]
    pub fn call_from_thread(&self, f: impl FnOnce(&mut Reactor) + Send + 'static) -> Result<()> {
        if !self.shared.alive.load(Ordering::Acquire) {
            return Err(Error::ReactorGone);
        }
        // Boxed before taking the lock, to keep the allocation out of it.
        let call: ThreadCall = Box::new(f);
        let was_empty = {
            let mut queue = self.shared.lock();
            // Checked again under the lock: a reactor being dropped empties the queue
            // under it, and nothing may be queued after that.
            if !self.shared.alive.load(Ordering::Acquire) {
                drop(queue);
                drop(call);
                return Err(Error::ReactorGone);
            }
            if queue.calls.len() >= queue.limit {
                let limit = queue.limit;
                // Dropped after the lock is released: the closure's own Drop may use a
                // handle to this reactor.
                drop(queue);
                drop(call);
                return Err(Error::CallQueueFull { limit });
            }
            let was_empty = queue.calls.is_empty();
            queue.calls.push_back(call);
            was_empty
        };
        if was_empty {
            self.shared.wake()
        } else {
            Ok(())
        }
    }

    /// Asks the reactor to stop, as [`Reactor::stop`] does from its own thread: its next
    /// turn sees the request, runs every call queued by then (past the per-turn budget),
    /// and stops. So `call_from_thread(f)` then `stop()` runs `f` first, as in Twisted.
    ///
    /// A stop is a flag, not a queued call: a full queue does not refuse it. Asked for
    /// while the reactor is not running (between two [`Reactor::run`]s, say), it stays
    /// asked for, and the next turn (of `run` or [`Reactor::iterate`]) ends in it: the
    /// next `run` returns at once.
    ///
    /// # Errors
    ///
    /// [`Error::ReactorGone`] if the reactor was dropped; [`Error::Io`] if waking it
    /// failed (the stop stays asked for and is seen when the reactor next wakes).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let handle = reactor.handle();
    /// std::thread::spawn(move || handle.stop());
    /// reactor.run()?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn stop(&self) -> Result<()> {
        if !self.shared.alive.load(Ordering::Acquire) {
            return Err(Error::ReactorGone);
        }
        self.shared.stop.store(true, Ordering::Release);
        self.shared.wake()
    }

    /// Whether the reactor still exists.
    ///
    /// # Examples
    ///
    /// ```
    /// let reactor = twine::Reactor::new()?;
    /// let handle = reactor.handle();
    /// assert!(handle.is_alive());
    /// drop(reactor);
    /// assert!(!handle.is_alive());
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn is_alive(&self) -> bool {
        self.shared.alive.load(Ordering::Acquire)
    }

    /// How many calls wait in the queue now: at most the bound of
    /// [`Reactor::set_thread_call_limit`], unless it was lowered while more were waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// let reactor = twine::Reactor::new()?;
    /// let handle = reactor.handle();
    /// let _ = handle.call_from_thread(|_| {});
    /// assert_eq!(handle.queued_calls(), 1);
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn queued_calls(&self) -> usize {
        self.shared.lock().calls.len()
    }
}
