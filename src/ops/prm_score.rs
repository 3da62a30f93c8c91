//! The `prm_score` operator: rollouts → `step_scores`, the process reward model's probability
//! that each reasoning step is sound, read at the step's last token; batched, CPU or GPU.

use super::models::all_images;
use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::data::answer::split_steps;
use crate::model::lm::Prompt;
use crate::spec::{Pipeline, StageCheck, StageSpec};
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
            let prm = super::models::open_prm(ctx, &self.spec.prm).await?;
            let batches = self.rows(ctx).await?;
            let mut prompts: HashMap<String, Arc<Prompt>> = HashMap::new();
            // (prompt_id, sample_idx, prompt, steps) of each response with steps
            let mut items: Vec<(String, i32, Arc<Prompt>, Vec<String>)> = Vec::new();
            for b in &batches {
                let s = |i: usize| super::strings(b.column(i));
                let (ids, resp, qs) = (s(0)?, s(2)?, s(3)?);
                let samples = b.column(1).as_primitive::<arrow::datatypes::Int32Type>();
                for i in 0..b.num_rows() {
                    let id = ids.value(i).to_string();
                    let steps = split_steps(if resp.is_valid(i) { resp.value(i) } else { "" });
                    if steps.is_empty() {
                        continue;
                    }
                    let prompt = match prompts.get(&id) {
                        Some(p) => p.clone(),
                        None => {
                            let p = Arc::new(prm.encode_prompt(qs.value(i), &all_images(b.column(4), i)).map_err(|e| self.fail(format!("prompt {id}: {e}")))?);
                            prompts.insert(id.clone(), p.clone());
                            p
                        }
                    };
                    items.push((id, samples.value(i), prompt, steps));
                }
            }
            let started = std::time::Instant::now();
            let bs = self.spec.batch_size.max(1);
            let (items, scores) = tokio::task::spawn_blocking(move || {
                let inputs: Vec<(&Prompt, &[String])> = items.iter().map(|x| (x.2.as_ref(), x.3.as_slice())).collect();
                let scores = prm.score_steps(&inputs, bs);
                scores.map(|s| (items, s))
            })
            .await
            .map_err(|e| self.fail(e))?
            .map_err(|e| self.fail(e))?;
            let rows: Vec<(&str, i32, usize, &str, f64)> =
                items.iter().zip(&scores).flat_map(|(it, sc)| sc.iter().enumerate().map(move |(j, &v)| (it.0.as_str(), it.1, j, it.3[j].as_str(), v))).collect();
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
        .boxed()
    }
}
