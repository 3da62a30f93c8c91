//! A Hugging Face checkpoint folder as the policy of `generate`: the tiny random Qwen2.5-VL of
//! tests/model/qwen2_5_vl samples rollouts for synthetic prompts (image + question) through the
//! real binary; reruns skip, a changed checkpoint recomputes, and bad specs and folders say why.

mod common;
use common::*;
use std::path::Path;

fn write_pipeline(dir: &Path, model: &str, extra: &str) -> std::path::PathBuf {
    write_with_backend(dir, &format!("model: {{path: {model}}}"), extra)
}

fn write_with_backend(dir: &Path, backend: &str, extra: &str) -> std::path::PathBuf {
    let f = dir.join("p.yaml");
    std::fs::write(
        &f,
        format!(
            r#"name: hf
seed: 4
iterations: 1
datasets:
  train: {{synth: {{split: train, count: 3, seed: 9}}}}
stages:
  - {{id: prompts, op: import, dataset: train}}
  - id: rollouts
    op: generate
    prompts: prompts
    {backend}
    samples: 2
    sampling: {{temperature: 1.0, top_p: 0.95, max_new_tokens: 6}}
{extra}"#
        ),
    )
    .unwrap();
    f
}

/// The fixture checkpoint's files (not its lora/ folder) into `to`.
fn copy_fixture(to: &Path) {
    copy_model("qwen2_5_vl", to)
}

fn copy_model(name: &str, to: &Path) {
    for e in std::fs::read_dir(repo().join("tests/model").join(name)).unwrap() {
        let e = e.unwrap();
        if e.path().is_file() {
            std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
        }
    }
}

#[test]
fn generate_from_a_qwen2_5_vl_folder() {
    let tmp = tempfile::tempdir().unwrap();
    // a copy, so the test can touch it
    let model = tmp.path().join("qwen");
    std::fs::create_dir_all(&model).unwrap();
    copy_fixture(&model);
    let p = write_pipeline(tmp.path(), "qwen", "");
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let (_, err) = ok(bin().arg("run").arg(&p).args(["--store", store]));
    assert_eq!(outcomes(&err, "computed"), vec!["0/prompts", "1/rollouts"], "{err}");
    let csv = sql_csv(store, "SELECT prompt_id, sample_idx, num_tokens, finish_reason, temperature FROM rollouts ORDER BY prompt_id, sample_idx");
    let rows: Vec<&str> = csv.lines().skip(1).collect();
    assert_eq!(rows.len(), 6, "{csv}");
    for r in &rows {
        let f: Vec<&str> = r.split(',').collect();
        let n: i32 = f[2].parse().unwrap();
        assert!((0..=6).contains(&n), "{r}");
        assert!(f[3] == "stop" || (f[3] == "length" && n == 6), "{r}");
        assert_eq!(f[4], "1.0");
    }
    let before = sql_csv(store, "SELECT prompt_id, sample_idx, response, logprob FROM rollouts ORDER BY prompt_id, sample_idx");
    // a rerun skips; the same seeds give the same rollouts in a fresh store
    let (_, err) = ok(bin().arg("run").arg(&p).args(["--store", store]));
    assert!(outcomes(&err, "computed").is_empty(), "{err}");
    let store2 = tmp.path().join("store2");
    ok(bin().arg("run").arg(&p).args(["--store", store2.to_str().unwrap()]));
    assert_eq!(sql_csv(store2.to_str().unwrap(), "SELECT prompt_id, sample_idx, response, logprob FROM rollouts ORDER BY prompt_id, sample_idx"), before);
    // a changed checkpoint file recomputes the stage
    let gen = model.join("generation_config.json");
    let text = std::fs::read_to_string(&gen).unwrap();
    std::fs::write(&gen, text.replace('}', " }")).unwrap();
    let (_, err) = ok(bin().arg("run").arg(&p).args(["--store", store]));
    assert_eq!(outcomes(&err, "computed"), vec!["1/rollouts"], "{err}");
}

