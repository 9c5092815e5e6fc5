mod util;

use std::net::{IpAddr, Ipv4Addr, SocketAddr, UdpSocket};
use std::process::Command;
use std::time::Duration;

use twine::{Error, Interface, IntoInterface, ListenOptions, ListeningPort, Reactor, UdpTransport};
use util::process::{Netns, spawn_with_lines, wait_for_line};
use util::{
    DEADLINE, Events, OnStart, Recorder, datagrams, drive, drive_for, init_logging, reactor, with,
};

// Every test uses its own group: tests run in parallel, and on Linux a socket bound to a
// port gets a group's datagrams to that port whenever any socket on the host joined the
// group on that interface (IP_MULTICAST_ALL is on by default).

/// The loopback interface's address: groups are joined and sent on it.
const LO: &str = "127.0.0.1";

/// Set in the environment of a child run of this test binary.
const CHILD_FLAG: &str = "TWINE_MULTICAST_TEST_CHILD";

/// A multicast port (`listen_multiple`) on `port` (0: any free one), recording events.
fn mc_listener(reactor: &mut Reactor, port: u16) -> (ListeningPort<Recorder>, Events) {
    let (rec, events) = Recorder::new();
    let port = reactor
        .listen_multicast(port, rec, true)
        .expect("listen_multicast");
    (port, events)
}

/// Joins `group` on the loopback interface.
fn join(reactor: &mut Reactor, port: &ListeningPort<Recorder>, group: &str) {
    with(reactor, port, |t| t.join_group(group, LO)).expect("join the group on 127.0.0.1");
}

/// A unicast loopback port that sends multicast by the loopback interface.
fn sender(reactor: &mut Reactor) -> ListeningPort<Recorder> {
    let (rec, _events) = Recorder::new();
    let port = reactor
        .listen_udp_with(ListenOptions::new(0).interface(LO), rec)
        .expect("listen on 127.0.0.1:0");
    with(reactor, &port, |t| t.set_outgoing_interface(LO)).expect("outgoing interface");
    port
}

fn send(
    reactor: &mut Reactor,
    from: &ListeningPort<Recorder>,
    data: &[u8],
    group: &str,
    port: u16,
) {
    with(reactor, from, |t| t.write(data, (group, port))).expect("write to the group");
}

/// How many times `events` holds the datagram `data`.
fn times(events: &Events, data: &[u8]) -> usize {
    datagrams(events).iter().filter(|(d, _)| d == data).count()
}

/// A multicast write to (group, port) is looped back to the port that joined the group
/// in `start_protocol` and sent it, from the port's own address.
#[test]
fn port_joined_in_start_protocol_receives_its_own_group_write() {
    init_logging();
    const GROUP: &str = "239.77.0.1";
    let mut reactor = reactor();
    let (rec, events) = Recorder::new();
    let proto = OnStart {
        rec,
        start: |t: &mut UdpTransport<'_>| {
            t.join_group(GROUP, LO).expect("join in start_protocol");
            t.set_outgoing_interface(LO).expect("outgoing interface");
            assert!(t.loopback_mode().expect("loopback mode"));
            let port = t.local_addr().port();
            t.write(b"to-myself", (GROUP, port))
                .expect("write to the group in start_protocol");
        },
    };
    let port = reactor.listen_multicast(0, proto, true).expect("listen");
    drive(&mut reactor, "the port's own multicast datagram", |_| {
        !datagrams(&events).is_empty()
    });
    let (data, from) = datagrams(&events).remove(0);
    assert_eq!(data, b"to-myself");
    assert_eq!(
        from,
        SocketAddr::new(Ipv4Addr::LOCALHOST.into(), port.local_addr().port())
    );
}

/// Two ports bound to one port number with `listen_multiple` in one reactor, both joined,
/// each receive one datagram sent to the group once (Twisted's `test_multiListen`).
#[test]
fn two_listeners_on_one_port_both_receive_one_group_datagram() {
    const GROUP: &str = "239.77.0.2";
    let mut reactor = reactor();
    let (first, first_events) = mc_listener(&mut reactor, 0);
    let number = first.local_addr().port();
    let (second, second_events) = mc_listener(&mut reactor, number);
    assert_eq!(second.local_addr().port(), number);
    join(&mut reactor, &first, GROUP);
    join(&mut reactor, &second, GROUP);
    let from = sender(&mut reactor);
    send(&mut reactor, &from, b"both", GROUP, number);
    drive(&mut reactor, "the datagram on both listeners", |_| {
        times(&first_events, b"both") >= 1 && times(&second_events, b"both") >= 1
    });
    drive_for(&mut reactor, Duration::from_millis(50));
    assert_eq!(times(&first_events, b"both"), 1);
    assert_eq!(times(&second_events, b"both"), 1);
    assert_eq!(datagrams(&first_events)[0].1, from.local_addr());
}

