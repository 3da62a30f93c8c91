//! The decoder's CPU training path: a forward pass that keeps its activations and a
//! hand-written backward on f32 buffers with direct gemm calls, instead of candle's autograd.
//!
//! Same math as `model.rs` (RMSNorm, RoPE, causal attention, SwiGLU, tied or untied LM head,
//! the PRM's score head); tested equal to candle's autograd gradients (`src/train/cpu.rs`).

use super::decode_cpu::{CpuDecoder, LayerWeights};
use super::kernels::{self, rms_backward_rows as rms_backward, rope, Operand};
use gemm::{gemm, Parallelism};

/// A matrix operand: (values, row stride, column stride).
type Mat<'a> = (&'a [f32], usize, usize);

/// c (m×n, row stride `crs`) = a (m×k) · b (k×n), or c += a · b when `acc`.
#[allow(clippy::too_many_arguments)]
fn mm(m: usize, n: usize, k: usize, c: &mut [f32], crs: usize, acc: bool, a: Mat, b: Mat) {
    if m == 0 || n == 0 {
        return;
    }
    let last = |rows: usize, cols: usize, rs: usize, cs: usize| (rows - 1) * rs + (cols - 1) * cs;
    assert!(c.len() > last(m, n, crs, 1), "mm: output too short");
    if k == 0 {
        if !acc {
            for r in 0..m {
                c[r * crs..r * crs + n].fill(0.0);
            }
        }
        return;
    }
    assert!(a.0.len() > last(m, k, a.1, a.2) && b.0.len() > last(k, n, b.1, b.2), "mm: operand too short");
    // SAFETY: the asserts bound every index gemm reads or writes under these strides.
    unsafe {
        gemm(
            m,
            n,
            k,
            c.as_mut_ptr(),
            1,
            crs as isize,
            acc,
            a.0.as_ptr(),
            a.2 as isize,
            a.1 as isize,
            b.0.as_ptr(),
            b.2 as isize,
            b.1 as isize,
            1.0,
            1.0,
            false,
            false,
            false,
            Parallelism::None,
        )
    }
}

/// Row-major (rows × cols) matrix as an operand.
fn rm(v: &[f32], cols: usize) -> Mat<'_> {
    (v, cols, 1)
}

/// The transpose of a row-major (rows × cols) matrix as an operand (cols × rows).
fn tr(v: &[f32], cols: usize) -> Mat<'_> {
    (v, 1, cols)
}

/// Query rows whose attention is computed together, over the keys the last of them sees.
const QUERY_BLOCK: usize = 16;

/// dst (cols × rows, row-major) = the transpose of src's (rows × cols) at row stride `lds`,
/// in tiles of 8 × 8 (the strided reads of a plain loop dominated the attention's time).
fn transpose_into(dst: &mut [f32], src: &[f32], lds: usize, rows: usize, cols: usize) {
    if rows == 0 || cols == 0 {
        return;
    }
    assert!(dst.len() >= rows * cols && src.len() >= (rows - 1) * lds + cols);
    const T: usize = 8;
    let (d, s) = (dst.as_mut_ptr(), src.as_ptr());
    for r0 in (0..rows).step_by(T) {
        for c0 in (0..cols).step_by(T) {
            for r in r0..(r0 + T).min(rows) {
                for c in c0..(c0 + T).min(cols) {
                    // SAFETY: r < rows and c < cols, within the lengths asserted above
                    unsafe { *d.add(c * rows + r) = *s.add(r * lds + c) };
                }
            }
        }
    }
}

/// What the loss reads from the final hidden states of the B·T rows.
pub enum Objective<'a> {
    /// Mean token cross-entropy of the LM head at `(row, target token)`.
    Tokens(&'a [(usize, u32)]),
    /// The PRM's mean binary cross-entropy of `score_head` (weight `w`, bias `b`) at
    /// `(row, label in [0, 1])`.
    Steps { at: &'a [(usize, f32)], w: &'a [f32], b: f32 },
}

/// The mean loss's gradients: every decoder weight, the head, and the input embeddings.
#[derive(Debug, Clone)]
pub struct DecoderGrads {
    /// Per layer, in the weights' own layout (q/k/v and gate/up stacked).
    pub layers: Vec<LayerWeights>,
    pub norm: Vec<f32>,
    /// (vocab × hidden), `Objective::Tokens` only (empty otherwise).
    pub lm_head: Vec<f32>,
    /// `score_head`'s weight and bias, `Objective::Steps` only.
    pub score_w: Vec<f32>,
    pub score_b: f32,
    /// d loss / d input embeddings, (B·T × hidden).
    pub x: Vec<f32>,
}

