//! The control messages the kernel attaches to a received datagram or error-queue entry:
//! the one walk over them ([`ControlMessages`]), and the room each kind needs
//! ([`ControlSpace`]), so that a receive slot reserves what the options turned on need.

use std::mem;

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
}

impl ControlSpace {
    /// The bytes of control room one datagram needs (a multiple of 8).
    pub fn bytes(&self) -> usize {
        let mut bytes = 0;
        if self.drop_count {
            bytes += space(mem::size_of::<u32>());
        }
        if self.segment_size {
            bytes += space(mem::size_of::<libc::c_int>());
        }
        bytes.next_multiple_of(8)
    }
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
        };
        assert_eq!(drops.bytes(), space(4));
        assert_eq!(both.bytes(), 2 * space(4));
        assert!(both.bytes() > drops.bytes());
    }
}
