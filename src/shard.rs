//! Sharded stages: a row-parallel stage with `shards: N` (or `mstar run --shards N`) is computed
//! by N worker processes (`mstar worker … --shard i/N`), each over one partition of the stage's
//! driving input by prompt_id, and committed by the coordinator (`mstar run`) only when every
//! shard's marker is in the store. Where the workers run (local processes, a Slurm array, a
//! Kubernetes Indexed Job) is the stage's executor's business ([`crate::executor`]). The partition is made here, in the runner's input layer: the
//! driving input is registered in the operator's SQL session as a view of the shard's rows, so
//! the operators know nothing of shards. Per-rollout seeds make N shards' rows equal one's,
//! except in the last bits of values whose rounding depends on the batch (generate's logprob:
//! the stage's prompt bucket; prm_score's score: its padded micro-batches).
//!
//! Below the store:
//! ```text
//! _shards/iteration=<n>/<stage>/job.json                  the coordinator's job: fingerprint, N, attempt, pipeline folder
//! _shards/iteration=<n>/<stage>/<attempt>/shard-<i>.json  a worker's marker, written after its files, put-if-absent
//! tables/<stage>/iteration=<n>/part-<attempt>-s<i>-<worker>-<k>.parquet
//! ```
//! Each worker run has its own id in its file names, so the files of a worker that died are never
//! listed by a marker and never committed; the coordinator deletes them after the commit.

use crate::cancel::CancelToken;
use crate::executor::{self, ExecutorKind, ExecutorSpec, Launch};
use crate::ops::OpKind;
use crate::plan::Instance;
use crate::runner;
use crate::spec::StageSpec;
use crate::store::manifest::{OutputKind, SideTable, MANIFEST_FORMAT};
use crate::store::{FileEntry, Manifest, RunStore, SPEC_FILE};
use crate::Error;
use arrow_schema::Schema;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::time::Instant;

/// Shard `index` of `count` (0-based).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Shard {
    pub index: u32,
    pub count: u32,
}

impl std::fmt::Display for Shard {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}/{}", self.index, self.count)
    }
}

/// The shard (0..n) of a prompt: FNV-1a (64 bit) of the id's UTF-8 bytes, mod n. Stable across
/// machines, processes and Rust versions (unlike `DefaultHasher`); SQL's `shard_of(id, n)`.
pub fn shard_of(id: &str, n: u32) -> u32 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in id.bytes() {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    (h % n.max(1) as u64) as u32
}

/// How many shards compute `stage`: `--shards N` for a row-parallel stage, else its `shards:`.
pub fn shards_for(stage: &StageSpec, run_override: Option<u32>) -> u32 {
    let row_parallel = OpKind::find(stage.op_name).and_then(|k| k.shard_by).is_some();
    match run_override {
        Some(n) if row_parallel => n.max(1),
        _ => stage.shards.max(1),
    }
}

/// The stage whose rows drive a row-parallel stage (its config key `shard_by`); none for an
/// operator that keeps its shard's rows itself.
pub fn driving_input(stage: &StageSpec) -> Option<String> {
    let crate::ops::ShardBy::Input(key) = OpKind::find(stage.op_name)?.shard_by? else { return None };
    let v = stage.op_fields.get(key)?.as_str()?;
    Some(v.strip_suffix("@prev").unwrap_or(v).to_string())
}

