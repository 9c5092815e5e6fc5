//! The timer queue: a binary heap of (deadline, sequence, slot) over a slab of entries.
//!
//! Pure: every call that needs the time takes `now`, so tests drive it with made-up
//! instants (as Twisted's `task.Clock` does). The reactor owns one queue and decides what
//! an entry's action is.
//!
//! - Cancelling removes the entry at once; its heap item goes stale and is skipped when it
//!   surfaces. When stale items outnumber live ones the heap is rebuilt, so a queue where
//!   most timers get cancelled does not grow without bound.
//! - Resetting gives the entry a new sequence number and pushes a new heap item; the old
//!   one goes stale.
//! - Items are ordered by deadline, then by sequence number: timers due at the same instant
//!   fire in the order they were scheduled (or last reset).
//! - [`TimerQueue::pop_due`] takes a sequence *boundary*: timers scheduled after the turn
//!   began wait for the next turn even if already due, so a callback that schedules "now"
//!   cannot starve the loop.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::time::{Duration, Instant};

use slab::Slab;

/// A handle to a scheduled call: Twisted's `DelayedCall`, or a repeating call (Twisted's
/// `LoopingCall`).
///
/// It is a plain key: pass it to [`Reactor::cancel`](crate::Reactor::cancel),
/// [`Reactor::reset`](crate::Reactor::reset) or
/// [`Reactor::is_pending`](crate::Reactor::is_pending) (the same methods exist on
/// [`UdpTransport`](crate::UdpTransport)). A handle whose call has fired, or was cancelled,
/// stays harmless: it is never mistaken for a later call.
///
/// # Examples
///
/// ```
/// let mut reactor = twine::Reactor::new()?;
/// let call: twine::DelayedCall = reactor.call_later(std::time::Duration::from_secs(5), |_| {});
/// assert!(reactor.is_pending(call));
/// reactor.cancel(call);
/// # Ok::<(), twine::Error>(())
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DelayedCall {
    key: usize,
    id: u64,
}

#[derive(Debug)]
struct Entry<A> {
    id: u64,
    seq: u64,
    deadline: Instant,
    interval: Option<Duration>,
    /// `None` while the action runs.
    action: Option<A>,
}

#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Item {
    deadline: Instant,
    seq: u64,
    key: usize,
}

/// A due timer taken out of the queue; give it back with [`TimerQueue::finish`].
#[derive(Debug)]
pub(crate) struct Due<A> {
    pub(crate) call: DelayedCall,
    pub(crate) action: A,
    seq: u64,
    deadline: Instant,
}

/// The queue. `A` is what the reactor runs when an entry is due.
#[derive(Debug)]
pub(crate) struct TimerQueue<A> {
    entries: Slab<Entry<A>>,
    heap: BinaryHeap<Reverse<Item>>,
    next_seq: u64,
    next_id: u64,
}

impl<A> Default for TimerQueue<A> {
    fn default() -> Self {
        TimerQueue {
            entries: Slab::new(),
            heap: BinaryHeap::new(),
            next_seq: 0,
            next_id: 0,
        }
    }
}

impl<A> TimerQueue<A> {
    /// Schedules `action` at `now + delay`, repeating every `interval` if given.
    pub(crate) fn schedule(
        &mut self,
        now: Instant,
        delay: Duration,
        interval: Option<Duration>,
        action: A,
    ) -> DelayedCall {
        let id = self.next_id;
        self.next_id += 1;
        let deadline = deadline_after(now, delay);
        let seq = self.take_seq();
        let key = self.entries.insert(Entry {
            id,
            seq,
            deadline,
            interval,
            action: Some(action),
        });
        self.heap.push(Reverse(Item { deadline, seq, key }));
        DelayedCall { key, id }
    }

    /// Cancels the call. Returns whether it was pending. A repeating call may cancel itself
    /// from its own action.
    pub(crate) fn cancel(&mut self, call: DelayedCall) -> bool {
        if !self.is_pending(call) {
            return false;
        }
        self.entries.remove(call.key);
        self.compact_if_stale();
        true
    }

