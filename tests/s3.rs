//! The recorded-rollouts pipeline on a real S3-compatible server (s3s-fs on 127.0.0.1, started by this
//! test): a run, a dataset imported from S3, SQL over the S3 run, status, and the lock taken
//! with a conditional put.

mod common;
use common::*;
use std::net::TcpStream;
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

struct Server {
    child: Child,
    port: u16,
    root: tempfile::TempDir,
}

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn s3s_fs() -> Option<String> {
    let name = std::env::var("MSTAR_S3S_FS").unwrap_or_else(|_| "s3s-fs".into());
    Command::new(&name).arg("--help").stdout(Stdio::null()).stderr(Stdio::null()).status().ok().map(|_| name)
}

fn start() -> Option<Server> {
    let Some(exe) = s3s_fs() else {
        assert!(std::env::var("CI").is_err(), "s3s-fs is not installed; .ci/run installs it");
        eprintln!("skipping: s3s-fs not installed (cargo install s3s-fs --version 0.14.1 --features binary)");
        return None;
    };
    let root = tempfile::tempdir().unwrap();
    std::fs::create_dir_all(root.path().join("bucket")).unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let child = spawn(&exe, root.path(), port);
    Some(Server { child, port, root })
}

/// s3s-fs serving `root` on `port`, once it accepts connections.
fn spawn(exe: &str, root: &Path, port: u16) -> Child {
    let child = Command::new(exe)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "mstar", "--secret-key", "mstarsecret"])
        .arg(root)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "s3s-fs did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

fn s3<'a>(cmd: &'a mut Command, srv: &Server) -> &'a mut Command {
    cmd.env("AWS_ACCESS_KEY_ID", "mstar")
        .env("AWS_SECRET_ACCESS_KEY", "mstarsecret")
        .env("AWS_REGION", "us-east-1")
        .env("AWS_ENDPOINT_URL", format!("http://127.0.0.1:{}", srv.port))
}

