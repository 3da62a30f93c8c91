//! The tiny VLM's forward pass, written only with differentiable candle ops (no fused
//! rms_norm / softmax_last_dim / rope kernels, which have no backward).

use super::config::{Config, VisionConfig};
use super::decode_cpu::{CpuDecoder, LayerWeights};
use super::vision_cpu::{Affine, Block, CpuVision};
use crate::model::layers::{attention, linear, linear_no_bias, Lin, Mask, RmsNorm, Rotary};
use candle_core::{DType, Device, IndexOp, Module, Result, Tensor, D};
use candle_nn::{Embedding, Init, Linear, VarBuilder};
use std::sync::Arc;

#[derive(Debug, Clone)]
struct VisionBlock {
    norm1: RmsNorm,
    qkv: Lin,
    proj: Lin,
    norm2: RmsNorm,
    fc1: Lin,
    fc2: Lin,
    heads: usize,
    fused: bool,
}

impl VisionBlock {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let v = &cfg.vision_config;
        Ok(Self {
            norm1: RmsNorm::new(v.hidden_size, cfg.rms_norm_eps, vb.pp("norm1"))?,
            qkv: linear(v.hidden_size, 3 * v.hidden_size, vb.pp("attn.qkv"))?,
            proj: linear(v.hidden_size, v.hidden_size, vb.pp("attn.proj"))?,
            norm2: RmsNorm::new(v.hidden_size, cfg.rms_norm_eps, vb.pp("norm2"))?,
            fc1: linear(v.hidden_size, v.intermediate_size, vb.pp("mlp.fc1"))?,
            fc2: linear(v.intermediate_size, v.hidden_size, vb.pp("mlp.fc2"))?,
            heads: v.num_attention_heads,
            fused: false,
        })
    }

    fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let hd = c / self.heads;
        let qkv = self.qkv.forward(&self.norm1.forward(x)?)?.reshape((b, t, 3, self.heads, hd))?;
        let q = qkv.i((.., .., 0))?.transpose(1, 2)?;
        let k = qkv.i((.., .., 1))?.transpose(1, 2)?;
        let v = qkv.i((.., .., 2))?.transpose(1, 2)?;
        let a = attention(&q, &k, &v, Mask::None, self.fused)?.transpose(1, 2)?.reshape((b, t, c))?;
        let x = (x + self.proj.forward(&a)?)?;
        let h = self.fc2.forward(&self.fc1.forward(&self.norm2.forward(&x)?)?.silu()?)?;
        x + h
    }
}

/// ViT-style encoder: linear patch embedding + learned positions + pre-norm blocks.
#[derive(Debug, Clone)]
pub struct VisionEncoder {
    /// Optional convolutional stem: two 3×3 convolutions (weight, bias) at full resolution.
    stem: Option<[(Tensor, Tensor); 2]>,
    patch_embed: Lin,
    /// (patches per side, patch size, input channels)
    layout: (usize, usize, usize),
    pos_embed: Tensor,
    blocks: Vec<VisionBlock>,
    norm: RmsNorm,
}

