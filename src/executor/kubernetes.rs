//! The Kubernetes executor: the shards of a stage run as one Indexed Job (batch/v1,
//! `completionMode: Indexed`, `completions: N`), written into the store's job folder and applied
//! with `kubectl apply -f -`; the coordinator waits through the store (the workers' markers).
//!
//! Kubernetes retries a failed index itself (`backoffLimitPerIndex`: the run's shard retries);
//! `kubectl get job` says which indexes failed for good. `kubernetes.submit: false` only writes
//! the manifest and waits for someone to apply it.

use super::{poll_interval, Failed, Launch};
use crate::Error;
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use std::collections::BTreeMap;

/// `kubernetes:` settings (the pipeline's, with a stage's own `kubernetes:` keys over them).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KubernetesSettings {
    /// The container image with the `mstar` executable (required for this executor)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub image: Option<String>,
    /// The Job's namespace (default: kubectl's current one)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace: Option<String>,
    /// The command that starts mstar in the image (default `[mstar]`); the worker's arguments follow
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub command: Option<Vec<String>>,
    /// How many pods run at once (default: all shards)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub parallelism: Option<u32>,
    /// Resources of each worker: CPU and memory requests (`"4"`, `"16Gi"`) and GPUs
    /// (`nvidia.com/gpu` limits)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cpu: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub memory: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub gpus: Option<u32>,
    /// A Secret whose keys AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY (and AWS_SESSION_TOKEN if
    /// present) are the workers' S3 credentials
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub s3_secret: Option<String>,
    /// More environment variables of the workers, e.g. AWS_ENDPOINT_URL, AWS_REGION
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub env: Option<BTreeMap<String, String>>,
    /// A PersistentVolumeClaim mounted at the pipeline folder's absolute path (the workers read
    /// the pipeline's datasets, SQL and models there)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pipeline_volume: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub service_account: Option<String>,
    /// Seconds the finished Job is kept (`ttlSecondsAfterFinished`; default: kept)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttl_secs: Option<u32>,
    /// false: only write the manifest and wait for the markers (apply it yourself)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub submit: Option<bool>,
    /// Seconds between two looks at the store and the Job (default 5)
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub poll_secs: Option<f64>,
}

impl KubernetesSettings {
    /// The settings' errors as (key, message); `used`: a stage runs on Kubernetes (an image is
    /// then required).
    pub fn check(&self, used: bool) -> Vec<(&'static str, String)> {
        let mut errors = Vec::new();
        if used && self.image.as_deref().is_none_or(|i| i.trim().is_empty()) {
            errors.push(("image", "executor kubernetes needs `kubernetes.image`: the container image with the mstar executable".to_string()));
        }
        if self.parallelism == Some(0) {
            errors.push(("parallelism", "parallelism must be at least 1".to_string()));
        }
        if self.command.as_ref().is_some_and(|c| c.is_empty()) {
            errors.push(("command", "command must name the mstar executable in the image, e.g. [mstar]".to_string()));
        }
        if self.poll_secs.is_some_and(|s| s.is_nan() || s <= 0.0) {
            errors.push(("poll_secs", "poll_secs must be above 0".to_string()));
        }
        for (k, v) in [("namespace", &self.namespace), ("s3_secret", &self.s3_secret), ("pipeline_volume", &self.pipeline_volume)] {
            if let Some(v) = v.as_deref().filter(|v| !is_dns_name(v)) {
                errors.push((k, format!("`{v}` is not a Kubernetes name (lower case letters, digits, `-` and `.`, at most 253)")));
            }
        }
        errors
    }
}

fn is_dns_name(s: &str) -> bool {
    !s.is_empty()
        && s.len() <= 253
        && s.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-' || c == '.')
        && s.starts_with(|c: char| c.is_ascii_alphanumeric())
        && s.ends_with(|c: char| c.is_ascii_alphanumeric())
}

