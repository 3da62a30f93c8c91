//! Matrix products for the CPU decoding step whose every output is one sequential fused
//! multiply-add chain over k, so a row's result never depends on the other rows, the SIMD width
//! or the machine (AVX-512 here, the same chain in scalar code elsewhere: equal to the bit).
//!
//! A weight matrix is stored once, transposed and cut into panels of 64 columns (`Packed`), so
//! each block of outputs streams one contiguous panel; gemm would re-pack it on every step.

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
    pub k: usize,
    pub n: usize,
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
        Self { k, n, data }
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
    if std::arch::is_x86_feature_detected!("avx512f") {
        // SAFETY: the CPU has AVX-512F; the asserts bound every index the kernel touches
        // (its loads and stores beyond column n are masked off)
        unsafe { avx512::matmul(y, ldy, x, ldx, w, m, k, n, accumulate) };
        return;
    }
    matmul_scalar(y, ldy, x, ldx, w, m, k, n, accumulate)
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

#[cfg(target_arch = "x86_64")]
mod avx512 {
    use std::arch::x86_64::*;

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
    unsafe fn blocks<const R: usize, const V: usize>(y: &mut [f32], ldy: usize, x: &[f32], ldx: usize, w: super::Operand, m: usize, k: usize, n: usize, accumulate: bool) {
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

