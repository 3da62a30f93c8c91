//! The `generate` operator: prompts → rollouts, K samples per prompt from a policy checkpoint,
//! batched with a KV cache; each rollout seeded from (run seed, iteration, prompt_id,
//! sample_idx), so the table does not depend on batch size, threads or resumes.

use super::models::all_images;
use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::model::generate::rollout_seed;
use crate::model::lm::{OpenAiBackend, Prompt, Sample, Work};
use crate::spec::{Pipeline, StageCheck, StageSpec};
use arrow::array::{Float64Array, Int32Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::future::BoxFuture;
use futures::{FutureExt, StreamExt};
use serde_json::{json, Value};
use std::io::IsTerminal;
use std::sync::Arc;

/// generate: K rollouts per prompt from a policy checkpoint.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    /// Stage with `prompt_id`, `question`, `images`.
    pub prompts: String,
    /// Checkpoint stages, most preferred first (e.g. `[train@prev, warmup]`): the newest
    /// committed checkpoint of the first one that has any is used.
    #[serde(default)]
    pub policy: Vec<String>,
    /// A Hugging Face checkpoint folder (Qwen2.5-VL, Qwen3-VL): alone, or with `policy` the
    /// folder sampled while none of those stages has a checkpoint (e.g. before the first SFT).
    #[serde(default)]
    pub model: Option<crate::spec::ModelPath>,
    /// Instead of `policy`: an OpenAI-compatible chat-completions endpoint (vLLM, SGLang,
    /// `mstar serve`, …).
    #[serde(default)]
    pub openai: Option<OpenAiBackend>,
    #[serde(default = "default_samples")]
    pub samples: u32,
    #[serde(default)]
    pub sampling: crate::model::generate::SamplingParams,
    /// A stage whose table has `temperature` and `chosen` columns (e.g. `sql: pick_temperature`,
    /// optionally `NAME@prev`): its newest chosen temperature replaces `sampling.temperature`
    /// (which stays the fallback while that stage has no rows).
    #[serde(default)]
    pub temperature_from: Option<String>,
    #[serde(default = "super::default_batch")]
    pub batch_size: usize,
}

fn default_samples() -> u32 {
    1
}

impl super::OpConfig for GenerateSpec {
    fn check(&self, c: &mut StageCheck) {
        c.reads("prompts", &self.prompts);
        super::models::check_choice(c, self.openai.as_ref(), &self.policy, self.model.is_some());
        if let Some(t) = &self.temperature_from {
            c.reads_maybe_prev("temperature_from", t);
        }
        c.reads_list("policy", &self.policy);
    }

    fn build(&self, pipeline: &Pipeline, _: &StageSpec) -> Result<Box<dyn Operator>> {
        Ok(Box::new(GenerateOp::new(pipeline, self)))
    }
}

pub struct GenerateOp {
    pub(crate) spec: GenerateSpec,
    /// `model.path` resolved against the pipeline's folder.
    model_dir: Option<String>,
}

impl GenerateOp {
    pub fn new(pipeline: &crate::spec::Pipeline, spec: &GenerateSpec) -> Self {
        Self { spec: spec.clone(), model_dir: spec.model.as_ref().map(|m| pipeline.resolve_path(&m.path)) }
    }

    pub(crate) fn fail(&self, e: impl std::fmt::Display) -> OpError {
        OpError::Invalid(format!("generate: {e}"))
    }

    /// The sampling parameters, with the temperature `temperature_from` chose, if any.
    pub(crate) async fn sampling(&self, ctx: &OpContext<'_>) -> Result<crate::model::generate::SamplingParams> {
        let mut params = self.spec.sampling.clone();
        if let Some(raw) = &self.spec.temperature_from {
            let name = raw.strip_suffix("@prev").unwrap_or(raw);
            if ctx.input_schemas.iter().any(|(n, _)| n == name) {
                let q = format!("SELECT CAST(temperature AS DOUBLE) AS t, iteration FROM \"{name}\" WHERE chosen ORDER BY iteration DESC LIMIT 1");
                let rows = crate::sql::query(&ctx.session, &q)
                    .await
                    .map_err(|e| self.fail(format!("temperature_from `{name}` needs `temperature` and `chosen` columns: {e}")))?
                    .collect()
                    .await?;
                if let Some(b) = rows.iter().find(|b| b.num_rows() > 0) {
                    use arrow::array::AsArray;
                    params.temperature = b.column(0).as_primitive::<arrow::datatypes::Float64Type>().value(0);
                    let at = b.column(1).as_primitive::<arrow::datatypes::Int64Type>().value(0);
                    eprintln!("  generate: temperature {} (chosen by `{name}` at iteration {at})", params.temperature);
                }
            }
        }
        if !(params.temperature.is_finite() && params.temperature >= 0.0) {
            return Err(self.fail(format!("temperature must be a finite number ≥ 0, got {}", params.temperature)));
        }
        Ok(params)
    }
}

