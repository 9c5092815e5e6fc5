//! A seeded pseudo-random generator for tests: tiny, no dependency, and a pure function of
//! its seed, so that a test draws the same sequence on every run.

/// xorshift64 (Marsaglia, "Xorshift RNGs", shifts 13, 7, 17): a full period of
/// 2^64 - 1 from any seed but 0.
pub struct Rng(u64);

impl Rng {
    /// The generator whose sequence `seed` names; `seed` must not be 0 (xorshift would
    /// stay at 0).
    #[track_caller]
    pub fn new(seed: u64) -> Rng {
        assert_ne!(seed, 0, "xorshift64 needs a seed other than 0");
        Rng(seed)
    }

    /// The next 64 bits of the sequence.
    pub fn next_u64(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }

    /// In `0..n` (`n > 0`; the modulo bias is irrelevant for picking test steps).
    pub fn below(&mut self, n: usize) -> usize {
        (self.next_u64() % n as u64) as usize
    }
}