/// Replaces the driving input's table in `session` by a view of the rows of shard `sh`.
pub async fn partition_input(session: &SessionContext, stage: &StageSpec, sh: Shard) -> Result<(), Error> {
    if OpKind::find(stage.op_name).and_then(|k| k.shard_by) == Some(crate::ops::ShardBy::Own) {
        return Ok(());
    }
    let Some(name) = driving_input(stage) else {
        return Err(Error::Usage(format!("stage {} (op {}) is not row-parallel and cannot be sharded", stage.id, stage.op_name)));
    };
    // an input without committed rows is not registered: nothing to split
    let Ok(provider) = session.table_provider(name.as_str()).await else { return Ok(()) };
    let hidden = format!("__unsharded_{name}");
    session.deregister_table(name.as_str())?;
    session.register_table(hidden.as_str(), provider)?;
    let q = format!("SELECT * FROM \"{hidden}\" WHERE shard_of(CAST(prompt_id AS VARCHAR), {}) = {}", sh.count, sh.index);
    let df = session
        .sql(&q)
        .await
        .map_err(|e| Error::Usage(format!("stage {} is sharded by the prompt_id of its input `{name}`, which cannot be read so: {e}", stage.id)))?;
    session.register_table(name.as_str(), df.into_view())?;
    Ok(())
}

/// The coordinator's description of a sharded stage run, read by its workers.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardJob {
    pub stage: String,
    pub iteration: u32,
    pub fingerprint: String,
    pub shards: u32,
    /// The stage attempt: every shard's files and marker carry it.
    pub attempt: String,
    /// The pipeline file's folder (absolute): relative dataset, SQL and model paths of the
    /// store's `pipeline.yaml` are resolved against it.
    pub pipeline_dir: String,
    pub created_at: String,
}

/// What one worker wrote: its files (not committed), written after them.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ShardMarker {
    pub stage: String,
    pub iteration: u32,
    pub shard: u32,
    pub shards: u32,
    pub fingerprint: String,
    pub attempt: String,
    /// This worker run's id (in its file names).
    pub worker: String,
    pub files: Vec<FileEntry>,
    pub rows: u64,
    pub bytes: u64,
    pub schema: Option<Schema>,
    #[serde(default)]
    pub side: Vec<SideTable>,
    pub host: String,
    pub pid: u32,
    pub started_at: String,
    pub finished_at: String,
    pub duration_ms: u64,
}

/// Folder of a stage instance's shard job and markers.
pub fn job_dir(stage: &str, iteration: u32) -> String {
    format!("_shards/iteration={iteration}/{stage}")
}

fn job_rel(stage: &str, iteration: u32) -> String {
    format!("{}/job.json", job_dir(stage, iteration))
}

fn marker_rel(stage: &str, iteration: u32, attempt: &str, shard: u32) -> String {
    format!("{}/{attempt}/shard-{shard:05}.json", job_dir(stage, iteration))
}

/// The shard a worker computes: `--shard i/N`; or `--shard /N` or no `--shard`, with i from
/// `SLURM_ARRAY_TASK_ID` or `JOB_COMPLETION_INDEX` (Kubernetes Indexed Jobs) and N from the
/// job when not given. N must be the job's; i must be below N.
pub fn resolve_shard(arg: Option<&str>, env: &dyn Fn(&str) -> Option<String>, job: &ShardJob) -> Result<Shard, String> {
    let at = format!("stage {} at iteration {}", job.stage, job.iteration);
    let (index, count) = match arg.map(str::trim) {
        Some(a) => {
            let Some((i, n)) = a.split_once('/') else {
                return Err(format!("--shard {a}: expected i/N (e.g. 0/4), or /N to take i from SLURM_ARRAY_TASK_ID or JOB_COMPLETION_INDEX"));
            };
            let n: u32 = n.parse().ok().filter(|n| *n >= 1).ok_or_else(|| format!("--shard {a}: `{n}` is not a number of shards (≥ 1)"))?;
            let i = if i.is_empty() { None } else { Some(i.parse::<u32>().map_err(|_| format!("--shard {a}: `{i}` is not a shard index"))?) };
            (i, n)
        }
        None => (None, job.shards),
    };
    let (index, from) = match index {
        Some(i) => (i, "--shard".to_string()),
        None => {
            let Some((var, v)) = ["SLURM_ARRAY_TASK_ID", "JOB_COMPLETION_INDEX"].iter().find_map(|v| env(v).map(|x| (*v, x))) else {
                return Err(format!(
                    "no shard index for {at}: give --shard i/N, or run as a Slurm array task (SLURM_ARRAY_TASK_ID) or a Kubernetes Indexed Job (JOB_COMPLETION_INDEX)"
                ));
            };
            let i = v.trim().parse::<u32>().map_err(|_| format!("{var}={v} is not a shard index"))?;
            (i, var.to_string())
        }
    };
    if count != job.shards {
        return Err(format!("--shard says {count} shards, but the coordinator's job for {at} has {}", job.shards));
    }
    if index >= count {
        return Err(format!(
            "shard index {index} (from {from}) is not below the number of shards {count}: shards are numbered 0..{} (a Slurm array of them: --array=0-{})",
            count - 1,
            count - 1
        ));
    }
    Ok(Shard { index, count })
}

