//! Numbered datagrams: each starts with a 4-byte big-endian sequence number, and a sink
//! records the numbers in the order they arrive.

use std::cell::RefCell;
use std::rc::Rc;

use twine::{DatagramProtocol, ListeningPort, Reactor, from_fn};

use super::loopback;

/// The sequence numbers a [`sequence_sink`] received, in order.
pub type Sequence = Rc<RefCell<Vec<u32>>>;

/// A datagram of `size` bytes starting with `seq`.
pub fn numbered(seq: u32, size: usize) -> Vec<u8> {
    let mut payload = vec![0u8; size];
    payload[..4].copy_from_slice(&seq.to_be_bytes());
    payload
}

/// A receiver on 127.0.0.1 with a large buffer (room for every datagram of a test),
/// recording the 4-byte sequence number each datagram starts with (or 0 for a shorter
/// one).
pub fn sequence_sink(
    reactor: &mut Reactor,
) -> (ListeningPort<impl DatagramProtocol + use<>>, Sequence) {
    let received = Sequence::default();
    let sink = received.clone();
    let port = reactor
        .listen_udp_with(
            loopback().recv_buffer_size(4 << 20),
            from_fn(move |_, data, _| {
                let seq = data
                    .get(..4)
                    .map_or(0, |b| u32::from_be_bytes(b.try_into().expect("4 bytes")));
                sink.borrow_mut().push(seq);
            }),
        )
        .expect("receiver");
    (port, received)
}
