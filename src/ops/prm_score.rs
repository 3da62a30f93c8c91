//! The `prm_score` operator: rollouts → `step_scores`, the process reward model's probability
//! that each reasoning step is sound, read at the step's last token; batched, CPU or GPU.

use super::generate::{find_checkpoint, resolve_policy};
use super::train::first_image;
use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::data::answer::split_steps;
use crate::model::checkpoint;
use crate::model::policy::Policy;
use crate::model::tiny_vlm::image_patches;
use crate::spec::{Pipeline, StageCheck, StageSpec};
use crate::train::qwen::{encode_steps, score_steps, QwenExample};
use crate::train::{batch_tensors, Example};
use arrow::array::{Array, AsArray, Float64Array, Int32Array, RecordBatch, StringArray};
use arrow_schema::SchemaRef;
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::sync::Arc;

/// prm_score: one PRM score per reasoning step of each rollout → step_scores.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrmScoreSpec {
    /// Stage with prompt_id, sample_idx, response (this iteration's rows).
    pub rollouts: String,
    /// Stage with prompt_id, question, images.
    pub prompts: String,
    /// Checkpoint stages of the process reward model, most preferred first.
    pub prm: Vec<String>,
    #[serde(default = "super::default_batch")]
    pub batch_size: usize,
}

impl super::OpConfig for PrmScoreSpec {
    fn check(&self, c: &mut StageCheck) {
        c.reads("rollouts", &self.rollouts);
        c.reads("prompts", &self.prompts);
        if self.prm.is_empty() {
            c.error("prm", "name at least one checkpoint stage");
        }
        c.reads_list("prm", &self.prm);
    }

    fn build(&self, _: &Pipeline, _: &StageSpec) -> Result<Box<dyn Operator>> {
        Ok(Box::new(PrmScoreOp::new(self)))
    }
}

pub struct PrmScoreOp {
    spec: PrmScoreSpec,
}

impl PrmScoreOp {
    pub fn new(spec: &PrmScoreSpec) -> Self {
        Self { spec: spec.clone() }
    }
    fn fail(&self, e: impl std::fmt::Display) -> OpError {
        OpError::Invalid(format!("prm_score: {e}"))
    }
}

/// The `step_scores` table (schemas/step_scores.json) as this operator writes it.
pub fn step_scores_schema() -> SchemaRef {
    crate::schemas::operator_output("step_scores")
}

/// One response to score: its example (prompt, step tokens, patches) and its steps' ends.
pub struct Scorable {
    pub prompt_id: String,
    pub sample_idx: i32,
    pub steps: Vec<String>,
    pub example: Example,
    pub ends: Vec<usize>,
}

/// A response as a [`Scorable`] for `prm` (None when it has no steps).
pub fn scorable(
    prm: &Policy,
    prompt: &[u32],
    patches: &[f32],
    prompt_id: &str,
    sample_idx: i32,
    response: &str,
) -> crate::model::policy::Result<Option<Scorable>> {
    let steps = split_steps(response);
    if steps.is_empty() {
        return Ok(None);
    }
    let (tokens, ends) = prm.encode_steps(&steps)?;
    let example = Example { prompt: prompt.to_vec(), response: tokens, patches: patches.into(), features: None, labels: vec![] };
    Ok(Some(Scorable { prompt_id: prompt_id.to_string(), sample_idx, steps, example, ends }))
}

/// Sigmoid of the PRM's score logit at each step's last token, for a batch of responses.
pub fn score_batch(prm: &Policy, items: &[&Scorable]) -> crate::model::policy::Result<Vec<Vec<f64>>> {
    let examples: Vec<&Example> = items.iter().map(|s| &s.example).collect();
    let (ids, patches, _, _, _) = batch_tensors(prm, &examples)?;
    let logits: Vec<Vec<f32>> = prm.model.scores(&prm.model.forward_hidden(&ids, 1, &patches)?)?.to_vec2()?;
    let ni = prm.cfg.vision_config.image_tokens();
    Ok(items
        .iter()
        .zip(logits)
        .map(|(s, row)| s.ends.iter().map(|&j| 1.0 / (1.0 + (-(row[s.example.prompt.len() + j - 1 + ni] as f64)).exp())).collect())
        .collect())
}

