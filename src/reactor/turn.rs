//! Running: `run`, `iterate`, `run_until`, and one turn (poll, dispatch, left-over
//! ports, timers, cross-thread calls, stop).

use super::*;

impl Reactor {
    /// Asks the reactor to stop: at the end of the current turn every port is closed
    /// (each `stop_protocol` runs) and [`run`](Self::run) returns. Timers stay scheduled.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// // Stops itself a tenth of a second in.
    /// reactor.call_later(std::time::Duration::from_millis(100), |r| r.stop());
    /// reactor.run()?;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn stop(&mut self) {
        self.stop_requested = true;
        self.stops_asked += 1;
    }

    /// Whether a stop was asked for and has not happened yet.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// reactor.stop();
    /// assert!(reactor.is_stopping());
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn is_stopping(&self) -> bool {
        self.stop_requested
    }

    /// Runs turns until [`stop`](Self::stop) (from a callback, a timer or a
    /// [`ReactorHandle`]) or, unless turned off with
    /// [`set_handle_signals`](Self::set_handle_signals), SIGINT or SIGTERM. Then every
    /// port's `stop_protocol` runs, and `run` returns. After it returns, and once no other
    /// reactor of the process is inside `run`, the signals have their default effect again
    /// (see [`set_handle_signals`](Self::set_handle_signals)).
    ///
    /// A stop asked for while no turn runs (through [`ReactorHandle::stop`] between two
    /// `run`s, or [`stop`](Self::stop) before the first) is kept, as Twisted keeps such a
    /// stop queued: in its first turn the next `run` runs the cross-thread calls queued
    /// by then, closes the ports and returns.
    ///
    /// # Errors
    ///
    /// [`Error::Reentrant`] if called from a callback; [`Error::Io`] if polling or
    /// installing the signal handlers fails.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// reactor.set_handle_signals(false);
    /// reactor.call_later(std::time::Duration::ZERO, |r| r.stop());
    /// reactor.run()?; // until stop(), SIGINT or SIGTERM
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn run(&mut self) -> Result<()> {
        if self.busy > 0 {
            return Err(Error::Reentrant);
        }
        if self.handle_signals {
            self.install_signals()?;
        }
        let outcome = catch_unwind(AssertUnwindSafe(|| {
            loop {
                match self.turn(None) {
                    Ok(true) => return Ok(()),
                    Ok(false) => {}
                    Err(e) => return Err(e),
                }
            }
        }));
        // Also when a panic escaped (e.g. from a protocol's Drop): the signals must not
        // stay caught by a reactor that no longer runs.
        self.remove_signals();
        outcome.unwrap_or_else(|panic| resume_unwind(panic))
    }

    /// Runs one turn, waiting at most `timeout` for something to happen (Twisted's
    /// `iterate`). Returns whether a stop happened in this turn (every port was closed).
    /// Signals are not handled here.
    ///
    /// # Errors
    ///
    /// [`Error::Reentrant`] if called from a callback; [`Error::Io`] if polling fails.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// // One turn, waiting at most 10 ms for something to happen; false: not stopped.
    /// assert!(!reactor.iterate(std::time::Duration::from_millis(10))?);
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn iterate(&mut self, timeout: Duration) -> Result<bool> {
        if self.busy > 0 {
            return Err(Error::Reentrant);
        }
        self.turn(Some(timeout))
    }

    /// Runs turns until `done` returns true or `timeout` has passed; returns the last
    /// value of `done`. Made for tests and scripts: every wait has a deadline.
    ///
    /// # Errors
    ///
    /// As [`iterate`](Self::iterate).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut reactor = twine::Reactor::new()?;
    /// let call = reactor.call_later(Duration::from_millis(5), |_| {});
    /// let fired = reactor.run_until(Duration::from_secs(5), |r| !r.is_pending(call))?;
    /// assert!(fired);
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn run_until(
        &mut self,
        timeout: Duration,
        mut done: impl FnMut(&mut Reactor) -> bool,
    ) -> Result<bool> {
        // A timeout too long for the clock (Duration::MAX) means no deadline.
        let deadline = self.now().checked_add(timeout);
        loop {
            if done(self) {
                return Ok(true);
            }
            let now = self.now();
            let left = match deadline {
                Some(deadline) if now >= deadline => return Ok(false),
                Some(deadline) => deadline - now,
                None => Duration::MAX,
            };
            self.iterate(left.min(Duration::from_millis(50)))?;
        }
    }

    /// One turn; returns whether the reactor stopped in it.
    pub(super) fn turn(&mut self, max_wait: Option<Duration>) -> Result<bool> {
        let depth = self.busy;
        self.busy += 1;
        let outcome = catch_unwind(AssertUnwindSafe(|| self.turn_inner(max_wait)));
        // Restored even if a panic escaped the hooks' own guards (a Drop, say), so that
        // the reactor is not left refusing every later turn.
        self.busy = depth;
        outcome.unwrap_or_else(|panic| resume_unwind(panic))
    }

    pub(super) fn turn_inner(&mut self, max_wait: Option<Duration>) -> Result<bool> {
        self.turns += 1;
        self.process_closes();
        let timeout = self.poll_timeout(max_wait);
        let timeout = self.pass_time(timeout);
        let mut events = self
            .events
            .take()
            .unwrap_or_else(|| Events::with_capacity(1024));
        let polled = self.poll_events(&mut events, timeout);
        if let Err(e) = polled {
            self.events = Some(events);
            if e.kind() != std::io::ErrorKind::Interrupted {
                return Err(Error::Io {
                    context: "polling",
                    source: e,
                });
            }
            return Ok(false);
        }
        let boundary = self.timers.boundary();
        let left_over = std::mem::replace(&mut self.ready, std::mem::take(&mut self.ready_spare));
        for key in &left_over {
            if let Some(slot) = self.live_slot(*key) {
                slot.in_ready = false;
            }
        }
        for event in events.iter() {
            trace!("event {event:?}");
            match event.token() {
                token::WAKER => self.run_thread_calls(),
                token::SIGNALS => self.on_signals(),
                token => {
                    if let Some(key) = PortKey::from_token(token) {
                        // An error event (e.g. ICMP refusal) may come without readable: read
                        // anyway, so recv surfaces the error, and read the error queue.
                        let readable =
                            event.is_readable() || event.is_error() || event.is_read_closed();
                        self.serve_port(key, readable, event.is_writable(), event.is_error());
                    }
                }
            }
        }
        self.events = Some(events);
        self.serve_memory_ports();
        self.serve_left_over(left_over);
        self.run_timers(boundary);
        if self.stop_requested {
            self.close_all();
            return Ok(true);
        }
        Ok(false)
    }

    /// Polls for events, waiting at most `timeout` (`None`: until one comes); in latency
    /// mode ([`set_spin`](Self::set_spin)) without blocking at first, until an event
    /// comes, the spin is over or the timeout has passed, and only then blocking for
    /// what is left of the timeout.
    pub(super) fn poll_events(
        &mut self,
        events: &mut Events,
        timeout: Option<Duration>,
    ) -> std::io::Result<()> {
        let spin = match timeout {
            Some(wait) => self.spin.min(wait),
            None => self.spin,
        };
        if spin.is_zero() || !matches!(self.clock, Clock::Real) {
            return self.poll.poll(events, timeout);
        }
        let start = Instant::now();
        loop {
            self.poll.poll(events, Some(Duration::ZERO))?;
            if !events.is_empty() {
                return Ok(());
            }
            let spun = start.elapsed();
            if spun >= spin {
                let left = timeout.map(|wait| wait.saturating_sub(spun));
                return self.poll.poll(events, left);
            }
            std::hint::spin_loop();
        }
    }

    pub(super) fn poll_timeout(&mut self, max_wait: Option<Duration>) -> Option<Duration> {
        if self.has_work_now() {
            return Some(Duration::ZERO);
        }
        let now = self.now();
        let timer = self.next_event().map(|d| d.saturating_duration_since(now));
        match (timer, max_wait) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        }
    }

    /// Whether the next turn has something to do without waiting: ports to serve or tear
    /// down, a stop, or (simulated) datagrams and errors waiting at in-memory sockets.
    pub(crate) fn has_work_now(&self) -> bool {
        !self.ready.is_empty()
            || !self.teardown.is_empty()
            || self.stop_requested
            || self
                .net
                .as_ref()
                .is_some_and(|net| net.borrow().any_ready())
    }

    /// When the next timer is due (with a manual clock: the next one that does not run
    /// every turn anyway, or the next datagram arrival of the simulated network, if
    /// sooner).
    pub(crate) fn next_event(&mut self) -> Option<Instant> {
        match &self.clock {
            Clock::Real => self.timers.next_deadline(),
            Clock::Manual(_) => {
                let timer = self.timers.next_deadline_not_every_turn();
                let arrival = self
                    .net
                    .as_ref()
                    .and_then(|net| net.borrow().next_arrival());
                match (timer, arrival) {
                    (Some(a), Some(b)) => Some(a.min(b)),
                    (a, b) => a.or(b),
                }
            }
        }
    }

    /// The earliest deadline of any timer (those that repeat every turn included).
    pub(crate) fn next_timer(&mut self) -> Option<Instant> {
        self.timers.next_deadline()
    }

    /// With a manual clock, the wait before this turn's poll passes at once: the clock
    /// moves on by it and the poll does not sleep (unless nothing at all is scheduled:
    /// then only a call from another thread can bring work, and the poll waits for it).
    pub(super) fn pass_time(&mut self, wait: Option<Duration>) -> Option<Duration> {
        match (&self.clock, wait) {
            (Clock::Manual(clock), Some(wait)) => {
                if let Some(later) = clock.get().checked_add(wait) {
                    clock.set(later);
                }
                Some(Duration::ZERO)
            }
            _ => wait,
        }
    }

    /// Serves the in-memory ports of a simulated reactor that have something to do, after
    /// handing them the datagrams due by now.
    pub(super) fn serve_memory_ports(&mut self) {
        let Some(net) = self.net.as_ref() else {
            return;
        };
        let mut ready = std::mem::take(&mut self.readiness);
        {
            let mut net = net.borrow_mut();
            net.deliver_due();
            net.readiness(&mut ready);
        }
        for r in ready.drain(..) {
            self.serve_port(r.key, r.readable, r.writable, r.error);
        }
        self.readiness = ready;
    }

    pub(super) fn serve_port(&mut self, key: PortKey, readable: bool, writable: bool, error: bool) {
        // Once a stop is asked for, no more datagrams: every port closes at the turn's end.
        if self.stop_requested {
            return;
        }
        // A port whose stop was asked for reads no more (what it has queued to send, and
        // its error queue, are still served).
        let readable = readable && self.lifecycle(key) == Lifecycle::Open;
        if readable {
            let turn = self.turns;
            if let Some(slot) = self.live_slot(key) {
                slot.read_in_turn = turn;
            }
        }
        let mut batches = self.batches.take();
        let more = self.with_port_dyn(key, |p, r| {
            p.on_ready(r, &mut batches, readable, writable, error)
        });
        self.batches = batches;
        if more == Some(true)
            && let Some(slot) = self.live_slot(key)
            && !slot.in_ready
        {
            slot.in_ready = true;
            self.ready.push(key);
        }
    }

    /// Serves the ports whose budget ran out last turn, unless an event this turn already
    /// read them.
    pub(super) fn serve_left_over(&mut self, mut left_over: Vec<PortKey>) {
        let turn = self.turns;
        for key in left_over.drain(..) {
            // A port marked again this turn was read by its event this turn too.
            if self
                .live_slot(key)
                .is_some_and(|slot| slot.read_in_turn != turn)
            {
                self.serve_port(key, true, false, false);
            }
        }
        self.ready_spare = left_over;
    }

    /// The slot of `key`, unless the port is gone.
    pub(super) fn live_slot(&mut self, key: PortKey) -> Option<&mut Slot> {
        self.ports
            .get_mut(key.index)
            .filter(|slot| slot.generation == key.generation)
    }

    /// Runs the cross-thread calls of this turn: those queued when it starts, at most
    /// [`ReactorHandle::CALLS_PER_TURN`], in order. When a handle asked for a stop, every
    /// call queued by then runs first, and then the reactor stops.
    pub(super) fn run_thread_calls(&mut self) {
        // The flag first: a call queued before the stop is then already in the queue.
        let stop = self.shared.take_stop();
        let budget = if stop {
            usize::MAX
        } else {
            ReactorHandle::CALLS_PER_TURN
        };
        let mut calls = std::mem::take(&mut self.thread_calls);
        if self.shared.take_calls(&mut calls, budget) {
            // Callers do not wake a reactor whose queue is not empty: wake ourselves, so
            // that the next poll reports the waker again without sleeping.
            if let Err(e) = self.shared.wake() {
                error!("{e}; running every queued cross-thread call in this turn");
                self.shared.take_calls(&mut calls, usize::MAX);
            }
        }
        for call in calls.drain(..) {
            if let Err(panic) = catch_unwind(AssertUnwindSafe(|| call(self))) {
                error!(
                    "call_from_thread closure panicked: {}",
                    panic_message(&*panic)
                );
            }
        }
        self.thread_calls = calls;
        if stop {
            self.stop();
        }
    }

    pub(super) fn close_all(&mut self) {
        self.stop_requested = false;
        // Ports opened by the stop_protocols of this teardown close too, in rounds: a
        // protocol that opens a port in every stop_protocol is cut off after a few.
        for _ in 0..CLOSE_ROUNDS {
            if self.ports.is_empty() {
                break;
            }
            let keys: Vec<PortKey> = self
                .ports
                .iter()
                .map(|(index, slot)| PortKey {
                    index,
                    generation: slot.generation,
                })
                .collect();
            for key in keys {
                self.request_close(key);
            }
            self.process_closes();
        }
        if !self.ports.is_empty() {
            error!(
                "{} ports still open after {CLOSE_ROUNDS} rounds of closing (each stop_protocol opened another)",
                self.ports.len()
            );
        }
        // A stop asked for by a stop_protocol of this teardown is this stop, not the next.
        self.stop_requested = false;
        info!("reactor stopped");
    }
}

/// How many rounds a reactor's stop closes ports opened while it closes the others.
const CLOSE_ROUNDS: usize = 16;
