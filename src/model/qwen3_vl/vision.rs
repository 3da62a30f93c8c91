//! Qwen3-VL's vision tower: 3-D patch embedding with bias plus learned positions interpolated
//! bilinearly to the image's grid, 2-D rotary attention per image, LayerNorm + GELU blocks, the
//! patch merger, and DeepStack mergers on intermediate blocks.

use super::config::VisionConfig;
use crate::model::layers::{attention, Mask};
use crate::model::qwen2_5_vl::lora::{LoraConfig, LoraLinear};
use candle_core::{Device, Result, Tensor, D};
use candle_nn::VarBuilder;

/// LayerNorm written out (differentiable).
#[derive(Debug, Clone)]
struct LayerNorm {
    weight: Tensor,
    bias: Tensor,
}

impl LayerNorm {
    fn new(n: usize, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get(n, "weight")?, bias: vb.get(n, "bias")? })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let mean = x.mean_keepdim(D::Minus1)?;
        let xc = x.broadcast_sub(&mean)?;
        let var = xc.sqr()?.mean_keepdim(D::Minus1)?;
        xc.broadcast_div(&(var + 1e-6)?.sqrt()?)?.broadcast_mul(&self.weight)?.broadcast_add(&self.bias)
    }
}

use crate::model::qwen2_5_vl::vision::rope;

#[derive(Debug, Clone)]
struct Block {
    norm1: LayerNorm,
    qkv: LoraLinear,
    proj: LoraLinear,
    norm2: LayerNorm,
    fc1: LoraLinear,
    fc2: LoraLinear,
    heads: usize,
}

impl Block {
    fn new(c: &VisionConfig, vb: VarBuilder, lora: Option<&LoraConfig>) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let lin = |i, o, leaf: &str, path: &str| LoraLinear::new(i, o, true, leaf, vb.pp(path), lora);
        Ok(Self {
            norm1: LayerNorm::new(h, vb.pp("norm1"))?,
            qkv: lin(h, 3 * h, "qkv", "attn.qkv")?,
            proj: lin(h, h, "proj", "attn.proj")?,
            norm2: LayerNorm::new(h, vb.pp("norm2"))?,
            fc1: lin(h, i, "linear_fc1", "mlp.linear_fc1")?,
            fc2: lin(i, h, "linear_fc2", "mlp.linear_fc2")?,
            heads: c.num_heads,
        })
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, images: &[(usize, usize)], tanh_gelu: bool) -> Result<Tensor> {
        let (n, c) = x.dims2()?;
        let hd = c / self.heads;
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?.reshape((n, 3, self.heads, hd))?;
        let q = rope(&qkv.narrow(1, 0, 1)?.squeeze(1)?, cos, sin)?;
        let k = rope(&qkv.narrow(1, 1, 1)?.squeeze(1)?, cos, sin)?;
        let v = qkv.narrow(1, 2, 1)?.squeeze(1)?;
        let mut outs = Vec::with_capacity(images.len());
        for &(s, e) in images {
            let part = |t: &Tensor| t.narrow(0, s, e - s)?.transpose(0, 1)?.unsqueeze(0);
            let a = attention(&part(&q)?, &part(&k)?, &part(&v)?, Mask::None, false)?;
            outs.push(a.squeeze(0)?.transpose(0, 1)?.reshape((e - s, c))?);
        }
        let a = if outs.len() == 1 { outs.pop().expect("one") } else { Tensor::cat(&outs, 0)? };
        let x = (x + self.proj.forward(&a)?)?;
        let h = self.fc1.forward(&self.norm2.forward(&x)?)?;
        let h = if tanh_gelu { h.gelu()? } else { h.gelu_erf()? };
        x + self.fc2.forward(&h)?
    }
}

/// LayerNorm (before or after gathering merge² patches), Linear, GELU, Linear.
#[derive(Debug, Clone)]
struct Merger {
    norm: LayerNorm,
    fc1: LoraLinear,
    fc2: LoraLinear,
    postshuffle: bool,
    merged: usize,
}

