//! The send queue under a really full kernel buffer.
//!
//! Loopback never pushes back on a UDP send (the kernel frees the buffer as it delivers),
//! so the test runs in a network namespace of its own whose `lo` is rate-limited by a
//! token-bucket qdisc (1 MB/s): packets waiting in it stay charged to the sender's small
//! send buffer, `sendto` says "would block", and twine's queue takes over. Making the
//! namespace needs root, so a plain `cargo test` lists these tests as ignored; `.ci/run`
//! runs them where it can (`cargo test --test send_queue -- --ignored`), and they fail
//! where the namespace cannot be made.

mod util;

use twine::{Error, from_fn};
use util::process::{Netns, child_run};
use util::sequence::{numbered, sequence_sink};
use util::{dead_addr, drive, loopback, reactor};

const CHILD_FLAG: &str = "TWINE_SEND_QUEUE_TEST_CHILD";

/// In a namespace whose loopback is rate-limited, a burst of writes past the kernel's send
/// buffer is queued (never blocking), refused with `SendQueueFull` past the bound, every
/// write is accounted for, and the queue drains in order once the kernel has room.
#[test]
#[ignore = "needs root for a network namespace with a tbf qdisc: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test send_queue -- --ignored"]
fn full_kernel_buffer_queues_then_refuses_then_drains_in_order() {
    Netns::run_rate_limited("sq", "inner_full_kernel_buffer", CHILD_FLAG);
}

/// Not a test of its own: the part of the test above that runs inside the namespace.
#[test]
#[ignore = "runs inside a network namespace, started by full_kernel_buffer_queues_then_refuses_then_drains_in_order"]
fn inner_full_kernel_buffer() {
    if !child_run(CHILD_FLAG) {
        return;
    }
    const WRITES: u32 = 300;
    const SIZE: usize = 1000;
    const LIMIT: usize = 50 * SIZE;
    let mut reactor = reactor();
    let (receiver, received) = sequence_sink(&mut reactor);
    let sender = reactor
        .listen_udp_with(
            loopback().send_buffer_size(4096).send_queue_limit(LIMIT),
            from_fn(|_, _, _| {}),
        )
        .expect("sender");
    let to = receiver.local_addr();

    let (accepted, refused, queued_bytes) = reactor
        .with_port(&sender, |_, t| {
            let mut accepted = Vec::new();
            let mut refused = 0;
            for seq in 0..WRITES {
                match t.write(&numbered(seq, SIZE), to) {
                    Ok(()) => accepted.push(seq),
                    Err(Error::SendQueueFull { len, queued }) => {
                        assert_eq!(len, SIZE);
                        assert!(queued + SIZE > LIMIT, "refused below the bound: {queued}");
                        refused += 1;
                    }
                    Err(e) => panic!("write {seq}: unexpected {e}"),
                }
            }
            (accepted, refused, t.write_buffer_size())
        })
        .expect("sender open");

    let stats = reactor.port_stats(&sender).expect("sender stats");
    assert!(
        stats.send_queued > 0,
        "the kernel never pushed back: {stats:?}"
    );
    assert!(refused > 0, "the bound was never reached: {stats:?}");
    assert!(queued_bytes > 0 && queued_bytes <= LIMIT, "{queued_bytes}");
    assert_eq!(stats.send_dropped, refused);
    assert_eq!(accepted.len() as u64 + refused, u64::from(WRITES));
    assert_eq!(
        stats.datagrams_sent + stats.send_queued,
        accepted.len() as u64,
        "each accepted write was sent at once or queued: {stats:?}"
    );

    drive(
        &mut reactor,
        "the queue to drain and every accepted datagram to arrive",
        |r| {
            let drained = r
                .with_port(&sender, |_, t| t.write_buffer_size() == 0)
                .unwrap_or(false);
            drained && received.borrow().len() == accepted.len()
        },
    );
    let stats = reactor.port_stats(&sender).expect("sender stats");
    assert_eq!(stats.datagrams_sent, accepted.len() as u64, "{stats:?}");
    assert_eq!(stats.send_errors, 0, "{stats:?}");
    assert_eq!(
        *received.borrow(),
        accepted,
        "datagrams arrive in write order"
    );
    println!(
        "INNER-DONE sent {} queued {} refused {refused}",
        stats.datagrams_sent, stats.send_queued
    );
}

/// In the same rate-limited namespace, a connected port whose peer has no listener keeps
/// draining its queue through the refusals: each refusal, whether read by the reactor or
/// met by a queued send, reaches `connection_refused` once and is counted, and the queue
/// empties.
#[test]
#[ignore = "needs root for a network namespace with a tbf qdisc: run by .ci/run where .ci/netns-probe passes, or as root: cargo test --test send_queue -- --ignored"]
fn refusals_while_draining_the_queue_reach_the_protocol() {
    Netns::run_rate_limited("sqr", "inner_refusals_while_draining", CHILD_FLAG);
}

/// Not a test of its own: the part of the test above that runs inside the namespace.
#[test]
#[ignore = "runs inside a network namespace, started by refusals_while_draining_the_queue_reach_the_protocol"]
fn inner_refusals_while_draining() {
    if !child_run(CHILD_FLAG) {
        return;
    }
    let dead_addr = dead_addr();
    let mut reactor = reactor();
    let (proto, events) = util::Recorder::new();
    let port = reactor
        .listen_udp_with(loopback().send_buffer_size(4096), proto)
        .expect("sender");
    let accepted = reactor
        .with_port(&port, |_, t| {
            t.connect(dead_addr).expect("connect");
            (0..100).filter(|_| t.send(&[0u8; 1000]).is_ok()).count()
        })
        .expect("port open");
    let queued = reactor.port_stats(&port).expect("stats").send_queued;
    assert!(queued > 0, "the kernel never pushed back");
    drive(&mut reactor, "the queue to drain", |r| {
        r.with_port(&port, |_, t| t.write_buffer_size() == 0)
            .unwrap_or(false)
    });
    let stats = reactor.port_stats(&port).expect("stats");
    let refused_events = util::count(&events, |e| *e == util::Event::Refused) as u64;
    assert!(stats.refused > 0, "no refusal seen: {stats:?}");
    assert_eq!(refused_events, stats.refused, "{stats:?}");
    assert_eq!(
        stats.send_errors, 0,
        "refusals are not send errors: {stats:?}"
    );
    println!(
        "INNER-DONE accepted {accepted} queued {queued} sent {} refused {}",
        stats.datagrams_sent, stats.refused
    );
}