    /// Moves a pending call's deadline to `now + delay` (Twisted's `DelayedCall.reset`).
    /// Returns whether it was pending.
    pub(crate) fn reset(&mut self, now: Instant, call: DelayedCall, delay: Duration) -> bool {
        if !self.is_pending(call) {
            return false;
        }
        let seq = self.take_seq();
        let deadline = deadline_after(now, delay);
        let entry = &mut self.entries[call.key];
        entry.seq = seq;
        entry.deadline = deadline;
        self.heap.push(Reverse(Item {
            deadline,
            seq,
            key: call.key,
        }));
        self.compact_if_stale();
        true
    }

    /// Whether the call will still fire: a one-shot call stops being pending when it starts
    /// to run; a repeating one stays pending until cancelled.
    pub(crate) fn is_pending(&self, call: DelayedCall) -> bool {
        match self.entries.get(call.key) {
            Some(e) if e.id == call.id => e.action.is_some() || e.interval.is_some(),
            _ => false,
        }
    }

    /// The action of a pending call, unless it is running right now.
    pub(crate) fn action(&self, call: DelayedCall) -> Option<&A> {
        match self.entries.get(call.key) {
            Some(e) if e.id == call.id => e.action.as_ref(),
            _ => None,
        }
    }

    /// The earliest deadline of a live timer.
    pub(crate) fn next_deadline(&mut self) -> Option<Instant> {
        self.drop_stale_top();
        self.heap.peek().map(|Reverse(item)| item.deadline)
    }

    /// The earliest deadline of a live timer other than those that repeat with a zero
    /// interval (they run once per turn whatever the time): what a manual clock may jump
    /// to. Scans every timer; used by simulations only.
    pub(crate) fn next_deadline_not_every_turn(&self) -> Option<Instant> {
        self.entries
            .iter()
            .filter(|(_, e)| e.interval != Some(Duration::ZERO))
            .map(|(_, e)| e.deadline)
            .min()
    }

    /// The sequence number the next schedule or reset will get: pass it to
    /// [`pop_due`](Self::pop_due) as the boundary of this turn.
    pub(crate) fn boundary(&self) -> u64 {
        self.next_seq
    }

    /// Takes out the earliest timer that is due at `now` and was scheduled before
    /// `boundary`.
    pub(crate) fn pop_due(&mut self, now: Instant, boundary: u64) -> Option<Due<A>> {
        self.drop_stale_top();
        let Reverse(top) = self.heap.peek()?;
        if top.deadline > now || top.seq >= boundary {
            return None;
        }
        let Reverse(item) = self.heap.pop()?;
        let entry = &mut self.entries[item.key];
        let action = entry.action.take()?;
        Some(Due {
            call: DelayedCall {
                key: item.key,
                id: entry.id,
            },
            action,
            seq: item.seq,
            deadline: item.deadline,
        })
    }

    /// Gives back a fired timer's action: a repeating call is scheduled again at its next
    /// multiple of the interval after `now` (missed runs are skipped, as in Twisted's
    /// `LoopingCall`), unless it was cancelled or reset while it ran; a one-shot call is
    /// removed unless it was reset while it ran.
    pub(crate) fn finish(&mut self, now: Instant, due: Due<A>) {
        let Due {
            call,
            action,
            seq,
            deadline,
        } = due;
        let Some(entry) = self.entries.get_mut(call.key) else {
            return;
        };
        if entry.id != call.id {
            return;
        }
        let reset_while_running = entry.seq != seq;
        match entry.interval {
            None if !reset_while_running => {
                self.entries.remove(call.key);
            }
            None => entry.action = Some(action),
            Some(interval) => {
                entry.action = Some(action);
                if !reset_while_running {
                    let next = next_tick(deadline, interval, now);
                    let seq = self.take_seq();
                    let entry = &mut self.entries[call.key];
                    entry.seq = seq;
                    entry.deadline = next;
                    self.heap.push(Reverse(Item {
                        deadline: next,
                        seq,
                        key: call.key,
                    }));
                }
            }
        }
    }

