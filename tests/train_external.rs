//! `train_external`: a user's training command as a stage, through the real binary. A
//! standard-library Python script (tests/fixtures/train_external/train.py) stands in for the
//! trainer: it gets the rows as Parquet and writes a model folder that mstar commits, the next
//! iteration's generate samples from it, editing the script recomputes the stage (and nothing
//! else does), and a failing script fails the stage with its stderr, committing nothing.

mod common;
use common::*;
use std::path::Path;

fn write_pipeline(dir: &Path, env: &str) -> std::path::PathBuf {
    let f = dir.join("ext.yaml");
    std::fs::write(
        &f,
        format!(
            r#"name: ext
seed: 7
iterations: 2
datasets:
  train: {{synth: {{split: train, count: 3, seed: 9}}}}
stages:
  - {{id: prompts, op: import, dataset: train}}
  - id: rollouts
    op: generate
    prompts: prompts
    policy: [sft@prev]
    model: {{path: qwen}}
    samples: 2
    sampling: {{temperature: 1.0, top_p: 0.95, max_new_tokens: 6}}
  - id: sft_data
    op: sql
    query: "SELECT p.question, p.images, r.response FROM rollouts r JOIN prompts p ON r.prompt_id = p.prompt_id WHERE r.iteration = ${{iteration}}"
  - id: sft
    op: train_external
    data: sft_data
    model: {{path: qwen}}
    command: [python3, train.py]
    files: [train.py]
    env: {env}
"#
        ),
    )
    .unwrap();
    f
}

fn project() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen");
    std::fs::create_dir_all(&model).unwrap();
    for e in std::fs::read_dir(repo().join("tests/model/qwen2_5_vl")).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), model.join(e.file_name())).unwrap();
        }
    }
    std::fs::copy(repo().join("tests/fixtures/train_external/train.py"), tmp.path().join("train.py")).unwrap();
    tmp
}

const ROLLOUTS: &str = "SELECT iteration, prompt_id, sample_idx, response, num_tokens, logprob FROM rollouts ORDER BY iteration, prompt_id, sample_idx";