/// The Indexed Job of `l` (batch/v1): one pod per index, `mstar worker --shard /N` taking its
/// index from JOB_COMPLETION_INDEX, the store URL in MSTAR_STORE.
pub fn manifest(l: &Launch<'_>, k: &KubernetesSettings) -> Result<Value, Error> {
    let image = k.image.clone().filter(|i| !i.trim().is_empty()).ok_or_else(|| {
        Error::Usage(format!("stage {} has executor kubernetes, but no `kubernetes.image` (the container image with the mstar executable)", l.stage))
    })?;
    let name = l.job_name();
    let labels = json!({
        "app.kubernetes.io/name": "mstar",
        "app.kubernetes.io/component": "worker",
        "mstar/stage": l.stage.replace('_', "-").to_ascii_lowercase(),
        "mstar/iteration": l.iteration.to_string(),
    });
    let mut args = l.worker_args();
    // the store from the environment (Kubernetes expands $(VAR) in args)
    args[2] = "$(MSTAR_STORE)".into();
    let mut env = vec![json!({"name": "MSTAR_STORE", "value": l.store.display()})];
    if let Some(secret) = &k.s3_secret {
        for (key, optional) in [("AWS_ACCESS_KEY_ID", false), ("AWS_SECRET_ACCESS_KEY", false), ("AWS_SESSION_TOKEN", true)] {
            env.push(json!({"name": key, "valueFrom": {"secretKeyRef": {"name": secret, "key": key, "optional": optional}}}));
        }
    }
    for (n, v) in k.env.iter().flatten() {
        env.push(json!({"name": n, "value": v}));
    }
    let mut requests = serde_json::Map::new();
    let mut limits = serde_json::Map::new();
    if let Some(c) = &k.cpu {
        requests.insert("cpu".into(), json!(c));
    }
    if let Some(m) = &k.memory {
        requests.insert("memory".into(), json!(m));
        limits.insert("memory".into(), json!(m));
    }
    if let Some(g) = k.gpus.filter(|g| *g > 0) {
        // an extended resource: limits only (requests default to them)
        limits.insert("nvidia.com/gpu".into(), json!(g));
    }
    let mut container = json!({
        "name": "worker",
        "image": image,
        "command": k.command.clone().unwrap_or_else(|| vec!["mstar".into()]),
        "args": args,
        "env": env,
        "resources": {"requests": requests, "limits": limits},
    });
    let mut pod = json!({
        "restartPolicy": "Never",
        "containers": [],
    });
    if let Some(claim) = &k.pipeline_volume {
        let dir = l.pipeline_dir.to_string_lossy();
        container["volumeMounts"] = json!([{"name": "pipeline", "mountPath": dir}]);
        container["workingDir"] = json!(dir);
        pod["volumes"] = json!([{"name": "pipeline", "persistentVolumeClaim": {"claimName": claim}}]);
    }
    if let Some(sa) = &k.service_account {
        pod["serviceAccountName"] = json!(sa);
    }
    pod["containers"] = json!([container]);
    let mut metadata = json!({"name": name, "labels": labels});
    if let Some(ns) = &k.namespace {
        metadata["namespace"] = json!(ns);
    }
    let mut spec = json!({
        "completionMode": "Indexed",
        "completions": l.shards,
        "parallelism": k.parallelism.unwrap_or(l.shards).min(l.shards),
        "backoffLimitPerIndex": l.retries,
        "template": {"metadata": {"labels": labels}, "spec": pod},
    });
    if let Some(ttl) = k.ttl_secs {
        spec["ttlSecondsAfterFinished"] = json!(ttl);
    }
    Ok(json!({"apiVersion": "batch/v1", "kind": "Job", "metadata": metadata, "spec": spec}))
}