#[test]
fn demo_on_s3() {
    let Some(srv) = start() else { return };
    let p = project();
    // a dataset that lives on S3
    let data = srv.root.path().join("bucket/datasets");
    std::fs::create_dir_all(&data).unwrap();
    std::fs::copy(repo().join("pipelines/data/demo_prompts.jsonl"), data.join("demo_prompts.jsonl")).unwrap();
    let store = "s3://bucket/runs/demo";
    let pipeline = p.path().join("pipelines/recorded.yaml");
    let run = |extra: &[&str]| {
        let mut c = bin();
        c.arg("run")
            .arg(&pipeline)
            .args(["--store", store, "--format", "csv", "--set", "datasets.prompts.path=s3://bucket/datasets/demo_prompts.jsonl"])
            .args(extra);
        s3(&mut c, &srv);
        c.output().unwrap()
    };
    let out = run(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
    let expected = std::fs::read_to_string(repo().join("tests/golden/demo_summary.csv")).unwrap();
    assert_eq!(text(&out.stdout), expected);
    assert!(Path::new(&srv.root.path().join("bucket/runs/demo/_manifests/iteration=3/metrics.json")).exists());
    assert!(!srv.root.path().join("bucket/runs/demo/_lock").exists(), "lock released");

    let (o, _) = ok(s3(bin().args(["sql", "--store", store, "--format", "csv", "SELECT count(*) AS n FROM selected"]), &srv));
    assert_eq!(o, "n\n213\n");
    let (o, _) = ok(s3(bin().args(["status", store]), &srv));
    assert_eq!(o.matches(" done ").count(), 14, "{o}");

    // second run skips everything
    let out = run(&[]);
    assert!(out.status.success());
    assert!(outcomes(&text(&out.stderr), "computed").is_empty(), "{}", text(&out.stderr));

    // the lock: a lock object held by another host refuses the run (conditional put on S3)
    std::fs::write(
        srv.root.path().join("bucket/runs/demo/_lock"),
        r#"{"pid":77,"host":"other-host","started_at":"2026-11-24T00:00:00Z","command":"mstar run demo.yaml"}"#,
    )
    .unwrap();
    let out = run(&[]);
    assert!(!out.status.success());
    let err = text(&out.stderr);
    assert!(err.contains("locked by another run: pid 77 on host other-host") && err.contains("mstar unlock s3://bucket/runs/demo"), "{err}");
    ok(s3(bin().args(["unlock", store]), &srv));
    let out = run(&[]);
    assert!(out.status.success(), "{}", text(&out.stderr));
}

/// Every demo table as sorted CSV lines (as `dump_tables`, over S3).
fn s3_tables(store: &str, srv: &Server) -> String {
    let mut out = String::new();
    for t in DEMO_TABLES {
        let csv = ok(s3(bin().args(["sql", "--store", store, "--format", "csv", &format!("SELECT * FROM {t}")]), srv)).0;
        let mut lines: Vec<&str> = csv.lines().collect();
        lines.sort();
        out.push_str(&format!("{t}\n{}\n", lines.join("\n")));
    }
    out
}

/// The server goes down in the middle of a stage and comes back: the run waits it out with
/// retries (or fails with one clear line), a rerun completes, and the tables equal those of an
/// uninterrupted run. Wrong credentials and a missing bucket each give one clear line.
#[test]
fn s3_outage_mid_stage_wrong_credentials_and_a_missing_bucket() {
    let Some(mut srv) = start() else { return };
    let exe = s3s_fs().unwrap();
    let p = project();
    let pipeline = p.path().join("pipelines/recorded.yaml");
    let run = |store: &str, srv: &Server| {
        let mut c = bin();
        c.arg("run").arg(&pipeline).args(["--store", store, "--set", "rows_per_file=40"]);
        s3(&mut c, srv);
        c
    };
    // a slow stage: rollouts pauses after each 40-row file
    let mut child =
        run("s3://bucket/runs/outage", &srv).env("MSTAR_FAULT_PAUSE_MS", "rollouts:300").stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap();
    let it2 = srv.root.path().join("bucket/runs/outage/tables/rollouts/iteration=2");
    let started = Instant::now();
    while std::fs::read_dir(&it2).map(|d| d.count()).unwrap_or(0) < 1 {
        assert!(started.elapsed() < Duration::from_secs(90), "rollouts of iteration 2 never started");
        assert!(child.try_wait().unwrap().is_none(), "the run ended before the outage");
        std::thread::sleep(Duration::from_millis(20));
    }
    // three seconds without a server, then the same server again
    let _ = srv.child.kill();
    let _ = srv.child.wait();
    std::thread::sleep(Duration::from_secs(3));
    srv.child = spawn(&exe, srv.root.path(), srv.port);
    let out = child.wait_with_output().unwrap();
    let err = text(&out.stderr);
    if !out.status.success() {
        // a failure is one clear line naming the endpoint, no XML, no repeated causes
        let line = err.lines().find(|l| l.starts_with("error:")).unwrap_or_else(|| panic!("no error line: {err}"));
        assert!(line.contains("cannot reach the object store") && !line.contains("<?xml"), "{err}");
    }
    eprintln!("run through the outage: {}", if out.status.success() { "completed after retries" } else { "failed with a clear error" });
    let (_, err2) = ok(&mut run("s3://bucket/runs/outage", &srv));
    if out.status.success() {
        assert!(outcomes(&err2, "computed").is_empty(), "{err2}");
    }
    ok(&mut run("s3://bucket/runs/clean", &srv));
    assert_eq!(s3_tables("s3://bucket/runs/outage", &srv), s3_tables("s3://bucket/runs/clean", &srv));

    // wrong credentials: one line, the code, what to check
    let out = run("s3://bucket/runs/outage", &srv).env("AWS_SECRET_ACCESS_KEY", "wrong").output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert_eq!(err.lines().filter(|l| l.starts_with("error:")).count(), 1, "{err}");
    assert!(err.contains("refused") && err.contains("SignatureDoesNotMatch") && err.contains("AWS_SECRET_ACCESS_KEY") && !err.contains("<?xml"), "{err}");
    // a bucket that does not exist
    let out = s3(bin().args(["sql", "--store", "s3://nobucket/runs/x", "SELECT 1"]), &srv).output().unwrap();
    let err = text(&out.stderr);
    assert!(!out.status.success());
    assert!(err.contains("no such bucket") && err.contains("nobucket") && !err.contains("<?xml"), "{err}");
}

/// Manifest commits on S3 are conditional puts (`If-None-Match: *`, `If-Match: <e_tag>`), which
/// s3s-fs honours: a second first commit and a stale replacing commit both lose with a conflict
/// naming the stage and iteration, and a put at a version read before another writer's put is
/// refused.
#[test]
fn manifest_commits_are_conditional_puts_on_s3() {
    use mstar::store::{manifest, FileEntry, Location, Manifest, RunStore};
    let Some(srv) = start() else { return };
    let s3 = object_store::aws::AmazonS3Builder::new()
        .with_bucket_name("bucket")
        .with_endpoint(format!("http://127.0.0.1:{}", srv.port))
        .with_allow_http(true)
        .with_virtual_hosted_style_request(false)
        .with_region("us-east-1")
        .with_access_key_id("mstar")
        .with_secret_access_key("mstarsecret")
        .build()
        .unwrap();
    let store = RunStore {
        loc: Location {
            store: std::sync::Arc::new(s3),
            prefix: object_store::path::Path::from("runs/cas"),
            url_root: url::Url::parse("s3://bucket").unwrap(),
            display: "s3://bucket/runs/cas".into(),
        },
    };
    let m = |attempt: &str| Manifest {
        format: manifest::MANIFEST_FORMAT,
        stage: "rollouts".into(),
        iteration: 3,
        op: "generate".into(),
        fingerprint: "f".into(),
        attempt: attempt.into(),
        kind: manifest::OutputKind::Table,
        files: vec![FileEntry { path: format!("tables/rollouts/iteration=3/part-{attempt}-00000.parquet"), bytes: 1, rows: Some(1) }],
        rows: 1,
        bytes: 1,
        schema: None,
        inputs: vec![],
        side: vec![],
        started_at: String::new(),
        finished_at: String::new(),
        duration_ms: 0,
        mstar_version: String::new(),
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let (a, b, c) = (m("aaaa"), m("bbbb"), m("cccc"));
        store.commit(&a, None).await.unwrap();
        let e = store.commit(&b, None).await.unwrap_err().to_string();
        assert!(e.contains("stage rollouts at iteration 3: another writer committed it first"), "{e}");
        store.commit(&c, Some(&a)).await.unwrap();
        let e = store.commit(&b, Some(&a)).await.unwrap_err().to_string();
        assert!(e.contains("is attempt cccc, this commit expected attempt aaaa"), "{e}");
        // the puts themselves: Create on an existing object, Update at a stale e_tag
        let rel = "_manifests/iteration=3/rollouts.json";
        let (_, v) = store.read_versioned::<Manifest>(rel).await.unwrap().unwrap();
        assert!(v.e_tag.is_some(), "s3s-fs returns e_tags");
        store.write_json(rel, &b).await.unwrap();
        assert!(!store.put_if(rel, b"{}".to_vec(), Some(&v)).await.unwrap(), "a stale If-Match put must be refused");
        assert!(!store.put_if(rel, b"{}".to_vec(), None).await.unwrap(), "If-None-Match on an existing object must be refused");
        assert_eq!(store.manifest("rollouts", 3).await.unwrap().unwrap().attempt, "bbbb");
        let (_, v) = store.read_versioned::<Manifest>(rel).await.unwrap().unwrap();
        assert!(store.put_if(rel, serde_json::to_vec(&a).unwrap(), Some(&v)).await.unwrap());
        assert_eq!(store.manifest("rollouts", 3).await.unwrap().unwrap().attempt, "aaaa");
    });
}