#[test]
fn generate_from_a_qwen3_vl_folder() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen3");
    std::fs::create_dir_all(&model).unwrap();
    copy_model("qwen3_vl", &model);
    let p = write_pipeline(tmp.path(), "qwen3", "");
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    ok(bin().arg("run").arg(&p).args(["--store", store]));
    let csv = sql_csv(store, "SELECT count(*) AS n, count(DISTINCT prompt_id) AS p, min(num_tokens) >= 0 AS ok FROM rollouts");
    assert_eq!(csv.lines().nth(1), Some("6,3,true"), "{csv}");
}

#[test]
fn bad_model_specs_and_folders_say_what_and_where() {
    let tmp = tempfile::tempdir().unwrap();
    // both an endpoint and a model
    let p = write_pipeline(tmp.path(), "qwen", "    openai: {base_url: 'http://127.0.0.1:9/v1', model: x}\n");
    let (_, _, err) = fails(bin().arg("validate").arg(&p));
    assert!(err.contains("give `openai`") && err.contains("stages.rollouts.openai"), "{err}");
    // a folder without a checkpoint
    std::fs::create_dir_all(tmp.path().join("empty")).unwrap();
    let p = write_pipeline(tmp.path(), "empty", "");
    let store = tmp.path().join("s");
    let (_, _, err) = fails(bin().arg("run").arg(&p).args(["--store", store.to_str().unwrap()]));
    assert!(err.contains("config.json") && err.contains("empty"), "{err}");
    // weights that do not fit the config name the weight
    let model = tmp.path().join("broken");
    std::fs::create_dir_all(&model).unwrap();
    copy_fixture(&model);
    let cfg = std::fs::read_to_string(model.join("config.json")).unwrap();
    std::fs::write(model.join("config.json"), cfg.replace("\"intermediate_size\": 96", "\"intermediate_size\": 80")).unwrap();
    let p = write_pipeline(tmp.path(), "broken", "");
    let (_, _, err) = fails(bin().arg("run").arg(&p).args(["--store", store.to_str().unwrap()]));
    assert!(err.contains("mlp.gate_proj.weight") && err.contains("shape"), "{err}");
}

/// A running `mstar serve`, killed however the test ends.
struct Served(std::process::Child);

