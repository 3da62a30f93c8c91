//! The policy operators end to end on a micro self-evolving pipeline: model_init → warm-up
//! train → per iteration generate → verify → train (continuous) → eval. Rollouts do not depend
//! on the generation batch size; the optimizer step count carries across iterations; a
//! diverging loss stops the stage and keeps the last good checkpoint.

mod common;
use common::*;
use std::path::Path;

fn pipeline(dir: &Path) -> std::path::PathBuf {
    ok(bin().args(["data", "synth", "--out"]).arg(dir.join("synth")).args([
        "--seed",
        "5",
        "--train",
        "24",
        "--cot",
        "24",
        "--unlabeled",
        "0",
        "--val",
        "0",
        "--test",
        "6",
        "--test-hard",
        "0",
    ]));
    std::fs::create_dir_all(dir.join("sql")).unwrap();
    std::fs::copy(repo().join("sql/eval_metrics.sql"), dir.join("sql/eval_metrics.sql")).unwrap();
    let f = dir.join("p.yaml");
    std::fs::write(
        &f,
        r#"name: micro
seed: 3
iterations: 2
datasets:
  train: {path: synth/train.parquet}
  test: {path: synth/test.parquet}
stages:
  - {id: train_prompts, op: import, dataset: train}
  - {id: test_prompts, op: import, dataset: test}
  - id: cot
    op: sql
    scope: setup
    query: SELECT prompt_id, question, images, gold_cot AS response FROM train_prompts WHERE gold_cot IS NOT NULL
  - {id: init, op: model_init, corpus: train_prompts, size: tiny, vocab_size: 320}
  - id: warmup
    op: train
    scope: setup
    data: cot
    base: init
    epochs: 2
    micro_batch: 8
    schedule: {kind: constant, lr: 0.003}
  - id: batch
    op: sql
    query: SELECT * FROM train_prompts WHERE CAST(substr(prompt_id, 13) AS INT) % 2 = ${iteration} % 2
  - id: rollouts
    op: generate
    prompts: batch
    policy: [sft@prev, warmup]
    samples: 2
    sampling: {temperature: 1.0, top_p: 0.95, max_new_tokens: 20}
    batch_size: 7
  - {id: verified, op: verify, rollouts: rollouts, prompts: batch}
  - id: selected
    op: sql
    query: |
      SELECT v.prompt_id, b.question, b.images, v.response
      FROM verified v JOIN batch b ON v.prompt_id = b.prompt_id AND b.iteration = ${iteration}
      WHERE v.iteration = ${iteration}
  - id: sft
    op: train
    data: selected
    base: warmup
    init: last
    optimizer: continue
    micro_batch: 8
    schedule: {kind: constant, lr: 0.001}
  - {id: eval, op: eval, prompts: test_prompts, policy: [sft], split: test, k: 2, sampling: {max_new_tokens: 20}}
  - {id: metrics, op: sql, sql: eval_metrics, params: {samples: eval}}
"#,
    )
    .unwrap();
    f
}

const ROLLOUTS: &str = "SELECT iteration, prompt_id, sample_idx, seed, response, num_tokens, finish_reason, round(logprob, 3) AS logprob FROM rollouts ORDER BY iteration, prompt_id, sample_idx";

