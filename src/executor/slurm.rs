//! The Slurm executor: the shards of a stage run as the tasks of one job array
//! (`sbatch --array=0-(N-1)`) from an editable script template; a dead task is resubmitted alone.
//!
//! The coordinator waits through the store (the workers' markers) and asks `squeue` (or `sacct`
//! when the task has left the queue) only which tasks ended without a marker. Ctrl-C of
//! `mstar run` cancels the job (`scancel`).

use super::{poll_interval, Failed, Launch, Retries};
use crate::Error;
use serde::{Deserialize, Serialize};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// `slurm:` settings (the pipeline's, with a stage's own `slurm:` keys over them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct SlurmSettings {
    /// A job script template (minijinja) to use instead of [`DEFAULT_TEMPLATE`]; relative to the
    /// pipeline's folder. Its placeholders are listed in [`TemplateVars`].
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<String>,
    /// `#SBATCH --partition`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub partition: Option<String>,
    /// `#SBATCH --gres`, e.g. `gpu:1`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gres: Option<String>,
    /// `#SBATCH --time`, e.g. `02:00:00`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time: Option<String>,
    /// `#SBATCH --cpus-per-task` (also the worker's RAYON_NUM_THREADS)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpus: Option<u32>,
    /// `#SBATCH --mem`, e.g. `32G`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mem: Option<String>,
    /// More `#SBATCH` options, e.g. `--account=proj`, `--qos=high`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sbatch: Option<Vec<String>>,
    /// Script lines before the worker starts, e.g. `module load cuda/12.4`
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub setup: Option<Vec<String>>,
    /// The `mstar` executable the tasks run (default: the coordinator's own executable)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mstar: Option<String>,
    /// The folder of the tasks' output logs (default: `slurm-logs` in the pipeline's folder)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub log_dir: Option<String>,
    /// Seconds between two looks at the store and the queue (default 5)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_secs: Option<f64>,
}

/// The job script unless `slurm.template` names another. The same placeholders are open to a
/// template of one's own.
pub const DEFAULT_TEMPLATE: &str = r#"#!/bin/bash
#SBATCH --job-name={{ job_name }}
#SBATCH --array={{ array }}
#SBATCH --output={{ output }}
{%- if partition %}
#SBATCH --partition={{ partition }}
{%- endif %}
{%- if gres %}
#SBATCH --gres={{ gres }}
{%- endif %}
{%- if time %}
#SBATCH --time={{ time }}
{%- endif %}
{%- if cpus %}
#SBATCH --cpus-per-task={{ cpus }}
{%- endif %}
{%- if mem %}
#SBATCH --mem={{ mem }}
{%- endif %}
{%- for option in sbatch %}
#SBATCH {{ option }}
{%- endfor %}
# mstar: stage {{ stage }} at iteration {{ iteration }} of pipeline {{ pipeline }} as {{ shards }} shards; store {{ store }}
set -eo pipefail
{%- for line in setup %}
{{ line }}
{%- endfor %}
if [ -n "${SLURM_CPUS_PER_TASK:-}" ]; then export RAYON_NUM_THREADS="$SLURM_CPUS_PER_TASK"; fi
exec {{ command }}
"#;

/// The placeholders of a job script template.
#[derive(Debug, Clone, Serialize)]
pub struct TemplateVars {
    /// `mstar-<stage>-i<iteration>-<attempt>`
    pub job_name: String,
    /// `0-(N-1)`
    pub array: String,
    /// The output log path, with Slurm's `%A` (array job id) and `%a` (task index)
    pub output: String,
    pub partition: Option<String>,
    pub gres: Option<String>,
    pub time: Option<String>,
    pub cpus: Option<u32>,
    pub mem: Option<String>,
    pub sbatch: Vec<String>,
    pub setup: Vec<String>,
    /// The worker's command line, shell-quoted: `mstar worker --store … --shard /N`
    pub command: String,
    pub mstar: String,
    pub store: String,
    pub stage: String,
    pub iteration: u32,
    pub shards: u32,
    pub pipeline: String,
    pub pipeline_dir: String,
}

impl SlurmSettings {
    fn template_path(&self, base_dir: &Path) -> Option<PathBuf> {
        self.template.as_ref().map(|t| base_dir.join(t))
    }

