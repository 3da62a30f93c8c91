//! One interface to every model mstar samples from or scores with — the tiny VLM, the Qwen-VL
//! family, an OpenAI-compatible endpoint — so each operator is written once, against [`VisionLm`].

mod openai;
mod qwen;
pub(crate) mod tiny;

pub use openai::{OpenAiBackend, OpenAiLm};
pub use qwen::QwenLm;
pub use qwen::QwenTraining;

use super::generate::SamplingParams;
use std::sync::Arc;

#[derive(Debug, thiserror::Error)]
pub enum LmError {
    #[error(transparent)]
    Tiny(#[from] super::policy::ModelError),
    #[error(transparent)]
    Hf(#[from] super::hf::HfError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = LmError> = std::result::Result<T, E>;

/// A question and its images as one model reads them (opaque to operators: a prompt goes back
/// to the model that encoded it).
#[derive(Debug, Clone)]
pub struct Prompt(Repr);

#[derive(Debug, Clone)]
enum Repr {
    /// Token ids and the images' pixels as the vision tower reads them (the tiny VLM: one
    /// image's patches, no grids; Qwen-VL: every image's patches and their grids).
    Tokens(Tokens),
    /// A chat message for an endpoint (images as data URLs).
    Chat(Arc<serde_json::Value>),
}

/// A prompt as token ids and the images' pixels.
#[derive(Debug, Clone)]
struct Tokens {
    ids: Vec<u32>,
    pixels: Arc<Vec<f32>>,
    grids: Vec<[usize; 3]>,
}

/// Samples wanted from one prompt: one per seed, in order. `id` names the prompt in errors.
pub struct Work<'a> {
    pub id: &'a str,
    pub prompt: &'a Prompt,
    pub seeds: &'a [u64],
}

/// One sample, decoded.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    pub text: String,
    pub num_tokens: usize,
    /// Sum of the sampled tokens' log-probabilities (NaN when the backend does not say).
    pub logprob: f64,
    /// `stop`, `length`, or what an endpoint said; `error` for a request that failed.
    pub finish_reason: String,
    /// A request that failed after its retries (endpoints only): its attempts and error.
    pub failure: Option<(u32, String)>,
}

/// A sample and where it belongs: the index of its [`Work`] and of its seed there.
#[derive(Debug, Clone)]
pub struct Sampled {
    pub work: usize,
    pub seed: usize,
    pub sample: Sample,
}

/// A vision-language model as the operators use it. The model owns batching: `sample` takes a
/// whole stage's work and hands results back batch by batch, in work order, batched so that a
/// sample depends only on its prompt and seed (the tiny VLM pads every prompt of the call to
/// one length; Qwen-VL prefills each prompt once and decodes its samples together).
pub trait VisionLm: Send + Sync {
    /// What the model is, for messages.
    fn describe(&self) -> String;

    /// A question and its images as this model's prompt.
    fn encode_prompt(&self, question: &str, images: &[Vec<u8>]) -> Result<Prompt>;

    /// `prompt` followed by `text` (a response prefix to continue).
    fn continue_prompt(&self, prompt: &Prompt, text: &str) -> Result<Prompt>;