/// What `kubectl get job -o json` says of a Job: the indexes that failed for good
/// (`status.failedIndexes`) and, when the Job failed as a whole, why.
pub fn job_failures(status: &Value) -> (std::collections::BTreeSet<u32>, Option<String>) {
    let failed = status["status"]["failedIndexes"].as_str().and_then(super::parse_index_list).unwrap_or_default();
    let whole = status["status"]["conditions"].as_array().and_then(|cs| {
        cs.iter()
            .find(|c| c["type"] == "Failed" && c["status"] == "True")
            .map(|c| format!("the Job failed: {} {}", c["reason"].as_str().unwrap_or(""), c["message"].as_str().unwrap_or("")).trim().to_string())
    });
    (failed, whole)
}

/// Deletes the Job when dropped armed (Ctrl-C of `mstar run`, or the stage failed).
struct Delete {
    args: Option<Vec<String>>,
}

impl Drop for Delete {
    fn drop(&mut self) {
        let Some(args) = self.args.take() else { return };
        match std::process::Command::new("kubectl").args(&args).stdout(std::process::Stdio::null()).status() {
            Ok(s) if s.success() => eprintln!("  kubernetes: deleted the Job ({})", args.join(" ")),
            Ok(s) => eprintln!("  kubernetes: kubectl {} failed ({s})", args.join(" ")),
            Err(e) => eprintln!("  kubernetes: cannot run kubectl {}: {e}", args.join(" ")),
        }
    }
}