/// Unicast to a port two sockets share with `listen_multiple` (`SO_REUSEADDR` +
/// `SO_REUSEPORT`) is not copied: each of 32 senders (distinct source ports) sends 5
/// datagrams, and every datagram arrives once, every sender's datagrams all on one of the
/// two sockets (the one the kernel's hash of the sender's address picks), and each socket
/// gets some senders' (not "the other copy" or the last bound: both are used).
#[test]
fn unicast_to_a_shared_port_reaches_one_socket_per_sender() {
    const SENDERS: usize = 32;
    const EACH: usize = 5;
    // An address of its own, and a port no socket holds (bound without sharing, then
    // freed), so that no other test's shared socket joins this port's group.
    const IP: &str = "127.0.0.91";
    let number = util::dead_addr_on(IP).port();
    let mut reactor = reactor();
    let opts = || {
        ListenOptions::new(number)
            .interface(IP)
            .listen_multiple(true)
    };
    let (rec, a_events) = Recorder::new();
    let a = reactor
        .listen_udp_with(opts(), rec)
        .expect("first shared port");
    let (rec, b_events) = Recorder::new();
    let _b = reactor
        .listen_udp_with(opts(), rec)
        .expect("second shared port");
    let to = a.local_addr();
    let senders: Vec<UdpSocket> = (0..SENDERS).map(|_| util::client()).collect();
    for round in 0..EACH {
        for (i, s) in senders.iter().enumerate() {
            s.send_to(format!("s{i} #{round}").as_bytes(), to)
                .expect("send to the shared port");
        }
    }
    let total = SENDERS * EACH;
    drive(&mut reactor, "every datagram on one of the two", |_| {
        datagrams(&a_events).len() + datagrams(&b_events).len() >= total
    });
    drive_for(&mut reactor, Duration::from_millis(50));
    let (got_a, got_b) = (datagrams(&a_events), datagrams(&b_events));
    assert_eq!(got_a.len() + got_b.len(), total, "no datagram is copied");
    let mut on_a = 0;
    for (i, s) in senders.iter().enumerate() {
        let from = s.local_addr().expect("sender address");
        let count = |got: &[(Vec<u8>, SocketAddr)]| {
            let mut rounds: Vec<Vec<u8>> = got
                .iter()
                .filter(|(_, a)| *a == from)
                .map(|(d, _)| d.clone())
                .collect();
            rounds.sort();
            rounds.dedup();
            (got.iter().filter(|(_, a)| *a == from).count(), rounds.len())
        };
        let ((a_all, a_distinct), (b_all, b_distinct)) = (count(&got_a), count(&got_b));
        assert_eq!(a_all, a_distinct, "sender {i}: a duplicate on the first");
        assert_eq!(b_all, b_distinct, "sender {i}: a duplicate on the second");
        assert!(
            (a_all, b_all) == (EACH, 0) || (a_all, b_all) == (0, EACH),
            "sender {i} ({from}): {a_all} on the first socket, {b_all} on the second"
        );
        on_a += usize::from(a_all == EACH);
    }
    println!(
        "senders on the first socket: {on_a}, on the second: {}",
        SENDERS - on_a
    );
    assert!(
        on_a > 0 && on_a < SENDERS,
        "the kernel's hash puts every sender on one socket: {on_a} of {SENDERS} on the first"
    );
}

