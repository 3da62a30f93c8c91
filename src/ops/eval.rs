//! The `eval` operator: decodes a policy on a prompts stage (greedily, and K samples at each
//! temperature), judges every decode and, given a PRM, scores it → `eval_samples`; SQL turns
//! those rows into metrics (`sql/eval_metrics.sql`) or a temperature choice (`pick_temperature`).

use super::models::all_images;
use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::data::answer::{extract_answer, AnswerType};
use crate::data::synth::{QuestionMeta, Scene};
use crate::model::generate::{rollout_seed, SamplingParams};
use crate::model::lm::{sample_all, LmError, Prompt, Work};
use crate::prm::Gold;
use crate::spec::{Pipeline, StageCheck, StageSpec};
use arrow::array::{Array, AsArray, BooleanArray, Float64Array, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, SchemaRef};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};
use std::sync::Arc;

/// eval: greedy accuracy and Pass@K of a policy on a prompts stage → metrics rows.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    pub prompts: String,
    /// Checkpoint stages, most preferred first (as for generate).
    #[serde(default)]
    pub policy: Vec<String>,
    /// A Hugging Face checkpoint folder: alone, or with `policy` the one evaluated while none of
    /// those stages has a checkpoint (the base model before the first SFT).
    #[serde(default)]
    pub model: Option<crate::spec::ModelPath>,
    /// Instead of `policy`: an OpenAI-compatible chat-completions endpoint (vLLM, SGLang,
    /// `mstar serve`, …), as for generate. A request that fails after its retries fails the stage.
    #[serde(default)]
    pub openai: Option<crate::model::lm::OpenAiBackend>,
    /// Value of the `split` column; absent: the prompts' own `split` column.
    #[serde(default)]
    pub split: Option<String>,
    /// Samples per prompt and temperature for Pass@K (0: greedy only).
    #[serde(default = "default_eval_k")]
    pub k: u32,
    /// Sampling of the K samples (the greedy pass uses temperature 0).
    #[serde(default)]
    pub sampling: crate::model::generate::SamplingParams,
    /// Sample at each of these temperatures (default: `sampling.temperature` only).
    #[serde(default)]
    pub temperatures: Vec<f64>,
    /// Also decode greedily once per prompt (greedy accuracy).
    #[serde(default = "default_true")]
    pub greedy: bool,
    /// Process reward model checkpoint stages, most preferred first: each sample gets its
    /// PRM score (min over steps), for Reward-Pass@2.
    #[serde(default)]
    pub prm: Vec<String>,
    #[serde(default = "super::default_batch")]
    pub batch_size: usize,
    /// Evaluate at most this many prompts (in prompt_id order).
    #[serde(default)]
    pub limit: Option<usize>,
}

fn default_true() -> bool {
    true
}

fn default_eval_k() -> u32 {
    4
}

impl super::OpConfig for EvalSpec {
    fn check(&self, c: &mut StageCheck) {
        c.reads("prompts", &self.prompts);
        super::models::check_choice(c, self.openai.as_ref(), &self.policy, self.model.is_some());
        for p in &self.prm {
            c.reads_maybe_prev("prm", p);
        }
        c.reads_list("policy", &self.policy);
    }

    fn build(&self, pipeline: &Pipeline, _: &StageSpec) -> Result<Box<dyn Operator>> {
        Ok(Box::new(EvalOp::new(pipeline, self)))
    }
}

pub struct EvalOp {
    spec: EvalSpec,
    /// `model.path` resolved against the pipeline's folder.
    model_dir: Option<String>,
}

impl EvalOp {
    pub fn new(pipeline: &crate::spec::Pipeline, spec: &EvalSpec) -> Self {
        Self { spec: spec.clone(), model_dir: spec.model.as_ref().map(|m| pipeline.resolve_path(&m.path)) }
    }
    fn fail(&self, e: impl std::fmt::Display) -> OpError {
        OpError::Invalid(format!("eval: {e}"))
    }
    /// The temperatures sampled at (none when k = 0).
    fn temperatures(&self) -> Vec<f64> {
        match (self.spec.k, self.spec.temperatures.is_empty()) {
            (0, _) => vec![],
            (_, true) => vec![self.spec.sampling.temperature],
            _ => self.spec.temperatures.clone(),
        }
    }
}

