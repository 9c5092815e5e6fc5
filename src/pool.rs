//! A reactor per core: [`ReactorPool`] serves one UDP port with N reactors on N threads,
//! each with its own socket bound to the same address with `SO_REUSEPORT`.
//!
//! The behaviour a user must know (how the kernel spreads the datagrams, what that means
//! for per-client state, how the pool stops) is documented on [`ReactorPool`] itself.

use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, PoisonError};
use std::thread;

use log::{debug, info};
use socket2::{Domain, Protocol, Socket, Type};

use crate::error::{Error, Result};
use crate::protocol::DatagramProtocol;
use crate::reactor::Reactor;
use crate::reactor::handle::ReactorHandle;
use crate::sys;
use crate::udp::ListenOptions;
use crate::udp::port::{PortStats, panic_message};
use crate::udp::socket::apply_buffer_sizes;

/// N reactors on N threads serving one UDP address, each with its own socket
/// (`SO_REUSEPORT`): the kernel spreads the clients over them by a hash of their address.
///
/// Make it with [`bind`](Self::bind) (every socket is bound there, before any thread
/// starts), then [`run`](Self::run) it with a protocol factory. Like a [`Reactor`], a pool
/// stays on the thread that made it (it is not `Send`): bind it where it will run.
///
/// # How the kernel spreads the datagrams
///
/// The N sockets form one reuseport group. For each arriving datagram Linux picks one
/// socket of the group by a hash of its 4-tuple (source address and port, destination
/// address and port), so:
///
/// - **A client stays on one reactor while the group is unchanged.** Every datagram from
///   one source address and port reaches the same socket, hence the same reactor and the
///   same protocol instance; clients are spread over the reactors by the hash, not by
///   load (a few heavy clients can land on one reactor).
/// - **Changing the group moves flows and drops datagrams.** A socket added to the group,
///   or one closing (its port stopped, its reactor gone), remaps about half of all flows,
///   not only those of that socket; the datagrams already queued on a closing socket are
///   dropped, not handed to the others. Linux has no migration of UDP flows.
/// - **So per-client state lives per reactor, or is shared.** A protocol instance may
///   keep state per client (a session, a rate limit) only as long as losing it on a
///   group change is acceptable (it is rebuilt on the reactor the client then reaches);
///   state that must survive has to be shared between the reactors (behind a lock or in
///   a store of its own), which the factory can hand each instance.
/// - **A connected port** (one whose protocol called
///   [`UdpTransport::connect`](crate::UdpTransport::connect)) takes every datagram of its
///   peer, and the kernel hashes the other flows over the group's unconnected sockets
///   only: that reactor then serves one client and no share of the rest.
/// - **Multicast is not balanced**: every socket of the group gets a copy of each
///   multicast or broadcast datagram.
///
/// The pool's group is its own: the first socket is bound without `SO_REUSEPORT` (so the
/// bind fails with [`Error::CannotListen`] if any socket holds the address, one with
/// `SO_REUSEPORT` included, and port 0 picks a port no other socket uses), and is then
/// opened to the others. Another program of the same user can still join the group
/// afterwards, by binding the same address with `SO_REUSEPORT`: it then takes a share
/// of the flows.
///
/// On other Unix systems `SO_REUSEPORT` does not balance unicast datagrams (FreeBSD's
/// `SO_REUSEPORT_LB` would): the pool runs there, but one socket may get every datagram.
///
/// # Not `listen_multiple`
///
/// [`ListenOptions::listen_multiple`] is Twisted's `listenMultiple`: several programs
/// sharing a multicast port (`SO_REUSEADDR` as well), each receiving every multicast
/// datagram; a unicast datagram to that port still reaches only one of them, by the hash
/// above. A pool is load balancing: one program, one address, each unicast datagram to
/// exactly one of its reactors. The two are kept apart: a pool refuses options with
/// `listen_multiple` set.
///
/// # Threads, stop and failures
///
/// [`ReactorPool::run`] runs on the calling thread: it starts one thread per reactor,
/// then waits for a stop, which stops every reactor. A stop is [`PoolHandle::stop`]
/// (from any thread), SIGINT or SIGTERM (unless
/// [`set_handle_signals`](ReactorPool::set_handle_signals) turned that off), a reactor
/// stopped from inside (a protocol calling [`Reactor::stop`]), or a failure: a reactor
/// whose port cannot be opened, whose run fails, or whose thread panics outside the hooks
/// the reactor guards (the factory, say) stops the others, and `run` returns that error.
/// Each reactor's stop runs its port's `stop_protocol`, as [`Reactor::run`] does. A port
/// stopped by its own protocol (`stop_listening`) leaves the group, its flows moving to
/// the others, while its reactor waits for the pool's stop.
///
/// # Examples
///
/// ```
/// use std::net::UdpSocket;
/// use std::time::Duration;
/// use twine::{ListenOptions, ReactorPool, from_fn};
///
/// let mut pool = ReactorPool::bind(ListenOptions::new(0).interface("127.0.0.1"), 2)?;
/// pool.set_handle_signals(false); // a server would leave SIGINT/SIGTERM to the pool
/// let addr = pool.local_addr();
/// let handle = pool.handle();
/// let client = std::thread::spawn(move || -> std::io::Result<Vec<u8>> {
///     let socket = UdpSocket::bind("127.0.0.1:0")?;
///     socket.set_read_timeout(Some(Duration::from_secs(5)))?;
///     socket.send_to(b"hello", addr)?;
///     let mut buf = [0; 64];
///     let n = socket.recv(&mut buf);
///     let _ = handle.stop();
///     Ok(buf[..n?].to_vec())
/// });
/// // One protocol per reactor, made on the reactor's thread.
/// let stats = pool.run(|_reactor| {
///     from_fn(|t, data, from| {
///         let _ = t.write(data, from);
///     })
/// })?;
/// assert_eq!(client.join().expect("client thread")?, b"hello");
/// assert_eq!(stats.per_reactor.len(), 2);
/// assert_eq!(stats.total.datagrams_received, 1);
/// # Ok::<(), Box<dyn std::error::Error>>(())
/// ```
#[derive(Debug)]
pub struct ReactorPool {
    /// One bound socket per reactor, in bind order.
    sockets: Vec<Socket>,
    local: SocketAddr,
    opts: ListenOptions,
    cpus: Option<Vec<usize>>,
    /// The calling thread's reactor, with no ports: it waits for the pool's stop (its
    /// handle, the signals, a reactor's exit) while the others run.
    control: Reactor,
}