/// `mstar worker`: computes one shard of the stage instance the coordinator's job describes,
/// writes its files and then its marker (put-if-absent: a second worker of the same shard
/// loses and deletes its files). Returns the marker.
/// `memory_mb` and `fault_pause` as in [`runner::RunOptions`].
pub async fn run_worker(
    store: &RunStore,
    stage: &str,
    iteration: u32,
    shard_arg: Option<&str>,
    memory_mb: Option<usize>,
    fault_pause: &BTreeMap<String, std::time::Duration>,
) -> Result<ShardMarker, Error> {
    let started_at = chrono::Utc::now();
    let clock = Instant::now();
    let job: ShardJob = store.read_json(&job_rel(stage, iteration)).await?.ok_or_else(|| {
        Error::Usage(format!(
            "no sharded job for stage {stage} at iteration {iteration} in {}: `mstar run` writes it ({}) when it reaches a sharded stage, before it starts the workers",
            store.display(),
            job_rel(stage, iteration)
        ))
    })?;
    let sh = resolve_shard(shard_arg, &|v| std::env::var(v).ok(), &job).map_err(Error::Usage)?;
    let text =
        store.read_bytes(SPEC_FILE).await?.ok_or_else(|| Error::Usage(format!("{}: no {SPEC_FILE} (the coordinator writes it first)", store.display())))?;
    let text = String::from_utf8(text.to_vec()).map_err(|e| Error::Usage(format!("{}/{SPEC_FILE}: {e}", store.display())))?;
    let p = crate::spec::load_str(&text, &format!("{}/{SPEC_FILE}", store.display()), std::path::Path::new(&job.pipeline_dir), &[])?;
    let (ops, plan) = runner::make_plan(&p).await?;
    let inst = plan.find(stage, iteration).ok_or_else(|| Error::Usage(format!("the store's {SPEC_FILE} has no stage {stage} at iteration {iteration}")))?;
    if inst.fingerprint != job.fingerprint {
        return Err(Error::Usage(format!(
            "stage {stage} at iteration {iteration}: the store's {SPEC_FILE} plans fingerprint {}, the job {}: the pipeline changed since the coordinator started",
            &inst.fingerprint[..12],
            &job.fingerprint[..job.fingerprint.len().min(12)]
        )));
    }
    let committed: BTreeMap<(String, u32), Manifest> = store.manifests().await?.into_iter().map(|m| ((m.stage.clone(), m.iteration), m)).collect();
    let si = p.stages.iter().position(|s| s.id == stage).expect("planned stage");
    let worker = runner::attempt_id();
    let files_attempt = format!("{}-s{:05}-{worker}", job.attempt, sh.index);
    let cancel = CancelToken::default();
    let raise = cancel.clone();
    let mut watcher = tokio::spawn(async move {
        runner::shutdown_signal().await;
        raise.cancel();
    });
    let pause = fault_pause.get(stage).copied();
    // Ctrl-C / SIGTERM stops the worker at once (as `mstar run`), its files uncommitted
    let computed = tokio::select! {
        r = runner::compute(&p, store, &*ops[si], inst, &committed, pause, memory_mb, &cancel, &files_attempt, Some(sh)) => r,
        _ = &mut watcher => Err(Error::Interrupted),
    };
    watcher.abort();
    let c = computed?;
    if c.kind != OutputKind::Table {
        return Err(Error::Usage(format!("stage {stage}: a sharded stage must output a table")));
    }
    // test hook: `MSTAR_FAULT_SHARD_EXIT=stage:i` kills shard i after its files, before its marker
    if std::env::var("MSTAR_FAULT_SHARD_EXIT").ok().and_then(|v| v.split_once(':').map(|(s, i)| (s.to_string(), i.to_string())))
        == Some((stage.to_string(), sh.index.to_string()))
    {
        eprintln!("mstar worker: MSTAR_FAULT_SHARD_EXIT: killing shard {sh} of {stage} before its marker");
        // SAFETY: sends SIGKILL to this process
        unsafe { libc::kill(libc::getpid(), libc::SIGKILL) };
    }
    let marker = ShardMarker {
        stage: stage.to_string(),
        iteration,
        shard: sh.index,
        shards: sh.count,
        fingerprint: inst.fingerprint.clone(),
        attempt: job.attempt.clone(),
        worker,
        files: c.files,
        rows: c.rows,
        bytes: c.bytes,
        schema: c.schema,
        side: c.side,
        host: crate::store::lock::hostname(),
        pid: std::process::id(),
        started_at: started_at.to_rfc3339(),
        finished_at: chrono::Utc::now().to_rfc3339(),
        duration_ms: clock.elapsed().as_millis() as u64,
    };
    let mut body = serde_json::to_vec_pretty(&marker).map_err(|e| Error::Usage(e.to_string()))?;
    body.push(b'\n');
    if !store.put_if(&marker_rel(stage, iteration, &job.attempt, sh.index), body, None).await? {
        for f in marker.files.iter().chain(marker.side.iter().flat_map(|s| s.files.iter())) {
            let _ = store.delete(&store.loc.path(&f.path)).await;
        }
        return Err(Error::Store(crate::store::StoreError::Conflict(format!(
            "shard {sh} of stage {stage} at iteration {iteration} already has a marker: another worker finished it first; this worker's files were deleted"
        ))));
    }
    Ok(marker)
}

