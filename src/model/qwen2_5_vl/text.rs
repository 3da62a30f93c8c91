//! Qwen2.5-VL's language model: a Qwen2 decoder (GQA attention with q/k/v biases, SwiGLU,
//! RMSNorm) with multimodal RoPE, whose (temporal, height, width) positions come from `rope_index`.

use super::config::DecoderSpec;
use super::lora::{LoraConfig, LoraLinear};
use crate::model::layers::{attention, linear_no_bias, Lin, Mask, RmsNorm, Rotary};
use candle_core::{Device, Result, Tensor};
use candle_nn::{Embedding, VarBuilder};

#[derive(Debug, Clone)]
struct Layer {
    input_norm: RmsNorm,
    /// Qwen3: per-head RMSNorm of queries and keys.
    qk_norm: Option<(RmsNorm, RmsNorm)>,
    q: LoraLinear,
    k: LoraLinear,
    v: LoraLinear,
    o: LoraLinear,
    post_norm: RmsNorm,
    gate: LoraLinear,
    up: LoraLinear,
    down: LoraLinear,
    heads: usize,
    kv_heads: usize,
}

impl Layer {
    fn new(spec: &DecoderSpec, vb: VarBuilder, lora: Option<&LoraConfig>) -> Result<Self> {
        let c = &spec.text;
        let (h, i, hd) = (c.hidden_size, c.intermediate_size, c.head_dim());
        let kv = c.num_key_value_heads * hd;
        let lin = |i, o, bias, path: &str| LoraLinear::new(i, o, bias, path.rsplit('.').next().unwrap_or(path), vb.pp(path), lora);
        let qk_norm = if spec.qk_norm {
            Some((RmsNorm::new(hd, c.rms_norm_eps, vb.pp("self_attn.q_norm"))?, RmsNorm::new(hd, c.rms_norm_eps, vb.pp("self_attn.k_norm"))?))
        } else {
            None
        };
        Ok(Self {
            input_norm: RmsNorm::new(h, c.rms_norm_eps, vb.pp("input_layernorm"))?,
            qk_norm,
            q: lin(h, c.num_attention_heads * hd, spec.qkv_bias, "self_attn.q_proj")?,
            k: lin(h, kv, spec.qkv_bias, "self_attn.k_proj")?,
            v: lin(h, kv, spec.qkv_bias, "self_attn.v_proj")?,
            o: lin(c.num_attention_heads * hd, h, spec.o_bias, "self_attn.o_proj")?,
            post_norm: RmsNorm::new(h, c.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            gate: lin(h, i, false, "mlp.gate_proj")?,
            up: lin(h, i, false, "mlp.up_proj")?,
            down: lin(i, h, false, "mlp.down_proj")?,
            heads: c.num_attention_heads,
            kv_heads: c.num_key_value_heads,
        })
    }

    fn repeat_kv(&self, x: Tensor) -> Result<Tensor> {
        let rep = self.heads / self.kv_heads;
        if rep == 1 {
            return Ok(x);
        }
        let (b, kvh, t, d) = x.dims4()?;
        x.unsqueeze(2)?.expand((b, kvh, rep, t, d))?.reshape((b, kvh * rep, t, d))
    }

    fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: Mask, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let (b, t, _) = x.dims3()?;
        let hd = cos.dim(2)?;
        let h = self.input_norm.forward(x)?;
        let mut q = self.q.forward(&h)?.reshape((b, t, self.heads, hd))?;
        let mut k = self.k.forward(&h)?.reshape((b, t, self.kv_heads, hd))?;
        if let Some((qn, kn)) = &self.qk_norm {
            q = qn.forward(&q)?;
            k = kn.forward(&k)?;
        }
        let q = Rotary::apply(&q, cos, sin)?.transpose(1, 2)?;
        let mut k = Rotary::apply(&k, cos, sin)?.transpose(1, 2)?;
        let mut v = self.v.forward(&h)?.reshape((b, t, self.kv_heads, hd))?.transpose(1, 2)?;
        if let Some(cache) = cache {
            if let Some((pk, pv)) = cache.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let a = attention(&q, &self.repeat_kv(k)?, &self.repeat_kv(v)?, mask, false)?;
        let x = (x + self.o.forward(&a.transpose(1, 2)?.reshape((b, t, self.heads * hd))?)?)?;
        let h = self.post_norm.forward(&x)?;
        x + self.down.forward(&(self.gate.forward(&h)?.silu()? * self.up.forward(&h)?)?)?
    }
}

#[derive(Debug, Clone)]
pub struct TextModel {
    pub(crate) embed: Embedding,
    layers: Vec<Layer>,
    norm: RmsNorm,
    lm_head: Lin,
    inv_freq: Vec<f32>,
    /// For each of a head's rotary dimensions: 0 temporal, 1 height, 2 width.
    axis: Vec<usize>,
}

/// Per-layer key/value cache for incremental decoding.
#[derive(Debug, Default, Clone)]
pub struct Cache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl TextModel {
    /// `vb` at the checkpoint root (`model.*`, `lm_head.*`).
    pub fn new(spec: &DecoderSpec, vb: VarBuilder, lora: Option<&LoraConfig>) -> Result<Self> {
        let c = &spec.text;
        let embed = candle_nn::embedding(c.vocab_size, c.hidden_size, vb.pp("model.embed_tokens"))?;
        let lm_head = if spec.tie_word_embeddings {
            Lin::from_weight(embed.embeddings().clone(), None)
        } else {
            linear_no_bias(c.hidden_size, c.vocab_size, vb.pp("lm_head"))?
        };
        let half = c.head_dim() / 2;
        let inv_freq = (0..half).map(|i| 1.0 / (c.rope_theta as f32).powf((2 * i) as f32 / c.head_dim() as f32)).collect();
        let axis = spec.mrope_axes.clone();
        Ok(Self {
            embed,
            layers: (0..c.num_hidden_layers).map(|i| Layer::new(spec, vb.pp(format!("model.layers.{i}")), lora)).collect::<Result<_>>()?,
            norm: RmsNorm::new(c.hidden_size, c.rms_norm_eps, vb.pp("model.norm"))?,
            lm_head,
            inv_freq,
            axis,
        })
    }