/// A `Send + Sync + Clone` handle that stops a whole [`ReactorPool`], from any thread.
///
/// # Examples
///
/// ```
/// use twine::{ListenOptions, ReactorPool, from_fn};
/// let mut pool = ReactorPool::bind(ListenOptions::new(0).interface("127.0.0.1"), 2)?;
/// pool.set_handle_signals(false);
/// pool.handle().stop()?; // asked before `run`: it returns once every reactor stopped
/// let stats = pool.run(|_| from_fn(|_, _, _| {}))?;
/// assert_eq!(stats.total.datagrams_received, 0);
/// # Ok::<(), twine::Error>(())
/// ```
#[derive(Debug, Clone)]
pub struct PoolHandle {
    control: ReactorHandle,
}

impl PoolHandle {
    /// Asks the pool to stop: every reactor stops (each port's `stop_protocol` runs) and
    /// [`ReactorPool::run`] returns. Asked for before `run`, it is kept: `run` starts the
    /// reactors and stops them at once.
    ///
    /// # Errors
    ///
    /// [`Error::ReactorGone`] once the pool's `run` has returned (or the pool was
    /// dropped); [`Error::Io`] if waking the pool's thread failed.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = twine::ReactorPool::bind(twine::ListenOptions::new(0).interface("127.0.0.1"), 2)?;
    /// let handle = pool.handle();
    /// // Asked before `run`: the reactors start and stop at once.
    /// handle.stop()?;
    /// let stats = pool.run(|_| twine::respond(|_, _| None::<Vec<u8>>))?;
    /// assert_eq!(stats.per_reactor.len(), 2);
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn stop(&self) -> Result<()> {
        self.control.stop()
    }
}

/// The counters of a pool's ports when they closed: [`ReactorPool::run`] returns them.
///
/// # Examples
///
/// ```
/// let stats = twine::PoolStats::default();
/// assert_eq!(stats.total, twine::PortStats::default());
/// assert!(stats.per_reactor.is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct PoolStats {
    /// Each reactor's port, by reactor index.
    pub per_reactor: Vec<PortStats>,
    /// The sum of `per_reactor`.
    pub total: PortStats,
}

impl PoolStats {
    fn new(per_reactor: Vec<PortStats>) -> PoolStats {
        let mut total = PortStats::default();
        for stats in &per_reactor {
            total += stats;
        }
        PoolStats { per_reactor, total }
    }
}

