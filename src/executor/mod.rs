//! Executors of sharded stages: where a stage's `mstar worker` processes run (local processes,
//! a Slurm job array, a Kubernetes Indexed Job) and how the coordinator launches and watches them.
//!
//! Every executor ends the same way: the coordinator ([`crate::shard::coordinate`]) commits the
//! stage when every shard's marker is in the store. The cluster executors watch the workers
//! through the store (the markers) and ask the scheduler only which shards died, to resubmit
//! them (Slurm) or to stop waiting for them (Kubernetes retries an index itself).

pub mod kubernetes;
pub mod local;
pub mod slurm;

use crate::store::RunStore;
use crate::Error;
use serde::{Deserialize, Serialize};
use std::collections::{BTreeMap, BTreeSet};

/// Where the workers of a sharded stage run.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum ExecutorKind {
    /// Worker processes on this machine (one per shard, all at once).
    #[default]
    Local,
    /// A Slurm job array (`sbatch --array=0-(N-1)`), one array task per shard.
    Slurm,
    /// A Kubernetes Indexed Job (`completionMode: Indexed`), one index per shard.
    Kubernetes,
}

impl ExecutorKind {
    pub fn name(self) -> &'static str {
        match self {
            Self::Local => "local",
            Self::Slurm => "slurm",
            Self::Kubernetes => "kubernetes",
        }
    }
}

/// A stage's executor settings: its `executor:` (else the pipeline's) and the pipeline's
/// `slurm:` / `kubernetes:` settings with the stage's own keys over them.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ExecutorSpec {
    /// None: not set in the spec (local, unless `mstar run --executor` says otherwise).
    pub kind: Option<ExecutorKind>,
    pub slurm: slurm::SlurmSettings,
    pub kubernetes: kubernetes::KubernetesSettings,
}

impl ExecutorSpec {
    /// The executor that runs the stage: `--executor` over the spec's, local by default.
    pub fn kind_with(&self, run_override: Option<ExecutorKind>) -> ExecutorKind {
        run_override.or(self.kind).unwrap_or_default()
    }
}

/// `a` with `b`'s keys over it (both JSON mappings; anything else: `b` when present).
pub fn merge_settings(a: Option<&serde_json::Value>, b: Option<&serde_json::Value>) -> Option<serde_json::Value> {
    match (a, b) {
        (Some(serde_json::Value::Object(x)), Some(serde_json::Value::Object(y))) => {
            let mut m = x.clone();
            for (k, v) in y {
                m.insert(k.clone(), v.clone());
            }
            Some(serde_json::Value::Object(m))
        }
        (x, y) => y.or(x).cloned(),
    }
}

/// What an executor needs to launch the workers of one sharded stage run.
#[derive(Debug, Clone)]
pub struct Launch<'a> {
    pub store: &'a RunStore,
    pub pipeline: &'a str,
    pub stage: &'a str,
    pub iteration: u32,
    pub shards: u32,
    /// The coordinator's attempt (in the markers' folder).
    pub attempt: &'a str,
    /// How many times a failed shard is run again before the stage fails.
    pub retries: u32,
    /// The pipeline file's folder (absolute).
    pub pipeline_dir: &'a std::path::Path,
}

