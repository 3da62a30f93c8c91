//! Sampling from Qwen2.5-VL with a KV cache: the prompt (text and images) is prefilled once,
//! then each sample decodes from a copy of that cache with its own seeded RNG.

use super::text::Cache;
use super::Qwen25Vl;
use crate::model::generate::{sample, Generation, SamplingParams, SplitMix};
use crate::model::tiny_vlm::Mask;
use candle_core::{Result, Tensor};

/// A rendered, tokenized prompt and its images' patches.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub ids: Vec<u32>,
    /// All images' patches, concatenated (rows × 3·temporal·patch²), or `None` for text only.
    pub pixels: Option<Tensor>,
    pub grids: Vec<[usize; 3]>,
}

/// Last-position logits as f32 values.
fn last_logits(model: &Qwen25Vl, hidden: &Tensor) -> Result<Vec<f32>> {
    let t = hidden.dim(1)?;
    model.text.logits(&hidden.narrow(1, t - 1, 1)?)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()
}

/// One generation per seed from `prompt`: stops at any of `eos` or after `max_new_tokens`.
/// Rows are independent: a sample's tokens depend only on its seed.
pub fn generate(model: &Qwen25Vl, prompt: &Prompt, seeds: &[u64], params: &SamplingParams, eos: &[u32]) -> Result<Vec<Generation>> {
    let dev = model.text.embed.embeddings().device().clone();
    let feats = match &prompt.pixels {
        Some(p) => Some(model.vision.forward(p, &prompt.grids)?),
        None => None,
    };
    let ids = Tensor::from_vec(prompt.ids.clone(), (1, prompt.ids.len()), &dev)?;
    let x = model.embed(&ids, feats.as_ref())?;
    let pos = model.rope_index(&prompt.ids, &prompt.grids)?;
    let next_pos = pos.iter().map(|p| p.iter().copied().max().unwrap_or(0)).max().map_or(0, |m| m + 1);
    let (cos, sin) = model.text.rope_tables(&[pos], &dev)?;
    let mut prefix = Cache::default();
    let hidden = model.text.forward(&x, &cos, &sin, Mask::Causal, Some(&mut prefix))?;
    let first = last_logits(model, &hidden)?;
    let mut out = Vec::with_capacity(seeds.len());
    for &seed in seeds {
        let mut rng = SplitMix(seed);
        let mut cache = prefix.clone();
        let mut logits = first.clone();
        let (mut tokens, mut logprob, mut finish) = (Vec::new(), 0.0, "length");
        for step in 0..params.max_new_tokens {
            let (tok, lp) = sample(&logits, params, &mut rng);
            logprob += lp;
            if eos.contains(&tok) {
                finish = "stop";
                break;
            }
            tokens.push(tok);
            if step + 1 == params.max_new_tokens {
                break;
            }
            let x = model.embed(&Tensor::from_vec(vec![tok], (1, 1), &dev)?, None)?;
            let p = next_pos + step as i64;
            let (cos, sin) = model.text.rope_tables(&[vec![[p; 3]]], &dev)?;
            let h = model.text.forward(&x, &cos, &sin, Mask::None, Some(&mut cache))?;
            logits = last_logits(model, &h)?;
        }
        out.push(Generation { tokens, logprob, finish_reason: finish });
    }
    Ok(out)
}
