//! The YAML pipeline spec: typed structs, `--set` overrides, and a validation pass that
//! reports every error at once with its YAML path and line/column.

pub mod yaml;
mod decode;

use crate::sql::params::{substitute, ParamSet};
use decode::Decoder;
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sha2::{Digest, Sha256};
use std::collections::{BTreeMap, HashMap};
use std::fmt;
use std::path::{Path, PathBuf};
pub use yaml::{Origin, Seg, YNode};

/// One problem in a spec: where it is and what is wrong.
#[derive(Debug, Clone)]
pub struct SpecError {
    /// Dotted YAML path, e.g. `stages.rollouts.samples` (stages are named by their id).
    pub path: String,
    pub origin: Origin,
    pub message: String,
}

/// All problems found in one spec file.
#[derive(Debug, thiserror::Error)]
pub struct SpecErrors {
    pub file: String,
    pub errors: Vec<SpecError>,
}

impl fmt::Display for SpecErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "{}: {} error(s) in pipeline spec", self.file, self.errors.len())?;
        for e in &self.errors {
            let at = match &e.origin {
                Origin::File { line, column } => format!("{}:{line}:{column}", self.file),
                other => format!("{} ({other})", self.file),
            };
            let path = if e.path.is_empty() { "<root>" } else { &e.path };
            writeln!(f, "  {at}: {path}: {}", e.message)?;
        }
        Ok(())
    }
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
struct TopSpec {
    name: String,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    seed: u64,
    #[serde(default)]
    store: Option<String>,
    #[serde(default = "default_iterations")]
    iterations: u32,
    #[serde(default)]
    datasets: BTreeMap<String, DatasetSpec>,
    #[serde(default)]
    models: BTreeMap<String, ModelSpec>,
    #[serde(default)]
    params: BTreeMap<String, Scalar>,
    #[serde(default = "default_rows_per_file")]
    rows_per_file: u64,
    #[serde(default)]
    summary: Option<SqlSource>,
    #[serde(default)]
    stages: Vec<Value>,
}

fn default_iterations() -> u32 {
    1
}
fn default_rows_per_file() -> u64 {
    1_000_000
}

/// A scalar parameter usable as `${name}` in SQL.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
#[serde(untagged)]
pub enum Scalar {
    Int(i64),
    Float(f64),
    Bool(bool),
    Str(String),
}

impl fmt::Display for Scalar {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Scalar::Int(i) => write!(f, "{i}"),
            Scalar::Float(x) => write!(f, "{x}"),
            Scalar::Bool(b) => write!(f, "{b}"),
            Scalar::Str(s) => write!(f, "{s}"),
        }
    }
}

/// A dataset the pipeline imports: a file or folder, local or on an object store.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct DatasetSpec {
    /// Path relative to the pipeline file, absolute path, or URL (file://, memory://, s3://).
    pub path: String,
    /// Defaults to the file extension (folders: the extension of the files inside).
    #[serde(default)]
    pub format: Option<DatasetFormat>,
    /// mathvista, mathv360k, hf, verl: folder image paths are relative to (default: the
    /// dataset file's folder).
    #[serde(default)]
    pub images: Option<String>,
    /// mathvista, mathv360k, hf, verl: the `split` column's value.
    #[serde(default)]
    pub split: Option<String>,
    /// hf: source columns for id, question, answer, image, choices, answer_type, precision.
    #[serde(default)]
    pub columns: BTreeMap<String, String>,
}

#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum DatasetFormat {
    Parquet,
    Json,
    Jsonl,
    /// MathVista `testmini.json` + image folder → prompts.
    Mathvista,
    /// MathV360K conversations JSON + image folder → prompts.
    Mathv360k,
    /// Hugging Face `datasets` Parquet (Image columns as struct{bytes, path}) → prompts.
    Hf,
    /// verl Parquet (chat `prompt`, `images`, `reward_model.ground_truth`) → prompts.
    Verl,
}

impl DatasetFormat {
    pub fn from_extension(path: &str) -> Option<Self> {
        let lower = path.to_ascii_lowercase();
        if lower.ends_with(".parquet") {
            Some(Self::Parquet)
        } else if lower.ends_with(".jsonl") || lower.ends_with(".ndjson") {
            Some(Self::Jsonl)
        } else if lower.ends_with(".json") {
            Some(Self::Json)
        } else {
            None
        }
    }
    pub fn extension(self) -> &'static str {
        match self {
            Self::Parquet | Self::Hf | Self::Verl => ".parquet",
            Self::Json | Self::Mathvista | Self::Mathv360k => ".json",
            Self::Jsonl => ".jsonl",
        }
    }

    /// The importer of a prompts format, if this is one.
    pub fn prompts_format(self) -> Option<crate::data::import::Format> {
        use crate::data::import::Format;
        match self {
            Self::Mathvista => Some(Format::MathVista),
            Self::Mathv360k => Some(Format::MathV360K),
            Self::Hf => Some(Format::Hf),
            Self::Verl => Some(Format::Verl),
            _ => None,
        }
    }
}

