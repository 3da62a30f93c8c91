//! The tiny VLM behind [`VisionLm`]: prompts `[bos, image, question…]` with the first image's
//! patches; samples in fixed chunks padded to the call's longest prompt; step scores by its head.

use super::{row_error, ExampleRepr, LmError, Prompt, Repr, Result, Sample, Sampled, Tokens, TrainExample, TrainRow, TrainableLm, VisionLm, Work};
use crate::model::generate::{generate, Request, SamplingParams};
use crate::model::policy::Policy;
use crate::model::tiny_vlm::image_patches;
use crate::train::{batch_tensors, AdamW, Example, TrainerState};
use std::collections::HashMap;
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

/// Trains on the first image of a row; each distinct image is decoded once and its patches
/// shared by its examples (and, with the encoder frozen on the CPU, its features computed once).
impl TrainableLm for Policy {
    fn encode_examples(&self, rows: &[TrainRow<'_>]) -> Result<Vec<TrainExample>> {
        let mut by_image: HashMap<&[u8], Arc<[f32]>> = HashMap::new();
        let mut examples = Vec::with_capacity(rows.len());
        for (k, row) in rows.iter().enumerate() {
            let at = |e: &dyn std::fmt::Display| row_error(k, row, e);
            let image = row.images.first().ok_or_else(|| at(&"has no image"))?;
            let prompt = Policy::encode_prompt(self, row.question).map_err(|e| at(&e))?;
            let patches = match by_image.get(image.as_slice()) {
                Some(p) => p.clone(),
                None => {
                    let p: Arc<[f32]> = image_patches(image, &self.cfg.vision_config).map_err(|e| at(&e))?.into();
                    by_image.insert(image, p.clone());
                    p
                }
            };
            let (response, labels) = match &row.steps {
                None => (self.encode_response(row.response).map_err(|e| at(&e))?, vec![]),
                Some((steps, labels)) => {
                    let (response, ends) = self.encode_steps(steps).map_err(|e| at(&e))?;
                    (response, ends.into_iter().zip(labels.iter().copied()).collect())
                }
            };
            examples.push(Example { prompt, response, patches, features: None, labels });
        }
        crate::train::frozen_features(self, &mut examples)?;
        Ok(examples.into_iter().map(|e| TrainExample(ExampleRepr::Tiny(e))).collect())
    }

    /// A vision encoder whose every weight the optimizer freezes gets no backward pass.
    fn freeze(&mut self, opt: &AdamW) {
        let vision: Vec<String> = self.named_vars().into_iter().map(|(n, _)| n).filter(|n| n.starts_with("vision.")).collect();
        self.model.set_vision_frozen(!vision.is_empty() && vision.iter().all(|n| opt.frozen(n)));
    }

    fn train_step(&self, opt: &mut AdamW, state: &mut TrainerState, micro: &[Vec<&TrainExample>], clip: Option<f64>) -> Result<f64> {
        let micro: Vec<Vec<&Example>> = micro.iter().map(|m| m.iter().map(|e| e.tiny()).collect()).collect::<Result<_>>()?;
        Ok(crate::train::train_step(self, opt, state, &micro, clip)?)
    }

    fn device(&self) -> candle_core::Device {
        self.device.clone()
    }

    fn to_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(Policy::to_files(self)?.into_iter().map(|(n, b)| (n.to_string(), b)).collect())
    }

    fn end_training(&self) {
        crate::model::tiny_vlm::train_cpu::release_workspaces();
    }
}
