//! Layers both model families are built from — RMSNorm, linear, RoPE, attention, masks and the
//! differentiable losses — in forms that train (fused CPU kernels with their own backward).

pub mod fused;

use candle_core::{DType, Device, Result, Tensor, D};
use candle_nn::{Init, Linear, VarBuilder};
use fused::{CausalSoftmax, RmsNormOp, RopeOp};

/// RMSNorm as plain tensor ops, so gradients reach its input and weight.
#[derive(Debug, Clone)]
pub struct RmsNorm {
    pub(crate) weight: Tensor,
    eps: f64,
    /// Use candle's fused kernel (no backward: inference only).
    pub(crate) fused: bool,
}

impl RmsNorm {
    pub fn new(size: usize, eps: f64, vb: VarBuilder) -> Result<Self> {
        Ok(Self { weight: vb.get_with_hints(size, "weight", Init::Const(1.0))?, eps, fused: false })
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        if self.fused {
            return candle_nn::ops::rms_norm(&x.contiguous()?, &self.weight, self.eps as f32);
        }
        // the fused CPU kernels are f32; other dtypes take the composed ops (as on a GPU)
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return x.contiguous()?.apply_op2(&self.weight, RmsNormOp { eps: self.eps as f32 });
        }
        let inv = (x.sqr()?.mean_keepdim(D::Minus1)? + self.eps)?.sqrt()?.recip()?;
        x.broadcast_mul(&inv)?.broadcast_mul(&self.weight)
    }
}

/// A linear layer applied as one 2-D matmul over all leading dimensions. (candle-nn's
/// `Linear` broadcasts its weight over the batch for 3-D inputs, which copies the weight once
/// per batch row on the CPU.)
#[derive(Debug, Clone)]
pub struct Lin(pub(crate) Linear);

impl Lin {
    pub fn from_weight(weight: Tensor, bias: Option<Tensor>) -> Self {
        Lin(Linear::new(weight, bias))
    }

    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let w = self.0.weight();
        let dims = x.dims().to_vec();
        let c = *dims.last().expect("rank ≥ 1");
        let lead: usize = dims[..dims.len() - 1].iter().product();
        let y = x.reshape((lead, c))?.matmul(&w.t()?)?;
        let y = match self.0.bias() {
            Some(b) => y.broadcast_add(b)?,
            None => y,
        };
        let mut out = dims;
        *out.last_mut().expect("rank ≥ 1") = w.dim(0)?;
        y.reshape(out)
    }
}

pub(crate) fn linear(i: usize, o: usize, vb: VarBuilder) -> Result<Lin> {
    Ok(Lin(candle_nn::linear(i, o, vb)?))
}

pub(crate) fn linear_no_bias(i: usize, o: usize, vb: VarBuilder) -> Result<Lin> {
    Ok(Lin(candle_nn::linear_no_bias(i, o, vb)?))
}

/// Rotates the two halves of the last dimension: (a, b) → (-b, a).
pub(crate) fn rotate_half(x: &Tensor) -> Result<Tensor> {
    let half = x.dim(D::Minus1)? / 2;
    let a = x.narrow(D::Minus1, 0, half)?;
    let b = x.narrow(D::Minus1, half, half)?;
    Tensor::cat(&[&b.neg()?, &a], D::Minus1)
}

/// RoPE tables: cos and sin of shape (max_positions, head_dim).
#[derive(Debug, Clone)]
pub struct Rotary {
    pub(crate) cos: Tensor,
    pub(crate) sin: Tensor,
}

impl Rotary {
    /// Tables for heads of `dim` dimensions, base `theta`, positions 0..`max_positions`.
    pub fn new(dim: usize, theta: f64, max_positions: usize, dev: &Device) -> Result<Self> {
        let inv: Vec<f32> = (0..dim / 2).map(|i| 1.0 / (theta as f32).powf(2.0 * i as f32 / dim as f32)).collect();
        let n = max_positions;
        let mut angles = Vec::with_capacity(n * dim);
        for p in 0..n {
            for _ in 0..2 {
                angles.extend(inv.iter().map(|f| p as f32 * f));
            }
        }
        let angles = Tensor::from_vec(angles, (n, dim), dev)?;
        Ok(Self { cos: angles.cos()?, sin: angles.sin()? })
    }

    /// The tables at positions (B, T): cos and sin of shape (B, T, Dh).
    pub fn at(&self, positions: &Tensor) -> Result<(Tensor, Tensor)> {
        let (b, t) = positions.dims2()?;
        let flat = positions.flatten_all()?;
        let d = self.cos.dim(1)?;
        Ok((self.cos.index_select(&flat, 0)?.reshape((b, t, d))?, self.sin.index_select(&flat, 0)?.reshape((b, t, d))?))
    }