pub fn rollouts_schema() -> SchemaRef {
    Arc::new(Schema::new(vec![
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("sample_idx", DataType::Int32, false),
        Field::new("temperature", DataType::Float64, false),
        Field::new("seed", DataType::UInt64, false),
        Field::new("response", DataType::Utf8, false),
        Field::new("num_tokens", DataType::Int32, false),
        Field::new("logprob", DataType::Float64, false),
        Field::new("finish_reason", DataType::Utf8, false),
    ]))
}

impl Operator for GenerateOp {

    /// 2: on the CPU, products of fewer than 4 rows are computed as 4 (`decode_cpu::matmul_t`),
    /// which changes the rounding of some samples. 3: decoding steps on `kernels::matmul`
    /// (one fused multiply-add chain per output; a row rounds the same in any batch), image
    /// features from `vision_cpu`.
    fn version(&self) -> u32 {
        3
    }

    fn fingerprint_extra<'a>(&'a self, _iteration: u32) -> BoxFuture<'a, Result<Value>> {
        // a checkpoint folder is an input: its files' names, sizes and mtimes
        async move { Ok(self.model_dir.as_deref().map(super::models::folder_fingerprint).unwrap_or_else(|| json!({}))) }.boxed()
    }

    fn output_schema<'a>(&'a self, _ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<Option<SchemaRef>>> {
        async move { Ok(Some(rollouts_schema())) }.boxed()
    }

    fn execute<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<OpOutput>> {
        async move {
            let lm = match &self.spec.openai {
                Some(o) => super::models::open_endpoint(o)?,
                None => super::models::open(ctx, &self.spec.policy, self.model_dir.as_deref()).await?,
            };
            let filter = ctx.this_iteration(&self.spec.prompts, "").map(|c| format!(" WHERE {c}")).unwrap_or_default();
            let q = format!(
                "SELECT CAST(prompt_id AS VARCHAR) AS prompt_id, CAST(question AS VARCHAR) AS question, images FROM \"{}\"{filter} ORDER BY prompt_id",
                self.spec.prompts
            );
            let batches = crate::sql::query(&ctx.session, &q)
                .await
                .map_err(|e| self.fail(format!("prompts `{}` need prompt_id, question, images: {e}", self.spec.prompts)))?
                .collect()
                .await?;
            let (seed, iteration, k) = (ctx.pipeline.seed, ctx.iteration, self.spec.samples);
            let mut prompts: Vec<(String, Prompt, Vec<u64>)> = Vec::new();
            for b in &batches {
                let (ids, qs, imgs) = (super::strings(b.column(0))?, super::strings(b.column(1))?, b.column(2));
                for i in 0..b.num_rows() {
                    let id = ids.value(i).to_string();
                    let prompt = lm.encode_prompt(qs.value(i), &all_images(imgs, i)).map_err(|e| self.fail(format!("prompt {id}: {e}")))?;
                    let seeds = (0..k).map(|s| rollout_seed(seed, iteration, &id, s)).collect();
                    prompts.push((id, prompt, seeds));
                }
            }
            let params = self.sampling(ctx).await?;
            let total = prompts.len() * k as usize;
            if self.spec.openai.is_some() {
                eprintln!("  generate: {total} requests to {}", lm.describe());
            }
            let (tx, rx) = futures::channel::mpsc::channel::<datafusion::error::Result<RecordBatch>>(2);
            let (batch_size, side, tty) = (self.spec.batch_size.max(1), ctx.side.clone(), std::io::stderr().is_terminal());
            let task = tokio::task::spawn_blocking(move || -> std::result::Result<usize, String> {
                let started = std::time::Instant::now();
                let work: Vec<Work> = prompts.iter().map(|(id, p, seeds)| Work { id, prompt: p, seeds }).collect();
                let (mut done, mut failures, mut tx) = (0, Vec::new(), tx);
                lm.sample(&work, &params, batch_size, &mut |batch| {
                    let rows: Vec<(&str, i32, u64, Sample)> =
                        batch.into_iter().map(|s| (work[s.work].id, s.seed as i32, work[s.work].seeds[s.seed], s.sample)).collect();
                    failures.extend(rows.iter().filter_map(|r| r.3.failure.clone().map(|f| (r.0.to_string(), r.1, f))));
                    let before = done;
                    done += rows.len();
                    let secs = started.elapsed().as_secs_f64();
                    if tty {
                        eprint!("\r  generate: {done}/{total} rollouts, {:.0} rollouts/s   ", done as f64 / secs.max(1e-9));
                        if done == total {
                            eprintln!();
                        }
                    } else if done == total || (done * 10 / total.max(1)) != (before * 10 / total.max(1)) {
                        let toks: usize = rows.iter().map(|r| r.3.num_tokens).sum();
                        eprintln!("  generate: {done}/{total} rollouts ({toks} tokens in the last batch), {secs:.1}s");
                    }
                    futures::executor::block_on(futures::SinkExt::send(&mut tx, rollouts_batch(&rows, params.temperature))).is_ok()
                })
                .map_err(|e| format!("generate: {e}"))?;
                if !failures.is_empty() {
                    eprintln!("  generate: {done} rollouts in {:.1}s, {} failed", started.elapsed().as_secs_f64(), failures.len());
                    eprintln!("  generate: first failure: {} sample {}: {}", failures[0].0, failures[0].1, failures[0].2 .1);
                    side.push("generate_errors", errors_batch(&failures).map_err(|e| e.to_string())?);
                }
                Ok(done)
            });
            // the batches as they come, then the sampling's outcome: an error, or fewer rollouts
            // than asked for, fails the stage instead of committing a partial table
            let outcome = futures::stream::once(async move {
                match task.await {
                    Ok(Ok(n)) if n == total => None,
                    Ok(Ok(n)) => Some(Err(datafusion::error::DataFusionError::Execution(format!("generate: {n} of {total} rollouts came back")))),
                    Ok(Err(e)) => Some(Err(datafusion::error::DataFusionError::Execution(e))),
                    Err(e) => Some(Err(datafusion::error::DataFusionError::Execution(format!("generate: {e}")))),
                }
            })
            .filter_map(futures::future::ready);
            Ok(OpOutput::Table(Box::pin(RecordBatchStreamAdapter::new(rollouts_schema(), rx.chain(outcome)))))
        }
        .boxed()
    }
}

