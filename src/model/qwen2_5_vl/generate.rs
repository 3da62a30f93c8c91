//! Sampling from Qwen2.5-VL with a KV cache: the prompt (text and images) is prefilled once,
//! then each sample decodes from a copy of that cache with its own seeded RNG.

use super::text::Cache;
use crate::model::qwen_vl::QwenVl;
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
fn last_logits(model: &QwenVl, hidden: &Tensor) -> Result<Vec<f32>> {
    let t = hidden.dim(1)?;
    model.text().logits(&hidden.narrow(1, t - 1, 1)?)?.flatten_all()?.to_dtype(candle_core::DType::F32)?.to_vec1()
}

/// One generation per seed from `prompt`: stops at any of `eos` or after `max_new_tokens`.
/// The prompt is prefilled once; the samples then decode together as one batch over copies of
/// its KV cache (finished rows leave the batch), each with its own RNG: a sample's tokens depend
/// only on its seed.
pub fn generate(model: &QwenVl, prompt: &Prompt, seeds: &[u64], params: &SamplingParams, eos: &[u32]) -> Result<Vec<Generation>> {
    let dev = model.text().embed.embeddings().device().clone();
    let mut prefix = Cache::default();
    let (hidden, next_pos) = model.prefill(&prompt.ids, prompt.pixels.as_ref(), &prompt.grids, Some(&mut prefix))?;
    let first = last_logits(model, &hidden)?;
    let n = seeds.len();
    let mut rngs: Vec<SplitMix> = seeds.iter().map(|&s| SplitMix(s)).collect();
    let mut out: Vec<Generation> = (0..n).map(|_| Generation { tokens: Vec::new(), logprob: 0.0, finish_reason: "length" }).collect();
    // the rows still decoding (indices into `seeds`), their logits, and their cache
    let mut active: Vec<usize> = (0..n).collect();
    let mut logits: Vec<Vec<f32>> = vec![first; n];
    let mut cache = if n > 1 { prefix.repeat(n)? } else { prefix };
    for step in 0..params.max_new_tokens {
        let (mut keep, mut next) = (Vec::new(), Vec::new());
        for (r, &i) in active.iter().enumerate() {
            let (tok, lp) = sample(&logits[r], params, &mut rngs[i]);
            let g = &mut out[i];
            g.logprob += lp;
            if eos.contains(&tok) {
                g.finish_reason = "stop";
                continue;
            }
            g.tokens.push(tok);
            if step + 1 < params.max_new_tokens {
                keep.push(r as u32);
                next.push(tok);
            }
        }
        if keep.is_empty() {
            break;
        }
        if keep.len() < active.len() {
            cache = cache.select(&keep)?;
            active = keep.iter().map(|&r| active[r as usize]).collect();
        }
        let b = active.len();
        let x = candle_core::Module::forward(&model.text().embed, &Tensor::from_vec(next, (b, 1), &dev)?)?;
        let p = next_pos + step as i64;
        let (cos, sin) = model.text().rope_tables(&vec![vec![[p; 3]]; b], &dev)?;
        let h = model.text().forward(&x, &cos, &sin, Mask::None, Some(&mut cache))?;
        logits = model.text().logits(&h)?.squeeze(1)?.to_dtype(candle_core::DType::F32)?.to_vec2()?;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::hf::chat::user_turn;
    use crate::model::qwen_vl::Checkpoint;
    use candle_core::{DType, Device, D};

    fn log_softmax_at(logits: &Tensor, pos: usize, tok: u32) -> f64 {
        let row = logits.get(pos).unwrap();
        let lsm = candle_nn::ops::log_softmax(&row, D::Minus1).unwrap();
        lsm.get(tok as usize).unwrap().to_scalar::<f32>().unwrap() as f64
    }

    /// Decoding with the cache gives what full forward passes give: greedy tokens are the
    /// argmax of the full pass at every step, log-probs agree; sampling depends only on the seed.
    #[test]
    fn cached_decoding_equals_full_forward() {
        let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/model/qwen2_5_vl"));
        let ck = Checkpoint::load(&dir, DType::F32, &Device::Cpu).unwrap();
        let img = ck.processor.preprocess_bytes(&std::fs::read(dir.join("b.png")).unwrap()).unwrap();
        let text = ck.chat.render(&user_turn(1, "How many shapes are in the picture?"), true).unwrap();
        let ids = ck.encode(&ck.expand_image_pads(&text, &[img.grid]).unwrap()).unwrap();
        let cols = img.values.len() / img.num_patches();
        let pixels = Tensor::from_vec(img.values.clone(), (img.num_patches(), cols), &Device::Cpu).unwrap();
        let prompt = Prompt { ids: ids.clone(), pixels: Some(pixels.clone()), grids: vec![img.grid] };
        let greedy = SamplingParams { temperature: 0.0, max_new_tokens: 6, ..Default::default() };
        let g = generate(&ck.model, &prompt, &[1], &greedy, &[]).unwrap().remove(0);
        assert_eq!((g.tokens.len(), g.finish_reason), (6, "length"));
        let mut seq = ids.clone();
        seq.extend(&g.tokens);
        let logits = ck.model.forward(&seq, Some(&pixels), &[img.grid]).unwrap().squeeze(0).unwrap();
        let mut lp = 0.0;
        for (i, &tok) in g.tokens.iter().enumerate() {
            let pos = ids.len() - 1 + i;
            let argmax: u32 = logits.get(pos).unwrap().argmax(0).unwrap().to_scalar().unwrap();
            assert_eq!(argmax, tok, "step {i}");
            lp += log_softmax_at(&logits, pos, tok);
        }
        assert!((lp - g.logprob).abs() < 1e-3, "logprob {} vs full forward {lp}", g.logprob);
        // sampling: a row depends on its seed only, not on the batch it decodes in (the
        // log-prob sums agree to float rounding of batched products)
        let p = SamplingParams { temperature: 1.0, top_p: 0.9, max_new_tokens: 5, ..Default::default() };
        let a = generate(&ck.model, &prompt, &[7, 8, 7], &p, &[]).unwrap();
        let b = generate(&ck.model, &prompt, &[8], &p, &[]).unwrap();
        assert_eq!(a[0], a[2]);
        assert_eq!((&a[1].tokens, a[1].finish_reason), (&b[0].tokens, b[0].finish_reason));
        assert!((a[1].logprob - b[0].logprob).abs() < 1e-4, "{} vs {}", a[1].logprob, b[0].logprob);
        // rows leave the batch at EOS: with the first sampled token as EOS, every row that
        // drew it stops there and the others go on as alone
        let eos = [a[0].tokens[0]];
        let c = generate(&ck.model, &prompt, &[7, 8, 9, 10], &p, &eos).unwrap();
        for (k, seed) in [7u64, 8, 9, 10].into_iter().enumerate() {
            let alone = generate(&ck.model, &prompt, &[seed], &p, &eos).unwrap().remove(0);
            assert_eq!((&c[k].tokens, c[k].finish_reason), (&alone.tokens, alone.finish_reason), "seed {seed}");
            assert!((c[k].logprob - alone.logprob).abs() < 1e-4);
        }
        assert_eq!(c[0].finish_reason, "stop");
    }
}
