//! The M-STAR recipe end to end on a micro version of pipelines/mstar.yaml (tiny datasets,
//! few steps): the tables agree with each other and with schemas/*.json, temperatures are
//! searched every 2 iterations and used, a run killed during iteration 2 resumes to the same
//! tables, and `mstar report` compares the runs.

mod common;
use common::*;
use std::process::Stdio;

/// Shrinks pipelines/mstar.yaml to a minute: tiny splits, one epoch, few samples and tokens.
const MICRO: &[&str] = &[
    "iterations=3",
    "datasets.train.synth.count=40",
    "datasets.train.synth.cot=16",
    "datasets.val.synth.count=6",
    "datasets.test.synth.count=6",
    "datasets.test_hard.synth.count=4",
    "datasets.images.synth.count=24",
    "stages.init.vocab_size=320",
    "stages.vision.epochs=1",
    "stages.vision.micro_batch=8",
    "stages.drill.micro_batch=16",
    "stages.warmup.epochs=2",
    "stages.label_samples.samples=2",
    "stages.label_samples.sampling={temperature: 1.0, max_new_tokens: 24}",
    "stages.step_labels.completions=2",
    "stages.step_labels.sampling={temperature: 1.0, max_new_tokens: 24}",
    "stages.prm.epochs=1",
    "stages.eval_warmup.k=2",
    "stages.eval_warmup.sampling={temperature: 1.0, max_new_tokens: 32}",
    "stages.temperature_search.k=2",
    "stages.temperature_search.sampling={max_new_tokens: 32}",
    "stages.rollouts.samples=4",
    "stages.rollouts.sampling={temperature: 1.0, max_new_tokens: 40}",
    "stages.sft.micro_batch=4",
    "stages.eval.k=2",
    "stages.eval.sampling={temperature: 1.0, max_new_tokens: 32}",
];

fn run_args(store: &str, extra: &[&str]) -> std::process::Command {
    run_pipeline("pipelines/mstar.yaml", store, extra)
}

fn run_pipeline(file: &str, store: &str, extra: &[&str]) -> std::process::Command {
    let mut c = bin();
    c.arg("run").arg(repo().join(file)).args(["--store", store]);
    for s in MICRO.iter().chain(extra) {
        c.args(["--set", s]);
    }
    c
}

/// How a stored table's columns differ from its schemas/*.json file: columns missing or extra,
/// and types or nullability that differ, in the JSON's column order.
fn schema_diff(store: &str, table: &str, json: &str) -> Vec<String> {
    let stored = tokio::runtime::Runtime::new().unwrap().block_on(async {
        let rs = mstar::store::RunStore::open_existing(store).unwrap();
        let ctx = mstar::sql::new_session();
        mstar::sql::register_run(&ctx, &rs).await.unwrap();
        ctx.table(table).await.unwrap().schema().as_arrow().clone()
    });
    let want = mstar::schemas::table(json).unwrap().unwrap();
    let mut diff = Vec::new();
    for w in want.fields() {
        match stored.field_with_name(w.name()) {
            Err(_) => diff.push(format!("missing {}", w.name())),
            Ok(g) if g.data_type() != w.data_type() => diff.push(format!("{}: {} in the JSON, {} stored", w.name(), w.data_type(), g.data_type())),
            Ok(g) if g.is_nullable() != w.is_nullable() => {
                diff.push(format!("{}: nullable {} in the JSON, {} stored", w.name(), w.is_nullable(), g.is_nullable()))
            }
            Ok(_) => {}
        }
    }
    diff.extend(stored.fields().iter().filter(|g| want.field_with_name(g.name()).is_err()).map(|g| format!("extra {}: {}", g.name(), g.data_type())));
    diff
}

const TABLES: &[&str] = &["rollouts", "verified", "step_scores", "selected", "temperature", "eval", "eval_metrics", "train_metrics"];

