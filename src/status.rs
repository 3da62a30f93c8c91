//! `mstar status`: every stage of every iteration of a run store, from the stored plan, the
//! committed manifests, uncommitted files and the lock.

use crate::plan::Plan;
use crate::runner::{human_bytes, RunInfo};
use crate::store::lock::{LockInfo, LOCK_FILE};
use crate::store::{Manifest, RunStore, PLAN_FILE, RUN_FILE};
use arrow::array::{ArrayRef, Float64Array, Int64Array, RecordBatch, StringArray, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use std::collections::BTreeMap;
use std::sync::Arc;

#[derive(Debug, Clone)]
pub struct StageStatus {
    pub iteration: u32,
    pub stage: String,
    /// done | stale | pending | partial | running
    pub state: &'static str,
    pub rows: Option<u64>,
    pub bytes: Option<u64>,
    pub seconds: Option<f64>,
    pub fingerprint: String,
    pub committed_at: Option<String>,
    /// In the stored plan (not only a manifest of an earlier plan).
    pub planned: bool,
}

pub struct StoreStatus {
    pub run: Option<RunInfo>,
    pub lock: Option<LockInfo>,
    pub stages: Vec<StageStatus>,
    /// The newest commit: its manifest's finished_at, iteration and stage.
    pub last_commit: Option<(String, u32, String)>,
    /// Files no committed manifest references, and their bytes (None while a live run holds
    /// the lock: its files in progress would count); the next run removes them.
    pub orphaned: Option<(usize, u64)>,
}

pub async fn status(store: &RunStore) -> Result<StoreStatus, crate::Error> {
    let run: Option<RunInfo> = store.read_json(RUN_FILE).await?;
    let plan: Option<Plan> = store.read_json(PLAN_FILE).await?;
    let lock: Option<LockInfo> = store.read_json(LOCK_FILE).await.ok().flatten();
    if run.is_none() && plan.is_none() {
        return Err(crate::Error::Usage(format!("{} is not an mstar run store (no {RUN_FILE})", store.display())));
    }
    let manifests: BTreeMap<(u32, String), Manifest> = store.manifests().await?.into_iter().map(|m| ((m.iteration, m.stage.clone()), m)).collect();
    let mut keys: Vec<(u32, String, Option<String>)> = Vec::new();
    if let Some(plan) = &plan {
        for i in &plan.instances {
            keys.push((i.iteration, i.stage.clone(), Some(i.fingerprint.clone())));
        }
    }
    for (it, stage) in manifests.keys() {
        if !keys.iter().any(|(i, s, _)| i == it && s == stage) {
            keys.push((*it, stage.clone(), None));
        }
    }
    let mut stages = Vec::new();
    for (iteration, stage, planned) in keys {
        let m = manifests.get(&(iteration, stage.clone()));
        let leftovers = !store.uncommitted_files(&stage, iteration, m).await?.is_empty();
        let state = match (m, &planned) {
            (Some(m), Some(fp)) if &m.fingerprint == fp => "done",
            (Some(_), None) => "done",
            _ if leftovers && lock.as_ref().is_some_and(|l| !l.is_dead_here()) => "running",
            _ if leftovers => "partial",
            (Some(_), Some(_)) => "stale",
            (None, _) => "pending",
        };
        stages.push(StageStatus {
            iteration,
            stage,
            state,
            planned: planned.is_some(),
            rows: m.map(|m| m.rows),
            bytes: m.map(|m| m.bytes),
            seconds: m.map(|m| m.duration_ms as f64 / 1000.0),
            fingerprint: m.map(|m| m.fingerprint.clone()).or(planned).map(|f| f[..12.min(f.len())].to_string()).unwrap_or_default(),
            committed_at: m.map(|m| m.finished_at.clone()),
        });
    }
    let active = lock.as_ref().is_some_and(|l| !l.is_dead_here());
    if active {
        mark_running(&mut stages);
    }
    let last_commit = manifests
        .values()
        .max_by_key(|m| (chrono::DateTime::parse_from_rfc3339(&m.finished_at).ok(), m.finished_at.clone()))
        .map(|m| (m.finished_at.clone(), m.iteration, m.stage.clone()));
    let orphaned = if active {
        None
    } else {
        let o = store.orphans().await?;
        Some((o.len(), o.iter().map(|(_, n)| n).sum()))
    };
    Ok(StoreStatus { run, lock, stages, last_commit, orphaned })
}

/// While a live run holds the lock, the stage it works on is the first planned one that is not
/// done (the runner goes through the plan in order, skipping what is done): running, though
/// it may not have written a file yet.
fn mark_running(stages: &mut [StageStatus]) {
    if stages.iter().any(|s| s.state == "running") {
        return;
    }
    if let Some(s) = stages.iter_mut().find(|s| s.planned && s.state != "done") {
        s.state = "running";
    }
}

/// How long ago an RFC 3339 time was, as "3m 12s ago" (None if it does not parse).
pub fn ago(at: &str, now: chrono::DateTime<chrono::Utc>) -> Option<String> {
    let t = chrono::DateTime::parse_from_rfc3339(at).ok()?;
    let secs = (now - t.with_timezone(&chrono::Utc)).num_seconds();
    Some(match secs {
        ..0 => "in the future".into(),
        0..60 => format!("{secs}s ago"),
        _ => format!("{} ago", crate::runner::human_duration(secs as f64)),
    })
}

impl StoreStatus {
    /// The stage list as a table (for printing in any `--format`).
    pub fn to_batch(&self) -> Result<RecordBatch, arrow::error::ArrowError> {
        let s = &self.stages;
        let schema = Arc::new(Schema::new(vec![
            Field::new("iteration", DataType::Int64, false),
            Field::new("stage", DataType::Utf8, false),
            Field::new("state", DataType::Utf8, false),
            Field::new("rows", DataType::UInt64, true),
            Field::new("bytes", DataType::Utf8, true),
            Field::new("seconds", DataType::Float64, true),
            Field::new("fingerprint", DataType::Utf8, false),
            Field::new("committed_at", DataType::Utf8, true),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(Int64Array::from_iter_values(s.iter().map(|x| x.iteration as i64))),
            Arc::new(StringArray::from_iter_values(s.iter().map(|x| x.stage.clone()))),
            Arc::new(StringArray::from_iter_values(s.iter().map(|x| x.state))),
            Arc::new(UInt64Array::from(s.iter().map(|x| x.rows).collect::<Vec<_>>())),
            Arc::new(StringArray::from(s.iter().map(|x| x.bytes.map(human_bytes)).collect::<Vec<_>>())),
            Arc::new(Float64Array::from(s.iter().map(|x| x.seconds).collect::<Vec<_>>())),
            Arc::new(StringArray::from_iter_values(s.iter().map(|x| x.fingerprint.clone()))),
            Arc::new(StringArray::from(s.iter().map(|x| x.committed_at.clone()).collect::<Vec<_>>())),
        ];
        RecordBatch::try_new(schema, cols)
    }
}
