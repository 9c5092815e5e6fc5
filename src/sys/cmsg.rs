//! The control messages the kernel attaches to a received datagram or error-queue entry:
//! the one walk over them ([`ControlMessages`]), and the room each kind needs
//! ([`ControlSpace`]), so that a receive slot reserves what the options turned on need;
//! what a datagram's messages say ([`RecvMeta`]); and the writer of the messages a send
//! carries ([`ControlWriter`], for [`SendMeta`] and segmentation).

use std::mem;
use std::net::IpAddr;
use std::time::SystemTime;

/// One control message: its level, type and data.
#[derive(Debug, Clone, Copy)]
pub struct ControlMessage<'a> {
    pub level: libc::c_int,
    pub kind: libc::c_int,
    pub data: &'a [u8],
}

impl ControlMessage<'_> {
    /// The data as a native-endian `u32`, if it holds at least four bytes (the drop count,
    /// the segment size of a coalesced read).
    pub fn u32(&self) -> Option<u32> {
        let bytes: [u8; 4] = self.data.get(..4)?.try_into().ok()?;
        Some(u32::from_ne_bytes(bytes))
    }
}

/// The control messages in `bytes` (what the kernel wrote: `msg_controllen` bytes from
/// `msg_control`), in order. The walk never reads past `bytes`: a message whose length
/// runs past the end, or is shorter than its header, ends it.
#[derive(Debug, Clone)]
pub struct ControlMessages<'a> {
    rest: &'a [u8],
}

impl<'a> ControlMessages<'a> {
    pub fn new(bytes: &'a [u8]) -> Self {
        ControlMessages { rest: bytes }
    }
}

/// A control message's header, as `CMSG_LEN(0)` counts it (with its padding).
fn header_len() -> usize {
    // SAFETY: CMSG_LEN only computes a length.
    unsafe { libc::CMSG_LEN(0) as usize }
}

/// The room a message with `data` bytes of data takes, padding included (`CMSG_SPACE`).
pub(crate) fn space(data: usize) -> usize {
    // SAFETY: CMSG_SPACE only computes a length.
    unsafe { libc::CMSG_SPACE(data as libc::c_uint) as usize }
}

impl<'a> Iterator for ControlMessages<'a> {
    type Item = ControlMessage<'a>;

    #[inline]
    fn next(&mut self) -> Option<ControlMessage<'a>> {
        if self.rest.len() < mem::size_of::<libc::cmsghdr>() {
            return None;
        }
        // SAFETY: `rest` holds at least a whole header, read unaligned (a plain struct of
        // integers: any bytes are a valid value).
        let hdr: libc::cmsghdr = unsafe { std::ptr::read_unaligned(self.rest.as_ptr().cast()) };
        // `cmsg_len` is a size_t with glibc and a socklen_t with musl.
        #[allow(clippy::unnecessary_cast)]
        let len = hdr.cmsg_len as usize;
        let start = header_len();
        if len < start || len > self.rest.len() {
            self.rest = &[];
            return None;
        }
        let data = &self.rest[start..len];
        // The next message starts at the aligned end of this one (the last may end
        // unpadded).
        let step = space(len - start).min(self.rest.len());
        self.rest = &self.rest[step..];
        Some(ControlMessage {
            level: hdr.cmsg_level,
            kind: hdr.cmsg_type,
            data,
        })
    }
}

/// What a receive slot's control room must hold: one message per option turned on.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ControlSpace {
    /// The socket's drop count (`SO_RXQ_OVFL`, a `u32`).
    pub drop_count: bool,
    /// The segment size of a coalesced read (`UDP_GRO`, an `int`).
    pub segment_size: bool,
    /// The IPv4 arrival address (`IP_PKTINFO`, an `in_pktinfo`).
    pub pktinfo_v4: bool,
    /// The IPv6 arrival address (`IPV6_PKTINFO`, an `in6_pktinfo`).
    pub pktinfo_v6: bool,
    /// The IPv4 TOS byte (`IP_TOS`, one byte).
    pub tos_v4: bool,
    /// The IPv6 traffic class (`IPV6_TCLASS`, an `int`).
    pub tclass_v6: bool,
    /// The kernel's receive timestamp (`SCM_TIMESTAMPNS`, a `timespec`).
    pub timestamp: bool,
}

impl ControlSpace {
    /// The bytes of control room one datagram needs (a multiple of 8).
    pub fn bytes(&self) -> usize {
        let sizes = [
            (self.drop_count, mem::size_of::<u32>()),
            (self.segment_size, mem::size_of::<libc::c_int>()),
            (self.pktinfo_v4, PKTINFO_V4_LEN),
            (self.pktinfo_v6, PKTINFO_V6_LEN),
            (self.tos_v4, 1),
            (self.tclass_v6, mem::size_of::<libc::c_int>()),
            // Two words: 16 bytes at most.
            (self.timestamp, 2 * mem::size_of::<usize>()),
        ];
        let bytes: usize = sizes
            .iter()
            .filter(|(on, _)| *on)
            .map(|&(_, len)| space(len))
            .sum();
        bytes.next_multiple_of(8)
    }