#[test]
fn micro_mstar_is_consistent_and_resumes_after_a_kill_in_iteration_2() {
    let d = tempfile::tempdir().unwrap();
    let store = |n: &str| d.path().join(n).to_string_lossy().into_owned();
    let (summary, _) = ok(&mut run_args(&store("a"), &[]));
    let s = store("a");
    let one = |q: &str| sql_csv(&s, q).lines().nth(1).unwrap_or_default().to_string();

    // every core table as stored has the columns, types and nullability of its schemas/*.json,
    // but for the differences listed: prompts.json is the import format (no iteration; the
    // synthetic task adds its oracle's columns), verified.json lists only some of verify's
    // columns (it passes every rollouts column on, and `correct` is stored nullable), and
    // selected.json has `score` nullable where response_scores.sql's scores are not
    let prompts_extra =
        ["extra iteration: Int64", "extra qtype: Utf8", "extra num_steps: Int32", "extra gold_cot: Utf8", "extra scene: Utf8", "extra meta: Utf8"];
    let verified_extra = [
        "correct: nullable false in the JSON, true stored",
        "extra temperature: Float64",
        "extra seed: UInt64",
        "extra num_tokens: Int32",
        "extra logprob: Float64",
        "extra finish_reason: Utf8",
        "extra steps_ok: Boolean",
    ];
    for (table, json, known) in [
        ("prompts", "prompts", &prompts_extra[..]),
        ("rollouts", "rollouts", &[][..]),
        ("verified", "verified", &verified_extra[..]),
        ("step_labels", "step_labels", &[][..]),
        ("step_scores", "step_scores", &[][..]),
        ("selected", "selected", &["score: nullable true in the JSON, false stored"][..]),
        ("eval", "eval_samples", &[][..]),
        ("eval_warmup", "eval_samples", &[][..]),
        ("eval_metrics", "metrics", &[][..]),
        ("warmup_metrics", "metrics", &[][..]),
    ] {
        assert_eq!(schema_diff(&s, table, json), known, "{table} against schemas/{json}.json");
    }

    // the summary: one row per iteration, the warm-up as iteration 0
    assert!(summary.contains("test_greedy") && summary.contains("temperature"), "{summary}");
    assert_eq!(one("SELECT count(DISTINCT iteration) FROM eval_metrics"), "3");
    // Reward-Pass@2 ≤ Pass@K for every iteration and split; greedy accuracy in [0, 1]
    let bad = "SELECT count(*) FROM (SELECT iteration, split, max(CASE WHEN name = 'reward_pass@2' THEN value END) AS r, max(CASE WHEN name = 'pass@k' THEN value END) AS p FROM {} GROUP BY iteration, split) WHERE r IS NULL OR p IS NULL OR r > p + 1e-12";
    assert_eq!(one(&bad.replace("{}", "eval_metrics")), "0");
    assert_eq!(one(&bad.replace("{}", "warmup_metrics")), "0");
    assert_eq!(one("SELECT count(DISTINCT split) FROM eval_metrics"), "3", "val, test and test_hard");
    // selected rows are correct, at most k = 2 per prompt, and are the top-scored correct ones
    assert_eq!(one("SELECT count(*) FROM selected s JOIN scored v ON s.iteration = v.iteration AND s.prompt_id = v.prompt_id AND s.sample_idx = v.sample_idx WHERE NOT v.correct"), "0");
    assert_eq!(
        one("SELECT count(*) FROM selected"),
        one("SELECT count(*) FROM selected s JOIN scored v ON s.iteration = v.iteration AND s.prompt_id = v.prompt_id AND s.sample_idx = v.sample_idx")
    );
    assert_eq!(one("SELECT count(*) FROM (SELECT iteration, prompt_id, count(*) AS n FROM selected GROUP BY iteration, prompt_id) WHERE n > 2"), "0");
    assert_eq!(
        one("SELECT count(*) FROM selected s JOIN scored v ON s.iteration = v.iteration AND s.prompt_id = v.prompt_id AND v.correct AND v.score > s.score WHERE s.rank = 2 AND v.sample_idx <> (SELECT max(sample_idx) FROM selected t WHERE t.iteration = s.iteration AND t.prompt_id = s.prompt_id AND t.rank = 1)"),
        "0",
        "a correct rollout scored above the second pick was left out"
    );
    // the SFT data are the selected rows; the optimizer step carries on across iterations
    assert_eq!(one("SELECT count(*) FROM sft_data"), one("SELECT count(*) FROM selected"));
    let steps = sql_csv(&s, "SELECT iteration, min(step) AS first, max(step) AS last FROM train_log WHERE stage = 'sft' GROUP BY iteration ORDER BY iteration");
    let rows: Vec<Vec<i64>> = steps.lines().skip(1).map(|l| l.split(',').filter_map(|x| x.parse().ok()).collect()).collect();
    assert!(rows.windows(2).all(|w| w[0][2] + 1 == w[1][1]), "sft steps do not continue: {steps}");
    // vision pretraining scored its held-out images at the end of its training
    assert_eq!(one("SELECT max(step) FROM region_eval WHERE stage = 'vision'"), one("SELECT max(step) FROM train_log WHERE stage = 'vision'"));
    assert_eq!(one("SELECT count(*) FROM region_eval WHERE correct > regions"), "0");
    // each iteration covers its own quarter of the pool
    assert_eq!(one("SELECT count(*) FROM (SELECT prompt_id FROM batch GROUP BY prompt_id HAVING count(*) > 1)"), "0");

    // temperature search at iterations 1 and 3: the whole grid, one choice, which the
    // following rollouts use
    assert_eq!(
        sql_csv(
            &s,
            "SELECT iteration, count(*) AS n, sum(CASE WHEN chosen THEN 1 ELSE 0 END) AS chosen FROM temperature GROUP BY iteration ORDER BY iteration"
        ),
        "iteration,n,chosen\n1,14,1\n3,14,1\n"
    );
    assert_eq!(one("SELECT count(DISTINCT temperature) FROM temperature_search WHERE iteration = 1"), "14");
    assert_eq!(
        one("SELECT count(*) FROM rollouts r WHERE r.temperature <> (SELECT max(t.temperature) FROM temperature t WHERE t.chosen AND t.iteration = CASE WHEN r.iteration >= 3 THEN 3 ELSE 1 END)"),
        "0",
        "rollouts do not use the chosen temperature"
    );
    // the chosen temperature has the highest Reward-Pass@2
    assert_eq!(
        one("SELECT count(*) FROM temperature c JOIN temperature o ON c.iteration = o.iteration WHERE c.chosen AND o.reward_pass_at_2 > c.reward_pass_at_2"),
        "0"
    );

    // Kill during iteration 2 (rollouts half written), resume, and end with the same tables.
    let b = store("b");
    let mut child = run_args(&b, &["rows_per_file=4"]).env("MSTAR_FAULT_PAUSE_MS", "rollouts:400").stdout(Stdio::null()).stderr(Stdio::null()).spawn().unwrap();
    let it2 = d.path().join("b/tables/rollouts/iteration=2");
    let started = std::time::Instant::now();
    while std::fs::read_dir(&it2).map(|r| r.count()).unwrap_or(0) < 2 {
        assert!(started.elapsed().as_secs() < 600, "iteration 2 never started");
        if let Some(st) = child.try_wait().unwrap() {
            panic!("the run ended ({st}) before iteration 2's rollouts were half written");
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.kill().unwrap();
    child.wait().unwrap();
    assert!(d.path().join("b/_manifests/iteration=1/sft.json").exists());
    assert!(!d.path().join("b/_manifests/iteration=2/rollouts.json").exists());
    let (_, stderr) = ok(&mut run_args(&b, &["rows_per_file=4"]));
    let skipped = outcomes(&stderr, "skipped");
    assert!(skipped.contains(&"0/prm".to_string()) && skipped.contains(&"1/sft".to_string()), "{stderr}");
    assert!(outcomes(&stderr, "computed").contains(&"2/rollouts".to_string()), "{stderr}");
    assert_eq!(dump_tables(&b, TABLES), dump_tables(&s, TABLES), "the resumed run differs from the uninterrupted one");
    let batch = "SELECT iteration, prompt_id FROM batch ORDER BY iteration, prompt_id";
    assert_eq!(sql_csv(&b, batch), sql_csv(&s, batch));

    // the report over both runs (one pipeline, two runs): tables, charts, the SQL with --explain
    let out = d.path().join("report");
    let (md, _) = ok(bin().arg("report").args([&s, &b]).arg("--out").arg(&out).arg("--explain"));
    assert!(md.contains("FROM eval_metrics") && md.contains("stddev(value)"), "--explain prints the queries: {md}");
    let report = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(report.contains("| warm-up | 2 | 0 |") && report.contains("| mstar | 2 | 3 |"), "{report}");
    let greedy = one("SELECT round(100 * avg(value), 1) FROM eval_metrics WHERE iteration = 3 AND split = 'test' AND name = 'greedy_accuracy'");
    let row = report.lines().find(|l| l.starts_with("| mstar | 2 | 3 |")).unwrap();
    assert!(row.contains(&format!("| {:.1} ± 0.0 |", greedy.parse::<f64>().unwrap())), "the table's test greedy is the runs' mean: {row} vs {greedy}");
    for stem in ["test_accuracy", "val_reward_pass_at_2", "temperature"] {
        let svg = std::fs::read_to_string(out.join(format!("{stem}.svg"))).unwrap();
        assert!(svg.starts_with("<svg") && svg.contains("<polyline"), "{stem}.svg");
        assert!(std::fs::read(out.join(format!("{stem}.png"))).unwrap().starts_with(b"\x89PNG"), "{stem}.png");
    }
    // bootstrap error bars at every point: the per-prompt values (sql/report_prompts.sql) give
    // the metrics of the eval and train tables of a real run (else the report leaves them out)
    // (selected_sound_share is drawn only where something was selected)
    for stem in ["test_accuracy", "val_greedy_accuracy", "val_pass_at_k", "val_reward_pass_at_2", "selected_sound_share"] {
        let Ok(svg) = std::fs::read_to_string(out.join(format!("{stem}.svg"))) else {
            assert_eq!(stem, "selected_sound_share", "{stem}.svg missing");
            continue;
        };
        let points = svg.matches("<circle").count();
        assert!(points > 0 && svg.matches("class=\"error-bar\"").count() == points, "{stem}.svg: {svg}");
    }
    let (_, _, err) = fails(bin().arg("report").arg(d.path().join("nowhere")).arg("--out").arg(&out));
    assert!(err.contains("nowhere"), "{err}");
}

#[test]
fn micro_mixin_pseudo_labels_unlabeled_prompts_from_t_mixin_on() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("m").to_string_lossy().into_owned();
    ok(&mut run_pipeline("pipelines/ablations/mixin.yaml", &s, &["iterations=2", "datasets.unlabeled.synth.count=8", "params.mixin_from=2"]));
    let one = |q: &str| sql_csv(&s, q).lines().nth(1).unwrap_or_default().to_string();
    // unlabeled prompts join at iteration 2 (T_mixin), a quarter of them
    assert_eq!(
        sql_csv(&s, "SELECT iteration, sum(CASE WHEN answer IS NULL THEN 1 ELSE 0 END) AS unlabeled FROM batch GROUP BY iteration ORDER BY iteration"),
        "iteration,unlabeled\n1,0\n2,2\n"
    );
    // their answers are the weighted-vote pseudo-labels, and verify judges against them
    assert_eq!(one("SELECT count(*) FROM labeled_batch l LEFT JOIN pseudo p ON l.prompt_id = p.prompt_id AND p.iteration = l.iteration WHERE l.pseudo AND l.answer IS DISTINCT FROM p.pseudo_answer"), "0");
    assert_eq!(one("SELECT count(*) FROM labeled_batch WHERE NOT pseudo AND answer IS NULL"), "0");
    assert_eq!(
        one("SELECT count(*) FROM verified v JOIN labeled_batch l ON v.prompt_id = l.prompt_id AND v.iteration = l.iteration WHERE l.pseudo AND v.correct <> coalesce(answer_match(v.pred, l.answer, l.answer_type, l.precision, l.choices), false)"),
        "0"
    );
    // the pseudo-label is the answer with the largest summed PRM score
    assert_eq!(
        one("SELECT count(*) FROM pseudo p JOIN (SELECT r.prompt_id, extract_answer(r.response) AS pred, sum(coalesce(m.score, 0)) AS w FROM rollouts r LEFT JOIN (SELECT iteration, prompt_id, sample_idx, min(score) AS score FROM step_scores GROUP BY 1, 2, 3) m ON r.iteration = m.iteration AND r.prompt_id = m.prompt_id AND r.sample_idx = m.sample_idx WHERE r.iteration = 2 GROUP BY 1, 2) o ON o.prompt_id = p.prompt_id WHERE o.pred IS NOT NULL AND o.w > p.weight + 1e-9"),
        "0"
    );
    assert!(
        sql_csv(&s, "SELECT name FROM pseudo_metrics WHERE iteration = 2").contains("pseudo_label_accuracy")
            || one("SELECT count(*) FROM pseudo WHERE iteration = 2") == "0"
    );
}

#[test]
fn micro_prm_checks_trains_the_prm_on_step_labels_and_reading_checks() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("c").to_string_lossy().into_owned();
    ok(&mut run_pipeline("pipelines/ablations/prm_checks.yaml", &s, &["iterations=1", "params.check_images=2"]));
    let one = |q: &str| sql_csv(&s, q).lines().nth(1).unwrap_or_default().to_string();
    // perception drills of 2 images, one sample each, every one labelled
    assert_eq!(one("SELECT count(DISTINCT regexp_replace(prompt_id, '(?s)-(What|Which|How) .*', '')) FROM check_prompts"), "2");
    assert_eq!(one("SELECT count(*) = (SELECT count(*) FROM check_prompts) FROM check_samples"), "true");
    // a check is labelled 1 exactly when the answer is the drill's response, on every step
    assert_eq!(
        one("SELECT count(*) FROM check_data c JOIN check_prompts p ON c.prompt_id = p.prompt_id WHERE array_distinct(c.labels) <> [CASE WHEN btrim(c.response, concat(' ', chr(9), chr(10), chr(13))) = p.gold THEN 1.0 ELSE 0.0 END] OR cardinality(c.labels) <> cardinality(split_steps(c.response))"),
        "0"
    );
    // the PRM learns both kinds of rows
    assert_eq!(one("SELECT (SELECT count(*) FROM prm_data) = (SELECT count(*) FROM mc_data) + (SELECT count(*) FROM check_data)"), "true");
    assert_eq!(one("SELECT count(*) > 0 FROM step_scores WHERE iteration = 1"), "true");
}

