//! Reactor-level and port-scoped timers.

use super::*;

impl Reactor {
    /// Runs `f` once, `delay` from now, on the reactor's thread: Twisted's `callLater`.
    /// It never fires early; calls due at the same instant fire in the order they were
    /// scheduled; one scheduled from a timer for "now" runs on the next turn. A panic in
    /// `f` is caught and logged.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::time::Duration;
    /// let mut reactor = twine::Reactor::new()?;
    /// let call = reactor.call_later(Duration::from_millis(1), |r| r.stop());
    /// assert!(reactor.is_pending(call));
    /// reactor.run()?;
    /// assert!(!reactor.is_pending(call));
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "callLater")]
    pub fn call_later(
        &mut self,
        delay: Duration,
        f: impl FnOnce(&mut Reactor) + 'static,
    ) -> DelayedCall {
        let mut f = Some(f);
        let action = TimerAction::Reactor(Box::new(move |r| {
            if let Some(f) = f.take() {
                f(r)
            }
        }));
        self.timers.schedule(self.now(), delay, None, action)
    }

    /// Runs `f` every `interval` (first after one interval) until cancelled: Twisted's
    /// `LoopingCall`. Missed runs are skipped, not bunched. A panic in `f` stops it.
    ///
    /// An interval of zero runs `f` once per reactor turn, and so keeps the loop from
    /// ever sleeping (busy, as Twisted's `LoopingCall` with interval 0 is); other timers
    /// and ports still get their turn.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let tick = reactor.call_every(std::time::Duration::from_secs(10), |_| log::info!("tick"));
    /// assert!(reactor.is_pending(tick));
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "LoopingCall")]
    pub fn call_every(
        &mut self,
        interval: Duration,
        f: impl FnMut(&mut Reactor) + 'static,
    ) -> DelayedCall {
        let action = TimerAction::Reactor(Box::new(f));
        self.timers
            .schedule(self.now(), interval, Some(interval), action)
    }

    /// A port-scoped [`call_later`](Self::call_later) from outside the port's callbacks:
    /// `f` gets the port's protocol and transport; it is dropped if the port closes first.
    ///
    /// # Errors
    ///
    /// [`Error::PortClosed`] if the port is closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use twine::{DatagramProtocol, UdpTransport};
    /// struct Hello;
    /// impl DatagramProtocol for Hello {
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    /// }
    /// let mut reactor = twine::Reactor::new()?;
    /// let port = reactor.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), Hello)?;
    /// let call = reactor.call_later_on(&port, std::time::Duration::from_secs(1), |_me: &mut Hello, t| {
    ///     let _ = t.write(b"hello", "127.0.0.1:9");
    /// })?;
    /// assert!(reactor.is_pending(call));
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn call_later_on<P: DatagramProtocol>(
        &mut self,
        port: &ListeningPort<P>,
        delay: Duration,
        f: impl FnOnce(&mut P, &mut UdpTransport<'_>) + 'static,
    ) -> Result<DelayedCall> {
        self.schedule_on_port(port, delay, None, once(f))
    }

    /// A port-scoped [`call_every`](Self::call_every) from outside the port's callbacks.
    ///
    /// # Errors
    ///
    /// [`Error::PortClosed`] if the port is closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use twine::{DatagramProtocol, UdpTransport};
    /// struct Beacon { sent: u32 }
    /// impl DatagramProtocol for Beacon {
    ///     fn datagram_received(&mut self, _: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {}
    /// }
    /// let mut reactor = twine::Reactor::new()?;
    /// let port = reactor.listen_udp_with(twine::ListenOptions::new(0).interface("127.0.0.1"), Beacon { sent: 0 })?;
    /// let every = reactor.call_every_on(&port, std::time::Duration::from_secs(5), |me: &mut Beacon, t| {
    ///     me.sent += 1;
    ///     let _ = t.write(b"beacon", "127.0.0.1:9");
    /// })?;
    /// assert!(reactor.cancel(every));
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn call_every_on<P: DatagramProtocol>(
        &mut self,
        port: &ListeningPort<P>,
        interval: Duration,
        f: impl FnMut(&mut P, &mut UdpTransport<'_>) + 'static,
    ) -> Result<DelayedCall> {
        self.schedule_on_port(port, interval, Some(interval), f)
    }

    pub(super) fn schedule_on_port<P: DatagramProtocol>(
        &mut self,
        port: &ListeningPort<P>,
        delay: Duration,
        interval: Option<Duration>,
        f: impl FnMut(&mut P, &mut UdpTransport<'_>) + 'static,
    ) -> Result<DelayedCall> {
        if !self.is_listening(port) {
            return Err(Error::PortClosed);
        }
        let boxed: PortTimerFn<P> = Box::new(f);
        self.schedule_port_timer(port.key, delay, interval, Box::new(boxed))
    }

    /// Schedules a port timer and records it in the port's slot, so that closing the port
    /// cancels it. [`Error::PortClosed`] if the port is already torn down (e.g. from
    /// `stop_protocol`).
    pub(crate) fn schedule_port_timer(
        &mut self,
        key: PortKey,
        delay: Duration,
        interval: Option<Duration>,
        f: Box<dyn Any>,
    ) -> Result<DelayedCall> {
        if self.lifecycle(key) != Lifecycle::Open {
            return Err(Error::PortClosed);
        }
        let now = self.now();
        let call = self
            .timers
            .schedule(now, delay, interval, TimerAction::Port(key, f));
        let timers = &self.timers;
        let slot = &mut self.ports[key.index];
        slot.timers.push(call);
        if slot.timers.len() >= 2 * slot.timers_pruned_at.max(8) {
            slot.timers.retain(|c| timers.is_pending(*c));
            slot.timers_pruned_at = slot.timers.len();
        }
        Ok(call)
    }

    /// Cancels a call. Returns whether it was pending.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let call = reactor.call_later(std::time::Duration::from_secs(1), |_| {});
    /// assert!(reactor.cancel(call));
    /// assert!(!reactor.cancel(call), "cancelled once");
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn cancel(&mut self, call: DelayedCall) -> bool {
        self.timers.cancel(call)
    }

    /// Moves a pending call's deadline to `delay` from now (Twisted's
    /// `DelayedCall.reset`). Returns whether it was pending.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let call = reactor.call_later(std::time::Duration::from_secs(1), |_| {});
    /// assert!(reactor.reset(call, std::time::Duration::from_secs(30)));
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn reset(&mut self, call: DelayedCall, delay: Duration) -> bool {
        self.is_pending(call) && self.timers.reset(self.now(), call, delay)
    }

    /// Whether a call will still fire: false once a one-shot call has started to run,
    /// after a cancel, or once a port-scoped call's port is closed.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let call = reactor.call_later(std::time::Duration::ZERO, |_| {});
    /// assert!(reactor.is_pending(call));
    /// reactor.iterate(std::time::Duration::ZERO)?;
    /// assert!(!reactor.is_pending(call), "it ran");
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "active")]
    pub fn is_pending(&self, call: DelayedCall) -> bool {
        if !self.timers.is_pending(call) {
            return false;
        }
        match self.timers.action(call) {
            Some(TimerAction::Port(key, _)) => self.is_live(*key),
            _ => true,
        }
    }

    /// The number of scheduled calls (cancelled ones excluded).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// reactor.call_later(std::time::Duration::from_secs(1), |_| {});
    /// assert_eq!(reactor.timer_count(), 1);
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn timer_count(&self) -> usize {
        self.timers.len()
    }

    pub(super) fn run_timers(&mut self, boundary: u64) {
        let now = self.now();
        while let Some(mut due) = self.timers.pop_due(now, boundary) {
            match &mut due.action {
                TimerAction::Reactor(f) => {
                    if let Err(panic) = catch_unwind(AssertUnwindSafe(|| f(self))) {
                        error!(
                            "timer callback panicked: {}; timer cancelled",
                            panic_message(&*panic)
                        );
                        self.timers.cancel(due.call);
                    }
                }
                TimerAction::Port(key, f) => {
                    // Gone, or panicked (as a reactor-level timer that panics, it stops).
                    if self.with_port_dyn(*key, |p, r| p.fire_timer(r, f)) != Some(true) {
                        self.timers.cancel(due.call);
                    }
                }
            }
            self.timers.finish(now, due);
        }
    }
}