    /// Whether any option whose messages a datagram's hooks read is on (the arrival
    /// address, the TOS byte, the timestamp).
    pub fn per_datagram(&self) -> bool {
        self.pktinfo_v4 || self.pktinfo_v6 || self.tos_v4 || self.tclass_v6 || self.timestamp
    }
}

/// The data of an `IP_PKTINFO` message (`struct in_pktinfo`: an index, two addresses).
pub(crate) const PKTINFO_V4_LEN: usize = 12;
/// The data of an `IPV6_PKTINFO` message (`struct in6_pktinfo`: an address, an index).
pub(crate) const PKTINFO_V6_LEN: usize = 20;

/// What the kernel said of the datagram being delivered, besides its bytes and sender:
/// [`UdpTransport::arrival`](crate::UdpTransport::arrival) inside `datagram_received` (and `datagram_truncated`).
///
/// Each field is `None` unless its listen option is on
/// ([`ListenOptions::arrival_address`](crate::ListenOptions::arrival_address),
/// [`receive_tos`](crate::ListenOptions::receive_tos),
/// [`receive_timestamps`](crate::ListenOptions::receive_timestamps)), and outside those
/// two hooks. Ports of the test kit's in-memory network
/// ([`testing::Simulation`](crate::testing::Simulation)) are told the destination, its
/// reply source and interface 1, never a TOS byte or a timestamp.
///
/// # Examples
///
/// ```
/// use std::net::SocketAddr;
/// use twine::{Arrival, DatagramProtocol, UdpTransport};
///
/// /// Answers each request with the address it was sent to.
/// struct WhoAmI;
///
/// impl DatagramProtocol for WhoAmI {
///     fn datagram_received(&mut self, t: &mut UdpTransport<'_>, _: &[u8], from: SocketAddr) {
///         let Arrival { destination, interface, .. } = t.arrival();
///         let text = format!("you asked {destination:?} on interface {interface:?}");
///         let _ = t.write(text.as_bytes(), from);
///     }
/// }
///
/// let mut reactor = twine::Reactor::new()?;
/// let opts = twine::ListenOptions::new(0).interface("0.0.0.0").arrival_address(true);
/// reactor.listen_udp_with(opts, WhoAmI)?;
/// # Ok::<(), twine::Error>(())
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub struct Arrival {
    /// The address the datagram was sent to: one of this host's, or the multicast or
    /// broadcast address it was sent to (`ipi_addr`, `ipi6_addr`). On a dual-stack IPv6
    /// port an IPv4 datagram's is IPv4-mapped (`::ffff:a.b.c.d`), as its sender's is.
    pub destination: Option<IpAddr>,
    /// The index of the interface it arrived on.
    pub interface: Option<u32>,
    /// The local address a reply should leave from: for IPv4 `ipi_spec_dst`, the
    /// destination itself, or for a datagram sent to a group or a broadcast address a
    /// unicast address of the interface it arrived on; for IPv6 the destination, or
    /// `None` for a datagram sent to a group (a group is never a source, and the kernel
    /// then chooses).
    pub reply_source: Option<IpAddr>,
    /// The TOS byte (IPv4) or traffic class (IPv6): DSCP in the top six bits, ECN in the
    /// low two.
    pub tos: Option<u8>,
    /// When the kernel queued the datagram, by the wall clock (`SO_TIMESTAMPNS`).
    pub timestamp: Option<SystemTime>,
}

/// What a datagram to send carries besides its bytes: the local address it leaves from,
/// and its TOS byte (or IPv6 traffic class). Empty: the kernel chooses both as the socket
/// says.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Hash)]
pub struct SendMeta {
    pub source: Option<IpAddr>,
    pub tos: Option<u8>,
}

impl SendMeta {
    /// Nothing to carry.
    #[inline(always)]
    pub fn is_empty(&self) -> bool {
        self.source.is_none() && self.tos.is_none()
    }
}

/// The most bytes of control messages one send carries: a segment size, an arrival
/// address of either family and a TOS byte.
pub(crate) const SEND_CONTROL_WORDS: usize = 12;

/// Writes control messages one after the other into a room of 8-byte words (aligned for
/// a `cmsghdr`), as `CMSG_NXTHDR` lays them out.
pub(crate) struct ControlWriter<'a> {
    room: &'a mut [u64],
    len: usize,
}

impl<'a> ControlWriter<'a> {
    pub(crate) fn new(room: &'a mut [u64]) -> Self {
        ControlWriter { room, len: 0 }
    }

