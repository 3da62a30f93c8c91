//! The `prm_label` operator: Monte Carlo step labels for PRM training — every step prefix of
//! each sampled response is continued N times by the policy and scored by the gold answer.

use super::models::all_images;
use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::data::answer::AnswerType;
use crate::model::generate::SamplingParams;
use crate::model::lm::{sample_all, LmError, Prompt, VisionLm, Work};
use crate::prm::{mc_labels, Completer, CompletionJob, Gold, LabelTask};
use crate::spec::{Pipeline, StageCheck, StageSpec};
use arrow::array::{Array, AsArray, BooleanArray, Float64Array, Int32Array, RecordBatch, StringArray};
use arrow_schema::{DataType, Field, SchemaRef};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// prm_label: Monte Carlo step labels of sampled responses — for every step prefix, the share
/// of `completions` continuations by the policy that reach the gold answer.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrmLabelSpec {
    /// Stage with prompt_id, sample_idx, response (this iteration's rows).
    pub rollouts: String,
    /// Stage with the prompts: prompt_id, question, images, answer, answer_type, precision, choices.
    pub prompts: String,
    /// Checkpoint stages of the sampling policy, most preferred first.
    #[serde(default)]
    pub policy: Vec<String>,
    /// A Hugging Face checkpoint folder as the sampling policy (alone, or the fallback while
    /// none of the `policy` stages has a checkpoint).
    #[serde(default)]
    pub model: Option<crate::spec::ModelPath>,
    /// Completions per step prefix (N).
    #[serde(default = "default_completions")]
    pub completions: u32,
    /// The index of the first completion: its seeds are those of completions `first_completion`
    /// .. `first_completion + completions`, so a second labelling of the same responses with
    /// `first_completion` set to the first's `completions` gets independent completions (for a
    /// consensus of two label tables, sql/consensus_labels.sql).
    #[serde(default)]
    pub first_completion: u32,
    #[serde(default)]
    pub sampling: crate::model::generate::SamplingParams,
    #[serde(default = "super::default_batch")]
    pub batch_size: usize,
}

fn default_completions() -> u32 {
    8
}

impl super::OpConfig for PrmLabelSpec {
    fn check(&self, c: &mut StageCheck) {
        c.reads("rollouts", &self.rollouts);
        c.reads("prompts", &self.prompts);
        if self.model.is_none() && self.policy.is_empty() {
            c.error("policy", "name at least one checkpoint stage");
        }
        c.reads_list("policy", &self.policy);
    }

    fn build(&self, pipeline: &Pipeline, _: &StageSpec) -> Result<Box<dyn Operator>> {
        Ok(Box::new(PrmLabelOp::new(pipeline, self)))
    }
}

pub struct PrmLabelOp {
    spec: PrmLabelSpec,
    /// `model.path` resolved against the pipeline's folder.
    model_dir: Option<String>,
}

impl PrmLabelOp {
    pub fn new(pipeline: &crate::spec::Pipeline, spec: &PrmLabelSpec) -> Self {
        Self { spec: spec.clone(), model_dir: spec.model.as_ref().map(|m| pipeline.resolve_path(&m.path)) }
    }
    fn fail(&self, e: impl std::fmt::Display) -> OpError {
        OpError::Invalid(format!("prm_label: {e}"))
    }
}

/// The `step_labels` table (schemas/step_labels.json) as this operator writes it.
pub fn step_labels_schema() -> SchemaRef {
    crate::schemas::operator_output("step_labels")
}

/// Completions sampled from the policy: the prompt, then the prefix, continued once per seed;
/// every completion of the stage in one call, so the model batches them as it does any sampling.
struct LmCompleter<'a> {
    lm: &'a dyn VisionLm,
    /// The prompts by prompt_id.
    prompts: &'a HashMap<String, Prompt>,
    params: SamplingParams,
    batch_size: usize,
}

