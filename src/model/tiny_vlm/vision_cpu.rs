//! The vision encoder's CPU inference path: patches → features on reused f32 buffers with
//! direct matrix products, free of candle's per-op allocation (sampling only).
//!
//! Same math as `VisionEncoder::forward` without a stem (tested equal to it).

use super::decode_cpu::{matmul_t, rms_norm};
use super::kernels::{self, Operand};

/// A linear layer: weight `(out, in)` row-major and bias.
#[derive(Debug, Clone)]
pub struct Affine {
    pub w: Vec<f32>,
    pub b: Vec<f32>,
}

impl Affine {
    fn out(&self) -> usize {
        self.b.len()
    }

    /// y (rows × out) = x (rows × in) · wᵀ + b.
    fn forward(&self, y: &mut [f32], x: &[f32], rows: usize) {
        let (n, k) = (self.out(), self.w.len() / self.out());
        for row in y[..rows * n].chunks_exact_mut(n) {
            row.copy_from_slice(&self.b);
        }
        matmul_t(y, x, &self.w, rows, k, n, true);
    }
}

#[derive(Debug, Clone)]
pub struct Block {
    pub norm1: Vec<f32>,
    pub qkv: Affine,
    pub proj: Affine,
    pub norm2: Vec<f32>,
    pub fc1: Affine,
    pub fc2: Affine,
}

#[derive(Debug, Clone)]
pub struct CpuVision {
    pub patch_embed: Affine,
    /// (patches, hidden)
    pub pos_embed: Vec<f32>,
    pub blocks: Vec<Block>,
    pub norm: Vec<f32>,
    pub heads: usize,
    pub eps: f32,
}

impl CpuVision {
    fn hidden(&self) -> usize {
        self.norm.len()
    }

    /// Features (images · P × hidden) of `images` images' patches (images · P × patch_dim).
    pub fn forward(&self, patches: &[f32], images: usize) -> Vec<f32> {
        let c = self.hidden();
        let p = self.pos_embed.len() / c;
        let rows = images * p;
        let (hd, nh) = (c / self.heads, self.heads);
        let scale = 1.0 / (hd as f32).sqrt();
        let inter = self.blocks.first().map_or(0, |b| b.fc1.out());
        let mut x = vec![0.0; rows * c];
        self.patch_embed.forward(&mut x, patches, rows);
        for (r, row) in x.chunks_exact_mut(c).enumerate() {
            let pos = &self.pos_embed[(r % p) * c..(r % p + 1) * c];
            row.iter_mut().zip(pos).for_each(|(v, e)| *v += e);
        }
        let (mut hb, mut qkv, mut attn) = (vec![0.0; rows * c], vec![0.0; rows * 3 * c], vec![0.0; rows * c]);
        let (mut kt, mut scores) = (vec![0.0; hd * p], vec![0.0; p * p]);
        let (mut pre, mut mlp, ones) = (vec![0.0; rows * inter], vec![0.0; rows * inter], vec![1.0; inter]);
        for b in &self.blocks {
            rms_norm(&mut hb, &x, &b.norm1, self.eps);
            b.qkv.forward(&mut qkv, &hb, rows);
            for img in 0..images {
                for head in 0..nh {
                    let at = |r: usize, part: usize| (img * p + r) * 3 * c + part * c + head * hd;
                    for j in 0..p {
                        for d in 0..hd {
                            kt[d * p + j] = qkv[at(j, 1) + d];
                        }
                    }
                    kernels::matmul(&mut scores, p, &qkv[at(0, 0)..], 3 * c, Operand::rows(&kt, p), p, hd, p, false);
                    for row in scores.chunks_exact_mut(p) {
                        let mut max = f32::NEG_INFINITY;
                        for v in row.iter_mut() {
                            *v *= scale;
                            max = max.max(*v);
                        }
                        let inv = 1.0 / kernels::exp_shifted_sum(row, max);
                        row.iter_mut().for_each(|v| *v *= inv);
                    }
                    // values: rows at stride 3c inside qkv
                    let out = &mut attn[img * p * c + head * hd..];
                    kernels::matmul(out, c, &scores, p, Operand::rows(&qkv[at(0, 2)..], 3 * c), p, p, hd, false);
                }
            }
            b.proj.forward(&mut hb, &attn, rows);
            x.iter_mut().zip(&hb).for_each(|(v, a)| *v += a);
            rms_norm(&mut hb, &x, &b.norm2, self.eps);
            b.fc1.forward(&mut pre, &hb, rows);
            for (o, g) in mlp.chunks_exact_mut(inter).zip(pre.chunks_exact(inter)) {
                kernels::silu_mul(o, g, &ones);
            }
            b.fc2.forward(&mut hb, &mlp, rows);
            x.iter_mut().zip(&hb).for_each(|(v, a)| *v += a);
        }
        let mut out = vec![0.0; rows * c];
        rms_norm(&mut out, &x, &self.norm, self.eps);
        out
    }
}