/// Rows of the rollouts table: (prompt_id, sample_idx, seed, sample).
fn rollouts_batch(rows: &[(&str, i32, u64, Sample)], temperature: f64) -> datafusion::error::Result<RecordBatch> {
    Ok(RecordBatch::try_new(
        rollouts_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))),
            Arc::new(Float64Array::from(vec![temperature; rows.len()])),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3.text.as_str()))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.3.num_tokens as i32))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.3.logprob))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3.finish_reason.as_str()))),
        ],
    )?)
}

/// The side table `generate_errors`: requests that failed after their retries.
fn errors_batch(failures: &[(String, i32, (u32, String))]) -> std::result::Result<RecordBatch, arrow::error::ArrowError> {
    let schema = Arc::new(Schema::new(vec![
        Field::new("prompt_id", DataType::Utf8, false),
        Field::new("sample_idx", DataType::Int32, false),
        Field::new("attempts", DataType::Int32, false),
        Field::new("error", DataType::Utf8, false),
    ]));
    RecordBatch::try_new(
        schema,
        vec![
            Arc::new(StringArray::from_iter_values(failures.iter().map(|f| f.0.as_str()))),
            Arc::new(Int32Array::from_iter_values(failures.iter().map(|f| f.1))),
            Arc::new(Int32Array::from_iter_values(failures.iter().map(|f| f.2 .0 as i32))),
            Arc::new(StringArray::from_iter_values(failures.iter().map(|f| f.2 .1.as_str()))),
        ],
    )
}
