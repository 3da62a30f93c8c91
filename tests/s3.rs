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
    let child = Command::new(exe)
        .args(["--host", "127.0.0.1", "--port", &port.to_string(), "--access-key", "mstar", "--secret-key", "mstarsecret"])
        .arg(root.path())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap();
    let start = Instant::now();
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(start.elapsed() < Duration::from_secs(20), "s3s-fs did not start");
        std::thread::sleep(Duration::from_millis(20));
    }
    Some(Server { child, port, root })
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
        c.arg("run").arg(&pipeline).args(["--store", store, "--format", "csv", "--set", "datasets.prompts.path=s3://bucket/datasets/demo_prompts.jsonl"]).args(extra);
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