    /// Applies rotary embeddings to x (B, T, H, Dh) with tables from `at`.
    pub fn apply(x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        if x.device().is_cpu() && x.dtype() == DType::F32 {
            return x.contiguous()?.apply_op3(cos, sin, RopeOp { inverse: false });
        }
        let (cos, sin) = (cos.unsqueeze(2)?, sin.unsqueeze(2)?);
        x.broadcast_mul(&cos)? + rotate_half(x)?.broadcast_mul(&sin)?
    }
}

fn softmax(x: &Tensor, fused: bool) -> Result<Tensor> {
    if fused {
        candle_nn::ops::softmax_last_dim(&x.contiguous()?)
    } else {
        candle_nn::ops::softmax(x, D::Minus1)
    }
}

/// Which keys a query may attend to.
#[derive(Debug, Clone, Copy)]
pub enum Mask<'a> {
    /// All of them.
    None,
    /// Keys at or before the query (queries and keys are the same positions).
    Causal,
    /// An additive mask broadcastable to (B, H, Tq, Tk).
    Additive(&'a Tensor),
}

/// Multi-head attention over (B, H, T, Dh). `fused` uses candle's softmax kernel, which has
/// no backward (inference only); a causal mask on the CPU uses the fused causal softmax.
pub(crate) fn attention(q: &Tensor, k: &Tensor, v: &Tensor, mask: Mask, fused: bool) -> Result<Tensor> {
    let scale = 1.0 / (q.dim(D::Minus1)? as f64).sqrt();
    let causal;
    let mask = match mask {
        Mask::None => None,
        Mask::Additive(m) => Some(m),
        Mask::Causal => {
            let (tq, tk) = (q.dim(2)?, k.dim(2)?);
            if tq != tk {
                candle_core::bail!("causal attention needs as many keys as queries ({tq} vs {tk})");
            }
            if q.device().is_cpu() && q.dtype() == DType::F32 && !fused {
                let scores = q.contiguous()?.matmul(&k.t()?.contiguous()?)?;
                return scores.apply_op1(CausalSoftmax { scale: scale as f32 })?.matmul(&v.contiguous()?);
            }
            causal = causal_mask(tq, q.device())?;
            Some(&causal)
        }
    };
    if q.dim(2)? == 1 {
        // one query (a decoding step): elementwise products over the cache instead of B×H tiny
        // matmuls, whose per-call overhead dominates on the CPU
        let scores = (k.broadcast_mul(q)?.sum_keepdim(D::Minus1)?.transpose(2, 3)? * scale)?;
        let scores = match mask {
            Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?)?,
            None => scores,
        };
        let w = softmax(&scores, fused)?.transpose(2, 3)?;
        return v.broadcast_mul(&w)?.sum_keepdim(2);
    }
    let scores = (q.contiguous()?.matmul(&k.t()?.contiguous()?)? * scale)?;
    let scores = match mask {
        Some(m) => scores.broadcast_add(&m.to_dtype(scores.dtype())?)?,
        None => scores,
    };
    softmax(&scores, fused)?.matmul(&v.contiguous()?)
}

/// (1, 1, T, T) additive causal mask.
pub fn causal_mask(t: usize, dev: &Device) -> Result<Tensor> {
    let m: Vec<f32> = (0..t).flat_map(|i| (0..t).map(move |j| if j <= i { 0.0 } else { -1e9 })).collect();
    Tensor::from_vec(m, (1, 1, t, t), dev)
}

/// Mean cross-entropy over positions where `weights` (B, T) is 1; `logits` (B, T, V),
/// `targets` (B, T) u32. Differentiable (no fused log-softmax).
pub fn masked_cross_entropy(logits: &Tensor, targets: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let m = logits.max_keepdim(D::Minus1)?.detach();
    let lse = (logits.broadcast_sub(&m)?.exp()?.sum_keepdim(D::Minus1)?.log()? + m)?;
    let picked = logits.gather(&targets.unsqueeze(D::Minus1)?, D::Minus1)?;
    let nll = (lse - picked)?.squeeze(D::Minus1)?;
    let w = weights.to_dtype(DType::F32)?;
    let total = w.sum_all()?;
    (nll * &w)?.sum_all()?.broadcast_div(&total.maximum(1.0)?)
}

/// Mean binary cross-entropy of `logits` (B, T) against soft `labels` (B, T) over positions
/// where `weights` is 1, in the stable form max(z, 0) − z·y + log(1 + e^−|z|). Differentiable.
pub fn masked_bce_with_logits(logits: &Tensor, labels: &Tensor, weights: &Tensor) -> Result<Tensor> {
    let per = ((logits.relu()? - (logits * labels)?)? + logits.abs()?.neg()?.exp()?.affine(1.0, 1.0)?.log()?)?;
    let total = weights.sum_all()?;
    (per * weights)?.sum_all()?.broadcast_div(&total.maximum(1.0)?)
}