impl Drop for Served {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// `mstar serve MODEL` on a free port: the process and its address; its later stderr is
/// collected and returned by the thread's handle.
fn serve(model: &Path, name: &str) -> (Served, String) {
    use std::io::{BufRead, BufReader};
    let mut server = Served(bin().args(["serve"]).arg(model).args(["--port", "0", "--name", name]).stderr(std::process::Stdio::piped()).spawn().unwrap());
    let mut lines = BufReader::new(server.0.stderr.take().unwrap()).lines();
    // warnings at load come before the line that names the address
    let mut seen = String::new();
    let addr = loop {
        let line = lines.next().unwrap_or_else(|| panic!("serve ended: {seen}")).unwrap();
        if let Some(a) = line.split("http://").nth(1).and_then(|r| r.split("/v1").next()) {
            break a.to_string();
        }
        seen.push_str(&line);
        seen.push('\n');
    };
    std::thread::spawn(move || for _ in lines {});
    (server, addr)
}

/// Folders saved by transformers 5.x (`processor_config.json`, `text_config.rope_parameters`,
/// head_dim 8 with unusual M-RoPE sections, a Qwen3-VL generation_config naming end-of-turn ids
/// the tokenizer lacks): generation through the binary, and `mstar serve` giving the same rollouts.
#[test]
fn transformers_5_folders_generate_and_serve() {
    for (name, warns) in [("qwen2_5_vl_v5", false), ("qwen3_vl_v5", true)] {
        let tmp = tempfile::tempdir().unwrap();
        let model = tmp.path().join("m");
        std::fs::create_dir_all(&model).unwrap();
        copy_model(name, &model);
        let local = tmp.path().join("local");
        let (_, err) = ok(bin().arg("run").arg(write_pipeline(tmp.path(), "m", "")).args(["--store", local.to_str().unwrap()]));
        assert_eq!(err.contains("eos_token_id [151645, 151643] not in the tokenizer's vocabulary") && err.contains("\"<|im_end|>\""), warns, "{name}: {err}");
        let (server, addr) = serve(&model, "m");
        let http = tmp.path().join("http");
        ok(bin().arg("run").arg(write_with_backend(tmp.path(), &format!("openai: {{base_url: 'http://{addr}/v1', model: m, retries: 0}}"), "")).args(["--store", http.to_str().unwrap()]));
        drop(server);
        let q = "SELECT prompt_id, sample_idx, response, num_tokens, round(logprob, 3) AS lp, finish_reason FROM rollouts ORDER BY prompt_id, sample_idx";
        let (a, b) = (sql_csv(local.to_str().unwrap(), q), sql_csv(http.to_str().unwrap(), q));
        assert_eq!(a.lines().count(), 7, "{name}: {a}");
        assert!(!a.contains(",error"), "{name}: {a}");
        assert_eq!(a, b, "{name}: local and served rollouts differ");
    }
}

/// `mstar serve` on the fixture folder, and the `openai` backend against it: the rollouts equal
/// those of `model: {path}` (same seeds, same code); bad requests get a 400 that says why; an
/// unreachable endpoint gives `error` rows and `generate_errors`, not a failed stage.
#[test]
fn serve_and_the_openai_backend() {
    use std::io::{Read, Write};
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen");
    std::fs::create_dir_all(&model).unwrap();
    copy_fixture(&model);
    let (server, addr) = serve(&model, "tiny");
    let run = |backend: &str, store: &str| {
        let p = write_with_backend(tmp.path(), backend, "");
        ok(bin().arg("run").arg(&p).args(["--store", store]))
    };
    let (s1, s2) = (tmp.path().join("via_local"), tmp.path().join("via_http"));
    run("model: {path: qwen}", s1.to_str().unwrap());
    run(&format!("openai: {{base_url: 'http://{addr}/v1', model: tiny, retries: 0, concurrency: 3}}"), s2.to_str().unwrap());
    // (a prompt's samples decode as one batch locally, one request each when served: the
    // log-prob sums agree to float rounding)
    let q = "SELECT prompt_id, sample_idx, seed, response, num_tokens, round(logprob, 3) AS lp, finish_reason FROM rollouts ORDER BY prompt_id, sample_idx";
    let (a, b) = (sql_csv(s1.to_str().unwrap(), q), sql_csv(s2.to_str().unwrap(), q));
    assert_eq!(sql_csv(s2.to_str().unwrap(), "SELECT count(*) FROM rollouts WHERE finish_reason <> 'error'").lines().nth(1), Some("6"));
    assert_eq!(a, b, "local and served rollouts differ");
    // a bad request: an image by URL (the server cannot fetch)
    let body = r#"{"model":"tiny","messages":[{"role":"user","content":[{"type":"image_url","image_url":{"url":"https://example.com/a.png"}}]}]}"#;
    let mut c = std::net::TcpStream::connect(&addr).unwrap();
    write!(c, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}", body.len()).unwrap();
    let mut resp = String::new();
    c.read_to_string(&mut resp).unwrap();
    assert!(resp.starts_with("HTTP/1.1 400") && resp.contains("not a data: URL"), "{resp}");
    drop(server);
    // nobody listens any more: every row is an error row, the stage commits
    let s3 = tmp.path().join("down");
    let (_, err) = run(&format!("openai: {{base_url: 'http://{addr}/v1', model: tiny, retries: 1}}"), s3.to_str().unwrap());
    assert!(err.contains("6 failed"), "{err}");
    let s3 = s3.to_str().unwrap();
    assert_eq!(sql_csv(s3, "SELECT count(*) FROM rollouts WHERE finish_reason = 'error' AND response = ''").lines().nth(1), Some("6"));
    let e = sql_csv(s3, "SELECT count(*) AS n, min(attempts) AS a, bool_and(error LIKE '%request to%') AS msg FROM generate_errors");
    assert_eq!(e.lines().nth(1), Some("6,2,true"), "{e}");
}

/// The self-evolving loop on a Qwen-VL folder: generate (the folder, then this run's SFT
/// checkpoint) → train (LoRA or every weight, continuing its optimizer) → generate, through the
/// real binary; checkpoints are peft adapter folders or model folders, and `mstar model export`
/// gives a plain folder that samples exactly what the adapter did.
fn sft_pipeline(dir: &Path, model: &str, train: &str, iterations: u32) -> std::path::PathBuf {
    let f = dir.join(format!("sft_{model}.yaml"));
    std::fs::write(
        &f,
        format!(
            r#"name: hf_sft
seed: 4
iterations: {iterations}
datasets:
  train: {{synth: {{split: train, count: 3, seed: 9}}}}
stages:
  - {{id: prompts, op: import, dataset: train}}
  - id: rollouts
    op: generate
    prompts: prompts
    policy: [sft@prev]
    model: {{path: {model}}}
    samples: 2
    sampling: {{temperature: 1.0, top_p: 0.95, max_new_tokens: 6}}
  - id: sft_data
    op: sql
    query: "SELECT question, images, CAST(answer AS VARCHAR) AS response FROM prompts"
  - id: sft
    op: train
    data: sft_data
    model: {{path: {model}}}
    micro_batch: 2
    grad_accum: 1
    epochs: 2
    schedule: {{kind: constant, lr: 0.01}}
    clip: 1.0
{train}  - {{id: eval_base, op: eval, scope: setup, prompts: prompts, model: {{path: {model}}}, split: train, k: 2, sampling: {{temperature: 1.0, max_new_tokens: 6}}}}
  - {{id: eval, op: eval, prompts: prompts, policy: [sft], model: {{path: {model}}}, split: train, k: 2, sampling: {{temperature: 1.0, max_new_tokens: 6}}}}
"#
        ),
    )
    .unwrap();
    f
}

#[test]
fn lora_sft_on_a_qwen_folder_then_sample_and_export() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen");
    std::fs::create_dir_all(&model).unwrap();
    copy_fixture(&model);
    let p = sft_pipeline(tmp.path(), "qwen", "    lora: {rank: 4, alpha: 8, targets: [q_proj, v_proj, qkv]}\n", 2);
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let (_, err) = ok(bin().arg("run").arg(&p).args(["--store", store]));
    assert_eq!(
        outcomes(&err, "computed"),
        vec!["0/prompts", "0/eval_base", "1/rollouts", "1/sft_data", "1/sft", "1/eval", "2/rollouts", "2/sft_data", "2/sft", "2/eval"],
        "{err}"
    );
    // eval: a greedy decode and 2 samples of each prompt, from the folder (setup) and the adapters
    let ev = sql_csv(store, "SELECT iteration, count(*), sum(CAST(greedy AS INT)), count(DISTINCT prompt_id) FROM (SELECT * FROM eval_base UNION ALL SELECT * FROM eval) GROUP BY iteration ORDER BY iteration");
    assert_eq!(ev.lines().skip(1).collect::<Vec<_>>(), vec!["0,9,3,3", "1,9,3,3", "2,9,3,3"], "{ev}");
    // training changes the greedy decodes
    let all = "(SELECT * FROM eval_base UNION ALL SELECT * FROM eval)";
    let g = sql_csv(store, &format!("SELECT count(DISTINCT response) > 1 FROM {all} WHERE greedy AND prompt_id = (SELECT min(prompt_id) FROM eval)"));
    assert_eq!(g.lines().nth(1), Some("true"), "greedy decodes did not change with training: {}", sql_csv(store, &format!("SELECT iteration, prompt_id, response FROM {all} WHERE greedy ORDER BY 2, 1")));
    assert!(err.contains("generate: the checkpoint of `sft` (iteration 1)"), "{err}");
    // 3 rows × 2 epochs in micro-batches of 2: 4 steps an iteration, counted on across iterations
    let log = sql_csv(store, "SELECT iteration, min(step), max(step), count(*) FROM train_log GROUP BY iteration ORDER BY iteration");
    assert_eq!(log.lines().skip(1).collect::<Vec<_>>(), vec!["1,1,4,4", "2,5,8,4"], "{log}");
    let fell = sql_csv(store, "SELECT max(CASE WHEN step = 8 THEN loss END) < max(CASE WHEN step = 1 THEN loss END) FROM train_log");
    assert_eq!(fell.lines().nth(1), Some("true"), "the loss did not fall: {}", sql_csv(store, "SELECT step, loss FROM train_log ORDER BY step"));
    // the checkpoint is a peft adapter folder plus the optimizer state
    let ck = Path::new(store).join("checkpoints/sft/iteration=2");
    let attempt = std::fs::read_dir(&ck).unwrap().next().unwrap().unwrap().path();
    let mut names: Vec<String> = std::fs::read_dir(&attempt).unwrap().map(|e| e.unwrap().file_name().to_string_lossy().into_owned()).collect();
    names.sort();
    assert_eq!(names, ["adapter_config.json", "adapter_model.safetensors", "optimizer.safetensors", "trainer_state.json"]);
    let ac: serde_json::Value = serde_json::from_slice(&std::fs::read(attempt.join("adapter_config.json")).unwrap()).unwrap();
    assert_eq!(ac["r"], 4);
    assert_eq!(ac["base_model_name_or_path"].as_str().map(Path::new), Some(model.canonicalize().unwrap().as_path()));
    // a rerun skips everything
    let (_, err) = ok(bin().arg("run").arg(&p).args(["--store", store]));
    assert!(outcomes(&err, "computed").is_empty(), "{err}");
    // iteration 1's adapter, merged into a plain folder, samples iteration 2's rollouts again
    let out = tmp.path().join("merged");
    let (_, err) = ok(bin().args(["model", "export", store, "--stage", "sft", "--iteration", "1", "--out"]).arg(&out));
    assert!(err.contains("exported `sft` (iteration 1)"), "{err}");
    assert!(out.join("model.safetensors").exists() && out.join("tokenizer.json").exists() && !out.join("adapter_config.json").exists());
    let (_, _, err) = fails(bin().args(["model", "export", store, "--stage", "sft", "--out"]).arg(&out));
    assert!(err.contains("not empty"), "{err}");
    let f = write_pipeline(tmp.path(), "merged", "");
    let text = std::fs::read_to_string(&f).unwrap().replace("iterations: 1", "iterations: 2");
    std::fs::write(&f, text).unwrap();
    let store2 = tmp.path().join("store2");
    ok(bin().arg("run").arg(&f).args(["--store", store2.to_str().unwrap()]));
    let q = "SELECT prompt_id, sample_idx, response, round(logprob, 3) AS lp FROM rollouts WHERE iteration = 2 ORDER BY prompt_id, sample_idx";
    assert_eq!(sql_csv(store2.to_str().unwrap(), q), sql_csv(store, q), "the merged export samples differently from the adapter");
    // on a store that is not a local folder, checkpoints are read through temporary copies,
    // which are gone once loaded
    let scratch = tmp.path().join("scratch");
    std::fs::create_dir_all(&scratch).unwrap();
    let (_, err) = ok(bin().arg("run").arg(&p).args(["--store", "memory://hf/run"]).env("TMPDIR", &scratch));
    assert!(err.contains("generate: the checkpoint of `sft` (iteration 1)") && err.contains("mstar: done"), "{err}");
    let left: Vec<_> = std::fs::read_dir(scratch.join("mstar-checkpoints")).unwrap().collect();
    assert!(left.is_empty(), "temporary checkpoint copies left behind: {left:?}");
    // a target that matches no layer says so
    let bad = sft_pipeline(tmp.path(), "qwen", "    lora: {rank: 2, alpha: 4, targets: [nothing_proj]}\n", 1);
    let (_, _, err) = fails(bin().arg("run").arg(&bad).args(["--store", tmp.path().join("s3").to_str().unwrap()]));
    assert!(err.contains("`nothing_proj` matches no linear layer"), "{err}");
}