    fn template_text(&self, base_dir: &Path) -> Result<String, String> {
        match self.template_path(base_dir) {
            Some(p) => std::fs::read_to_string(&p).map_err(|e| format!("cannot read the job script template {}: {e}", p.display())),
            None => Ok(DEFAULT_TEMPLATE.to_string()),
        }
    }

    /// The settings' errors as (key, message): an unreadable or broken template, one that does
    /// not run the worker's `{{ command }}`, a zero `cpus` or `poll_secs`.
    pub fn check(&self, base_dir: &Path) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if self.cpus == Some(0) {
            errors.push(("cpus", "cpus must be at least 1".to_string()));
        }
        if self.poll_secs.is_some_and(|s| s.is_nan() || s <= 0.0) {
            errors.push(("poll_secs", "poll_secs must be above 0".to_string()));
        }
        match self.template_text(base_dir) {
            Err(e) => errors.push(("template", e)),
            Ok(text) => {
                let vars = self.vars_for_check();
                match render(&text, &vars) {
                    Err(e) => errors.push(("template", format!("{}: {e}", self.template.as_deref().unwrap_or("default template")))),
                    Ok(script) if !script.contains(&vars.command) => errors.push((
                        "template",
                        format!("{}: the template never runs the worker: it must contain {{{{ command }}}}", self.template.as_deref().unwrap_or("")),
                    )),
                    Ok(_) => {}
                }
            }
        }
        errors
    }

    fn vars_for_check(&self) -> TemplateVars {
        TemplateVars {
            job_name: "mstar-check-i1-0".into(),
            array: "0-1".into(),
            output: "/tmp/check-%A_%a.out".into(),
            partition: self.partition.clone(),
            gres: self.gres.clone(),
            time: self.time.clone(),
            cpus: self.cpus,
            mem: self.mem.clone(),
            sbatch: self.sbatch.clone().unwrap_or_default(),
            setup: self.setup.clone().unwrap_or_default(),
            command: "'/check/mstar' worker --store '/check/store' --stage check --iteration 1 --shard /2".into(),
            mstar: "/check/mstar".into(),
            store: "/check/store".into(),
            stage: "check".into(),
            iteration: 1,
            shards: 2,
            pipeline: "check".into(),
            pipeline_dir: "/check".into(),
        }
    }
}

/// `text` rendered with `vars` (a placeholder the template names but `vars` lacks is an error).
pub fn render(text: &str, vars: &TemplateVars) -> Result<String, String> {
    let mut env = minijinja::Environment::new();
    env.set_undefined_behavior(minijinja::UndefinedBehavior::Strict);
    let mut out = env.render_str(text, minijinja::Value::from(minijinja::value::Serde(vars))).map_err(|e| {
        let mut m = e.to_string();
        if let Some(d) = e.detail().filter(|d| !m.contains(d)) {
            m.push_str(&format!(" ({d})"));
        }
        m
    })?;
    // Jinja drops the template's last newline
    if text.ends_with('\n') && !out.ends_with('\n') {
        out.push('\n');
    }
    Ok(out)
}

/// `s` quoted for a POSIX shell.
pub fn shell_quote(s: &str) -> String {
    if !s.is_empty() && s.chars().all(|c| c.is_ascii_alphanumeric() || "/-_.,:=@%+".contains(c)) {
        return s.to_string();
    }
    format!("'{}'", s.replace('\'', r"'\''"))
}

/// The job script of `l` with `s`.
pub fn script(l: &Launch<'_>, s: &SlurmSettings, mstar: &str, log_dir: &Path) -> Result<String, Error> {
    let text = s.template_text(l.pipeline_dir).map_err(Error::Usage)?;
    let command: Vec<String> = std::iter::once(mstar.to_string()).chain(l.worker_args()).map(|a| shell_quote(&a)).collect();
    let name = l.job_name();
    let vars = TemplateVars {
        array: format!("0-{}", l.shards - 1),
        output: log_dir.join(format!("{name}-%A_%a.out")).to_string_lossy().into_owned(),
        job_name: name,
        partition: s.partition.clone(),
        gres: s.gres.clone(),
        time: s.time.clone(),
        cpus: s.cpus,
        mem: s.mem.clone(),
        sbatch: s.sbatch.clone().unwrap_or_default(),
        setup: s.setup.clone().unwrap_or_default(),
        command: command.join(" "),
        mstar: mstar.to_string(),
        store: l.store.display().to_string(),
        stage: l.stage.to_string(),
        iteration: l.iteration,
        shards: l.shards,
        pipeline: l.pipeline.to_string(),
        pipeline_dir: l.pipeline_dir.to_string_lossy().into_owned(),
    };
    let at = s.template_path(l.pipeline_dir).map_or("the default job script template".to_string(), |p| p.display().to_string());
    render(&text, &vars).map_err(|e| Error::Usage(format!("slurm.template: {at}: {e}")))
}

