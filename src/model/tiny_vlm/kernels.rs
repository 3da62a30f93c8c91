//! The CPU sampling path's kernels: matrix products whose every output is one fused
//! multiply-add chain over k, and a vectorized exp for softmax and SiLU (AVX-512; scalar else).
//!
//! A chain per output means a row's result never depends on the other rows or the SIMD width
//! (the scalar fallback is equal to the bit). A weight matrix is stored once, transposed and cut
//! into panels of `PANEL` columns (`Packed`), so each block of outputs streams one contiguous
//! panel; gemm would re-pack the whole matrix on every decoding step.

/// Columns per panel: one block of the kernel.
pub const PANEL: usize = 32;

/// The right operand of `matmul`: element (p, j) of a k × n matrix lies at
/// `(j / PANEL) * panel_stride + p * ldw + j % PANEL`.
#[derive(Clone, Copy)]
pub struct Operand<'a> {
    pub data: &'a [f32],
    pub ldw: usize,
    pub panel_stride: usize,
}

impl<'a> Operand<'a> {
    /// A row-major k × n matrix with row stride `ldw`.
    pub fn rows(data: &'a [f32], ldw: usize) -> Self {
        Self { data, ldw, panel_stride: PANEL }
    }
}

/// A k × n matrix in panels of `PANEL` columns, each k × PANEL row-major, the last zero-padded.
pub struct Packed {
    k: usize,
    data: Vec<f32>,
}

impl Packed {
    /// Packs the transpose of `w`, an `(n, k)` row-major matrix (candle's `Linear` layout).
    pub fn transposed(w: &[f32], n: usize, k: usize) -> Self {
        assert_eq!(w.len(), n * k);
        let mut data = vec![0.0; n.div_ceil(PANEL) * k * PANEL];
        for (j, row) in w.chunks_exact(k).enumerate() {
            let panel = &mut data[(j / PANEL) * k * PANEL..];
            for (p, &v) in row.iter().enumerate() {
                panel[p * PANEL + j % PANEL] = v;
            }
        }
        Self { k, data }
    }

    pub fn operand(&self) -> Operand<'_> {
        Operand { data: &self.data, ldw: PANEL, panel_stride: self.k * PANEL }
    }
}

/// y (m × n, row stride `ldy`) = [y +] x (m × k, row stride `ldx`) · w (k × n): each output is
/// `acc = fma(x[i][p], w[p][j], acc)` for p = 0..k from 0, then added to y when `accumulate`.
#[allow(clippy::too_many_arguments)]
pub fn matmul(y: &mut [f32], ldy: usize, x: &[f32], ldx: usize, w: Operand, m: usize, k: usize, n: usize, accumulate: bool) {
    if m == 0 || n == 0 {
        return;
    }
    assert!(ldy >= n && ldx >= k && w.ldw >= PANEL.min(n) && w.panel_stride >= PANEL.min(n));
    assert!(y.len() >= (m - 1) * ldy + n && x.len() >= (m - 1) * ldx + k);
    let last = (n - 1) / PANEL; // the furthest element read: the last panel's row k - 1
    assert!(k == 0 || w.data.len() >= last * w.panel_stride + (k - 1) * w.ldw + (n - last * PANEL));
    #[cfg(target_arch = "x86_64")]
    {
        if std::arch::is_x86_feature_detected!("avx512f") {
            // SAFETY: the CPU has AVX-512F; the asserts bound every index the kernel touches
            // (its loads and stores beyond column n are masked off)
            unsafe { avx512::matmul(y, ldy, x, ldx, w, m, k, n, accumulate) };
            return;
        }
        if avx2() {
            // SAFETY: as above, with AVX2 and FMA
            unsafe { avx2::matmul(y, ldy, x, ldx, w, m, k, n, accumulate) };
            return;
        }
    }
    matmul_scalar(y, ldy, x, ldx, w, m, k, n, accumulate)
}

#[cfg(target_arch = "x86_64")]
fn avx2() -> bool {
    std::arch::is_x86_feature_detected!("avx2") && std::arch::is_x86_feature_detected!("fma")
}

/// Whether `matmul` runs on SIMD here (AVX-512, or AVX2 with FMA). Without it a decoding step
/// stays on gemm: the scalar chain is for correctness, not speed.
pub fn simd() -> bool {
    #[cfg(target_arch = "x86_64")]
    return std::arch::is_x86_feature_detected!("avx512f") || avx2();
    #[cfg(not(target_arch = "x86_64"))]
    false
}

#[allow(clippy::too_many_arguments)]
fn matmul_scalar(y: &mut [f32], ldy: usize, x: &[f32], ldx: usize, w: Operand, m: usize, k: usize, n: usize, accumulate: bool) {
    for i in 0..m {
        for j in 0..n {
            let col = &w.data[(j / PANEL) * w.panel_stride + j % PANEL..];
            let mut acc = 0.0f32;
            for p in 0..k {
                acc = x[i * ldx + p].mul_add(col[p * w.ldw], acc);
            }
            let out = &mut y[i * ldy + j];
            *out = if accumulate { *out + acc } else { acc };
        }
    }
}

