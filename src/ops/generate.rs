//! The `generate` operator: prompts → rollouts, K samples per prompt from a policy checkpoint,
//! batched with a KV cache; each rollout seeded from (run seed, iteration, prompt_id,
//! sample_idx), so the table does not depend on batch size, threads or resumes.

use super::train::first_image;
use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::model::checkpoint;
use crate::model::generate::{generate, rollout_seed, Request};
use crate::model::policy::Policy;
use crate::model::tiny_vlm::image_patches;
use crate::spec::{Pipeline, StageCheck, StageSpec};
use super::generate_openai::OpenAiBackend;
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
        match &self.openai {
            Some(_) if !self.policy.is_empty() || self.model.is_some() => {
                c.error("openai", "give `openai` (an endpoint) or a policy (`policy` checkpoint stages, `model` folder), not both")
            }
            Some(o) if o.concurrency == 0 => c.error("openai", "concurrency must be at least 1"),
            None if self.model.is_none() && self.policy.is_empty() => c.error("policy", "name at least one checkpoint stage"),
            _ => {}
        }
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

/// The newest committed checkpoint of the first stage in `names` that has one (`x@prev`:
/// earlier iterations), with that stage's name.
pub fn find_checkpoint<'c>(ctx: &'c OpContext<'_>, names: &'c [String]) -> Option<(&'c str, &'c crate::store::Manifest)> {
    names.iter().find_map(|raw| {
        let name = raw.strip_suffix("@prev").unwrap_or(raw);
        let ms = ctx.input_manifests.iter().find(|(n, _)| n == name).map(|(_, m)| m.as_slice()).unwrap_or(&[]);
        checkpoint::latest(ms).map(|m| (name, m))
    })
}

