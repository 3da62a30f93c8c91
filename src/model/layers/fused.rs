//! Fused CPU kernels for training, each with an explicit backward: causal softmax, RMSNorm and
//! RoPE. They replace chains of candle ops (one pass instead of five to ten over the tensor).
//!
//! CPU only; other devices use the composed candle ops (`layers`), which the tests compare.

use candle_core::{CpuStorage, CustomOp1, CustomOp2, CustomOp3, Error, Layout, Result, Shape, Tensor};

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> Result<&'a [f32]> {
    match (s, l.contiguous_offsets()) {
        (CpuStorage::F32(v), Some((a, b))) => Ok(&v[a..b]),
        (CpuStorage::F32(_), None) => Err(Error::Msg(format!("{what}: input must be contiguous"))),
        _ => Err(Error::Msg(format!("{what}: f32 only"))),
    }
}

/// Runs `f(first_row, rows)` over `out` cut into rows of `row` values, on a few threads when
/// the tensor is large enough to pay for them.
fn par_rows(out: &mut [f32], row: usize, f: impl Fn(usize, &mut [f32]) + Sync) {
    let rows = out.len() / row.max(1);
    let threads = if out.len() < 1 << 16 { 1 } else { candle_core::utils::get_num_threads().clamp(1, rows.max(1)) };
    if threads <= 1 {
        f(0, out);
        return;
    }
    let per = rows.div_ceil(threads);
    std::thread::scope(|s| {
        for (i, chunk) in out.chunks_mut(per * row).enumerate() {
            let f = &f;
            s.spawn(move || f(i * per, chunk));
        }
    });
}

/// softmax over j ≤ i of `scale · x[.., i, j]` (0 above the diagonal), for scores (.., T, T).
pub struct CausalSoftmax {
    pub scale: f32,
}