impl Launch<'_> {
    /// The store-relative folder of this stage run's job, markers and job scripts.
    pub fn job_dir(&self) -> String {
        crate::shard::job_dir(self.stage, self.iteration)
    }

    /// The arguments of `mstar worker` for this stage run, the shard index left to the array
    /// variable (`--shard /N`).
    pub fn worker_args(&self) -> Vec<String> {
        ["worker", "--store", self.store.display(), "--stage", self.stage, "--iteration", &self.iteration.to_string(), "--shard", &format!("/{}", self.shards)]
            .iter()
            .map(|s| s.to_string())
            .collect()
    }

    /// The shards whose marker of this attempt is in the store.
    pub async fn done(&self) -> Result<BTreeSet<u32>, Error> {
        let prefix = format!("{}/{}/", self.job_dir(), self.attempt);
        let mut done = BTreeSet::new();
        for meta in self.store.loc.list(&prefix).await? {
            let name = meta.location.filename().unwrap_or_default();
            if let Some(i) = name.strip_prefix("shard-").and_then(|r| r.strip_suffix(".json")).and_then(|i| i.parse::<u32>().ok()) {
                if i < self.shards {
                    done.insert(i);
                }
            }
        }
        Ok(done)
    }

    /// A name for the stage run's cluster job: `mstar-<stage>-i<iteration>-<attempt>`, lower
    /// case letters, digits and `-` (a DNS label, as Kubernetes wants), at most 52 characters.
    pub fn job_name(&self) -> String {
        let stage: String = self.stage.chars().map(|c| if c.is_ascii_alphanumeric() { c.to_ascii_lowercase() } else { '-' }).collect();
        let tail = format!("-i{}-{}", self.iteration, &self.attempt[..self.attempt.len().min(8)]);
        let head: String = format!("mstar-{stage}").chars().take(52 - tail.len()).collect();
        format!("{}{tail}", head.trim_end_matches('-'))
    }
}

/// The workers' shards that failed for good (after their retries), with why.
pub type Failed = Vec<(u32, String)>;

/// Runs the workers of `l` on `kind` until every shard has its marker or failed for good.
pub async fn launch(kind: ExecutorKind, l: &Launch<'_>, spec: &ExecutorSpec) -> Result<Failed, Error> {
    match kind {
        ExecutorKind::Local => local::run(l).await,
        ExecutorKind::Slurm => slurm::run(l, &spec.slurm).await,
        ExecutorKind::Kubernetes => kubernetes::run(l, &spec.kubernetes).await,
    }
}

/// The seconds between two looks at the store and the scheduler (default 5, at least 0.2).
pub fn poll_interval(secs: Option<f64>) -> std::time::Duration {
    std::time::Duration::from_secs_f64(secs.unwrap_or(5.0).max(0.2))
}

/// Shard indexes in Slurm's and Kubernetes' list form: `0-3,5,7-8` (a `%4` throttle suffix is
/// ignored); None when it is not such a list.
pub fn parse_index_list(s: &str) -> Option<BTreeSet<u32>> {
    let s = s.trim().trim_start_matches('[').trim_end_matches(']');
    let s = s.split('%').next().unwrap_or("");
    let mut out = BTreeSet::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        match part.split_once('-') {
            Some((a, b)) => {
                let (a, b) = (a.trim().parse::<u32>().ok()?, b.trim().parse::<u32>().ok()?);
                if b < a || b - a > 1_000_000 {
                    return None;
                }
                out.extend(a..=b);
            }
            None => {
                out.insert(part.parse::<u32>().ok()?);
            }
        }
    }
    Some(out)
}

/// Whether `program` is an executable on PATH (or a path to one).
pub fn on_path(program: &str) -> bool {
    use std::os::unix::fs::PermissionsExt;
    let ok = |p: &std::path::Path| p.metadata().is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0);
    if program.contains('/') {
        return ok(std::path::Path::new(program));
    }
    std::env::var_os("PATH").is_some_and(|path| std::env::split_paths(&path).any(|d| ok(&d.join(program))))
}