impl PrmScoreOp {
    /// The rows to score: this iteration's rollouts joined with their prompts.
    async fn rows(&self, ctx: &OpContext<'_>) -> Result<Vec<RecordBatch>> {
        let (r, p) = (&self.spec.rollouts, &self.spec.prompts);
        let filters: Vec<String> = [ctx.this_iteration(r, "r"), ctx.this_iteration(p, "p")].into_iter().flatten().collect();
        let filter = if filters.is_empty() { String::new() } else { format!(" WHERE {}", filters.join(" AND ")) };
        let q = format!(
            "SELECT CAST(r.prompt_id AS VARCHAR) AS prompt_id, CAST(r.sample_idx AS INT) AS sample_idx, CAST(r.response AS VARCHAR) AS response, \
             CAST(p.question AS VARCHAR) AS question, p.images \
             FROM \"{r}\" r JOIN \"{p}\" p ON r.prompt_id = p.prompt_id{filter} ORDER BY prompt_id, sample_idx"
        );
        Ok(crate::sql::query(&ctx.session, &q)
            .await
            .map_err(|e| self.fail(format!("rollouts `{r}` need prompt_id, sample_idx, response; prompts `{p}` need prompt_id, question, images: {e}")))?
            .collect()
            .await?)
    }

    /// Step scores by a Qwen-VL process reward model (a checkpoint of `train` with `model:` and
    /// `objective: prm`): each response laid out step by step, right-padded batches.
    async fn execute_hf(&self, ctx: &OpContext<'_>, name: &str, dir: &std::path::Path) -> Result<OpOutput> {
        let (ck, eos) = super::generate_hf::load_for_inference(dir).await.map_err(|e| self.fail(format!("checkpoint of `{name}`: {e}")))?;
        if !ck.is_prm() {
            return Err(self.fail(format!("the checkpoint of `{name}` is a policy, not a process reward model (train it with objective: prm)")));
        }
        let pad = eos[0];
        // (prompt_id, sample_idx, steps, example, step ends)
        #[allow(clippy::type_complexity)]
        let mut items: Vec<(String, i32, Vec<String>, QwenExample, Vec<usize>)> = Vec::new();
        for b in &self.rows(ctx).await? {
            let s = |i: usize| super::strings(b.column(i));
            let (ids, resp, qs) = (s(0)?, s(2)?, s(3)?);
            let samples = b.column(1).as_primitive::<arrow::datatypes::Int32Type>();
            for i in 0..b.num_rows() {
                let (id, k) = (ids.value(i).to_string(), samples.value(i));
                let steps = split_steps(if resp.is_valid(i) { resp.value(i) } else { "" });
                if steps.is_empty() {
                    continue;
                }
                let images = super::generate_hf::all_images(b.column(4), i);
                let (e, ends) = encode_steps(&ck, qs.value(i), &images, &steps, None).map_err(|e| self.fail(format!("prompt {id} sample {k}: {e}")))?;
                items.push((id, k, steps, e, ends));
            }
        }
        let started = std::time::Instant::now();
        let bs = self.spec.batch_size.max(1);
        let (items, scores) = tokio::task::spawn_blocking(move || -> std::result::Result<_, String> {
            let mut scores: Vec<Vec<f64>> = Vec::with_capacity(items.len());
            for chunk in items.chunks(bs) {
                let ex: Vec<&QwenExample> = chunk.iter().map(|x| &x.3).collect();
                let ends: Vec<&[usize]> = chunk.iter().map(|x| x.4.as_slice()).collect();
                scores.extend(score_steps(&ck, &ex, &ends, pad).map_err(|e| e.to_string())?);
            }
            Ok((items, scores))
        })
        .await
        .map_err(|e| self.fail(e))?
        .map_err(|e| self.fail(e))?;
        let rows: Vec<(&str, i32, usize, &str, f64)> =
            items.iter().zip(&scores).flat_map(|(it, sc)| sc.iter().enumerate().map(move |(j, &v)| (it.0.as_str(), it.1, j, it.2[j].as_str(), v))).collect();
        eprintln!("  prm_score: {} responses, {} steps ({:.1}s)", items.len(), rows.len(), started.elapsed().as_secs_f64());
        let batch = RecordBatch::try_new(
            step_scores_schema(),
            vec![
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0))),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1))),
                Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.2 as i32))),
                Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3))),
                Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.4))),
            ],
        )?;
        Ok(OpOutput::Table(Box::pin(RecordBatchStreamAdapter::new(step_scores_schema(), futures::stream::iter(vec![Ok(batch)])))))
    }
}

