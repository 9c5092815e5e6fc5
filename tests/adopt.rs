mod util;

use std::io::{ErrorKind, Read};
use std::net::{Ipv4Addr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::os::fd::{AsRawFd, RawFd};
use std::os::unix::net::UnixDatagram;
use std::time::Duration;

use socket2::{Domain, SockAddr, SockRef, Socket, Type};
use twine::{Error, ListenOptions, ListeningPort, Reactor};
use util::{
    Event, Events, Recorder, client_on, datagrams, drive, drive_for, drive_recv,
    fd_numbers_exclusive, fd_numbers_shared, init_logging, logs_about, reactor,
};

// ----- helpers -----------------------------------------------------------------------------

fn udp_on(addr: &str) -> UdpSocket {
    UdpSocket::bind(addr).expect("bind udp socket")
}

/// Whether the socket's open file description has `O_NONBLOCK` set.
fn is_nonblocking(fd: &impl std::os::fd::AsFd) -> bool {
    SockRef::from(fd).nonblocking().expect("read O_NONBLOCK")
}

/// A blocking client on the port's family, with a short read timeout.
fn client_for(addr: SocketAddr) -> UdpSocket {
    client_on(if addr.is_ipv4() { "127.0.0.1" } else { "::1" })
}

/// Where a client on loopback reaches the port (a wildcard port is reached on 127.0.0.1).
fn reach(addr: SocketAddr) -> SocketAddr {
    if addr.ip().is_unspecified() {
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), addr.port())
    } else {
        addr
    }
}

#[track_caller]
fn echo_once(reactor: &mut Reactor, port: SocketAddr, payload: &[u8]) {
    let c = client_for(port);
    c.send_to(payload, reach(port)).expect("client send");
    let (reply, from) = drive_recv(reactor, &c);
    assert_eq!(reply, payload);
    assert_eq!(from, reach(port));
}

#[track_caller]
fn wait_for_stop(reactor: &mut Reactor, events: &Events) {
    drive(reactor, "stop_protocol", |_| {
        events.borrow().last() == Some(&Event::Stop)
    });
}

// ----- shared port behaviour ---------------------------------------------------------------

/// The behaviour every port has however it was opened, checked over the port `open` makes
/// (Twisted's test mixins): start before anything, its address, echo of a normal and an
/// empty datagram with the sender's address, exact counters, the start and close log lines,
/// stop (idempotent, nothing delivered after it, `stop_protocol` once and last).
fn check_port_behaviour(open: impl FnOnce(&mut Reactor, Recorder) -> ListeningPort<Recorder>) {
    init_logging();
    let mut reactor = reactor();
    let (recorder, events) = Recorder::echoing();
    let port = open(&mut reactor, recorder);
    let local = port.local_addr();

    assert_ne!(local.port(), 0);
    assert_eq!(port.get_host(), local);
    assert_eq!(
        *events.borrow(),
        [Event::Start(local)],
        "start_protocol ran first"
    );
    let inside = reactor
        .with_port(&port, |_, t| (t.local_addr(), t.get_host()))
        .expect("with_port");
    assert_eq!(inside, (local, local));
    assert!(reactor.is_listening(&port));
    assert_eq!(reactor.port_count(), 1);
    assert!(
        logs_about(local).contains(&format!("INFO Recorder starting on {local}")),
        "{:?}",
        logs_about(local)
    );

    let c = client_for(local);
    let me = c.local_addr().expect("client addr");
    for payload in [&b"hello"[..], b""] {
        c.send_to(payload, reach(local)).expect("client send");
        let (reply, from) = drive_recv(&mut reactor, &c);
        assert_eq!(reply, payload);
        assert_eq!(from, reach(local));
    }
    assert_eq!(
        datagrams(&events),
        vec![(b"hello".to_vec(), me), (Vec::new(), me)]
    );
    let s = reactor.port_stats(&port).expect("stats");
    assert_eq!(
        (
            s.datagrams_received,
            s.bytes_received,
            s.datagrams_sent,
            s.bytes_sent
        ),
        (2, 5, 2, 5)
    );

    assert!(reactor.stop_listening(&port));
    assert!(!reactor.stop_listening(&port), "a second stop does nothing");
    assert!(!reactor.is_listening(&port));
    c.send_to(b"too late", reach(local)).expect("client send");
    wait_for_stop(&mut reactor, &events);
    drive_for(&mut reactor, Duration::from_millis(20));
    assert_eq!(
        datagrams(&events).len(),
        2,
        "nothing delivered after the stop"
    );
    assert_eq!(
        events
            .borrow()
            .iter()
            .filter(|e| **e == Event::Stop)
            .count(),
        1
    );
    assert_eq!(events.borrow().last(), Some(&Event::Stop));
    assert_eq!(reactor.port_stats(&port), None);
    assert_eq!(reactor.port_count(), 0);
    assert!(
        logs_about(local).contains(&format!("INFO (UDP Port {local} Closed)")),
        "{:?}",
        logs_about(local)
    );
}