/// The `eval_samples` table (schemas/eval_samples.json) as this operator writes it.
pub fn eval_samples_schema() -> SchemaRef {
    crate::schemas::operator_output("eval_samples")
}

/// A prompt to decode: its split, tokens, image patches, gold answer and oracle inputs.
struct Item {
    id: String,
    split: String,
    prompt: Prompt,
    /// The prompt as the PRM reads it (with a PRM).
    prm_prompt: Option<Prompt>,
    gold: Option<Gold>,
    synth: Option<(Scene, QuestionMeta)>,
}

/// One decode: the item, whether greedy, its temperature and sample index.
#[derive(Clone, Copy)]
struct Job {
    item: usize,
    greedy: bool,
    temperature: f64,
    sample: u32,
}

/// A judged decode.
struct Row {
    job: Job,
    response: String,
    num_tokens: i32,
    pred: Option<String>,
    correct: bool,
    steps_ok: Option<bool>,
    score: Option<f64>,
}

impl Operator for EvalOp {

    /// 3: on the CPU, products of fewer than 4 rows are computed as 4 (`decode_cpu::matmul_t`),
    /// which changes the rounding of some samples. 4: decoding steps on `kernels::matmul`
    /// (one fused multiply-add chain per output; a row rounds the same in any batch), image
    /// features from `vision_cpu`.
    fn version(&self) -> u32 {
        4
    }

