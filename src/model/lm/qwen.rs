//! The Qwen-VL family (Qwen2.5-VL, Qwen3-VL, and LoRA adapters over them) behind [`VisionLm`]:
//! chat-template prompts; samples in groups of whole prompts, each prompt prefilled once.

use super::{row_error, ExampleRepr, LmError, Prompt, Repr, Result, Sample, Sampled, Tokens, TrainExample, TrainRow, TrainableLm, VisionLm, Work};
use crate::model::generate::SamplingParams;
use crate::model::qwen2_5_vl::generate::{generate_many, Prompt as QwenPrompt};
use crate::model::qwen2_5_vl::lora::LoraConfig;
use crate::model::qwen_vl::{Checkpoint, Trainable};
use crate::train::qwen::{accumulate, append_steps, encode, encode_steps, score_steps, QwenExample};
use crate::train::{optimizer_step, AdamW, TrainerState};
use std::path::Path;
use std::sync::Arc;

/// A Qwen-VL checkpoint loaded for inference or training, with the tokens that end a turn.
pub struct QwenLm {
    pub ck: Checkpoint,
    pub eos: Vec<u32>,
    /// Training: recompute each decoder layer's activations in the backward pass.
    pub recompute: bool,
}

/// Where a Qwen-VL training run starts and what it trains.
pub struct QwenTraining<'a> {
    /// The model folder named by the stage.
    pub base: &'a Path,
    /// This stage's previous checkpoint to go on from (its weights, adapters and head as saved).
    pub previous: Option<&'a Path>,
    /// Train LoRA adapters (new ones over `base`) instead of every weight.
    pub lora: Option<LoraConfig>,
    /// A process reward model: starting from `base`, a fresh score head is added.
    pub prm: bool,
    pub seed: u64,
    pub gradient_checkpointing: bool,
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
        Ok(Self { ck, eos, recompute: false })
    }

    /// Loads a checkpoint to train: `previous` as saved, else `base` with new adapters (or every
    /// weight trainable) and, for a process reward model, a fresh score head.
    pub fn open_for_training(how: &QwenTraining<'_>, dtype: candle_core::DType, dev: &candle_core::Device) -> Result<Self> {
        let trainable = if how.lora.is_some() { Trainable::Adapters } else { Trainable::All };
        let from = how.previous.unwrap_or(how.base);
        let fail = |e: &dyn std::fmt::Display| LmError::Invalid(format!("model {}: {e}", from.display()));
        let mut ck = match (how.previous, &how.lora) {
            (Some(d), _) => Checkpoint::open(d, trainable, dtype, dev).map_err(|e| fail(&e))?,
            (None, Some(l)) => Checkpoint::load_with_new_adapter(how.base, l.clone(), how.seed, dtype, dev).map_err(|e| fail(&e))?,
            (None, None) => Checkpoint::load_parts(how.base, None, Trainable::All, dtype, dev).map_err(|e| fail(&e))?,
        };
        if how.previous.is_none() && how.prm && !ck.is_prm() {
            // a process reward model: the folder's network with a fresh score head
            ck.add_score_head(how.seed, true).map_err(|e| fail(&e))?;
        }
        if ck.eos_ids.is_empty() {
            return Err(fail(&"the checkpoint names no end-of-turn token to pad with"));
        }
        let eos = ck.eos_ids.clone();
        Ok(Self { ck, eos, recompute: how.gradient_checkpointing })
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

/// Trains every weight or the LoRA adapters (and a reward head) on chat-template rows, loss on
/// the assistant turn (or the step labels), right-padded micro-batches.
impl TrainableLm for QwenLm {
    fn encode_examples(&self, rows: &[TrainRow<'_>]) -> Result<Vec<TrainExample>> {
        let mut examples = Vec::with_capacity(rows.len());
        for (k, row) in rows.iter().enumerate() {
            let e = match &row.steps {
                None => encode(&self.ck, row.question, &row.images, row.response),
                Some((steps, labels)) => encode_steps(&self.ck, row.question, &row.images, steps, Some(labels)).map(|(e, _)| e),
            };
            examples.push(TrainExample(ExampleRepr::Qwen(e.map_err(|e| row_error(k, row, e))?)));
        }
        Ok(examples)
    }

    fn train_step(&self, opt: &mut AdamW, state: &mut TrainerState, micro: &[Vec<&TrainExample>], clip: Option<f64>) -> Result<f64> {
        let micro: Vec<Vec<&QwenExample>> = micro.iter().map(|m| m.iter().map(|e| e.qwen()).collect()).collect::<Result<_>>()?;
        let vars = self.ck.trainable();
        Ok(optimizer_step(&vars, opt, state, &micro, clip, QwenExample::targets, |mb, share, grads| {
            accumulate(&self.ck, mb, self.eos[0], self.recompute, share, grads)
        })?)
    }

    fn device(&self) -> candle_core::Device {
        self.ck.model.text().embed.embeddings().device().clone()
    }

    fn to_files(&self) -> Result<Vec<(String, Vec<u8>)>> {
        Ok(self.ck.to_files()?)
    }
}