    /// cos, sin tables (B, T, head_dim) for positions `[b][t] = (temporal, height, width)`.
    pub fn rope_tables(&self, positions: &[Vec<[i64; 3]>], dev: &Device) -> Result<(Tensor, Tensor)> {
        let (b, t) = (positions.len(), positions.first().map_or(0, |p| p.len()));
        let d = self.inv_freq.len() * 2;
        let (mut cos, mut sin) = (Vec::with_capacity(b * t * d), Vec::with_capacity(b * t * d));
        for row in positions {
            if row.len() != t {
                candle_core::bail!("position rows of different lengths ({} vs {t})", row.len());
            }
            for p in row {
                let angles = self.axis.iter().enumerate().map(|(j, &a)| p[a] as f32 * self.inv_freq[j % self.inv_freq.len()]);
                for a in angles {
                    cos.push(a.cos());
                    sin.push(a.sin());
                }
            }
        }
        Ok((Tensor::from_vec(cos, (b, t, d), dev)?, Tensor::from_vec(sin, (b, t, d), dev)?))
    }

    /// Hidden states after the final norm for embeddings x (B, T, C).
    pub fn forward(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: Mask, cache: Option<&mut Cache>) -> Result<Tensor> {
        self.forward_deepstack(x, cos, sin, mask, cache, &[])
    }

