//! Ports in the reactor: listening, adopting, the slots, lifecycle and teardown.

use super::*;

impl Reactor {
    /// Listens on UDP `port` on every IPv4 interface (`0.0.0.0`), as Twisted's
    /// `listenUDP(port, protocol)`; port 0 picks a free one. `start_protocol` runs before
    /// this returns.
    ///
    /// # Errors
    ///
    /// [`Error::CannotListen`] naming the address if the socket cannot be bound;
    /// [`Error::StartPanicked`] if `start_protocol` panicked (the port is closed).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let port = reactor.listen_udp(0, twine::from_fn(|t, data, from| {
    ///     let _ = t.write(data, from);
    /// }))?;
    /// assert_ne!(port.local_addr().port(), 0);
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "listenUDP")]
    pub fn listen_udp<P: DatagramProtocol>(
        &mut self,
        port: u16,
        protocol: P,
    ) -> Result<ListeningPort<P>> {
        self.listen_udp_with(ListenOptions::new(port), protocol)
    }

    /// Listens with [`ListenOptions`]: interface (IPv4 or IPv6 literal), max packet size,
    /// buffer sizes, port sharing, read budget, send queue bound.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidAddress`] for an interface that is not an IP literal and
    /// [`Error::InvalidOption`] for a size out of range, both before any socket exists;
    /// then as [`listen_udp`](Self::listen_udp).
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::{ListenOptions, Reactor, from_fn};
    /// let mut reactor = Reactor::new()?;
    /// let port = reactor.listen_udp_with(
    ///     ListenOptions::new(0).interface("127.0.0.1").max_packet_size(1500),
    ///     from_fn(|_, _, _| {}),
    /// )?;
    /// assert_eq!(port.local_addr().ip().to_string(), "127.0.0.1");
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn listen_udp_with<P: DatagramProtocol>(
        &mut self,
        opts: ListenOptions,
        protocol: P,
    ) -> Result<ListeningPort<P>> {
        let addr = opts.bind_addr()?;
        if let Some(net) = self.net.clone() {
            return self.open_memory_port(net, addr, protocol, &opts);
        }
        let socket =
            bind_socket(addr, &opts).map_err(|source| Error::CannotListen { addr, source })?;
        self.open_port(socket, protocol, &opts, None)
    }

    /// Listens on `port` for multicast, on every IPv4 interface, as Twisted's
    /// `listenMulticast`. With `listen_multiple`, other sockets (in this process or
    /// another) may bind the same port (`SO_REUSEADDR` + `SO_REUSEPORT`), and each gets
    /// every multicast datagram; a unicast datagram to the port reaches only one of them,
    /// chosen by the kernel (see [`ListenOptions::listen_multiple`]). Join groups with
    /// [`UdpTransport::join_group`] or [`UdpTransport::join_source_group`].
    ///
    /// For an IPv6 port or other options, use
    /// [`listen_udp_with`](Self::listen_udp_with) and
    /// [`ListenOptions::listen_multiple`].
    ///
    /// # Errors
    ///
    /// As [`listen_udp`](Self::listen_udp).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let port = reactor.listen_multicast(0, twine::respond(|_, _| None::<Vec<u8>>), true)?;
    /// reactor.with_port(&port, |_, t| t.join_group("239.77.1.2", "127.0.0.1"))??;
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "listenMulticast")]
    pub fn listen_multicast<P: DatagramProtocol>(
        &mut self,
        port: u16,
        protocol: P,
        listen_multiple: bool,
    ) -> Result<ListeningPort<P>> {
        self.listen_udp_with(
            ListenOptions::new(port).listen_multiple(listen_multiple),
            protocol,
        )
    }

    /// Serves `protocol` on an existing, already bound IPv4 or IPv6 datagram socket, given
    /// by raw fd, as Twisted's `adoptDatagramPort`.
    ///
    /// **Ownership:** the reactor works on its own duplicate of `fd` (`dup`), which it
    /// closes when the port stops; `fd` stays the caller's, to close whenever it likes
    /// (at once is fine). The duplicate shares the open socket, so `fd` is switched to
    /// non-blocking mode too, and datagrams read through `fd` are not seen by the port.
    ///
    /// **Checks**, before anything is changed: `fd` is open and a socket
    /// ([`Error::BadDescriptor`]), of an IP family ([`Error::UnsupportedAddressFamily`]),
    /// a datagram socket ([`Error::UnsupportedSocketType`]), and bound
    /// ([`Error::NotBound`]). On any of them `fd` is left untouched.
    ///
    /// # Errors
    ///
    /// As above, and [`Error::Io`] if the duplicate cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    /// let mut reactor = twine::Reactor::new()?;
    /// let port = reactor.adopt_datagram_port(socket.as_raw_fd(), twine::from_fn(|t, d, from| {
    ///     let _ = t.write(d, from);
    /// }))?;
    /// assert_eq!(Some(port.local_addr()), socket.local_addr().ok());
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "adoptDatagramPort")]
    pub fn adopt_datagram_port<P: DatagramProtocol>(
        &mut self,
        fd: RawFd,
        protocol: P,
    ) -> Result<ListeningPort<P>> {
        self.adopt_with(fd, ListenOptions::new(0), protocol)
    }

    /// [`adopt_datagram_port`](Self::adopt_datagram_port) for a socket object (a
    /// `std::net::UdpSocket`, a `socket2::Socket`, ...): the reactor duplicates it, and the
    /// object stays the caller's.
    ///
    /// # Errors
    ///
    /// As [`adopt_datagram_port`](Self::adopt_datagram_port).
    ///
    /// # Examples
    ///
    /// ```
    /// let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::DGRAM, None)
    ///     .map_err(|e| twine::Error::Io { context: "socket", source: e })?;
    /// socket.bind(&std::net::SocketAddr::from(([127, 0, 0, 1], 0)).into())
    ///     .map_err(|e| twine::Error::Io { context: "bind", source: e })?;
    /// let mut reactor = twine::Reactor::new()?;
    /// let port = reactor.adopt_socket(&socket, twine::respond(|data, _| Some(data.to_vec())))?;
    /// # let _ = port;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn adopt_socket<P: DatagramProtocol>(
        &mut self,
        socket: &impl AsFd,
        protocol: P,
    ) -> Result<ListeningPort<P>> {
        self.adopt_with(socket.as_fd().as_raw_fd(), ListenOptions::new(0), protocol)
    }

    /// [`adopt_datagram_port`](Self::adopt_datagram_port) with options: the max packet
    /// size, buffer sizes, read budget and send queue bound apply, and so do the
    /// per-datagram options (the arrival address, the TOS byte received, timestamps,
    /// receive offload: each turned on as asked, and off on the socket where not asked, so
    /// that no control message the port does not read takes room); the port number,
    /// interface and port sharing are the socket's own.
    ///
    /// # Errors
    ///
    /// As [`adopt_datagram_port`](Self::adopt_datagram_port), and
    /// [`Error::InvalidOption`].
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::fd::AsRawFd;
    /// let socket = std::net::UdpSocket::bind("127.0.0.1:0").expect("bind");
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).max_packet_size(1500);
    /// let port = reactor.adopt_with(socket.as_raw_fd(), opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// assert_eq!(Some(port.local_addr()), socket.local_addr().ok());
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn adopt_with<P: DatagramProtocol>(
        &mut self,
        fd: RawFd,
        opts: ListenOptions,
        protocol: P,
    ) -> Result<ListeningPort<P>> {
        opts.check()?;
        let bound = sys::inspect_socket(fd)?;
        trace!("adopting fd {fd}, bound to {bound}");
        let owned = sys::dup_cloexec(fd).map_err(io_error("duplicating the adopted fd"))?;
        let socket = Socket::from(owned);
        socket
            .set_nonblocking(true)
            .map_err(io_error("making the adopted fd non-blocking"))?;
        apply_buffer_sizes(&socket, &opts)
            .map_err(io_error("setting the adopted socket's buffers"))?;
        // A connected socket (socket activation hands such ones too) is served as one.
        let peer = socket.peer_addr().ok().and_then(|a| a.as_socket());
        if let Some(peer) = peer {
            trace!("adopted fd {fd} is connected to {peer}");
        }
        self.open_port(socket.into(), protocol, &opts, peer)
    }

    /// Validated socket in, running port out: register, start, put in the slab.
    pub(super) fn open_port<P: DatagramProtocol>(
        &mut self,
        socket: std::net::UdpSocket,
        protocol: P,
        opts: &ListenOptions,
        peer: Option<SocketAddr>,
    ) -> Result<ListeningPort<P>> {
        let local = socket
            .local_addr()
            .map_err(io_error("reading the bound address"))?;
        let mut socket = PortSocket::Kernel(mio::net::UdpSocket::from_std(socket));
        let key = self.reserve_slot()?;
        if let Err(source) = socket.register(self.poll.registry(), key) {
            self.ports.remove(key.index);
            return Err(Error::Io {
                context: "registering the port",
                source,
            });
        }
        trace!("registered port {local} as {key:?}");
        self.start_port(key, local, socket, protocol, opts, peer)
    }

    /// An in-memory port bound to `addr` on `net` (port 0: one the network picks).
    pub(super) fn open_memory_port<P: DatagramProtocol>(
        &mut self,
        net: Rc<RefCell<Network>>,
        addr: SocketAddr,
        protocol: P,
        opts: &ListenOptions,
    ) -> Result<ListeningPort<P>> {
        let key = self.reserve_slot()?;
        let bound = net.borrow_mut().bind(addr, key);
        let local = match bound {
            Ok(local) => local,
            Err(source) => {
                self.ports.remove(key.index);
                return Err(Error::CannotListen { addr, source });
            }
        };
        let socket = PortSocket::Memory(MemSocket { net, addr: local });
        self.start_port(key, local, socket, protocol, opts, None)
    }

    /// Runs `start_protocol` of a port registered under `key`, and puts it in its slot.
    pub(super) fn start_port<P: DatagramProtocol>(
        &mut self,
        key: PortKey,
        local: SocketAddr,
        socket: PortSocket,
        protocol: P,
        opts: &ListenOptions,
        peer: Option<SocketAddr>,
    ) -> Result<ListeningPort<P>> {
        let mut socket = socket;
        if let Err(e) = apply_datagram_options(&mut socket, local, opts) {
            self.ports.remove(key.index);
            let _ = socket.deregister(self.poll.registry());
            return Err(e);
        }
        let mut port = UdpPort::new(socket, key, local, protocol, opts);
        if let Some(peer) = peer {
            port.core_mut().adopt_peer(peer);
        }
        info!("{} starting on {local}", port.core().prefix);
        self.busy += 1;
        port.start(self);
        self.busy -= 1;
        if let Some(message) = port.core_mut().panic.take() {
            self.remove_slot(key);
            let _ = port.core_mut().socket.deregister(self.poll.registry());
            info!("(UDP Port {local} Closed)");
            return Err(Error::StartPanicked {
                addr: local,
                message,
            });
        }
        self.put_back(key, Box::new(port));
        Ok(ListeningPort {
            key,
            local,
            _protocol: PhantomData,
        })
    }

    pub(super) fn reserve_slot(&mut self) -> Result<PortKey> {
        let index = self.ports.vacant_key();
        if !PortKey::index_fits(index) {
            return Err(Error::Io {
                context: "opening a port",
                source: std::io::Error::other("too many ports in one reactor"),
            });
        }
        // Drawn from one counter for the whole process, so that a handle from one reactor
        // never matches a port of another.
        let generation =
            PortKey::truncate_generation(NEXT_GENERATION.fetch_add(1, Ordering::Relaxed));
        let index = self.ports.insert(Slot {
            generation,
            state: Lifecycle::Open,
            port: None,
            timers: Vec::new(),
            timers_pruned_at: 0,
            in_ready: false,
            read_in_turn: 0,
        });
        Ok(PortKey { index, generation })
    }

    /// Stops a port, as [`UdpTransport::stop_listening`] does from inside. Returns whether
    /// it was listening.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// assert!(reactor.stop_listening(&port));
    /// assert!(!reactor.stop_listening(&port), "already stopping");
    /// # Ok::<(), twine::Error>(())
    /// ```
    #[doc(alias = "stopListening")]
    pub fn stop_listening<P>(&mut self, port: &ListeningPort<P>) -> bool {
        if self.lifecycle(port.key) != Lifecycle::Open {
            return false;
        }
        self.request_close(port.key);
        true
    }

    /// Whether the port is open and not stopping.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// assert!(reactor.is_listening(&port));
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn is_listening<P>(&self, port: &ListeningPort<P>) -> bool {
        self.lifecycle(port.key) == Lifecycle::Open
    }

    /// The port's counters, or `None` once it is closed (or while its own callback runs).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// assert_eq!(reactor.port_stats(&port).map(|s| s.datagrams_received), Some(0));
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn port_stats<P>(&self, port: &ListeningPort<P>) -> Option<PortStats> {
        let slot = self.slot(port.key)?;
        slot.port.as_ref().map(|p| p.core().current_stats())
    }

    /// Keeps the port's counters as they stand once it has closed (after `stop_protocol`
    /// and the last flush of its send queue), for [`final_stats`](Self::final_stats).
    pub(crate) fn keep_final_stats<P>(&mut self, port: &ListeningPort<P>) {
        self.kept_entry(port.key);
    }

    fn kept_entry(&mut self, key: PortKey) -> &mut Kept {
        let at = match self.kept.iter().position(|k| k.key == key) {
            Some(at) => at,
            None => {
                self.kept.push(Kept {
                    key,
                    stats: None,
                    protocol: None,
                    keep_protocol: false,
                });
                self.kept.len() - 1
            }
        };
        &mut self.kept[at]
    }

    /// The counters a port kept with [`keep_final_stats`](Self::keep_final_stats) had
    /// when it closed, or its counters now while it is open.
    pub(crate) fn final_stats<P>(&self, port: &ListeningPort<P>) -> Option<PortStats> {
        let kept = self.kept.iter().find(|k| k.key == port.key);
        kept.and_then(|k| k.stats).or_else(|| self.port_stats(port))
    }

    /// Keeps the port's protocol and final counters once it closes (after `stop_protocol`
    /// and the last flush of its send queue), instead of dropping them, for
    /// [`take_closed`](Self::take_closed): the totals a protocol gathered, after
    /// [`run`](Self::run) returns, without sharing them through an `Rc<RefCell<_>>`.
    /// What is kept stays until taken (or the reactor is dropped). Does nothing for a port
    /// already closed.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::net::SocketAddr;
    /// use twine::{DatagramProtocol, ListenOptions, Reactor, UdpTransport};
    ///
    /// #[derive(Default)]
    /// struct Counter {
    ///     seen: u32,
    /// }
    /// impl DatagramProtocol for Counter {
    ///     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, _: &[u8], _: SocketAddr) {
    ///         self.seen += 1;
    ///         t.reactor().stop();
    ///     }
    /// }
    ///
    /// let mut reactor = Reactor::new()?;
    /// # reactor.set_handle_signals(false);
    /// let port = reactor.listen_udp_with(ListenOptions::new(0).interface("127.0.0.1"), Counter::default())?;
    /// reactor.keep_after_close(&port);
    /// std::net::UdpSocket::bind("127.0.0.1:0")
    ///     .and_then(|c| c.send_to(b"one", port.local_addr()))
    ///     .expect("send");
    /// reactor.run()?;
    /// let (counter, stats) = reactor.take_closed(&port).expect("kept");
    /// assert_eq!((counter.seen, stats.datagrams_received), (1, 1));
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn keep_after_close<P>(&mut self, port: &ListeningPort<P>) {
        if self.lifecycle(port.key) == Lifecycle::Closed {
            return;
        }
        self.kept_entry(port.key).keep_protocol = true;
    }

    /// The protocol and final counters of a port that closed after
    /// [`keep_after_close`](Self::keep_after_close), handed over once: `None` while it is
    /// open, if it was not kept, or once taken.
    ///
    /// # Examples
    ///
    /// See [`keep_after_close`](Self::keep_after_close).
    pub fn take_closed<P: 'static>(&mut self, port: &ListeningPort<P>) -> Option<(P, PortStats)> {
        let at = self
            .kept
            .iter()
            .position(|k| k.key == port.key && k.stats.is_some() && k.protocol.is_some())?;
        let kept = self.kept.swap_remove(at);
        let protocol = kept.protocol?.downcast::<P>().ok()?;
        Some((*protocol, kept.stats?))
    }

    /// Runs `f` with the port's protocol and a transport, from outside its callbacks: e.g.
    /// to send a first datagram from `main`. A panic in `f` closes the port, as one in
    /// `start_protocol` does (`f` is the program's own code, not something a peer sent).
    ///
    /// # Errors
    ///
    /// [`Error::PortClosed`] if the port is closed (or `f` panicked);
    /// [`Error::PortBusy`] if it is the port whose callback is running (use the
    /// callback's transport).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// let local = reactor.with_port(&port, |_protocol, t| t.local_addr())?;
    /// assert_eq!(local, port.local_addr());
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn with_port<P: DatagramProtocol, R>(
        &mut self,
        port: &ListeningPort<P>,
        f: impl FnOnce(&mut P, &mut UdpTransport<'_>) -> R,
    ) -> Result<R> {
        if self.slot(port.key).is_some_and(|slot| slot.port.is_none()) {
            return Err(Error::PortBusy);
        }
        let out = self.with_port_dyn(port.key, |p, r| {
            let port = p.as_any_mut().downcast_mut::<UdpPort<P>>()?;
            port.call(r, f)
        });
        out.flatten().ok_or(Error::PortClosed)
    }

    /// The number of open ports.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut reactor = twine::Reactor::new()?;
    /// let opts = twine::ListenOptions::new(0).interface("127.0.0.1");
    /// let port = reactor.listen_udp_with(opts, twine::respond(|_, _| None::<Vec<u8>>))?;
    /// assert_eq!(reactor.port_count(), 1);
    /// # let _ = port;
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn port_count(&self) -> usize {
        self.ports.len()
    }

    pub(super) fn is_live(&self, key: PortKey) -> bool {
        self.slot(key).is_some()
    }

    /// The slot of `key`, unless the port is gone (read-only: [`live_slot`](Self::live_slot)).
    pub(super) fn slot(&self, key: PortKey) -> Option<&Slot> {
        self.ports
            .get(key.index)
            .filter(|slot| slot.generation == key.generation)
    }

    /// A count that changes whenever a stop is asked for: unchanged since it was read, no
    /// port has been asked to close and the reactor has not been asked to stop since.
    pub(crate) fn stops_asked(&self) -> u64 {
        self.stops_asked
    }

    /// Where the port of `key` stands.
    #[inline]
    pub(crate) fn lifecycle(&self, key: PortKey) -> Lifecycle {
        self.slot(key).map_or(Lifecycle::Closed, |slot| slot.state)
    }

    /// Asks for the port's stop (nothing if it was asked already, or it is closed).
    pub(crate) fn request_close(&mut self, key: PortKey) {
        let Some(slot) = self.live_slot(key) else {
            return;
        };
        if slot.state != Lifecycle::Open {
            return;
        }
        slot.state = Lifecycle::StopAsked;
        // Its timers will never fire: cancelled now, not at teardown, so that none runs
        // later in this turn and none counts as pending meanwhile.
        for call in std::mem::take(&mut slot.timers) {
            self.timers.cancel(call);
        }
        self.stops_asked += 1;
        trace!("close requested for {key:?}");
        self.teardown.push(key);
    }

    /// Takes the port out of its slot, runs `f` with it and the whole reactor, puts it back.
    /// `None` if the port is gone or its own callback is running.
    pub(super) fn with_port_dyn<R>(
        &mut self,
        key: PortKey,
        f: impl FnOnce(&mut dyn Port, &mut Reactor) -> R,
    ) -> Option<R> {
        let slot = self.live_slot(key)?;
        let mut port = slot.port.take()?;
        self.busy += 1;
        let out = f(port.as_mut(), self);
        self.busy -= 1;
        self.put_back(key, port);
        Some(out)
    }

    pub(super) fn put_back(&mut self, key: PortKey, mut port: Box<dyn Port>) {
        port.core_mut().sync_interest(self.poll.registry());
        match self.live_slot(key) {
            Some(slot) => slot.port = Some(port),
            _ => {
                // Cannot happen while nested turns are refused; never let the port reach
                // another one's slot.
                error!(
                    "port {} lost its slot while out of it; closing it",
                    port.core().local
                );
                let _ = port.core_mut().socket.deregister(self.poll.registry());
            }
        }
    }

    /// Empties a port's slot, cancelling the port's timers.
    pub(super) fn remove_slot(&mut self, key: PortKey) -> Slot {
        let slot = self.ports.remove(key.index);
        for call in &slot.timers {
            self.timers.cancel(*call);
        }
        slot
    }

    /// Tears down the ports whose stop was asked for: `stop_protocol`, then close.
    pub(super) fn process_closes(&mut self) {
        while !self.teardown.is_empty() {
            for key in std::mem::take(&mut self.teardown) {
                if !self.is_live(key) {
                    continue;
                }
                let Some(mut port) = self.remove_slot(key).port else {
                    continue;
                };
                if let Err(e) = port.core_mut().socket.deregister(self.poll.registry()) {
                    debug!("deregistering {key:?}: {e}");
                }
                port.shut_down(self);
                if let Some(kept) = self.kept.iter_mut().find(|k| k.key == key) {
                    kept.stats = Some(port.core().current_stats());
                    if kept.keep_protocol {
                        kept.protocol = Some(port.into_protocol());
                    }
                }
            }
        }
    }
}

/// Port generations, unique in the process.
static NEXT_GENERATION: AtomicU64 = AtomicU64::new(0);