/// A port from `listen_udp(0, ..)` (IPv4 wildcard) has the shared port behaviour.
#[test]
fn port_behaviour_holds_for_listen_udp_port() {
    let _fds = fd_numbers_shared();
    check_port_behaviour(|r, p| r.listen_udp(0, p).expect("listen_udp"));
}

/// A port listening on ::1 has the shared port behaviour.
#[test]
fn port_behaviour_holds_for_ipv6_listened_port() {
    let _fds = fd_numbers_shared();
    check_port_behaviour(|r, p| {
        r.listen_udp_with(ListenOptions::new(0).interface("::1"), p)
            .expect("listen on ::1")
    });
}

/// A port adopted by raw fd, whose socket the caller drops at once, has the shared port
/// behaviour.
#[test]
fn port_behaviour_holds_for_port_adopted_by_raw_fd() {
    let _fds = fd_numbers_shared();
    check_port_behaviour(|r, p| {
        let sock = udp_on("127.0.0.1:0");
        r.adopt_datagram_port(sock.as_raw_fd(), p).expect("adopt")
    });
}

/// An IPv6 socket adopted by reference has the shared port behaviour.
#[test]
fn port_behaviour_holds_for_adopted_ipv6_socket() {
    let _fds = fd_numbers_shared();
    check_port_behaviour(|r, p| {
        let sock = udp_on("[::1]:0");
        r.adopt_socket(&sock, p).expect("adopt")
    });
}

// ----- adopting ----------------------------------------------------------------------------

/// `adopt_datagram_port` with a bound socket's raw fd serves the protocol on that socket's
/// address.
#[test]
fn adopting_raw_fd_serves_echo_on_the_sockets_address() {
    let _fds = fd_numbers_shared();
    let sock = udp_on("127.0.0.1:0");
    let mut reactor = reactor();
    let (recorder, events) = Recorder::echoing();
    let port = reactor
        .adopt_datagram_port(sock.as_raw_fd(), recorder)
        .expect("adopt raw fd");
    assert_eq!(port.local_addr(), sock.local_addr().expect("sock addr"));
    assert_eq!(events.borrow()[0], Event::Start(port.local_addr()));
    echo_once(&mut reactor, port.local_addr(), b"raw fd");
}

/// `adopt_socket` takes a `std::net::UdpSocket` by reference and serves on its address.
#[test]
fn adopting_std_socket_by_reference_serves_echo() {
    let _fds = fd_numbers_shared();
    let sock = udp_on("127.0.0.1:0");
    let mut reactor = reactor();
    let port = reactor
        .adopt_socket(&sock, Recorder::echoing().0)
        .expect("adopt std socket");
    assert_eq!(port.local_addr(), sock.local_addr().expect("sock addr"));
    echo_once(&mut reactor, port.local_addr(), b"std socket");
}