/// A model the pipeline uses (filled in by the model issues; for now a path and a config).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelSpec {
    #[serde(default)]
    pub path: Option<String>,
    #[serde(default)]
    pub config: Option<BTreeMap<String, Value>>,
}

/// SQL given by name (`sql/NAME.sql`) or inline.
#[derive(Debug, Clone, Serialize, Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub struct SqlSource {
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

/// When a stage runs: once before the iterations (stored as iteration 0) or in every iteration.
#[derive(Debug, Clone, Copy, Serialize, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum Scope {
    Setup,
    Iteration,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
struct StageCommon {
    id: String,
    op: String,
    #[serde(default)]
    scope: Option<Scope>,
    #[serde(default)]
    inputs: Vec<String>,
    #[serde(default)]
    description: Option<String>,
    #[serde(default)]
    params: BTreeMap<String, Scalar>,
}

const COMMON_KEYS: &[&str] = &["id", "op", "scope", "inputs", "description", "params"];

/// An input of a stage: another stage's table, either up to this iteration or only the
/// iterations before it (`name@prev`, which may point at a later stage without a cycle).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InputRef {
    pub stage: String,
    pub prev: bool,
}

impl fmt::Display for InputRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}{}", self.stage, if self.prev { "@prev" } else { "" })
    }
}

/// Operator-specific settings of a stage.
#[derive(Debug, Clone)]
pub enum OpSpec {
    Import(ImportSpec),
    Sql(SqlSpec),
    Verify(VerifySpec),
    ModelInit(ModelInitSpec),
    Train(TrainSpec),
    Generate(GenerateSpec),
    Eval(EvalSpec),
    PrmLabel(PrmLabelSpec),
    PrmScore(PrmScoreSpec),
}

impl OpSpec {
    pub fn name(&self) -> &'static str {
        match self {
            OpSpec::Import(_) => "import",
            OpSpec::Sql(_) => "sql",
            OpSpec::Verify(_) => "verify",
            OpSpec::ModelInit(_) => "model_init",
            OpSpec::Train(_) => "train",
            OpSpec::Generate(_) => "generate",
            OpSpec::Eval(_) => "eval",
            OpSpec::PrmLabel(_) => "prm_label",
            OpSpec::PrmScore(_) => "prm_score",
        }
    }
}

pub const OP_NAMES: &[&str] = &["import", "sql", "verify", "model_init", "train", "generate", "eval", "prm_label", "prm_score"];

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ImportSpec {
    /// Name of an entry in `datasets`.
    pub dataset: String,
}

/// model_init: a fresh policy checkpoint — a BPE tokenizer trained on the corpus text and
/// seeded random weights of a preset size.
#[derive(Debug, Clone, Serialize, Deserialize)]
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

/// train: SFT of a policy on (prompt, image, response) rows; outputs a checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TrainSpec {
    /// Stage with `question`, `images` and `response` columns (this iteration's rows).
    pub data: String,
    /// Stage holding the starting checkpoint (a model_init or a setup train stage).
    pub base: String,
    /// `last`: start from this stage's previous-iteration checkpoint when there is one
    /// (continuous / iterative RFT); `initial`: always from `base` (ReST-EM).
    #[serde(default = "default_init")]
    pub init: String,
    /// `continue`: keep the optimizer moments and scheduler position of the checkpoint started
    /// from; `reset`: a fresh optimizer.
    #[serde(default = "default_optimizer")]
    pub optimizer: String,
    #[serde(default = "default_epochs")]
    pub epochs: u32,
    #[serde(default = "default_micro")]
    pub micro_batch: usize,
    #[serde(default = "default_accum")]
    pub grad_accum: usize,
    pub schedule: crate::train::Schedule,
    #[serde(default)]
    pub adamw: crate::train::AdamWConfig,
    /// Global gradient-norm clip (none when absent).
    #[serde(default)]
    pub clip: Option<f64>,
    /// `sft`: token cross-entropy on the responses (a policy). `prm`: a process reward model,
    /// binary cross-entropy of each step's score against the `labels` column (one label in
    /// [0, 1] per step of `response`); a policy base gets a fresh score head. `regions`: vision
    /// pretraining on `images` and `region_labels` (g×g class ids per image, reading order).
    #[serde(default = "default_objective")]
    pub objective: String,
}

fn default_objective() -> String {
    "sft".into()
}

fn default_init() -> String {
    "last".into()
}
fn default_optimizer() -> String {
    "continue".into()
}
fn default_epochs() -> u32 {
    1
}
fn default_micro() -> usize {
    16
}
fn default_accum() -> usize {
    1
}