#[test]
fn full_sft_of_qwen3_vl_with_gradient_checkpointing() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen3");
    std::fs::create_dir_all(&model).unwrap();
    copy_model("qwen3_vl", &model);
    let p = sft_pipeline(tmp.path(), "qwen3", "    gradient_checkpointing: true\n", 2);
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let (_, err) = ok(bin().arg("run").arg(&p).args(["--store", store]));
    assert!(err.contains("generate: the checkpoint of `sft` (iteration 1)"), "{err}");
    let log = sql_csv(store, "SELECT iteration, max(step) FROM train_log GROUP BY iteration ORDER BY iteration");
    assert_eq!(log.lines().skip(1).collect::<Vec<_>>(), vec!["1,4", "2,8"], "{log}");
    // a model folder: weights, config, tokenizer, processor, template, optimizer state
    let ck = Path::new(store).join("checkpoints/sft/iteration=2");
    let attempt = std::fs::read_dir(&ck).unwrap().next().unwrap().unwrap().path();
    for f in ["model.safetensors", "config.json", "tokenizer.json", "preprocessor_config.json", "chat_template.jinja", "generation_config.json", "optimizer.safetensors", "trainer_state.json"] {
        assert!(attempt.join(f).exists(), "{f} missing from the checkpoint");
    }
    // lora without a model folder is a spec error
    let bad = tmp.path().join("bad.yaml");
    let text = std::fs::read_to_string(&p).unwrap().replace("gradient_checkpointing: true", "lora: {rank: 2, alpha: 4, targets: [q_proj]}");
    std::fs::write(&bad, text.replace("    model: {path: qwen3}\n    micro_batch", "    base: prompts\n    micro_batch")).unwrap();
    let (_, _, err) = fails(bin().arg("validate").arg(&bad));
    assert!(err.contains("stages.sft.lora") && err.contains("applies to a `model` folder only"), "{err}");
}

