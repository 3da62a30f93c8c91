//! Runs a plan against a run store: takes the lock, freezes the spec, skips stages whose
//! committed fingerprint matches, recomputes the rest, and commits each stage manifest-last.

use crate::cancel::CancelToken;
use crate::ops::{self, OpContext, OpOutput};
use crate::plan::{self, Instance, Plan};
use crate::spec::Pipeline;
use crate::store::lock::RunLock;
use crate::store::manifest::{ManifestInput, OutputKind, SideTable, MANIFEST_FORMAT};
use crate::store::writer::{self, WriteOptions};
use crate::store::{Manifest, RunStore, PLAN_FILE, RUN_FILE, SPEC_FILE};
use crate::Error;
use arrow::array::{ArrayRef, Int64Array, RecordBatch};
use arrow_schema::{DataType, Field, Schema, SchemaRef};
use futures::StreamExt;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// The name of the column every stored table carries: the iteration that wrote the row.
pub const ITERATION_COLUMN: &str = "iteration";

#[derive(Debug, Clone, Default)]
pub struct RunOptions {
    /// Force recomputation of this stage instance and everything that depends on it.
    pub from: Option<(u32, String)>,
    /// Allow running on a store that holds a run of a differently named pipeline.
    pub allow_other_pipeline: bool,
    /// The memory pool of every stage's DataFusion session and of the summary query, in MB
    /// (None: [`crate::sql::DEFAULT_MEMORY_LIMIT_MB`]); the CLI's `MSTAR_MEMORY_LIMIT_MB`.
    pub memory_mb: Option<usize>,
    /// Test hook: a pause after each file the named stages write, so a crash test can kill the
    /// run mid-stage; the CLI's `MSTAR_FAULT_PAUSE_MS` ([`parse_fault_pause`]).
    pub fault_pause: BTreeMap<String, Duration>,
    /// `--shards N`: every row-parallel stage is computed as N shards (overrides `shards:`).
    pub shards: Option<u32>,
    /// How many times a failed shard is rerun alone before the stage fails (default 1).
    pub shard_retries: Option<u32>,
    /// `--executor`: where the workers of every row-parallel stage run (overrides `executor:`).
    pub executor: Option<crate::executor::ExecutorKind>,
}

/// run.json: who the store belongs to and which specs ran on it.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunInfo {
    pub pipeline: String,
    pub created_at: String,
    pub updated_at: String,
    pub mstar_version: String,
    pub seed: u64,
    pub spec_hash: String,
    #[serde(default)]
    pub history: Vec<RunHistory>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct RunHistory {
    pub at: String,
    pub spec_hash: String,
    pub command: String,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Outcome {
    Computed,
    Skipped,
}

#[derive(Debug, Default)]
pub struct RunReport {
    pub stages: Vec<(u32, String, Option<Outcome>)>,
    pub summary: Option<Vec<RecordBatch>>,
    /// From taking the lock to the end of the summary query.
    pub elapsed: Duration,
}

impl RunReport {
    /// How many stage runs were computed and how many skipped (committed and up to date).
    pub fn counts(&self) -> (usize, usize) {
        let n = |o: Outcome| self.stages.iter().filter(|s| s.2.as_ref() == Some(&o)).count();
        (n(Outcome::Computed), n(Outcome::Skipped))
    }

    /// The closing line: "done in 3m 12s · 14 stage runs: 12 computed, 2 skipped (…)".
    pub fn totals(&self) -> String {
        let (computed, skipped) = self.counts();
        format!(
            "done in {} · {} stage runs: {computed} computed, {skipped} skipped (already committed, reused)",
            human_duration(self.elapsed.as_secs_f64()),
            self.stages.len()
        )
    }
}

/// Estimates the time the stage runs still to compute will take from the ones computed so far:
/// a stage's own mean duration in this run where it has one, else the mean of all.
#[derive(Debug, Default)]
pub struct Eta {
    by_stage: BTreeMap<String, (f64, u32)>,
    all: (f64, u32),
}

impl Eta {
    pub fn record(&mut self, stage: &str, secs: f64) {
        let e = self.by_stage.entry(stage.to_string()).or_default();
        e.0 += secs;
        e.1 += 1;
        self.all.0 += secs;
        self.all.1 += 1;
    }

    /// Seconds for these stages (None before anything was computed).
    pub fn remaining<'a>(&self, stages: impl IntoIterator<Item = &'a str>) -> Option<f64> {
        if self.all.1 == 0 {
            return None;
        }
        let mean = |(t, n): (f64, u32)| t / n as f64;
        Some(stages.into_iter().map(|s| self.by_stage.get(s).copied().map_or(mean(self.all), mean)).sum())
    }
}

