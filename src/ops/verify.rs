//! The `verify` operator: rollouts → verified. Joins each rollout with its prompt, extracts the
//! final answer (`pred`), scores it by MathVista's rules (`correct`) and, for the synthetic
//! task, asks the step oracle whether the reasoning is sound (`steps_ok`).

use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::spec::{Pipeline, StageCheck, StageSpec};
use arrow_schema::SchemaRef;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};

/// verify: rollouts joined with their prompts → verified (pred, correct, steps_ok).
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    /// Stage with prompt_id, sample_idx, response.
    pub rollouts: String,
    /// Stage with the prompts (prompt_id, answer, answer_type, precision, choices; scene and
    /// meta for the synthetic task's step oracle).
    pub prompts: String,
}

impl super::OpConfig for VerifySpec {
    fn check(&self, c: &mut StageCheck) {
        c.reads("rollouts", &self.rollouts);
        c.reads("prompts", &self.prompts);
    }

    fn build(&self, _: &Pipeline, _: &StageSpec) -> Result<Box<dyn Operator>> {
        Ok(Box::new(VerifyOp::new(self)))
    }
}

pub struct VerifyOp {
    spec: VerifySpec,
}

impl VerifyOp {
    pub fn new(spec: &VerifySpec) -> Self {
        Self { spec: spec.clone() }
    }

    /// The query: rollouts of this iteration (all rows of a setup stage) with their prompt.
    fn query(&self, ctx: &OpContext<'_>) -> Result<String> {
        let schema = |name: &str| {
            ctx.input_schemas
                .iter()
                .find(|(n, _)| n == name)
                .map(|(_, s)| s.clone())
                .ok_or_else(|| OpError::Invalid(format!("verify: input `{name}` has no committed rows yet")))
        };
        let prompts = schema(&self.spec.prompts)?;
        let rollouts = schema(&self.spec.rollouts)?;
        for (table, s, cols) in [
            (&self.spec.rollouts, &rollouts, &["prompt_id", "response"][..]),
            (&self.spec.prompts, &prompts, &["prompt_id", "answer", "answer_type", "precision", "choices"][..]),
        ] {
            for c in cols {
                if s.field_with_name(c).is_err() {
                    return Err(OpError::Invalid(format!("verify: table `{table}` has no column `{c}`")));
                }
            }
        }
        let synth = prompts.field_with_name("scene").is_ok() && prompts.field_with_name("meta").is_ok();
        let at = |stage: &str, alias: &str| ctx.this_iteration(stage, alias).map(|c| format!(" AND {c}")).unwrap_or_default();
        let cols: Vec<String> = rollouts
            .fields()
            .iter()
            .filter(|f| !["iteration", "pred", "correct", "steps_ok"].contains(&f.name().as_str()))
            .map(|f| format!("r.\"{}\"", f.name()))
            .collect();
        let steps = if synth { ", synth_steps_ok(p.scene, p.meta, r.response) AS steps_ok" } else { "" };
        Ok(format!(
            "SELECT {cols}, extract_answer(r.response) AS pred, \
             coalesce(answer_match(extract_answer(r.response), p.answer, p.answer_type, p.precision, p.choices), false) AS correct{steps} \
             FROM \"{r}\" r JOIN \"{p}\" p ON r.prompt_id = p.prompt_id{rf}{pf}",
            cols = cols.join(", "),
            r = self.spec.rollouts,
            p = self.spec.prompts,
            rf = at(&self.spec.rollouts, "r"),
            pf = at(&self.spec.prompts, "p"),
        ))
    }
}

impl Operator for VerifyOp {

    fn fingerprint_extra<'a>(&'a self, _iteration: u32) -> BoxFuture<'a, Result<Value>> {
        async move { Ok(json!({})) }.boxed()
    }

    fn output_schema<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<Option<SchemaRef>>> {
        async move {
            let df = crate::sql::query(&ctx.session, &self.query(ctx)?).await?;
            Ok(Some(df.schema().inner().clone()))
        }
        .boxed()
    }

    fn execute<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<OpOutput>> {
        async move {
            let df = crate::sql::query(&ctx.session, &self.query(ctx)?).await?;
            Ok(OpOutput::Table(df.execute_stream().await?))
        }
        .boxed()
    }
}