#[test]
fn an_external_trainer_is_a_stage() {
    let tmp = project();
    let dir = tmp.path();
    let p = write_pipeline(dir, "{SCALE: '3'}");
    let store = dir.join("store");
    let store = store.to_str().unwrap();
    let started = std::time::Instant::now();
    let (_, err) = ok(bin().arg("run").arg(&p).args(["--store", store]));
    eprintln!("two iterations: {:.1} s", started.elapsed().as_secs_f64());
    assert_eq!(outcomes(&err, "computed"), ["0/prompts", "1/rollouts", "1/sft_data", "1/sft", "2/rollouts", "2/sft_data", "2/sft"], "{err}");
    // its output reaches the log; the second iteration samples the first one's checkpoint
    assert!(err.contains("[sft] training sft at iteration 1") && err.contains("[sft] trained on 6 rows"), "{err}");
    assert!(err.contains("the checkpoint of `sft` (iteration 1)"), "{err}");
    // what the command was given: the rows, where to start, the run's seed
    let calls = std::fs::read_to_string(dir.join("calls.log")).unwrap();
    assert_eq!(
        calls,
        concat!(
            r#"{"MSTAR_ITERATION": "1", "MSTAR_SEED": "7", "MSTAR_STAGE": "sft", "MSTAR_TRAIN_ROWS": "6", "from_base": true}"#,
            "\n",
            r#"{"MSTAR_ITERATION": "2", "MSTAR_SEED": "7", "MSTAR_STAGE": "sft", "MSTAR_TRAIN_ROWS": "6", "from_base": false}"#,
            "\n"
        )
    );
    // the committed folder: the command's config and weights, the base's processor files
    let m: serde_json::Value = serde_json::from_slice(&std::fs::read(Path::new(store).join("_manifests/iteration=1/sft.json")).unwrap()).unwrap();
    let mut names: Vec<&str> = m["files"].as_array().unwrap().iter().map(|f| f["path"].as_str().unwrap().rsplit('/').next().unwrap()).collect();
    names.sort();
    assert!(
        names.starts_with(&["added_tokens.json", "chat_template.jinja", "config.json", "generation_config.json", "merges.txt", "model.safetensors"]),
        "{names:?}"
    );
    assert!(names.contains(&"preprocessor_config.json") && names.contains(&"tokenizer.json"), "{names:?}");
    let rollouts = sql_csv(store, ROLLOUTS);

    // a rerun skips; rewriting the script unchanged (a new mtime) changes nothing, nor does a
    // file it does not declare
    let (_, err) = ok(bin().arg("run").arg(&p).args(["--store", store]));
    assert!(outcomes(&err, "computed").is_empty(), "{err}");
    let script = std::fs::read_to_string(dir.join("train.py")).unwrap();
    std::thread::sleep(std::time::Duration::from_millis(20));
    std::fs::write(dir.join("train.py"), &script).unwrap();
    std::fs::write(dir.join("notes.txt"), "not declared").unwrap();
    let (_, err) = ok(bin().arg("run").arg(&p).args(["--store", store]));
    assert!(outcomes(&err, "computed").is_empty(), "{err}");
    // editing the script recomputes the stage and what reads it
    std::fs::write(dir.join("train.py"), format!("{script}\n# lr 2e-5\n")).unwrap();
    let (_, err) = ok(bin().arg("run").arg(&p).args(["--store", store]));
    assert_eq!(outcomes(&err, "computed"), ["1/sft", "2/rollouts", "2/sft_data", "2/sft"], "{err}");
    assert_eq!(sql_csv(store, ROLLOUTS), rollouts, "the same script gives the same rollouts");

    // the identity trainer (SCALE 1): the first iteration is the same (the base model), the
    // second differs — it sampled the committed folder
    let p1 = write_pipeline(dir, "{SCALE: '1'}");
    let s1 = dir.join("s1");
    ok(bin().arg("run").arg(&p1).args(["--store", s1.to_str().unwrap()]));
    let other = sql_csv(s1.to_str().unwrap(), ROLLOUTS);
    let first = |csv: &str| csv.lines().filter(|l| l.starts_with("1,")).map(str::to_string).collect::<Vec<_>>();
    let second = |csv: &str| csv.lines().filter(|l| l.starts_with("2,")).map(str::to_string).collect::<Vec<_>>();
    assert_eq!(first(&other).len(), 6);
    assert_eq!(first(&other), first(&rollouts));
    assert_ne!(second(&other), second(&rollouts), "iteration 2 sampled the same model under SCALE 1 and 3");
}

/// The shipped example (TRL on several GPUs, not run here) is a valid pipeline.
#[test]
fn the_trl_example_validates() {
    let (out, _) = ok(bin().arg("validate").arg(repo().join("pipelines/external/qwen_vl_trl.yaml")));
    assert!(out.contains("ok") && out.contains("16 stage runs"), "{out}");
}