/// A sharded stage on S3: three `mstar worker` processes (the run's AWS_* settings inherited)
/// write their files and markers to the bucket; the committed table equals one shard's and no
/// shard job or marker is left.
#[test]
fn a_sharded_stage_on_s3() {
    let Some(srv) = start() else { return };
    let p = project();
    let pipeline = p.path().join("pipelines/sharded.yaml");
    std::fs::write(
        &pipeline,
        "extends: recorded.yaml\nstages:\n  - {id: vprompts, op: sql, scope: setup, query: \"SELECT *, CAST(NULL AS INT) AS precision, CAST(NULL AS VARCHAR[]) AS choices FROM prompts\"}\n  - {id: verified, op: verify, rollouts: rollouts, prompts: vprompts, shards: 3}\n",
    )
    .unwrap();
    let store = "s3://bucket/runs/sharded";
    let (_, err) = ok(s3(bin().arg("run").arg(&pipeline).args(["--store", store]), &srv));
    assert_eq!(err.matches("verified: 3 shards (worker processes").count(), 3, "{err}");
    let local = p.path().join("one").to_string_lossy().into_owned();
    ok(bin().arg("run").arg(&pipeline).args(["--store", &local, "--shards", "1"]));
    let q = "SELECT * FROM verified ORDER BY iteration, prompt_id, sample_idx";
    let (sharded, _) = ok(s3(bin().args(["sql", "--store", store, "--format", "csv", q]), &srv));
    assert_eq!(sharded, sql_csv(&local, q));
    let (n, _) = ok(s3(bin().args(["sql", "--store", store, "--format", "csv", "SELECT count(*) AS n FROM verified"]), &srv));
    assert_eq!(n, "n\n960\n", "3 iterations of 320 rollouts");
    let m: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(srv.root.path().join("bucket/runs/sharded/_manifests/iteration=2/verified.json")).unwrap()).unwrap();
    assert_eq!(m["files"].as_array().unwrap().len(), 3, "{m}");
    let mut left = vec![srv.root.path().join("bucket/runs/sharded/_shards")];
    while let Some(d) = left.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            assert!(e.path().is_dir(), "left over: {}", e.path().display());
            left.push(e.path());
        }
    }
}
