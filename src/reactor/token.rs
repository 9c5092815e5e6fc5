//! Slab index + generation <-> `mio::Token`, nothing else.
//!
//! A slab slot is reused as soon as a port closes (slab hands out the most recently freed key
//! first). An event for the old port can still sit in the batch `poll` returned, and a timer
//! for it can still sit in the queue. Each port therefore gets a generation, unique for the
//! reactor's life, packed into the token beside its slot index: a token whose generation does
//! not match the slot's current one belongs to a port that is gone and is dropped.

use mio::Token;

/// The waker's token (cross-thread calls).
pub(crate) const WAKER: Token = Token(usize::MAX);
/// The signal source's token (SIGINT, SIGTERM).
pub(crate) const SIGNALS: Token = Token(usize::MAX - 1);

const INDEX_BITS: u32 = usize::BITS / 2;
const INDEX_MASK: usize = (1 << INDEX_BITS) - 1;

/// A port's identity: slot index and generation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(crate) struct PortKey {
    pub(crate) index: usize,
    pub(crate) generation: usize,
}

impl PortKey {
    /// Packs the key into a token. The generation keeps only the bits that fit: a stale
    /// token is mistaken for a live one only after 2^32 ports (2^16 on 32-bit targets)
    /// reused the very same slot.
    pub(crate) fn token(self) -> Token {
        Token((self.generation << INDEX_BITS) | (self.index & INDEX_MASK))
    }

    /// The key a token packs, or `None` for the reserved tokens.
    pub(crate) fn from_token(token: Token) -> Option<PortKey> {
        if token == WAKER || token == SIGNALS {
            return None;
        }
        Some(PortKey {
            index: token.0 & INDEX_MASK,
            generation: token.0 >> INDEX_BITS,
        })
    }

    /// Keeps only the generation bits a token can carry, so that keys compare equal after a
    /// round trip through a token.
    pub(crate) fn truncate_generation(generation: u64) -> usize {
        (generation as usize) & (usize::MAX >> INDEX_BITS)
    }

    /// Whether `index` fits the token's index bits (the reactor refuses more ports).
    pub(crate) fn index_fits(index: usize) -> bool {
        index < INDEX_MASK - 1
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trips_index_and_generation() {
        let key = PortKey {
            index: 12,
            generation: PortKey::truncate_generation(7),
        };
        assert_eq!(PortKey::from_token(key.token()), Some(key));
    }

    #[test]
    fn same_slot_new_generation_is_a_different_token() {
        let old = PortKey {
            index: 3,
            generation: 1,
        };
        let new = PortKey {
            index: 3,
            generation: 2,
        };
        assert_ne!(old.token(), new.token());
    }

    #[test]
    fn reserved_tokens_are_not_ports() {
        assert_eq!(PortKey::from_token(WAKER), None);
        assert_eq!(PortKey::from_token(SIGNALS), None);
    }

    #[test]
    fn generation_wraps_into_token_bits() {
        let g = PortKey::truncate_generation(u64::MAX);
        let key = PortKey {
            index: 0,
            generation: g,
        };
        assert_eq!(PortKey::from_token(key.token()), Some(key));
    }
}