/// generate: K rollouts per prompt from a policy checkpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GenerateSpec {
    /// Stage with `prompt_id`, `question`, `images`.
    pub prompts: String,
    /// Checkpoint stages, most preferred first (e.g. `[train@prev, warmup]`): the newest
    /// committed checkpoint of the first one that has any is used.
    pub policy: Vec<String>,
    #[serde(default = "default_samples")]
    pub samples: u32,
    #[serde(default)]
    pub sampling: crate::model::generate::SamplingParams,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_samples() -> u32 {
    1
}
fn default_batch() -> usize {
    32
}

/// eval: greedy accuracy and Pass@K of a policy on a prompts stage → metrics rows.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EvalSpec {
    pub prompts: String,
    /// Checkpoint stages, most preferred first (as for generate).
    pub policy: Vec<String>,
    /// Value of the metrics' `split` column.
    pub split: String,
    /// Samples per prompt for Pass@K (0: greedy only).
    #[serde(default = "default_eval_k")]
    pub k: u32,
    /// Sampling of the K samples (the greedy pass uses temperature 0).
    #[serde(default)]
    pub sampling: crate::model::generate::SamplingParams,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
    /// Evaluate at most this many prompts (in prompt_id order).
    #[serde(default)]
    pub limit: Option<usize>,
}

fn default_eval_k() -> u32 {
    4
}

/// prm_label: Monte Carlo step labels of sampled responses — for every step prefix, the share
/// of `completions` continuations by the policy that reach the gold answer.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrmLabelSpec {
    /// Stage with prompt_id, sample_idx, response (this iteration's rows).
    pub rollouts: String,
    /// Stage with the prompts: prompt_id, question, images, answer, answer_type, precision, choices.
    pub prompts: String,
    /// Checkpoint stages of the sampling policy, most preferred first.
    pub policy: Vec<String>,
    /// Completions per step prefix (N).
    #[serde(default = "default_completions")]
    pub completions: u32,
    #[serde(default)]
    pub sampling: crate::model::generate::SamplingParams,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

fn default_completions() -> u32 {
    8
}

/// prm_score: one PRM score per reasoning step of each rollout → step_scores.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PrmScoreSpec {
    /// Stage with prompt_id, sample_idx, response (this iteration's rows).
    pub rollouts: String,
    /// Stage with prompt_id, question, images.
    pub prompts: String,
    /// Checkpoint stages of the process reward model, most preferred first.
    pub prm: Vec<String>,
    #[serde(default = "default_batch")]
    pub batch_size: usize,
}

/// verify: rollouts joined with their prompts → verified (pred, correct, steps_ok).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VerifySpec {
    /// Stage with prompt_id, sample_idx, response.
    pub rollouts: String,
    /// Stage with the prompts (prompt_id, answer, answer_type, precision, choices; scene and
    /// meta for the synthetic task's step oracle).
    pub prompts: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SqlSpec {
    #[serde(default)]
    pub sql: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

/// A validated stage.
#[derive(Debug, Clone)]
pub struct StageSpec {
    pub id: String,
    pub scope: Scope,
    /// Declared inputs plus, for SQL stages, the stages the query reads.
    pub inputs: Vec<InputRef>,
    pub description: Option<String>,
    pub params: BTreeMap<String, Scalar>,
    pub op: OpSpec,
    /// The op-specific keys as written (after overrides), hashed into the fingerprint.
    pub op_fields: Value,
    /// SQL stages: the query text with `${…}` parameters not yet substituted.
    pub sql_template: Option<String>,
}

/// A validated pipeline, ready to plan.
#[derive(Debug, Clone)]
pub struct Pipeline {
    /// Display name of the spec file (as given on the command line).
    pub file: String,
    /// Folder that relative paths in the spec are resolved against.
    pub base_dir: PathBuf,
    pub name: String,
    pub description: Option<String>,
    pub seed: u64,
    pub store: Option<String>,
    pub iterations: u32,
    pub datasets: BTreeMap<String, DatasetSpec>,
    pub models: BTreeMap<String, ModelSpec>,
    pub params: BTreeMap<String, Scalar>,
    pub rows_per_file: u64,
    pub summary: Option<String>,
    pub stages: Vec<StageSpec>,
    /// The effective spec (overrides applied) as YAML, frozen into the run store.
    pub frozen_yaml: String,
    /// sha256 of the effective spec.
    pub spec_hash: String,
}

impl Pipeline {
    pub fn stage(&self, id: &str) -> Option<&StageSpec> {
        self.stages.iter().find(|s| s.id == id)
    }

    /// Resolves a dataset path or URL against the pipeline folder.
    pub fn resolve_path(&self, p: &str) -> String {
        resolve_against(&self.base_dir, p)
    }

    /// The parameters visible to a stage's SQL at an iteration.
    pub fn params_for(&self, stage: Option<&StageSpec>, iteration: u32) -> ParamSet {
        let mut p = ParamSet::new();
        p.insert("iteration", iteration.to_string());
        p.insert("prev_iteration", iteration.saturating_sub(1).to_string());
        p.insert("iterations", self.iterations.to_string());
        p.insert("seed", self.seed.to_string());
        for (k, v) in &self.params {
            p.insert(k, v.to_string());
        }
        if let Some(s) = stage {
            p.insert("stage", s.id.clone());
            for (k, v) in &s.params {
                p.insert(k, v.to_string());
            }
        }
        p
    }
}

fn resolve_against(base: &Path, p: &str) -> String {
    if p.contains("://") || Path::new(p).is_absolute() {
        p.to_string()
    } else {
        base.join(p).to_string_lossy().into_owned()
    }
}

/// Loads, overrides and validates a pipeline file. `overrides` are `key.path=value` strings.
pub fn load(path: &Path, overrides: &[String]) -> Result<Pipeline, SpecErrors> {
    let file = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| SpecErrors {
        file: file.clone(),
        errors: vec![SpecError {
            path: String::new(),
            origin: Origin::Unknown,
            message: format!("cannot read pipeline file: {e}"),
        }],
    })?;
    let base = path.parent().map(Path::to_path_buf).unwrap_or_default();
    let base = if base.as_os_str().is_empty() { PathBuf::from(".") } else { base };
    load_str(&text, &file, &base, overrides)
}