/// A listener in another process on the same port number, joined to the group, receives
/// the same group datagram as the one in this process.
#[test]
fn listener_in_another_process_on_the_same_port_receives_the_group_datagram() {
    const GROUP: &str = "239.77.0.3";
    let mut reactor = reactor();
    let (here, here_events) = mc_listener(&mut reactor, 0);
    let number = here.local_addr().port();
    join(&mut reactor, &here, GROUP);

    let mut cmd = Command::new(std::env::current_exe().expect("test binary"));
    cmd.args([
        "--exact",
        "child_process_multicast_listener",
        "--ignored",
        "--nocapture",
    ])
    .env(CHILD_FLAG, "1")
    .env("TWINE_MC_CHILD_PORT", number.to_string())
    .env("TWINE_MC_CHILD_GROUP", GROUP);
    let (mut child, lines) = spawn_with_lines(cmd);
    wait_for_line(&lines, "CHILD-READY");

    let from = sender(&mut reactor);
    send(&mut reactor, &from, b"cross-process", GROUP, number);
    drive(&mut reactor, "the datagram in this process", |_| {
        times(&here_events, b"cross-process") == 1
    });
    let got = wait_for_line(&lines, "CHILD-GOT ");
    assert_eq!(got, "CHILD-GOT cross-process");
    let status = child.wait_within(DEADLINE);
    assert!(status.success(), "child failed: {status}");
}

/// Not a test of its own: the other process of
/// `listener_in_another_process_on_the_same_port_receives_the_group_datagram`.
#[test]
#[ignore = "child process of listener_in_another_process_on_the_same_port_receives_the_group_datagram"]
fn child_process_multicast_listener() {
    if std::env::var_os(CHILD_FLAG).is_none() {
        eprintln!("not a child run ({CHILD_FLAG} unset): nothing to do");
        return;
    }
    let number: u16 = std::env::var("TWINE_MC_CHILD_PORT")
        .expect("port")
        .parse()
        .expect("port number");
    let group = std::env::var("TWINE_MC_CHILD_GROUP").expect("group");
    let mut reactor = reactor();
    let (port, events) = mc_listener(&mut reactor, number);
    join(&mut reactor, &port, &group);
    println!("CHILD-READY");
    drive(&mut reactor, "the group datagram in the child", |_| {
        !datagrams(&events).is_empty()
    });
    let (data, _) = datagrams(&events).remove(0);
    println!("CHILD-GOT {}", String::from_utf8_lossy(&data));
}

/// After `leave_group` a port no longer receives that group's datagrams (none within
/// 200 ms), while a group it is still joined to keeps arriving.
#[test]
fn leave_group_stops_delivery_of_that_group() {
    // Linux delivers a group's datagrams to every socket bound to the port as long as any
    // socket on the host is joined to the group (IP_MULTICAST_ALL), so the membership that
    // stays is another group's, on the same port.
    const LEFT: &str = "239.77.0.4";
    const KEPT: &str = "239.77.0.5";
    let mut reactor = reactor();
    let (port, events) = mc_listener(&mut reactor, 0);
    let number = port.local_addr().port();
    join(&mut reactor, &port, LEFT);
    join(&mut reactor, &port, KEPT);
    let from = sender(&mut reactor);
    send(&mut reactor, &from, b"before-leave", LEFT, number);
    drive(&mut reactor, "a datagram before leaving", |_| {
        times(&events, b"before-leave") == 1
    });
    with(&mut reactor, &port, |t| t.leave_group(LEFT, LO)).expect("leave the group");
    send(&mut reactor, &from, b"after-leave", LEFT, number);
    send(&mut reactor, &from, b"still-joined", KEPT, number);
    drive(&mut reactor, "the still-joined group's datagram", |_| {
        times(&events, b"still-joined") == 1
    });
    drive_for(&mut reactor, Duration::from_millis(200));
    assert_eq!(
        times(&events, b"after-leave"),
        0,
        "{:?}",
        datagrams(&events)
    );
}

/// A port joined to a group still receives unicast datagrams.
#[test]
fn joined_port_still_receives_unicast() {
    const GROUP: &str = "239.77.0.6";
    let mut reactor = reactor();
    let (port, events) = mc_listener(&mut reactor, 0);
    join(&mut reactor, &port, GROUP);
    let client = util::client();
    client
        .send_to(b"unicast", (LO, port.local_addr().port()))
        .unwrap();
    drive(&mut reactor, "a unicast datagram", |_| {
        datagrams(&events) == vec![(b"unicast".to_vec(), client.local_addr().unwrap())]
    });
}