/// pipelines/qwen.yaml as shipped (the tiny fixture folder): M-STAR with a Qwen PRM, end to end.
#[test]
fn the_qwen_pipeline_runs() {
    let tmp = tempfile::tempdir().unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let (_, err) = ok(bin().arg("run").arg(repo().join("pipelines/qwen.yaml")).args(["--store", store]));
    assert!(err.contains("generate: the checkpoint of `sft` (iteration 1)"), "{err}");
    let m = sql_csv(store, "SELECT iteration, count(*) > 0 FROM eval_metrics WHERE name = 'greedy_accuracy' GROUP BY iteration ORDER BY iteration");
    assert_eq!(m.lines().skip(1).collect::<Vec<_>>(), vec!["1,true", "2,true"], "{m}");
    let bad = sql_csv(store, "SELECT count(*) FROM selected s JOIN verified v USING (prompt_id, sample_idx) WHERE NOT v.correct");
    assert_eq!(bad.lines().nth(1), Some("0"));
    // the Qwen PRM scored the rollouts and the evaluations; the temperature grid was searched
    let t = sql_csv(store, "SELECT count(*), sum(CAST(chosen AS INT)) FROM temperature");
    assert_eq!(t.lines().nth(1), Some("3,1"), "{t}");
    let r = sql_csv(store, "SELECT count(*) FROM eval_metrics WHERE name = 'reward_pass@2'");
    assert_eq!(r.lines().nth(1), Some("2"), "{r}");
    let s = sql_csv(store, "SELECT count(*) > 0, bool_and(score > 0 AND score < 1) FROM step_scores");
    assert_eq!(s.lines().nth(1), Some("true,true"), "{s}");
}

