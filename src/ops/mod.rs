//! The operator contract: an operator turns its input tables (record-batch streams) into an
//! output table or files. One operator per file; `build` makes them from stage specs.

pub mod models;

/// Every operator: the name a stage's `op:` gives, its module, and its config type. A new
/// operator is a file (its config, its checks, the operator) and one line here.
///
/// `shard_by: ...` marks a row-parallel operator, which a sharded stage (`shards: N`) splits by
/// prompt_id (`crate::shard`): by its driving input, the stage its config key names
/// (`ShardBy::Input`), or by the rows it makes itself (`ShardBy::Own`: import).
macro_rules! registry {
    ($($name:literal => $module:ident :: $config:ident $(, shard_by: $by:expr)?;)*) => {
        $(pub mod $module;)*
        pub const REGISTRY: &[OpKind] = &[$(OpKind::of::<$module::$config>($name, registry!(@by $($by)?))),*];
    };
    (@by $by:expr) => { Some($by) };
    (@by) => { None };
}

registry! {
    "import" => import::ImportSpec, shard_by: ShardBy::Own;
    "sql" => sql::SqlSpec;
    "verify" => verify::VerifySpec, shard_by: ShardBy::Input("rollouts");
    "model_init" => model_init::ModelInitSpec;
    "train" => train::TrainSpec;
    "train_external" => train_external::TrainExternalSpec;
    "generate" => generate::GenerateSpec, shard_by: ShardBy::Input("prompts");
    "eval" => eval::EvalSpec, shard_by: ShardBy::Input("prompts");
    "prm_label" => prm_label::PrmLabelSpec, shard_by: ShardBy::Input("rollouts");
    "prm_score" => prm_score::PrmScoreSpec, shard_by: ShardBy::Input("rollouts");
}

use crate::spec::{Decoder, Pipeline, Scope, Seg, StageCheck, StageSpec};
use crate::store::{FileEntry, Manifest, RunStore, StoreError};
use arrow::array::RecordBatch;
use arrow_schema::SchemaRef;
use datafusion::execution::SendableRecordBatchStream;
use datafusion::prelude::SessionContext;
use futures::future::BoxFuture;
use serde_json::Value;
use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    ObjectStore(#[from] object_store::Error),
    #[error(transparent)]
    Interrupted(#[from] crate::train::epochs::Interrupted),
    #[error("{0}")]
    Invalid(String),
}

pub type Result<T, E = OpError> = std::result::Result<T, E>;

/// What an operator sees when it runs: its stage, the iteration, the store, and a SQL
/// session where each input is registered as a table holding the iterations it may read.
pub struct OpContext<'a> {
    pub pipeline: &'a Pipeline,
    pub stage: &'a StageSpec,
    pub iteration: u32,
    pub store: &'a RunStore,
    pub session: SessionContext,
    /// Input tables by stage id with their schemas (absent: no committed rows to read yet).
    pub input_schemas: Vec<(String, SchemaRef)>,
    /// The committed manifests of each input at the iterations this stage may read (how an
    /// operator finds files such as the previous iteration's checkpoint).
    pub input_manifests: Vec<(String, Vec<Manifest>)>,
    /// Small side tables the operator produces besides its output (e.g. `quarantine`); they
    /// are committed with the stage and queryable under their name across all stages.
    pub side: SideTables,
    /// Unique id of this attempt: files an operator writes go below `files_dir()/attempt`.
    pub attempt: String,
    /// Raised when the run is interrupted: long loops stop at their next step.
    pub cancel: crate::cancel::CancelToken,
    /// The shard this process computes, when the stage is sharded.
    pub shard: Option<crate::shard::Shard>,
}

/// One side table's schema and batches.
type SideTable = (SchemaRef, Vec<RecordBatch>);

/// Side tables collected in memory while an operator runs.
#[derive(Clone, Default)]
pub struct SideTables(Arc<Mutex<BTreeMap<String, SideTable>>>);

impl SideTables {
    pub fn push(&self, name: &str, batch: RecordBatch) {
        let mut m = self.0.lock().expect("side tables");
        m.entry(name.to_string()).or_insert_with(|| (batch.schema(), Vec::new())).1.push(batch);
    }

    pub fn take(&self) -> BTreeMap<String, (SchemaRef, Vec<RecordBatch>)> {
        std::mem::take(&mut *self.0.lock().expect("side tables"))
    }
}

impl OpContext<'_> {
    /// Streams one input table.
    pub async fn input(&self, stage: &str) -> Result<SendableRecordBatchStream> {
        Ok(self.session.table(stage).await?.execute_stream().await?)
    }

    /// SQL condition selecting this iteration's rows of an input: `alias.iteration = N` for an
    /// iteration stage, None for a setup stage (all its rows are iteration 0).
    pub fn this_iteration(&self, stage: &str, alias: &str) -> Option<String> {
        let prefix = if alias.is_empty() { String::new() } else { format!("{alias}.") };
        (self.pipeline.stage(stage).map(|s| s.scope) == Some(crate::spec::Scope::Iteration)).then(|| format!("{prefix}iteration = {}", self.iteration))
    }

    /// Folder of the store (relative path) where a files-producing operator writes.
    pub fn files_dir(&self) -> String {
        RunStore::files_dir(&self.stage.id, self.iteration)
    }
}

