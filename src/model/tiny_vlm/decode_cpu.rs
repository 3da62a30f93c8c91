//! The decoder's CPU inference path: prefill and cached decoding steps on reused f32 buffers
//! with direct gemm calls, free of candle's per-op allocation and dispatch (sampling only).
//!
//! Same math as `model.rs` (tested equal to it); weights are a snapshot taken when it is built.
//! Prefill runs on gemm; decoding steps (one token per sequence) on `kernels::matmul`, whose
//! rounding of a row does not depend on how many rows decode together.

use super::kernels::{self, Operand, Packed};
use super::vision_cpu::CpuVision;
use gemm::{gemm, Parallelism};

/// One decoder layer's weights (or their gradients, `train_cpu`), row-major `(out, in)` like
/// candle's `Linear`; q/k/v and gate/up are stacked so each is one matrix product.
#[derive(Debug, Clone)]
pub struct LayerWeights {
    pub input_norm: Vec<f32>,
    pub qkv: Vec<f32>,
    pub o: Vec<f32>,
    pub post_norm: Vec<f32>,
    pub gate_up: Vec<f32>,
    pub down: Vec<f32>,
}

impl std::fmt::Debug for CpuDecoder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "CpuDecoder({} layers × {} hidden)", self.layers.len(), self.hidden)
    }
}

pub struct CpuDecoder {
    pub hidden: usize,
    pub heads: usize,
    pub inter: usize,
    pub vocab: usize,
    pub eps: f32,
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    /// Token embeddings (vocab, hidden).
    pub embed: Vec<f32>,
    /// Output projection (vocab, hidden); equal to `embed` when tied.
    pub lm_head: Vec<f32>,
    /// RoPE tables (max_positions, head_dim).
    pub cos: Vec<f32>,
    pub sin: Vec<f32>,
    /// The decoding step's weights (`with_step_weights`); without them it runs on gemm.
    pub step: Option<StepWeights>,
    /// The vision encoder's CPU path (none with a convolutional stem).
    pub vision: Option<CpuVision>,
}

/// The products' weights packed for `kernels::matmul`.
pub struct StepWeights {
    /// Per layer: qkv, o, gate_up, down.
    pub layers: Vec<[Packed; 4]>,
    pub lm_head: Packed,
}

/// Query rows whose attention is computed together (over the slots the last of them sees).
const QUERY_BLOCK: usize = 16;

/// Fewer rows than this are computed as this many (see `matmul_t`).
const MIN_ROWS: usize = 4;