impl Operator for PrmScoreOp {

    fn fingerprint_extra<'a>(&'a self, _iteration: u32) -> BoxFuture<'a, Result<Value>> {
        async move { Ok(json!({})) }.boxed()
    }

    fn output_schema<'a>(&'a self, _ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<Option<SchemaRef>>> {
        async move { Ok(Some(step_scores_schema())) }.boxed()
    }

    fn execute<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<OpOutput>> {
        async move {
            if let Some((name, m)) = find_checkpoint(ctx, &self.spec.prm).filter(|(_, m)| checkpoint::is_hf(m)) {
                let dir = checkpoint::local_dir(ctx.store, m).await?;
                return self.execute_hf(ctx, name, &dir).await;
            }
            let prm = resolve_policy(ctx, &self.spec.prm).await?;
            if !prm.cfg.is_prm() {
                return Err(self.fail(format!("the checkpoint of {:?} is a policy, not a process reward model (train it with objective: prm)", self.spec.prm)));
            }
            let batches = self.rows(ctx).await?;
            let mut images: HashMap<String, (Vec<u32>, Arc<Vec<f32>>)> = HashMap::new();
            let mut items = Vec::new();
            for b in &batches {
                let s = |i: usize| super::strings(b.column(i));
                let (ids, resp, qs) = (s(0)?, s(2)?, s(3)?);
                let samples = b.column(1).as_primitive::<arrow::datatypes::Int32Type>();
                for i in 0..b.num_rows() {
                    let id = ids.value(i).to_string();
                    if !images.contains_key(&id) {
                        let img = first_image(b.column(4), i).ok_or_else(|| self.fail(format!("prompt {id} has no image")))?;
                        let patches = image_patches(&img, &prm.cfg.vision_config).map_err(|e| self.fail(format!("prompt {id}: {e}")))?;
                        images.insert(id.clone(), (prm.encode_prompt(qs.value(i)).map_err(|e| self.fail(e))?, Arc::new(patches)));
                    }
                    let (prompt, patches) = &images[&id];
                    let response = if resp.is_valid(i) { resp.value(i) } else { "" };
                    if let Some(item) = scorable(&prm, prompt, patches, &id, samples.value(i), response)
                        .map_err(|e| self.fail(format!("prompt {id} sample {}: {e}", samples.value(i))))?
                    {
                        items.push(item);
                    }
                }
            }
            let started = std::time::Instant::now();
            let bs = self.spec.batch_size.max(1);
            let (items, scores) = tokio::task::spawn_blocking(move || -> std::result::Result<_, String> {
                let mut scores = Vec::with_capacity(items.len());
                for chunk in items.chunks(bs) {
                    scores.extend(score_batch(&prm, &chunk.iter().collect::<Vec<_>>()).map_err(|e| e.to_string())?);
                }
                Ok((items, scores))
            })
            .await
            .map_err(|e| self.fail(e))?
            .map_err(|e| self.fail(e))?;
            let rows: Vec<(&Scorable, usize, f64)> =
                items.iter().zip(&scores).flat_map(|(it, sc)| sc.iter().enumerate().map(move |(k, &v)| (it, k, v))).collect();
            eprintln!("  prm_score: {} responses, {} steps ({:.1}s)", items.len(), rows.len(), started.elapsed().as_secs_f64());
            let batch = RecordBatch::try_new(
                step_scores_schema(),
                vec![
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.prompt_id.clone()))),
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.0.sample_idx))),
                    Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1 as i32))),
                    Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.steps[r.1].clone()))),
                    Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.2))),
                ],
            )?;
            Ok(OpOutput::Table(Box::pin(RecordBatchStreamAdapter::new(step_scores_schema(), futures::stream::iter(vec![Ok(batch)])))))
        }
        .boxed()
    }
}