/// Runs `program args` with `stdin` and returns its standard output; an error names the
/// command, its exit status and its error output.
pub async fn command_output(program: &str, args: &[String], stdin: Option<&str>) -> Result<String, Error> {
    use tokio::io::AsyncWriteExt;
    let mut cmd = tokio::process::Command::new(program);
    cmd.args(args)
        .stdin(if stdin.is_some() { std::process::Stdio::piped() } else { std::process::Stdio::null() })
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .kill_on_drop(true);
    let shown = format!("{program} {}", args.join(" "));
    let mut child = cmd.spawn().map_err(|e| Error::Usage(format!("cannot run `{shown}`: {e}")))?;
    if let (Some(text), Some(mut pipe)) = (stdin, child.stdin.take()) {
        pipe.write_all(text.as_bytes()).await?;
        drop(pipe);
    }
    let out = child.wait_with_output().await?;
    if !out.status.success() {
        return Err(Error::Usage(format!("`{shown}` failed ({}): {}", out.status, String::from_utf8_lossy(&out.stderr).trim())));
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Retries left by shard, for the executors that resubmit shards themselves.
#[derive(Debug)]
pub struct Retries {
    left: BTreeMap<u32, u32>,
    of: u32,
}

impl Retries {
    pub fn new(shards: u32, retries: u32) -> Self {
        Self { left: (0..shards).map(|i| (i, retries)).collect(), of: retries }
    }

    /// Takes one retry of `shard`: Some(the retry's number) or None when none is left.
    pub fn take(&mut self, shard: u32) -> Option<u32> {
        let left = self.left.get_mut(&shard)?;
        if *left == 0 {
            return None;
        }
        *left -= 1;
        Some(self.of - *left)
    }

    pub fn of(&self) -> u32 {
        self.of
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn index_lists_as_slurm_and_kubernetes_write_them() {
        let set = |v: &[u32]| v.iter().copied().collect::<BTreeSet<u32>>();
        assert_eq!(parse_index_list("0-3"), Some(set(&[0, 1, 2, 3])));
        assert_eq!(parse_index_list("[1,3-4]"), Some(set(&[1, 3, 4])));
        assert_eq!(parse_index_list("0-7%2"), Some(set(&[0, 1, 2, 3, 4, 5, 6, 7])));
        assert_eq!(parse_index_list("5"), Some(set(&[5])));
        assert_eq!(parse_index_list(""), Some(set(&[])));
        assert_eq!(parse_index_list("N/A"), None);
        assert_eq!(parse_index_list("3-1"), None);
    }

    #[test]
    fn executors_parse_and_the_run_s_choice_wins() {
        let parse = |s: &str| serde_json::from_value::<ExecutorKind>(serde_json::json!(s)).map_err(|e| e.to_string());
        assert_eq!(parse("slurm"), Ok(ExecutorKind::Slurm));
        assert_eq!(parse("kubernetes"), Ok(ExecutorKind::Kubernetes));
        assert_eq!(parse("sge").unwrap_err(), "unknown variant `sge`, expected one of `local`, `slurm`, `kubernetes`");
        let spec = ExecutorSpec { kind: Some(ExecutorKind::Slurm), ..Default::default() };
        assert_eq!(spec.kind_with(None), ExecutorKind::Slurm);
        assert_eq!(spec.kind_with(Some(ExecutorKind::Local)), ExecutorKind::Local);
        assert_eq!(ExecutorSpec::default().kind_with(None), ExecutorKind::Local);
    }

    #[test]
    fn stage_settings_go_over_the_pipeline_s() {
        let a = serde_json::json!({"partition": "cpu", "time": "1:00:00"});
        let b = serde_json::json!({"partition": "gpu", "gres": "gpu:1"});
        assert_eq!(merge_settings(Some(&a), Some(&b)), Some(serde_json::json!({"partition": "gpu", "time": "1:00:00", "gres": "gpu:1"})));
        assert_eq!(merge_settings(Some(&a), None), Some(a.clone()));
        assert_eq!(merge_settings(None, None), None);
    }

    #[test]
    fn retries_count_per_shard() {
        let mut r = Retries::new(3, 2);
        assert_eq!((r.take(1), r.take(1), r.take(1), r.take(0)), (Some(1), Some(2), None, Some(1)));
        assert_eq!(r.take(7), None);
        assert_eq!(r.of(), 2);
    }
}