/// Whether a Slurm job state (`squeue`'s %T, `sacct`'s State) is final.
pub fn ended(state: &str) -> bool {
    matches!(
        state.split_whitespace().next().unwrap_or(""),
        "COMPLETED" | "FAILED" | "CANCELLED" | "TIMEOUT" | "NODE_FAIL" | "OUT_OF_MEMORY" | "PREEMPTED" | "BOOT_FAIL" | "DEADLINE" | "REVOKED"
    )
}

/// The states by (array job id, task index) in `squeue -o '%F|%K|%T'` (or `sacct -P -o
/// JobID,State`, whose JobID is `<job>_<task>` or `<job>_[<tasks>]`) output.
pub fn parse_states(text: &str, sacct: bool) -> BTreeMap<(String, u32), String> {
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let parts: Vec<&str> = line.trim().split('|').collect();
        let (job, tasks, state) = match (sacct, parts.as_slice()) {
            (false, [job, tasks, state, ..]) => (job.to_string(), tasks.to_string(), state.to_string()),
            (true, [id, state, ..]) => match id.split_once('_') {
                Some((job, tasks)) => (job.to_string(), tasks.to_string(), state.to_string()),
                None => continue,
            },
            _ => continue,
        };
        if let Some(tasks) = super::parse_index_list(&tasks) {
            for t in tasks {
                out.insert((job.clone(), t), state.trim().to_string());
            }
        }
    }
    out
}

/// The tasks of the jobs named `name`: squeue's (also recently ended ones), then sacct's for
/// the tasks squeue no longer lists; None when squeue cannot be asked now.
async fn states(name: &str) -> Option<BTreeMap<(String, u32), String>> {
    let args: Vec<String> = ["-h", "--states=all", &format!("--name={name}"), "-o", "%F|%K|%T"].iter().map(|s| s.to_string()).collect();
    let mut states = match super::command_output("squeue", &args, None).await {
        Ok(out) => parse_states(&out, false),
        Err(e) => {
            eprintln!("    (slurm) {e}");
            return None;
        }
    };
    let args: Vec<String> = ["-n", "-P", "-X", &format!("--name={name}"), "-o", "JobID,State"].iter().map(|s| s.to_string()).collect();
    if super::on_path("sacct") {
        if let Ok(out) = super::command_output("sacct", &args, None).await {
            for (k, v) in parse_states(&out, true) {
                states.entry(k).or_insert(v);
            }
        }
    }
    Some(states)
}

/// Submits `script` (the whole array, or only task `task`); the job id.
async fn sbatch(script: &str, task: Option<u32>) -> Result<String, Error> {
    let mut args = vec!["--parsable".to_string()];
    if let Some(i) = task {
        args.push(format!("--array={i}"));
        // a test hook's fault is for the first attempt only (as the local executor's)
        args.push("--export=ALL,MSTAR_FAULT_SHARD_EXIT=".into());
    }
    let out = super::command_output("sbatch", &args, Some(script)).await?;
    let id = out.trim().split(';').next().unwrap_or("").trim().to_string();
    if id.is_empty() || !id.chars().all(|c| c.is_ascii_digit()) {
        return Err(Error::Usage(format!("sbatch --parsable printed `{}`, not a job id", out.trim())));
    }
    Ok(id)
}

/// Cancels the jobs when dropped armed: on Ctrl-C of `mstar run` (the run drops the stage's
/// future) or when the stage fails.
struct Cancel {
    jobs: Vec<String>,
    armed: bool,
}

impl Drop for Cancel {
    fn drop(&mut self) {
        if !self.armed || self.jobs.is_empty() {
            return;
        }
        match std::process::Command::new("scancel").args(&self.jobs).status() {
            Ok(s) if s.success() => eprintln!("  slurm: cancelled job(s) {}", self.jobs.join(", ")),
            Ok(s) => eprintln!("  slurm: scancel {} failed ({s})", self.jobs.join(" ")),
            Err(e) => eprintln!("  slurm: cannot run scancel {}: {e}", self.jobs.join(" ")),
        }
    }
}