/// `v[i] = exp(v[i] - shift)` for every element; returns their sum (summed by lane, then the
/// lanes in order, so the same for a row of the same length anywhere). −∞ gives 0.
pub fn exp_shifted_sum(v: &mut [f32], shift: f32) -> f32 {
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; every access is masked to v's length
        return unsafe { avx512::exp_shifted_sum(v, shift) };
    }
    let mut sum = 0.0;
    for x in v.iter_mut() {
        *x = (*x - shift).exp();
        sum += *x;
    }
    sum
}

/// SwiGLU's activation: `out[i] = g[i] / (1 + exp(−g[i])) · u[i]`.
pub fn silu_mul(out: &mut [f32], g: &[f32], u: &[f32]) {
    assert!(g.len() == out.len() && u.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; every access is masked to the slices' common length
        unsafe { avx512::silu_mul(out, g, u) };
        return;
    }
    for ((o, g), u) in out.iter_mut().zip(g).zip(u) {
        *o = g / (1.0 + (-g).exp()) * u;
    }
}

/// SwiGLU's activation for training: `sig[i] = 1 / (1 + exp(−g[i]))` (kept for the backward)
/// and `out[i] = g[i] · sig[i] · u[i]`.
pub fn swiglu(out: &mut [f32], sig: &mut [f32], g: &[f32], u: &[f32]) {
    assert!(g.len() == out.len() && u.len() == out.len() && sig.len() == out.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; every access is masked to the slices' common length
        unsafe { avx512::swiglu(out, sig, g, u) };
        return;
    }
    for (((o, s), g), u) in out.iter_mut().zip(sig.iter_mut()).zip(g).zip(u) {
        *s = 1.0 / (1.0 + (-g).exp());
        *o = g * *s * u;
    }
}

/// SwiGLU's backward, given `da` = d loss / d act with act = g · σ(g) · u:
/// `dg = da · u · σ · (1 + g · (1 − σ))` and `du = da · g · σ`.
pub fn swiglu_backward(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], sig: &[f32], da: &[f32]) {
    let n = dg.len();
    assert!(du.len() == n && g.len() == n && u.len() == n && sig.len() == n && da.len() == n);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; every access is masked to the slices' common length
        unsafe { avx512::swiglu_backward(dg, du, g, u, sig, da) };
        return;
    }
    for i in 0..n {
        dg[i] = da[i] * u[i] * sig[i] * (1.0 + g[i] * (1.0 - sig[i]));
        du[i] = da[i] * g[i] * sig[i];
    }
}

/// RMSNorm of every row of `g.len()` values: `y = x · inv · g` with `inv = 1/√(mean(x²) + eps)`,
/// each row's `inv` written to `inv` (kept for the backward).
pub fn rms_rows(y: &mut [f32], inv: &mut [f32], x: &[f32], g: &[f32], eps: f32) {
    let h = g.len();
    assert!(y.len() == x.len() && x.len() == inv.len() * h);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; rows are h long, every access masked to them
        unsafe { avx512::rms_rows(y, inv, x, g, eps) };
        return;
    }
    for ((y, x), inv) in y.chunks_exact_mut(h).zip(x.chunks_exact(h)).zip(inv.iter_mut()) {
        *inv = 1.0 / (x.iter().map(|v| v * v).sum::<f32>() / h as f32 + eps).sqrt();
        for ((y, v), g) in y.iter_mut().zip(x).zip(g) {
            *y = v * *inv * g;
        }
    }
}

/// RMSNorm's backward over rows: with n = x·inv and dn = dy ⊙ g, `dx += inv·(dn − n·mean(dn ⊙ n))`
/// and `dg += Σ_rows dy ⊙ n`.
pub fn rms_backward_rows(dx: &mut [f32], dg: &mut [f32], dy: &[f32], x: &[f32], inv: &[f32], g: &[f32]) {
    let h = g.len();
    assert!(dx.len() == x.len() && dy.len() == x.len() && x.len() == inv.len() * h && dg.len() == h);
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: as in rms_rows
        unsafe { avx512::rms_backward_rows(dx, dg, dy, x, inv, g) };
        return;
    }
    for (((dx, dy), x), &inv) in dx.chunks_exact_mut(h).zip(dy.chunks_exact(h)).zip(x.chunks_exact(h)).zip(inv) {
        let mut dot = 0f32;
        for i in 0..h {
            let n = x[i] * inv;
            dg[i] += dy[i] * n;
            dot += dy[i] * g[i] * n;
        }
        let mean = dot / h as f32;
        for i in 0..h {
            dx[i] += inv * (dy[i] * g[i] - x[i] * inv * mean);
        }
    }
}

/// RoPE (rotate-half) on every head of `row` (heads of `cos.len()` values), in place;
/// `inverse` applies the transpose of the rotation (its backward).
pub fn rope(row: &mut [f32], cos: &[f32], sin: &[f32], inverse: bool) {
    let hd = cos.len();
    assert!(sin.len() == hd && hd.is_multiple_of(2) && row.len().is_multiple_of(hd));
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: heads are hd long, every access masked to their halves
        unsafe { avx512::rope(row, cos, sin, inverse) };
        return;
    }
    let half = hd / 2;
    for head in row.chunks_exact_mut(hd) {
        for i in 0..half {
            let (a, b) = (head[i], head[i + half]);
            if inverse {
                head[i] = a * cos[i] + b * sin[i + half];
                head[i + half] = b * cos[i + half] - a * sin[i];
            } else {
                head[i] = a * cos[i] - b * sin[i];
                head[i + half] = b * cos[i + half] + a * sin[i + half];
            }
        }
    }
}

