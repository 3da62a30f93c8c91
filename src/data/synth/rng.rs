//! Tiny deterministic RNG for the synthetic task: splitmix64 seeding (`crate::rng`) + xoshiro256**.
//! Platform-independent (pure u64 arithmetic); no dependency on `rand` or std's hashers.

use crate::rng::splitmix64;

/// 64-bit FNV-1a hash of a byte string (fixed, unlike std's randomized hasher).
pub fn fnv1a64(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in bytes {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

/// xoshiro256** generator.
#[derive(Clone, Debug)]
pub struct Rng {
    s: [u64; 4],
}

impl Rng {
    /// Seeds the four state words from a splitmix64 stream started at `seed`.
    pub fn new(seed: u64) -> Self {
        let mut sm = seed;
        let mut s = [0u64; 4];
        for w in &mut s {
            *w = splitmix64(&mut sm);
        }
        Rng { s }
    }

    /// The RNG of one example: mixes the global seed, FNV-1a of the split name,
    /// the example index and the hard flag through splitmix64.
    pub fn for_example(seed: u64, split: &str, index: u64, hard: bool) -> Self {
        let mut st = seed;
        let mut k = splitmix64(&mut st);
        st = k ^ fnv1a64(split.as_bytes());
        k = splitmix64(&mut st);
        st = k ^ index;
        k = splitmix64(&mut st);
        st = k ^ u64::from(hard);
        Rng::new(splitmix64(&mut st))
    }

    pub fn next_u64(&mut self) -> u64 {
        let result = self.s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = self.s[1] << 17;
        self.s[2] ^= self.s[0];
        self.s[3] ^= self.s[1];
        self.s[1] ^= self.s[2];
        self.s[0] ^= self.s[3];
        self.s[2] ^= t;
        self.s[3] = self.s[3].rotate_left(45);
        result
    }

    /// Uniform integer in `0..n` (unbiased, by rejection). `n` must be > 0.
    pub fn below(&mut self, n: u64) -> u64 {
        assert!(n > 0, "Rng::below(0)");
        let zone = u64::MAX - (u64::MAX % n);
        loop {
            let v = self.next_u64();
            if v < zone {
                return v % n;
            }
        }
    }

    /// Uniform index in `0..n`.
    pub fn index(&mut self, n: usize) -> usize {
        self.below(n as u64) as usize
    }

    /// Uniform integer in `lo..=hi`.
    pub fn range(&mut self, lo: i64, hi: i64) -> i64 {
        assert!(lo <= hi);
        lo + self.below((hi - lo) as u64 + 1) as i64
    }

    /// True with probability `num / den`.
    pub fn chance(&mut self, num: u64, den: u64) -> bool {
        self.below(den) < num
    }

    /// Fisher–Yates shuffle.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = self.index(i + 1);
            v.swap(i, j);
        }
    }

    /// A uniformly chosen element; `v` must be non-empty.
    pub fn pick<'a, T>(&mut self, v: &'a [T]) -> &'a T {
        &v[self.index(v.len())]
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fnv_known_values() {
        assert_eq!(fnv1a64(b""), 0xcbf2_9ce4_8422_2325);
        assert_eq!(fnv1a64(b"a"), 0xaf63_dc4c_8601_ec8c);
    }

    /// The streams for fixed seeds, bit for bit (the synthetic datasets depend on them).
    #[test]
    fn streams_are_pinned() {
        let mut s = 0;
        assert_eq!([splitmix64(&mut s), splitmix64(&mut s)], [0xe220_a839_7b1d_cdaf, 0x6e78_9e6a_a1b9_65f4]);
        let mut r = Rng::new(7);
        assert_eq!([r.next_u64(), r.next_u64(), r.next_u64()], [0xb358_faf7_4ef9_765a, 0x475c_3d96_4f48_2cd2, 0xd6f1_d349_952c_7996]);
        let mut r = Rng::for_example(1, "train", 0, false);
        assert_eq!([r.next_u64(), r.next_u64()], [0x5ad9_fcf3_8977_c0e7, 0xc74b_5aec_af5d_dfb4]);
    }

    #[test]
    fn deterministic_and_distinct_streams() {
        let a: Vec<u64> = (0..4).scan(Rng::for_example(1, "train", 0, false), |r, _| Some(r.next_u64())).collect();
        let b: Vec<u64> = (0..4).scan(Rng::for_example(1, "train", 0, false), |r, _| Some(r.next_u64())).collect();
        let c: Vec<u64> = (0..4).scan(Rng::for_example(1, "train", 1, false), |r, _| Some(r.next_u64())).collect();
        let d: Vec<u64> = (0..4).scan(Rng::for_example(1, "val", 0, false), |r, _| Some(r.next_u64())).collect();
        assert_eq!(a, b);
        assert_ne!(a, c);
        assert_ne!(a, d);
    }

    #[test]
    fn below_in_range_and_covers() {
        let mut r = Rng::new(7);
        let mut seen = [false; 10];
        for _ in 0..1000 {
            let v = r.below(10) as usize;
            seen[v] = true;
        }
        assert!(seen.iter().all(|&s| s));
        for _ in 0..1000 {
            let v = r.range(-3, 3);
            assert!((-3..=3).contains(&v));
        }
    }
}