/// The policy checkpoint of the first stage in `names` that has one (`x@prev`: earlier iterations).
pub async fn resolve_policy(ctx: &OpContext<'_>, names: &[String]) -> Result<Policy> {
    let Some((name, m)) = find_checkpoint(ctx, names) else {
        return Err(OpError::Invalid(format!("none of the policy stages {names:?} has a committed checkpoint")));
    };
    if checkpoint::is_hf(m) {
        return Err(OpError::Invalid(format!(
            "the checkpoint of `{name}` is a Hugging Face model; this operator runs mstar's own policies only (generate runs both)"
        )));
    }
    let files = checkpoint::read(ctx.store, m).await?;
    let mut p = Policy::from_files(&files, &crate::model::device())
        .map_err(|e| OpError::Invalid(format!("checkpoint of `{name}` (iteration {}): {e}", m.iteration)))?;
    // sampling needs no gradients
    p.model.use_inference_kernels(true).map_err(|e| OpError::Invalid(format!("policy `{name}`: {e}")))?;
    Ok(p)
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
        async move { Ok(self.model_dir.as_deref().map(super::generate_hf::folder_fingerprint).unwrap_or_else(|| json!({}))) }.boxed()
    }

    fn output_schema<'a>(&'a self, _ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<Option<SchemaRef>>> {
        async move { Ok(Some(rollouts_schema())) }.boxed()
    }

    fn execute<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<OpOutput>> {
        async move {
            if let Some(o) = &self.spec.openai {
                return super::generate_openai::execute(self, ctx, o).await;
            }
            // a Hugging Face checkpoint of a policy stage (e.g. a LoRA SFT), else the `model` folder
            match (find_checkpoint(ctx, &self.spec.policy), &self.model_dir) {
                (Some((name, m)), _) if checkpoint::is_hf(m) => {
                    eprintln!("  generate: the checkpoint of `{name}` (iteration {})", m.iteration);
                    let dir = checkpoint::local_dir(ctx.store, m).await?;
                    return super::generate_hf::execute(self, ctx, &dir).await;
                }
                (None, Some(dir)) => return super::generate_hf::execute(self, ctx, std::path::Path::new(dir)).await,
                _ => {}
            }
            let policy = resolve_policy(ctx, &self.spec.policy).await?;
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
            let mut prompts: Vec<(String, Vec<u32>, Vec<f32>)> = Vec::new();
            for b in &batches {
                let (ids, qs, imgs) = (super::strings(b.column(0))?, super::strings(b.column(1))?, b.column(2));
                for i in 0..b.num_rows() {
                    let id = ids.value(i).to_string();
                    let img = first_image(imgs, i).ok_or_else(|| self.fail(format!("prompt {id} has no image")))?;
                    let tokens = policy.encode_prompt(qs.value(i)).map_err(|e| self.fail(e))?;
                    let patches = image_patches(&img, &policy.cfg.vision_config).map_err(|e| self.fail(format!("prompt {id}: {e}")))?;
                    prompts.push((id, tokens, patches));
                }
            }
            // one bucket for the whole stage: results cannot depend on how prompts are batched
            let bucket = prompts.iter().map(|p| p.1.len()).max().unwrap_or(2);
            let k = self.spec.samples;
            let mut work: Vec<(usize, u32)> = Vec::new();
            for p in 0..prompts.len() {
                for s in 0..k {
                    work.push((p, s));
                }
            }
            let total = work.len();
            let seed = ctx.pipeline.seed;
            let iteration = ctx.iteration;
            let params = self.sampling(ctx).await?;
            let batch_size = self.spec.batch_size.max(1);
            let tty = std::io::stderr().is_terminal();
            let started = std::time::Instant::now();
            let chunks: Vec<Vec<(usize, u32)>> = work.chunks(batch_size).map(|c| c.to_vec()).collect();
            let prompts = Arc::new(prompts);
            let policy = Arc::new(policy);
            let done = Arc::new(std::sync::atomic::AtomicUsize::new(0));
            let stream = futures::stream::iter(chunks).then(move |chunk| {
                let (prompts, policy, params, done) = (prompts.clone(), policy.clone(), params.clone(), done.clone());
                async move {
                    let reqs: Vec<Request> = chunk
                        .iter()
                        .map(|&(p, s)| Request {
                            prompt: prompts[p].1.clone(),
                            patches: prompts[p].2.clone(),
                            seed: rollout_seed(seed, iteration, &prompts[p].0, s),
                        })
                        .collect();
                    let policy2 = policy.clone();
                    let params2 = params.clone();
                    let gens = tokio::task::spawn_blocking(move || generate(&policy2, &reqs, &params2, bucket))
                        .await
                        .map_err(|e| datafusion::error::DataFusionError::Execution(e.to_string()))?
                        .map_err(|e| datafusion::error::DataFusionError::Execution(format!("generate: {e}")))?;
                    let texts: Vec<String> = gens.iter().map(|g| policy.tokenizer.decode(&g.tokens).unwrap_or_default()).collect();
                    let n = done.fetch_add(chunk.len(), std::sync::atomic::Ordering::Relaxed) + chunk.len();
                    let secs = started.elapsed().as_secs_f64();
                    let toks: usize = gens.iter().map(|g| g.tokens.len()).sum();
                    if tty {
                        eprint!("\r  generate: {n}/{total} rollouts, {:.0} rollouts/s   ", n as f64 / secs.max(1e-9));
                        if n == total {
                            eprintln!();
                        }
                    } else if n == total || (n * 10 / total.max(1)) != ((n - chunk.len()) * 10 / total.max(1)) {
                        eprintln!("  generate: {n}/{total} rollouts ({toks} tokens in the last batch), {secs:.1}s");
                    }
                    let batch = RecordBatch::try_new(
                        rollouts_schema(),
                        vec![
                            Arc::new(StringArray::from_iter_values(chunk.iter().map(|&(p, _)| prompts[p].0.clone()))),
                            Arc::new(Int32Array::from_iter_values(chunk.iter().map(|&(_, s)| s as i32))),
                            Arc::new(Float64Array::from(vec![params.temperature; chunk.len()])),
                            Arc::new(UInt64Array::from_iter_values(chunk.iter().map(|&(p, s)| rollout_seed(seed, iteration, &prompts[p].0, s)))),
                            Arc::new(StringArray::from(texts)),
                            Arc::new(Int32Array::from_iter_values(gens.iter().map(|g| g.tokens.len() as i32))),
                            Arc::new(Float64Array::from_iter_values(gens.iter().map(|g| g.logprob))),
                            Arc::new(StringArray::from_iter_values(gens.iter().map(|g| g.finish_reason))),
                        ],
                    )?;
                    Ok(batch)
                }
            });
            Ok(OpOutput::Table(Box::pin(RecordBatchStreamAdapter::new(rollouts_schema(), stream))))
        }
        .boxed()
    }
}