/// `adopt_socket` takes a bound `socket2::Socket`, IPv4 or IPv6, and serves on its address.
#[test]
fn adopting_socket2_socket_serves_echo() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    for (domain, addr) in [(Domain::IPV4, "127.0.0.1:0"), (Domain::IPV6, "[::1]:0")] {
        let sock = Socket::new(domain, Type::DGRAM, None).expect("socket2 socket");
        let addr: SocketAddr = addr.parse().expect("addr");
        sock.bind(&SockAddr::from(addr)).expect("bind");
        let bound = sock
            .local_addr()
            .expect("local addr")
            .as_socket()
            .expect("ip addr");
        let port = reactor
            .adopt_socket(&sock, Recorder::echoing().0)
            .expect("adopt socket2");
        assert_eq!(port.local_addr(), bound);
        echo_once(&mut reactor, port.local_addr(), b"socket2");
    }
}

/// The reactor holds its own duplicate: the caller may drop its socket right after adopting
/// and the port goes on working.
#[test]
fn port_works_after_caller_drops_its_socket() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    let port = {
        let sock = udp_on("127.0.0.1:0");
        reactor
            .adopt_datagram_port(sock.as_raw_fd(), Recorder::echoing().0)
            .expect("adopt")
    };
    for round in 0..3u8 {
        echo_once(&mut reactor, port.local_addr(), &[round; 64]);
    }
    assert_eq!(reactor.port_stats(&port).expect("stats").datagrams_sent, 3);
}

/// Stopping an adopted port closes only the reactor's duplicate: the caller's socket stays
/// open and can still receive and send on the same address.
#[test]
fn stopping_adopted_port_leaves_callers_socket_usable() {
    let _fds = fd_numbers_shared();
    let sock = udp_on("127.0.0.1:0");
    let addr = sock.local_addr().expect("sock addr");
    let mut reactor = reactor();
    let (recorder, events) = Recorder::echoing();
    let port = reactor.adopt_socket(&sock, recorder).expect("adopt");
    echo_once(&mut reactor, addr, b"while adopted");
    assert!(reactor.stop_listening(&port));
    wait_for_stop(&mut reactor, &events);

    assert_eq!(sock.local_addr().expect("still open"), addr);
    sock.set_nonblocking(false).expect("blocking again");
    sock.set_read_timeout(Some(util::DEADLINE))
        .expect("read timeout");
    let peer = client_for(addr);
    peer.set_read_timeout(Some(util::DEADLINE))
        .expect("read timeout");
    peer.send_to(b"to the caller", addr).expect("peer send");
    let mut buf = [0u8; 64];
    let (n, from) = sock.recv_from(&mut buf).expect("caller's socket receives");
    assert_eq!(&buf[..n], b"to the caller");
    assert_eq!(from, peer.local_addr().expect("peer addr"));
    sock.send_to(b"from the caller", from)
        .expect("caller's socket sends");
    let (n, from) = peer.recv_from(&mut buf).expect("peer receives");
    assert_eq!((&buf[..n], from), (&b"from the caller"[..], addr));
    assert_eq!(
        datagrams(&events).len(),
        1,
        "the stopped port saw nothing of it"
    );
}

/// Adopting switches the shared socket to non-blocking mode: a read on the caller's socket
/// with nothing queued says `WouldBlock` instead of waiting.
#[test]
fn adopting_makes_the_shared_socket_non_blocking() {
    let _fds = fd_numbers_shared();
    let sock = udp_on("127.0.0.1:0");
    assert!(!is_nonblocking(&sock), "std sockets start blocking");
    let mut reactor = reactor();
    let _port = reactor
        .adopt_socket(&sock, Recorder::new().0)
        .expect("adopt");
    assert!(is_nonblocking(&sock), "O_NONBLOCK set on the shared socket");
    let mut buf = [0u8; 16];
    let err = sock.recv_from(&mut buf).expect_err("nothing to read");
    assert_eq!(err.kind(), ErrorKind::WouldBlock);
}