/// An operator's result.
pub enum OpOutput {
    /// A table, written by the engine as Parquet (with an `iteration` column) as it streams.
    Table(SendableRecordBatchStream),
    /// Files the operator wrote below [`OpContext::files_dir`] (e.g. a checkpoint).
    Files(Vec<FileEntry>),
}

pub trait Operator: Send + Sync {
    /// Bump when the operator's output changes for the same spec, so fingerprints change.
    fn version(&self) -> u32 {
        1
    }

    /// What, besides the stage spec, the seed and the inputs, decides the output at this
    /// iteration (the query after parameter substitution, the dataset files' metadata, …).
    fn fingerprint_extra<'a>(&'a self, iteration: u32) -> BoxFuture<'a, Result<Value>>;

    /// The output table's schema given the inputs in `ctx` (before the engine adds
    /// `iteration`); None for operators that output files.
    fn output_schema<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<Option<SchemaRef>>>;

    fn execute<'a>(&'a self, ctx: &'a OpContext<'a>) -> BoxFuture<'a, Result<OpOutput>>;
}

/// The SQL that reads a `train` stage's rows (question, images, response, and the labels of a
/// PRM) and what they must have, in a total order — the same question and response can come
/// with different images or labels — so that the seeded shuffle sees the same sequence in every
/// run.
pub fn training_rows_query(data: &str, filter: &str, prm: bool) -> (String, &'static str) {
    let (labels, tie, needs) = if prm {
        (", labels", ", array_to_string(labels, ',')", "question, images, response and labels (one per step)")
    } else {
        ("", "", "question, images and response")
    };
    let q = format!(
        "SELECT CAST(question AS VARCHAR) AS question, images, CAST(response AS VARCHAR) AS response{labels} FROM \"{data}\"{filter} ORDER BY question, response, images[1]['bytes']{tie}"
    );
    (q, needs)
}

/// A column of any string type as a plain `Utf8` array (SQL `VARCHAR` is `Utf8View`).
pub fn strings(col: &arrow::array::ArrayRef) -> Result<arrow::array::StringArray> {
    use arrow::array::AsArray;
    Ok(arrow::compute::cast(col, &arrow_schema::DataType::Utf8)?.as_string::<i32>().clone())
}

/// A stage's operator settings (the keys besides `id`, `op`, `inputs`, …), decoded from the
/// spec by serde: they check themselves, declare the stages they read, and build the operator.
pub trait OpConfig: std::fmt::Debug + Send + Sync {
    /// What serde cannot check (values, combinations), recorded on `c` with their keys; and the
    /// stages read (`c.reads…`), besides those the stage lists under `inputs`.
    fn check(&self, c: &mut StageCheck);

    /// The scope of a stage that does not give `scope:`.
    fn default_scope(&self) -> Scope {
        Scope::Iteration
    }

    /// The operator of `stage` (whose `op` is this config).
    fn build(&self, pipeline: &Pipeline, stage: &StageSpec) -> Result<Box<dyn Operator>>;
}

/// Decodes a stage's op keys into its operator's config.
pub type DecodeFn = fn(&mut Decoder, &[Seg], &str, serde_json::Value) -> Option<Arc<dyn OpConfig>>;

/// An entry of [`REGISTRY`]: an operator's name and how its config is decoded.
pub struct OpKind {
    pub name: &'static str,
    /// Decodes the stage's op keys (at `at` in the spec, for op `name`), recording errors on
    /// the decoder.
    pub decode: DecodeFn,
    /// Row-parallel operators: how a shard's rows are chosen.
    pub shard_by: Option<ShardBy>,
}

/// How the rows of a row-parallel operator are split among shards (by `shard_of(prompt_id)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ShardBy {
    /// The stage its config key names is the driving input: the runner gives each shard a view
    /// of that table holding its prompts.
    Input(&'static str),
    /// The operator makes its rows itself (import) and keeps its shard's, from
    /// [`OpContext::shard`].
    Own,
}

impl OpKind {
    pub const fn of<C: OpConfig + serde::de::DeserializeOwned + 'static>(name: &'static str, shard_by: Option<ShardBy>) -> Self {
        OpKind { name, decode: decode_config::<C>, shard_by }
    }

    /// The registered operator of this name.
    pub fn find(name: &str) -> Option<&'static OpKind> {
        REGISTRY.iter().find(|k| k.name == name)
    }

    /// Every operator's name, in registry order.
    pub fn names() -> Vec<&'static str> {
        REGISTRY.iter().map(|k| k.name).collect()
    }
}

fn decode_config<C: OpConfig + serde::de::DeserializeOwned + 'static>(
    dec: &mut Decoder,
    at: &[Seg],
    op: &str,
    value: serde_json::Value,
) -> Option<Arc<dyn OpConfig>> {
    dec.decode_op::<C>(at, op, value).map(|c| Arc::new(c) as Arc<dyn OpConfig>)
}

/// Batch size of the model operators when the spec gives none.
pub(crate) fn default_batch() -> usize {
    32
}

/// Builds the operator of a stage.
pub fn build(pipeline: &Pipeline, stage: &StageSpec) -> Result<Box<dyn Operator>> {
    stage.op.build(pipeline, stage)
}