    fn fingerprint_extra<'a>(&'a self, _iteration: u32) -> BoxFuture<'a, Result<Value>> {
        async move { Ok(self.model_dir.as_deref().map(super::models::folder_fingerprint).unwrap_or_else(|| json!({}))) }.boxed()
    }

    fn output_schema<'a>(&'a self, _ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<Option<SchemaRef>>> {
        async move { Ok(Some(eval_samples_schema())) }.boxed()
    }

    fn execute<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<OpOutput>> {
        async move {
            // an endpoint, or a checkpoint of a policy stage (mstar's own or a Hugging Face folder),
            // else the `model` folder
            let lm = match &self.spec.openai {
                Some(o) => super::models::open_endpoint(o)?,
                None => super::models::open(ctx, &self.spec.policy, self.model_dir.as_deref()).await?,
            };
            let prm = if self.spec.prm.is_empty() { None } else { Some(super::models::open_prm(ctx, &self.spec.prm).await?) };
            let p = &self.spec.prompts;
            let schema = ctx.input_schemas.iter().find(|(n, _)| n == p).map(|(_, s)| s.clone()).ok_or_else(|| self.fail(format!("prompts `{p}` has no rows")))?;
            let synth = schema.field_with_name("scene").is_ok() && schema.field_with_name("meta").is_ok();
            let split = match &self.spec.split {
                Some(s) => format!("'{}'", s.replace('\'', "''")),
                None if schema.field_with_name("split").is_ok() => "CAST(split AS VARCHAR)".into(),
                None => return Err(self.fail(format!("prompts `{p}` have no `split` column; set `split:` on the stage"))),
            };
            let filter = ctx.this_iteration(p, "").map(|c| format!(" WHERE {c}")).unwrap_or_default();
            let limit = self.spec.limit.map(|l| format!(" LIMIT {l}")).unwrap_or_default();
            let extra = if synth { ", CAST(scene AS VARCHAR) AS scene, CAST(meta AS VARCHAR) AS meta" } else { ", CAST(NULL AS VARCHAR) AS scene, CAST(NULL AS VARCHAR) AS meta" };
            let q = format!(
                "SELECT CAST(prompt_id AS VARCHAR) AS prompt_id, CAST(question AS VARCHAR) AS question, images, CAST(answer AS VARCHAR) AS answer, CAST(answer_type AS VARCHAR) AS answer_type, CAST(precision AS INT) AS precision, choices{extra}, {split} AS split FROM \"{p}\"{filter} ORDER BY split, prompt_id{limit}"
            );
            let batches = crate::sql::query(&ctx.session, &q)
                .await
                .map_err(|e| self.fail(format!("prompts `{p}` need prompt_id, question, images, answer, answer_type, precision, choices: {e}")))?
                .collect()
                .await?;
            let mut items: Vec<Item> = Vec::new();
            for b in &batches {
                let s = |i: usize| super::strings(b.column(i));
                let (ids, qs, answers, kinds, scenes, metas, splits) = (s(0)?, s(1)?, s(3)?, s(4)?, s(7)?, s(8)?, s(9)?);
                let prec = b.column(5).as_primitive::<arrow::datatypes::Int32Type>();
                let choices = b.column(6);
                let choices = if choices.data_type() == &DataType::Null {
                    None
                } else {
                    Some(arrow::compute::cast(choices, &DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))))?)
                };
                for i in 0..b.num_rows() {
                    let id = ids.value(i).to_string();
                    let ch = choices.as_ref().filter(|c| !c.is_null(i)).map(|c| {
                        c.as_list::<i32>().value(i).as_string::<i32>().iter().map(|x| x.unwrap_or_default().to_string()).collect::<Vec<_>>()
                    });
                    let answer_type = AnswerType::parse(if kinds.is_valid(i) { kinds.value(i) } else { "text" }).ok_or_else(|| self.fail(format!("prompt {id}: unknown answer_type `{}`", kinds.value(i))))?;
                    let synth = if scenes.is_valid(i) && metas.is_valid(i) {
                        Some((
                            serde_json::from_str(scenes.value(i)).map_err(|e| self.fail(format!("prompt {id}: scene: {e}")))?,
                            serde_json::from_str(metas.value(i)).map_err(|e| self.fail(format!("prompt {id}: meta: {e}")))?,
                        ))
                    } else {
                        None
                    };
                    let gold = answers.is_valid(i).then(|| Gold { answer: answers.value(i).to_string(), answer_type, precision: prec.is_valid(i).then(|| prec.value(i)), choices: ch.filter(|c| !c.is_empty()) });
                    let images = all_images(b.column(2), i);
                    let prompt = lm.encode_prompt(qs.value(i), &images).map_err(|e| self.fail(format!("prompt {id}: {e}")))?;
                    let prm_prompt = match &prm {
                        Some(prm) => Some(prm.encode_prompt(qs.value(i), &images).map_err(|e| self.fail(format!("prompt {id} (for the PRM): {e}")))?),
                        None => None,
                    };
                    items.push(Item { id, split: splits.value(i).to_string(), prompt, prm_prompt, gold, synth });
                }
            }
            if items.is_empty() {
                return Err(self.fail(format!("no prompts in `{p}`")));
            }
            // passes: greedy (temperature 0, sample 0's seed), then K samples at each temperature
            let mut passes: Vec<(bool, f64, u32)> = Vec::new();
            if self.spec.greedy {
                passes.push((true, 0.0, 1));
            }
            passes.extend(self.temperatures().into_iter().map(|t| (false, t, self.spec.k)));
            let (seed, iteration, bs) = (ctx.pipeline.seed, ctx.iteration, self.spec.batch_size.max(1));
            let sampling = self.spec.sampling.clone();
            let started = std::time::Instant::now();
            let rows = tokio::task::spawn_blocking(move || -> std::result::Result<(Vec<Row>, Vec<Item>), LmError> {
                let mut rows: Vec<Row> = Vec::new();
                for (greedy, temperature, k) in passes {
                    let seeds: Vec<Vec<u64>> = items.iter().map(|x| (0..k).map(|s| rollout_seed(seed, iteration, &x.id, s)).collect()).collect();
                    let work: Vec<Work> = items.iter().zip(&seeds).map(|(x, s)| Work { id: &x.id, prompt: &x.prompt, seeds: s }).collect();
                    let params = SamplingParams { temperature, ..sampling.clone() };
                    let decoded = sample_all(lm.as_ref(), &work, &params, bs, &mut |_| {})?;
                    for (item, samples) in decoded.into_iter().enumerate() {
                        for (sample, s) in samples.into_iter().enumerate() {
                            let x = &items[item];
                            if let Some((attempts, error)) = &s.failure {
                                let what = if greedy { "the greedy decode".to_string() } else { format!("sample {sample} at T={temperature}") };
                                return Err(LmError::Invalid(format!("prompt {}, {what}: the request failed after {attempts} attempt(s): {error}", x.id)));
                            }
                            let response = s.text;
                            let correct = x.gold.as_ref().is_some_and(|gold| gold.accepts(&response));
                            let steps_ok = x.synth.as_ref().map(|(scene, meta)| crate::data::synth::judge(scene, meta, &response).steps_ok);
                            let job = Job { item, greedy, temperature, sample: sample as u32 };
                            rows.push(Row { job, pred: extract_answer(&response), num_tokens: s.num_tokens as i32, response, correct, steps_ok, score: None });
                        }
                    }
                }
                if let Some(prm) = &prm {
                    // the lowest score for a response without steps
                    let steps: Vec<Vec<String>> = rows.iter_mut().map(|r| {
                        r.score = Some(0.0);
                        crate::data::answer::split_steps(&r.response)
                    }).collect();
                    let scored: Vec<usize> = (0..rows.len()).filter(|&r| !steps[r].is_empty()).collect();
                    let inputs: Vec<(&Prompt, &[String])> =
                        scored.iter().map(|&r| (items[rows[r].job.item].prm_prompt.as_ref().expect("encoded for the PRM"), steps[r].as_slice())).collect();
                    for (&r, s) in scored.iter().zip(prm.score_steps(&inputs, bs)?) {
                        rows[r].score = Some(s.into_iter().fold(f64::INFINITY, f64::min));
                    }
                }
                // a short summary per split and temperature
                let mut keys: Vec<(String, bool, u64)> = rows.iter().map(|r| (items[r.job.item].split.clone(), r.job.greedy, r.job.temperature.to_bits())).collect();
                keys.sort();
                keys.dedup();
                let parts: Vec<String> = keys
                    .iter()
                    .map(|(split, greedy, t)| {
                        let sel: Vec<&Row> = rows.iter().filter(|r| items[r.job.item].split == *split && r.job.greedy == *greedy && r.job.temperature.to_bits() == *t).collect();
                        let acc = sel.iter().filter(|r| r.correct).count() as f64 / sel.len().max(1) as f64;
                        let what = if *greedy { "greedy".to_string() } else { format!("T={}", f64::from_bits(*t)) };
                        format!("{split} {what} {acc:.3}")
                    })
                    .collect();
                eprintln!("  eval: {} decodes of {} prompts; accuracy {}", rows.len(), items.len(), parts.join(", "));
                Ok((rows, items))
            })
            .await
            .map_err(|e| self.fail(e))?
            .map_err(|e| self.fail(e))?;
            let (rows, items) = rows;
            eprintln!("  eval: {:.1}s", started.elapsed().as_secs_f64());
            let batch = RecordBatch::try_new(
                eval_samples_schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| items[r.job.item].split.clone()))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| items[r.job.item].id.clone()))),
                    Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.job.greedy)))),
                    Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.job.temperature))),
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.job.sample as i32))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.response.clone()))),
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.num_tokens))),
                    Arc::new(StringArray::from_iter(rows.iter().map(|r| r.pred.clone()))),
                    Arc::new(BooleanArray::from_iter(rows.iter().map(|r| Some(r.correct)))),
                    Arc::new(BooleanArray::from_iter(rows.iter().map(|r| r.steps_ok))),
                    Arc::new(Float64Array::from_iter(rows.iter().map(|r| r.score))),
                ],
            )?;
            Ok(OpOutput::Table(Box::pin(RecordBatchStreamAdapter::new(eval_samples_schema(), futures::stream::iter(vec![Ok(batch)])))))
        }
        .boxed()
    }
}