/// y (m × n) = x (m × k) · wᵀ with w (n × k) row-major; adds to y when `accumulate`.
pub(crate) fn matmul_t(y: &mut [f32], x: &[f32], w: &[f32], m: usize, k: usize, n: usize, accumulate: bool) {
    assert!(y.len() >= m * n && x.len() >= m * k && w.len() >= n * k);
    if m < MIN_ROWS {
        // gemm takes other kernels for one or two rows, which sum in another order, so a row
        // would round differently alone than in a batch; compute such products as MIN_ROWS
        // rows (the last one repeated), so results do not depend on how many rows decode
        // together (tested: `a_row_rounds_the_same_in_any_batch`)
        let mut x2 = Vec::with_capacity(MIN_ROWS * k);
        let mut y2 = Vec::with_capacity(MIN_ROWS * n);
        for r in 0..MIN_ROWS {
            let src = r.min(m - 1);
            x2.extend_from_slice(&x[src * k..(src + 1) * k]);
            y2.extend_from_slice(&y[src * n..(src + 1) * n]);
        }
        matmul_t(&mut y2, &x2, w, MIN_ROWS, k, n, accumulate);
        y[..m * n].copy_from_slice(&y2[..m * n]);
        return;
    }
    // SAFETY: the asserts bound every index gemm touches (row-major strides below).
    unsafe {
        gemm(
            m,
            n,
            k,
            y.as_mut_ptr(),
            1,
            n as isize,
            accumulate,
            x.as_ptr(),
            1,
            k as isize,
            w.as_ptr(),
            k as isize,
            1,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

pub(crate) fn rms_norm(out: &mut [f32], x: &[f32], w: &[f32], eps: f32) {
    for (o, r) in out.chunks_exact_mut(w.len()).zip(x.chunks_exact(w.len())) {
        let ms = r.iter().map(|v| v * v).sum::<f32>() / w.len() as f32;
        let inv = 1.0 / (ms + eps).sqrt();
        for ((o, v), g) in o.iter_mut().zip(r).zip(w) {
            *o = v * inv * g;
        }
    }
}

/// Keys, values and validity of a group of sequences decoded together, plus scratch buffers.
/// Per layer, sequence and head: keys transposed (head_dim × cap), values (cap × head_dim).
pub struct Cache {
    seqs: usize,
    cap: usize,
    len: usize,
    k: Vec<f32>,
    v: Vec<f32>,
    valid: Vec<bool>,
    scratch: Scratch,
}

#[derive(Default)]
struct Scratch {
    h: Vec<f32>,
    qkv: Vec<f32>,
    attn: Vec<f32>,
    scores: Vec<f32>,
    gu: Vec<f32>,
    act: Vec<f32>,
}

fn sized(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

impl Cache {
    /// Slots used so far (the same for every sequence).
    pub fn len(&self) -> usize {
        self.len
    }
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Copies sequence `from`'s cache (every slot so far) onto sequence `to`.
    pub fn copy_seq(&mut self, from: usize, to: usize, layers: usize, heads: usize, head_dim: usize) {
        let per = heads * self.cap * head_dim;
        for l in 0..layers {
            let (a, b) = ((l * self.seqs + from) * per, (l * self.seqs + to) * per);
            self.k.copy_within(a..a + per, b);
            self.v.copy_within(a..a + per, b);
        }
        self.valid.copy_within(from * self.cap..(from + 1) * self.cap, to * self.cap);
    }
}

impl CpuDecoder {
    pub fn head_dim(&self) -> usize {
        self.hidden / self.heads
    }
    pub fn max_positions(&self) -> usize {
        self.cos.len() / self.head_dim()
    }

    pub fn new_cache(&self, seqs: usize, cap: usize) -> Cache {
        let n = self.layers.len() * seqs * self.heads * cap * self.head_dim();
        Cache { seqs, cap, len: 0, k: vec![0.0; n], v: vec![0.0; n], valid: vec![false; seqs * cap], scratch: Scratch::default() }
    }

    /// Embeddings of `tokens`, (len × hidden).
    pub fn embed_tokens(&self, tokens: &[u32]) -> Vec<f32> {
        let h = self.hidden;
        tokens.iter().flat_map(|&t| self.embed[t as usize * h..(t as usize + 1) * h].iter().copied()).collect()
    }

    /// This decoder with the decoding step's transposed weights (sampling only: they are a
    /// second copy of every product's weights); unchanged where `kernels` has no SIMD path.
    pub fn with_step_weights(mut self) -> Self {
        if !kernels::simd() {
            return self;
        }
        let (h, inter) = (self.hidden, self.inter);
        let layers = self
            .layers
            .iter()
            .map(|w| {
                [
                    Packed::transposed(&w.qkv, 3 * h, h),
                    Packed::transposed(&w.o, h, h),
                    Packed::transposed(&w.gate_up, 2 * inter, h),
                    Packed::transposed(&w.down, h, inter),
                ]
            })
            .collect();
        let lm_head = Packed::transposed(&self.lm_head, self.vocab, h);
        self.step = Some(StepWeights { layers, lm_head });
        self
    }

    /// Logits (rows × vocab) of final hidden states (rows × hidden).
    pub fn logits(&self, hidden: &[f32]) -> Vec<f32> {
        let (rows, h, v) = (hidden.len() / self.hidden, self.hidden, self.vocab);
        let mut out = vec![0.0; rows * v];
        match &self.step {
            Some(s) => kernels::matmul(&mut out, v, hidden, h, s.lm_head.operand(), rows, h, v, false),
            None => matmul_t(&mut out, hidden, &self.lm_head, rows, h, v, false),
        }
        out
    }

    /// Appends `t` tokens to each sequence in `active` (indices into the cache): `x` holds their
    /// embeddings (active.len()·t × hidden, sequence-major), `positions` their RoPE positions
    /// and `valid` whether later tokens may attend to them (a token always sees itself).
    /// Returns the final-normed hidden state of each active sequence's last new token.
    pub fn forward(&self, cache: &mut Cache, active: &[usize], t: usize, x: &mut [f32], positions: &[u32], valid: &[bool]) -> Vec<f32> {
        let (h, nh, hd, inter) = (self.hidden, self.heads, self.head_dim(), self.inter);
        let n = active.len();
        let rows = n * t;
        let start = cache.len;
        let total = start + t;
        assert!(total <= cache.cap, "cache of {} slots cannot take {} more after {start}", cache.cap, t);
        assert!(x.len() == rows * h && positions.len() == rows && valid.len() == rows);
        assert!(positions.iter().all(|&p| (p as usize) < self.max_positions()), "position beyond the RoPE table");
        for (a, &s) in active.iter().enumerate() {
            cache.valid[s * cache.cap + start..s * cache.cap + total].copy_from_slice(&valid[a * t..(a + 1) * t]);
        }
        let (cap, seqs) = (cache.cap, cache.seqs);
        let sc = &mut cache.scratch;
        let scale = 1.0 / (hd as f32).sqrt();
        let half = hd / 2;
        // a decoding step runs on the transposed weights, prefill on gemm
        let step = self.step.as_ref().filter(|_| t == 1);
        let product = |y: &mut [f32], x: &[f32], l: usize, which: usize, k: usize, n: usize, acc: bool| match step {
            Some(s) => kernels::matmul(y, n, x, k, s.layers[l][which].operand(), rows, k, n, acc),
            None => {
                let w = &self.layers[l];
                matmul_t(y, x, [&w.qkv, &w.o, &w.gate_up, &w.down][which], rows, k, n, acc)
            }
        };
        for (l, w) in self.layers.iter().enumerate() {
            let hb = sized(&mut sc.h, rows * h);
            rms_norm(hb, x, &w.input_norm, self.eps);
            let qkv = sized(&mut sc.qkv, rows * 3 * h);
            product(qkv, hb, l, 0, h, 3 * h, false);
            // RoPE on q and k (rotate_half convention; the tables repeat each frequency twice)
            for (r, row) in qkv.chunks_exact_mut(3 * h).enumerate() {
                let p = positions[r] as usize;
                let (cos, sin) = (&self.cos[p * hd..(p + 1) * hd], &self.sin[p * hd..(p + 1) * hd]);
                for head in row[..2 * h].chunks_exact_mut(hd) {
                    for i in 0..half {
                        let (a, b) = (head[i], head[i + half]);
                        head[i] = a * cos[i] - b * sin[i];
                        head[i + half] = b * cos[i + half] + a * sin[i + half];
                    }
                }
            }
            // new keys and values into the cache
            for (a, &s) in active.iter().enumerate() {
                for j in 0..t {
                    let row = &qkv[(a * t + j) * 3 * h..(a * t + j + 1) * 3 * h];
                    for head in 0..nh {
                        let base = ((l * seqs + s) * nh + head) * cap * hd;
                        for (d, &kv) in row[h + head * hd..h + (head + 1) * hd].iter().enumerate() {
                            cache.k[base + d * cap + start + j] = kv;
                        }
                        let at = base + (start + j) * hd;
                        cache.v[at..at + hd].copy_from_slice(&row[2 * h + head * hd..2 * h + (head + 1) * hd]);
                    }
                }
            }
            let attn = sized(&mut sc.attn, rows * h);
            let scores = sized(&mut sc.scores, t * total);
            for (a, &s) in active.iter().enumerate() {
                let ok = &cache.valid[s * cap..s * cap + total];
                for head in 0..nh {
                    let kv_at = ((l * seqs + s) * nh + head) * cap * hd;
                    let (kt, vc) = (&cache.k[kv_at..kv_at + cap * hd], &cache.v[kv_at..kv_at + total * hd]);
                    let q = &qkv[a * t * 3 * h + head * hd..];
                    let out = &mut attn[a * t * h + head * hd..];
                    // blocks of query rows see only the slots up to their last row's
                    for qb in (0..t).step_by(QUERY_BLOCK) {
                        let n_q = QUERY_BLOCK.min(t - qb);
                        let seen = start + qb + n_q;
                        let block = &mut scores[qb * total..(qb + n_q) * total];
                        kernels::matmul(block, total, &q[qb * 3 * h..], 3 * h, Operand::rows(kt, cap), n_q, hd, seen, false);
                        for (i, row) in block.chunks_exact_mut(total).enumerate() {
                            let slot = start + qb + i;
                            let row = &mut row[..seen];
                            let mut max = f32::NEG_INFINITY;
                            for (j, v) in row.iter_mut().enumerate() {
                                if j > slot || !(ok[j] || j == slot) {
                                    *v = f32::NEG_INFINITY;
                                } else {
                                    *v *= scale;
                                    max = max.max(*v);
                                }
                            }
                            let inv = 1.0 / kernels::exp_shifted_sum(row, max);
                            row.iter_mut().for_each(|v| *v *= inv);
                        }
                        kernels::matmul(&mut out[qb * h..], h, block, total, Operand::rows(vc, hd), n_q, seen, hd, false);
                    }
                }
            }
            product(x, attn, l, 1, h, h, true);
            let hb = sized(&mut sc.h, rows * h);
            rms_norm(hb, x, &w.post_norm, self.eps);
            let gu = sized(&mut sc.gu, rows * 2 * inter);
            product(gu, hb, l, 2, h, 2 * inter, false);
            let act = sized(&mut sc.act, rows * inter);
            for (o, r) in act.chunks_exact_mut(inter).zip(gu.chunks_exact(2 * inter)) {
                let (g, u) = r.split_at(inter);
                kernels::silu_mul(o, g, u);
            }
            product(x, act, l, 3, inter, h, true);
        }
        cache.len = total;
        let mut out = vec![0.0; n * h];
        for a in 0..n {
            let last = &x[(a * t + t - 1) * h..(a * t + t) * h];
            rms_norm(&mut out[a * h..(a + 1) * h], last, &self.norm, self.eps);
        }
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_row_rounds_the_same_in_any_batch() {
        // the decoder's shapes (tiny and small presets): every row of a product equals the same
        // row computed alone or among others
        for (n, k) in [(128usize, 128usize), (128, 352), (384, 128), (704, 128), (256, 688), (1376, 256), (320, 128)] {
            let x: Vec<f32> = (0..16 * k).map(|i| ((i * 7919) % 1000) as f32 / 997.0 - 0.5).collect();
            let w: Vec<f32> = (0..n * k).map(|i| ((i * 104729) % 1000) as f32 / 991.0 - 0.5).collect();
            let mut all = vec![0.25f32; 16 * n];
            matmul_t(&mut all, &x, &w, 16, k, n, true);
            for m in [1usize, 2, 3, 5, 9] {
                let mut y = vec![0.25f32; m * n];
                matmul_t(&mut y, &x[..m * k], &w, m, k, n, true);
                assert!(y == all[..m * n], "{m} rows of {n} × {k} round differently");
            }
        }
    }
}