impl VisionEncoder {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let v = &cfg.vision_config;
        let pos_embed = vb.get_with_hints((v.num_patches(), v.hidden_size), "pos_embed", Init::Randn { mean: 0.0, stdev: 0.02 })?;
        let blocks = (0..v.num_hidden_layers).map(|i| VisionBlock::new(cfg, vb.pp(format!("layers.{i}")))).collect::<Result<_>>()?;
        let stem = match v.stem_channels {
            Some(c) => {
                let conv = |i: usize, cin: usize| -> Result<(Tensor, Tensor)> {
                    let vb = vb.pp(format!("stem.{i}"));
                    let w = vb.get_with_hints((c, cin, 3, 3), "weight", Init::Randn { mean: 0.0, stdev: 0.02 })?;
                    Ok((w, vb.get_with_hints(c, "bias", Init::Const(0.0))?))
                };
                Some([conv(0, v.num_channels)?, conv(1, c)?])
            }
            None => None,
        };
        Ok(Self {
            stem,
            layout: (v.grid(), v.patch_size, v.num_channels),
            patch_embed: linear(v.embed_dim(), v.hidden_size, vb.pp("patch_embed"))?,
            pos_embed,
            blocks,
            norm: RmsNorm::new(v.hidden_size, cfg.rms_norm_eps, vb.pp("norm"))?,
        })
    }

    /// (B, P, patch_dim) → (B, P, vision hidden).
    pub fn forward(&self, patches: &Tensor) -> Result<Tensor> {
        let patches = match &self.stem {
            None => patches.clone(),
            Some(convs) => {
                // patches (row, column, channel) per patch → image (B, C, H, W) → stem → patches
                let (n, p, c) = self.layout;
                let mut img = patches_to_image(patches, n, p, c)?;
                for (w, bias) in convs {
                    img = img.conv2d(w, 1, 1, 1, 1)?.broadcast_add(&bias.reshape((1, (), 1, 1))?)?.silu()?;
                }
                image_to_patches(&img, n, p)?
            }
        };
        let mut x = self.patch_embed.forward(&patches)?.broadcast_add(&self.pos_embed)?;
        for b in &self.blocks {
            x = b.forward(&x)?;
        }
        self.norm.forward(&x)
    }
}

#[derive(Debug, Clone)]
struct DecoderLayer {
    input_norm: RmsNorm,
    q: Lin,
    k: Lin,
    v: Lin,
    o: Lin,
    post_norm: RmsNorm,
    gate: Lin,
    up: Lin,
    down: Lin,
    heads: usize,
    fused: bool,
}

impl DecoderLayer {
    fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        let h = cfg.hidden_size;
        let i = cfg.intermediate_size;
        Ok(Self {
            input_norm: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("input_layernorm"))?,
            q: linear_no_bias(h, h, vb.pp("self_attn.q_proj"))?,
            k: linear_no_bias(h, h, vb.pp("self_attn.k_proj"))?,
            v: linear_no_bias(h, h, vb.pp("self_attn.v_proj"))?,
            o: linear_no_bias(h, h, vb.pp("self_attn.o_proj"))?,
            post_norm: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("post_attention_layernorm"))?,
            gate: linear_no_bias(h, i, vb.pp("mlp.gate_proj"))?,
            up: linear_no_bias(h, i, vb.pp("mlp.up_proj"))?,
            down: linear_no_bias(i, h, vb.pp("mlp.down_proj"))?,
            heads: cfg.num_attention_heads,
            fused: false,
        })
    }

    fn forward(&self, x: &Tensor, (cos, sin): (&Tensor, &Tensor), mask: Mask, cache: Option<&mut Option<(Tensor, Tensor)>>) -> Result<Tensor> {
        let (b, t, c) = x.dims3()?;
        let hd = c / self.heads;
        let h = self.input_norm.forward(x)?;
        let heads = |y: Tensor| y.reshape((b, t, self.heads, hd));
        let q = Rotary::apply(&heads(self.q.forward(&h)?)?, cos, sin)?.transpose(1, 2)?;
        let mut k = Rotary::apply(&heads(self.k.forward(&h)?)?, cos, sin)?.transpose(1, 2)?;
        let mut v = heads(self.v.forward(&h)?)?.transpose(1, 2)?;
        if let Some(cache) = cache {
            if let Some((pk, pv)) = cache.as_ref() {
                k = Tensor::cat(&[pk, &k], 2)?;
                v = Tensor::cat(&[pv, &v], 2)?;
            }
            *cache = Some((k.clone(), v.clone()));
        }
        let a = attention(&q, &k, &v, mask, self.fused)?.transpose(1, 2)?.reshape((b, t, c))?;
        let x = (x + self.o.forward(&a)?)?;
        let h = self.post_norm.forward(&x)?;
        let m = self.down.forward(&(self.gate.forward(&h)?.silu()? * self.up.forward(&h)?)?)?;
        x + m
    }
}

/// Per-layer key/value cache for incremental decoding.
#[derive(Debug, Default)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
}

