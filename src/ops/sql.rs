//! The `sql` operator: a query from `sql/NAME.sql` or inline, with `${…}` parameters, over the
//! stage's input tables; its result streams into the stage's table.

use super::{OpContext, OpError, OpOutput, Operator, Result};
use crate::spec::{Pipeline, SqlSource, StageCheck, StageSpec};
use crate::sql::params::{substitute, ParamSet};
use arrow_schema::SchemaRef;
use futures::future::BoxFuture;
use futures::FutureExt;
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// sql: a DataFusion query (a file under `sql/` or inline) over the stages it names.
#[derive(Debug, Clone, serde::Serialize, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSpec {
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

impl super::OpConfig for SqlSpec {
    fn check(&self, c: &mut StageCheck) {
        c.sql(&SqlSource { sql: self.sql.clone(), query: self.query.clone() });
    }

    fn build(&self, pipeline: &Pipeline, stage: &StageSpec) -> Result<Box<dyn Operator>> {
        Ok(Box::new(SqlOp::new(pipeline, stage)?))
    }
}

pub struct SqlOp {
    stage: String,
    template: String,
    /// Parameters per iteration are made on demand from these.
    params: Box<dyn Fn(u32) -> ParamSet + Send + Sync>,
}

impl SqlOp {
    pub fn new(pipeline: &Pipeline, stage: &StageSpec) -> Result<Self> {
        let template = stage.sql_template.clone().ok_or_else(|| OpError::Invalid(format!("stage {} has no SQL", stage.id)))?;
        let p = pipeline.clone();
        let s = stage.clone();
        Ok(Self { stage: stage.id.clone(), template, params: Box::new(move |it| p.params_for(Some(&s), it)) })
    }

    /// The query text at an iteration.
    pub fn query_at(&self, iteration: u32) -> Result<String> {
        substitute(&self.template, &(self.params)(iteration)).map_err(|e| OpError::Invalid(format!("stage {}: {e}", self.stage)))
    }
}

impl Operator for SqlOp {

    fn fingerprint_extra<'a>(&'a self, iteration: u32) -> BoxFuture<'a, Result<Value>> {
        async move { Ok(json!({ "query": self.query_at(iteration)? })) }.boxed()
    }

    fn output_schema<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<Option<SchemaRef>>> {
        async move {
            let df = crate::sql::query(&ctx.session, &self.query_at(ctx.iteration)?).await?;
            Ok(Some(df.schema().inner().clone()))
        }
        .boxed()
    }

    fn execute<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<OpOutput>> {
        async move {
            let q = self.query_at(ctx.iteration)?;
            let df = crate::sql::query(&ctx.session, &q).await.map_err(|e| {
                let have: BTreeMap<&str, ()> = ctx.input_schemas.iter().map(|(n, _)| (n.as_str(), ())).collect();
                OpError::Invalid(format!(
                    "{e}\n  (tables this stage can read at iteration {}: {})",
                    ctx.iteration,
                    have.keys().cloned().collect::<Vec<_>>().join(", ")
                ))
            })?;
            Ok(OpOutput::Table(df.execute_stream().await?))
        }
        .boxed()
    }
}