    /// The number of live timers.
    pub(crate) fn len(&self) -> usize {
        self.entries.len()
    }

    fn take_seq(&mut self) -> u64 {
        let seq = self.next_seq;
        self.next_seq += 1;
        seq
    }

    fn is_live(&self, item: &Item) -> bool {
        matches!(self.entries.get(item.key), Some(e) if e.seq == item.seq)
    }

    fn drop_stale_top(&mut self) {
        while let Some(Reverse(top)) = self.heap.peek() {
            if self.is_live(top) {
                return;
            }
            self.heap.pop();
        }
    }

    fn compact_if_stale(&mut self) {
        let heap_len = self.heap.len();
        if heap_len > 64 && heap_len > 2 * self.entries.len() {
            let items = std::mem::take(&mut self.heap).into_vec();
            let live: Vec<_> = items.into_iter().filter(|r| self.is_live(&r.0)).collect();
            self.heap = BinaryHeap::from(live);
        }
    }
}

/// `now + delay`, saturating at the latest `Instant` there is instead of overflowing, so
/// that a longer delay never ends before a shorter one.
pub(crate) fn deadline_after(now: Instant, delay: Duration) -> Instant {
    if let Some(at) = now.checked_add(delay) {
        return at;
    }
    // The longest delay that fits, within a nanosecond: a binary search between what fits
    // (zero always does) and what does not (about 94 steps for `Duration::MAX`).
    let (mut fits, mut over) = (Duration::ZERO, delay);
    while over - fits > Duration::from_nanos(1) {
        let mid = fits + (over - fits) / 2;
        if now.checked_add(mid).is_some() {
            fits = mid;
        } else {
            over = mid;
        }
    }
    now.checked_add(fits).unwrap_or(now)
}