#[test]
fn micro_pipeline_is_batch_invariant_and_continues_optimizer_state() {
    let d = tempfile::tempdir().unwrap();
    let f = pipeline(d.path());
    let store = |n: &str| d.path().join(n).to_string_lossy().into_owned();
    ok(bin().arg("run").arg(&f).args(["--store", &store("b7")]));
    let seven = sql_csv(&store("b7"), ROLLOUTS);
    assert_eq!(sql_csv(&store("b7"), "SELECT count(*) AS n FROM rollouts"), "n\n48\n");
    for bs in ["1", "64"] {
        ok(bin().arg("run").arg(&f).args(["--store", &store(bs), "--set", &format!("stages.rollouts.batch_size={bs}")]));
        assert_eq!(sql_csv(&store(bs), ROLLOUTS), seven, "rollouts differ at batch size {bs}");
    }
    // the optimizer step (scheduler position) carries on from sft@1 to sft@2; sft@1 starts a
    // fresh one from the warm-up's weights
    let steps =
        sql_csv(&store("b7"), "SELECT iteration, stage, min(step) AS first, max(step) AS last FROM train_log GROUP BY iteration, stage ORDER BY iteration");
    let rows: Vec<Vec<i64>> = steps.lines().skip(1).map(|l| l.split(',').filter_map(|x| x.parse().ok()).collect()).collect();
    assert_eq!(rows.len(), 3, "{steps}");
    assert!(rows[1][1] == 1 && rows[1][2] + 1 == rows[2][1], "steps do not continue: {steps}");
    let metrics = sql_csv(&store("b7"), "SELECT iteration, name FROM metrics ORDER BY iteration, name");
    assert!(
        metrics.contains("1,greedy_accuracy") && metrics.contains("2,pass@k") && metrics.contains("2,greedy_steps_ok") && !metrics.contains("reward_pass"),
        "{metrics}"
    );
    // eval_samples: one greedy decode and k = 2 samples per test prompt, judged
    let decodes = sql_csv(&store("b7"), "SELECT greedy, count(*) AS n, count(DISTINCT prompt_id) AS prompts, count(score) AS scored FROM eval WHERE iteration = 2 GROUP BY greedy ORDER BY greedy");
    let prompts = sql_csv(&store("b7"), "SELECT count(*) AS n FROM test_prompts");
    let n: usize = prompts.lines().nth(1).unwrap().parse().unwrap();
    assert_eq!(decodes, format!("greedy,n,prompts,scored\nfalse,{},{n},0\ntrue,{n},{n},0\n", 2 * n), "{decodes}");
}

#[test]
fn a_diverging_loss_stops_the_stage_and_keeps_the_last_checkpoint() {
    let d = tempfile::tempdir().unwrap();
    let f = pipeline(d.path());
    let store = d.path().join("s");
    let (_, _, err) = fails(bin().arg("run").arg(&f).arg("--store").arg(&store).args(["--set", "stages.sft.schedule={kind: constant, lr: 1.0e12}"]));
    assert!(err.contains("stage sft (iteration 1) failed") && (err.contains("loss became") || err.contains("gradient norm became")), "{err}");
    assert!(store.join("_manifests/iteration=0/warmup.json").exists());
    assert!(!store.join("_manifests/iteration=1/sft.json").exists());
    // with a sane learning rate the run resumes from there
    let (_, err) = ok(bin().arg("run").arg(&f).arg("--store").arg(&store));
    assert!(outcomes(&err, "skipped").contains(&"0/warmup".to_string()), "{err}");
}

/// One step at an absurd learning rate leaves every weight infinite though the loss it saw was
/// finite: the checkpoint is refused before its manifest, so nothing downstream reads it.
#[test]
fn a_checkpoint_with_non_finite_weights_is_never_committed() {
    let d = tempfile::tempdir().unwrap();
    let f = pipeline(d.path());
    let store = d.path().join("s");
    let one_step = ["--set", "stages.warmup.micro_batch=64", "--set", "stages.warmup.epochs=1", "--set", "stages.warmup.schedule={kind: constant, lr: 1.0e39}"];
    let (_, _, err) = fails(bin().arg("run").arg(&f).arg("--store").arg(&store).args(one_step));
    assert!(err.contains("stage warmup (setup) failed") || err.contains("stage warmup"), "{err}");
    assert!(err.contains("checkpoint not committed") && err.contains("NaN or infinite"), "{err}");
    assert!(!store.join("_manifests/iteration=0/warmup.json").exists());
    assert!(!store.join("_manifests/iteration=1/rollouts.json").exists());
}

#[test]
fn sigterm_stops_a_training_stage_between_steps_and_releases_the_lock() {
    use std::io::Read;
    use std::time::{Duration, Instant};
    let d = tempfile::tempdir().unwrap();
    let f = pipeline(d.path());
    let store = d.path().join("s");
    // a warm-up of 100,000 epochs would run for hours
    let mut child = bin()
        .arg("run")
        .arg(&f)
        .arg("--store")
        .arg(&store)
        .args(["--set", "stages.warmup.epochs=100000"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let started = Instant::now();
    while !store.join("_manifests/iteration=0/init.json").exists() {
        assert!(started.elapsed() < Duration::from_secs(60), "init was not committed within 60 s");
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(1500)); // well inside the warm-up's training loop
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(10) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the run was still going 10 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let mut err = String::new();
    child.stderr.take().unwrap().read_to_string(&mut err).unwrap();
    assert!(!status.success() && err.contains("interrupted"), "{status:?}\n{err}");
    assert!(!store.join("_lock").exists(), "the lock must be released");
    assert!(!store.join("_manifests/iteration=0/warmup.json").exists());
}
