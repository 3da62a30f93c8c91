//! Sharded stages with the local executor: `mstar run --shards 4` (and `shards:` in a spec)
//! computes every row-parallel stage as worker processes over a partition of its prompts, and
//! its tables equal those of one shard row for row; a killed worker is rerun alone; bad shard
//! settings are spec errors; a worker without a job says so. The Slurm executor on a real
//! single-node Slurm (`.ci/slurm-up.sh`) over an S3 store: a cancelled array task is
//! resubmitted alone and the tables equal one shard's; Ctrl-C cancels the job. The Kubernetes
//! executor writes its Job manifest into the store and says when kubectl is missing.

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
    dump_env(store, tables, &[])
}

/// Like [`dump`], with `env` set for `mstar sql` (an S3 store's credentials).
fn dump_env(store: &str, tables: &[&str], env: &[(&str, String)]) -> Vec<(String, Vec<serde_json::Map<String, serde_json::Value>>)> {
    tables
        .iter()
        .map(|t| {
            let json = ok(bin().envs(env.iter().map(|(k, v)| (k, v))).args(["sql", "--store", store, "--format", "json", &format!("SELECT * FROM {t}")])).0;
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
    assert_eq!(err.matches(": 4 shards (worker processes").count(), 7, "{err}");
    for s in ["train_prompts", "test_prompts", "label_samples", "step_labels", "rollouts", "verified", "step_scores"] {
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

/// import keeps its own shard's rows: a MathVista file (images decoded by the shard that keeps
/// the record; one record quarantined) and a JSONL file with a broken line, as 3 shards, give
/// the prompts and quarantine tables of one shard, each row and each bad record once.
#[test]
fn a_sharded_import_equals_one_shard() {
    let d = tempfile::tempdir().unwrap();
    let mv = d.path().join("mv");
    std::fs::create_dir_all(mv.join("images")).unwrap();
    let fixture = repo().join("tests/fixtures/mathvista");
    std::fs::copy(fixture.join("testmini.json"), mv.join("testmini.json")).unwrap();
    for e in std::fs::read_dir(fixture.join("images")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), mv.join("images").join(e.file_name())).unwrap();
    }
    let mut lines: Vec<String> = (0..20).map(|i| format!(r#"{{"prompt_id": "p{i}", "question": "what is {i} + 1?", "answer": "{}"}}"#, i + 1)).collect();
    lines.insert(7, "{\"prompt_id\": \"broken\", ".to_string());
    std::fs::write(d.path().join("lines.jsonl"), lines.join("\n") + "\n").unwrap();
    let f = d.path().join("imports.yaml");
    std::fs::write(
        &f,
        "name: imports\niterations: 1\ndatasets:\n  mv: {path: mv/testmini.json, format: mathvista}\n  lines: {path: lines.jsonl}\nstages:\n  - {id: mv_prompts, op: import, dataset: mv}\n  - {id: line_prompts, op: import, dataset: lines}\n",
    )
    .unwrap();
    let store = |n: &str| d.path().join(n).to_string_lossy().into_owned();
    ok(bin().arg("run").arg(&f).args(["--store", &store("one")]));
    let (_, err) = ok(bin().arg("run").arg(&f).args(["--store", &store("three"), "--shards", "3"]));
    for s in ["mv_prompts", "line_prompts"] {
        assert!(err.contains(&format!("  {s}: 3 shards (worker processes")), "{s} not sharded: {err}");
    }
    let tables = ["mv_prompts", "line_prompts", "quarantine"];
    let (a, b) = (dump(&store("one"), &tables), dump(&store("three"), &tables));
    assert_eq!(a, b, "3 shards of import differ from 1");
    let count = |t: &str| sql_csv(&store("three"), &format!("SELECT count(*) AS n FROM {t}"));
    assert_eq!(count("line_prompts"), "n\n20\n");
    let q = sql_csv(&store("three"), "SELECT source, count(*) AS n FROM quarantine GROUP BY source ORDER BY source");
    assert!(q.contains("lines,1") && q.contains("mv,"), "each bad record once: {q}");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(d.path().join("three/_manifests/iteration=0/line_prompts.json")).unwrap()).unwrap();
    assert_eq!(m["files"].as_array().unwrap().len(), 3, "one file per shard: {m}");
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
            "stages.scored.shards: `shards: 2` applies to row-parallel operators (import, verify, generate, eval, prm_label, prm_score); `scored` is a `sql` stage"
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
        err.contains("stage train_prompts runs as 2 worker process(es), which cannot open the in-process store memory://shards/run")
            && !err.contains("computed"),
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
    // only label_samples as workers (with --shards 2 the imports' short-lived workers come first)
    c.env("MSTAR_FAULT_PAUSE_MS", "label_samples:60000").arg("run").arg(&f).args([
        "--store",
        &store,
        "--set",
        "stages.label_samples.shards=2",
        "--set",
        "rows_per_file=2",
    ]);
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

/// Whether `program` is on PATH.
fn on_path(program: &str) -> bool {
    std::env::var_os("PATH").is_some_and(|p| std::env::split_paths(&p).any(|d| d.join(program).is_file()))
}

/// An s3s-fs server on 127.0.0.1 (killed on drop) and the environment that reaches it.
struct S3 {
    child: std::process::Child,
    root: tempfile::TempDir,
    env: Vec<(&'static str, String)>,
}

impl Drop for S3 {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3_server() -> S3 {
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bucket")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = std::process::Command::new(std::env::var("MSTAR_S3S_FS").unwrap_or_else(|_| "s3s-fs".into()))
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "mstar", "--secret-key", "mstarsecret"])
        .arg(root.path())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("s3s-fs (.ci/run installs it)");
    let start = std::time::Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed().as_secs() < 20, "s3s-fs did not start");
        std::thread::sleep(std::time::Duration::from_millis(20));
    }
    let env = vec![
        ("AWS_ACCESS_KEY_ID", "mstar".to_string()),
        ("AWS_SECRET_ACCESS_KEY", "mstarsecret".to_string()),
        ("AWS_REGION", "us-east-1".to_string()),
        ("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{port}")),
    ];
    S3 { child, root, env }
}

/// The tasks of the Slurm jobs named `name`: (job, task, state).
fn slurm_tasks(name: &str) -> Vec<(String, String, String)> {
    let out = std::process::Command::new("squeue").args(["-h", "--states=all", "-o", "%F|%K|%T|%j"]).output().unwrap();
    text(&out.stdout)
        .lines()
        .filter_map(|l| {
            let p: Vec<&str> = l.trim().split('|').collect();
            (p.len() == 4 && p[3] == name).then(|| (p[0].to_string(), p[1].to_string(), p[2].to_string()))
        })
        .collect()
}

/// A run whose standard error is collected by a thread (and echoed for the test's log).
fn spawn_collecting(c: &mut std::process::Command) -> (std::process::Child, std::sync::Arc<std::sync::Mutex<String>>) {
    let mut child = c.stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let err = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
    let sink = err.clone();
    let pipe = child.stderr.take().unwrap();
    std::thread::spawn(move || {
        use std::io::BufRead;
        for line in std::io::BufReader::new(pipe).lines().map_while(Result::ok) {
            eprintln!("{line}");
            sink.lock().unwrap().push_str(&(line + "\n"));
        }
    });
    (child, err)
}

/// The rollouts stage (generate) of the micro PRM pipeline as a 3-task Slurm array over an S3
/// store: task 1 is cancelled mid-stage (scancel), resubmitted alone, and the committed tables
/// equal the 1-shard local run's; then a run interrupted (SIGINT) mid-stage cancels its job.
#[test]
fn slurm_executor_resubmits_a_cancelled_task_and_equals_one_shard() {
    if !on_path("sbatch") {
        assert!(std::env::var("CI").as_deref() != Ok("true"), "CI=true but Slurm's sbatch is not on PATH: .ci/run starts Slurm with .ci/slurm-up.sh");
        eprintln!("\n*** SKIPPING the Slurm executor test: sbatch is not on PATH (start a single-node Slurm with .ci/slurm-up.sh) ***\n");
        return;
    }
    let srv = s3_server();
    let d = tempfile::tempdir().unwrap();
    let f = prm_pipeline(d.path());
    let one = d.path().join("one").to_string_lossy().into_owned();
    let t = std::time::Instant::now();
    // 2-row files: the fault hook pauses after each full file (below); the same for both runs
    let out = run_prm(&f, &one, &["--set", "rows_per_file=2"]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let one_secs = t.elapsed().as_secs_f64();

    let store = "s3://bucket/runs/slurm";
    let slurm_run = |pause_ms: u32, extra: &[&str]| {
        let mut c = bin();
        c.envs(srv.env.iter().map(|(k, v)| (k, v)))
            // a pause after each full 2-row file keeps the tasks running long enough to cancel one
            .env("MSTAR_FAULT_PAUSE_MS", format!("rollouts:{pause_ms}"))
            .arg("run")
            .arg(&f)
            .args(["--store", store, "--shard-retries", "1", "--set", "rows_per_file=2"]);
        for s in PRM_MICRO {
            c.args(["--set", s]);
        }
        c.args(["--set", "stages.rollouts.shards=3", "--set", "stages.rollouts.executor=slurm", "--set", "slurm={poll_secs: 0.5, log_dir: logs}"]);
        c.args(extra);
        c
    };
    let t = std::time::Instant::now();
    let (mut run, err) = spawn_collecting(&mut slurm_run(1500, &[]));
    // wait for task 1 of the run's array to run, then cancel it alone
    let (job, name) = submitted(&mut run, &err);
    let start = std::time::Instant::now();
    while !slurm_tasks(&name).iter().any(|(j, k, s)| *j == job && k == "1" && s == "RUNNING") {
        assert!(start.elapsed().as_secs() < 300, "task 1 of the rollouts array never ran: {}", err.lock().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(700));
    let ok_cancel = std::process::Command::new("scancel").arg(format!("{job}_1")).status().unwrap();
    assert!(ok_cancel.success());
    let status = run.wait().unwrap();
    let slurm_secs = t.elapsed().as_secs_f64();
    std::thread::sleep(std::time::Duration::from_millis(200));
    let err = err.lock().unwrap().clone();
    assert!(status.success(), "{err}");
    eprintln!("prm micro pipeline: 1 shard local {one_secs:.1}s; rollouts as a 3-task Slurm array over S3, one task cancelled: {slurm_secs:.1}s");
    assert!(
        err.contains(&format!("rollouts: shard 1/3 failed (Slurm task {job}_1 ended CANCELLED")) && err.contains("resubmitted it alone as job"),
        "the cancelled task was not resubmitted: {err}"
    );
    // the other tasks ran once; the resubmitted job is one task
    let tasks = slurm_tasks(&name);
    let again: Vec<_> = tasks.iter().filter(|(j, _, _)| *j != job).collect();
    assert_eq!(again.len(), 1, "{tasks:?}");
    assert_eq!((again[0].1.as_str(), again[0].2.as_str()), ("1", "COMPLETED"), "{tasks:?}");
    assert_eq!(tasks.iter().filter(|(j, k, s)| *j == job && k != "1" && s == "COMPLETED").count(), 2, "{tasks:?}");
    // the committed tables equal one local shard's; the cancelled task's files are gone
    let (a, b) = (dump(&one, PRM_TABLES), dump_env(store, PRM_TABLES, &srv.env));
    if let Some(d) = difference(&a, &b, 1e-6) {
        panic!("the Slurm run differs from 1 local shard: {d}");
    }
    let (st, _) = ok(bin().envs(srv.env.iter().map(|(k, v)| (k, v))).args(["status", store]));
    assert!(st.contains("no orphaned files"), "{st}");
    let left = files_under(&srv.root.path().join("bucket/runs/slurm/_shards"));
    assert!(left.is_empty(), "the job, its markers and its script are removed after the commit: {left:?}");
    let logs: Vec<_> = std::fs::read_dir(d.path().join("logs")).unwrap().flatten().map(|e| e.file_name().to_string_lossy().into_owned()).collect();
    assert_eq!(logs.len(), 4, "3 tasks and the resubmitted one log to slurm.log_dir: {logs:?}");

    // Ctrl-C of mstar run cancels its array
    let (mut run, err) = spawn_collecting(&mut slurm_run(60_000, &["--from", "1/rollouts"]));
    let (job2, name2) = submitted(&mut run, &err);
    let start = std::time::Instant::now();
    while !slurm_tasks(&name2).iter().any(|(_, _, s)| s == "RUNNING") {
        assert!(start.elapsed().as_secs() < 300, "the second array never ran: {}", err.lock().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    let sigint = std::process::Command::new("kill").args(["-INT", &run.id().to_string()]).status().unwrap();
    assert!(sigint.success());
    let status = run.wait().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(500));
    let err = err.lock().unwrap().clone();
    assert!(!status.success() && err.contains("interrupted") && err.contains(&format!("slurm: cancelled job(s) {job2}")), "{err}");
    let start = std::time::Instant::now();
    loop {
        let left: Vec<_> = slurm_tasks(&name2).into_iter().filter(|(_, _, s)| s != "CANCELLED").collect();
        if left.is_empty() {
            break;
        }
        assert!(start.elapsed().as_secs() < 30, "tasks of the interrupted run's job are left: {left:?}");
        std::thread::sleep(std::time::Duration::from_millis(200));
    }
}

/// The files below `dir` (s3s-fs keeps the folders of deleted objects).
fn files_under(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    for e in std::fs::read_dir(dir).into_iter().flatten().flatten() {
        if e.path().is_dir() {
            out.extend(files_under(&e.path()));
        } else {
            out.push(e.path());
        }
    }
    out
}

/// The job id and job name of the rollouts array the run says it submitted.
fn submitted(run: &mut std::process::Child, err: &std::sync::Arc<std::sync::Mutex<String>>) -> (String, String) {
    let start = std::time::Instant::now();
    loop {
        let text = err.lock().unwrap().clone();
        if let Some(rest) = text.split("rollouts: 3 shards as Slurm job ").nth(1) {
            let job = rest.split_whitespace().next().unwrap().to_string();
            let name = rest.split("job name ").nth(1).unwrap().split(';').next().unwrap().to_string();
            return (job, name);
        }
        assert!(start.elapsed().as_secs() < 600, "no Slurm job was submitted: {text}");
        assert!(run.try_wait().unwrap().is_none(), "the run ended before it submitted the array: {text}");
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
}

/// Executor settings are checked with their YAML paths; the Kubernetes executor writes its
/// Indexed Job manifest into the store's job folder and, without kubectl, says so and where.
#[test]
fn executor_settings_are_checked_and_the_kubernetes_manifest_is_written() {
    let d = tempfile::tempdir().unwrap();
    let f = prm_pipeline(d.path());
    let (_, _, err) = fails(bin().arg("validate").arg(&f).args([
        "--set",
        "executor=sge",
        "--set",
        "stages.scored.executor=slurm",
        "--set",
        "stages.rollouts.executor=kubernetes",
        "--set",
        "slurm={template: missing.sbatch, cpus: 0}",
        "--set",
        "stages.verified.slurm={partition: gpu, gress: gpu:1}",
    ]));
    assert!(err.contains("executor: unknown variant `sge`, expected one of `local`, `slurm`, `kubernetes`"), "{err}");
    assert!(err.contains("stages.scored.executor: `executor: slurm` applies to row-parallel operators"), "{err}");
    assert!(err.contains("stages.rollouts.executor: stage rollouts: executor kubernetes needs `kubernetes.image`"), "{err}");
    assert!(err.contains("slurm.template: cannot read the job script template") && err.contains("missing.sbatch"), "{err}");
    assert!(err.contains("slurm.cpus: cpus must be at least 1"), "{err}");
    assert!(err.contains("stages.verified.slurm.gress: unknown key `gress`"), "{err}");
    std::fs::write(d.path().join("my.sbatch"), "#!/bin/bash\n#SBATCH --array={{ array }}\n{{ comand }}\n").unwrap();
    let (_, _, err) = fails(bin().arg("validate").arg(&f).args(["--set", "slurm={template: my.sbatch}"]));
    assert!(err.contains("slurm.template: my.sbatch:") && err.contains("undefined"), "{err}");
    ok(bin().arg("validate").arg(&f).args([
        "--set",
        "executor=slurm",
        "--set",
        "stages.rollouts.executor=kubernetes",
        "--set",
        "kubernetes={image: mstar:dev}",
    ]));
    let (_, _, err) = fails(bin().args(["run", "--executor", "pbs"]).arg(&f));
    assert!(err.contains("invalid value 'pbs' for '--executor <EXECUTOR>'") && err.contains("local, slurm, kubernetes"), "{err}");

    // kubernetes without kubectl: the manifest is in the store, the error names it
    let store = d.path().join("k").to_string_lossy().into_owned();
    let mut c = bin();
    c.env("PATH", "/nonexistent").arg("run").arg(&f).args([
        "--store",
        &store,
        "--executor",
        "kubernetes",
        "--set",
        "kubernetes={image: ghcr.io/me/mstar:1, gpus: 1, s3_secret: s3-creds}",
    ]);
    for s in PRM_MICRO {
        c.args(["--set", s]);
    }
    let (_, _, err) = fails(&mut c);
    let dir = d.path().join("k/_shards/iteration=0/train_prompts");
    let attempt = std::fs::read_dir(&dir).unwrap().flatten().find(|e| e.path().is_dir()).expect("an attempt folder").file_name();
    let manifest = dir.join(&attempt).join("job.k8s.yaml");
    assert!(
        err.contains("stage train_prompts (iteration 0) failed: stage train_prompts: wrote the Kubernetes Job manifest")
            && err.contains(&manifest.to_string_lossy().into_owned())
            && err.contains("kubectl is not on PATH"),
        "{err}"
    );
    let yaml = std::fs::read_to_string(&manifest).unwrap();
    for line in [
        "apiVersion: batch/v1",
        "kind: Job",
        "completionMode: Indexed",
        "completions: 1",
        "restartPolicy: Never",
        "nvidia.com/gpu: 1",
        "image: ghcr.io/me/mstar:1",
    ] {
        assert!(yaml.contains(line), "{line} not in {yaml}");
    }
    assert!(yaml.contains("$(MSTAR_STORE)") && yaml.contains("name: AWS_SECRET_ACCESS_KEY") && yaml.contains("name: s3-creds"), "{yaml}");
}

/// The Kubernetes executor end to end against a stand-in kubectl (`tests/fixtures/fake-kubectl`,
/// which runs the applied Indexed Job's pods as local processes from the manifest's args and
/// JOB_COMPLETION_INDEX): the stage commits the tables of one shard; an index Kubernetes gave up
/// on (`status.failedIndexes`) fails the stage uncommitted and the Job is deleted.
#[test]
fn kubernetes_executor_with_a_stand_in_kubectl() {
    let d = tempfile::tempdir().unwrap();
    let f = prm_pipeline(d.path());
    let one = d.path().join("one").to_string_lossy().into_owned();
    let out = run_prm(&f, &one, &[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let fake = d.path().join("fakebin");
    std::fs::create_dir_all(&fake).unwrap();
    std::fs::copy(repo().join("tests/fixtures/fake-kubectl"), fake.join("kubectl")).unwrap();
    let path = format!("{}:{}", fake.display(), std::env::var("PATH").unwrap_or_default());
    let k8s_run = |store: &str, calls: &Path, fail: Option<&str>| {
        std::fs::create_dir_all(calls).unwrap();
        let mut c = bin();
        c.env("PATH", &path).env("FAKE_KUBECTL_DIR", calls).env("FAKE_MSTAR", env!("CARGO_BIN_EXE_mstar")).arg("run").arg(&f).args(["--store", store]);
        if let Some(i) = fail {
            c.env("FAKE_FAIL_INDEX", i);
        }
        for s in PRM_MICRO {
            c.args(["--set", s]);
        }
        c.args([
            "--set",
            "stages.rollouts.shards=3",
            "--set",
            "stages.rollouts.executor=kubernetes",
            "--set",
            "kubernetes={image: mstar:test, poll_secs: 0.3}",
        ]);
        c.output().unwrap()
    };
    let store = d.path().join("k8s").to_string_lossy().into_owned();
    let calls = d.path().join("calls-ok");
    let out = k8s_run(&store, &calls, None);
    let err = text(&out.stderr);
    assert!(out.status.success(), "{err}");
    assert!(err.contains("rollouts: 3 shards as Kubernetes Job mstar-rollouts-i1-") && err.contains("job.k8s.yaml"), "{err}");
    let noted = std::fs::read_to_string(calls.join("calls")).unwrap();
    assert!(noted.starts_with("apply -f -\n") && noted.contains("get job mstar-rollouts-i1-") && !noted.contains("delete"), "{noted}");
    for i in 0..3 {
        let log = std::fs::read_to_string(calls.join(format!("pod-{i}.log"))).unwrap();
        assert!(log.contains(&format!("mstar worker: shard {i}/3 of stage rollouts at iteration 1")), "{log}");
    }
    if let Some(diff) = difference(&dump(&one, PRM_TABLES), &dump(&store, PRM_TABLES), 1e-6) {
        panic!("the Kubernetes run differs from 1 local shard: {diff}");
    }
    let (st, _) = ok(bin().args(["status", &store]));
    assert!(st.contains("no orphaned files"), "{st}");

    // index 1 failed for good: the stage fails uncommitted, the Job is deleted
    let store = d.path().join("k8s-fail").to_string_lossy().into_owned();
    let calls = d.path().join("calls-fail");
    let out = k8s_run(&store, &calls, Some("1"));
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains(
            "stage rollouts (iteration 1) failed: 1 of 3 shards failed (after 1 retries each): shard 1/3: Kubernetes index 1 of Job mstar-rollouts-i1-"
        ) && err.contains("kubernetes: deleted the Job"),
        "{err}"
    );
    assert!(std::fs::read_to_string(calls.join("calls")).unwrap().lines().any(|l| l.starts_with("delete job mstar-rollouts-i1-")));
    assert!(!d.path().join("k8s-fail/_manifests/iteration=1/rollouts.json").exists());

    // submit: false, no kubectl: the run writes the manifest and waits; the "pods" started by
    // hand (as the manifest says) let it commit
    let store = d.path().join("k8s-hand").to_string_lossy().into_owned();
    let mut c = bin();
    c.env("PATH", "/nonexistent").arg("run").arg(&f).args(["--store", &store]);
    for s in PRM_MICRO {
        c.args(["--set", s]);
    }
    c.args(["--set", "stages.rollouts.shards=3", "--set", "stages.rollouts.executor=kubernetes"]);
    c.args(["--set", "kubernetes={image: mstar:test, poll_secs: 0.3, submit: false}"]);
    let (mut run, err) = spawn_collecting(&mut c);
    let dir = d.path().join("k8s-hand/_shards/iteration=1/rollouts");
    let start = std::time::Instant::now();
    while !err.lock().unwrap().contains("(kubernetes.submit: false): apply it") {
        assert!(start.elapsed().as_secs() < 300, "no manifest: {}", err.lock().unwrap());
        assert!(run.try_wait().unwrap().is_none(), "the run ended: {}", err.lock().unwrap());
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(files_under(&dir).iter().any(|p| p.ends_with("job.k8s.yaml")), "{:?}", files_under(&dir));
    for i in 0..3 {
        let w = bin()
            .env("JOB_COMPLETION_INDEX", i.to_string())
            .args(["worker", "--store", &store, "--stage", "rollouts", "--iteration", "1", "--shard", "/3"])
            .output()
            .unwrap();
        assert!(w.status.success(), "{}", text(&w.stderr));
    }
    let status = run.wait().unwrap();
    assert!(status.success(), "{}", err.lock().unwrap());
    if let Some(diff) = difference(&dump(&one, PRM_TABLES), &dump(&store, PRM_TABLES), 1e-6) {
        panic!("the hand-applied Kubernetes run differs from 1 local shard: {diff}");
    }
}
