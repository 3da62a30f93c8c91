//! Sharded stages with the local executor: `mstar run --shards 4` (and `shards:` in a spec)
//! computes every row-parallel stage as worker processes over a partition of its prompts, and
//! its tables equal those of one shard row for row; a killed worker is rerun alone; bad shard
//! settings are spec errors; a worker without a job says so.

mod common;
use common::*;
use std::path::Path;

/// The tables of the sharded stages and of everything downstream of them.
const PRM_TABLES: &[&str] =
    &["label_samples", "step_labels", "prm_data", "rollouts", "verified", "step_scores", "scored", "selected", "prm_metrics", "prm_report"];

fn run_prm(f: &Path, store: &str, extra: &[&str]) -> std::process::Output {
    let mut c = bin();
    c.arg("run").arg(f).args(["--store", store]);
    for s in PRM_MICRO {
        c.args(["--set", s]);
    }
    c.args(extra);
    c.output().unwrap()
}

/// Columns whose last bits depend on which prompts a stage computes together (reported, not
/// changed here): generate's `logprob` (the stage's prompt bucket, its longest prompt, sets
/// the padded attention length; `model/generate.rs`) and, through it, verify's and the scores
/// SQL's; prm_score's `score` (its micro-batches of right-padded responses). A shard computes
/// its own prompts, so these agree to ~1e-8 relative, not to the bit; every other column
/// (responses, tokens, seeds, labels, verdicts, metrics) is equal.
const LAST_BITS: &[&str] = &["logprob", "logprob_mean", "score", "score_min", "score_mean", "score_last"];

/// Every row of every table in `tables`, as JSON objects, in a total order.
fn dump(store: &str, tables: &[&str]) -> Vec<(String, Vec<serde_json::Map<String, serde_json::Value>>)> {
    tables
        .iter()
        .map(|t| {
            let json = ok(bin().args(["sql", "--store", store, "--format", "json", &format!("SELECT * FROM {t}")])).0;
            let rows: Vec<serde_json::Value> = serde_json::from_str(&json).unwrap_or_else(|e| panic!("{t}: {e}: {json}"));
            let mut rows: Vec<_> = rows.into_iter().map(|r| r.as_object().unwrap().clone()).collect();
            let exact = |r: &serde_json::Map<String, serde_json::Value>| {
                r.iter().filter(|(k, _)| !LAST_BITS.contains(&k.as_str())).map(|(k, v)| format!("{k}={v}")).collect::<Vec<_>>().join(",")
            };
            rows.sort_by_key(|r| exact(r));
            (t.to_string(), rows)
        })
        .collect()
}

/// The first difference between two dumps: any column but `LAST_BITS` must be equal, those
/// within `rel` relative; None when they agree.
fn difference(
    a: &[(String, Vec<serde_json::Map<String, serde_json::Value>>)],
    b: &[(String, Vec<serde_json::Map<String, serde_json::Value>>)],
    rel: f64,
) -> Option<String> {
    for ((t, ra), (_, rb)) in a.iter().zip(b) {
        if ra.len() != rb.len() {
            return Some(format!("{t}: {} rows vs {}", ra.len(), rb.len()));
        }
        for (x, y) in ra.iter().zip(rb) {
            for (k, v) in x {
                let w = &y[k];
                let same = match (LAST_BITS.contains(&k.as_str()), v.as_f64(), w.as_f64()) {
                    (true, Some(p), Some(q)) => (p - q).abs() <= rel * p.abs().max(1.0),
                    _ => v == w,
                };
                if !same {
                    return Some(format!(
                        "{t}.{k}: {v} vs {w}\n  row {}\n  row {}",
                        serde_json::Value::Object(x.clone()),
                        serde_json::Value::Object(y.clone())
                    ));
                }
            }
        }
    }
    None
}