/// Writes the Job's manifest into the store's job folder, applies it (unless `submit: false`)
/// and waits until every shard has its marker, or Kubernetes gave up on some indexes.
pub async fn run(l: &Launch<'_>, k: &KubernetesSettings) -> Result<Failed, Error> {
    let n = l.shards;
    let m = manifest(l, k)?;
    let yaml = serde_saphyr::to_string(&m).map_err(|e| Error::Usage(format!("cannot write the Job manifest as YAML: {e}")))?;
    let rel = format!("{}/{}/job.k8s.yaml", l.job_dir(), l.attempt);
    l.store.write_bytes(&rel, yaml.clone().into_bytes()).await?;
    let shown = format!("{}/{rel}", l.store.display());
    let name = l.job_name();
    let ns: Vec<String> = k.namespace.iter().flat_map(|ns| ["--namespace".to_string(), ns.clone()]).collect();
    let submit = k.submit.unwrap_or(true);
    let mut delete = Delete { args: None };
    if submit {
        if !super::on_path("kubectl") {
            return Err(Error::Usage(format!(
                "stage {}: wrote the Kubernetes Job manifest {shown}, but kubectl is not on PATH to apply it: install kubectl, or set kubernetes.submit: false, apply the manifest yourself and run again",
                l.stage
            )));
        }
        let mut args = vec!["apply".to_string(), "-f".into(), "-".into()];
        args.extend(ns.iter().cloned());
        let out = super::command_output("kubectl", &args, Some(&yaml)).await?;
        delete.args = Some([vec!["delete".to_string(), "job".into(), name.clone(), "--wait=false".into()], ns.clone()].concat());
        eprintln!("  {}: {n} shards as Kubernetes Job {name} ({}); manifest {shown}", l.stage, out.trim());
    } else {
        eprintln!(
            "  {}: wrote the Kubernetes Job manifest {shown} (kubernetes.submit: false): apply it (kubectl apply -f); the stage commits when its {n} shards' markers are in the store",
            l.stage
        );
    }
    let poll = poll_interval(k.poll_secs);
    loop {
        // the Job's status first: a pod writes its marker before it ends
        let status = if submit {
            let args = [vec!["get".to_string(), "job".into(), name.clone(), "-o".into(), "json".into()], ns.clone()].concat();
            match super::command_output("kubectl", &args, None).await {
                Ok(out) => serde_json::from_str::<Value>(&out).ok(),
                Err(e) => {
                    eprintln!("    (kubernetes) {e}");
                    None
                }
            }
        } else {
            None
        };
        let done = l.done().await?;
        if done.len() == n as usize {
            delete.args = None;
            return Ok(Vec::new());
        }
        if let Some(status) = status {
            let (failed, whole) = job_failures(&status);
            let failed: Failed = failed
                .into_iter()
                .filter(|i| *i < n && !done.contains(i))
                .map(|i| (i, format!("Kubernetes index {i} of Job {name} failed {} time(s) (backoffLimitPerIndex {})", l.retries + 1, l.retries)))
                .collect();
            if let Some(why) = whole {
                let mut all: Failed = (0..n).filter(|i| !done.contains(i)).map(|i| (i, why.clone())).collect();
                for (i, w) in &failed {
                    if let Some(x) = all.iter_mut().find(|x| x.0 == *i) {
                        x.1 = w.clone();
                    }
                }
                return Ok(all);
            }
            if !failed.is_empty() && failed.len() + done.len() == n as usize {
                return Ok(failed);
            }
        }
        tokio::time::sleep(poll).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RunStore;

    /// The manifest field by field against the batch/v1 Job API (JobSpec, PodTemplateSpec,
    /// PodSpec, Container, EnvVar, ResourceRequirements, Volume): names and JSON types.
    #[test]
    fn the_manifest_is_an_indexed_job() {
        let store = RunStore::open("s3://bucket/runs/a").unwrap();
        let dir = std::path::PathBuf::from("/shared/pipelines");
        let l =
            Launch { store: &store, pipeline: "m-star", stage: "rollouts", iteration: 3, shards: 4, attempt: "0123456789ab", retries: 2, pipeline_dir: &dir };
        let k = KubernetesSettings {
            image: Some("ghcr.io/x/mstar:1".into()),
            namespace: Some("ml".into()),
            parallelism: Some(2),
            cpu: Some("4".into()),
            memory: Some("16Gi".into()),
            gpus: Some(1),
            s3_secret: Some("mstar-s3".into()),
            env: Some([("AWS_ENDPOINT_URL".to_string(), "http://minio:9000".to_string())].into()),
            pipeline_volume: Some("pipelines".into()),
            ttl_secs: Some(3600),
            ..Default::default()
        };
        let m = manifest(&l, &k).unwrap();
        assert_eq!(m["apiVersion"], "batch/v1");
        assert_eq!(m["kind"], "Job");
        // ObjectMeta: a DNS label name
        let name = m["metadata"]["name"].as_str().unwrap();
        assert_eq!(name, "mstar-rollouts-i3-01234567");
        assert!(name.len() <= 63 && name.chars().all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-'));
        assert_eq!(m["metadata"]["namespace"], "ml");
        assert_eq!(m["metadata"]["labels"]["mstar/iteration"], "3");
        // JobSpec: integers and the Indexed completion mode
        let spec = &m["spec"];
        assert_eq!(spec["completionMode"], "Indexed");
        assert_eq!(spec["completions"].as_u64(), Some(4));
        assert_eq!(spec["parallelism"].as_u64(), Some(2));
        assert_eq!(spec["backoffLimitPerIndex"].as_u64(), Some(2));
        assert_eq!(spec["ttlSecondsAfterFinished"].as_u64(), Some(3600));
        assert!(spec.get("backoffLimit").is_none(), "left to its default (unlimited with backoffLimitPerIndex)");
        // PodTemplateSpec → PodSpec: restartPolicy Never (required by backoffLimitPerIndex)
        let pod = &spec["template"]["spec"];
        assert_eq!(spec["template"]["metadata"]["labels"]["app.kubernetes.io/name"], "mstar");
        assert_eq!(pod["restartPolicy"], "Never");
        assert_eq!(pod["volumes"][0]["name"], "pipeline");
        assert_eq!(pod["volumes"][0]["persistentVolumeClaim"]["claimName"], "pipelines");
        // Container: command and args are lists of strings; the shard from JOB_COMPLETION_INDEX
        let c = &pod["containers"][0];
        assert_eq!(pod["containers"].as_array().unwrap().len(), 1);
        assert_eq!(c["name"], "worker");
        assert_eq!(c["image"], "ghcr.io/x/mstar:1");
        assert_eq!(c["command"], json!(["mstar"]));
        assert_eq!(c["args"], json!(["worker", "--store", "$(MSTAR_STORE)", "--stage", "rollouts", "--iteration", "3", "--shard", "/4"]));
        assert_eq!(c["workingDir"], "/shared/pipelines");
        assert_eq!(c["volumeMounts"], json!([{"name": "pipeline", "mountPath": "/shared/pipelines"}]));
        // EnvVar: value or valueFrom.secretKeyRef {name, key, optional}
        let env = c["env"].as_array().unwrap();
        assert_eq!(env[0], json!({"name": "MSTAR_STORE", "value": "s3://bucket/runs/a"}));
        assert_eq!(
            env[1],
            json!({"name": "AWS_ACCESS_KEY_ID", "valueFrom": {"secretKeyRef": {"name": "mstar-s3", "key": "AWS_ACCESS_KEY_ID", "optional": false}}})
        );
        assert_eq!(env[2]["valueFrom"]["secretKeyRef"]["key"], "AWS_SECRET_ACCESS_KEY");
        assert_eq!(env[3]["valueFrom"]["secretKeyRef"]["optional"], true);
        assert_eq!(env[4], json!({"name": "AWS_ENDPOINT_URL", "value": "http://minio:9000"}));
        // ResourceRequirements: quantities; the GPU an extended resource in limits
        assert_eq!(c["resources"]["requests"], json!({"cpu": "4", "memory": "16Gi"}));
        assert_eq!(c["resources"]["limits"], json!({"memory": "16Gi", "nvidia.com/gpu": 1}));
        // the YAML written to the store reads back as the same object
        let yaml = serde_saphyr::to_string(&m).unwrap();
        let back: Value = serde_saphyr::from_str(&yaml).unwrap();
        assert_eq!(back, m);

        // the minimum: no GPUs, no namespace, no secret; parallelism at most the shards
        let k = KubernetesSettings { image: Some("mstar:dev".into()), parallelism: Some(9), ..Default::default() };
        let m = manifest(&l, &k).unwrap();
        assert_eq!(m["spec"]["parallelism"].as_u64(), Some(4));
        assert!(m["metadata"].get("namespace").is_none() && m["spec"]["template"]["spec"].get("volumes").is_none());
        assert_eq!(m["spec"]["template"]["spec"]["containers"][0]["resources"], json!({"requests": {}, "limits": {}}));
        let e = manifest(&l, &KubernetesSettings::default()).unwrap_err().to_string();
        assert!(e.contains("stage rollouts has executor kubernetes, but no `kubernetes.image`"), "{e}");
    }

    #[test]
    fn settings_are_checked() {
        let k = KubernetesSettings { parallelism: Some(0), namespace: Some("ML_team".into()), command: Some(vec![]), ..Default::default() };
        let keys: Vec<&str> = k.check(true).iter().map(|e| e.0).collect();
        assert_eq!(keys, ["image", "parallelism", "command", "namespace"]);
        assert!(KubernetesSettings::default().check(false).is_empty());
    }

    #[test]
    fn failed_indexes_from_the_job_status() {
        let s = json!({"status": {"failedIndexes": "1,3", "conditions": [{"type": "FailureTarget", "status": "True"}]}});
        assert_eq!(job_failures(&s), ([1, 3].into(), None));
        let s = json!({"status": {"conditions": [{"type": "Failed", "status": "True", "reason": "BackoffLimitExceeded", "message": "Job has reached the specified backoff limit"}]}});
        assert_eq!(job_failures(&s).1.as_deref(), Some("the Job failed: BackoffLimitExceeded Job has reached the specified backoff limit"));
        assert_eq!(job_failures(&json!({"status": {}})), (Default::default(), None));
    }
}
