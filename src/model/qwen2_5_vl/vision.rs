//! Qwen2.5-VL's vision tower: 3-D patch embedding, 2-D rotary attention in windows (full
//! attention in `fullatt_block_indexes`), SwiGLU blocks, and the 2×2 patch merger.

use super::config::VisionConfig;
use super::lora::{LoraConfig, LoraLinear};
use crate::model::layers::fused::RopeOp;
use crate::model::layers::{attention, rotate_half, Mask, RmsNorm};
use candle_core::{Device, Result, Tensor};
use candle_nn::VarBuilder;

#[derive(Debug, Clone)]
struct Block {
    norm1: RmsNorm,
    qkv: LoraLinear,
    proj: LoraLinear,
    norm2: RmsNorm,
    gate: LoraLinear,
    up: LoraLinear,
    down: LoraLinear,
    heads: usize,
}

/// Pixel rows and image grids agree: the grids cover every row, each a multiple of the merge size.
pub(crate) fn check_grids(pixels: &Tensor, grids: &[[usize; 3]], ms: usize) -> Result<()> {
    let (n, _) = pixels.dims2()?;
    let total: usize = grids.iter().map(|g| g.iter().product::<usize>()).sum();
    if total != n {
        candle_core::bail!("image grids {grids:?} cover {total} patches but pixel_values has {n} rows");
    }
    if let Some(g) = grids.iter().find(|g| g[1] % ms != 0 || g[2] % ms != 0) {
        candle_core::bail!("image grid {g:?} is not a multiple of spatial_merge_size {ms}");
    }
    Ok(())
}

/// Rotary embedding of x (N, H, D) with tables (N, D) (the fused kernel for f32 on the CPU).
pub(crate) fn rope(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
    if x.device().is_cpu() && x.dtype() == candle_core::DType::F32 {
        return x.unsqueeze(0)?.contiguous()?.apply_op3(&cos.unsqueeze(0)?, &sin.unsqueeze(0)?, RopeOp { inverse: false })?.squeeze(0);
    }
    let (cos, sin) = (cos.to_dtype(x.dtype())?.unsqueeze(1)?, sin.to_dtype(x.dtype())?.unsqueeze(1)?);
    x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?
}

impl Block {
    fn new(c: &VisionConfig, vb: VarBuilder, lora: Option<&LoraConfig>) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let lin = |i, o, leaf: &str, path: &str| LoraLinear::new(i, o, true, leaf, vb.pp(path), lora);
        Ok(Self {
            norm1: RmsNorm::new(h, 1e-6, vb.pp("norm1"))?,
            qkv: lin(h, 3 * h, "qkv", "attn.qkv")?,
            proj: lin(h, h, "proj", "attn.proj")?,
            norm2: RmsNorm::new(h, 1e-6, vb.pp("norm2"))?,
            gate: lin(h, i, "gate_proj", "mlp.gate_proj")?,
            up: lin(h, i, "up_proj", "mlp.up_proj")?,
            down: lin(i, h, "down_proj", "mlp.down_proj")?,
            heads: c.num_heads,
        })
    }

    /// x (N, C); attention within each [start, end) of `segments`.
    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, segments: &[(usize, usize)]) -> Result<Tensor> {
        let (n, c) = x.dims2()?;
        let hd = c / self.heads;
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?.reshape((n, 3, self.heads, hd))?;
        let q = rope(&qkv.narrow(1, 0, 1)?.squeeze(1)?, cos, sin)?;
        let k = rope(&qkv.narrow(1, 1, 1)?.squeeze(1)?, cos, sin)?;
        let v = qkv.narrow(1, 2, 1)?.squeeze(1)?;
        let mut outs = Vec::with_capacity(segments.len());
        for &(s, e) in segments {
            let part = |t: &Tensor| t.narrow(0, s, e - s)?.transpose(0, 1)?.unsqueeze(0); // (1, H, L, hd)
            let a = attention(&part(&q)?, &part(&k)?, &part(&v)?, Mask::None, false)?;
            outs.push(a.squeeze(0)?.transpose(0, 1)?.reshape((e - s, c))?);
        }
        let a = if outs.len() == 1 { outs.pop().expect("one") } else { Tensor::cat(&outs, 0)? };
        let x = (x + self.proj.forward(&a)?)?;
        let h = self.norm2.forward(&x)?;
        x + self.down.forward(&(self.gate.forward(&h)?.silu()? * self.up.forward(&h)?)?)?
    }
}

/// Where each patch goes: window order, window and image segments, rotary tables.
struct Layout {
    /// Merged units (groups of merge² patches) in window order.
    window_index: Vec<u32>,
    windows: Vec<(usize, usize)>,
    images: Vec<(usize, usize)>,
    cos: Vec<f32>,
    sin: Vec<f32>,
}

#[derive(Debug, Clone)]
pub struct VisionTower {
    patch_embed: Tensor,
    blocks: Vec<Block>,
    merger_norm: RmsNorm,
    merger_fc1: LoraLinear,
    merger_fc2: LoraLinear,
    cfg: VisionConfig,
}