/// "0.42s", "12.3s", "3m 07s", "1h 02m".
pub fn human_duration(secs: f64) -> String {
    let secs = secs.max(0.0);
    if secs < 60.0 {
        return if secs < 10.0 { format!("{secs:.2}s") } else { format!("{secs:.1}s") };
    }
    let s = secs.round() as u64;
    if s < 3600 {
        format!("{}m {:02}s", s / 60, s % 60)
    } else {
        format!("{}h {:02}m", s / 3600, s % 3600 / 60)
    }
}

/// A `--from` value that is not `ITER/STAGE`.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum FromError {
    #[error("--from {0}: expected ITER/STAGE, e.g. 2/selected or setup/prompts")]
    NoSlash(String),
    #[error("--from {given}: `{iteration}` is not an iteration number")]
    BadIteration { given: String, iteration: String },
}

/// How many shards compute `stage` and where: a row-parallel stage on a cluster runs as
/// workers there even as one shard; more than one shard, or a cluster, means worker processes.
fn worker_shards(stage: &crate::spec::StageSpec, opts: &RunOptions) -> (u32, crate::executor::ExecutorKind) {
    let shards = crate::shard::shards_for(stage, opts.shards);
    let kind = match crate::ops::OpKind::find(stage.op_name).and_then(|k| k.shard_by) {
        Some(_) => stage.executor.kind_with(opts.executor),
        None => crate::executor::ExecutorKind::Local,
    };
    (shards, kind)
}

/// Parses `ITER/STAGE` (ITER may be `setup`).
pub fn parse_from(s: &str) -> Result<(u32, String), FromError> {
    let (it, stage) = s.split_once('/').ok_or_else(|| FromError::NoSlash(s.to_string()))?;
    let it = if it == "setup" { 0 } else { it.parse::<u32>().map_err(|_| FromError::BadIteration { given: s.to_string(), iteration: it.to_string() })? };
    Ok((it, stage.to_string()))
}

/// Plans the pipeline (operators and fingerprints) without touching a store.
pub async fn make_plan(p: &Pipeline) -> Result<(Vec<Box<dyn ops::Operator>>, Plan), Error> {
    let ops = p.stages.iter().map(|s| ops::build(p, s)).collect::<Result<Vec<_>, _>>()?;
    let plan = plan::build(p, &ops).await?;
    Ok((ops, plan))
}