/// A socket of the pool's group, not bound yet: non-blocking, close-on-exec, with the
/// buffer sizes of `opts`.
fn new_socket(addr: SocketAddr, opts: &ListenOptions) -> Result<Socket> {
    let cannot = |source| Error::CannotListen { addr, source };
    let socket =
        Socket::new(Domain::for_address(addr), Type::DGRAM, Some(Protocol::UDP)).map_err(cannot)?;
    socket.set_nonblocking(true).map_err(cannot)?;
    apply_buffer_sizes(&socket, opts).map_err(cannot)?;
    Ok(socket)
}

impl ReactorPool {
    /// Binds `reactors` sockets to the address of `opts`, all sharing it with
    /// `SO_REUSEPORT`; port 0 picks a free port for the whole group. Nothing is served
    /// until [`run`](Self::run), but the kernel queues datagrams on the sockets from now
    /// on. The options' sizes, budgets and limits apply to every reactor's port.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] for no reactors, or options with
    /// [`listen_multiple`](ListenOptions::listen_multiple) set (see
    /// [`ReactorPool`](Self#not-listen_multiple)); [`Error::InvalidAddress`] and [`Error::InvalidOption`] for
    /// the options, as [`Reactor::listen_udp_with`]; [`Error::CannotListen`] if a socket
    /// cannot be made or bound (the address is in use, by any socket); [`Error::Io`] if
    /// the pool's own reactor cannot be made.
    ///
    /// # Examples
    ///
    /// ```
    /// use twine::{Error, ListenOptions, ReactorPool};
    /// let pool = ReactorPool::bind(ListenOptions::new(0).interface("127.0.0.1"), 4)?;
    /// assert_eq!(pool.reactor_count(), 4);
    /// // The address is the pool's own: another bind of it fails, with or without reuse.
    /// let again = ReactorPool::bind(ListenOptions::from_addr(pool.local_addr()), 1);
    /// assert!(matches!(again, Err(Error::CannotListen { .. })));
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn bind(opts: ListenOptions, reactors: usize) -> Result<ReactorPool> {
        if reactors == 0 {
            return Err(Error::InvalidOption {
                option: "reactors",
                value: 0,
                expected: "at least 1",
            });
        }
        if opts.listen_multiple {
            return Err(Error::InvalidOption {
                option: "listen_multiple",
                value: 1,
                expected: "off: a pool shares its address with SO_REUSEPORT itself",
            });
        }
        let addr = opts.bind_addr()?;
        // The first socket binds without SO_REUSEPORT: it fails if any socket holds the
        // address, and port 0 gets a port no other socket shares. Only then is it opened
        // to the rest of the group.
        let first = new_socket(addr, &opts)?;
        first
            .bind(&addr.into())
            .map_err(|source| Error::CannotListen { addr, source })?;
        first
            .set_reuse_port(true)
            .map_err(|source| Error::CannotListen { addr, source })?;
        let local = first
            .local_addr()
            .ok()
            .and_then(|a| a.as_socket())
            .ok_or_else(|| Error::Io {
                context: "reading the pool's bound address",
                source: std::io::Error::other("not an IP address"),
            })?;
        let mut sockets = Vec::with_capacity(reactors);
        sockets.push(first);
        for _ in 1..reactors {
            let socket = new_socket(local, &opts)?;
            let cannot = |source| Error::CannotListen {
                addr: local,
                source,
            };
            socket.set_reuse_port(true).map_err(cannot)?;
            socket.bind(&local.into()).map_err(cannot)?;
            sockets.push(socket);
        }
        debug!("pool of {reactors} sockets bound to {local}");
        Ok(ReactorPool {
            sockets,
            local,
            opts,
            cpus: None,
            control: Reactor::new()?,
        })
    }

    /// The address every socket of the pool is bound to, with the real port number when
    /// 0 was asked for.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = twine::ReactorPool::bind(twine::ListenOptions::new(0).interface("127.0.0.1"), 2)?;
    /// assert_ne!(pool.local_addr().port(), 0);
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// How many reactors (and sockets) the pool has.
    ///
    /// # Examples
    ///
    /// ```
    /// let pool = twine::ReactorPool::bind(twine::ListenOptions::new(0).interface("127.0.0.1"), 3)?;
    /// assert_eq!(pool.reactor_count(), 3);
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn reactor_count(&self) -> usize {
        self.sockets.len()
    }

    /// A handle that stops the whole pool from any thread.
    ///
    /// # Examples
    ///
    /// See [`PoolHandle`].
    pub fn handle(&self) -> PoolHandle {
        PoolHandle {
            control: self.control.handle(),
        }
    }