/// Like [`load`], from text.
pub fn load_str(
    text: &str,
    file: &str,
    base_dir: &Path,
    overrides: &[String],
) -> Result<Pipeline, SpecErrors> {
    let fail = |path: &str, origin: Origin, message: String| SpecErrors {
        file: file.to_string(),
        errors: vec![SpecError { path: path.to_string(), origin, message }],
    };
    let mut root = yaml::parse(text).map_err(|(m, o)| fail("", o, format!("YAML syntax: {m}")))?;
    for ov in overrides {
        let Some((key, value)) = ov.split_once('=') else {
            return Err(fail(ov, Origin::Override(ov.clone()), "expected KEY=VALUE".into()));
        };
        let node = yaml::parse_override_value(value, ov)
            .map_err(|m| fail(key, Origin::Override(ov.clone()), m))?;
        root.set_path(key.trim(), node).map_err(|m| fail(key, Origin::Override(ov.clone()), m))?;
    }
    let mut v = Validator { dec: Decoder::new(&root), base_dir: base_dir.to_path_buf() };
    let pipeline = v.validate(&root, file);
    let mut errors = v.dec.into_errors();
    // In file order; overrides and errors without a position last.
    errors.sort_by_key(|e| match e.origin {
        Origin::File { line, column } => (0, line, column),
        _ => (1, 0, 0),
    });
    match pipeline {
        Some(p) if errors.is_empty() => Ok(p),
        _ => Err(SpecErrors { file: file.to_string(), errors }),
    }
}

struct Validator<'a> {
    dec: Decoder<'a>,
    base_dir: PathBuf,
}