/// TTL, loopback, outgoing interface and broadcast have Twisted's defaults (1, on, any,
/// off) and read back what was set.
#[test]
fn multicast_options_have_twisted_defaults_and_read_back_what_was_set() {
    let mut reactor = reactor();
    let (port, _events) = mc_listener(&mut reactor, 0);
    with(&mut reactor, &port, |t| {
        assert_eq!(t.ttl().unwrap(), 1);
        t.set_ttl(5).unwrap();
        assert_eq!(t.ttl().unwrap(), 5);
        t.set_ttl(0).unwrap();
        assert_eq!(t.ttl().unwrap(), 0);
        t.set_ttl(255).unwrap();
        assert_eq!(t.ttl().unwrap(), 255);

        assert!(t.loopback_mode().unwrap());
        t.set_loopback_mode(false).unwrap();
        assert!(!t.loopback_mode().unwrap());
        t.set_loopback_mode(true).unwrap();
        assert!(t.loopback_mode().unwrap());

        assert_eq!(t.outgoing_interface().unwrap(), Interface::Any);
        t.set_outgoing_interface(LO).unwrap();
        assert_eq!(
            t.outgoing_interface().unwrap(),
            Interface::V4(Ipv4Addr::LOCALHOST)
        );
        t.set_outgoing_interface("").unwrap();
        assert_eq!(t.outgoing_interface().unwrap(), Interface::Any);

        assert!(!t.broadcast_allowed().unwrap());
        t.set_broadcast_allowed(true).unwrap();
        assert!(t.broadcast_allowed().unwrap());
        t.set_broadcast_allowed(false).unwrap();
        assert!(!t.broadcast_allowed().unwrap());
    });
}

/// `set_ttl` past 255 is `InvalidOption` and leaves the TTL as it was.
#[test]
fn set_ttl_past_255_is_invalid_option() {
    let mut reactor = reactor();
    let (port, _events) = mc_listener(&mut reactor, 0);
    with(&mut reactor, &port, |t| {
        t.set_ttl(5).unwrap();
        for bad in [256, u32::MAX] {
            let err = t.set_ttl(bad).unwrap_err();
            assert!(
                matches!(err, Error::InvalidOption { value, .. } if value == bad as usize),
                "{err:?}"
            );
        }
        assert_eq!(t.ttl().unwrap(), 5);
    });
}

/// An IPv4 port's outgoing interface is named by address: an interface name is
/// `InvalidAddress`, and the setting is unchanged.
#[test]
fn ipv4_outgoing_interface_by_name_is_invalid_address() {
    let mut reactor = reactor();
    let (port, _events) = mc_listener(&mut reactor, 0);
    with(&mut reactor, &port, |t| {
        let err = t.set_outgoing_interface("lo").unwrap_err();
        assert!(matches!(err, Error::InvalidAddress { .. }), "{err:?}");
        assert_eq!(t.outgoing_interface().unwrap(), Interface::Any);
    });
}

/// Joining a unicast address is `NotMulticast`, naming the address.
#[test]
fn joining_a_unicast_address_is_not_multicast() {
    let mut reactor = reactor();
    let (port, _events) = mc_listener(&mut reactor, 0);
    let err = with(&mut reactor, &port, |t| t.join_group("127.0.0.1", LO)).unwrap_err();
    assert!(
        matches!(err, Error::NotMulticast { group } if group == IpAddr::from(Ipv4Addr::LOCALHOST)),
        "{err:?}"
    );
}

/// Joining an IPv6 group on an IPv4 port is `AddressFamilyMismatch`.
#[test]
fn joining_an_ipv6_group_on_an_ipv4_port_is_address_family_mismatch() {
    let mut reactor = reactor();
    let (port, _events) = mc_listener(&mut reactor, 0);
    let err = with(&mut reactor, &port, |t| t.join_group("ff02::1", "")).unwrap_err();
    assert!(
        matches!(err, Error::AddressFamilyMismatch { .. }),
        "{err:?}"
    );
}

/// A hostname as the group, or an unknown name as the interface, is `InvalidAddress`.
#[test]
fn joining_with_a_hostname_is_invalid_address() {
    let mut reactor = reactor();
    let (port, _events) = mc_listener(&mut reactor, 0);
    with(&mut reactor, &port, |t| {
        let err = t.join_group("all-systems.mcast.net", LO).unwrap_err();
        assert!(
            matches!(&err, Error::InvalidAddress { address, .. } if address == "all-systems.mcast.net"),
            "{err:?}"
        );
        let err = t
            .join_group("239.77.0.7", "no-such-interface.example")
            .unwrap_err();
        assert!(matches!(err, Error::InvalidAddress { .. }), "{err:?}");
    });
}