    /// Appends one message; false (and nothing written) if the room cannot hold it. (The
    /// padding after its data keeps whatever bytes the room had: the kernel reads none.)
    #[inline(always)]
    pub(crate) fn push(&mut self, level: libc::c_int, kind: libc::c_int, data: &[u8]) -> bool {
        let need = space(data.len());
        let bytes = mem::size_of_val(self.room);
        if self.len + need > bytes {
            return false;
        }
        let room: &mut [u8] = words_as_bytes_mut(self.room);
        let at = &mut room[self.len..self.len + need];
        // SAFETY: all-zero bytes are a valid cmsghdr.
        let mut hdr: libc::cmsghdr = unsafe { mem::zeroed() };
        hdr.cmsg_len = (header_len() + data.len()) as _;
        hdr.cmsg_level = level;
        hdr.cmsg_type = kind;
        // SAFETY: `at` holds `need` >= the header's size bytes; written unaligned.
        unsafe { std::ptr::write_unaligned(at.as_mut_ptr().cast::<libc::cmsghdr>(), hdr) };
        at[header_len()..header_len() + data.len()].copy_from_slice(data);
        self.len += need;
        true
    }

    /// The bytes written so far (a `msg_controllen`).
    pub(crate) fn len(&self) -> usize {
        self.len
    }
}

/// The bytes of a slice of words, to write into.
fn words_as_bytes_mut(words: &mut [u64]) -> &mut [u8] {
    let len = mem::size_of_val(words);
    // SAFETY: any bytes are valid u64s and u8s; the slice covers exactly the words' memory,
    // borrowed mutably for as long as `words` is.
    unsafe { std::slice::from_raw_parts_mut(words.as_mut_ptr().cast::<u8>(), len) }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A control buffer holding the messages given, laid out as the kernel does.
    fn buffer(messages: &[(libc::c_int, libc::c_int, &[u8])]) -> Vec<u8> {
        let mut out = Vec::new();
        for (level, kind, data) in messages {
            let start = out.len();
            let len = header_len() + data.len();
            // SAFETY: all-zero bytes are a valid cmsghdr.
            let mut hdr: libc::cmsghdr = unsafe { mem::zeroed() };
            hdr.cmsg_len = len as _;
            hdr.cmsg_level = *level;
            hdr.cmsg_type = *kind;
            out.resize(start + space(data.len()), 0);
            // SAFETY: the buffer has room for the header at `start`.
            unsafe {
                std::ptr::write_unaligned(out[start..].as_mut_ptr().cast(), hdr);
            }
            out[start + header_len()..start + len].copy_from_slice(data);
        }
        out
    }

    #[test]
    fn walks_every_message_in_order() {
        let bytes = buffer(&[
            (1, 40, &7u32.to_ne_bytes()),
            (17, 104, &1400i32.to_ne_bytes()),
            (0, 1, b"abcdefghijk"),
        ]);
        let got: Vec<(i32, i32, Vec<u8>)> = ControlMessages::new(&bytes)
            .map(|m| (m.level, m.kind, m.data.to_vec()))
            .collect();
        assert_eq!(
            got,
            [
                (1, 40, 7u32.to_ne_bytes().to_vec()),
                (17, 104, 1400i32.to_ne_bytes().to_vec()),
                (0, 1, b"abcdefghijk".to_vec()),
            ]
        );
        assert_eq!(
            ControlMessages::new(&bytes).nth(1).and_then(|m| m.u32()),
            Some(1400)
        );
    }

    #[test]
    fn never_reads_past_the_bytes_written() {
        let bytes = buffer(&[(1, 40, &7u32.to_ne_bytes()), (1, 41, &8u32.to_ne_bytes())]);
        // Cut anywhere: only whole messages come out, and nothing past the cut is read.
        for cut in 0..bytes.len() {
            let whole = ControlMessages::new(&bytes[..cut]).count();
            assert!(whole <= 2, "cut at {cut}");
            for m in ControlMessages::new(&bytes[..cut]) {
                assert_eq!(m.data.len(), 4);
            }
        }
        assert_eq!(ControlMessages::new(&[]).count(), 0);
        // A length shorter than the header ends the walk.
        let mut bad = bytes.clone();
        bad[..mem::size_of::<libc::size_t>().min(4)].fill(0);
        assert_eq!(ControlMessages::new(&bad).count(), 0);
    }

    #[test]
    fn the_room_grows_with_the_options_on() {
        assert_eq!(ControlSpace::default().bytes(), 0);
        let drops = ControlSpace {
            drop_count: true,
            ..ControlSpace::default()
        };
        let both = ControlSpace {
            drop_count: true,
            segment_size: true,
            ..ControlSpace::default()
        };
        assert_eq!(drops.bytes(), space(4));
        assert_eq!(both.bytes(), 2 * space(4));
        assert!(both.bytes() > drops.bytes());
    }
}