impl Validator<'_> {
    fn validate(&mut self, root: &YNode, file: &str) -> Option<Pipeline> {
        let json = root.to_json();
        if !json.is_object() {
            self.dec.error(&[], "a pipeline spec is a mapping with name, stages, …");
            return None;
        }
        let top: TopSpec = self.dec.decode(&[], json.clone())?;
        if top.name.trim().is_empty() {
            self.dec.error(&[key("name")], "must not be empty");
        }
        if top.rows_per_file == 0 {
            self.dec.error(&[key("rows_per_file")], "must be at least 1");
        }

        // Stages: common keys, then the op's own keys.
        let mut stages: Vec<(usize, StageCommon, Option<OpSpec>, Value)> = Vec::new();
        for (i, raw) in top.stages.iter().enumerate() {
            let at = vec![key("stages"), Seg::Index(i)];
            let Some(obj) = raw.as_object() else {
                self.dec.error(&at, "a stage is a mapping with id, op, …");
                continue;
            };
            let common_json: serde_json::Map<String, Value> = obj
                .iter()
                .filter(|(k, _)| COMMON_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let op_json: serde_json::Map<String, Value> = obj
                .iter()
                .filter(|(k, _)| !COMMON_KEYS.contains(&k.as_str()))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            let Some(common) = self.dec.decode::<StageCommon>(&at, Value::Object(common_json)) else {
                continue;
            };
            let op_at: Vec<Seg> = at.clone();
            let op = match common.op.as_str() {
                "import" => self
                    .dec
                    .decode_op::<ImportSpec>(&op_at, "import", Value::Object(op_json.clone()), COMMON_KEYS)
                    .map(OpSpec::Import),
                "sql" => self
                    .dec
                    .decode_op::<SqlSpec>(&op_at, "sql", Value::Object(op_json.clone()), COMMON_KEYS)
                    .map(OpSpec::Sql),
                "verify" => self
                    .dec
                    .decode_op::<VerifySpec>(&op_at, "verify", Value::Object(op_json.clone()), COMMON_KEYS)
                    .map(OpSpec::Verify),
                "model_init" => self
                    .dec
                    .decode_op::<ModelInitSpec>(&op_at, "model_init", Value::Object(op_json.clone()), COMMON_KEYS)
                    .map(OpSpec::ModelInit),
                "train" => self
                    .dec
                    .decode_op::<TrainSpec>(&op_at, "train", Value::Object(op_json.clone()), COMMON_KEYS)
                    .map(OpSpec::Train),
                "generate" => self
                    .dec
                    .decode_op::<GenerateSpec>(&op_at, "generate", Value::Object(op_json.clone()), COMMON_KEYS)
                    .map(OpSpec::Generate),
                "eval" => self
                    .dec
                    .decode_op::<EvalSpec>(&op_at, "eval", Value::Object(op_json.clone()), COMMON_KEYS)
                    .map(OpSpec::Eval),
                "prm_label" => self
                    .dec
                    .decode_op::<PrmLabelSpec>(&op_at, "prm_label", Value::Object(op_json.clone()), COMMON_KEYS)
                    .map(OpSpec::PrmLabel),
                "prm_score" => self
                    .dec
                    .decode_op::<PrmScoreSpec>(&op_at, "prm_score", Value::Object(op_json.clone()), COMMON_KEYS)
                    .map(OpSpec::PrmScore),
                other => {
                    self.dec.error(
                        &[key("stages"), Seg::Index(i), key("op")],
                        format!("unknown op `{other}` (known ops: {})", OP_NAMES.join(", ")),
                    );
                    None
                }
            };
            stages.push((i, common, op, Value::Object(op_json)));
        }

        // Duplicate ids.
        let mut first_seen: HashMap<&str, usize> = HashMap::new();
        for (i, c, _, _) in &stages {
            if let Some(first) = first_seen.get(c.id.as_str()) {
                let first_origin = self.dec.origin(&[key("stages"), Seg::Index(*first), key("id")]);
                self.dec.error(
                    &[key("stages"), Seg::Index(*i), key("id")],
                    format!("duplicate stage id `{}` (first defined at {first_origin})", c.id),
                );
            } else {
                first_seen.insert(&c.id, *i);
            }
            if c.id.is_empty() || !c.id.chars().all(|ch| ch.is_ascii_alphanumeric() || ch == '_') {
                self.dec.error(
                    &[key("stages"), Seg::Index(*i), key("id")],
                    format!("stage id `{}` must be non-empty and use only letters, digits and _ (it is a SQL table name)", c.id),
                );
            }
        }
        let scopes: HashMap<String, Scope> = stages
            .iter()
            .map(|(_, c, op, _)| (c.id.clone(), c.scope.unwrap_or_else(|| default_scope(op.as_ref()))))
            .collect();

        // Per-stage checks: inputs, datasets, SQL.
        let mut out: Vec<StageSpec> = Vec::new();
        let global_params: BTreeMap<String, Scalar> = top.params.clone();
        for (i, common, op, op_json) in stages {
            let at = |k: &str| vec![key("stages"), Seg::Index(i), key(k)];
            let scope = scopes[&common.id];
            let mut inputs: Vec<InputRef> = Vec::new();
            for (j, raw) in common.inputs.iter().enumerate() {
                let path = vec![key("stages"), Seg::Index(i), key("inputs"), Seg::Index(j)];
                let (name, prev) = match raw.strip_suffix("@prev") {
                    Some(n) => (n.to_string(), true),
                    None => (raw.clone(), false),
                };
                if let Some(r) = self.check_input(&path, &common.id, scope, &name, prev, &scopes) {
                    if !inputs.contains(&r) {
                        inputs.push(r);
                    }
                }
            }
            let mut sql_template = None;
            if let Some(op) = &op {
                match op {
                    OpSpec::Import(imp) => {
                        if !top.datasets.contains_key(&imp.dataset) {
                            let known: Vec<&str> = top.datasets.keys().map(String::as_str).collect();
                            self.dec.error(
                                &at("dataset"),
                                format!("unknown dataset `{}` (datasets: {})", imp.dataset, list_or_none(&known)),
                            );
                        }
                    }
                    OpSpec::ModelInit(m) => {
                        if crate::model::tiny_vlm::Config::preset(&m.size, m.vocab_size).is_none() {
                            self.dec.error(&at("size"), format!("unknown size `{}` (tiny, small, base)", m.size));
                        }
                        if let Some(r) = self.check_input(&at("corpus"), &common.id, scope, &m.corpus, false, &scopes) {
                            inputs.push(r);
                        }
                    }
                    OpSpec::Train(t) => {
                        if !["last", "initial"].contains(&t.init.as_str()) {
                            self.dec.error(&at("init"), format!("init is `last` or `initial`, not `{}`", t.init));
                        }
                        if !["continue", "reset"].contains(&t.optimizer.as_str()) {
                            self.dec.error(&at("optimizer"), format!("optimizer is `continue` or `reset`, not `{}`", t.optimizer));
                        }
                        if !["sft", "prm", "regions"].contains(&t.objective.as_str()) {
                            self.dec.error(&at("objective"), format!("objective is `sft`, `prm` or `regions`, not `{}`", t.objective));
                        }
                        if t.micro_batch == 0 || t.grad_accum == 0 {
                            self.dec.error(&at("micro_batch"), "micro_batch and grad_accum must be at least 1");
                        }
                        for (field, name) in [("data", &t.data), ("base", &t.base)] {
                            if let Some(r) = self.check_input(&at(field), &common.id, scope, name, false, &scopes) {
                                if !inputs.contains(&r) {
                                    inputs.push(r);
                                }
                            }
                        }
                        if t.init == "last" && scope == Scope::Iteration {
                            inputs.push(InputRef { stage: common.id.clone(), prev: true });
                        }
                    }
                    OpSpec::Generate(_) | OpSpec::Eval(_) | OpSpec::PrmLabel(_) | OpSpec::PrmScore(_) => {
                        // tables read, then the list of checkpoint stages (most preferred first)
                        let (tables, (ck_field, ck)): (Vec<(&str, &String)>, (&str, &Vec<String>)) = match op {
                            OpSpec::Generate(g) => (vec![("prompts", &g.prompts)], ("policy", &g.policy)),
                            OpSpec::Eval(g) => (vec![("prompts", &g.prompts)], ("policy", &g.policy)),
                            OpSpec::PrmLabel(g) => (vec![("rollouts", &g.rollouts), ("prompts", &g.prompts)], ("policy", &g.policy)),
                            OpSpec::PrmScore(g) => (vec![("rollouts", &g.rollouts), ("prompts", &g.prompts)], ("prm", &g.prm)),
                            _ => unreachable!("matched above"),
                        };
                        for (field, name) in tables {
                            if let Some(r) = self.check_input(&at(field), &common.id, scope, name, false, &scopes) {
                                if !inputs.contains(&r) {
                                    inputs.push(r);
                                }
                            }
                        }
                        if ck.is_empty() {
                            self.dec.error(&at(ck_field), "name at least one checkpoint stage");
                        }
                        for (j, raw) in ck.iter().enumerate() {
                            let path = vec![key("stages"), Seg::Index(i), key(ck_field), Seg::Index(j)];
                            let (name, prev) = match raw.strip_suffix("@prev") {
                                Some(n) => (n.to_string(), true),
                                None => (raw.clone(), false),
                            };
                            if let Some(r) = self.check_input(&path, &common.id, scope, &name, prev, &scopes) {
                                if !inputs.contains(&r) {
                                    inputs.push(r);
                                }
                            }
                        }
                    }
                    OpSpec::Verify(v) => {
                        for (field, name) in [("rollouts", &v.rollouts), ("prompts", &v.prompts)] {
                            if let Some(r) = self.check_input(&at(field), &common.id, scope, name, false, &scopes) {
                                if !inputs.contains(&r) {
                                    inputs.push(r);
                                }
                            }
                        }
                    }
                    OpSpec::Sql(sql) => {
                        let src = SqlSource { sql: sql.sql.clone(), query: sql.query.clone() };
                        let field = if sql.query.is_some() { "query" } else { "sql" };
                        let stage_params = merged_params(&global_params, &common.params);
                        if let Some(text) = self.resolve_sql(&[key("stages"), Seg::Index(i)], &src) {
                            if let Some(tables) = self.check_sql(&at(field), &text, &stage_params, scope, &common.id) {
                                for t in tables {
                                    if inputs.iter().any(|r| r.stage == t) {
                                        continue;
                                    }
                                    if t == common.id {
                                        if scope == Scope::Setup {
                                            self.dec.error(&at(field), "a setup stage cannot read its own table");
                                        } else {
                                            inputs.push(InputRef { stage: t, prev: true });
                                        }
                                    } else if let Some(r) = self.check_input(&at(field), &common.id, scope, &t, false, &scopes) {
                                        inputs.push(r);
                                    }
                                }
                            }
                            sql_template = Some(text);
                        }
                    }
                }
            }
            if let Some(op) = op {
                out.push(StageSpec {
                    id: common.id,
                    scope,
                    inputs,
                    description: common.description,
                    params: common.params,
                    op,
                    op_fields: op_json,
                    sql_template,
                });
            }
        }

        self.check_cycles(&out);

        let summary = top.summary.as_ref().and_then(|s| {
            let text = self.resolve_sql(&[key("summary")], s)?;
            let params = merged_params(&global_params, &BTreeMap::new());
            let mut ps = ParamSet::new();
            for k in ["iteration", "prev_iteration", "iterations", "seed"] {
                ps.insert(k, "1".into());
            }
            for (k, v) in &params {
                ps.insert(k, v.to_string());
            }
            match substitute(&text, &ps) {
                Ok(q) => {
                    if let Err(e) = crate::sql::referenced_tables(&q) {
                        self.dec.error(&[key("summary")], e);
                    }
                }
                Err(e) => self.dec.error(&[key("summary")], e),
            }
            Some(text)
        });

        let frozen_yaml = serde_saphyr::to_string(&json).unwrap_or_else(|_| json.to_string());
        let spec_hash = hex::encode(Sha256::digest(json.to_string().as_bytes()));
        Some(Pipeline {
            file: file.to_string(),
            base_dir: self.base_dir.clone(),
            name: top.name,
            description: top.description,
            seed: top.seed,
            store: top.store,
            iterations: top.iterations,
            datasets: top.datasets,
            models: top.models,
            params: top.params,
            rows_per_file: top.rows_per_file,
            summary,
            stages: out,
            frozen_yaml,
            spec_hash,
        })
    }

    fn check_input(
        &mut self,
        path: &[Seg],
        me: &str,
        scope: Scope,
        name: &str,
        prev: bool,
        scopes: &HashMap<String, Scope>,
    ) -> Option<InputRef> {
        let Some(their) = scopes.get(name) else {
            let mut known: Vec<&str> = scopes.keys().map(String::as_str).collect();
            known.sort();
            self.dec.error(path, format!("stage `{me}` reads unknown stage `{name}` (stages: {})", list_or_none(&known)));
            return None;
        };
        if scope == Scope::Setup && *their == Scope::Iteration {
            self.dec.error(path, format!("setup stage `{me}` cannot read iteration stage `{name}`"));
            return None;
        }
        if prev && *their == Scope::Setup {
            self.dec.error(path, format!("`{name}@prev`: `{name}` is a setup stage; it has no previous iterations"));
            return None;
        }
        if name == me && !prev {
            self.dec.error(path, format!("stage `{me}` reads itself; write `{me}@prev` to read its earlier iterations"));
            return None;
        }
        Some(InputRef { stage: name.to_string(), prev })
    }

    fn resolve_sql(&mut self, at: &[Seg], src: &SqlSource) -> Option<String> {
        let mut p = at.to_vec();
        match (&src.sql, &src.query) {
            (Some(_), Some(_)) => {
                p.push(key("query"));
                self.dec.error(&p, "give either `sql` (a file under sql/) or `query` (inline), not both");
                None
            }
            (None, None) => {
                self.dec.error(at, "missing `sql: NAME` (for sql/NAME.sql) or `query: …` (inline SQL)");
                None
            }
            (None, Some(q)) => Some(q.clone()),
            (Some(name), None) => {
                p.push(key("sql"));
                match find_sql_file(&self.base_dir, name) {
                    Ok(path) => match std::fs::read_to_string(&path) {
                        Ok(t) => Some(t),
                        Err(e) => {
                            self.dec.error(&p, format!("cannot read {}: {e}", path.display()));
                            None
                        }
                    },
                    Err(m) => {
                        self.dec.error(&p, m);
                        None
                    }
                }
            }
        }
    }

    /// Substitutes parameters and parses the query; returns the stage tables it reads.
    fn check_sql(
        &mut self,
        at: &[Seg],
        text: &str,
        params: &BTreeMap<String, Scalar>,
        scope: Scope,
        id: &str,
    ) -> Option<Vec<String>> {
        let mut ps = ParamSet::new();
        let it = if scope == Scope::Setup { "0" } else { "1" };
        for k in ["iteration", "prev_iteration", "iterations", "seed"] {
            ps.insert(k, it.into());
        }
        ps.insert("stage", id.to_string());
        for (k, v) in params {
            ps.insert(k, v.to_string());
        }
        let q = match substitute(text, &ps) {
            Ok(q) => q,
            Err(e) => {
                self.dec.error(at, e);
                return None;
            }
        };
        match crate::sql::referenced_tables(&q) {
            Ok(t) => Some(t),
            Err(e) => {
                self.dec.error(at, e);
                None
            }
        }
    }

    fn check_cycles(&mut self, stages: &[StageSpec]) {
        let index: HashMap<&str, usize> = stages.iter().enumerate().map(|(i, s)| (s.id.as_str(), i)).collect();
        // 0 = unvisited, 1 = on stack, 2 = done
        let mut state = vec![0u8; stages.len()];
        let mut reported: Vec<Vec<String>> = Vec::new();
        fn dfs(
            u: usize,
            stages: &[StageSpec],
            index: &HashMap<&str, usize>,
            state: &mut Vec<u8>,
            stack: &mut Vec<usize>,
            cycles: &mut Vec<Vec<usize>>,
        ) {
            state[u] = 1;
            stack.push(u);
            for inp in stages[u].inputs.iter().filter(|r| !r.prev) {
                let Some(&v) = index.get(inp.stage.as_str()) else { continue };
                if state[v] == 1 {
                    let pos = stack.iter().position(|&x| x == v).unwrap_or(0);
                    cycles.push(stack[pos..].to_vec());
                } else if state[v] == 0 {
                    dfs(v, stages, index, state, stack, cycles);
                }
            }
            stack.pop();
            state[u] = 2;
        }
        let mut cycles = Vec::new();
        for u in 0..stages.len() {
            if state[u] == 0 {
                dfs(u, stages, &index, &mut state, &mut Vec::new(), &mut cycles);
            }
        }
        for cyc in cycles {
            let mut names: Vec<String> = cyc.iter().map(|&i| stages[i].id.clone()).collect();
            let mut key_names = names.clone();
            key_names.sort();
            if reported.contains(&key_names) {
                continue;
            }
            reported.push(key_names);
            // cycle is a path u0 -> (input of) ... ; data flows the other way: reverse for display
            names.reverse();
            let first = names[0].clone();
            names.push(first);
            let head = &stages[*cyc.last().unwrap()].id;
            let spec_index = self.dec.stage_index(head);
            let path = match spec_index {
                Some(i) => vec![key("stages"), Seg::Index(i), key("inputs")],
                None => vec![key("stages")],
            };
            self.dec.error(
                &path,
                format!(
                    "dependency cycle: {} (to read an earlier iteration of a stage, write `NAME@prev` in inputs)",
                    names.join(" → ")
                ),
            );
        }
    }
}