/// What the backward pass needs of one layer's forward.
#[derive(Default)]
struct Saved {
    x: Vec<f32>,
    inv1: Vec<f32>,
    h1: Vec<f32>,
    qkv: Vec<f32>,
    probs: Vec<f32>,
    attn: Vec<f32>,
    mid: Vec<f32>,
    inv2: Vec<f32>,
    h2: Vec<f32>,
    gu: Vec<f32>,
    /// σ(gate), kept for the backward
    sig: Vec<f32>,
    act: Vec<f32>,
}

/// The activations and scratch of one training pass, reused by later passes (buffers only
/// grow; every pass writes what it reads): fresh zeroed buffers cost ≈ 7% of a step in memset.
#[derive(Default)]
struct Workspace {
    saved: Vec<Saved>,
    xf: Vec<f32>,
    hf: Vec<f32>,
    invf: Vec<f32>,
    dhf: Vec<f32>,
    kt: Vec<f32>,
    dp: Vec<f32>,
    pt: Vec<f32>,
    dst: Vec<f32>,
    dact: Vec<f32>,
    dgu: Vec<f32>,
    dh: Vec<f32>,
    dattn: Vec<f32>,
    dqkv: Vec<f32>,
}

/// Workspaces not in use: training threads live for one optimizer step, their buffers longer.
static WORKSPACES: std::sync::Mutex<Vec<Workspace>> = std::sync::Mutex::new(Vec::new());

/// Frees the buffers kept for later training passes (at the end of a training stage).
pub fn release_workspaces() {
    WORKSPACES.lock().unwrap_or_else(|e| e.into_inner()).clear();
}

/// The first `n` values of `v`, grown (zero-filled) when shorter.
fn fit(v: &mut Vec<f32>, n: usize) -> &mut [f32] {
    if v.len() < n {
        v.resize(n, 0.0);
    }
    &mut v[..n]
}

/// Teacher-forced forward and backward of the decoder over `x`, the input embeddings of `b`
/// sequences of `t` positions (B·T × hidden, sequence-major, positions 0..t, causal). Returns
/// the mean loss of `objective` and its gradients.
pub fn loss_and_grads(dec: &CpuDecoder, x: Vec<f32>, b: usize, t: usize, objective: &Objective) -> (f32, DecoderGrads) {
    let mut ws = WORKSPACES.lock().unwrap_or_else(|e| e.into_inner()).pop().unwrap_or_default();
    let out = passes(&mut ws, dec, x, b, t, objective);
    WORKSPACES.lock().unwrap_or_else(|e| e.into_inner()).push(ws);
    out
}