    /// Whether [`run`](Self::run) stops the pool on SIGINT and SIGTERM (the default), as
    /// [`Reactor::set_handle_signals`] describes for one reactor: the calling thread
    /// handles them for the whole pool; the pool's reactors never do.
    ///
    /// # Examples
    ///
    /// ```
    /// let mut pool = twine::ReactorPool::bind(twine::ListenOptions::new(0).interface("127.0.0.1"), 2)?;
    /// pool.set_handle_signals(false); // the program handles SIGINT itself
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn set_handle_signals(&mut self, on: bool) {
        self.control.set_handle_signals(on);
    }

    /// Pins reactor `i`'s thread to CPU `cpus[i]` (Linux `sched_setaffinity`), for
    /// [`run`](Self::run). Without it the threads go where the scheduler puts them.
    ///
    /// # Errors
    ///
    /// [`Error::InvalidOption`] unless there is one CPU per reactor. A CPU the system
    /// refuses fails that reactor when `run` starts it ([`Error::ReactorFailed`]).
    ///
    /// # Examples
    ///
    /// ```
    /// let mut pool = twine::ReactorPool::bind(twine::ListenOptions::new(0).interface("127.0.0.1"), 2)?;
    /// pool.pin_to_cpus(&[0, 1])?;
    /// assert!(pool.pin_to_cpus(&[0]).is_err());
    /// # Ok::<(), twine::Error>(())
    /// ```
    pub fn pin_to_cpus(&mut self, cpus: &[usize]) -> Result<()> {
        if cpus.len() != self.sockets.len() {
            return Err(Error::InvalidOption {
                option: "pin_to_cpus (CPUs given)",
                value: cpus.len(),
                expected: "one CPU per reactor",
            });
        }
        self.cpus = Some(cpus.to_vec());
        Ok(())
    }

    /// Runs the pool: one thread per reactor, each making its [`Reactor`] (signal
    /// handling off), a protocol with `factory(index)` (on that thread, so `P` need not
    /// be `Send`; the threads are scoped, so `factory` may borrow) and a port on its
    /// socket, and running it; the calling thread waits for the pool's stop (see
    /// [`ReactorPool`](Self#threads-stop-and-failures)), stops every reactor, and returns
    /// the counters each port had when it closed (after its `stop_protocol` and the last
    /// flush of its send queue).
    ///
    /// # Errors
    ///
    /// The first failure of a reactor, once every reactor has stopped:
    /// [`Error::ReactorFailed`] (its port could not be opened, its thread not pinned, or
    /// its run failed) or [`Error::ReactorPanicked`] (the factory panicked, say);
    /// [`Error::Io`] if a thread cannot be started or the calling thread's wait fails.
    ///
    /// # Examples
    ///
    /// See [`ReactorPool`].
    pub fn run<P, F>(self, factory: F) -> Result<PoolStats>
    where
        P: DatagramProtocol,
        F: Fn(usize) -> P + Sync,
    {
        let ReactorPool {
            sockets,
            local,
            opts,
            cpus,
            mut control,
        } = self;
        let n = sockets.len();
        let workers = Workers {
            state: Mutex::new(WorkerState {
                stopping: false,
                handles: Vec::with_capacity(n),
            }),
            exits: AtomicUsize::new(0),
            exit_order: (0..n).map(|_| AtomicUsize::new(usize::MAX)).collect(),
        };
        let control_handle = control.handle();
        info!("pool of {n} reactors starting on {local}");
        let outcome = thread::scope(|scope| {
            let mut threads = Vec::with_capacity(n);
            let mut failure = None;
            for (index, socket) in sockets.into_iter().enumerate() {
                let worker = Worker {
                    index,
                    socket,
                    opts: &opts,
                    cpu: cpus.as_ref().and_then(|cpus| cpus.get(index).copied()),
                    factory: &factory,
                    workers: &workers,
                    control: control_handle.clone(),
                };
                let spawned = thread::Builder::new()
                    .name(format!("twine-pool-{index}"))
                    .spawn_scoped(scope, move || worker.run());
                match spawned {
                    Ok(thread) => threads.push(thread),
                    Err(source) => {
                        failure = Some(Error::Io {
                            context: "starting a pool reactor's thread",
                            source,
                        });
                        break;
                    }
                }
            }
            // Stops the reactors however the wait ends (a panic included): the scope
            // joins their threads before it returns.
            let stopper = StopAll(&workers);
            if failure.is_none()
                && let Err(e) = control.run()
            {
                failure = Some(e);
            }
            drop(stopper);
            let mut per_reactor = Vec::with_capacity(n);
            // The failure that came first stopped the others: it is the one returned.
            let mut first: Option<(usize, Error)> = None;
            for (index, thread) in threads.into_iter().enumerate() {
                let result = thread.join().unwrap_or_else(|panic| {
                    Err(Error::ReactorPanicked {
                        reactor: index,
                        message: panic_message(&*panic),
                    })
                });
                match result {
                    Ok(stats) => per_reactor.push(stats),
                    Err(e) => {
                        let order = workers.exit_order[index].load(Ordering::Acquire);
                        if first.as_ref().is_none_or(|(o, _)| order < *o) {
                            first = Some((order, e));
                        }
                    }
                }
            }
            match failure.or(first.map(|(_, e)| e)) {
                Some(e) => Err(e),
                None => Ok(PoolStats::new(per_reactor)),
            }
        });
        match &outcome {
            Ok(stats) => info!("pool on {local} stopped: {}", stats.total),
            Err(e) => info!("pool on {local} stopped: {e}"),
        }
        outcome
    }
}

