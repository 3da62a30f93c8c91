//! `generate` with `openai: {base_url, model}`: rollouts from an OpenAI-compatible endpoint.
//! One request per rollout (n = 1, seed = the rollout's seed, images as data URLs), at most
//! `concurrency` in flight; a request that still fails after its retries becomes a row with
//! finish_reason `error` and a row of the side table `generate_errors`, not a failed stage.

use super::generate::{rollouts_schema, GenerateOp};
use super::{OpContext, OpOutput, Result};
use crate::model::generate::rollout_seed;
use crate::openai::client::Client;
use crate::openai::{user_message, ChatRequest};

use arrow::array::{Array, AsArray, Float64Array, Int32Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use datafusion::physical_plan::stream::RecordBatchStreamAdapter;
use futures::StreamExt;
use std::sync::Arc;
use std::time::Duration;

/// The `openai` generate backend: one request per rollout (n = 1, seed = the rollout's seed).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct OpenAiBackend {
    /// e.g. `http://127.0.0.1:8000/v1`.
    pub base_url: String,
    /// The served model's name.
    pub model: String,
    /// Environment variable holding the API key (none sent when unset or empty).
    #[serde(default = "default_api_key_env")]
    pub api_key_env: String,
    /// Requests in flight at once.
    #[serde(default = "default_concurrency")]
    pub concurrency: usize,
    /// Retries of a transient failure (connection, 408, 429, 5xx), with backoff 0.5 s, 1 s, 2 s, ….
    #[serde(default = "default_retries")]
    pub retries: u32,
    #[serde(default = "default_timeout_s")]
    pub timeout_s: u64,
}

fn default_api_key_env() -> String {
    "OPENAI_API_KEY".into()
}
fn default_concurrency() -> usize {
    8
}
fn default_retries() -> u32 {
    3
}
fn default_timeout_s() -> u64 {
    600
}

pub async fn execute(op: &GenerateOp, ctx: &OpContext<'_>, o: &OpenAiBackend) -> Result<OpOutput> {
    let params = op.sampling(ctx).await?;
    let key = std::env::var(&o.api_key_env).ok().filter(|k| !k.is_empty());
    let client = Client::new(&o.base_url, key, o.retries, Duration::from_secs(o.timeout_s.max(1))).map_err(|e| op.fail(e))?;
    let filter = ctx.this_iteration(&op.spec.prompts, "").map(|c| format!(" WHERE {c}")).unwrap_or_default();
    let q = format!(
        "SELECT CAST(prompt_id AS VARCHAR) AS prompt_id, CAST(question AS VARCHAR) AS question, images FROM \"{}\"{filter} ORDER BY prompt_id",
        op.spec.prompts
    );
    let batches = crate::sql::query(&ctx.session, &q)
        .await
        .map_err(|e| op.fail(format!("prompts `{}` need prompt_id, question, images: {e}", op.spec.prompts)))?
        .collect()
        .await?;
    let (seed, iteration, k) = (ctx.pipeline.seed, ctx.iteration, op.spec.samples);
    let mut jobs: Vec<(String, u32, u64, Arc<serde_json::Value>)> = Vec::new();
    for b in &batches {
        let (ids, qs, imgs) = (super::strings(b.column(0))?, super::strings(b.column(1))?, b.column(2));
        for i in 0..b.num_rows() {
            let id = ids.value(i).to_string();
            let images: Vec<Vec<u8>> = if imgs.is_null(i) {
                vec![]
            } else {
                let list = imgs.as_list::<i32>().value(i);
                match list.as_struct().column_by_name("bytes") {
                    Some(c) => {
                        let c = c.as_binary::<i32>();
                        (0..c.len()).filter(|&j| !c.is_null(j)).map(|j| c.value(j).to_vec()).collect()
                    }
                    None => vec![],
                }
            };
            let message = Arc::new(user_message(&images, qs.value(i)));
            for s in 0..k {
                jobs.push((id.clone(), s, rollout_seed(seed, iteration, &id, s), message.clone()));
            }
        }
    }
    let total = jobs.len();
    let started = std::time::Instant::now();
    eprintln!("  generate: {total} requests to {} (model {}, {} at a time)", o.base_url, o.model, o.concurrency);
    let results: Vec<_> = futures::stream::iter(jobs.into_iter().map(|(id, s, rseed, message)| {
        let client = client.clone();
        let req = ChatRequest {
            model: Some(o.model.clone()),
            messages: vec![(*message).clone()],
            n: Some(1),
            temperature: Some(params.temperature),
            top_p: (params.top_p < 1.0).then_some(params.top_p),
            top_k: (params.top_k > 0).then_some(params.top_k as i64),
            max_tokens: Some(params.max_new_tokens),
            max_completion_tokens: None,
            seed: Some(rseed),
            logprobs: Some(true),
            stream: None,
        };
        async move { (id, s, rseed, client.complete(&req).await) }
    }))
    .buffered(o.concurrency.max(1))
    .collect()
    .await;
    let (mut rows, mut errs) = (Vec::with_capacity(total), Vec::new());
    for (id, s, rseed, r) in results {
        match r {
            Ok(mut choices) if !choices.is_empty() => {
                let c = choices.swap_remove(0);
                rows.push((id, s, rseed, c.text, c.tokens.unwrap_or(0) as i32, c.logprob.unwrap_or(f64::NAN), c.finish_reason));
            }
            Ok(_) => {
                errs.push((id.clone(), s, 1, "response had no choices".to_string()));
                rows.push((id, s, rseed, String::new(), 0, f64::NAN, "error".to_string()));
            }
            Err(f) => {
                errs.push((id.clone(), s, f.attempts, f.error));
                rows.push((id, s, rseed, String::new(), 0, f64::NAN, "error".to_string()));
            }
        }
    }
    eprintln!("  generate: {total} rollouts in {:.1}s, {} failed", started.elapsed().as_secs_f64(), errs.len());
    if !errs.is_empty() {
        eprintln!("  generate: first failure: {} sample {}: {}", errs[0].0, errs[0].1, errs[0].3);
        let schema = Arc::new(Schema::new(vec![
            Field::new("prompt_id", DataType::Utf8, false),
            Field::new("sample_idx", DataType::Int32, false),
            Field::new("attempts", DataType::Int32, false),
            Field::new("error", DataType::Utf8, false),
        ]));
        ctx.side.push(
            "generate_errors",
            RecordBatch::try_new(
                schema,
                vec![
                    Arc::new(StringArray::from_iter_values(errs.iter().map(|e| e.0.clone()))),
                    Arc::new(Int32Array::from_iter_values(errs.iter().map(|e| e.1 as i32))),
                    Arc::new(Int32Array::from_iter_values(errs.iter().map(|e| e.2 as i32))),
                    Arc::new(StringArray::from_iter_values(errs.iter().map(|e| e.3.clone()))),
                ],
            )?,
        );
    }
    let batch = RecordBatch::try_new(
        rollouts_schema(),
        vec![
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.0.clone()))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.1 as i32))),
            Arc::new(Float64Array::from(vec![params.temperature; rows.len()])),
            Arc::new(UInt64Array::from_iter_values(rows.iter().map(|r| r.2))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.3.clone()))),
            Arc::new(Int32Array::from_iter_values(rows.iter().map(|r| r.4))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.5))),
            Arc::new(StringArray::from_iter_values(rows.iter().map(|r| r.6.clone()))),
        ],
    )?;
    let stream = futures::stream::iter(vec![Ok(batch)]);
    Ok(OpOutput::Table(Box::pin(RecordBatchStreamAdapter::new(rollouts_schema(), stream))))
}