#[test]
fn local_4_shards_equal_1_shard() {
    let d = tempfile::tempdir().unwrap();
    let f = prm_pipeline(d.path());
    let store = |n: &str| d.path().join(n).to_string_lossy().into_owned();
    let t = std::time::Instant::now();
    let out = run_prm(&f, &store("one"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let one_secs = t.elapsed().as_secs_f64();
    let t = std::time::Instant::now();
    let out = run_prm(&f, &store("four"), &["--shards", "4"]);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    let four_secs = t.elapsed().as_secs_f64();
    eprintln!("prm micro pipeline: 1 shard {one_secs:.1}s, 4 shards {four_secs:.1}s");
    // the four row-parallel stages ran as 4 workers each; the others in the run's process
    assert_eq!(err.matches(": 4 shards (worker processes").count(), 5, "{err}");
    for s in ["label_samples", "step_labels", "rollouts", "verified", "step_scores"] {
        assert!(err.contains(&format!("  {s}: 4 shards")), "{s} not sharded: {err}");
        assert!(err.contains(&format!("[shard 3/4] mstar worker: shard 3/4 of stage {s}")), "{err}");
    }
    let (a, b) = (dump(&store("one"), PRM_TABLES), dump(&store("four"), PRM_TABLES));
    if let Some(d) = difference(&a, &b, 1e-6) {
        panic!("4 shards differ from 1: {d}");
    }
    // each shard wrote its own file; the manifest lists them all, the job folder is gone
    let files = sql_csv(&store("four"), "SELECT count(*) AS n FROM rollouts");
    assert_eq!(files, sql_csv(&store("one"), "SELECT count(*) AS n FROM rollouts"));
    let m: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(d.path().join("four/_manifests/iteration=1/rollouts.json")).unwrap()).unwrap();
    assert_eq!(m["files"].as_array().unwrap().len(), 4, "{m}");
    assert!(!d.path().join("four/_shards").exists(), "the shard jobs and markers are removed after the commits");
    let (st, _) = ok(bin().args(["status", &store("four")]));
    assert!(st.contains("no orphaned files"), "{st}");
    // the fingerprints do not depend on the shards: 1 shard over the 4-shard store skips all
    let out = run_prm(&f, &store("four"), &[]);
    assert!(out.status.success());
    assert!(outcomes(&text(&out.stderr), "computed").is_empty(), "{}", text(&out.stderr));
}

/// A worker killed before its marker (MSTAR_FAULT_SHARD_EXIT) is rerun alone and the result
/// equals one shard's; without retries the stage fails uncommitted, and the next run completes.
#[test]
fn a_killed_worker_is_rerun_alone() {
    let d = tempfile::tempdir().unwrap();
    let f = prm_pipeline(d.path());
    let store = |n: &str| d.path().join(n).to_string_lossy().into_owned();
    let out = run_prm(&f, &store("one"), &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));

    let mut c = bin();
    c.env("MSTAR_FAULT_SHARD_EXIT", "rollouts:2");
    let out = {
        c.arg("run").arg(&f).args(["--store", &store("killed"), "--shards", "3"]);
        for s in PRM_MICRO {
            c.args(["--set", s]);
        }
        c.output().unwrap()
    };
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("rollouts: shard 2/3 failed (killed by signal 9") && err.contains("rerunning it alone (retry 1 of 1)"), "{err}");
    // only shard 2 ran twice
    assert_eq!(err.matches("mstar worker: shard 2/3 of stage rollouts").count(), 1, "{err}");
    assert_eq!(err.matches("mstar worker: shard 0/3 of stage rollouts").count(), 1, "{err}");
    // a shard's rows do not depend on its process: equal to the bit to an uninterrupted 3-shard run
    let out = run_prm(&f, &store("three"), &["--shards", "3"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let (a, b) = (dump(&store("three"), PRM_TABLES), dump(&store("killed"), PRM_TABLES));
    if let Some(d) = difference(&a, &b, 0.0) {
        panic!("a rerun shard changed the tables: {d}");
    }
    assert!(difference(&dump(&store("one"), PRM_TABLES), &b, 1e-6).is_none());
    let (st, _) = ok(bin().args(["status", &store("killed")]));
    assert!(st.contains("no orphaned files"), "the dead worker's files were left: {st}");

    // no retries: the stage fails, names the shard, commits nothing; the next run completes it
    let mut c = bin();
    c.env("MSTAR_FAULT_SHARD_EXIT", "step_labels:0");
    c.arg("run").arg(&f).args(["--store", &store("noretry"), "--shards", "2", "--shard-retries", "0"]);
    for s in PRM_MICRO {
        c.args(["--set", s]);
    }
    let (_, _, err) = fails(&mut c);
    assert!(err.contains("stage step_labels (iteration 0) failed: 1 of 2 shards failed") && err.contains("shard 0/2: killed by signal 9"), "{err}");
    assert!(!d.path().join("noretry/_manifests/iteration=0/step_labels.json").exists());
    let out = run_prm(&f, &store("noretry"), &["--shards", "2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    if let Some(d) = difference(&dump(&store("one"), PRM_TABLES), &dump(&store("noretry"), PRM_TABLES), 1e-6) {
        panic!("{d}");
    }
}

#[test]
fn shard_settings_are_checked() {
    let d = tempfile::tempdir().unwrap();
    let f = prm_pipeline(d.path());
    let (_, _, err) = fails(bin().arg("validate").arg(&f).args(["--set", "stages.rollouts.shards=0", "--set", "stages.scored.shards=2"]));
    assert!(err.contains("stages.rollouts.shards: shards must be at least 1"), "{err}");
    assert!(
        err.contains(
            "stages.scored.shards: `shards: 2` applies to row-parallel operators (verify, generate, eval, prm_label, prm_score); `scored` is a `sql` stage"
        ),
        "{err}"
    );
    ok(bin().arg("validate").arg(&f).args(["--set", "stages.rollouts.shards=3"]));
    let (_, _, err) = fails(bin().args(["run", "--shards", "0"]).arg(&f));
    assert!(err.contains("--shards"), "{err}");
    // a memory store cannot be shared with worker processes
    let mut c = bin();
    c.arg("run").arg(&f).args(["--store", "memory://shards/run", "--shards", "2"]);
    for s in PRM_MICRO {
        c.args(["--set", s]);
    }
    let (_, _, err) = fails(&mut c);
    assert!(
        err.contains("stage label_samples (iteration 0) failed: stage label_samples runs as 2 shards, but worker processes cannot open the in-process store"),
        "{err}"
    );
    // a worker with no job to do
    let store = d.path().join("s");
    std::fs::create_dir_all(&store).unwrap();
    let (_, _, err) = fails(bin().args(["worker", "--store"]).arg(&store).args(["--stage", "rollouts", "--iteration", "1", "--shard", "0/2"]));
    assert!(err.contains("no sharded job for stage rollouts at iteration 1 in") && err.contains("_shards/iteration=1/rollouts/job.json"), "{err}");
}

/// The pids of running `mstar worker` processes of `store`.
fn workers_of(store: &str) -> Vec<i32> {
    let mut out = Vec::new();
    for e in std::fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = e.file_name().to_string_lossy().parse::<i32>() else { continue };
        let Ok(cmd) = std::fs::read(e.path().join("cmdline")) else { continue };
        let args: Vec<String> = cmd.split(|b| *b == 0).map(|a| String::from_utf8_lossy(a).into_owned()).collect();
        let zombie = std::fs::read_to_string(e.path().join("stat")).is_ok_and(|s| s.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')));
        if !zombie && args.iter().any(|a| a == "worker") && args.iter().any(|a| a == store) {
            out.push(pid);
        }
    }
    out.sort();
    out
}

/// A coordinator killed with SIGKILL takes its workers with it (PR_SET_PDEATHSIG).
#[test]
fn workers_die_with_their_coordinator() {
    let d = tempfile::tempdir().unwrap();
    let f = prm_pipeline(d.path());
    let store = d.path().join("s").to_string_lossy().into_owned();
    let mut c = bin();
    c.env("MSTAR_FAULT_PAUSE_MS", "label_samples:60000").arg("run").arg(&f).args(["--store", &store, "--shards", "2", "--set", "rows_per_file=2"]);
    for s in PRM_MICRO {
        c.args(["--set", s]);
    }
    let mut run = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::null()).spawn().unwrap();
    let start = std::time::Instant::now();
    let mut workers = workers_of(&store);
    while workers.len() < 2 {
        assert!(start.elapsed().as_secs() < 120, "no workers started");
        std::thread::sleep(std::time::Duration::from_millis(100));
        workers = workers_of(&store);
    }
    // paused a minute after their first file
    std::thread::sleep(std::time::Duration::from_millis(500));
    assert_eq!(workers_of(&store), workers, "the workers should be paused");
    run.kill().unwrap();
    run.wait().unwrap();
    let start = std::time::Instant::now();
    while !workers_of(&store).is_empty() {
        assert!(start.elapsed().as_secs() < 10, "workers outlived their coordinator: {:?}", workers_of(&store));
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    // a worker stops at SIGTERM, also in the middle of its stage
    let mut c = bin();
    c.env("MSTAR_FAULT_PAUSE_MS", "label_samples:60000").args(["worker", "--store", &store, "--stage", "label_samples", "--iteration", "0", "--shard", "0/2"]);
    std::fs::create_dir_all(d.path().join("s/_shards/iteration=0/label_samples")).unwrap();
    let job = serde_json::json!({"stage": "label_samples", "iteration": 0, "fingerprint": plan_fingerprint(&store, "label_samples"), "shards": 2,
        "attempt": "t", "pipeline_dir": d.path(), "created_at": ""});
    std::fs::write(d.path().join("s/_shards/iteration=0/label_samples/job.json"), job.to_string()).unwrap();
    let mut w = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let start = std::time::Instant::now();
    while workers_of(&store).is_empty() {
        assert!(start.elapsed().as_secs() < 60, "the worker did not start");
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    sigterm(w.id());
    let start = std::time::Instant::now();
    let status = loop {
        if let Some(s) = w.try_wait().unwrap() {
            break s;
        }
        assert!(start.elapsed().as_secs() < 10, "the worker ignored SIGTERM");
        std::thread::sleep(std::time::Duration::from_millis(50));
    };
    let mut err = String::new();
    std::io::Read::read_to_string(&mut w.stderr.take().unwrap(), &mut err).unwrap();
    assert!(!status.success() && err.contains("interrupted"), "{status:?}: {err}");
}

fn plan_fingerprint(store: &str, stage: &str) -> String {
    let plan: serde_json::Value = serde_json::from_str(&std::fs::read_to_string(Path::new(store).join("plan.json")).unwrap()).unwrap();
    plan["instances"].as_array().unwrap().iter().find(|i| i["stage"] == stage).unwrap()["fingerprint"].as_str().unwrap().to_string()
}

fn sigterm(pid: u32) {
    let ok = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(ok.success());
}