/// Computes `inst` as `n` shards, one `mstar worker` each, on the executor `kind` (which
/// launches the workers, watches them and retries a failed shard alone up to `retries` times),
/// and commits the stage when every shard's marker is present and matches the plan. The
/// executors differ only in how the workers are started and watched; the job, the markers and
/// the commit are this function's.
#[allow(clippy::too_many_arguments)]
pub async fn coordinate(
    p: &crate::spec::Pipeline,
    store: &RunStore,
    inst: &Instance,
    committed: &BTreeMap<(String, u32), Manifest>,
    current: Option<&Manifest>,
    n: u32,
    retries: u32,
    kind: ExecutorKind,
    exec: &ExecutorSpec,
) -> Result<Manifest, Error> {
    let (stage, it) = (inst.stage.as_str(), inst.iteration);
    for input in &inst.inputs {
        for (i, fp) in input.iterations.iter().zip(&input.fingerprints) {
            if committed.get(&(input.stage.clone(), *i)).is_none_or(|m| &m.fingerprint != fp) {
                return Err(Error::Usage(format!("input {} at iteration {i} is not committed with the planned fingerprint", input.stage)));
            }
        }
    }
    let started_at = chrono::Utc::now();
    let clock = Instant::now();
    for stale in store.uncommitted_files(stage, it, current).await? {
        store.delete(&stale.location).await?;
    }
    clear_job(store, stage, it).await?;
    let attempt = runner::attempt_id();
    let pipeline_dir = std::fs::canonicalize(&p.base_dir).unwrap_or_else(|_| p.base_dir.clone());
    let job = ShardJob {
        stage: stage.to_string(),
        iteration: it,
        fingerprint: inst.fingerprint.clone(),
        shards: n,
        attempt: attempt.clone(),
        pipeline_dir: pipeline_dir.to_string_lossy().into_owned(),
        created_at: started_at.to_rfc3339(),
    };
    store.write_json(&job_rel(stage, it), &job).await?;
    let launch = Launch { store, pipeline: &p.name, stage, iteration: it, shards: n, attempt: &attempt, retries, pipeline_dir: &pipeline_dir };
    let failed = executor::launch(kind, &launch, exec).await?;
    if !failed.is_empty() {
        let list: Vec<String> = failed.iter().map(|(i, why)| format!("shard {i}/{n}: {why}")).collect();
        return Err(Error::Usage(format!("{} of {n} shards failed (after {retries} retries each): {}; nothing was committed", failed.len(), list.join("; "))));
    }
    // every marker present and of this job and plan
    let (workers_done, committing) = (clock.elapsed(), Instant::now());
    let mut markers = Vec::new();
    for i in 0..n {
        let rel = marker_rel(stage, it, &attempt, i);
        let m: ShardMarker =
            store.read_json(&rel).await?.ok_or_else(|| Error::Usage(format!("shard {i}/{n}: its worker exited cleanly but wrote no marker ({rel})")))?;
        if m.fingerprint != inst.fingerprint || m.attempt != attempt || m.shard != i || m.shards != n || m.stage != stage || m.iteration != it {
            return Err(Error::Usage(format!(
                "shard {i}/{n}: its marker {rel} is of another job (shard {}/{}, attempt {}, fingerprint {}); expected attempt {attempt}, fingerprint {}",
                m.shard,
                m.shards,
                m.attempt,
                &m.fingerprint[..m.fingerprint.len().min(12)],
                &inst.fingerprint[..12]
            )));
        }
        for f in m.files.iter().chain(m.side.iter().flat_map(|s| s.files.iter())) {
            if !store.exists(&f.path).await? {
                return Err(Error::Usage(format!("shard {i}/{n}: its marker lists {} which is not in the store", f.path)));
            }
        }
        if i > 0 && m.schema != markers.first().map(|f: &ShardMarker| f.schema.clone()).unwrap_or_default() {
            return Err(Error::Usage(format!("shard {i}/{n} wrote another schema than shard 0")));
        }
        markers.push(m);
    }
    let mut side: Vec<SideTable> = Vec::new();
    for s in markers.iter().flat_map(|m| m.side.iter()) {
        match side.iter_mut().find(|x| x.name == s.name) {
            Some(x) if x.schema == s.schema => {
                x.files.extend(s.files.iter().cloned());
                x.rows += s.rows;
            }
            Some(_) => return Err(Error::Usage(format!("side table `{}`: the shards wrote different schemas", s.name))),
            None => side.push(s.clone()),
        }
    }
    let m = Manifest {
        format: MANIFEST_FORMAT,
        stage: stage.to_string(),
        iteration: it,
        op: inst.op.clone(),
        fingerprint: inst.fingerprint.clone(),
        attempt,
        kind: OutputKind::Table,
        files: markers.iter().flat_map(|m| m.files.iter().cloned()).collect(),
        rows: markers.iter().map(|m| m.rows).sum(),
        bytes: markers.iter().map(|m| m.bytes).sum(),
        schema: markers[0].schema.clone(),
        inputs: runner::manifest_inputs(inst),
        side,
        started_at: started_at.to_rfc3339(),
        finished_at: chrono::Utc::now().to_rfc3339(),
        duration_ms: clock.elapsed().as_millis() as u64,
        mstar_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    runner::commit(store, &m, current).await?;
    let committed = committing.elapsed();
    // the files of workers that died, then the job and its markers
    for stale in store.uncommitted_files(stage, it, Some(&m)).await? {
        store.delete(&stale.location).await?;
    }
    clear_job(store, stage, it).await?;
    eprintln!(
        "  {stage}: {n} shards done in {:.2}s; commit {:.0} ms (markers read and checked, manifest put), clean-up {:.0} ms",
        workers_done.as_secs_f64(),
        committed.as_secs_f64() * 1e3,
        (committing.elapsed() - committed).as_secs_f64() * 1e3
    );
    Ok(m)
}

async fn clear_job(store: &RunStore, stage: &str, it: u32) -> Result<(), Error> {
    for meta in store.loc.list(&format!("{}/", job_dir(stage, it))).await? {
        store.delete(&meta.location).await?;
    }
    // a local store keeps the emptied folders
    if let Some(root) = store.loc.local_root() {
        let dir = root.join(job_dir(stage, it));
        let _ = std::fs::remove_dir_all(&dir);
        for up in dir.ancestors().skip(1).take(2) {
            let _ = std::fs::remove_dir(up);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(n: u32) -> ShardJob {
        ShardJob {
            stage: "rollouts".into(),
            iteration: 2,
            fingerprint: "f".into(),
            shards: n,
            attempt: "a".into(),
            pipeline_dir: "/".into(),
            created_at: String::new(),
        }
    }

    #[test]
    fn shards_are_a_stable_hash_of_the_prompt_id() {
        // FNV-1a 64 of "" is its offset basis; pinned values so the partition never moves
        assert_eq!(shard_of("", 1 << 31), (0xcbf2_9ce4_8422_2325u64 % (1 << 31)) as u32);
        let ids: Vec<String> = (0..1000).map(|i| format!("synth-train-{i:05}")).collect();
        let counts = ids.iter().fold([0u32; 4], |mut c, id| {
            c[shard_of(id, 4) as usize] += 1;
            c
        });
        assert!(counts.iter().all(|&c| c > 200), "{counts:?}");
        assert_eq!([shard_of("a", 4), shard_of("synth-train-00000", 4), shard_of("synth-train-00001", 7)], [0, 3, 2]);
        assert!(ids.iter().all(|id| shard_of(id, 1) == 0));
    }

    #[test]
    fn the_shard_index_comes_from_the_flag_or_the_array_variables() {
        let none = |_: &str| None;
        let slurm = |v: &str| (v == "SLURM_ARRAY_TASK_ID").then(|| "2".to_string());
        let k8s = |v: &str| (v == "JOB_COMPLETION_INDEX").then(|| "3".to_string());
        assert_eq!(resolve_shard(Some("1/4"), &none, &job(4)), Ok(Shard { index: 1, count: 4 }));
        assert_eq!(resolve_shard(Some("/4"), &slurm, &job(4)), Ok(Shard { index: 2, count: 4 }));
        assert_eq!(resolve_shard(None, &k8s, &job(4)), Ok(Shard { index: 3, count: 4 }));
        // the flag's index wins over the environment
        assert_eq!(resolve_shard(Some("0/4"), &slurm, &job(4)), Ok(Shard { index: 0, count: 4 }));
        let e = resolve_shard(None, &none, &job(4)).unwrap_err();
        assert!(e.contains("no shard index for stage rollouts at iteration 2") && e.contains("SLURM_ARRAY_TASK_ID"), "{e}");
        let e = resolve_shard(None, &|_: &str| Some("4".to_string()), &job(4)).unwrap_err();
        assert!(e.contains("shard index 4 (from SLURM_ARRAY_TASK_ID) is not below the number of shards 4") && e.contains("--array=0-3"), "{e}");
        let e = resolve_shard(Some("1/3"), &none, &job(4)).unwrap_err();
        assert!(e.contains("--shard says 3 shards, but the coordinator's job for stage rollouts at iteration 2 has 4"), "{e}");
        assert!(resolve_shard(Some("4"), &none, &job(4)).unwrap_err().contains("expected i/N"));
        assert!(resolve_shard(Some("x/4"), &none, &job(4)).unwrap_err().contains("`x` is not a shard index"));
        assert!(resolve_shard(Some("1/0"), &none, &job(4)).unwrap_err().contains("not a number of shards"));
    }
}