/// A micro run of an ablation that replaces `step_labels`: MICRO's step_labels settings go to
/// the prm_label stages named instead.
fn run_relabelled(file: &str, store: &str, label_stages: &[&str], extra: &[&str]) -> std::process::Command {
    let mut c = bin();
    c.arg("run").arg(repo().join(file)).args(["--store", store]);
    for s in MICRO {
        match s.strip_prefix("stages.step_labels.") {
            Some(rest) => label_stages.iter().for_each(|st| {
                c.args(["--set", &format!("stages.{st}.{rest}")]);
            }),
            None => {
                c.args(["--set", s]);
            }
        }
    }
    for s in extra {
        c.args(["--set", s]);
    }
    c
}

#[test]
fn micro_consensus_keeps_the_responses_whose_two_labellings_agree() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("c").to_string_lossy().into_owned();
    ok(&mut run_relabelled(
        "pipelines/ablations/consensus.yaml",
        &s,
        &["mc_labels", "mc_labels_more"],
        &["iterations=1", "stages.mc_labels_more.first_completion=2"],
    ));
    let one = |q: &str| sql_csv(&s, q).lines().nth(1).unwrap_or_default().to_string();
    // the second labelling's completions are others than the first's
    assert_eq!(one("SELECT count(*) FROM mc_labels a JOIN mc_labels_more b USING (prompt_id, sample_idx, step_idx) WHERE a.prefix <> b.prefix OR a.step_text <> b.step_text"), "0");
    // a response is kept exactly when both put its first error (a label below 0.5 before the last step) at the same step
    let first_error = |t: &str| {
        format!(
            "SELECT prompt_id, sample_idx, coalesce(min(CASE WHEN step_idx < m AND soft < 0.5 THEN step_idx END), -1) AS f \
             FROM (SELECT *, max(step_idx) OVER (PARTITION BY prompt_id, sample_idx) AS m FROM {t}) GROUP BY prompt_id, sample_idx"
        )
    };
    let agree = format!(
        "SELECT a.prompt_id, a.sample_idx FROM ({}) a JOIN ({}) b USING (prompt_id, sample_idx) WHERE a.f = b.f",
        first_error("mc_labels"),
        first_error("mc_labels_more")
    );
    assert_eq!(
        sql_csv(&s, &format!("SELECT prompt_id, sample_idx FROM ({agree}) ORDER BY 1, 2")),
        sql_csv(&s, "SELECT DISTINCT prompt_id, sample_idx FROM step_labels ORDER BY 1, 2")
    );
    // their counts pooled, every step kept
    assert_eq!(
        one("SELECT count(*) FROM step_labels l JOIN mc_labels a USING (prompt_id, sample_idx, step_idx) JOIN mc_labels_more b USING (prompt_id, sample_idx, step_idx) \
             WHERE l.n <> a.n + b.n OR l.successes <> a.successes + b.successes OR abs(l.soft - CAST(l.successes AS DOUBLE) / l.n) > 1e-12 OR l.hard <> (l.successes > 0)"),
        "0"
    );
    assert_eq!(one("SELECT count(*) FROM step_labels l LEFT JOIN mc_labels a USING (prompt_id, sample_idx, step_idx) WHERE a.n IS NULL"), "0");
    assert_eq!(
        one("SELECT (SELECT count(*) FROM prm_data) = (SELECT count(DISTINCT concat(prompt_id, '/', CAST(sample_idx AS VARCHAR))) FROM step_labels)"),
        "true"
    );
    assert!(sql_csv(&s, "SELECT name FROM label_quality").contains("pair_auroc"));
}