fn default_scope(op: Option<&OpSpec>) -> Scope {
    match op {
        Some(OpSpec::Import(_) | OpSpec::ModelInit(_)) => Scope::Setup,
        _ => Scope::Iteration,
    }
}

fn merged_params(
    global: &BTreeMap<String, Scalar>,
    local: &BTreeMap<String, Scalar>,
) -> BTreeMap<String, Scalar> {
    let mut m = global.clone();
    m.extend(local.iter().map(|(k, v)| (k.clone(), v.clone())));
    m
}

fn key(k: &str) -> Seg {
    Seg::Key(k.to_string())
}

fn list_or_none(items: &[&str]) -> String {
    if items.is_empty() {
        "none defined".into()
    } else {
        items.join(", ")
    }
}

/// Finds `sql/NAME.sql` in the pipeline's folder or the nearest ancestor that has it.
pub fn find_sql_file(base: &Path, name: &str) -> Result<PathBuf, String> {
    if name.contains("..") || name.starts_with('/') {
        return Err(format!("sql name `{name}` must be a plain name under sql/ (no .. or /)"));
    }
    let file = if name.ends_with(".sql") { name.to_string() } else { format!("{name}.sql") };
    let start = std::fs::canonicalize(base).unwrap_or_else(|_| base.to_path_buf());
    let mut tried = Vec::new();
    for dir in start.ancestors() {
        let candidate = dir.join("sql").join(&file);
        if candidate.is_file() {
            return Ok(candidate);
        }
        tried.push(candidate.display().to_string());
        if tried.len() >= 3 {
            break;
        }
    }
    Err(format!("no SQL file `{file}` (looked for {})", tried.join(", ")))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn errs(yaml: &str) -> Vec<SpecError> {
        match load_str(yaml, "t.yaml", Path::new("."), &[]) {
            Ok(_) => vec![],
            Err(e) => e.errors,
        }
    }

    #[test]
    fn minimal_pipeline_validates() {
        let p = load_str(
            "name: t\nstages:\n  - id: a\n    op: sql\n    query: select 1 as x\n  - id: b\n    op: sql\n    query: select * from a\n",
            "t.yaml",
            Path::new("."),
            &[],
        )
        .unwrap();
        assert_eq!(p.stages[1].inputs, vec![InputRef { stage: "a".into(), prev: false }]);
        assert_eq!(p.iterations, 1);
    }

    #[test]
    fn reports_all_errors_at_once() {
        let e = errs(
            "name: t\nseed: x\nbogus: 1\nstages:\n  - id: a\n    op: sql\n    query: select 1\n    samples: 3\n  - id: a\n    op: sql\n    query: select * from nope\n",
        );
        let paths: Vec<&str> = e.iter().map(|e| e.path.as_str()).collect();
        assert!(paths.contains(&"seed"), "{e:?}");
        assert!(paths.contains(&"bogus"), "{e:?}");
    }
}