    /// `forward`, adding `deepstack[i]` (B·T, C) to the hidden states after layer i (Qwen3-VL
    /// feeds intermediate vision features to its first layers this way).
    pub fn forward_deepstack(&self, x: &Tensor, cos: &Tensor, sin: &Tensor, mask: Mask, mut cache: Option<&mut Cache>, deepstack: &[Tensor]) -> Result<Tensor> {
        let (cos, sin) = (cos.to_dtype(x.dtype())?, sin.to_dtype(x.dtype())?);
        if let Some(c) = cache.as_deref_mut() {
            c.layers.resize(self.layers.len(), None);
        }
        let mut x = x.clone();
        for (i, l) in self.layers.iter().enumerate() {
            x = l.forward(&x, &cos, &sin, mask, cache.as_deref_mut().map(|c| &mut c.layers[i]))?;
            if let Some(d) = deepstack.get(i) {
                let d = d.reshape(x.shape())?;
                x = (x + d)?;
            }
        }
        self.norm.forward(&x)
    }

    pub fn num_layers(&self) -> usize {
        self.layers.len()
    }

    /// Decoder layer `i` alone over x (B, T, C), causal, no cache (training with recomputation).
    pub fn layer(&self, i: usize, x: &Tensor, cos: &Tensor, sin: &Tensor) -> Result<Tensor> {
        self.layers[i].forward(x, cos, sin, Mask::Causal, None)
    }

    /// The final RMSNorm.
    pub fn final_norm(&self, x: &Tensor) -> Result<Tensor> {
        self.norm.forward(x)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }
}

impl Cache {
    /// The cache of one sequence repeated for `n` rows (samples decoding from one prompt).
    pub fn repeat(&self, n: usize) -> Result<Self> {
        let rep = |t: &Tensor| -> Result<Tensor> {
            let mut dims = t.dims().to_vec();
            dims[0] = n;
            t.broadcast_as(dims)?.contiguous()
        };
        let layers = self.layers.iter().map(|l| l.as_ref().map(|(k, v)| Ok::<_, candle_core::Error>((rep(k)?, rep(v)?))).transpose()).collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Several sequences' caches as the rows of one batch: cache i repeated `reps[i]` times,
    /// each left-padded with zeros to the longest (the pads must be masked out of attention).
    pub fn stack(caches: &[&Cache], reps: &[usize]) -> Result<Self> {
        let t_max = caches.iter().map(|c| c.len()).max().unwrap_or(0);
        let n_layers = caches.first().map_or(0, |c| c.layers.len());
        let mut layers = Vec::with_capacity(n_layers);
        for l in 0..n_layers {
            let (mut ks, mut vs) = (Vec::new(), Vec::new());
            for (c, &r) in caches.iter().zip(reps) {
                let Some((k, v)) = c.layers.get(l).and_then(|x| x.as_ref()) else { candle_core::bail!("a cache without layer {l}") };
                let pad = t_max - k.dim(2)?;
                let grow = |t: &Tensor| -> Result<Tensor> {
                    let t = if pad > 0 { t.pad_with_zeros(2, pad, 0)? } else { t.clone() };
                    let mut dims = t.dims().to_vec();
                    dims[0] = r;
                    t.broadcast_as(dims)?.contiguous()
                };
                ks.push(grow(k)?);
                vs.push(grow(v)?);
            }
            layers.push(Some((Tensor::cat(&ks, 0)?, Tensor::cat(&vs, 0)?)));
        }
        Ok(Self { layers })
    }

    /// Keeps the rows `rows` (finished samples leave the batch).
    pub fn select(&self, rows: &[u32]) -> Result<Self> {
        let Some(dev) = self.layers.iter().flatten().next().map(|(k, _)| k.device().clone()) else { return Ok(self.clone()) };
        let idx = Tensor::from_vec(rows.to_vec(), rows.len(), &dev)?;
        let layers = self
            .layers
            .iter()
            .map(|l| l.as_ref().map(|(k, v)| Ok::<_, candle_core::Error>((k.index_select(&idx, 0)?, v.index_select(&idx, 0)?))).transpose())
            .collect::<Result<_>>()?;
        Ok(Self { layers })
    }

    /// Keys cached so far.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map_or(0, |(k, _)| k.dim(2).unwrap_or(0))
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}