/// Joining a group twice on one interface is a `Multicast` error ("join").
#[test]
fn joining_the_same_group_twice_is_a_multicast_error() {
    const GROUP: &str = "239.77.0.8";
    let mut reactor = reactor();
    let (port, _events) = mc_listener(&mut reactor, 0);
    join(&mut reactor, &port, GROUP);
    let err = with(&mut reactor, &port, |t| t.join_group(GROUP, LO)).unwrap_err();
    assert!(
        matches!(&err, Error::Multicast { op: "join", group, .. } if group.to_string() == GROUP),
        "{err:?}"
    );
}

/// Leaving a group the port never joined is a `Multicast` error ("leave").
#[test]
fn leaving_a_group_not_joined_is_a_multicast_error() {
    const GROUP: &str = "239.77.0.9";
    let mut reactor = reactor();
    let (port, _events) = mc_listener(&mut reactor, 0);
    let err = with(&mut reactor, &port, |t| t.leave_group(GROUP, LO)).unwrap_err();
    assert!(
        matches!(&err, Error::Multicast { op: "leave", group, .. } if group.to_string() == GROUP),
        "{err:?}"
    );
}

/// `listen_multicast` on a port number held by a socket bound without port sharing is
/// `CannotListen`, naming the address, with or without `listen_multiple`.
#[test]
fn listen_multicast_on_a_port_held_without_sharing_is_cannot_listen() {
    let mut reactor = reactor();
    let holder = UdpSocket::bind((LO, 0)).expect("bind the holder");
    let number = holder.local_addr().unwrap().port();
    for listen_multiple in [false, true] {
        let (rec, events) = Recorder::new();
        let err = reactor
            .listen_multicast(number, rec, listen_multiple)
            .unwrap_err();
        assert!(
            matches!(err, Error::CannotListen { addr, .. } if addr.port() == number),
            "listen_multiple={listen_multiple}: {err:?}"
        );
        assert!(events.borrow().is_empty(), "start_protocol ran");
    }
    assert_eq!(reactor.port_count(), 0);
}

/// On an IPv6 port `ttl()` is the multicast hop limit: 1 by default, and `set_ttl` sets it;
/// loopback is on and the outgoing interface is any by default, and take an interface name.
#[test]
fn ipv6_port_ttl_is_the_multicast_hop_limit() {
    let mut reactor = reactor();
    let (rec, _events) = Recorder::new();
    let port = reactor
        .listen_udp_with(ListenOptions::new(0).interface("::1"), rec)
        .expect("listen on ::1");
    let lo = "lo".interface().expect("lo has an index");
    with(&mut reactor, &port, |t| {
        assert_eq!(t.ttl().unwrap(), 1);
        t.set_ttl(7).unwrap();
        assert_eq!(t.ttl().unwrap(), 7);
        let err = t.set_ttl(256).unwrap_err();
        assert!(matches!(err, Error::InvalidOption { .. }), "{err:?}");
        assert_eq!(t.ttl().unwrap(), 7);

        assert!(t.loopback_mode().unwrap());
        t.set_loopback_mode(false).unwrap();
        assert!(!t.loopback_mode().unwrap());

        assert_eq!(t.outgoing_interface().unwrap(), Interface::Any);
        t.set_outgoing_interface("lo").unwrap();
        assert_eq!(t.outgoing_interface().unwrap(), lo);
        let err = t.set_outgoing_interface(LO).unwrap_err();
        assert!(matches!(err, Error::InvalidAddress { .. }), "{err:?}");

        let err = t.join_group("239.77.0.10", "").unwrap_err();
        assert!(
            matches!(err, Error::AddressFamilyMismatch { .. }),
            "{err:?}"
        );
    });
}

// ----- in a network namespace --------------------------------------------------------------

/// The interface the namespace tests use, with its addresses.
const NS_IF: &str = "d0";
const NS_V4: &str = "10.199.0.1";

/// IPv6 multicast (which does not route over `lo` here) reaches the sender and a second
/// listener on the same port, inside a network namespace; with loopback off the sender's
/// host no longer gets its sends.
#[test]
#[ignore = "needs root for a network namespace: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test multicast -- --ignored"]
fn ipv6_multicast_in_a_network_namespace_reaches_sender_and_second_listener() {
    run_in_netns("mc6", "netns_inner_ipv6_multicast");
}

