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
    serve_with(model, name, &[])
}

/// `serve` with more command-line arguments (limits, timeouts).
fn serve_with(model: &Path, name: &str, args: &[&str]) -> (Served, String) {
    serve_env(model, name, args, &[])
}

/// `serve_with` with environment variables (fault hooks).
fn serve_env(model: &Path, name: &str, args: &[&str], env: &[(&str, &str)]) -> (Served, String) {
    use std::io::{BufRead, BufReader};
    let mut cmd = bin();
    cmd.args(["serve"]).arg(model).args(["--port", "0", "--name", name]).args(args).envs(env.iter().copied());
    let mut server = Served(cmd.stderr(std::process::Stdio::piped()).spawn().unwrap());
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
        ok(bin()
            .arg("run")
            .arg(write_with_backend(tmp.path(), &format!("openai: {{base_url: 'http://{addr}/v1', model: m, retries: 0}}"), ""))
            .args(["--store", http.to_str().unwrap()]));
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
    write!(
        c,
        "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
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

/// `openai: {base_urls}`: three `mstar serve` of one folder, the first of which dies at its
/// third request (`MSTAR_FAULT_SERVE_EXIT_AFTER=2`, after answering at least one) while the stage
/// runs: its requests go to the
/// other two without costing an attempt (`retries: 0`, so a counted failure would be an
/// `error` row), and the rollouts equal, row for row, those of one server.
#[test]
fn a_pool_of_servers_survives_one_dying() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen");
    std::fs::create_dir_all(&model).unwrap();
    copy_fixture(&model);
    let pipeline = |backend: &str| {
        let f = tmp.path().join("pool.yaml");
        std::fs::write(
            &f,
            format!(
                r#"name: pool
seed: 5
iterations: 1
datasets:
  train: {{synth: {{split: train, count: 8, seed: 3}}}}
stages:
  - {{id: prompts, op: import, dataset: train}}
  - id: rollouts
    op: generate
    prompts: prompts
    openai: {backend}
    samples: 3
    sampling: {{temperature: 1.0, top_p: 0.95, max_new_tokens: 6}}
"#
            ),
        )
        .unwrap();
        f
    };
    // exactly one of base_url and base_urls, each a URL once
    for (backend, says) in [
        ("{base_url: 'http://a/v1', base_urls: ['http://b/v1'], model: tiny}", "not both"),
        ("{base_urls: [], model: tiny}", "at least one endpoint"),
        ("{base_urls: ['http://a/v1', 'http://a/v1/'], model: tiny}", "listed twice"),
        ("{base_urls: ['a:8000/v1'], model: tiny}", "not an http"),
        ("{model: tiny}", "give the endpoint"),
    ] {
        let (_, _, err) = fails(bin().arg("validate").arg(pipeline(backend)));
        assert!(err.contains(says) && err.contains("stages.rollouts.openai"), "{backend}: {err}");
    }
    let (mut dying, a) = serve_env(&model, "tiny", &[], &[("MSTAR_FAULT_SERVE_EXIT_AFTER", "2")]);
    let (_b_server, b) = serve(&model, "tiny");
    let (_c_server, c) = serve(&model, "tiny");
    let (one, pool) = (tmp.path().join("one"), tmp.path().join("pool"));
    let (one, pool) = (one.to_str().unwrap(), pool.to_str().unwrap());
    ok(bin().arg("run").arg(pipeline(&format!("{{base_url: 'http://{b}/v1', model: tiny, retries: 0, concurrency: 2}}"))).args(["--store", one]));
    let spec = pipeline(&format!("{{base_urls: ['http://{a}/v1', 'http://{b}/v1', 'http://{c}/v1'], model: tiny, retries: 0, concurrency: 6}}"));
    let started = std::time::Instant::now();
    let (_, err) = ok(bin().arg("run").arg(&spec).args(["--store", pool]));
    eprintln!("pool run: {:.1} s", started.elapsed().as_secs_f64());
    assert!(err.contains("24 requests to 3 endpoints"), "{err}");
    assert!(err.contains(&format!("openai: http://{a}/v1/chat/completions out of rotation")), "{err}");
    // the first server took two requests and died at the third
    assert_eq!(dying.0.wait().unwrap().code(), Some(3));
    let q = "SELECT prompt_id, sample_idx, temperature, seed, response, num_tokens, logprob, finish_reason FROM rollouts ORDER BY prompt_id, sample_idx";
    let (x, y) = (sql_csv(one, q), sql_csv(pool, q));
    let counts = "SELECT count(*) AS n, count(*) FILTER (WHERE finish_reason = 'error') AS errors FROM rollouts";
    assert_eq!(sql_csv(one, counts).lines().nth(1), Some("24,0"));
    assert_eq!(sql_csv(pool, counts).lines().nth(1), Some("24,0"));
    assert_eq!(x, y, "one server and the pool gave different rollouts");
    // nothing failed, so no generate_errors
    let (_, _, err) = fails(bin().args(["sql", pool, "SELECT count(*) FROM generate_errors"]));
    assert!(err.contains("generate_errors"), "{err}");
    // the same spec is done, dead server or not
    let (_, err) = ok(bin().arg("run").arg(&spec).args(["--store", pool]));
    assert!(outcomes(&err, "computed").is_empty(), "{err}");
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
    assert_eq!(
        g.lines().nth(1),
        Some("true"),
        "greedy decodes did not change with training: {}",
        sql_csv(store, &format!("SELECT iteration, prompt_id, response FROM {all} WHERE greedy ORDER BY 2, 1"))
    );
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
    for f in [
        "model.safetensors",
        "config.json",
        "tokenizer.json",
        "preprocessor_config.json",
        "chat_template.jinja",
        "generation_config.json",
        "optimizer.safetensors",
        "trainer_state.json",
    ] {
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
    // 12 prefixes, each continued twice
    assert!(err.contains("prm_label: 24/24 completions"), "{err}");
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

/// Sends `head` and `body` on a fresh connection and reads the response until the server closes
/// it (or 10 s pass): the response and how long it took from the first byte sent.
fn exchange(addr: &str, head: &str, body: &[u8]) -> (String, std::time::Duration) {
    use std::io::Write;
    let mut c = std::net::TcpStream::connect(addr).unwrap();
    c.set_read_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    c.set_write_timeout(Some(std::time::Duration::from_secs(10))).unwrap();
    let t = std::time::Instant::now();
    c.write_all(head.as_bytes()).unwrap();
    let _ = c.write_all(body);
    let resp = read_until_closed(&mut c);
    (resp, t.elapsed())
}

/// What the server sends until it closes the connection; stops at a read error or timeout.
fn read_until_closed(c: &mut std::net::TcpStream) -> String {
    use std::io::Read;
    let mut out = Vec::new();
    let mut buf = [0u8; 8192];
    // bounded: each read returns data, end of stream, or an error (the 10 s read timeout)
    for _ in 0..10_000 {
        match c.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => out.extend_from_slice(&buf[..n]),
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// A POST of `body` to /v1/chat/completions (Connection: close).
fn post_chat(addr: &str, body: &str) -> (String, std::time::Duration) {
    exchange(
        addr,
        &format!(
            "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
            body.len()
        ),
        body.as_bytes(),
    )
}

fn get_models(addr: &str) -> (String, std::time::Duration) {
    exchange(addr, "GET /v1/models HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n", b"")
}

/// A one-message chat request with `content` (a string or a list of parts) and `extra` fields.
fn chat_body(content: serde_json::Value, extra: serde_json::Value) -> String {
    let mut b = serde_json::json!({"model": "tiny", "messages": [{"role": "user", "content": content}], "max_tokens": 4, "temperature": 1.0, "seed": 7});
    for (k, v) in extra.as_object().unwrap() {
        b[k] = v.clone();
    }
    b.to_string()
}

fn image_part(png: &[u8]) -> serde_json::Value {
    serde_json::json!({"type": "image_url", "image_url": {"url": mstar::openai::data_url(png)}})
}

fn status_of(resp: &str) -> &str {
    resp.get(9..12).unwrap_or("")
}

/// A client that sent its headers and half its body does not hold up anyone: the model list
/// and a chat completion from other clients answer at once while it stalls.
#[test]
fn serve_reads_requests_without_holding_the_compute_slot() {
    use std::io::Write;
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen");
    std::fs::create_dir_all(&model).unwrap();
    copy_fixture(&model);
    let (_server, addr) = serve(&model, "tiny");
    let mut stalled = std::net::TcpStream::connect(&addr).unwrap();
    let half = format!("{{\"model\": \"tiny\", \"messages\": [{}", " ".repeat(469));
    assert_eq!(half.len(), 500);
    write!(stalled, "POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: 1000\r\n\r\n{half}").unwrap();
    stalled.flush().unwrap();
    std::thread::sleep(std::time::Duration::from_millis(300));
    let (models, took) = get_models(&addr);
    eprintln!("GET /v1/models with a half body pending: {took:?}");
    assert!(models.starts_with("HTTP/1.1 200") && models.contains("\"tiny\""), "{models}");
    assert!(took < std::time::Duration::from_secs(5), "GET /v1/models took {took:?}");
    let (chat, took) = post_chat(&addr, &chat_body("Hello".into(), serde_json::json!({})));
    eprintln!("a chat completion with a half body pending: {took:?}");
    assert!(chat.starts_with("HTTP/1.1 200") && chat.contains("chat.completion"), "{chat}");
    assert!(took < std::time::Duration::from_secs(5), "the completion took {took:?}");
    // the stalled client is still connected (the default read timeout is 30 s)
    stalled.set_nonblocking(true).unwrap();
    let mut b = [0u8; 1];
    let e = std::io::Read::read(&mut stalled, &mut b).unwrap_err();
    assert_eq!(e.kind(), std::io::ErrorKind::WouldBlock, "{e}");
}

/// Limits, each a 4xx that names it, checked before anything large is read or decoded: the
/// body size (413 from the Content-Length, or once a chunked body passes it), the pixels an
/// image's header claims, the number of images, prompt tokens (the model's context, or the
/// flag), `n`; and the server still answers after all of them.
#[test]
fn serve_refuses_requests_past_its_limits() {
    use std::io::Write;
    use std::time::Duration;
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen");
    std::fs::create_dir_all(&model).unwrap();
    copy_fixture(&model);
    let a_png = std::fs::read(model.join("a.png")).unwrap();
    let c_png = std::fs::read(model.join("c.png")).unwrap();
    let message = |r: &str| {
        r.split("\r\n\r\n")
            .nth(1)
            .and_then(|b| serde_json::from_str::<serde_json::Value>(b).ok())
            .and_then(|v| v["error"]["message"].as_str().map(str::to_string))
            .unwrap_or_default()
    };
    {
        // the defaults: 16 MiB, 50,000,000 pixels, 8 images, the model's 512 positions, n ≤ 16
        let (_server, addr) = serve(&model, "tiny");
        // 17 MiB announced, 64 KiB sent: refused without waiting for the rest
        let (r, took) = exchange(
            &addr,
            &format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n", 17 << 20),
            &vec![b' '; 64 << 10],
        );
        eprintln!("413 for a 17 MiB Content-Length: {took:?}");
        assert_eq!(status_of(&r), "413", "{r}");
        assert!(message(&r).contains("limit of 16 MiB") && r.contains("\"type\":\"invalid_request_error\""), "{r}");
        assert!(took < Duration::from_secs(2), "{took:?}");
        // a 20000×20000 PNG: refused from its header
        let (r, took) = post_chat(
            &addr,
            &chat_body(serde_json::json!([image_part(&png_claiming(20_000, 20_000)), {"type": "text", "text": "what?"}]), serde_json::json!({})),
        );
        eprintln!("400 for a 20000×20000 PNG: {took:?}");
        assert_eq!(status_of(&r), "400", "{r}");
        assert!(message(&r).contains("20000×20000") && message(&r).contains("limit of 50000000 pixels"), "{r}");
        assert!(took < Duration::from_secs(1), "{took:?}");
        // 9 images
        let mut parts: Vec<serde_json::Value> = (0..9).map(|_| image_part(&a_png)).collect();
        parts.push(serde_json::json!({"type": "text", "text": "count"}));
        let (r, _) = post_chat(&addr, &chat_body(serde_json::Value::Array(parts), serde_json::json!({})));
        assert_eq!(status_of(&r), "400", "{r}");
        assert!(message(&r).contains("9 images exceed the limit of 8"), "{r}");
        // a prompt longer than the model's context
        let (r, _) = post_chat(&addr, &chat_body("one two three four ".repeat(200).into(), serde_json::json!({})));
        assert_eq!(status_of(&r), "400", "{r}");
        assert!(message(&r).contains("limit of 512 prompt tokens") && message(&r).contains("max_position_embeddings"), "{r}");
        // a 15 MiB message: refused from its first few thousand tokens, not tokenized whole
        let (r, took) = post_chat(&addr, &chat_body("hello world ".repeat((15 << 20) / 12).into(), serde_json::json!({})));
        eprintln!("400 for a 15 MiB message: {took:?}");
        assert_eq!(status_of(&r), "400", "{r}");
        assert!(message(&r).contains("at least") && message(&r).contains("limit of 512 prompt tokens"), "{r}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let (r, _) = post_chat(&addr, &chat_body("hi".into(), serde_json::json!({"n": 17})));
        assert_eq!(status_of(&r), "400", "{r}");
        assert!(message(&r).contains("limit of 16 choices"), "{r}");
        // two images at the limits pass
        let (r, _) = post_chat(
            &addr,
            &chat_body(serde_json::json!([image_part(&a_png), image_part(&c_png), {"type": "text", "text": "count"}]), serde_json::json!({"n": 2})),
        );
        assert!(r.starts_with("HTTP/1.1 200") && r.contains("chat.completion"), "{r}");
    }
    {
        let (_server, addr) =
            serve_with(&model, "tiny", &["--max-body-mb", "1", "--max-prompt-tokens", "60", "--max-images", "1", "--max-image-pixels", "4000"]);
        // a chunked body that passes 1 MiB: refused once it does, the rest unread
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.set_write_timeout(Some(Duration::from_secs(2))).unwrap();
        let mut w = c.try_clone().unwrap();
        let t = std::time::Instant::now();
        let writer = std::thread::spawn(move || {
            let chunk = vec![b' '; 64 << 10];
            let _ = w.write_all(b"POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nTransfer-Encoding: chunked\r\n\r\n");
            let mut sent = 0usize;
            // up to 4 MiB, until the server closes the connection
            for _ in 0..64 {
                if w.write_all(format!("{:x}\r\n", chunk.len()).as_bytes()).and_then(|_| w.write_all(&chunk)).and_then(|_| w.write_all(b"\r\n")).is_err() {
                    break;
                }
                sent += chunk.len();
            }
            sent
        });
        let r = read_until_closed(&mut c);
        let took = t.elapsed();
        let sent = writer.join().unwrap();
        eprintln!("413 for a chunked body past 1 MiB: {took:?} ({sent} bytes written)");
        assert_eq!(status_of(&r), "413", "{r}");
        assert!(message(&r).contains("limit of 1 MiB (1048576 bytes; --max-body-mb)"), "{r}");
        assert!(took < Duration::from_secs(5), "{took:?}");
        let (r, _) = post_chat(&addr, &chat_body("one two three four ".repeat(20).into(), serde_json::json!({})));
        assert_eq!(status_of(&r), "400", "{r}");
        assert!(message(&r).contains("limit of 60 prompt tokens (--max-prompt-tokens)"), "{r}");
        let (r, _) = post_chat(&addr, &chat_body(serde_json::json!([image_part(&c_png), image_part(&c_png)]), serde_json::json!({})));
        assert!(message(&r).contains("2 images exceed the limit of 1 images"), "{r}");
        let (r, _) = post_chat(&addr, &chat_body(serde_json::json!([image_part(&a_png)]), serde_json::json!({})));
        assert!(message(&r).contains("84×56 = 4704 pixels exceeds the limit of 4000 pixels"), "{r}");
        let (r, _) = post_chat(&addr, &chat_body("hi".into(), serde_json::json!({})));
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
    }
}

/// With `--read-timeout-secs 1`, clients that stall (half a body, half the headers, nothing at
/// all) are disconnected within a few seconds, and the server goes on answering.
#[test]
fn serve_drops_stalled_clients() {
    use std::io::Write;
    use std::time::{Duration, Instant};
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen");
    std::fs::create_dir_all(&model).unwrap();
    copy_fixture(&model);
    let (_server, addr) = serve_with(&model, "tiny", &["--read-timeout-secs", "1"]);
    let t = Instant::now();
    let connect = |sent: &str| {
        let mut c = std::net::TcpStream::connect(&addr).unwrap();
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(sent.as_bytes()).unwrap();
        c
    };
    let mut half_body = connect(&format!("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{}", " ".repeat(500)));
    let mut half_head = connect("POST /v1/chat/completions HTTP/1.1\r\nHost: x\r\nContent-Le");
    let mut idle = connect("");
    let r = read_until_closed(&mut half_body);
    let took = t.elapsed();
    eprintln!("half body dropped after {took:?}");
    assert_eq!(status_of(&r), "408", "{r}");
    assert!(r.contains("read timeout of 1 s"), "{r}");
    assert!(took < Duration::from_secs(5), "{took:?}");
    for (what, c) in [("half the headers", &mut half_head), ("nothing", &mut idle)] {
        let r = read_until_closed(c);
        let took = t.elapsed();
        eprintln!("a client that sent {what} dropped after {took:?}: {:?}", r.lines().next());
        assert!(took < Duration::from_secs(5), "a client that sent {what} was kept {took:?}");
        assert!(r.is_empty() || status_of(&r) == "408", "{r}");
    }
    let (r, _) = get_models(&addr);
    assert!(r.starts_with("HTTP/1.1 200"), "{r}");
}

/// Completions queued behind one another all get answered, each its own (the compute lock is a
/// fair, FIFO tokio Mutex); the model list answers meanwhile.
#[test]
fn serve_answers_queued_requests() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen");
    std::fs::create_dir_all(&model).unwrap();
    copy_fixture(&model);
    let (_server, addr) = serve(&model, "tiny");
    let clients: Vec<_> = (0..3u64)
        .map(|i| {
            let addr = addr.clone();
            std::thread::spawn(move || {
                post_chat(&addr, &chat_body(format!("Question {i}").into(), serde_json::json!({"seed": 100 + i, "max_tokens": 24, "n": 2})))
            })
        })
        .collect();
    let (m, took) = get_models(&addr);
    eprintln!("GET /v1/models among 3 completions: {took:?}");
    assert!(m.starts_with("HTTP/1.1 200"), "{m}");
    for (i, c) in clients.into_iter().enumerate() {
        let (r, took) = c.join().unwrap();
        eprintln!("completion {i}: {took:?}");
        assert!(r.starts_with("HTTP/1.1 200"), "{r}");
        assert!(r.contains(&format!("chatcmpl-{:016x}", 100 + i as u64)), "{r}");
    }
}

/// `eval` against an endpoint (`openai:`) decodes exactly what it decodes from the folder (same
/// seeds, greedy and sampled); with the endpoint down the stage fails, naming the prompt and the
/// decode, and commits nothing.
#[test]
fn eval_through_an_endpoint() {
    let tmp = tempfile::tempdir().unwrap();
    let model = tmp.path().join("qwen");
    std::fs::create_dir_all(&model).unwrap();
    copy_fixture(&model);
    let (server, addr) = serve(&model, "tiny");
    let pipeline = |backend: &str| {
        let f = tmp.path().join("eval.yaml");
        std::fs::write(
            &f,
            format!(
                r#"name: hf_eval
seed: 4
iterations: 1
datasets:
  test: {{synth: {{split: test, count: 3, seed: 9}}}}
stages:
  - {{id: prompts, op: import, dataset: test}}
  - id: eval
    op: eval
    prompts: prompts
    {backend}
    k: 2
    sampling: {{temperature: 1.0, top_p: 0.95, max_new_tokens: 6}}
"#
            ),
        )
        .unwrap();
        f
    };
    let (s1, s2) = (tmp.path().join("via_local"), tmp.path().join("via_http"));
    ok(bin().arg("run").arg(pipeline("model: {path: qwen}")).args(["--store", s1.to_str().unwrap()]));
    ok(bin()
        .arg("run")
        .arg(pipeline(&format!("openai: {{base_url: 'http://{addr}/v1', model: tiny, retries: 0, concurrency: 2}}")))
        .args(["--store", s2.to_str().unwrap()]));
    let q = "SELECT prompt_id, greedy, temperature, sample_idx, response, num_tokens, correct FROM eval ORDER BY prompt_id, greedy DESC, sample_idx";
    let (a, b) = (sql_csv(s1.to_str().unwrap(), q), sql_csv(s2.to_str().unwrap(), q));
    assert_eq!(a.lines().count(), 1 + 3 * 3, "{a}");
    assert_eq!(a, b, "local and served eval decodes differ");
    drop(server);
    let s3 = tmp.path().join("down");
    let out = bin()
        .arg("run")
        .arg(pipeline(&format!("openai: {{base_url: 'http://{addr}/v1', model: tiny, retries: 0}}")))
        .args(["--store", s3.to_str().unwrap()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success(), "{err}");
    assert!(err.contains("eval: prompt ") && err.contains("the request failed after 1 attempt(s)"), "{err}");
    assert!(sql_csv(s3.to_str().unwrap(), "SHOW TABLES").lines().all(|l| !l.contains(",eval,")), "an eval table was committed");
}