impl CustomOp1 for CausalSoftmax {
    fn name(&self) -> &'static str {
        "causal-softmax"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let t = *l.dims().last().ok_or_else(|| Error::Msg("causal-softmax: scalar input".into()))?;
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, t, |first, rows| {
            for (r, o) in rows.chunks_exact_mut(t).enumerate() {
                let row = first + r;
                let i = row % t;
                let xr = &x[row * t..row * t + i + 1];
                let max = xr.iter().fold(f32::NEG_INFINITY, |m, v| m.max(*v)) * self.scale;
                let mut sum = 0.0;
                for (o, v) in o[..=i].iter_mut().zip(xr) {
                    *o = (v * self.scale - max).exp();
                    sum += *o;
                }
                let inv = 1.0 / sum;
                o[..=i].iter_mut().for_each(|v| *v *= inv);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }

    fn bwd(&self, _arg: &Tensor, res: &Tensor, grad: &Tensor) -> Result<Option<Tensor>> {
        Ok(Some(res.apply_op2_no_bwd(&grad.contiguous()?, &SoftmaxGrad { scale: self.scale })?))
    }
}

/// dx = scale · y ⊙ (g − Σⱼ gⱼ yⱼ) per row, from the softmax output y and its gradient g.
struct SoftmaxGrad {
    scale: f32,
}

impl CustomOp2 for SoftmaxGrad {
    fn name(&self) -> &'static str {
        "causal-softmax-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (y, g) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let t = *l1.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; y.len()];
        par_rows(&mut out, t, |first, rows| {
            for (r, o) in rows.chunks_exact_mut(t).enumerate() {
                let at = (first + r) * t;
                let (yr, gr) = (&y[at..at + t], &g[at..at + t]);
                let dot: f32 = yr.iter().zip(gr).map(|(a, b)| a * b).sum();
                for ((o, a), b) in o.iter_mut().zip(yr).zip(gr) {
                    *o = self.scale * a * (b - dot);
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// RMSNorm over the last dimension: x · w / sqrt(mean(x²) + eps).
pub struct RmsNormOp {
    pub eps: f32,
}

fn inv_rms(x: &[f32], eps: f32) -> f32 {
    1.0 / (x.iter().map(|v| v * v).sum::<f32>() / x.len() as f32 + eps).sqrt()
}

impl CustomOp2 for RmsNormOp {
    fn name(&self) -> &'static str {
        "rms-norm"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?);
        let h = w.len();
        if l1.dims().last() != Some(&h) {
            return Err(Error::Msg(format!("rms-norm: input {:?} vs weight of {h}", l1.dims())));
        }
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, h, |first, rows| {
            for (r, o) in rows.chunks_exact_mut(h).enumerate() {
                let xr = &x[(first + r) * h..(first + r + 1) * h];
                let inv = inv_rms(xr, self.eps);
                for ((o, v), g) in o.iter_mut().zip(xr).zip(w) {
                    *o = v * inv * g;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, x: &Tensor, w: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>)> {
        let g = grad.contiguous()?;
        let dx = x.apply_op3_no_bwd(w, &g, &RmsNormGradX { eps: self.eps })?;
        let h = w.dim(0)?;
        let rows = x.elem_count() / h;
        // dw = Σ_rows g ⊙ x · inv_rms(x)
        let scaled = x.apply_op1_no_bwd(&NormalizeOnly { eps: self.eps })?;
        let dw = (g * scaled)?.reshape((rows, h))?.sum(0)?;
        Ok((Some(dx), Some(dw)))
    }
}

/// x / sqrt(mean(x²) + eps) (RMSNorm without the weight).
struct NormalizeOnly {
    eps: f32,
}

impl CustomOp1 for NormalizeOnly {
    fn name(&self) -> &'static str {
        "rms-normalize"
    }

    fn cpu_fwd(&self, s: &CpuStorage, l: &Layout) -> Result<(CpuStorage, Shape)> {
        let x = slice(s, l, self.name())?;
        let h = *l.dims().last().unwrap_or(&1);
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, h, |first, rows| {
            for (r, o) in rows.chunks_exact_mut(h).enumerate() {
                let xr = &x[(first + r) * h..(first + r + 1) * h];
                let inv = inv_rms(xr, self.eps);
                o.iter_mut().zip(xr).for_each(|(o, v)| *o = v * inv);
            }
        });
        Ok((CpuStorage::F32(out), l.shape().clone()))
    }
}

/// dx of RMSNorm: with u = g ⊙ w and r = inv_rms(x): r·u − x·r³·mean(u ⊙ x).
struct RmsNormGradX {
    eps: f32,
}

impl CustomOp3 for RmsNormGradX {
    fn name(&self) -> &'static str {
        "rms-norm-grad"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, w, g) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let h = w.len();
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, h, |first, rows| {
            for (r, o) in rows.chunks_exact_mut(h).enumerate() {
                let at = (first + r) * h;
                let (xr, gr) = (&x[at..at + h], &g[at..at + h]);
                let inv = inv_rms(xr, self.eps);
                let dot: f32 = xr.iter().zip(gr).zip(w).map(|((x, g), w)| x * g * w).sum::<f32>() / h as f32;
                let c = dot * inv * inv * inv;
                for (((o, x), g), w) in o.iter_mut().zip(xr).zip(gr).zip(w) {
                    *o = inv * g * w - x * c;
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }
}

/// Rotary embedding of x (B, T, H, D) with per-token tables cos, sin (B, T, D) in the
/// rotate-half convention: (a, b) → (a·cos − b·sin, b·cos + a·sin). `inverse` applies the
/// transpose of that linear map (its backward).
pub struct RopeOp {
    pub inverse: bool,
}

impl CustomOp3 for RopeOp {
    fn name(&self) -> &'static str {
        "rope"
    }

    fn cpu_fwd(&self, s1: &CpuStorage, l1: &Layout, s2: &CpuStorage, l2: &Layout, s3: &CpuStorage, l3: &Layout) -> Result<(CpuStorage, Shape)> {
        let (x, cos, sin) = (slice(s1, l1, self.name())?, slice(s2, l2, self.name())?, slice(s3, l3, self.name())?);
        let dims = l1.dims();
        if dims.len() != 4 || l2.dims() != [dims[0], dims[1], dims[3]] || l3.dims() != l2.dims() {
            return Err(Error::Msg(format!("rope: x {:?}, cos {:?}, sin {:?}", dims, l2.dims(), l3.dims())));
        }
        let (heads, d) = (dims[2], dims[3]);
        let half = d / 2;
        let mut out = vec![0f32; x.len()];
        par_rows(&mut out, heads * d, |first, rows| {
            for (r, o) in rows.chunks_exact_mut(heads * d).enumerate() {
                let tok = first + r;
                let (c, s) = (&cos[tok * d..(tok + 1) * d], &sin[tok * d..(tok + 1) * d]);
                for (hd, o) in o.chunks_exact_mut(d).enumerate() {
                    let xr = &x[(tok * heads + hd) * d..(tok * heads + hd + 1) * d];
                    for i in 0..half {
                        let (a, b) = (xr[i], xr[i + half]);
                        if self.inverse {
                            o[i] = a * c[i] + b * s[i + half];
                            o[i + half] = b * c[i + half] - a * s[i];
                        } else {
                            o[i] = a * c[i] - b * s[i];
                            o[i + half] = b * c[i + half] + a * s[i + half];
                        }
                    }
                }
            }
        });
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(&self, _x: &Tensor, cos: &Tensor, sin: &Tensor, _res: &Tensor, grad: &Tensor) -> Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let dx = grad.contiguous()?.apply_op3_no_bwd(cos, sin, &RopeOp { inverse: !self.inverse })?;
        Ok((Some(dx), None, None))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use candle_core::{Device, Var, D};

    fn randn(shape: &[usize], seed: u64) -> Var {
        let mut rng = crate::rng::Normal::new(seed);
        let n: usize = shape.iter().product();
        Var::from_vec((0..n).map(|_| rng.sample()).collect::<Vec<f32>>(), shape, &Device::Cpu).unwrap()
    }

    /// Max |a − b| of the values and of the gradients of `inputs` under a weighted sum.
    fn compare(fused: &Tensor, plain: &Tensor, inputs: &[&Var]) -> f32 {
        let w = randn(fused.dims(), 99);
        let diff = |a: &Tensor, b: &Tensor| (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar::<f32>().unwrap();
        let mut d = diff(fused, plain);
        let gf = (fused * w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        let gp = (plain * w.as_tensor()).unwrap().sum_all().unwrap().backward().unwrap();
        for v in inputs {
            let (a, b) = (gf.get(v.as_tensor()).expect("fused gradient"), gp.get(v.as_tensor()).expect("plain gradient"));
            d = d.max(diff(a, b));
        }
        d
    }

    #[test]
    fn causal_softmax_matches_masked_softmax() {
        let x = randn(&[2, 3, 7, 7], 1);
        let fused = x.as_tensor().apply_op1(CausalSoftmax { scale: 0.5 }).unwrap();
        let mask = crate::model::layers::causal_mask(7, &Device::Cpu).unwrap();
        let plain = candle_nn::ops::softmax(&(x.as_tensor() * 0.5).unwrap().broadcast_add(&mask).unwrap(), D::Minus1).unwrap();
        assert!(compare(&fused, &plain, &[&x]) < 1e-5);
    }

    #[test]
    fn rms_norm_matches_composed_ops() {
        let (x, w) = (randn(&[3, 5, 16], 2), randn(&[16], 3));
        let fused = x.as_tensor().apply_op2(w.as_tensor(), RmsNormOp { eps: 1e-5 }).unwrap();
        let inv = (x.as_tensor().sqr().unwrap().mean_keepdim(D::Minus1).unwrap() + 1e-5).unwrap().sqrt().unwrap().recip().unwrap();
        let plain = x.as_tensor().broadcast_mul(&inv).unwrap().broadcast_mul(w.as_tensor()).unwrap();
        assert!(compare(&fused, &plain, &[&x, &w]) < 1e-5);
    }

    #[test]
    fn rope_matches_rotate_half() {
        let x = randn(&[2, 4, 3, 8], 4);
        let ang = randn(&[2, 4, 4], 5).as_tensor().detach();
        let ang = Tensor::cat(&[&ang, &ang], D::Minus1).unwrap();
        let (cos, sin) = (ang.cos().unwrap(), ang.sin().unwrap());
        let fused = x.as_tensor().apply_op3(&cos, &sin, RopeOp { inverse: false }).unwrap();
        let xt = x.as_tensor();
        let rot = Tensor::cat(&[&xt.narrow(3, 4, 4).unwrap().neg().unwrap(), &xt.narrow(3, 0, 4).unwrap()], 3).unwrap();
        let plain = (xt.broadcast_mul(&cos.unsqueeze(2).unwrap()).unwrap() + rot.broadcast_mul(&sin.unsqueeze(2).unwrap()).unwrap()).unwrap();
        assert!(compare(&fused, &plain, &[&x]) < 1e-5);
    }
}