/// Options given to `adopt_with` apply to the adopted socket: the kernel receive buffer
/// (seen through the caller's socket) and the max packet size.
#[test]
fn adopt_with_applies_buffer_size_and_max_packet_size() {
    let _fds = fd_numbers_shared();
    let sock = udp_on("127.0.0.1:0");
    let before = SockRef::from(&sock).recv_buffer_size().expect("SO_RCVBUF");
    let want = before + (64 << 10);
    let mut reactor = reactor();
    let (recorder, events) = Recorder::new();
    let port = reactor
        .adopt_with(
            sock.as_raw_fd(),
            ListenOptions::new(0)
                .max_packet_size(100)
                .recv_buffer_size(want),
            recorder,
        )
        .expect("adopt_with");
    let after = SockRef::from(&sock).recv_buffer_size().expect("SO_RCVBUF");
    assert!(after >= want, "SO_RCVBUF {before} -> {after}, asked {want}");

    let c = client_for(port.local_addr());
    c.send_to(&[1u8; 101], port.local_addr())
        .expect("send long");
    c.send_to(&[2u8; 100], port.local_addr()).expect("send max");
    drive(&mut reactor, "the 100-byte datagram", |_| {
        !datagrams(&events).is_empty()
    });
    assert_eq!(datagrams(&events)[0].0, vec![2u8; 100]);
    assert_eq!(reactor.port_stats(&port).expect("stats").truncated, 1);
}

/// Invalid options are refused by `adopt_with` before the fd is touched.
#[test]
fn adopt_with_invalid_option_leaves_fd_untouched() {
    let _fds = fd_numbers_shared();
    let sock = udp_on("127.0.0.1:0");
    let mut reactor = reactor();
    let err = reactor
        .adopt_with(
            sock.as_raw_fd(),
            ListenOptions::new(0).max_packet_size(0),
            Recorder::new().0,
        )
        .expect_err("invalid option");
    assert!(
        matches!(
            err,
            Error::InvalidOption {
                option: "max_packet_size",
                value: 0,
                ..
            }
        ),
        "{err:?}"
    );
    assert!(!is_nonblocking(&sock));
    assert_eq!(reactor.port_count(), 0);
}

// ----- refusals ----------------------------------------------------------------------------

/// A closed fd number (and -1) is `Error::BadDescriptor` carrying EBADF.
#[test]
fn closed_fd_is_bad_descriptor() {
    let _fds = fd_numbers_exclusive();
    // The reactor first: its own fds must not take the number closed below.
    let mut reactor = reactor();
    let closed: RawFd = udp_on("127.0.0.1:0").as_raw_fd();
    for fd in [closed, -1] {
        let err = reactor
            .adopt_datagram_port(fd, Recorder::new().0)
            .expect_err("closed fd");
        assert!(err.to_string().contains(&format!("fd {fd}")), "{err}");
        match err {
            Error::BadDescriptor { fd: got, source } => {
                assert_eq!(got, fd);
                assert_eq!(source.raw_os_error(), Some(libc::EBADF));
            }
            other => panic!("fd {fd}: expected BadDescriptor, got {other:?}"),
        }
    }
    assert_eq!(reactor.port_count(), 0);
}

/// An fd that is not a socket (a regular file) is `Error::BadDescriptor` carrying
/// ENOTSOCK, and the file stays usable.
#[test]
fn regular_file_is_bad_descriptor_and_stays_readable() {
    let _fds = fd_numbers_shared();
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/Cargo.toml");
    let mut file = std::fs::File::open(path).expect("open Cargo.toml");
    let fd = file.as_raw_fd();
    let err = reactor()
        .adopt_datagram_port(fd, Recorder::new().0)
        .expect_err("not a socket");
    match err {
        Error::BadDescriptor { fd: got, source } => {
            assert_eq!(got, fd);
            assert_eq!(source.raw_os_error(), Some(libc::ENOTSOCK));
        }
        other => panic!("expected BadDescriptor, got {other:?}"),
    }
    let mut text = String::new();
    file.read_to_string(&mut text).expect("file still readable");
    assert!(text.contains("name = \"twine\""));
}