#[test]
fn micro_oracle_labels_are_the_oracles_verdicts() {
    let d = tempfile::tempdir().unwrap();
    let s = d.path().join("o").to_string_lossy().into_owned();
    ok(&mut run_relabelled("pipelines/ablations/oracle_labels.yaml", &s, &["mc_labels"], &["iterations=1"]));
    let one = |q: &str| sql_csv(&s, q).lines().nth(1).unwrap_or_default().to_string();
    assert_eq!(one("SELECT (SELECT count(*) FROM step_labels) = (SELECT count(*) FROM mc_labels)"), "true");
    assert_eq!(one("SELECT count(*) FROM step_labels WHERE n <> 1 OR soft NOT IN (0.0, 1.0) OR hard <> (soft = 1.0)"), "0");
    // a label is 1 only where the oracle accepts the step and all before it, and never after a 0
    assert_eq!(
        one("SELECT count(*) FROM step_labels l JOIN label_samples s USING (prompt_id, sample_idx) JOIN label_prompts p USING (prompt_id) \
             WHERE l.soft = 1.0 AND NOT coalesce(synth_step_ok(p.scene, p.meta, s.response, l.step_idx), false)"),
        "0"
    );
    assert_eq!(one("SELECT count(*) FROM step_labels a JOIN step_labels b USING (prompt_id, sample_idx) WHERE b.step_idx > a.step_idx AND a.soft = 0.0 AND b.soft = 1.0"), "0");
    // so they separate sound prefixes from unsound ones perfectly
    let q = sql_csv(&s, "SELECT value FROM label_quality WHERE name = 'prefix_auroc'");
    let v = q.lines().nth(1).unwrap_or_default();
    assert!(v == "1.0" || v.is_empty() || v == "NaN", "prefix_auroc {v}");
}