#[test]
fn a_failing_trainer_fails_the_stage_and_commits_nothing() {
    let tmp = project();
    let dir = tmp.path();
    let p = write_pipeline(dir, "{FAIL: '1'}");
    let store = dir.join("store");
    let (code, _, err) = fails(bin().arg("run").arg(&p).args(["--store", store.to_str().unwrap()]));
    assert_ne!(code, 0);
    assert!(err.contains("`python3 train.py` exited with status 3"), "{err}");
    assert!(err.contains("boom: the learning rate is not a number") && err.contains("Traceback"), "{err}");
    assert!(!store.join("_manifests/iteration=1/sft.json").exists());
    let left: Vec<_> = walk(&store.join("checkpoints"));
    assert!(left.is_empty(), "{left:?}");
    // a command that does not exist, and one that writes no checkpoint
    for (command, says) in [("[./no-such-trainer]", "cannot start `./no-such-trainer`"), ("[bash, -c, 'echo hi']", "wrote no checkpoint to MSTAR_OUTPUT_DIR")] {
        let text = std::fs::read_to_string(&p).unwrap().replace("[python3, train.py]", command).replace("{FAIL: '1'}", "{}");
        std::fs::write(&p, text).unwrap();
        let (_, _, err) = fails(bin().arg("run").arg(&p).args(["--store", store.to_str().unwrap()]));
        assert!(err.contains(says), "{command}: {err}");
        assert!(!store.join("_manifests/iteration=1/sft.json").exists());
        std::fs::write(&p, std::fs::read_to_string(&p).unwrap().replace(command, "[python3, train.py]")).unwrap();
    }
    // spec errors name the key
    let text = std::fs::read_to_string(&p).unwrap().replace("[python3, train.py]", "[]").replace("env: {}", "env: {MSTAR_SEED: '1'}");
    std::fs::write(&p, text).unwrap();
    let (_, _, err) = fails(bin().arg("validate").arg(&p));
    assert!(err.contains("stages.sft.command") && err.contains("name the program"), "{err}");
    assert!(err.contains("stages.sft.env.MSTAR_SEED") && err.contains("mstar sets them"), "{err}");
    // a declared file that is missing
    let text = std::fs::read_to_string(&p).unwrap().replace("command: []", "command: [python3, train.py]").replace("MSTAR_SEED", "X");
    std::fs::write(&p, text).unwrap();
    std::fs::remove_file(dir.join("train.py")).unwrap();
    let (_, _, err) = fails(bin().arg("run").arg(&p).args(["--store", store.to_str().unwrap()]));
    assert!(err.contains("files: `train.py`"), "{err}");
}

/// SIGTERM to `mstar run` while the command runs: the command and the process it started (its
/// process group) are killed, the run ends within seconds, nothing of the stage is committed and
/// the lock is released.
#[test]
fn an_interrupted_run_stops_the_trainer() {
    use std::io::{BufRead, BufReader};
    use std::time::{Duration, Instant};
    let tmp = project();
    let dir = tmp.path();
    let p = write_pipeline(dir, "{SLEEP: '120'}");
    let store = dir.join("store");
    let mut child =
        bin().arg("run").arg(&p).arg("--store").arg(&store).stdout(std::process::Stdio::null()).stderr(std::process::Stdio::piped()).spawn().unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let mut err = String::new();
    while !err.contains("[sft] sleeping") {
        let line = lines.next().unwrap_or_else(|| panic!("the run ended: {err}")).unwrap();
        err.push_str(&line);
        err.push('\n');
    }
    let pids: Vec<i32> = std::fs::read_to_string(dir.join("trainer.pid")).unwrap().split_whitespace().map(|p| p.parse().unwrap()).collect();
    let sent = Instant::now();
    // SAFETY: kill(2) on our own child's pid.
    assert_eq!(unsafe { libc::kill(child.id() as i32, libc::SIGTERM) }, 0);
    let status = loop {
        if let Some(s) = child.try_wait().unwrap() {
            break s;
        }
        if sent.elapsed() > Duration::from_secs(15) {
            child.kill().unwrap();
            child.wait().unwrap();
            panic!("the run was still going 15 s after SIGTERM");
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    err.extend(lines.map_while(|l| l.ok()).map(|l| l + "\n"));
    assert!(!status.success() && err.contains("interrupted"), "{status:?}\n{err}");
    assert!(sent.elapsed() < Duration::from_secs(5), "the run took {:?} to stop", sent.elapsed());
    // the trainer and the process it started are gone (no process, or a zombie not yet reaped)
    for pid in pids {
        let gone = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(50));
            std::fs::read_to_string(format!("/proc/{pid}/stat")).map_or(true, |st| st.rsplit(')').next().is_some_and(|r| r.trim_start().starts_with('Z')))
        });
        assert!(gone, "pid {pid} of the trainer's process group outlived the run");
    }
    assert!(!store.join("_lock").exists(), "the lock must be released");
    assert!(!store.join("_manifests/iteration=1/sft.json").exists());
}

/// Every file below `dir` (none when it does not exist).
fn walk(dir: &Path) -> Vec<std::path::PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            if e.path().is_dir() {
                stack.push(e.path());
            } else {
                out.push(e.path());
            }
        }
    }
    out
}