impl Completer for LmCompleter<'_> {
    type Error = LmError;

    fn complete(&self, tasks: &[LabelTask], jobs: &[CompletionJob]) -> std::result::Result<Vec<Vec<String>>, LmError> {
        let prompts = jobs
            .iter()
            .map(|job| {
                let id = &tasks[job.task].prompt_id;
                self.lm.continue_prompt(&self.prompts[id], &job.prefix).map_err(|e| LmError::Invalid(format!("prompt {id}: {e}")))
            })
            .collect::<std::result::Result<Vec<_>, _>>()?;
        let work: Vec<Work> = jobs.iter().zip(&prompts).map(|(job, p)| Work { id: &tasks[job.task].prompt_id, prompt: p, seeds: &job.seeds }).collect();
        let (total, started, mut done) = (jobs.iter().map(|j| j.seeds.len()).sum::<usize>(), std::time::Instant::now(), 0);
        let samples = sample_all(self.lm, &work, &self.params, self.batch_size, &mut |n| {
            let before = done;
            done += n;
            if done == total || done * 10 / total != before * 10 / total {
                eprintln!("  prm_label: {done}/{total} completions, {:.1}s", started.elapsed().as_secs_f64());
            }
        })?;
        Ok(samples.into_iter().map(|v| v.into_iter().map(|s| s.text).collect()).collect())
    }
}

impl Operator for PrmLabelOp {

    /// 2: on the CPU, products of fewer than 4 rows are computed as 4 (`decode_cpu::matmul_t`),
    /// which changes the rounding of some samples. 3: decoding steps on `kernels::matmul`
    /// (one fused multiply-add chain per output; a row rounds the same in any batch), image
    /// features from `vision_cpu`.
    fn version(&self) -> u32 {
        3
    }