/// With loopback off, an IPv4 sender's own host (the sender and a second listener on the
/// port) no longer receives its group sends, while sends from a port with loopback on
/// still arrive (Twisted's `test_loopback`). Run in a network namespace, on an interface
/// that is not `lo`: on `lo` the kernel delivers multicast whatever the loopback option.
#[test]
#[ignore = "needs root for a network namespace: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test multicast -- --ignored"]
fn ipv4_loopback_off_stops_the_senders_host_receiving_its_sends() {
    run_in_netns("mc4", "netns_inner_ipv4_loopback_off");
}

/// Not a test of its own: the part of
/// `ipv6_multicast_in_a_network_namespace_reaches_sender_and_second_listener` run inside
/// the namespace.
#[test]
#[ignore = "run inside a network namespace by ipv6_multicast_in_a_network_namespace_reaches_sender_and_second_listener"]
fn netns_inner_ipv6_multicast() {
    if std::env::var_os(CHILD_FLAG).is_none() {
        eprintln!("not a child run ({CHILD_FLAG} unset): nothing to do");
        return;
    }
    const GROUP: &str = "ff15::7777";
    let d0 = NS_IF.interface().expect("d0 exists in the namespace");
    let mut reactor = reactor();
    let opts = |port| {
        ListenOptions::new(port)
            .interface("::")
            .listen_multiple(true)
    };
    let (rec, a_events) = Recorder::new();
    let a = reactor.listen_udp_with(opts(0), rec).expect("listen on ::");
    let number = a.local_addr().port();
    let (rec, b_events) = Recorder::new();
    let b = reactor
        .listen_udp_with(opts(number), rec)
        .expect("second listener on the same port");
    for port in [&a, &b] {
        with(&mut reactor, port, |t| {
            t.join_group(GROUP, NS_IF).expect("join on d0 by name");
            t.set_outgoing_interface(NS_IF).expect("outgoing d0");
            assert_eq!(t.outgoing_interface().unwrap(), d0);
            assert_eq!(t.ttl().unwrap(), 1);
            assert!(t.loopback_mode().unwrap());
        });
    }
    let send = |reactor: &mut Reactor, port: &ListeningPort<Recorder>, data: &[u8]| {
        with(reactor, port, |t| t.write(data, (GROUP, number))).expect("write to the group");
    };
    send(&mut reactor, &a, b"v6-hello");
    drive(&mut reactor, "the IPv6 group datagram on both", |_| {
        times(&a_events, b"v6-hello") == 1 && times(&b_events, b"v6-hello") == 1
    });
    assert_eq!(datagrams(&a_events)[0].1.port(), number);

    with(&mut reactor, &a, |t| t.set_loopback_mode(false)).expect("loopback off");
    send(&mut reactor, &a, b"v6-quiet");
    send(&mut reactor, &b, b"v6-from-b");
    drive(&mut reactor, "b's datagram on both", |_| {
        times(&a_events, b"v6-from-b") == 1 && times(&b_events, b"v6-from-b") == 1
    });
    drive_for(&mut reactor, Duration::from_millis(200));
    assert_eq!(times(&a_events, b"v6-quiet"), 0);
    assert_eq!(times(&b_events, b"v6-quiet"), 0);
    println!("INNER-DONE");
}