    /// Samples every seed of every work item, at most `batch_size` samples at a time; `out`
    /// receives each batch's samples in work order and returns false to stop early.
    fn sample(&self, work: &[Work<'_>], params: &SamplingParams, batch_size: usize, out: &mut dyn FnMut(Vec<Sampled>) -> bool) -> Result<()>;

    /// Whether the model has a reward head (a process reward model).
    fn is_prm(&self) -> bool {
        false
    }

    /// A process reward model's score in (0, 1) of each step of each response (steps joined by
    /// newlines after the prompt, each read at its last token), `batch_size` responses at a time.
    fn score_steps(&self, items: &[(&Prompt, &[String])], batch_size: usize) -> Result<Vec<Vec<f64>>> {
        let _ = (items, batch_size);
        Err(LmError::Invalid(format!("{} is not a process reward model", self.describe())))
    }
}

impl Prompt {
    fn tokens(&self) -> Result<&Tokens> {
        match &self.0 {
            Repr::Tokens(t) => Ok(t),
            Repr::Chat(_) => Err(LmError::Invalid("a chat prompt given to a local model".into())),
        }
    }

    fn with_more(&self, more: Vec<u32>) -> Result<Prompt> {
        let t = self.tokens()?;
        Ok(Prompt(Repr::Tokens(Tokens { ids: t.ids.iter().copied().chain(more).collect(), pixels: t.pixels.clone(), grids: t.grids.clone() })))
    }
}

/// Each work item's samples in order: [work][seed].
pub fn sample_all(
    lm: &dyn VisionLm,
    work: &[Work<'_>],
    params: &SamplingParams,
    batch_size: usize,
    progress: &mut dyn FnMut(usize),
) -> Result<Vec<Vec<Sample>>> {
    let mut out: Vec<Vec<Option<Sample>>> = work.iter().map(|w| vec![None; w.seeds.len()]).collect();
    lm.sample(work, params, batch_size, &mut |batch| {
        progress(batch.len());
        for s in batch {
            out[s.work][s.seed] = Some(s.sample);
        }
        true
    })?;
    out.into_iter()
        .zip(work)
        .map(|(v, w)| v.into_iter().collect::<Option<Vec<_>>>().ok_or_else(|| LmError::Invalid(format!("prompt {}: a sample is missing", w.id))))
        .collect()
}

/// One training row as the `train` operator reads it: a question, its images and a response;
/// for a process reward model also the response's steps and a label in [0, 1] for each.
pub struct TrainRow<'a> {
    pub question: &'a str,
    pub images: Vec<Vec<u8>>,
    pub response: &'a str,
    pub steps: Option<(Vec<String>, Vec<f32>)>,
}

/// A training row encoded by the model that trains on it (opaque to operators).
#[derive(Debug, Clone)]
pub struct TrainExample(ExampleRepr);

#[derive(Debug, Clone)]
enum ExampleRepr {
    Tiny(crate::train::Example),
    Qwen(crate::train::qwen::QwenExample),
}

/// A model the `train` operator fine-tunes, written once against this: rows become examples,
/// one optimizer step at a time (the epochs, order and schedule are the operator's), and the
/// weights are saved as checkpoint files.
pub trait TrainableLm: VisionLm {
    /// Rows as examples, in order; an error names the row (its index and question).
    fn encode_examples(&self, rows: &[TrainRow<'_>]) -> Result<Vec<TrainExample>>;

    /// Called once with the optimizer before the examples are encoded, so a model can skip the
    /// backward pass of what the optimizer leaves frozen.
    fn freeze(&mut self, opt: &crate::train::AdamW) {
        let _ = opt;
    }

    /// One optimizer step over micro-batches (gradient accumulation, clipping, the schedule's
    /// learning rate); returns the step's mean loss.
    fn train_step(&self, opt: &mut crate::train::AdamW, state: &mut crate::train::TrainerState, micro: &[Vec<&TrainExample>], clip: Option<f64>)
        -> Result<f64>;

    /// Where the weights live (the optimizer's moments are loaded there).
    fn device(&self) -> candle_core::Device;

    /// The weights as checkpoint files: (name, bytes).
    fn to_files(&self) -> Result<Vec<(String, Vec<u8>)>>;

    /// Frees what training held between steps (buffers, caches).
    fn end_training(&self) {}
}

impl TrainExample {
    fn tiny(&self) -> Result<&crate::train::Example> {
        match &self.0 {
            ExampleRepr::Tiny(e) => Ok(e),
            ExampleRepr::Qwen(_) => Err(LmError::Invalid("a Qwen-VL training example given to the tiny VLM".into())),
        }
    }

    fn qwen(&self) -> Result<&crate::train::qwen::QwenExample> {
        match &self.0 {
            ExampleRepr::Qwen(e) => Ok(e),
            ExampleRepr::Tiny(_) => Err(LmError::Invalid("a tiny VLM training example given to a Qwen-VL checkpoint".into())),
        }
    }
}

/// `e` as an error of training row `index`.
fn row_error(index: usize, row: &TrainRow<'_>, e: impl std::fmt::Display) -> LmError {
    LmError::Invalid(format!("row {index} (question {:?}): {e}", row.question))
}
