//! Seeded randomness that is the same on every machine: the splitmix64 step and stream, and
//! the draws made from it (uniform floats, normals by Box–Muller, Fisher–Yates shuffles).

/// splitmix64's increment, 2⁶⁴ / φ.
const GAMMA: u64 = 0x9e37_79b9_7f4a_7c15;

/// One splitmix64 step: advances `state` and returns the next output.
pub fn splitmix64(state: &mut u64) -> u64 {
    *state = state.wrapping_add(GAMMA);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// The top 53 bits of `bits` as a uniform f64 in [0, 1).
pub fn unit_f64(bits: u64) -> f64 {
    (bits >> 11) as f64 / (1u64 << 53) as f64
}

/// A splitmix64 stream; `new(seed)` starts at state `seed` (the first output is one step on).
#[derive(Debug, Clone)]
pub struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    pub fn new(seed: u64) -> Self {
        Self { state: seed }
    }

    pub fn next_u64(&mut self) -> u64 {
        splitmix64(&mut self.state)
    }

    /// Uniform in [0, 1) (53 bits).
    pub fn next_f64(&mut self) -> f64 {
        unit_f64(self.next_u64())
    }

    /// Uniform in (0, 1): the middle of one of 2⁵³ equal cells, so never 0 (safe under `ln`).
    pub fn next_f64_open(&mut self) -> f64 {
        ((self.next_u64() >> 11) as f64 + 0.5) / (1u64 << 53) as f64
    }

    /// A standard normal by Box–Muller (the cosine branch only: two uniforms per draw), as f32.
    pub fn normal_f32(&mut self) -> f32 {
        let (u1, u2) = (self.next_f64_open(), self.next_f64_open());
        ((-2.0 * u1.ln()).sqrt() * (2.0 * std::f64::consts::PI * u2).cos()) as f32
    }

    /// Uniform in 0..n (multiply-shift of one output; 0 when n is 0).
    pub fn below(&mut self, n: usize) -> usize {
        ((self.next_u64() as u128 * n as u128) >> 64) as usize
    }

    /// Fisher–Yates: from the last element down, swaps `v[i]` with `v[next_u64() % (i + 1)]`.
    pub fn shuffle<T>(&mut self, v: &mut [T]) {
        for i in (1..v.len()).rev() {
            let j = (self.next_u64() % (i as u64 + 1)) as usize;
            v.swap(i, j);
        }
    }
}

/// Standard normals for initial weights: a stream started at `seed ^ GAMMA`, one
/// [`SplitMix64::normal_f32`] per sample.
#[derive(Debug, Clone)]
pub struct Normal(SplitMix64);

impl Normal {
    pub fn new(seed: u64) -> Self {
        Self(SplitMix64::new(seed ^ GAMMA))
    }

    pub fn sample(&mut self) -> f32 {
        self.0.normal_f32()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// splitmix64 from state 0: the reference outputs (Vigna's splitmix64.c).
    #[test]
    fn splitmix64_reference_values() {
        let mut s = SplitMix64::new(0);
        assert_eq!([s.next_u64(), s.next_u64(), s.next_u64()], [0xe220_a839_7b1d_cdaf, 0x6e78_9e6a_a1b9_65f4, 0x06c4_5d18_8009_454f]);
    }

    #[test]
    fn uniforms_normals_and_shuffles_are_pinned() {
        let mut s = SplitMix64::new(42);
        let u: Vec<u64> = (0..2).map(|_| s.next_f64().to_bits()).collect();
        assert_eq!(u, [0x3fe7_bae6_44c5_fd6d, 0x3fc4_77f1_99d9_3378]); // 0.7415648787718233, 0.1599103928769201
        let mut n = Normal::new(11);
        assert_eq!([n.sample().to_bits(), n.sample().to_bits()], [0xbd95_161c, 0xbd60_ac56]); // -0.072796077, -0.054851852
        let mut v: Vec<usize> = (0..10).collect();
        SplitMix64::new(5).shuffle(&mut v);
        assert_eq!(v, [3, 6, 0, 4, 5, 1, 2, 9, 7, 8]);
    }

    #[test]
    fn open_uniforms_stay_inside_and_shuffles_permute() {
        let mut s = SplitMix64::new(1);
        for _ in 0..1000 {
            let (a, b) = (s.next_f64(), s.next_f64_open());
            assert!((0.0..1.0).contains(&a) && b > 0.0 && b < 1.0);
        }
        let mut v: Vec<usize> = (0..100).collect();
        s.shuffle(&mut v);
        let mut sorted = v.clone();
        sorted.sort();
        assert_eq!(sorted, (0..100).collect::<Vec<_>>());
        assert_ne!(v, sorted);
    }
}