/// The last line of a task's log, if it has one.
fn last_log_line(path: &Path) -> Option<String> {
    let text = std::fs::read_to_string(path).ok()?;
    text.lines().rev().find(|l| !l.trim().is_empty()).map(|l| l.trim().to_string())
}

/// Submits the array, then watches the store and the queue until every shard has its marker or
/// failed for good; a task that ended without a marker is resubmitted alone (`--array=i`) up to
/// `l.retries` times.
pub async fn run(l: &Launch<'_>, s: &SlurmSettings) -> Result<Failed, Error> {
    for prog in ["sbatch", "squeue", "scancel"] {
        if !super::on_path(prog) {
            return Err(Error::Usage(format!(
                "stage {} has executor slurm, but `{prog}` is not on PATH: run mstar where Slurm's commands are (a login node), or choose another executor",
                l.stage
            )));
        }
    }
    let n = l.shards;
    let name = l.job_name();
    let log_dir = match &s.log_dir {
        Some(d) => l.pipeline_dir.join(d),
        None => l.pipeline_dir.join("slurm-logs"),
    };
    std::fs::create_dir_all(&log_dir).map_err(|e| Error::Usage(format!("slurm.log_dir: cannot create {}: {e}", log_dir.display())))?;
    let mstar = match &s.mstar {
        Some(m) => m.clone(),
        None => {
            std::env::current_exe().map_err(|e| Error::Usage(format!("cannot find the mstar executable for the workers: {e}")))?.to_string_lossy().into_owned()
        }
    };
    let script = script(l, s, &mstar, &log_dir)?;
    let rel = format!("{}/{}/worker.sbatch", l.job_dir(), l.attempt);
    l.store.write_bytes(&rel, script.clone().into_bytes()).await?;
    let first = sbatch(&script, None).await?;
    let mut cancel = Cancel { jobs: vec![first.clone()], armed: true };
    eprintln!(
        "  {}: {n} shards as Slurm job {first} (array 0-{}, job name {name}; script {}/{rel}; logs {}/{name}-<job>_<shard>.out)",
        l.stage,
        n - 1,
        l.store.display(),
        log_dir.display()
    );
    let log = |job: &str, i: u32| log_dir.join(format!("{name}-{job}_{i}.out"));
    let mut job_of: Vec<String> = vec![first; n as usize];
    let mut retries = Retries::new(n, l.retries);
    let mut failed: BTreeMap<u32, String> = BTreeMap::new();
    let mut unseen = vec![0u32; n as usize];
    let poll = poll_interval(s.poll_secs);
    loop {
        // the queue first: a task's marker is written before it ends, so a task seen ended
        // here and without a marker below has none
        let queue = states(&name).await;
        let done = l.done().await?;
        if done.len() == n as usize {
            cancel.armed = false;
            return Ok(Vec::new());
        }
        if let Some(queue) = &queue {
            for i in 0..n {
                if done.contains(&i) || failed.contains_key(&i) {
                    continue;
                }
                let job = job_of[i as usize].clone();
                let why = match queue.get(&(job.clone(), i)) {
                    Some(st) if ended(st) => {
                        let what = if st == "COMPLETED" { "COMPLETED without writing its marker".to_string() } else { st.clone() };
                        format!("Slurm task {job}_{i} ended {what}")
                    }
                    Some(_) => {
                        unseen[i as usize] = 0;
                        continue;
                    }
                    None => {
                        unseen[i as usize] += 1;
                        if unseen[i as usize] < 3 {
                            continue;
                        }
                        format!("Slurm task {job}_{i} is gone from squeue and sacct without writing its marker")
                    }
                };
                unseen[i as usize] = 0;
                let why = match last_log_line(&log(&job, i)) {
                    Some(last) => format!("{why}; its log {}: {last}", log(&job, i).display()),
                    None => why,
                };
                match retries.take(i) {
                    Some(t) => {
                        let again = sbatch(&script, Some(i)).await?;
                        eprintln!("  {}: shard {i}/{n} failed ({why}); resubmitted it alone as job {again} (retry {t} of {})", l.stage, retries.of());
                        cancel.jobs.push(again.clone());
                        job_of[i as usize] = again;
                    }
                    None => {
                        failed.insert(i, why);
                    }
                }
            }
        }
        if !failed.is_empty() && done.len() + failed.len() == n as usize {
            return Ok(failed.into_iter().collect());
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_script_sets_the_array_and_the_options() {
        let s = SlurmSettings {
            partition: Some("gpu".into()),
            gres: Some("gpu:1".into()),
            time: Some("02:00:00".into()),
            cpus: Some(8),
            sbatch: Some(vec!["--account=proj".into()]),
            setup: Some(vec!["module load cuda/12.4".into()]),
            ..Default::default()
        };
        let mut vars = s.vars_for_check();
        vars.array = "0-3".into();
        let out = render(DEFAULT_TEMPLATE, &vars).unwrap();
        let expected = "#!/bin/bash
#SBATCH --job-name=mstar-check-i1-0
#SBATCH --array=0-3
#SBATCH --output=/tmp/check-%A_%a.out
#SBATCH --partition=gpu
#SBATCH --gres=gpu:1
#SBATCH --time=02:00:00
#SBATCH --cpus-per-task=8
#SBATCH --account=proj
# mstar: stage check at iteration 1 of pipeline check as 2 shards; store /check/store
set -eo pipefail
module load cuda/12.4
if [ -n \"${SLURM_CPUS_PER_TASK:-}\" ]; then export RAYON_NUM_THREADS=\"$SLURM_CPUS_PER_TASK\"; fi
exec '/check/mstar' worker --store '/check/store' --stage check --iteration 1 --shard /2
";
        assert_eq!(out, expected);
        // without options: no empty #SBATCH lines
        let out = render(DEFAULT_TEMPLATE, &SlurmSettings::default().vars_for_check()).unwrap();
        assert!(!out.contains("--partition") && !out.contains("--gres") && out.contains("set -eo pipefail\nif"), "{out}");
    }

    #[test]
    fn templates_are_checked() {
        let d = tempfile::tempdir().unwrap();
        std::fs::write(d.path().join("ok.sbatch"), "#!/bin/sh\n#SBATCH --array={{ array }}\nsrun {{ command }}\n").unwrap();
        std::fs::write(d.path().join("typo.sbatch"), "#!/bin/sh\n#SBATCH --array={{ aray }}\n{{ command }}\n").unwrap();
        std::fs::write(d.path().join("nocmd.sbatch"), "#!/bin/sh\necho {{ stage }}\n").unwrap();
        let with = |t: &str| SlurmSettings { template: Some(t.into()), ..Default::default() }.check(d.path());
        assert!(with("ok.sbatch").is_empty());
        let e = with("typo.sbatch");
        assert_eq!(e[0].0, "template");
        assert!(e[0].1.contains("typo.sbatch") && e[0].1.contains("undefined"), "{e:?}");
        assert!(with("nocmd.sbatch")[0].1.contains("must contain {{ command }}"), "{:?}", with("nocmd.sbatch"));
        assert!(with("missing.sbatch")[0].1.contains("cannot read the job script template"));
        let e = SlurmSettings { cpus: Some(0), poll_secs: Some(0.0), ..Default::default() }.check(d.path());
        assert_eq!(e.iter().map(|x| x.0).collect::<Vec<_>>(), ["cpus", "poll_secs"]);
    }

    #[test]
    fn queue_states_by_task() {
        let q = parse_states("12|0-2|PENDING\n13|1|RUNNING\n14|3|CANCELLED\nbad line\n", false);
        assert_eq!(q.get(&("12".into(), 2)).map(String::as_str), Some("PENDING"));
        assert_eq!(q.get(&("13".into(), 1)).map(String::as_str), Some("RUNNING"));
        assert_eq!(q.len(), 5);
        let a = parse_states("20_1|CANCELLED by 0\n20_[2-3]|PENDING\n21|COMPLETED\n", true);
        assert_eq!(a.get(&("20".into(), 1)).map(String::as_str), Some("CANCELLED by 0"));
        assert_eq!(a.len(), 3);
        assert!(ended("CANCELLED by 0") && ended("COMPLETED") && ended("OUT_OF_MEMORY"));
        assert!(!ended("PENDING") && !ended("RUNNING") && !ended("COMPLETING") && !ended("REQUEUED"));
    }

    #[test]
    fn shell_quoting() {
        assert_eq!(shell_quote("s3://bucket/runs/a"), "s3://bucket/runs/a");
        assert_eq!(shell_quote("/my dir/it's"), r"'/my dir/it'\''s'");
        assert_eq!(shell_quote(""), "''");
    }
}