/// Constants of one AdamW update (f32, as candle's ops apply them).
#[derive(Clone, Copy, Debug)]
pub struct AdamWStep {
    pub beta1: f32,
    pub beta2: f32,
    /// 1 / (1 − β₁ᵗ) and 1 / (1 − β₂ᵗ)
    pub inv_bc1: f32,
    pub inv_bc2: f32,
    pub eps: f32,
    pub lr: f32,
    /// 1 − lr · weight decay (1 for no decay)
    pub decay: f32,
}

/// One AdamW update in place, in one pass: m ← β₁m + (1 − β₁)g, v ← β₂v + (1 − β₂)g²,
/// w ← w·decay − lr · (m / bc₁) / (√(v / bc₂) + ε). Every path rounds the same (no fused
/// multiply-add).
pub fn adamw(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: AdamWStep) {
    assert!(m.len() == w.len() && v.len() == w.len() && g.len() == w.len());
    #[cfg(target_arch = "x86_64")]
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; every access is masked to the slices' common length
        unsafe { avx512::adamw(w, m, v, g, c) };
        return;
    }
    for i in 0..w.len() {
        let gi = g[i];
        m[i] = m[i] * c.beta1 + gi * (1.0 - c.beta1);
        v[i] = v[i] * c.beta2 + gi * gi * (1.0 - c.beta2);
        let u = m[i] * c.inv_bc1 / ((v[i] * c.inv_bc2).sqrt() + c.eps);
        w[i] = w[i] * c.decay - u * c.lr;
    }
}