fn passes(ws: &mut Workspace, dec: &CpuDecoder, x: Vec<f32>, b: usize, t: usize, objective: &Objective) -> (f32, DecoderGrads) {
    let (h, nh, hd, inter) = (dec.hidden, dec.heads, dec.head_dim(), dec.inter);
    let rows = b * t;
    let nl = dec.layers.len();
    assert_eq!(x.len(), rows * h, "input embeddings");
    assert!(t <= dec.max_positions(), "{t} positions, the RoPE table has {}", dec.max_positions());
    let scale = 1.0 / (hd as f32).sqrt();
    let tt = t * t;
    let table = |p: usize| (&dec.cos[p * hd..(p + 1) * hd], &dec.sin[p * hd..(p + 1) * hd]);
    if ws.saved.len() < nl {
        ws.saved.resize_with(nl, Saved::default);
    }
    match ws.saved.first_mut() {
        Some(s) => fit(&mut s.x, rows * h).copy_from_slice(&x),
        None => fit(&mut ws.xf, rows * h).copy_from_slice(&x),
    }
    drop(x);

    // ── forward ─────────────────────────────────────────────────────────────────────────
    let kt = fit(&mut ws.kt, hd * t);
    for (l, w) in dec.layers.iter().enumerate() {
        let (cur, rest) = ws.saved.split_at_mut(l + 1);
        let s = &mut cur[l];
        let x = &s.x[..rows * h];
        let (h1, inv1) = (fit(&mut s.h1, rows * h), fit(&mut s.inv1, rows));
        kernels::rms_rows(h1, inv1, x, &w.input_norm, dec.eps);
        let qkv = fit(&mut s.qkv, rows * 3 * h);
        mm(rows, 3 * h, h, qkv, 3 * h, false, rm(h1, h), tr(&w.qkv, h));
        for (r, row) in qkv.chunks_exact_mut(3 * h).enumerate() {
            let (cos, sin) = table(r % t);
            rope(&mut row[..2 * h], cos, sin, false);
        }
        let (probs, attn) = (fit(&mut s.probs, b * nh * tt), fit(&mut s.attn, rows * h));
        for sq in 0..b {
            for head in 0..nh {
                let p = &mut probs[(sq * nh + head) * tt..(sq * nh + head + 1) * tt];
                let base = sq * t * 3 * h + head * hd;
                transpose_into(kt, &qkv[base + h..], 3 * h, t, hd);
                for qb in (0..t).step_by(QUERY_BLOCK) {
                    // a block of query rows sees the keys up to its last row
                    let (n_q, seen) = (QUERY_BLOCK.min(t - qb), QUERY_BLOCK.min(t - qb) + qb);
                    let block = &mut p[qb * t..(qb + n_q) * t];
                    kernels::matmul(block, t, &qkv[base + qb * 3 * h..], 3 * h, Operand::rows(kt, t), n_q, hd, seen, false);
                    for (r, row) in block.chunks_exact_mut(t).enumerate() {
                        let i = qb + r;
                        let max = row[..=i].iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) * scale;
                        row[..=i].iter_mut().for_each(|v| *v *= scale);
                        let inv = 1.0 / kernels::exp_shifted_sum(&mut row[..=i], max);
                        row[..=i].iter_mut().for_each(|v| *v *= inv);
                        row[i + 1..].fill(0.0);
                    }
                    kernels::matmul(
                        &mut attn[sq * t * h + qb * h + head * hd..],
                        h,
                        block,
                        t,
                        Operand::rows(&qkv[base + 2 * h..], 3 * h),
                        n_q,
                        seen,
                        hd,
                        false,
                    );
                }
            }
        }
        let mid = fit(&mut s.mid, rows * h);
        mid.copy_from_slice(x);
        mm(rows, h, h, mid, h, true, rm(attn, h), tr(&w.o, h));
        let (h2, inv2) = (fit(&mut s.h2, rows * h), fit(&mut s.inv2, rows));
        kernels::rms_rows(h2, inv2, mid, &w.post_norm, dec.eps);
        let gu = fit(&mut s.gu, rows * 2 * inter);
        mm(rows, 2 * inter, h, gu, 2 * inter, false, rm(h2, h), tr(&w.gate_up, h));
        let (act, sig) = (fit(&mut s.act, rows * inter), fit(&mut s.sig, rows * inter));
        for ((a, sg), r) in act.chunks_exact_mut(inter).zip(sig.chunks_exact_mut(inter)).zip(gu.chunks_exact(2 * inter)) {
            let (g, u) = r.split_at(inter);
            kernels::swiglu(a, sg, g, u);
        }
        // the layer's output: the next layer's input
        let out = match rest.first_mut() {
            Some(next) => fit(&mut next.x, rows * h),
            None => fit(&mut ws.xf, rows * h),
        };
        out.copy_from_slice(mid);
        mm(rows, h, inter, out, h, true, rm(act, inter), tr(&w.down, inter));
    }
    let x = &ws.xf[..rows * h];
    let (hf, invf) = (fit(&mut ws.hf, rows * h), fit(&mut ws.invf, rows));
    kernels::rms_rows(hf, invf, x, &dec.norm, dec.eps);

    // ── the loss and its gradient at the final hidden states ───────────────────────────
    let dhf = fit(&mut ws.dhf, rows * h);
    dhf.fill(0.0);
    let (mut lm_head, mut score_w, mut score_b) = (Vec::new(), Vec::new(), 0f32);
    let loss = match objective {
        Objective::Tokens(at) => {
            let (n, v) = (at.len(), dec.vocab);
            lm_head = vec![0f32; v * h];
            let sel: Vec<f32> = at.iter().flat_map(|&(r, _)| hf[r * h..(r + 1) * h].iter().copied()).collect();
            let mut logits = vec![0f32; n * v];
            mm(n, v, h, &mut logits, v, false, rm(&sel, h), tr(&dec.lm_head, h));
            let denom = n.max(1) as f32;
            let mut loss = 0f64;
            for (row, &(_, target)) in logits.chunks_exact_mut(v).zip(at.iter()) {
                let max = row.iter().fold(f32::NEG_INFINITY, |m, x| m.max(*x));
                let picked = row[target as usize];
                // the row becomes softmax / denom, less 1 / denom at the target
                let sum = kernels::exp_shifted_sum(row, max);
                loss += (max + sum.ln() - picked) as f64;
                let inv = 1.0 / (sum * denom);
                row.iter_mut().for_each(|x| *x *= inv);
                row[target as usize] -= 1.0 / denom;
            }
            // d head = dlogitsᵀ · sel; d sel = dlogits · head
            mm(v, h, n, &mut lm_head, h, false, tr(&logits, v), rm(&sel, h));
            let mut dsel = vec![0f32; n * h];
            mm(n, h, v, &mut dsel, h, false, rm(&logits, v), rm(&dec.lm_head, h));
            for (&(r, _), d) in at.iter().zip(dsel.chunks_exact(h)) {
                dhf[r * h..(r + 1) * h].iter_mut().zip(d).for_each(|(a, b)| *a += b);
            }
            (loss / denom as f64) as f32
        }
        Objective::Steps { at, w, b: bias } => {
            score_w = vec![0f32; h];
            let denom = at.len().max(1) as f32;
            let mut loss = 0f64;
            for &(r, y) in at.iter() {
                let hr = &hf[r * h..(r + 1) * h];
                let z = hr.iter().zip(w.iter()).map(|(a, b)| a * b).sum::<f32>() + bias;
                loss += (z.max(0.0) - z * y + (-z.abs()).exp().ln_1p()) as f64;
                let dz = (1.0 / (1.0 + (-z).exp()) - y) / denom;
                score_b += dz;
                for i in 0..h {
                    score_w[i] += dz * hr[i];
                    dhf[r * h + i] += dz * w[i];
                }
            }
            (loss / denom as f64) as f32
        }
    };

    // ── backward ────────────────────────────────────────────────────────────────────────
    let mut norm = vec![0f32; h];
    let mut dx = vec![0f32; rows * h];
    rms_backward(&mut dx, &mut norm, dhf, x, invf, &dec.norm);
    let mut layers = Vec::with_capacity(nl);
    // scratch of the backward, fully overwritten in every layer
    let (dp, pt, dst) = (fit(&mut ws.dp, tt), fit(&mut ws.pt, tt), fit(&mut ws.dst, tt));
    let (dact, dgu, dh) = (fit(&mut ws.dact, rows * inter), fit(&mut ws.dgu, rows * 2 * inter), fit(&mut ws.dh, rows * h));
    let (dattn, dqkv) = (fit(&mut ws.dattn, rows * h), fit(&mut ws.dqkv, rows * 3 * h));
    for (w, s) in dec.layers.iter().zip(&ws.saved).rev() {
        let (sx, sh1, sqkv, sprobs, sattn) = (&s.x[..rows * h], &s.h1[..rows * h], &s.qkv[..rows * 3 * h], &s.probs[..b * nh * tt], &s.attn[..rows * h]);
        let (smid, sh2, sgu, ssig, sact) = (&s.mid[..rows * h], &s.h2[..rows * h], &s.gu[..rows * 2 * inter], &s.sig[..rows * inter], &s.act[..rows * inter]);
        let (sinv1, sinv2) = (&s.inv1[..rows], &s.inv2[..rows]);
        let mut g = LayerWeights {
            input_norm: vec![0f32; h],
            qkv: vec![0f32; 3 * h * h],
            o: vec![0f32; h * h],
            post_norm: vec![0f32; h],
            gate_up: vec![0f32; 2 * inter * h],
            down: vec![0f32; h * inter],
        };
        // MLP: out = mid + act · downᵀ
        mm(h, inter, rows, &mut g.down, inter, false, tr(&dx, h), rm(sact, inter));
        mm(rows, inter, h, dact, inter, false, rm(&dx, h), rm(&w.down, inter));
        for (((dr, gr), sr), da) in dgu.chunks_exact_mut(2 * inter).zip(sgu.chunks_exact(2 * inter)).zip(ssig.chunks_exact(inter)).zip(dact.chunks_exact(inter))
        {
            let (dg, du) = dr.split_at_mut(inter);
            let (gv, u) = gr.split_at(inter);
            kernels::swiglu_backward(dg, du, gv, u, sr, da);
        }
        mm(2 * inter, h, rows, &mut g.gate_up, h, false, tr(dgu, 2 * inter), rm(sh2, h));
        mm(rows, h, 2 * inter, dh, h, false, rm(dgu, 2 * inter), rm(&w.gate_up, h));
        rms_backward(&mut dx, &mut g.post_norm, dh, smid, sinv2, &w.post_norm); // dx is now d mid
                                                                                // attention: mid = x + attn · oᵀ
        mm(h, h, rows, &mut g.o, h, false, tr(&dx, h), rm(sattn, h));
        mm(rows, h, h, dattn, h, false, rm(&dx, h), rm(&w.o, h));
        for sq in 0..b {
            for head in 0..nh {
                let p = &sprobs[(sq * nh + head) * tt..(sq * nh + head + 1) * tt];
                let base = sq * t * 3 * h + head * hd;
                let d_o = &dattn[sq * t * h + head * hd..];
                transpose_into(kt, &sqkv[base + 2 * h..], 3 * h, t, hd); // vᵀ
                transpose_into(pt, p, t, t, t);
                for qb in (0..t).step_by(QUERY_BLOCK) {
                    let (n_q, seen) = (QUERY_BLOCK.min(t - qb), QUERY_BLOCK.min(t - qb) + qb);
                    // dP = dO · vᵀ, then dS = scale · P ⊙ (dP − Σⱼ dPⱼ Pⱼ), zero above the diagonal
                    let block = &mut dp[qb * t..(qb + n_q) * t];
                    kernels::matmul(block, t, &d_o[qb * h..], h, Operand::rows(kt, t), n_q, hd, seen, false);
                    for (r, (dr, pr)) in block.chunks_exact_mut(t).zip(p[qb * t..].chunks_exact(t)).enumerate() {
                        let i = qb + r;
                        let dot: f32 = dr[..=i].iter().zip(&pr[..=i]).map(|(a, b)| a * b).sum();
                        for (d, pv) in dr[..=i].iter_mut().zip(&pr[..=i]) {
                            *d = scale * pv * (*d - dot);
                        }
                        dr[i + 1..].fill(0.0);
                    }
                    // dq = dS · k
                    kernels::matmul(&mut dqkv[base + qb * 3 * h..], 3 * h, block, t, Operand::rows(&sqkv[base + h..], 3 * h), n_q, seen, hd, false);
                }
                transpose_into(dst, dp, t, t, t);
                for jb in (0..t).step_by(QUERY_BLOCK) {
                    // key rows j see the queries i ≥ j: dv = Pᵀ · dO, dk = dSᵀ · q
                    let n_k = QUERY_BLOCK.min(t - jb);
                    kernels::matmul(
                        &mut dqkv[base + 2 * h + jb * 3 * h..],
                        3 * h,
                        &pt[jb * t + jb..],
                        t,
                        Operand::rows(&d_o[jb * h..], h),
                        n_k,
                        t - jb,
                        hd,
                        false,
                    );
                    kernels::matmul(
                        &mut dqkv[base + h + jb * 3 * h..],
                        3 * h,
                        &dst[jb * t + jb..],
                        t,
                        Operand::rows(&sqkv[base + jb * 3 * h..], 3 * h),
                        n_k,
                        t - jb,
                        hd,
                        false,
                    );
                }
            }
        }
        for (r, row) in dqkv.chunks_exact_mut(3 * h).enumerate() {
            let (cos, sin) = table(r % t);
            rope(&mut row[..2 * h], cos, sin, true);
        }
        mm(3 * h, h, rows, &mut g.qkv, h, false, tr(dqkv, 3 * h), rm(sh1, h));
        mm(rows, h, 3 * h, dh, h, false, rm(dqkv, 3 * h), rm(&w.qkv, h));
        rms_backward(&mut dx, &mut g.input_norm, dh, sx, sinv1, &w.input_norm); // dx is now d x
        layers.push(g);
    }
    layers.reverse();
    (loss, DecoderGrads { layers, norm, lm_head, score_w, score_b, x: dx })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mm_handles_transposed_and_strided_operands() {
        // a (2×3), b (3×2) given as the transpose of a row-major (2×3)
        let a = [1., 2., 3., 4., 5., 6.];
        let bt = [1., 0., 2., 0., 1., 1.]; // b = [[1, 0], [0, 1], [2, 1]]
        let mut c = vec![0f32; 4];
        mm(2, 2, 3, &mut c, 2, false, rm(&a, 3), tr(&bt, 3));
        assert_eq!(c, vec![7., 5., 16., 11.]);
        mm(2, 2, 3, &mut c, 2, true, rm(&a, 3), tr(&bt, 3));
        assert_eq!(c, vec![14., 10., 32., 22.]);
    }
}