impl Merger {
    fn new(c: &VisionConfig, postshuffle: bool, vb: VarBuilder, lora: Option<&LoraConfig>) -> Result<Self> {
        let merged = c.hidden_size * c.spatial_merge_size * c.spatial_merge_size;
        Ok(Self {
            norm: LayerNorm::new(if postshuffle { merged } else { c.hidden_size }, vb.pp("norm"))?,
            fc1: LoraLinear::new(merged, merged, true, "linear_fc1", vb.pp("linear_fc1"), lora)?,
            fc2: LoraLinear::new(merged, c.out_hidden_size, true, "linear_fc2", vb.pp("linear_fc2"), lora)?,
            postshuffle,
            merged,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let n = x.dim(0)? * x.dim(1)? / self.merged;
        let x = if self.postshuffle { self.norm.forward(&x.reshape((n, self.merged))?)? } else { self.norm.forward(x)?.reshape((n, self.merged))? };
        self.fc2.forward(&self.fc1.forward(&x)?.gelu_erf()?)
    }
}

#[derive(Debug, Clone)]
pub struct VisionTower {
    patch_embed: Tensor,
    patch_bias: Tensor,
    pos_embed: Tensor,
    blocks: Vec<Block>,
    merger: Merger,
    deepstack: Vec<Merger>,
    cfg: VisionConfig,
}

/// torch.linspace(start, end, steps) in f32, computed as torch does on the CPU.
fn linspace(start: f32, end: f32, steps: usize) -> Vec<f32> {
    if steps == 1 {
        return vec![start];
    }
    let step = (end - start) / (steps - 1) as f32;
    let half = steps / 2;
    (0..steps).map(|i| if i < half { start + step * i as f32 } else { end - step * (steps - i - 1) as f32 }).collect()
}

impl VisionTower {
    pub fn new(c: &VisionConfig, vb: VarBuilder, lora: Option<&LoraConfig>) -> Result<Self> {
        let (d, ps, tps) = (c.hidden_size, c.patch_size, c.temporal_patch_size);
        let w = vb.get((d, c.in_channels, tps, ps, ps), "patch_embed.proj.weight")?;
        Ok(Self {
            patch_embed: w.reshape((d, c.in_channels * tps * ps * ps))?,
            patch_bias: vb.get(d, "patch_embed.proj.bias")?,
            pos_embed: vb.get((c.num_position_embeddings, d), "pos_embed.weight")?,
            blocks: (0..c.depth).map(|i| Block::new(c, vb.pp(format!("blocks.{i}")), lora)).collect::<Result<_>>()?,
            merger: Merger::new(c, false, vb.pp("merger"), lora)?,
            deepstack: (0..c.deepstack_visual_indexes.len())
                .map(|i| Merger::new(c, true, vb.pp(format!("deepstack_merger_list.{i}")), lora))
                .collect::<Result<_>>()?,
            cfg: c.clone(),
        })
    }

    /// Per patch in the processor's order: (h, w) and the 4 bilinear (index, weight) pairs of
    /// transformers' `fast_pos_embed_interpolate`.
    #[allow(clippy::type_complexity)]
    fn positions(&self, grids: &[[usize; 3]]) -> (Vec<(usize, usize)>, [Vec<u32>; 4], [Vec<f32>; 4]) {
        let ms = self.cfg.spatial_merge_size;
        let side = (self.cfg.num_position_embeddings as f64).sqrt() as usize;
        let (mut hw, mut idx, mut wt) = (Vec::new(), [vec![], vec![], vec![], vec![]], [vec![], vec![], vec![], vec![]]);
        for &[t, gh, gw] in grids {
            let (hs, ws) = (linspace(0.0, (side - 1) as f32, gh), linspace(0.0, (side - 1) as f32, gw));
            for _ in 0..t {
                for bh in 0..gh / ms {
                    for bw in 0..gw / ms {
                        for mh in 0..ms {
                            for mw in 0..ms {
                                let (y, x) = (bh * ms + mh, bw * ms + mw);
                                hw.push((y, x));
                                let (hf, wf) = (hs[y] as i32 as usize, ws[x] as i32 as usize);
                                let (hc, wc) = ((hf + 1).min(side - 1), (wf + 1).min(side - 1));
                                let (dh, dw) = (hs[y] - hf as f32, ws[x] - wf as f32);
                                let cells = [(hf, wf), (hf, wc), (hc, wf), (hc, wc)];
                                let weights = [(1.0 - dh) * (1.0 - dw), (1.0 - dh) * dw, dh * (1.0 - dw), dh * dw];
                                for i in 0..4 {
                                    idx[i].push((cells[i].0 * side + cells[i].1) as u32);
                                    wt[i].push(weights[i]);
                                }
                            }
                        }
                    }
                }
            }
        }
        (hw, idx, wt)
    }

    /// Pixels (N, 3·temporal·patch²) → merged tokens (N / merge², out_hidden) and one
    /// DeepStack feature tensor of the same shape per `deepstack_visual_indexes`.
    pub fn forward(&self, pixels: &Tensor, grids: &[[usize; 3]]) -> Result<(Tensor, Vec<Tensor>)> {
        let dev: &Device = pixels.device();
        let ms = self.cfg.spatial_merge_size;
        crate::model::qwen2_5_vl::vision::check_grids(pixels, grids, ms)?;
        let n = pixels.dim(0)?;
        let dt = self.patch_embed.dtype();
        let mut x = pixels.to_dtype(dt)?.matmul(&self.patch_embed.t()?)?.broadcast_add(&self.patch_bias)?;
        let (hw, idx, wt) = self.positions(grids);
        let mut pos: Option<Tensor> = None;
        for i in 0..4 {
            let rows = self.pos_embed.index_select(&Tensor::from_vec(idx[i].clone(), n, dev)?, 0)?;
            let term = rows.broadcast_mul(&Tensor::from_vec(wt[i].clone(), (n, 1), dev)?.to_dtype(dt)?)?;
            pos = Some(match pos {
                Some(p) => (p + term)?,
                None => term,
            });
        }
        x = (x + pos.expect("four terms"))?;
        let hd = self.cfg.hidden_size / self.cfg.num_heads;
        let quarter = hd / 4;
        let inv: Vec<f32> = (0..quarter).map(|i| 1.0 / 10000f32.powf((2 * i) as f32 / (hd / 2) as f32)).collect();
        let (mut cos, mut sin) = (Vec::with_capacity(n * hd), Vec::with_capacity(n * hd));
        for &(h, w) in &hw {
            let angles: Vec<f32> = inv.iter().map(|f| h as f32 * f).chain(inv.iter().map(|f| w as f32 * f)).collect();
            for _ in 0..2 {
                cos.extend(angles.iter().map(|a| a.cos()));
                sin.extend(angles.iter().map(|a| a.sin()));
            }
        }
        let cos = Tensor::from_vec(cos, (n, hd), dev)?.to_dtype(dt)?;
        let sin = Tensor::from_vec(sin, (n, hd), dev)?.to_dtype(dt)?;
        let mut images = Vec::new();
        let mut start = 0;
        for &[t, h, w] in grids {
            for _ in 0..t {
                images.push((start, start + h * w));
                start += h * w;
            }
        }
        let tanh = self.cfg.hidden_act == "gelu_pytorch_tanh";
        let mut deep = Vec::with_capacity(self.deepstack.len());
        for (i, b) in self.blocks.iter().enumerate() {
            x = b.forward(&x, &cos, &sin, &images, tanh)?;
            if let Some(j) = self.cfg.deepstack_visual_indexes.iter().position(|&k| k == i) {
                deep.push(self.deepstack[j].forward(&x)?);
            }
        }
        Ok((self.merger.forward(&x)?, deep))
    }
}
