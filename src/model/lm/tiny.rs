//! The tiny VLM behind [`VisionLm`]: prompts `[bos, image, question…]` with the first image's
//! patches; samples in fixed chunks padded to the call's longest prompt; step scores by its head.

use super::{LmError, Prompt, Repr, Result, Sample, Sampled, Tokens, VisionLm, Work};
use crate::model::generate::{generate, Request, SamplingParams};
use crate::model::policy::Policy;
use crate::model::tiny_vlm::image_patches;
use crate::train::{batch_tensors, Example};
use std::sync::Arc;

impl VisionLm for Policy {
    fn describe(&self) -> String {
        format!("the tiny VLM ({} parameters{})", self.num_params(), if self.cfg.is_prm() { ", a process reward model" } else { "" })
    }

    fn encode_prompt(&self, question: &str, images: &[Vec<u8>]) -> Result<Prompt> {
        let image = images.first().ok_or_else(|| LmError::Invalid("has no image".into()))?;
        let ids = Policy::encode_prompt(self, question)?;
        let patches = image_patches(image, &self.cfg.vision_config).map_err(LmError::Invalid)?;
        Ok(Prompt(Repr::Tokens(Tokens { ids, pixels: Arc::new(patches), grids: vec![] })))
    }

    fn continue_prompt(&self, prompt: &Prompt, text: &str) -> Result<Prompt> {
        prompt.with_more(self.tokenizer.encode(text).map_err(crate::model::policy::ModelError::from)?)
    }

    /// All (prompt, seed) pairs in order, in chunks of `batch_size`, every prompt padded to the
    /// longest of the call (one bucket: a row rounds the same in any chunk).
    fn sample(&self, work: &[Work<'_>], params: &SamplingParams, batch_size: usize, out: &mut dyn FnMut(Vec<Sampled>) -> bool) -> Result<()> {
        let mut pairs: Vec<(usize, usize)> = Vec::new();
        let mut bucket = 2;
        for (w, item) in work.iter().enumerate() {
            bucket = bucket.max(item.prompt.tokens()?.ids.len());
            pairs.extend((0..item.seeds.len()).map(|s| (w, s)));
        }
        for chunk in pairs.chunks(batch_size.max(1)) {
            let reqs = chunk
                .iter()
                .map(|&(w, s)| {
                    let t = work[w].prompt.tokens()?;
                    Ok(Request { prompt: t.ids.clone(), patches: t.pixels.as_ref().clone(), seed: work[w].seeds[s] })
                })
                .collect::<Result<Vec<_>>>()?;
            let gens = generate(self, &reqs, params, bucket)?;
            let mut batch = Vec::with_capacity(chunk.len());
            for (&(w, s), g) in chunk.iter().zip(gens) {
                let text = self.tokenizer.decode(&g.tokens).map_err(|e| LmError::Invalid(format!("prompt {}: {e}", work[w].id)))?;
                let sample = Sample { text, num_tokens: g.tokens.len(), logprob: g.logprob, finish_reason: g.finish_reason.to_string(), failure: None };
                batch.push(Sampled { work: w, seed: s, sample });
            }
            if !out(batch) {
                break;
            }
        }
        Ok(())
    }

    fn is_prm(&self) -> bool {
        self.cfg.is_prm()
    }

    /// Sigmoid of the score head's logit at each step's last token.
    fn score_steps(&self, items: &[(&Prompt, &[String])], batch_size: usize) -> Result<Vec<Vec<f64>>> {
        if !self.cfg.is_prm() {
            return Err(LmError::Invalid(format!("{} is not a process reward model", self.describe())));
        }
        let ni = self.cfg.vision_config.image_tokens();
        let mut laid = Vec::with_capacity(items.len());
        for (prompt, steps) in items {
            let t = prompt.tokens()?;
            let (tokens, ends) = self.encode_steps(steps)?;
            laid.push((Example { prompt: t.ids.clone(), response: tokens, patches: t.pixels.as_ref().clone().into(), features: None, labels: vec![] }, ends));
        }
        let mut scores = Vec::with_capacity(items.len());
        for chunk in laid.chunks(batch_size.max(1)) {
            let examples: Vec<&Example> = chunk.iter().map(|(e, _)| e).collect();
            let (ids, patches, _, _, _) = batch_tensors(self, &examples)?;
            let logits: Vec<Vec<f32>> = self.model.scores(&self.model.forward_hidden(&ids, 1, &patches)?)?.to_vec2()?;
            for ((e, ends), row) in chunk.iter().zip(logits) {
                scores.push(ends.iter().map(|&j| 1.0 / (1.0 + (-(row[e.prompt.len() + j - 1 + ni] as f64)).exp())).collect());
            }
        }
        Ok(scores)
    }
}