/// Not a test of its own: the part of
/// `ipv4_loopback_off_stops_the_senders_host_receiving_its_sends` run inside the namespace.
#[test]
#[ignore = "run inside a network namespace by ipv4_loopback_off_stops_the_senders_host_receiving_its_sends"]
fn netns_inner_ipv4_loopback_off() {
    if std::env::var_os(CHILD_FLAG).is_none() {
        eprintln!("not a child run ({CHILD_FLAG} unset): nothing to do");
        return;
    }
    const GROUP: &str = "239.77.9.1";
    let mut reactor = reactor();
    let (a, a_events) = mc_listener(&mut reactor, 0);
    let number = a.local_addr().port();
    let (b, b_events) = mc_listener(&mut reactor, number);
    for port in [&a, &b] {
        with(&mut reactor, port, |t| {
            t.join_group(GROUP, NS_V4).expect("join on d0's address");
            t.set_outgoing_interface(NS_V4).expect("outgoing d0");
        });
    }
    send(&mut reactor, &a, b"loop-on", GROUP, number);
    drive(&mut reactor, "the looped-back datagram on both", |_| {
        times(&a_events, b"loop-on") == 1 && times(&b_events, b"loop-on") == 1
    });
    with(&mut reactor, &a, |t| {
        t.set_loopback_mode(false).expect("loopback off");
        assert!(!t.loopback_mode().unwrap());
    });
    send(&mut reactor, &a, b"loop-off", GROUP, number);
    send(&mut reactor, &b, b"from-b", GROUP, number);
    drive(&mut reactor, "b's datagram on both", |_| {
        times(&a_events, b"from-b") == 1 && times(&b_events, b"from-b") == 1
    });
    drive_for(&mut reactor, Duration::from_millis(200));
    assert_eq!(
        times(&a_events, b"loop-off"),
        0,
        "{:?}",
        datagrams(&a_events)
    );
    assert_eq!(
        times(&b_events, b"loop-off"),
        0,
        "{:?}",
        datagrams(&b_events)
    );
    println!("INNER-DONE");
}

/// Creates a network namespace with `lo` up and a multicast interface `d0` (a dummy, or one
/// end of a veth pair) holding 10.199.0.1/24 and fd00::1/64, runs the ignored test `inner`
/// of this binary in it, and asserts that it ran and passed. The tests that call it are
/// ignored unless asked for, so a machine that cannot make the namespace fails them.
#[track_caller]
fn run_in_netns(tag: &str, inner: &str) {
    let ns = Netns::create(tag)
        .and_then(add_multicast_interface)
        .unwrap_or_else(|why| {
            panic!("{inner} needs a network namespace with a multicast interface: {why}")
        });
    ns.run_inner(inner, CHILD_FLAG);
}

/// Adds `d0` to the namespace: multicast on, up, with 10.199.0.1/24 and fd00::1/64.
fn add_multicast_interface(ns: Netns) -> Result<Netns, String> {
    if ns.ip(&["link", "add", NS_IF, "type", "dummy"]).is_err() {
        ns.ip(&["link", "add", NS_IF, "type", "veth", "peer", "name", "d1"])?;
        ns.ip(&["link", "set", "d1", "up"])?;
    }
    ns.ip(&["link", "set", NS_IF, "multicast", "on", "up"])?;
    ns.ip(&["addr", "add", &format!("{NS_V4}/24"), "dev", NS_IF])?;
    ns.ip(&["-6", "addr", "add", "fd00::1/64", "dev", NS_IF, "nodad"])?;
    Ok(ns)
}

/// With `set_multicast_all(false)`, a port sharing its port number with another receives
/// only the groups it joined itself; with the default (on) it also gets the other's.
#[test]
fn multicast_all_off_keeps_a_shared_port_to_its_own_groups() {
    const MINE: &str = "239.77.0.40";
    const THEIRS: &str = "239.77.0.41";
    let mut reactor = reactor();
    let (picky, picky_events) = mc_listener(&mut reactor, 0);
    let number = picky.local_addr().port();
    let (open, open_events) = mc_listener(&mut reactor, number);
    let (other, other_events) = mc_listener(&mut reactor, number);
    assert!(with(&mut reactor, &picky, |t| t.multicast_all()).expect("read IP_MULTICAST_ALL"));
    with(&mut reactor, &picky, |t| t.set_multicast_all(false)).expect("turn it off");
    assert!(!with(&mut reactor, &picky, |t| t.multicast_all()).expect("read it back"));
    join(&mut reactor, &picky, MINE);
    join(&mut reactor, &open, MINE);
    join(&mut reactor, &other, THEIRS);
    let from = sender(&mut reactor);
    send(&mut reactor, &from, b"theirs", THEIRS, number);
    send(&mut reactor, &from, b"mine", MINE, number);
    drive(&mut reactor, "each port's datagrams", |_| {
        times(&picky_events, b"mine") == 1
            && times(&open_events, b"theirs") == 1
            && times(&other_events, b"theirs") == 1
    });
    drive_for(&mut reactor, Duration::from_millis(100));
    assert_eq!(
        times(&picky_events, b"theirs"),
        0,
        "{:?}",
        datagrams(&picky_events)
    );
}