/// Runs the pipeline on the store, holding the store's lock; Ctrl-C and SIGTERM release it.
pub async fn run(p: &Pipeline, store: &RunStore, opts: &RunOptions) -> Result<RunReport, Error> {
    let (ops, plan) = make_plan(p).await?;
    // workers are other processes: refused before anything is computed, not at that stage
    if store.loc.url_root.scheme() == "memory" {
        let workers = p.stages.iter().map(|s| (s, worker_shards(s, opts))).find(|(_, (n, k))| *n > 1 || *k != crate::executor::ExecutorKind::Local);
        if let Some((s, (n, _))) = workers {
            return Err(Error::Usage(format!(
                "stage {} runs as {n} worker process(es), which cannot open the in-process store {}: use a folder or an s3:// store, or --shards 1",
                s.id,
                store.display()
            )));
        }
    }
    if let Some((it, stage)) = &opts.from {
        if plan.find(stage, *it).is_none() {
            return Err(Error::Usage(format!("--from {it}/{stage}: the plan has no stage `{stage}` at iteration {it}")));
        }
    }
    let (lock, broke) = RunLock::acquire(store).await?;
    if let Some(h) = broke {
        eprintln!("mstar: removed a stale lock of pid {} on {} (that process is gone)", h.pid, h.host);
    }
    // with the lock held nobody else writes: files no manifest references are garbage
    let (n, bytes) = store.remove_orphans().await?;
    if n > 0 {
        eprintln!("mstar: removed {n} orphaned files ({}) that no committed manifest references", human_bytes(bytes));
    }
    // A stage that computes on this task (a training loop) cannot be cancelled at an await; a
    // watcher on another worker raises the token that such loops check between steps (the
    // stage then fails uncommitted; committed stages and checkpoints stay).
    let cancel = CancelToken::default();
    let raise = cancel.clone();
    let mut watcher = tokio::spawn(async move {
        shutdown_signal().await;
        raise.cancel();
    });
    let started = Instant::now();
    let result = tokio::select! {
        r = run_locked(p, store, opts, &ops, &plan, &cancel) => r,
        _ = &mut watcher => Err(Error::Interrupted),
    };
    watcher.abort();
    lock.release().await?;
    if cancel.is_cancelled() {
        return Err(Error::Interrupted);
    }
    result.map(|report| RunReport { elapsed: started.elapsed(), ..report })
}

