//! The `model_init` operator: a fresh policy checkpoint — a BPE tokenizer trained on the corpus
//! stage's text and seeded random weights of a preset size.

use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::model::policy::Policy;
use crate::model::tiny_vlm::Config;
use crate::model::tokenizer::TextTokenizer;
use crate::spec::{Pipeline, StageCheck, StageSpec};
use arrow_schema::SchemaRef;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};

/// model_init: a fresh policy checkpoint — a BPE tokenizer trained on the corpus text and
/// seeded random weights of a preset size.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelInitSpec {
    /// Stage whose text columns (`question`, and `gold_cot` / `response` when present) train
    /// the tokenizer.
    pub corpus: String,
    /// Preset: tiny (~1M parameters), small (~5M), base (~19M).
    #[serde(default = "default_preset")]
    pub size: String,
    #[serde(default = "default_vocab")]
    pub vocab_size: usize,
    /// Overrides of the preset's config.json keys, merged into it (nested objects merge key
    /// by key), e.g. `{vision_config: {patch_size: 4}}`.
    #[serde(default)]
    pub config: Option<serde_json::Value>,
}

fn default_preset() -> String {
    "tiny".into()
}
fn default_vocab() -> usize {
    384
}

impl super::OpConfig for ModelInitSpec {
    fn check(&self, c: &mut StageCheck) {
        if Config::preset(&self.size, self.vocab_size).is_none() {
            c.error("size", format!("unknown size `{}` (tiny, small, base)", self.size));
        }
        c.reads("corpus", &self.corpus);
    }

    fn default_scope(&self) -> crate::spec::Scope {
        crate::spec::Scope::Setup
    }

    fn build(&self, _: &Pipeline, _: &StageSpec) -> Result<Box<dyn Operator>> {
        Ok(Box::new(ModelInitOp::new(self)))
    }
}

pub struct ModelInitOp {
    spec: ModelInitSpec,
}

impl ModelInitOp {
    pub fn new(spec: &ModelInitSpec) -> Self {
        Self { spec: spec.clone() }
    }
}

impl Operator for ModelInitOp {

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