/// A Qwen-VL process reward model through the binary: Monte Carlo step labels sampled by the
/// folder, LoRA + score head trained on them, then every step of the rollouts scored.
#[test]
fn a_qwen_prm_labels_trains_and_scores() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen");
    std::fs::create_dir_all(&model).unwrap();
    copy_fixture(&model);
    std::fs::create_dir_all(tmp.path().join("sql")).unwrap();
    std::fs::copy(repo().join("sql/prm_train_data.sql"), tmp.path().join("sql/prm_train_data.sql")).unwrap();
    let p = tmp.path().join("prm.yaml");
    std::fs::write(
        &p,
        r#"name: hf_prm
seed: 4
iterations: 1
datasets:
  train: {synth: {split: train, count: 3, seed: 9}}
stages:
  - {id: prompts, op: import, dataset: train}
  - id: samples                    # three-step responses to label
    op: sql
    scope: setup
    query: |
      SELECT prompt_id, CAST(s AS INT) AS sample_idx,
             concat('Look at the image.', chr(10), 'Count the shapes: ', CAST(s + 2 AS VARCHAR), '.', chr(10), 'The answer is ', CAST(s + 2 AS VARCHAR), '.') AS response
      FROM prompts CROSS JOIN (VALUES (0), (1)) AS t(s)
  - id: step_labels
    op: prm_label
    scope: setup
    rollouts: samples
    prompts: prompts
    model: {path: qwen}
    completions: 2
    sampling: {temperature: 1.0, max_new_tokens: 5}
  - {id: prm_data, op: sql, scope: setup, sql: prm_train_data, params: {label: soft}}
  - id: prm
    op: train
    scope: setup
    objective: prm
    data: prm_data
    model: {path: qwen}
    lora: {rank: 4, alpha: 8, targets: [q_proj, v_proj]}
    micro_batch: 2
    epochs: 3
    schedule: {kind: constant, lr: 0.01}
  - {id: step_scores, op: prm_score, rollouts: samples, prompts: prompts, prm: [prm]}
"#,
    )
    .unwrap();
    let store = tmp.path().join("store");
    let store = store.to_str().unwrap();
    let (_, err) = ok(bin().arg("run").arg(&p).args(["--store", store]));
    assert!(err.contains("prm_label: 12/12 prefixes"), "{err}");
    // 6 responses × 3 steps; the first two continued twice, the last judged as it stands
    let l = sql_csv(store, "SELECT step_idx, count(*), min(n), max(n), bool_and(soft BETWEEN 0 AND 1) FROM step_labels GROUP BY step_idx ORDER BY step_idx");
    assert_eq!(l.lines().skip(1).collect::<Vec<_>>(), vec!["0,6,2,2,true", "1,6,2,2,true", "2,6,1,1,true"], "{l}");
    let ck = Path::new(store).join("checkpoints/prm/iteration=0");
    let attempt = std::fs::read_dir(&ck).unwrap().next().unwrap().unwrap().path();
    assert!(attempt.join("adapter_model.safetensors").exists() && attempt.join("score_head.safetensors").exists());
    let s = sql_csv(store, "SELECT count(*), count(DISTINCT prompt_id), bool_and(score > 0 AND score < 1), count(DISTINCT score) > 1 FROM step_scores");
    assert_eq!(s.lines().nth(1), Some("18,3,true,true"), "{s}");
    let fell = sql_csv(store, "SELECT max(CASE WHEN step = 9 THEN loss END) < max(CASE WHEN step = 1 THEN loss END) FROM train_log");
    assert_eq!(fell.lines().nth(1), Some("true"), "{}", sql_csv(store, "SELECT step, loss FROM train_log ORDER BY step"));
}