    fn fingerprint_extra<'a>(&'a self, _iteration: u32) -> BoxFuture<'a, Result<Value>> {
        async move { Ok(self.model_dir.as_deref().map(super::models::folder_fingerprint).unwrap_or_else(|| json!({}))) }.boxed()
    }

    fn output_schema<'a>(&'a self, _ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<Option<SchemaRef>>> {
        async move { Ok(Some(step_labels_schema())) }.boxed()
    }

    fn execute<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<OpOutput>> {
        async move {
            let lm = super::models::open(ctx, &self.spec.policy, self.model_dir.as_deref()).await?;
            let (r, p) = (&self.spec.rollouts, &self.spec.prompts);
            let mut filters: Vec<String> = [ctx.this_iteration(r, "r"), ctx.this_iteration(p, "p")].into_iter().flatten().collect();
            filters.push("p.answer IS NOT NULL".into());
            let q = format!(
                "SELECT CAST(r.prompt_id AS VARCHAR) AS prompt_id, CAST(r.sample_idx AS INT) AS sample_idx, CAST(r.response AS VARCHAR) AS response, \
                 CAST(p.question AS VARCHAR) AS question, p.images, CAST(p.answer AS VARCHAR) AS answer, CAST(p.answer_type AS VARCHAR) AS answer_type, \
                 CAST(p.precision AS INT) AS precision, p.choices \
                 FROM \"{r}\" r JOIN \"{p}\" p ON r.prompt_id = p.prompt_id WHERE {} ORDER BY prompt_id, sample_idx",
                filters.join(" AND ")
            );
            let batches = crate::sql::query(&ctx.session, &q)
                .await
                .map_err(|e| self.fail(format!("rollouts `{r}` need prompt_id, sample_idx, response; prompts `{p}` need prompt_id, question, images, answer, answer_type, precision, choices: {e}")))?
                .collect()
                .await?;
            let mut tasks = Vec::new();
            let mut prompts: HashMap<String, Prompt> = HashMap::new();
            for b in &batches {
                let s = |i: usize| super::strings(b.column(i));
                let (ids, resp, qs, answers, kinds) = (s(0)?, s(2)?, s(3)?, s(5)?, s(6)?);
                let samples = b.column(1).as_primitive::<arrow::datatypes::Int32Type>();
                let prec = b.column(7).as_primitive::<arrow::datatypes::Int32Type>();
                let choices = arrow::compute::cast(b.column(8), &DataType::List(Arc::new(Field::new_list_field(DataType::Utf8, true))))?;
                for i in 0..b.num_rows() {
                    let id = ids.value(i).to_string();
                    if !prompts.contains_key(&id) {
                        let p = lm.encode_prompt(qs.value(i), &all_images(b.column(4), i)).map_err(|e| self.fail(format!("prompt {id}: {e}")))?;
                        prompts.insert(id.clone(), p);
                    }
                    let kind = if kinds.is_valid(i) { kinds.value(i) } else { "text" };
                    let answer_type = AnswerType::parse(kind).ok_or_else(|| self.fail(format!("prompt {id}: unknown answer_type `{kind}`")))?;
                    let ch: Option<Vec<String>> = (!choices.is_null(i))
                        .then(|| choices.as_list::<i32>().value(i).as_string::<i32>().iter().map(|x| x.unwrap_or_default().to_string()).collect::<Vec<_>>())
                        .filter(|c| !c.is_empty());
                    tasks.push(LabelTask {
                        prompt_id: id,
                        sample_idx: samples.value(i).max(0) as u32,
                        response: if resp.is_valid(i) { resp.value(i).to_string() } else { String::new() },
                        gold: Gold { answer: answers.value(i).to_string(), answer_type, precision: prec.is_valid(i).then(|| prec.value(i)), choices: ch },
                    });
                }
            }
            let started = std::time::Instant::now();
            let (first, n, seed, iteration) = (self.spec.first_completion, self.spec.completions, ctx.pipeline.seed, ctx.iteration);
            let params = self.spec.sampling.clone();
            let batch_size = self.spec.batch_size;
            let labels = tokio::task::spawn_blocking(move || {
                let completer = LmCompleter { lm: lm.as_ref(), prompts: &prompts, params, batch_size };
                mc_labels(&completer, &tasks, first, n, seed, iteration).map(|l| (l, tasks.len()))
            })
            .await
            .map_err(|e| self.fail(e))?
            .map_err(|e| self.fail(e))?;
            let (labels, responses) = labels;
            let mean = labels.iter().map(|l| l.soft).sum::<f64>() / labels.len().max(1) as f64;
            eprintln!("  prm_label: {responses} responses, {} steps, mean soft label {mean:.3} ({:.1}s)", labels.len(), started.elapsed().as_secs_f64());
            let batch = RecordBatch::try_new(
                step_labels_schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(labels.iter().map(|l| l.prompt_id.clone()))),
                    Arc::new(Int32Array::from_iter_values(labels.iter().map(|l| l.sample_idx as i32))),
                    Arc::new(Int32Array::from_iter_values(labels.iter().map(|l| l.step_idx as i32))),
                    Arc::new(StringArray::from_iter_values(labels.iter().map(|l| l.step_text.clone()))),
                    Arc::new(StringArray::from_iter_values(labels.iter().map(|l| l.prefix.clone()))),
                    Arc::new(Int32Array::from_iter_values(labels.iter().map(|l| l.n as i32))),
                    Arc::new(Int32Array::from_iter_values(labels.iter().map(|l| l.successes as i32))),
                    Arc::new(Float64Array::from_iter_values(labels.iter().map(|l| l.soft))),
                    Arc::new(BooleanArray::from(labels.iter().map(|l| l.hard).collect::<Vec<_>>())),
                ],
            )?;
            Ok(OpOutput::Table(Box::pin(RecordBatchStreamAdapter::new(step_labels_schema(), futures::stream::iter(vec![Ok(batch)])))))
        }
        .boxed()
    }
}
