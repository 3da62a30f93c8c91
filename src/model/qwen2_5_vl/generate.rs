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
/// Rows are independent: a sample's tokens depend only on its seed.
pub fn generate(model: &QwenVl, prompt: &Prompt, seeds: &[u64], params: &SamplingParams, eos: &[u32]) -> Result<Vec<Generation>> {
    let dev = model.text().embed.embeddings().device().clone();
    let mut prefix = Cache::default();
    let (hidden, next_pos) = model.prefill(&prompt.ids, prompt.pixels.as_ref(), &prompt.grids, Some(&mut prefix))?;
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
            let x = candle_core::Module::forward(&model.text().embed, &Tensor::from_vec(vec![tok], (1, 1), &dev)?)?;
            let p = next_pos + step as i64;
            let (cos, sin) = model.text().rope_tables(&[vec![[p; 3]]], &dev)?;
            let h = model.text().forward(&x, &cos, &sin, Mask::None, Some(&mut cache))?;
            logits = last_logits(model, &h)?;
        }
        out.push(Generation { tokens, logprob, finish_reason: finish });
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
        // sampling: a row depends on its seed only
        let p = SamplingParams { temperature: 1.0, top_p: 0.9, max_new_tokens: 5, ..Default::default() };
        let a = generate(&ck.model, &prompt, &[7, 8, 7], &p, &[]).unwrap();
        let b = generate(&ck.model, &prompt, &[8], &p, &[]).unwrap();
        assert_eq!(a[0], a[2]);
        assert_eq!(a[1], b[0]);
    }
}