pub(crate) async fn shutdown_signal() {
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("signal handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

async fn run_locked(
    p: &Pipeline,
    store: &RunStore,
    opts: &RunOptions,
    ops: &[Box<dyn ops::Operator>],
    plan: &Plan,
    cancel: &CancelToken,
) -> Result<RunReport, Error> {
    freeze(p, store, opts).await?;
    store.write_json(PLAN_FILE, plan).await?;

    let mut committed: BTreeMap<(String, u32), Manifest> = store.manifests().await?.into_iter().map(|m| ((m.stage.clone(), m.iteration), m)).collect();
    let mut report = RunReport::default();
    // which stage runs to compute: not committed with the planned fingerprint, or forced by
    // --from (directly or through an input)
    let mut forced: HashSet<(String, u32)> = HashSet::new();
    let todo: Vec<bool> = plan
        .instances
        .iter()
        .map(|inst| {
            let key = (inst.stage.clone(), inst.iteration);
            let is_forced = opts.from.as_ref().is_some_and(|(it, s)| *s == inst.stage && *it == inst.iteration)
                || inst.inputs.iter().any(|i| i.iterations.iter().any(|it| forced.contains(&(i.stage.clone(), *it))));
            if is_forced {
                forced.insert(key.clone());
            }
            is_forced || committed.get(&key).is_none_or(|m| m.fingerprint != inst.fingerprint)
        })
        .collect();
    eprintln!(
        "mstar: pipeline {} · store {} · {} iteration(s) · seed {} · {} stage runs planned, {} to compute",
        p.name,
        store.display(),
        p.iterations,
        p.seed,
        plan.instances.len(),
        todo.iter().filter(|t| **t).count()
    );
    let total = plan.instances.len();
    let width = total.to_string().len();
    let mut eta = Eta::default();
    for (k, inst) in plan.instances.iter().enumerate() {
        let key = (inst.stage.clone(), inst.iteration);
        let current = committed.get(&key);
        let label = if inst.iteration == 0 { "setup".to_string() } else { format!("iter {}", inst.iteration) };
        let progress = format!("stage {:>width$}/{total}", k + 1);
        if !todo[k] {
            eprintln!("  {progress}  {label:<8} {:<20} skipped   (up to date)", inst.stage);
            report.stages.push((inst.iteration, inst.stage.clone(), Some(Outcome::Skipped)));
            continue;
        }
        let si = p.stages.iter().position(|s| s.id == inst.stage).expect("planned stage");
        let started = Instant::now();
        let (shards, kind) = worker_shards(&p.stages[si], opts);
        let m = if shards > 1 || kind != crate::executor::ExecutorKind::Local {
            let retries = opts.shard_retries.unwrap_or(1);
            crate::shard::coordinate(p, store, inst, &committed, current, shards, retries, kind, &p.stages[si].executor).await
        } else {
            execute(p, store, &*ops[si], inst, &committed, current, opts, cancel).await
        }
        .map_err(|e| Error::Stage { stage: inst.stage.clone(), iteration: inst.iteration, error: Box::new(e) })?;
        let secs = started.elapsed().as_secs_f64();
        eta.record(&inst.stage, secs);
        let left: Vec<&str> = plan.instances.iter().zip(&todo).skip(k + 1).filter(|(_, t)| **t).map(|(i, _)| i.stage.as_str()).collect();
        let eta_note = match eta.remaining(left.iter().copied()) {
            Some(t) if !left.is_empty() => format!("  · ETA {} ({} to compute)", human_duration(t), left.len()),
            _ => String::new(),
        };
        let side: String = m.side.iter().map(|s| format!("  + {} {} rows", s.name, s.rows)).collect();
        eprintln!("  {progress}  {label:<8} {:<20} computed  {:>10} rows {:>10}  {secs:.2}s{side}{eta_note}", inst.stage, m.rows, human_bytes(m.bytes));
        committed.insert(key, m);
        report.stages.push((inst.iteration, inst.stage.clone(), Some(Outcome::Computed)));
    }
    if let Some(q) = &p.summary {
        let ctx = crate::sql::new_session_with(opts.memory_mb);
        crate::sql::register_run(&ctx, store).await?;
        let q = crate::sql::params::substitute(q, &p.params_for(None, p.iterations))?;
        let batches = crate::sql::query(&ctx, &q).await?.collect().await?;
        report.summary = Some(batches);
    }
    Ok(report)
}

/// The test hook's `stage:ms[,stage:ms]` (`MSTAR_FAULT_PAUSE_MS`) as a pause by stage; an entry
/// that is not `stage:ms` is ignored.
pub fn parse_fault_pause(text: &str) -> BTreeMap<String, Duration> {
    text.split(',')
        .filter_map(|kv| {
            let (s, ms) = kv.split_once(':')?;
            Some((s.to_string(), Duration::from_millis(ms.parse().ok()?)))
        })
        .collect()
}

async fn freeze(p: &Pipeline, store: &RunStore, opts: &RunOptions) -> Result<(), Error> {
    let now = chrono::Utc::now().to_rfc3339();
    let prior: Option<RunInfo> = store.read_json(RUN_FILE).await?;
    if let Some(prior) = &prior {
        if prior.pipeline != p.name && !opts.allow_other_pipeline {
            return Err(Error::Usage(format!(
                "run store {} holds a run of pipeline `{}`, not `{}`; use another store, or pass --allow-other-pipeline to run `{}` on it anyway",
                store.display(),
                prior.pipeline,
                p.name,
                p.name
            )));
        }
    }
    let mut history = prior.as_ref().map(|r| r.history.clone()).unwrap_or_default();
    history.push(RunHistory { at: now.clone(), spec_hash: p.spec_hash.clone(), command: std::env::args().collect::<Vec<_>>().join(" ") });
    let info = RunInfo {
        pipeline: p.name.clone(),
        created_at: prior.as_ref().map(|r| r.created_at.clone()).unwrap_or(now.clone()),
        updated_at: now,
        mstar_version: env!("CARGO_PKG_VERSION").to_string(),
        seed: p.seed,
        spec_hash: p.spec_hash.clone(),
        history,
    };
    store.write_bytes(SPEC_FILE, p.frozen_yaml.clone().into_bytes()).await?;
    store.write_json(RUN_FILE, &info).await?;
    Ok(())
}

/// Computes one stage instance and commits it.
#[allow(clippy::too_many_arguments)]
async fn execute(
    p: &Pipeline,
    store: &RunStore,
    op: &dyn ops::Operator,
    inst: &Instance,
    committed: &BTreeMap<(String, u32), Manifest>,
    current: Option<&Manifest>,
    opts: &RunOptions,
    cancel: &CancelToken,
) -> Result<Manifest, Error> {
    let started_at = chrono::Utc::now();
    let clock = Instant::now();
    // Leftovers of attempts that crashed before committing.
    for stale in store.uncommitted_files(&inst.stage, inst.iteration, current).await? {
        store.delete(&stale.location).await?;
    }
    let attempt = attempt_id();
    let c = compute(p, store, op, inst, committed, opts.fault_pause.get(&inst.stage).copied(), opts.memory_mb, cancel, &attempt, None).await?;
    let m = Manifest {
        format: MANIFEST_FORMAT,
        stage: inst.stage.clone(),
        iteration: inst.iteration,
        op: inst.op.clone(),
        fingerprint: inst.fingerprint.clone(),
        attempt,
        kind: c.kind,
        files: c.files,
        rows: c.rows,
        bytes: c.bytes,
        schema: c.schema,
        inputs: manifest_inputs(inst),
        side: c.side,
        started_at: started_at.to_rfc3339(),
        finished_at: chrono::Utc::now().to_rfc3339(),
        duration_ms: clock.elapsed().as_millis() as u64,
        mstar_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    commit(store, &m, current).await?;
    Ok(m)
}

/// Commits `m` over `current`; a lost race deletes this attempt's files (unique to it).
pub(crate) async fn commit(store: &RunStore, m: &Manifest, current: Option<&Manifest>) -> Result<(), Error> {
    if let Err(e) = store.commit(m, current).await {
        if matches!(e, crate::store::StoreError::Conflict(_)) {
            for f in m.all_files() {
                let _ = store.delete(&store.loc.path(&f.path)).await;
            }
        }
        return Err(e.into());
    }
    Ok(())
}

/// What a stage instance read, as its manifest records it.
pub(crate) fn manifest_inputs(inst: &Instance) -> Vec<ManifestInput> {
    inst.inputs.iter().map(|i| ManifestInput { stage: i.stage.clone(), iterations: i.iterations.clone(), fingerprints: i.fingerprints.clone() }).collect()
}

/// The files an operator wrote for one stage instance (or one shard of it), not yet committed.
pub(crate) struct Computed {
    pub kind: OutputKind,
    pub files: Vec<crate::store::FileEntry>,
    pub rows: u64,
    pub bytes: u64,
    pub schema: Option<Schema>,
    pub side: Vec<SideTable>,
}

/// Runs the operator of `inst` over its committed inputs and writes its output under
/// `attempt`. With `shard`, the stage's driving input holds only that shard's prompts.
#[allow(clippy::too_many_arguments)]
pub(crate) async fn compute(
    p: &Pipeline,
    store: &RunStore,
    op: &dyn ops::Operator,
    inst: &Instance,
    committed: &BTreeMap<(String, u32), Manifest>,
    pause: Option<Duration>,
    memory_mb: Option<usize>,
    cancel: &CancelToken,
    attempt: &str,
    shard: Option<crate::shard::Shard>,
) -> Result<Computed, Error> {
    let session = crate::sql::new_session_with(memory_mb);
    crate::sql::attach_store(&session, store, true);
    let mut input_schemas = Vec::new();
    let mut input_manifests = Vec::new();
    for input in &inst.inputs {
        let ms: Vec<&Manifest> = input.iterations.iter().filter_map(|it| committed.get(&(input.stage.clone(), *it))).collect();
        for (it, fp) in input.iterations.iter().zip(&input.fingerprints) {
            match committed.get(&(input.stage.clone(), *it)) {
                Some(m) if &m.fingerprint == fp => {}
                _ => return Err(Error::Usage(format!("input {} at iteration {it} is not committed with the planned fingerprint", input.stage))),
            }
        }
        crate::sql::register_stage(&session, store, &input.stage, &ms).await?;
        if let Some(m) = ms.iter().max_by_key(|m| m.iteration) {
            if let Some(s) = &m.schema {
                input_schemas.push((input.stage.clone(), Arc::new(s.clone())));
            }
        }
        input_manifests.push((input.stage.clone(), ms.iter().map(|m| (*m).clone()).collect()));
    }
    let stage = p.stage(&inst.stage).expect("planned stage");
    if let Some(sh) = shard {
        crate::shard::partition_input(&session, stage, sh).await?;
    }
    let ctx = OpContext {
        attempt: attempt.to_string(),
        pipeline: p,
        stage,
        iteration: inst.iteration,
        store,
        session,
        input_schemas,
        input_manifests,
        side: Default::default(),
        cancel: cancel.clone(),
        shard,
    };
    let declared = op.output_schema(&ctx).await?;
    let (kind, files, rows, bytes, schema) = match op.execute(&ctx).await? {
        OpOutput::Table(stream) => {
            let in_schema = stream.schema();
            if let Some(d) = &declared {
                if !same_columns(d, &in_schema) {
                    return Err(Error::Usage(format!("operator {} promised columns {} but produced {}", inst.op, columns(d), columns(&in_schema))));
                }
            }
            let out_schema = with_iteration(&in_schema);
            let it = inst.iteration as i64;
            let target = out_schema.clone();
            let stream = stream.map(move |b| b.map_err(|e| e.to_string()).and_then(|b| add_iteration(&target, &b, it).map_err(|e| e.to_string())));
            let w = writer::write_table(
                store,
                &RunStore::table_dir(&inst.stage, inst.iteration),
                attempt,
                out_schema,
                Box::pin(stream),
                &WriteOptions { rows_per_file: p.rows_per_file, pause_per_file: pause },
            )
            .await?;
            (OutputKind::Table, w.files, w.rows, w.bytes, Some(w.schema.as_ref().clone()))
        }
        OpOutput::Files(files) => {
            let bytes = files.iter().map(|f| f.bytes).sum();
            (OutputKind::Files, files, 0, bytes, None)
        }
    };
    let mut side = Vec::new();
    for (name, (schema, batches)) in ctx.side.take() {
        let target = with_iteration(&schema);
        let it = inst.iteration as i64;
        let batches: Vec<Result<RecordBatch, arrow::error::ArrowError>> = batches.iter().map(|b| add_iteration(&target, b, it)).collect();
        let w = writer::write_table(
            store,
            &RunStore::table_dir(&inst.stage, inst.iteration),
            &format!("{name}-{attempt}"),
            target,
            futures::stream::iter(batches),
            &WriteOptions { rows_per_file: p.rows_per_file, pause_per_file: None },
        )
        .await?;
        side.push(SideTable { name, files: w.files, rows: w.rows, schema: w.schema.as_ref().clone() });
    }
    Ok(Computed { kind, files, rows, bytes, schema, side })
}

fn columns(s: &Schema) -> String {
    s.fields().iter().map(|f| format!("{}: {}", f.name(), f.data_type())).collect::<Vec<_>>().join(", ")
}

fn same_columns(a: &Schema, b: &Schema) -> bool {
    a.fields().len() == b.fields().len() && a.fields().iter().zip(b.fields()).all(|(x, y)| x.name() == y.name() && x.data_type() == y.data_type())
}

/// The stored schema: `iteration` first, then the operator's columns (an `iteration` column
/// of the operator's own is replaced).
pub fn with_iteration(s: &Schema) -> SchemaRef {
    let mut fields = vec![Arc::new(Field::new(ITERATION_COLUMN, DataType::Int64, false))];
    fields.extend(s.fields().iter().filter(|f| f.name() != ITERATION_COLUMN).cloned());
    Arc::new(Schema::new_with_metadata(fields, s.metadata().clone()))
}

fn add_iteration(target: &SchemaRef, b: &RecordBatch, it: i64) -> Result<RecordBatch, arrow::error::ArrowError> {
    let mut cols: Vec<ArrayRef> = vec![Arc::new(Int64Array::from_value(it, b.num_rows()))];
    for (f, c) in b.schema().fields().iter().zip(b.columns()) {
        if f.name() != ITERATION_COLUMN {
            cols.push(c.clone());
        }
    }
    RecordBatch::try_new(target.clone(), cols)
}

pub(crate) fn attempt_id() -> String {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos()).unwrap_or(0);
    let h = sha2::Sha256::digest(format!("{nanos}-{}", std::process::id()).as_bytes());
    use sha2::Digest;
    hex::encode(&h[..6])
}

pub fn human_bytes(b: u64) -> String {
    let units = ["B", "KiB", "MiB", "GiB", "TiB"];
    let mut v = b as f64;
    let mut u = 0;
    while v >= 1024.0 && u + 1 < units.len() {
        v /= 1024.0;
        u += 1;
    }
    if u == 0 {
        format!("{b} B")
    } else {
        format!("{v:.1} {}", units[u])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn from_is_iter_slash_stage() {
        assert_eq!(parse_from("2/selected"), Ok((2, "selected".to_string())));
        assert_eq!(parse_from("setup/prompts"), Ok((0, "prompts".to_string())));
        assert_eq!(parse_from("x").unwrap_err().to_string(), "--from x: expected ITER/STAGE, e.g. 2/selected or setup/prompts");
        assert_eq!(parse_from("two/a").unwrap_err(), FromError::BadIteration { given: "two/a".into(), iteration: "two".into() });
        assert_eq!(parse_from("two/a").unwrap_err().to_string(), "--from two/a: `two` is not an iteration number");
    }

    #[test]
    fn fault_pauses_by_stage() {
        let p = parse_fault_pause("rollouts:250,train:x,bad,sql:0");
        assert_eq!(p.into_iter().collect::<Vec<_>>(), vec![("rollouts".to_string(), Duration::from_millis(250)), ("sql".to_string(), Duration::ZERO)]);
        assert!(parse_fault_pause("").is_empty());
    }

    #[test]
    fn durations_read_like_a_clock() {
        assert_eq!(human_duration(0.4213), "0.42s");
        assert_eq!(human_duration(12.34), "12.3s");
        assert_eq!(human_duration(187.0), "3m 07s");
        assert_eq!(human_duration(3725.0), "1h 02m");
    }

    #[test]
    fn the_eta_uses_a_stages_own_durations_then_the_mean() {
        let mut eta = Eta::default();
        assert_eq!(eta.remaining(["a"]), None);
        eta.record("train", 10.0);
        eta.record("train", 20.0);
        eta.record("sql", 0.0);
        // train: its mean 15; eval: not seen, the mean of all (10)
        assert_eq!(eta.remaining(["train", "eval", "sql"]), Some(25.0));
        assert_eq!(eta.remaining([]), Some(0.0));
    }

    #[test]
    fn totals_count_computed_and_skipped_stage_runs() {
        let r = RunReport {
            stages: vec![(0, "a".into(), Some(Outcome::Skipped)), (1, "b".into(), Some(Outcome::Computed)), (2, "b".into(), Some(Outcome::Computed))],
            summary: None,
            elapsed: Duration::from_secs(75),
        };
        assert_eq!(r.counts(), (2, 1));
        assert_eq!(r.totals(), "done in 1m 15s · 3 stage runs: 2 computed, 1 skipped (already committed, reused)");
    }
}