impl VisionTower {
    pub fn new(c: &VisionConfig, vb: VarBuilder, lora: Option<&LoraConfig>) -> Result<Self> {
        let (d, ps, tps) = (c.hidden_size, c.patch_size, c.temporal_patch_size);
        let w = vb.get((d, c.in_channels, tps, ps, ps), "patch_embed.proj.weight")?;
        let merged = d * c.spatial_merge_size * c.spatial_merge_size;
        Ok(Self {
            patch_embed: w.reshape((d, c.in_channels * tps * ps * ps))?,
            blocks: (0..c.depth).map(|i| Block::new(c, vb.pp(format!("blocks.{i}")), lora)).collect::<Result<_>>()?,
            merger_norm: RmsNorm::new(d, 1e-6, vb.pp("merger.ln_q"))?,
            merger_fc1: LoraLinear::new(merged, merged, true, "0", vb.pp("merger.mlp.0"), lora)?,
            merger_fc2: LoraLinear::new(merged, c.out_hidden_size, true, "2", vb.pp("merger.mlp.2"), lora)?,
            cfg: c.clone(),
        })
    }

    /// transformers' `rot_pos_emb` + `get_window_index`, computed on the host.
    fn layout(&self, grids: &[[usize; 3]]) -> Layout {
        let c = &self.cfg;
        let ms = c.spatial_merge_size;
        let unit = ms * ms;
        let hd = c.hidden_size / c.num_heads;
        let quarter = hd / 4;
        let inv: Vec<f32> = (0..quarter).map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / (hd / 2) as f32)).collect();
        let win = c.window_size / ms / c.patch_size;
        let (mut window_index, mut windows, mut images) = (Vec::new(), Vec::new(), Vec::new());
        let (mut unit_base, mut patch_base) = (0usize, 0usize);
        // (h, w) of every patch, in the processor's order
        let mut hw: Vec<(usize, usize)> = Vec::new();
        for &[t, gh, gw] in grids {
            for _ in 0..t {
                for bh in 0..gh / ms {
                    for bw in 0..gw / ms {
                        for mh in 0..ms {
                            for mw in 0..ms {
                                hw.push((bh * ms + mh, bw * ms + mw));
                            }
                        }
                    }
                }
            }
            let (lh, lw) = (gh / ms, gw / ms);
            for f in 0..t {
                for wy in 0..lh.div_ceil(win) {
                    for wx in 0..lw.div_ceil(win) {
                        let start = patch_base;
                        for y in wy * win..((wy + 1) * win).min(lh) {
                            for x in wx * win..((wx + 1) * win).min(lw) {
                                window_index.push((unit_base + (f * lh + y) * lw + x) as u32);
                                patch_base += unit;
                            }
                        }
                        windows.push((start, patch_base));
                    }
                }
                images.push((patch_base - lh * lw * unit, patch_base));
            }
            unit_base += t * lh * lw;
        }
        let (mut cos, mut sin) = (Vec::with_capacity(hw.len() * hd), Vec::with_capacity(hw.len() * hd));
        for &u in &window_index {
            for p in 0..unit {
                let (h, w) = hw[u as usize * unit + p];
                let angles: Vec<f32> = inv.iter().map(|f| h as f32 * f).chain(inv.iter().map(|f| w as f32 * f)).collect();
                for _ in 0..2 {
                    cos.extend(angles.iter().map(|a| a.cos()));
                    sin.extend(angles.iter().map(|a| a.sin()));
                }
            }
        }
        Layout { window_index, windows, images, cos, sin }
    }

    /// Pixels (N, 3·temporal·patch²) of images with `grids` (t, h, w) → (N / merge², out_hidden),
    /// images in order, each image's merged tokens in row-major order.
    pub fn forward(&self, pixels: &Tensor, grids: &[[usize; 3]]) -> Result<Tensor> {
        let dev: &Device = pixels.device();
        let ms = self.cfg.spatial_merge_size;
        check_grids(pixels, grids, ms)?;
        let n = pixels.dim(0)?;
        let unit = ms * ms;
        let l = self.layout(grids);
        let d = self.cfg.hidden_size;
        let hd = d / self.cfg.num_heads;
        let x = pixels.to_dtype(self.patch_embed.dtype())?.matmul(&self.patch_embed.t()?)?;
        let idx = Tensor::from_vec(l.window_index.clone(), l.window_index.len(), dev)?;
        let mut x = x.reshape((n / unit, unit * d))?.index_select(&idx, 0)?.reshape((n, d))?;
        let cos = Tensor::from_vec(l.cos, (n, hd), dev)?.to_dtype(x.dtype())?;
        let sin = Tensor::from_vec(l.sin, (n, hd), dev)?.to_dtype(x.dtype())?;
        for (i, b) in self.blocks.iter().enumerate() {
            let segs = if self.cfg.fullatt_block_indexes.contains(&i) { &l.images } else { &l.windows };
            x = b.forward(&x, &cos, &sin, segs)?;
        }
        let x = self.merger_norm.forward(&x)?.reshape((n / unit, unit * d))?;
        let x = self.merger_fc2.forward(&self.merger_fc1.forward(&x)?.gelu_erf()?)?;
        let mut rev = vec![0u32; l.window_index.len()];
        for (pos, &u) in l.window_index.iter().enumerate() {
            rev[u as usize] = pos as u32;
        }
        x.index_select(&Tensor::from_vec(rev, n / unit, dev)?, 0)
    }
}