impl KvCache {
    pub fn new(layers: usize) -> Self {
        Self { layers: vec![None; layers] }
    }
    /// Cached sequence length.
    pub fn len(&self) -> usize {
        self.layers.first().and_then(|l| l.as_ref()).map(|(k, _)| k.dim(2).unwrap_or(0)).unwrap_or(0)
    }
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The tiny VLM: vision encoder → projector → causal decoder with tied embeddings.
#[derive(Debug, Clone)]
pub struct TinyVlm {
    pub cfg: Config,
    vision: VisionEncoder,
    proj1: Lin,
    proj2: Lin,
    embed: Embedding,
    layers: Vec<DecoderLayer>,
    norm: RmsNorm,
    lm_head: Lin,
    /// PRM only: hidden state → step score logit.
    score_head: Option<Lin>,
    rotary: Rotary,
    /// `vision_config.pool_grid`: the (g², P) averaging matrix from patches to regions.
    pool: Option<Tensor>,
    device: Device,
    /// The CPU sampling path (a weight snapshot), set by `use_inference_kernels` on the CPU.
    cpu: Option<Arc<CpuDecoder>>,
    /// Training with every `vision.` weight frozen: the encoder's output is detached, so the
    /// backward pass stops at the projector instead of computing gradients nobody applies.
    vision_frozen: bool,
}

impl TinyVlm {
    /// Builds the model from a VarBuilder: over a VarMap for training (initialized by the
    /// hints), or over safetensors for loading — the same path real checkpoints use.
    pub fn new(cfg: &Config, vb: VarBuilder) -> Result<Self> {
        cfg.validate().map_err(candle_core::Error::msg)?;
        let h = cfg.hidden_size;
        let vh = cfg.vision_config.hidden_size;
        let embed = candle_nn::embedding(cfg.vocab_size, h, vb.pp("model.embed_tokens"))?;
        let lm_head =
            if cfg.tie_word_embeddings { Lin(Linear::new(embed.embeddings().clone(), None)) } else { linear_no_bias(h, cfg.vocab_size, vb.pp("lm_head"))? };
        let layers = (0..cfg.num_hidden_layers).map(|i| DecoderLayer::new(cfg, vb.pp(format!("model.layers.{i}")))).collect::<Result<_>>()?;
        Ok(Self {
            cfg: cfg.clone(),
            vision: VisionEncoder::new(cfg, vb.pp("vision"))?,
            proj1: linear(vh * cfg.vision_config.merge_size.pow(2), h, vb.pp("projector.fc1"))?,
            proj2: linear(h, h, vb.pp("projector.fc2"))?,
            embed,
            layers,
            norm: RmsNorm::new(h, cfg.rms_norm_eps, vb.pp("model.norm"))?,
            lm_head,
            score_head: if cfg.is_prm() { Some(linear(h, 1, vb.pp("score_head"))?) } else { None },
            rotary: Rotary::new(cfg.head_dim(), cfg.rope_theta, cfg.max_position_embeddings, vb.device())?,
            pool: cfg.vision_config.pool_grid.map(|g| region_pool(&cfg.vision_config, g, vb.device())).transpose()?,
            device: vb.device().clone(),
            cpu: None,
            vision_frozen: false,
        })
    }

    pub fn device(&self) -> &Device {
        &self.device
    }

    /// Switches RMSNorm and softmax to candle's fused kernels, which are faster but have no
    /// backward, and on the CPU snapshots the weights into the `decode_cpu` sampling path:
    /// for sampling and evaluation only, never for a model that trains.
    pub fn use_inference_kernels(&mut self, on: bool) -> Result<()> {
        self.cpu = if on && self.device.is_cpu() {
            let mut dec = self.cpu_decoder()?.with_step_weights();
            dec.vision = self.cpu_vision()?;
            Some(Arc::new(dec))
        } else {
            None
        };
        for b in &mut self.vision.blocks {
            b.fused = on;
            b.norm1.fused = on;
            b.norm2.fused = on;
        }
        self.vision.norm.fused = on;
        for l in &mut self.layers {
            l.fused = on;
            l.input_norm.fused = on;
            l.post_norm.fused = on;
        }
        self.norm.fused = on;
        Ok(())
    }

    /// The CPU sampling path, when `use_inference_kernels(true)` made one.
    pub fn cpu_path(&self) -> Option<&CpuDecoder> {
        self.cpu.as_deref()
    }