/// The same blocks as `avx512` with 8-lane vectors (4 rows × 16 columns, 8 accumulators): each
/// output is the same chain, so the results are equal to the bit.
#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    const ROWS: usize = 4;

    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul(y: &mut [f32], ldy: usize, x: &[f32], ldx: usize, w: super::Operand, m: usize, k: usize, n: usize, accumulate: bool) {
        let (yp, xp, ldw) = (y.as_mut_ptr(), x.as_ptr(), w.ldw);
        // lanes below `n - c` on: maskload/maskstore read the sign bit of each lane
        let mask = |c: usize| -> __m256i {
            let left = n.saturating_sub(c).min(8) as i32;
            _mm256_cmpgt_epi32(_mm256_set1_epi32(left), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
        };
        let mut j = 0;
        while j < n {
            let masks = [mask(j), mask(j + 8)];
            let wp = w.data.as_ptr().add((j / super::PANEL) * w.panel_stride + j % super::PANEL);
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(ROWS);
                let xr: [*const f32; ROWS] = std::array::from_fn(|d| xp.add((i + d.min(rows - 1)) * ldx));
                let mut acc = [[_mm256_setzero_ps(); 2]; ROWS];
                for p in 0..k {
                    let wrow = wp.add(p * ldw);
                    let wv = [_mm256_maskload_ps(wrow, masks[0]), _mm256_maskload_ps(wrow.add(8), masks[1])];
                    for d in 0..ROWS {
                        let b = _mm256_set1_ps(*xr[d].add(p));
                        for v in 0..2 {
                            acc[d][v] = _mm256_fmadd_ps(b, wv[v], acc[d][v]);
                        }
                    }
                }
                for (d, row) in acc.iter().enumerate().take(rows) {
                    let out = yp.add((i + d) * ldy + j);
                    for (v, (&a, &mk)) in row.iter().zip(&masks).enumerate() {
                        let o = out.add(8 * v);
                        let s = if accumulate { _mm256_add_ps(_mm256_maskload_ps(o, mk), a) } else { a };
                        _mm256_maskstore_ps(o, mk, s);
                    }
                }
                i += ROWS;
            }
            j += 16;
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

    fn tail(len: usize) -> __mmask16 {
        if len >= 16 {
            0xFFFF
        } else {
            ((1u32 << len) - 1) as __mmask16
        }
    }

    /// e^x for 16 lanes: x = n·ln 2 + r, e^r by Cephes' expf polynomial (within 2 ulp of the
    /// exact value), times 2^n by `scalef` (which overflows to ∞ and underflows to 0).
    #[target_feature(enable = "avx512f")]
    #[inline]
    unsafe fn exp16(x: __m512) -> __m512 {
        let x = _mm512_max_ps(_mm512_min_ps(x, _mm512_set1_ps(89.0)), _mm512_set1_ps(-104.0));
        let n = _mm512_roundscale_ps::<0x08>(_mm512_mul_ps(x, _mm512_set1_ps(std::f32::consts::LOG2_E)));
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(0.693_359_4), x);
        let r = _mm512_fnmadd_ps(n, _mm512_set1_ps(-2.121_944_4e-4), r);
        let mut p = _mm512_set1_ps(1.987_569_1e-4);
        for c in [1.398_199_9e-3, 8.333_452e-3, 4.166_579_6e-2, 0.166_666_65, 0.5] {
            p = _mm512_fmadd_ps(p, r, _mm512_set1_ps(c));
        }
        let p = _mm512_fmadd_ps(_mm512_mul_ps(p, r), r, _mm512_add_ps(r, _mm512_set1_ps(1.0)));
        _mm512_scalef_ps(p, n)
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn exp_shifted_sum(v: &mut [f32], shift: f32) -> f32 {
        let (p, sh) = (v.as_mut_ptr(), _mm512_set1_ps(shift));
        let mut acc = _mm512_setzero_ps();
        let mut i = 0;
        while i < v.len() {
            let mk = tail(v.len() - i);
            let e = exp16(_mm512_sub_ps(_mm512_maskz_loadu_ps(mk, p.add(i)), sh));
            _mm512_mask_storeu_ps(p.add(i), mk, e);
            acc = _mm512_mask_add_ps(acc, mk, acc, e);
            i += 16;
        }
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), acc);
        lanes.iter().sum()
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn silu_mul(out: &mut [f32], g: &[f32], u: &[f32]) {
        let (o, gp, up) = (out.as_mut_ptr(), g.as_ptr(), u.as_ptr());
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < out.len() {
            let mk = tail(out.len() - i);
            let gv = _mm512_maskz_loadu_ps(mk, gp.add(i));
            let e = exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv));
            let s = _mm512_mul_ps(_mm512_div_ps(gv, _mm512_add_ps(one, e)), _mm512_maskz_loadu_ps(mk, up.add(i)));
            _mm512_mask_storeu_ps(o.add(i), mk, s);
            i += 16;
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn swiglu(out: &mut [f32], sig: &mut [f32], g: &[f32], u: &[f32]) {
        let (o, sp, gp, up) = (out.as_mut_ptr(), sig.as_mut_ptr(), g.as_ptr(), u.as_ptr());
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < out.len() {
            let mk = tail(out.len() - i);
            let gv = _mm512_maskz_loadu_ps(mk, gp.add(i));
            let s = _mm512_div_ps(one, _mm512_add_ps(one, exp16(_mm512_sub_ps(_mm512_setzero_ps(), gv))));
            _mm512_mask_storeu_ps(sp.add(i), mk, s);
            _mm512_mask_storeu_ps(o.add(i), mk, _mm512_mul_ps(_mm512_mul_ps(gv, s), _mm512_maskz_loadu_ps(mk, up.add(i))));
            i += 16;
        }
    }

    /// The sum of a 16-lane vector (lanes in order).
    #[target_feature(enable = "avx512f")]
    unsafe fn hsum(v: __m512) -> f32 {
        let mut lanes = [0f32; 16];
        _mm512_storeu_ps(lanes.as_mut_ptr(), v);
        lanes.iter().sum()
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn rms_rows(y: &mut [f32], inv: &mut [f32], x: &[f32], g: &[f32], eps: f32) {
        let h = g.len();
        for (r, inv) in inv.iter_mut().enumerate() {
            let (xp, yp) = (x.as_ptr().add(r * h), y.as_mut_ptr().add(r * h));
            let mut acc = _mm512_setzero_ps();
            let mut i = 0;
            while i < h {
                let v = _mm512_maskz_loadu_ps(tail(h - i), xp.add(i));
                acc = _mm512_fmadd_ps(v, v, acc);
                i += 16;
            }
            *inv = 1.0 / (hsum(acc) / h as f32 + eps).sqrt();
            let iv = _mm512_set1_ps(*inv);
            let mut i = 0;
            while i < h {
                let mk = tail(h - i);
                let v = _mm512_mul_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xp.add(i)), iv), _mm512_maskz_loadu_ps(mk, g.as_ptr().add(i)));
                _mm512_mask_storeu_ps(yp.add(i), mk, v);
                i += 16;
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn rms_backward_rows(dx: &mut [f32], dg: &mut [f32], dy: &[f32], x: &[f32], inv: &[f32], g: &[f32]) {
        let h = g.len();
        for (r, &inv) in inv.iter().enumerate() {
            let (xp, dyp, dxp) = (x.as_ptr().add(r * h), dy.as_ptr().add(r * h), dx.as_mut_ptr().add(r * h));
            let iv = _mm512_set1_ps(inv);
            let mut dot = _mm512_setzero_ps();
            let mut i = 0;
            while i < h {
                let mk = tail(h - i);
                let n = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xp.add(i)), iv);
                let d = _mm512_maskz_loadu_ps(mk, dyp.add(i));
                let dgp = dg.as_mut_ptr().add(i);
                _mm512_mask_storeu_ps(dgp, mk, _mm512_fmadd_ps(d, n, _mm512_maskz_loadu_ps(mk, dgp)));
                dot = _mm512_fmadd_ps(_mm512_mul_ps(d, _mm512_maskz_loadu_ps(mk, g.as_ptr().add(i))), n, dot);
                i += 16;
            }
            let mean = _mm512_set1_ps(hsum(dot) / h as f32);
            let mut i = 0;
            while i < h {
                let mk = tail(h - i);
                let dn = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, dyp.add(i)), _mm512_maskz_loadu_ps(mk, g.as_ptr().add(i)));
                let n = _mm512_mul_ps(_mm512_maskz_loadu_ps(mk, xp.add(i)), iv);
                let add = _mm512_mul_ps(iv, _mm512_sub_ps(dn, _mm512_mul_ps(n, mean)));
                _mm512_mask_storeu_ps(dxp.add(i), mk, _mm512_add_ps(_mm512_maskz_loadu_ps(mk, dxp.add(i)), add));
                i += 16;
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn rope(row: &mut [f32], cos: &[f32], sin: &[f32], inverse: bool) {
        let hd = cos.len();
        let half = hd / 2;
        let (c, s) = (cos.as_ptr(), sin.as_ptr());
        for head in row.chunks_exact_mut(hd) {
            let p = head.as_mut_ptr();
            let mut i = 0;
            while i < half {
                let mk = tail(half - i);
                let ld = |q: *const f32| _mm512_maskz_loadu_ps(mk, q);
                let (a, b) = (ld(p.add(i)), ld(p.add(half + i)));
                let (c1, c2, s1, s2) = (ld(c.add(i)), ld(c.add(half + i)), ld(s.add(i)), ld(s.add(half + i)));
                let (na, nb) = if inverse {
                    (_mm512_add_ps(_mm512_mul_ps(a, c1), _mm512_mul_ps(b, s2)), _mm512_sub_ps(_mm512_mul_ps(b, c2), _mm512_mul_ps(a, s1)))
                } else {
                    (_mm512_sub_ps(_mm512_mul_ps(a, c1), _mm512_mul_ps(b, s1)), _mm512_add_ps(_mm512_mul_ps(b, c2), _mm512_mul_ps(a, s2)))
                };
                _mm512_mask_storeu_ps(p.add(i), mk, na);
                _mm512_mask_storeu_ps(p.add(half + i), mk, nb);
                i += 16;
            }
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn swiglu_backward(dg: &mut [f32], du: &mut [f32], g: &[f32], u: &[f32], sig: &[f32], da: &[f32]) {
        let one = _mm512_set1_ps(1.0);
        let mut i = 0;
        while i < dg.len() {
            let mk = tail(dg.len() - i);
            let ld = |p: *const f32| _mm512_maskz_loadu_ps(mk, p.add(i));
            let (gv, uv, sv, dv) = (ld(g.as_ptr()), ld(u.as_ptr()), ld(sig.as_ptr()), ld(da.as_ptr()));
            let dgv = _mm512_mul_ps(_mm512_mul_ps(_mm512_mul_ps(dv, uv), sv), _mm512_add_ps(one, _mm512_mul_ps(gv, _mm512_sub_ps(one, sv))));
            _mm512_mask_storeu_ps(dg.as_mut_ptr().add(i), mk, dgv);
            _mm512_mask_storeu_ps(du.as_mut_ptr().add(i), mk, _mm512_mul_ps(_mm512_mul_ps(dv, gv), sv));
            i += 16;
        }
    }

    #[target_feature(enable = "avx512f")]
    pub unsafe fn adamw(w: &mut [f32], m: &mut [f32], v: &mut [f32], g: &[f32], c: super::AdamWStep) {
        let (wp, mp, vp, gp) = (w.as_mut_ptr(), m.as_mut_ptr(), v.as_mut_ptr(), g.as_ptr());
        let s = _mm512_set1_ps;
        let (b1, b1c, b2, b2c) = (s(c.beta1), s(1.0 - c.beta1), s(c.beta2), s(1.0 - c.beta2));
        let (ibc1, ibc2, eps, lr, decay) = (s(c.inv_bc1), s(c.inv_bc2), s(c.eps), s(c.lr), s(c.decay));
        let mut i = 0;
        while i < w.len() {
            let mk = tail(w.len() - i);
            let gv = _mm512_maskz_loadu_ps(mk, gp.add(i));
            let mv = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, mp.add(i)), b1), _mm512_mul_ps(gv, b1c));
            let vv = _mm512_add_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, vp.add(i)), b2), _mm512_mul_ps(_mm512_mul_ps(gv, gv), b2c));
            let u = _mm512_div_ps(_mm512_mul_ps(mv, ibc1), _mm512_add_ps(_mm512_sqrt_ps(_mm512_mul_ps(vv, ibc2)), eps));
            let wv = _mm512_sub_ps(_mm512_mul_ps(_mm512_maskz_loadu_ps(mk, wp.add(i)), decay), _mm512_mul_ps(u, lr));
            _mm512_mask_storeu_ps(mp.add(i), mk, mv);
            _mm512_mask_storeu_ps(vp.add(i), mk, vv);
            _mm512_mask_storeu_ps(wp.add(i), mk, wv);
            i += 16;
        }
    }

    /// Blocks of R rows × 16·V columns (R·V accumulators) inside each panel; a block's missing
    /// rows repeat its last real row and are not stored, columns beyond n are masked.
    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn matmul(y: &mut [f32], ldy: usize, x: &[f32], ldx: usize, w: super::Operand, m: usize, k: usize, n: usize, accumulate: bool) {
        if m == 1 {
            blocks::<1, VECS>(y, ldy, x, ldx, w, m, k, n, accumulate)
        } else {
            blocks::<ROWS, VECS>(y, ldy, x, ldx, w, m, k, n, accumulate)
        }
    }

    const ROWS: usize = 8;
    const PREFETCH: usize = 16;
    const VECS: usize = 2;

    #[target_feature(enable = "avx512f")]
    #[allow(clippy::too_many_arguments)]
    unsafe fn blocks<const R: usize, const V: usize>(
        y: &mut [f32],
        ldy: usize,
        x: &[f32],
        ldx: usize,
        w: super::Operand,
        m: usize,
        k: usize,
        n: usize,
        accumulate: bool,
    ) {
        let (yp, xp, ldw) = (y.as_mut_ptr(), x.as_ptr(), w.ldw);
        let mask = |c: usize| -> __mmask16 {
            if c >= n {
                0
            } else if n - c >= 16 {
                0xFFFF
            } else {
                ((1u32 << (n - c)) - 1) as __mmask16
            }
        };
        let mut j = 0;
        while j < n {
            let masks: [__mmask16; V] = std::array::from_fn(|v| mask(j + 16 * v));
            let wp = w.data.as_ptr().add((j / super::PANEL) * w.panel_stride + j % super::PANEL);
            let mut i = 0;
            while i < m {
                let rows = (m - i).min(R);
                let xr: [*const f32; R] = std::array::from_fn(|d| xp.add((i + d.min(rows - 1)) * ldx));
                let mut acc = [[_mm512_setzero_ps(); V]; R];
                for p in 0..k {
                    let wrow = wp.add(p * ldw);
                    // the panel streams from L3: ask for the rows ahead (no fault past the end)
                    let ahead = wrow.wrapping_add(PREFETCH * ldw) as *const i8;
                    _mm_prefetch::<_MM_HINT_T0>(ahead);
                    _mm_prefetch::<_MM_HINT_T0>(ahead.wrapping_add(64));
                    let mut wv = [_mm512_setzero_ps(); V];
                    for v in 0..V {
                        wv[v] = _mm512_maskz_loadu_ps(masks[v], wrow.add(16 * v));
                    }
                    for d in 0..R {
                        let b = _mm512_set1_ps(*xr[d].add(p));
                        for v in 0..V {
                            acc[d][v] = _mm512_fmadd_ps(b, wv[v], acc[d][v]);
                        }
                    }
                }
                for (d, row) in acc.iter().enumerate().take(rows) {
                    let out = yp.add((i + d) * ldy + j);
                    for (v, (&a, &mk)) in row.iter().zip(&masks).enumerate() {
                        if mk == 0 {
                            continue;
                        }
                        let o = out.add(16 * v);
                        let s = if accumulate { _mm512_add_ps(_mm512_maskz_loadu_ps(mk, o), a) } else { a };
                        _mm512_mask_storeu_ps(o, mk, s);
                    }
                }
                i += R;
            }
            j += 16 * V;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn data(len: usize, seed: usize) -> Vec<f32> {
        (0..len).map(|i| ((i * 7919 + seed * 104_729) % 1000) as f32 / 997.0 - 0.5).collect()
    }

    #[test]
    fn every_path_and_batch_rounds_a_row_the_same() {
        for (m, k, n) in [(1usize, 1usize, 1usize), (3, 17, 5), (9, 128, 384), (6, 256, 1376), (13, 688, 256), (5, 32, 83)] {
            let (x, w) = (data(m * k, 1), data(n * k, 2));
            let packed = Packed::transposed(&w, n, k);
            let wt: Vec<f32> = (0..k * n).map(|i| w[(i % n) * k + i / n]).collect();
            for accumulate in [false, true] {
                let mut fast = data(m * n, 3);
                let mut slow = fast.clone();
                matmul(&mut fast, n, &x, k, packed.operand(), m, k, n, accumulate);
                matmul_scalar(&mut slow, n, &x, k, packed.operand(), m, k, n, accumulate);
                assert!(fast == slow, "{m}×{k}×{n}: the SIMD path rounds differently from the scalar chain");
                #[cfg(target_arch = "x86_64")]
                if avx2() {
                    let mut eight = data(m * n, 3);
                    // SAFETY: AVX2 and FMA checked; the shapes are matmul's, as asserted there
                    unsafe { avx2::matmul(&mut eight, n, &x, k, packed.operand(), m, k, n, accumulate) };
                    assert!(eight == slow, "{m}×{k}×{n}: the AVX2 path rounds differently from the scalar chain");
                }
                let mut plain = data(m * n, 3);
                matmul(&mut plain, n, &x, k, Operand::rows(&wt, n), m, k, n, accumulate);
                assert!(plain == fast, "{m}×{k}×{n}: packed and row-major operands differ");
                for rows in 1..m {
                    let mut part = data(m * n, 3);
                    matmul(&mut part, n, &x, k, packed.operand(), rows, k, n, accumulate);
                    assert!(part[..rows * n] == fast[..rows * n], "{rows} of {m} rows round differently");
                    assert!(part[rows * n..] == data(m * n, 3)[rows * n..], "rows beyond m written");
                }
                // equal to the plain product up to rounding
                for i in 0..m {
                    for j in 0..n {
                        let exact: f64 = (0..k).map(|p| x[i * k + p] as f64 * w[j * k + p] as f64).sum::<f64>()
                            + if accumulate { data(m * n, 3)[i * n + j] as f64 } else { 0.0 };
                        assert!((fast[i * n + j] as f64 - exact).abs() < 1e-4, "{m}×{k}×{n} ({i}, {j})");
                    }
                }
            }
        }
    }

    #[test]
    fn exp_and_silu() {
        let xs: Vec<f32> = (-2000..2000).map(|i| i as f32 * 0.0517).chain([0.0, -0.0, 88.7, 89.5, -103.0, -150.0, f32::NEG_INFINITY, f32::INFINITY]).collect();
        let shift = 0.75f32;
        let mut v = xs.clone();
        let sum = exp_shifted_sum(&mut v, shift);
        let mut want = 0.0f64;
        for (x, e) in xs.iter().zip(&v) {
            let exact = ((*x - shift) as f64).exp();
            want += exact;
            if exact > f32::MAX as f64 {
                assert_eq!(*e, f32::INFINITY, "exp({x} - {shift})");
            } else if exact < 1e-37 {
                assert!(*e >= 0.0 && (*e as f64) < 1e-37, "exp({x} - {shift}) = {e}");
            } else {
                assert!(((*e as f64) - exact).abs() <= 2.5e-7 * exact, "exp({x} - {shift}) = {e}, exact {exact}");
            }
        }
        assert!(sum.is_infinite() && want.is_infinite());
        // a row's sum: lanes then their order, the same at any offset of the same length
        let row: Vec<f32> = (0..37).map(|i| (i as f32 * 0.37).sin()).collect();
        let (mut a, mut b) = (row.clone(), row.clone());
        let (sa, sb) = (exp_shifted_sum(&mut a, 0.1), exp_shifted_sum(&mut b, 0.1));
        assert!(sa == sb && a == b);
        let exact: f64 = row.iter().map(|x| ((x - 0.1) as f64).exp()).sum();
        assert!((sa as f64 - exact).abs() < 1e-5 * exact);
        // SiLU(g)·u, including saturated gates
        let g: Vec<f32> = (-60..60).map(|i| i as f32 * 1.7).collect();
        let u: Vec<f32> = (0..120).map(|i| (i as f32 * 0.3).cos()).collect();
        let mut out = vec![0.0; g.len()];
        silu_mul(&mut out, &g, &u);
        for ((o, g), u) in out.iter().zip(&g).zip(&u) {
            let exact = *g as f64 / (1.0 + (-*g as f64).exp()) * *u as f64;
            assert!((*o as f64 - exact).abs() <= 1e-6 * exact.abs().max(1e-30), "silu({g})·{u} = {o}, exact {exact}");
        }
    }

    #[test]
    fn swiglu_keeps_the_sigmoid() {
        let g: Vec<f32> = (-60..60).map(|i| i as f32 * 1.7).collect();
        let u: Vec<f32> = (0..120).map(|i| (i as f32 * 0.3).cos()).collect();
        let (mut out, mut sig) = (vec![0.0; g.len()], vec![0.0; g.len()]);
        swiglu(&mut out, &mut sig, &g, &u);
        let mut silu = vec![0.0; g.len()];
        silu_mul(&mut silu, &g, &u);
        for i in 0..g.len() {
            let s = 1.0 / (1.0 + (-g[i] as f64).exp());
            assert!((sig[i] as f64 - s).abs() <= (1e-6 * s).max(1e-37), "sigmoid({}) = {}, exact {s}", g[i], sig[i]);
            assert!((out[i] - silu[i]).abs() <= 1e-6 * silu[i].abs().max(1e-30), "swiglu({}) = {}, silu_mul {}", g[i], out[i], silu[i]);
        }
    }

    #[test]
    fn the_inverse_rope_is_the_rotations_transpose() {
        // ⟨R a, b⟩ = ⟨a, Rᵀ b⟩ for the rotation of two heads of 40 values (a masked tail)
        let (cos, sin): (Vec<f32>, Vec<f32>) = (0..40).map(|i| ((i as f32 * 0.7).cos(), (i as f32 * 0.7).sin())).unzip();
        let a: Vec<f32> = (0..80).map(|i| (i as f32 * 1.3).sin()).collect();
        let bv: Vec<f32> = (0..80).map(|i| (i as f32 * 0.4 + 1.0).cos()).collect();
        let (mut ra, mut rtb) = (a.clone(), bv.clone());
        rope(&mut ra, &cos, &sin, false);
        rope(&mut rtb, &cos, &sin, true);
        let dot = |x: &[f32], y: &[f32]| x.iter().zip(y).map(|(p, q)| *p as f64 * *q as f64).sum::<f64>();
        assert!((dot(&ra, &bv) - dot(&a, &rtb)).abs() < 1e-5);
        // the forward: a rotation by each position's angle, pair by pair
        for i in 0..20 {
            let (x, y) = (a[i], a[i + 20]);
            assert!((ra[i] - (x * cos[i] - y * sin[i])).abs() < 1e-6 && (ra[i + 20] - (y * cos[i + 20] + x * sin[i + 20])).abs() < 1e-6);
        }
    }

    #[test]
    fn rms_rows_and_their_backward() {
        let (h, rows) = (40, 3);
        let (x, g, dy) = (data(h * rows, 1), data(h, 2), data(h * rows, 3));
        let (mut y, mut inv) = (vec![0.0; h * rows], vec![0.0; rows]);
        rms_rows(&mut y, &mut inv, &x, &g, 1e-5);
        let (mut dx, mut dg) = (data(h * rows, 4), vec![0.5; h]);
        let dx0 = dx.clone();
        rms_backward_rows(&mut dx, &mut dg, &dy, &x, &inv, &g);
        let mut dg_want = vec![0.5f64; h];
        for r in 0..rows {
            let xr = &x[r * h..(r + 1) * h];
            let iv = 1.0 / (xr.iter().map(|v| (*v as f64).powi(2)).sum::<f64>() / h as f64 + 1e-5).sqrt();
            assert!((inv[r] as f64 - iv).abs() < 1e-5 * iv);
            let dot: f64 = (0..h).map(|i| dy[r * h + i] as f64 * g[i] as f64 * xr[i] as f64 * iv).sum();
            for i in 0..h {
                assert!((y[r * h + i] as f64 - xr[i] as f64 * iv * g[i] as f64).abs() < 1e-5);
                let n = xr[i] as f64 * iv;
                dg_want[i] += dy[r * h + i] as f64 * n;
                let want = dx0[r * h + i] as f64 + iv * (dy[r * h + i] as f64 * g[i] as f64 - n * dot / h as f64);
                assert!((dx[r * h + i] as f64 - want).abs() < 1e-4, "dx[{r}][{i}]");
            }
        }
        assert!(dg.iter().zip(&dg_want).all(|(a, b)| (*a as f64 - b).abs() < 1e-5));
    }

    #[test]
    fn swiglu_backward_is_the_derivative() {
        let n = 37;
        let (g, u, da) = (data(n, 1).iter().map(|x| x * 8.0).collect::<Vec<_>>(), data(n, 2), data(n, 3));
        let sig: Vec<f32> = g.iter().map(|x| 1.0 / (1.0 + (-x).exp())).collect();
        let (mut dg, mut du) = (vec![0.0; n], vec![0.0; n]);
        swiglu_backward(&mut dg, &mut du, &g, &u, &sig, &da);
        let f = |g: f64, u: f64| g / (1.0 + (-g).exp()) * u;
        for i in 0..n {
            let (gi, ui, e) = (g[i] as f64, u[i] as f64, 1e-3);
            let want_g = da[i] as f64 * (f(gi + e, ui) - f(gi - e, ui)) / (2.0 * e);
            let want_u = da[i] as f64 * (f(gi, ui + e) - f(gi, ui - e)) / (2.0 * e);
            assert!((dg[i] as f64 - want_g).abs() < 1e-4 && (du[i] as f64 - want_u).abs() < 1e-4, "element {i}");
        }
    }

    #[test]
    fn adamw_paths_round_the_same() {
        let n = 103;
        let (w0, m0, v0, g) = (data(n, 1), data(n, 2), data(n, 3).iter().map(|x| x * x).collect::<Vec<_>>(), data(n, 4));
        let c = AdamWStep { beta1: 0.9, beta2: 0.999, inv_bc1: 1.0 / 0.19, inv_bc2: 1.0 / 0.002, eps: 1e-8, lr: 1e-3, decay: 1.0 - 1e-5 };
        let (mut w, mut m, mut v) = (w0.clone(), m0.clone(), v0.clone());
        adamw(&mut w, &mut m, &mut v, &g, c);
        for i in 0..n {
            let mi = m0[i] * c.beta1 + g[i] * (1.0 - c.beta1);
            let vi = v0[i] * c.beta2 + g[i] * g[i] * (1.0 - c.beta2);
            let wi = w0[i] * c.decay - mi * c.inv_bc1 / ((vi * c.inv_bc2).sqrt() + c.eps) * c.lr;
            assert!(m[i] == mi && v[i] == vi && w[i] == wi, "element {i}");
        }
    }

    #[test]
    fn strided_operands() {
        // x rows at stride 5 of width 3, wt rows at stride 7 of width 4, y rows at stride 6
        let (m, k, n) = (2, 3, 4);
        let x = data(2 * 5, 4);
        let wt = data(3 * 7, 5);
        let mut y = vec![9.0f32; 2 * 6];
        matmul(&mut y, 6, &x, 5, Operand::rows(&wt, 7), m, k, n, false);
        for i in 0..m {
            for j in 0..n {
                let e: f32 = (0..k).fold(0.0, |a, p| x[i * 5 + p].mul_add(wt[p * 7 + j], a));
                assert_eq!(y[i * 6 + j], e);
            }
            assert_eq!(&y[i * 6 + 4..i * 6 + 6], &[9.0, 9.0]);
        }
    }
}