/// The first `deadline + k * interval` (k >= 1) that is after `now`.
fn next_tick(deadline: Instant, interval: Duration, now: Instant) -> Instant {
    if interval.is_zero() {
        // Every turn, queued behind whatever else is due by now (keeping its first
        // deadline would put it ahead of every later timer, forever).
        return now.max(deadline);
    }
    let next = deadline_after(deadline, interval);
    if next > now {
        return next;
    }
    let behind = now.duration_since(deadline).as_nanos();
    let step = interval.as_nanos();
    let skipped = behind / step + 1;
    let ahead = u64::try_from(skipped.saturating_mul(step)).unwrap_or(u64::MAX);
    deadline_after(deadline, Duration::from_nanos(ahead))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    /// Past the last `Instant`, a deadline saturates there: never a panic, and a longer
    /// delay never ends before a shorter one.
    #[test]
    fn deadlines_saturate_at_the_last_instant_in_order() {
        let now = Instant::now();
        let end = deadline_after(now, Duration::MAX);
        assert!(end > now);
        assert_eq!(deadline_after(end, ms(1)), end, "nothing is after the end");
        assert_eq!(deadline_after(end, Duration::MAX), end);
        let year = Duration::from_secs(365 * 24 * 3600);
        let mut last = now;
        for delay in [
            ms(1),
            year,
            year * 1000,
            Duration::MAX / 4,
            Duration::MAX / 2,
        ] {
            let at = deadline_after(now, delay);
            assert!(at >= last && at <= end, "{delay:?}");
            last = at;
        }
        // Within a nanosecond of the end, from any start.
        let near = deadline_after(end - year, Duration::MAX);
        assert_eq!(near, end);
    }

    fn fire_all(q: &mut TimerQueue<&'static str>, now: Instant) -> Vec<&'static str> {
        let boundary = q.boundary();
        let mut fired = Vec::new();
        while let Some(due) = q.pop_due(now, boundary) {
            fired.push(due.action);
            q.finish(now, due);
        }
        fired
    }

    #[test]
    fn fires_in_deadline_order_then_schedule_order() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        q.schedule(t0, ms(20), None, "c");
        q.schedule(t0, ms(10), None, "a");
        q.schedule(t0, ms(10), None, "b");
        assert_eq!(fire_all(&mut q, t0 + ms(5)), Vec::<&str>::new());
        assert_eq!(fire_all(&mut q, t0 + ms(20)), vec!["a", "b", "c"]);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn never_fires_early() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        q.schedule(t0, ms(10), None, "x");
        assert!(fire_all(&mut q, t0 + ms(10) - Duration::from_nanos(1)).is_empty());
        assert_eq!(fire_all(&mut q, t0 + ms(10)), vec!["x"]);
    }

    #[test]
    fn cancel_and_reset() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let a = q.schedule(t0, ms(10), None, "a");
        let b = q.schedule(t0, ms(10), None, "b");
        assert!(q.cancel(a));
        assert!(!q.cancel(a), "second cancel reports not pending");
        assert!(q.reset(t0, b, ms(30)));
        assert!(fire_all(&mut q, t0 + ms(20)).is_empty());
        assert!(q.is_pending(b));
        assert_eq!(fire_all(&mut q, t0 + ms(30)), vec!["b"]);
        assert!(!q.is_pending(b));
        assert!(!q.reset(t0, b, ms(1)), "a fired call cannot be reset");
    }

    #[test]
    fn repeating_call_skips_missed_ticks() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let r = q.schedule(t0, ms(10), Some(ms(10)), "r");
        assert_eq!(fire_all(&mut q, t0 + ms(35)), vec!["r"]);
        assert!(q.is_pending(r));
        assert_eq!(q.next_deadline(), Some(t0 + ms(40)));
        assert!(q.cancel(r));
        assert_eq!(q.next_deadline(), None);
    }

    #[test]
    fn scheduled_during_turn_waits_for_next_turn() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        q.schedule(t0, ms(0), None, "first");
        let boundary = q.boundary();
        let due = q.pop_due(t0, boundary).expect("due");
        q.schedule(t0, ms(0), None, "second");
        q.finish(t0, due);
        assert!(q.pop_due(t0, boundary).is_none());
        assert_eq!(fire_all(&mut q, t0), vec!["second"]);
    }

    #[test]
    fn stale_handle_does_not_touch_reused_slot() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let old = q.schedule(t0, ms(1), None, "old");
        assert_eq!(fire_all(&mut q, t0 + ms(1)), vec!["old"]);
        let new = q.schedule(t0, ms(5), None, "new");
        assert!(!q.cancel(old));
        assert!(q.is_pending(new));
    }

    #[test]
    fn repeated_reset_keeps_heap_bounded() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        q.schedule(t0, ms(1), None, "early");
        let idle = q.schedule(t0, ms(1000), None, "idle");
        for i in 0..100_000 {
            assert!(q.reset(t0 + ms(i), idle, ms(1000)));
        }
        assert!(q.heap.len() <= 2 * q.len() + 64, "{}", q.heap.len());
        assert_eq!(fire_all(&mut q, t0 + ms(1)), vec!["early"]);
    }

    #[test]
    fn mass_cancel_compacts_heap() {
        let t0 = Instant::now();
        let mut q = TimerQueue::default();
        let calls: Vec<_> = (0..10_000)
            .map(|i| q.schedule(t0, ms(i), None, "t"))
            .collect();
        for c in calls.iter().step_by(2) {
            assert!(q.cancel(*c));
        }
        assert_eq!(q.len(), 5_000);
        assert!(q.heap.len() <= 2 * q.len() + 64);
        assert_eq!(fire_all(&mut q, t0 + ms(10_000)).len(), 5_000);
    }
}
