//! Sampling from Qwen2.5-VL with a KV cache: the prompt (text and images) is prefilled once,
//! then each sample decodes from a copy of that cache with its own seeded RNG.

use super::text::Cache;
use crate::model::generate::{sample, Generation, SamplingParams};
use crate::model::layers::Mask;
use crate::model::qwen_vl::QwenVl;
use crate::rng::SplitMix64;
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
/// A sample's tokens depend only on its seed (see [`generate_many`]).
pub fn generate(model: &QwenVl, prompt: &Prompt, seeds: &[u64], params: &SamplingParams, eos: &[u32]) -> Result<Vec<Generation>> {
    Ok(generate_many(model, &[(prompt, seeds)], params, eos)?.remove(0))
}

/// Generations for several prompts at once, one per seed of each. Every prompt is prefilled
/// once; then all samples of all prompts decode together as one batch over copies of their
/// prompts' KV caches, left-padded to the longest with the pads masked out, each row at its own
/// M-RoPE position and with its own seeded RNG; rows that finish leave the batch. A sample's
/// tokens depend only on its prompt and seed, not on the batch (log-prob sums agree to the
/// rounding of batched products).
pub fn generate_many(model: &QwenVl, prompts: &[(&Prompt, &[u64])], params: &SamplingParams, eos: &[u32]) -> Result<Vec<Vec<Generation>>> {
    let text = model.text();
    let dev = text.embed.embeddings().device().clone();
    let dtype = text.embed.embeddings().dtype();
    let (mut caches, mut firsts, mut starts) = (Vec::new(), Vec::new(), Vec::new());
    for (p, _) in prompts {
        let mut c = Cache::default();
        let (hidden, next_pos) = model.prefill(&p.ids, p.pixels.as_ref(), &p.grids, Some(&mut c))?;
        firsts.push(last_logits(model, &hidden)?);
        starts.push(next_pos);
        caches.push(c);
    }
    let t_max = caches.iter().map(|c| c.len()).max().unwrap_or(0);
    // one row per (prompt, sample): its output slot, RNG, left pad and next position
    let mut slots = Vec::new();
    let (mut rngs, mut pads, mut pos, mut logits): (Vec<SplitMix64>, Vec<usize>, Vec<i64>, Vec<Vec<f32>>) = (Vec::new(), Vec::new(), Vec::new(), Vec::new());
    for (i, (_, seeds)) in prompts.iter().enumerate() {
        for (k, &seed) in seeds.iter().enumerate() {
            slots.push((i, k));
            rngs.push(SplitMix64::new(seed));
            pads.push(t_max - caches[i].len());
            pos.push(starts[i]);
            logits.push(firsts[i].clone());
        }
    }
    let mut out: Vec<Vec<Generation>> =
        prompts.iter().map(|(_, s)| s.iter().map(|_| Generation { tokens: Vec::new(), logprob: 0.0, finish_reason: "length" }).collect()).collect();
    let reps: Vec<usize> = prompts.iter().map(|(_, s)| s.len()).collect();
    let mut cache = if reps.iter().sum::<usize>() == 1 { caches.swap_remove(0) } else { Cache::stack(&caches.iter().collect::<Vec<_>>(), &reps)? };
    drop(caches);
    let mut active: Vec<usize> = (0..slots.len()).collect();
    for step in 0..params.max_new_tokens {
        let (mut keep, mut next) = (Vec::new(), Vec::new());
        for (r, &row) in active.iter().enumerate() {
            let (tok, lp) = sample(&logits[r], params, &mut rngs[row]);
            let (i, k) = slots[row];
            let g = &mut out[i][k];
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
        let x = candle_core::Module::forward(&text.embed, &Tensor::from_vec(next, (b, 1), &dev)?)?;
        let positions: Vec<Vec<[i64; 3]>> = active.iter().map(|&row| vec![[pos[row] + step as i64; 3]]).collect();
        let (cos, sin) = text.rope_tables(&positions, &dev)?;
        // keys: the padded prompt cache, the tokens decoded so far, and this one
        let tk = t_max + step + 1;
        let mask = if active.iter().all(|&row| pads[row] == 0) {
            None
        } else {
            let m: Vec<f32> = active
                .iter()
                .flat_map(|&row| {
                    let pad = pads[row];
                    (0..tk).map(move |j| if j < pad { f32::NEG_INFINITY } else { 0.0 })
                })
                .collect();
            Some(Tensor::from_vec(m, (b, 1, 1, tk), &dev)?.to_dtype(dtype)?)
        };
        let h = text.forward(&x, &cos, &sin, mask.as_ref().map_or(Mask::None, Mask::Additive), Some(&mut cache))?;
        logits = text.logits(&h)?.squeeze(1)?.to_dtype(candle_core::DType::F32)?.to_vec2()?;
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

    /// Prompts of different lengths (text only, one image, two images) decode as one batch, the
    /// shorter caches left-padded and masked: every sample equals its prompt decoded alone.
    #[test]
    fn prompts_of_different_lengths_batch_together() {
        for name in ["qwen2_5_vl", "qwen3_vl"] {
            let dir = std::path::PathBuf::from(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/model")).join(name);
            let ck = Checkpoint::load(&dir, DType::F32, &Device::Cpu).unwrap();
            let img = |f: &str| std::fs::read(dir.join(f)).unwrap();
            let prompts: Vec<Prompt> = [
                (vec![], "Say something about the weather today, please."),
                (vec![img("b.png")], "How many?"),
                (vec![img("a.png"), img("c.png")], "Compare the two pictures."),
            ]
            .iter()
            .map(|(images, q)| ck.generation_prompt(q, images).unwrap())
            .collect();
            let lens: std::collections::BTreeSet<usize> = prompts.iter().map(|p| p.ids.len()).collect();
            assert_eq!(lens.len(), 3, "{name}: prompt lengths {lens:?}");
            let seeds: [&[u64]; 3] = [&[1, 2], &[3], &[4, 5, 6]];
            let p = SamplingParams { temperature: 1.0, top_p: 0.95, max_new_tokens: 6, ..Default::default() };
            let eos = ck.eos_ids.clone();
            let together = generate_many(&ck.model, &prompts.iter().zip(seeds).collect::<Vec<_>>(), &p, &eos).unwrap();
            for (i, (prompt, s)) in prompts.iter().zip(seeds).enumerate() {
                let alone = generate(&ck.model, prompt, s, &p, &eos).unwrap();
                for (a, b) in together[i].iter().zip(&alone) {
                    assert_eq!((&a.tokens, a.finish_reason), (&b.tokens, b.finish_reason), "{name} prompt {i}");
                    assert!((a.logprob - b.logprob).abs() < 1e-4, "{name} prompt {i}: {} vs {}", a.logprob, b.logprob);
                }
            }
        }
    }
}