/// A TCP listener is `Error::UnsupportedSocketType` (SOCK_STREAM), and it is left as it
/// was: blocking, and still accepting connections.
#[test]
fn tcp_listener_is_unsupported_socket_type_and_keeps_accepting() {
    let _fds = fd_numbers_shared();
    let listener = TcpListener::bind("127.0.0.1:0").expect("tcp listen");
    let err = reactor()
        .adopt_socket(&listener, Recorder::new().0)
        .expect_err("tcp refused");
    match err {
        Error::UnsupportedSocketType { fd, socket_type } => {
            assert_eq!(fd, listener.as_raw_fd());
            assert_eq!(socket_type, libc::SOCK_STREAM);
        }
        other => panic!("expected UnsupportedSocketType, got {other:?}"),
    }
    assert!(!is_nonblocking(&listener), "listener left blocking");
    let addr = listener.local_addr().expect("listener addr");
    let stream = TcpStream::connect(addr).expect("connect");
    // The handshake is done, so the blocking accept returns at once.
    let (_accepted, peer) = listener.accept().expect("accept after the refusal");
    assert_eq!(peer, stream.local_addr().expect("stream addr"));
}

/// A Unix datagram socket, bound or not, is `Error::UnsupportedAddressFamily` (AF_UNIX)
/// and keeps working.
#[test]
fn unix_datagram_socket_is_unsupported_address_family() {
    let _fds = fd_numbers_shared();
    let dir = std::env::temp_dir().join(format!("twine-adopt-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    let path = dir.join("unix.sock");
    let _ = std::fs::remove_file(&path);
    let bound = UnixDatagram::bind(&path).expect("bind unix socket");
    let unbound = UnixDatagram::unbound().expect("unbound unix socket");
    let mut reactor = reactor();
    for sock in [&bound, &unbound] {
        let err = reactor
            .adopt_socket(sock, Recorder::new().0)
            .expect_err("unix socket refused");
        match err {
            Error::UnsupportedAddressFamily { fd, family } => {
                assert_eq!(fd, sock.as_raw_fd());
                assert_eq!(family, libc::AF_UNIX);
            }
            other => panic!("expected UnsupportedAddressFamily, got {other:?}"),
        }
        assert!(!is_nonblocking(sock));
    }
    unbound.send_to(b"still works", &path).expect("unix send");
    bound
        .set_read_timeout(Some(util::DEADLINE))
        .expect("read timeout");
    let mut buf = [0u8; 32];
    let n = bound.recv(&mut buf).expect("unix recv");
    assert_eq!(&buf[..n], b"still works");
    drop(bound);
    let _ = std::fs::remove_file(&path);
    let _ = std::fs::remove_dir(&dir);
}

/// An unbound UDP socket is `Error::NotBound`; it is left blocking, and once bound it can
/// be adopted.
#[test]
fn unbound_udp_socket_is_not_bound_and_left_untouched() {
    let _fds = fd_numbers_shared();
    let mut reactor = reactor();
    for (domain, addr) in [(Domain::IPV4, "127.0.0.1:0"), (Domain::IPV6, "[::1]:0")] {
        let sock = Socket::new(domain, Type::DGRAM, None).expect("socket2 socket");
        let err = reactor
            .adopt_socket(&sock, Recorder::new().0)
            .expect_err("unbound refused");
        match err {
            Error::NotBound { fd } => assert_eq!(fd, sock.as_raw_fd()),
            other => panic!("expected NotBound, got {other:?}"),
        }
        assert!(!sock.nonblocking().expect("O_NONBLOCK"), "left blocking");
        let addr: SocketAddr = addr.parse().expect("addr");
        sock.bind(&SockAddr::from(addr)).expect("bind afterwards");
        let port = reactor
            .adopt_socket(&sock, Recorder::echoing().0)
            .expect("adopt once bound");
        echo_once(&mut reactor, port.local_addr(), b"bound now");
    }
}
