//! The `model_init` operator: a fresh policy checkpoint — a BPE tokenizer trained on the corpus
//! stage's text and seeded random weights of a preset size.

use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::model::policy::Policy;
use crate::model::tiny_vlm::Config;
use crate::model::tokenizer::TextTokenizer;
use crate::spec::ModelInitSpec;
use arrow_schema::SchemaRef;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};

pub struct ModelInitOp {
    spec: ModelInitSpec,
}

impl ModelInitOp {
    pub fn new(spec: &ModelInitSpec) -> Self {
        Self { spec: spec.clone() }
    }
}

impl Operator for ModelInitOp {
    fn name(&self) -> &'static str {
        "model_init"
    }

    fn fingerprint_extra<'a>(&'a self, _iteration: u32) -> BoxFuture<'a, Result<Value>> {
        async move { Ok(json!({})) }.boxed()
    }

    fn output_schema<'a>(&'a self, _ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<Option<SchemaRef>>> {
        async move { Ok(None) }.boxed()
    }

    fn execute<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<OpOutput>> {
        async move {
            let schema = ctx
                .input_schemas
                .iter()
                .find(|(n, _)| *n == self.spec.corpus)
                .map(|(_, s)| s.clone())
                .ok_or_else(|| OpError::Invalid(format!("model_init: corpus `{}` has no rows", self.spec.corpus)))?;
            let cols: Vec<&str> = ["question", "gold_cot", "response", "answer"].into_iter().filter(|c| schema.field_with_name(c).is_ok()).collect();
            if !cols.contains(&"question") {
                return Err(OpError::Invalid(format!("model_init: corpus `{}` has no `question` column", self.spec.corpus)));
            }
            let q =
                format!("SELECT {} FROM \"{}\"", cols.iter().map(|c| format!("CAST({c} AS VARCHAR) AS {c}")).collect::<Vec<_>>().join(", "), self.spec.corpus);
            let batches = crate::sql::query(&ctx.session, &q).await?.collect().await?;
            let mut texts: Vec<String> = Vec::new();
            for b in &batches {
                for c in b.columns() {
                    texts.extend(super::strings(c)?.iter().flatten().map(str::to_string));
                }
            }
            let tokenizer = TextTokenizer::train(texts.iter(), self.spec.vocab_size).map_err(|e| OpError::Invalid(e.to_string()))?;
            let mut cfg = Config::preset(&self.spec.size, self.spec.vocab_size).expect("validated size");
            if let Some(over) = &self.spec.config {
                cfg = cfg.with_overrides(over).map_err(|e| OpError::Invalid(format!("model_init `config`: {e}")))?;
            }
            cfg.vocab_size = cfg.vocab_size.max(tokenizer.vocab_size());
            let policy = Policy::new_random(&cfg, tokenizer, ctx.pipeline.seed, &crate::model::device()).map_err(|e| OpError::Invalid(e.to_string()))?;
            eprintln!("  model_init: {} parameters, vocabulary {}", policy.num_params(), policy.tokenizer.vocab_size());
            let files = policy.to_files().map_err(|e| OpError::Invalid(e.to_string()))?;
            let dir = format!("{}/{}", ctx.files_dir(), ctx.attempt);
            Ok(OpOutput::Files(crate::model::checkpoint::write(ctx.store, &dir, files).await?))
        }
        .boxed()
    }
}