/// What the pool's threads share: the handles of the reactors started so far, and the
/// order in which the threads ended.
struct Workers {
    state: Mutex<WorkerState>,
    exits: AtomicUsize,
    /// Per reactor: how many threads had ended before it (`usize::MAX` while it runs).
    exit_order: Vec<AtomicUsize>,
}

struct WorkerState {
    /// Set once the pool stops: a reactor made from then on stops at once.
    stopping: bool,
    handles: Vec<ReactorHandle>,
}

impl Workers {
    fn lock(&self) -> MutexGuard<'_, WorkerState> {
        // Nothing panics while the lock is held; a poisoned state is still right.
        self.state.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Stops every reactor, those not made yet included.
    fn stop_all(&self) {
        let mut state = self.lock();
        state.stopping = true;
        for handle in &state.handles {
            // A reactor already gone needs no stop.
            let _ = handle.stop();
        }
    }
}

/// Stops every reactor of the pool when dropped.
struct StopAll<'a>(&'a Workers);

impl Drop for StopAll<'_> {
    fn drop(&mut self) {
        self.0.stop_all();
    }
}

/// One reactor's share of the pool, moved to its thread.
struct Worker<'a, F> {
    index: usize,
    socket: Socket,
    opts: &'a ListenOptions,
    cpu: Option<usize>,
    factory: &'a F,
    workers: &'a Workers,
    control: ReactorHandle,
}

/// Notes a pool thread's end, however it ends (a panic included), and stops the pool.
struct Exit<'a> {
    index: usize,
    workers: &'a Workers,
    control: ReactorHandle,
}

impl Drop for Exit<'_> {
    fn drop(&mut self) {
        let order = self.workers.exits.fetch_add(1, Ordering::AcqRel);
        self.workers.exit_order[self.index].store(order, Ordering::Release);
        // The pool's thread may be past its wait already: then there is nothing to stop.
        let _ = self.control.stop();
    }
}

impl<F> Worker<'_, F> {
    fn run<P>(self) -> Result<PortStats>
    where
        P: DatagramProtocol,
        F: Fn(usize) -> P,
    {
        let Worker {
            index,
            socket,
            opts,
            cpu,
            factory,
            workers,
            control,
        } = self;
        let _exit = Exit {
            index,
            workers,
            control,
        };
        let failed = |source| Error::ReactorFailed {
            reactor: index,
            source: Box::new(source),
        };
        if let Some(cpu) = cpu {
            sys::pin_to_cpu(cpu).map_err(|source| {
                failed(Error::Io {
                    context: "pinning a pool reactor's thread to its CPU",
                    source,
                })
            })?;
        }
        let mut reactor = Reactor::new().map_err(failed)?;
        reactor.set_handle_signals(false);
        {
            let mut state = workers.lock();
            if state.stopping {
                reactor.stop();
            } else {
                state.handles.push(reactor.handle());
            }
        }
        let protocol = factory(index);
        let port = reactor
            .adopt_with(socket.as_raw_fd(), opts.clone(), protocol)
            .map_err(failed)?;
        // The port has its own duplicate: this one closes now, so that the socket leaves
        // the group when the port closes.
        drop(socket);
        reactor.keep_final_stats(&port);
        reactor.run().map_err(failed)?;
        Ok(reactor.final_stats(&port).unwrap_or_default())
    }
}