    /// A snapshot of the decoder's weights for the CPU sampling path.
    pub fn cpu_decoder(&self) -> Result<CpuDecoder> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_dtype(DType::F32)?.to_vec1() };
        let stack = |ws: &[&Lin]| -> Result<Vec<f32>> { flat(&Tensor::cat(&ws.iter().map(|l| l.0.weight()).collect::<Vec<_>>(), 0)?) };
        let layers = self
            .layers
            .iter()
            .map(|l| {
                Ok(LayerWeights {
                    input_norm: flat(&l.input_norm.weight)?,
                    qkv: stack(&[&l.q, &l.k, &l.v])?,
                    o: flat(l.o.0.weight())?,
                    post_norm: flat(&l.post_norm.weight)?,
                    gate_up: stack(&[&l.gate, &l.up])?,
                    down: flat(l.down.0.weight())?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(CpuDecoder {
            hidden: self.cfg.hidden_size,
            heads: self.cfg.num_attention_heads,
            inter: self.cfg.intermediate_size,
            vocab: self.cfg.vocab_size,
            eps: self.cfg.rms_norm_eps as f32,
            layers,
            norm: flat(&self.norm.weight)?,
            embed: flat(self.embed.embeddings())?,
            lm_head: flat(self.lm_head.0.weight())?,
            cos: flat(&self.rotary.cos)?,
            sin: flat(&self.rotary.sin)?,
            step: None,
            vision: None,
        })
    }

    /// A snapshot of the vision encoder's weights for its CPU path (none with a stem).
    pub fn cpu_vision(&self) -> Result<Option<CpuVision>> {
        let flat = |t: &Tensor| -> Result<Vec<f32>> { t.flatten_all()?.to_dtype(DType::F32)?.to_vec1() };
        let lin = |l: &Lin| -> Result<Affine> {
            let b = match l.0.bias() {
                Some(b) => flat(b)?,
                None => vec![0.0; l.0.weight().dim(0)?],
            };
            Ok(Affine { w: flat(l.0.weight())?, b })
        };
        let v = &self.vision;
        if v.stem.is_some() {
            return Ok(None);
        }
        let blocks = v
            .blocks
            .iter()
            .map(|b| {
                Ok(Block {
                    norm1: flat(&b.norm1.weight)?,
                    qkv: lin(&b.qkv)?,
                    proj: lin(&b.proj)?,
                    norm2: flat(&b.norm2.weight)?,
                    fc1: lin(&b.fc1)?,
                    fc2: lin(&b.fc2)?,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Some(CpuVision {
            patch_embed: lin(&v.patch_embed)?,
            pos_embed: flat(&v.pos_embed)?,
            blocks,
            norm: flat(&v.norm.weight)?,
            heads: self.cfg.vision_config.num_attention_heads,
            eps: self.cfg.rms_norm_eps as f32,
        }))
    }

    /// The vision encoder's output (B, P, vision hidden), before merging and projection.
    pub fn vision_features(&self, patches: &Tensor) -> Result<Tensor> {
        self.vision.forward(patches)
    }

    /// Whether training keeps the whole vision encoder frozen (see `vision_frozen`).
    pub fn set_vision_frozen(&mut self, frozen: bool) {
        self.vision_frozen = frozen;
    }

    pub fn vision_is_frozen(&self) -> bool {
        self.vision_frozen
    }

    /// Image features in the text embedding space: (B, P, patch_dim) → (B, image_tokens, hidden).
    pub fn encode_images(&self, patches: &Tensor) -> Result<Tensor> {
        self.project_features(&self.vision.forward(patches)?)
    }

    /// The vision encoder's features (B, P, vision hidden) merged or pooled and projected into
    /// the text embedding space: (B, image_tokens, hidden).
    pub fn project_features(&self, f: &Tensor) -> Result<Tensor> {
        let f = if self.vision_frozen { f.detach() } else { f.clone() };
        let v = match &self.pool {
            Some(pool) => pool_regions(pool, &f)?,
            None => merge_patches(&f, self.cfg.vision_config.grid(), self.cfg.vision_config.merge_size)?,
        };
        self.proj2.forward(&self.proj1.forward(&v)?.silu()?)
    }

    /// Token embeddings (B, T) → (B, T, hidden).
    pub fn embed_tokens(&self, ids: &Tensor) -> Result<Tensor> {
        self.embed.forward(ids)
    }

    /// Input embeddings of `ids` (B, T) where column `image_at` holds the image token: that
    /// column is replaced by the image's P feature vectors, giving (B, T − 1 + P, hidden).
    pub fn embed(&self, ids: &Tensor, image_at: usize, image_feats: &Tensor) -> Result<Tensor> {
        let (_, t) = ids.dims2()?;
        let e = self.embed.forward(ids)?;
        let before = e.narrow(1, 0, image_at)?;
        let after = e.narrow(1, image_at + 1, t - image_at - 1)?;
        Tensor::cat(&[&before, image_feats, &after], 1)
    }

    /// Runs the decoder over embeddings (B, T, hidden) at `positions` (B, T) with an additive
    /// mask; with a cache, keys and values are appended to it. Returns hidden states.
    pub fn decode(&self, x: &Tensor, positions: &Tensor, mask: Mask, mut cache: Option<&mut KvCache>) -> Result<Tensor> {
        let mut x = x.clone();
        let (cos, sin) = self.rotary.at(positions)?;
        for (i, layer) in self.layers.iter().enumerate() {
            let c = cache.as_mut().map(|c| &mut c.layers[i]);
            x = layer.forward(&x, (&cos, &sin), mask, c)?;
        }
        self.norm.forward(&x)
    }

    pub fn logits(&self, hidden: &Tensor) -> Result<Tensor> {
        self.lm_head.forward(hidden)
    }

    /// PRM step-score logits (B, T) of hidden states (B, T, hidden).
    pub fn scores(&self, hidden: &Tensor) -> Result<Tensor> {
        match &self.score_head {
            Some(head) => head.forward(hidden)?.squeeze(D::Minus1),
            None => candle_core::bail!("this model has no score head (architectures {:?})", self.cfg.architectures),
        }
    }

    /// The score head's weights (hidden) and bias as f32, for the CPU scoring path; None
    /// without a head.
    pub fn score_head_cpu(&self) -> Result<Option<(Vec<f32>, f32)>> {
        let Some(head) = &self.score_head else { return Ok(None) };
        let w = head.0.weight().flatten_all()?.to_dtype(DType::F32)?.to_vec1()?;
        let b = match head.0.bias() {
            Some(b) => b.flatten_all()?.to_dtype(DType::F32)?.to_vec1::<f32>()?[0],
            None => 0.0,
        };
        Ok(Some((w, b)))
    }

    /// Teacher-forced hidden states: `ids` (B, T) right-padded, one image token at
    /// `image_at`, `patches` (B, P, patch_dim). Returns (B, T − 1 + image_tokens, hidden).
    pub fn forward_hidden(&self, ids: &Tensor, image_at: usize, patches: &Tensor) -> Result<Tensor> {
        let feats = self.encode_images(patches)?;
        let x = self.embed(ids, image_at, &feats)?;
        let (b, t, _) = x.dims3()?;
        let positions = Tensor::arange(0u32, t as u32, &self.device)?.unsqueeze(0)?.broadcast_as((b, t))?.contiguous()?;
        self.decode(&x, &positions, Mask::Causal, None)
    }

    /// Teacher-forced logits for training: (B, T − 1 + image_tokens, vocab).
    pub fn forward(&self, ids: &Tensor, image_at: usize, patches: &Tensor) -> Result<Tensor> {
        self.logits(&self.forward_hidden(ids, image_at, patches)?)
    }
}

/// Patches (B, n·n, p·p·C), each flattened as (row, column, channel), → image (B, C, n·p, n·p).
pub fn patches_to_image(patches: &Tensor, n: usize, p: usize, c: usize) -> Result<Tensor> {
    let b = patches.dim(0)?;
    patches.reshape((b, n, n, p, p, c))?.permute((0, 5, 1, 3, 2, 4))?.contiguous()?.reshape((b, c, n * p, n * p))
}

/// The inverse of [`patches_to_image`] for any channel count.
pub fn image_to_patches(img: &Tensor, n: usize, p: usize) -> Result<Tensor> {
    let (b, c, _, _) = img.dims4()?;
    img.reshape((b, c, n, p, n, p))?.permute((0, 2, 4, 3, 5, 1))?.contiguous()?.reshape((b, n * n, p * p * c))
}

/// Concatenates the features of each `m`×`m` square of neighbouring patches (row-major
/// within the square; squares row-major): (B, n·n, C) → (B, (n/m)², m·m·C).
pub fn merge_patches(x: &Tensor, n: usize, m: usize) -> Result<Tensor> {
    if m == 1 {
        return Ok(x.clone());
    }
    let (b, _, c) = x.dims3()?;
    x.reshape((b, n / m, m, n / m, m, c))?.permute((0, 1, 3, 2, 4, 5))?.contiguous()?.reshape((b, (n / m) * (n / m), m * m * c))
}

/// The (g², P) matrix that averages the patches of each of `g`×`g` regions (a patch belongs
/// to the region its centre lies in; `VisionConfig::patch_regions`).
pub fn region_pool(v: &VisionConfig, g: usize, dev: &Device) -> Result<Tensor> {
    let regions = v.patch_regions(g);
    let p = regions.len();
    let mut m = vec![0f32; g * g * p];
    for (i, &r) in regions.iter().enumerate() {
        m[r * p + i] = 1.0;
    }
    let m = Tensor::from_vec(m, (g * g, p), dev)?;
    let counts = m.sum_keepdim(1)?;
    if counts.min_all()?.to_scalar::<f32>()? == 0.0 {
        candle_core::bail!("a {g}×{g} grid has regions with no patch centre ({} patches per side)", v.grid());
    }
    m.broadcast_div(&counts)
}

/// Features (B, P, C) → region means (B, R, C) through a (R, P) pooling matrix.
pub fn pool_regions(pool: &Tensor, f: &Tensor) -> Result<Tensor> {
    let (b, p, _) = f.dims3()?;
    pool.unsqueeze(0)?.broadcast_as((b, pool.dim(0)?, p))?.contiguous()?.matmul(&f.contiguous()?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn patches_and_image_layouts_invert_each_other() {
        let v = crate::model::tiny_vlm::Config::preset("tiny", 384).unwrap().vision_config;
        let png = crate::data::synth::generate(0, "train", 2, false).image_png;
        let flat = crate::model::tiny_vlm::image_patches(&png, &v).unwrap();
        let (n, p) = (v.grid(), v.patch_size);
        let patches = Tensor::from_vec(flat.clone(), (1, n * n, p * p * 3), &Device::Cpu).unwrap();
        let img = patches_to_image(&patches, n, p, 3).unwrap();
        let rgb = image::load_from_memory(&png).unwrap().to_rgb8();
        let pixels: Vec<f32> = img.flatten_all().unwrap().to_vec1().unwrap();
        for (ch, y, x) in [(0usize, 0usize, 0usize), (1, 17, 40), (2, 55, 9), (0, 30, 31)] {
            let want = (rgb.get_pixel(x as u32, y as u32).0[ch] as f32 / 255.0 - 0.5) / 0.5;
            assert_eq!(pixels[(ch * 56 + y) * 56 + x], want, "channel {ch} at ({x}, {y})");
        }
        let back: Vec<f32> = image_to_patches(&img, n, p).unwrap().flatten_all().unwrap().to_vec1().unwrap();
        assert_eq!(back, flat);
    }

    #[test]
    fn merge_patches_concatenates_each_square_of_neighbours() {
        // 4×4 patches of 1 feature numbered row-major; m = 2 gives 4 tokens of 4 features
        let x = Tensor::arange(0f32, 16.0, &Device::Cpu).unwrap().reshape((1, 16, 1)).unwrap();
        let got: Vec<Vec<f32>> = merge_patches(&x, 4, 2).unwrap().squeeze(0).unwrap().to_vec2().unwrap();
        assert_eq!(got, vec![vec![0., 1., 4., 5.], vec![2., 3., 6., 7.], vec![8., 9., 12., 13.], vec![10., 11., 14., 15.]]);
    }
}
