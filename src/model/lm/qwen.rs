//! The Qwen-VL family (Qwen2.5-VL, Qwen3-VL, and LoRA adapters over them) behind [`VisionLm`]:
//! chat-template prompts; samples in groups of whole prompts, each prompt prefilled once.

use super::{LmError, Prompt, Repr, Result, Sample, Sampled, Tokens, VisionLm, Work};
use crate::model::generate::SamplingParams;
use crate::model::qwen2_5_vl::generate::{generate_many, Prompt as QwenPrompt};
use crate::model::qwen_vl::{Checkpoint, Trainable};
use crate::train::qwen::{append_steps, score_steps, QwenExample};
use std::path::Path;
use std::sync::Arc;

/// A Qwen-VL checkpoint loaded for inference, with the tokens that end a turn.
pub struct QwenLm {
    pub ck: Checkpoint,
    pub eos: Vec<u32>,
}

impl QwenLm {
    /// Loads a checkpoint folder (model or adapter) for inference on `dev` in `dtype`; an error
    /// when it names no end-of-turn token.
    pub fn open(dir: &Path, dtype: candle_core::DType, dev: &candle_core::Device) -> Result<Self> {
        let ck = Checkpoint::open(dir, Trainable::Nothing, dtype, dev).map_err(|e| LmError::Invalid(format!("model {}: {e}", dir.display())))?;
        if ck.eos_ids.is_empty() {
            return Err(LmError::Invalid(format!(
                "model {}: no eos_token_id in generation_config.json or config.json, nor eos_token in tokenizer_config.json",
                ck.dir.display()
            )));
        }
        let eos = ck.eos_ids.clone();
        Ok(Self { ck, eos })
    }

    fn generation_prompt(&self, p: &Prompt) -> Result<QwenPrompt> {
        let t = p.tokens()?;
        Ok(QwenPrompt { ids: t.ids.clone(), pixels: self.ck.pixel_tensor(&t.pixels, &t.grids)?, grids: t.grids.clone() })
    }
}

impl VisionLm for QwenLm {
    fn describe(&self) -> String {
        format!("the Qwen-VL checkpoint {}", self.ck.dir.display())
    }

    fn encode_prompt(&self, question: &str, images: &[Vec<u8>]) -> Result<Prompt> {
        let parts = self.ck.prompt_parts(question, images)?;
        Ok(Prompt(Repr::Tokens(Tokens { ids: parts.ids, pixels: Arc::new(parts.pixels), grids: parts.grids })))
    }

    fn continue_prompt(&self, prompt: &Prompt, text: &str) -> Result<Prompt> {
        prompt.with_more(self.ck.encode(text)?)
    }

    /// Groups of whole work items, at most `batch_size` samples a group (at least one item):
    /// each prompt is prefilled once and all samples of the group decode as one batch.
    fn sample(&self, work: &[Work<'_>], params: &SamplingParams, batch_size: usize, out: &mut dyn FnMut(Vec<Sampled>) -> bool) -> Result<()> {
        let mut groups: Vec<std::ops::Range<usize>> = Vec::new();
        let mut in_group = 0;
        for (w, item) in work.iter().enumerate() {
            match groups.last_mut() {
                Some(g) if in_group + item.seeds.len() <= batch_size => {
                    g.end = w + 1;
                    in_group += item.seeds.len();
                }
                _ => {
                    groups.push(w..w + 1);
                    in_group = item.seeds.len();
                }
            }
        }
        for g in groups {
            let prompts = work[g.clone()].iter().map(|w| self.generation_prompt(w.prompt)).collect::<Result<Vec<_>>>()?;
            let batch: Vec<(&QwenPrompt, &[u64])> = prompts.iter().zip(&work[g.clone()]).map(|(p, w)| (p, w.seeds)).collect();
            let gens = generate_many(&self.ck.model, &batch, params, &self.eos)
                .map_err(|e| LmError::Invalid(format!("prompts {} to {}: {e}", work[g.start].id, work[g.end - 1].id)))?;
            let mut samples = Vec::new();
            for (w, gs) in g.zip(gens) {
                for (s, gen) in gs.into_iter().enumerate() {
                    let text = self.ck.tokenizer.decode(&gen.tokens, true).unwrap_or_default();
                    let sample =
                        Sample { text, num_tokens: gen.tokens.len(), logprob: gen.logprob, finish_reason: gen.finish_reason.to_string(), failure: None };
                    samples.push(Sampled { work: w, seed: s, sample });
                }
            }
            if !out(samples) {
                break;
            }
        }
        Ok(())
    }

    fn is_prm(&self) -> bool {
        self.ck.is_prm()
    }

    /// Each response laid out step by step after its prompt, in right-padded batches; a step's
    /// score is read at its last token.
    fn score_steps(&self, items: &[(&Prompt, &[String])], batch_size: usize) -> Result<Vec<Vec<f64>>> {
        if !self.ck.is_prm() {
            return Err(LmError::Invalid(format!("{} is not a process reward model", self.describe())));
        }
        let mut laid = Vec::with_capacity(items.len());
        for (prompt, steps) in items {
            let t = prompt.tokens()?;
            let (ids, ends) = append_steps(&self.ck, t.ids.clone(), steps)?;
            laid.push((QwenExample { ids, prompt_len: t.ids.len(), pixels: t.pixels.as_ref().clone(), grids: t.grids.clone(), labels: vec![] }, ends));
        }
        let mut scores = Vec::with_capacity(items.len());
        for chunk in laid.chunks(batch_size.max(1)) {
            let ex: Vec<&QwenExample> = chunk.iter().map(|x| &x.0).collect();
            let ends: Vec<&[usize]> = chunk.iter().map(|x| x.1.as_slice()).collect();
            scores.extend(score_steps(&self.ck, &ex, &ends, self.eos[0])?);
        }
        Ok(scores)
    }
}
