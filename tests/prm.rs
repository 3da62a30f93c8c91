//! The process reward model end to end on a micro pipeline: warm-up → sampled responses →
//! Monte Carlo step labels (prm_label) → PRM training (train, objective: prm) → step scores of
//! fresh rollouts (prm_score) → response scores, top-2 selection, PRM metrics and report SQL.

mod common;
use common::*;
use std::path::Path;

fn run(f: &Path, store: &str, extra: &[&str]) -> String {
    let mut c = bin();
    c.arg("run").arg(f).args(["--store", store]);
    for s in PRM_MICRO.iter().chain(extra) {
        c.args(["--set", s]);
    }
    ok(&mut c).1
}

const LABELS: &str = "SELECT prompt_id, sample_idx, step_idx, n, successes, soft, hard, prefix FROM step_labels ORDER BY prompt_id, sample_idx, step_idx";

#[test]
fn prm_pipeline_labels_trains_scores_and_selects() {
    let d = tempfile::tempdir().unwrap();
    let f = prm_pipeline(d.path());
    let store = |n: &str| d.path().join(n).to_string_lossy().into_owned();
    run(&f, &store("a"), &[]);
    let s = store("a");
    let one = |q: &str| sql_csv(&s, q).lines().nth(1).unwrap_or_default().to_string();

    // labels: every response of label_samples, steps numbered 0.., n completions except the last step
    assert_eq!(
        one("SELECT count(DISTINCT concat(prompt_id, '/', CAST(sample_idx AS VARCHAR))) FROM step_labels"),
        one("SELECT count(*) FROM label_samples WHERE array_length(split_steps(response)) > 0")
    );
    assert_eq!(
        one("SELECT count(*) FROM step_labels WHERE soft < 0 OR soft > 1 OR hard <> (successes > 0) OR abs(soft - CAST(successes AS DOUBLE) / n) > 1e-12"),
        "0"
    );
    assert_eq!(
        one("SELECT count(*) FROM (SELECT prompt_id, sample_idx, max(step_idx) AS m, count(*) AS c FROM step_labels GROUP BY prompt_id, sample_idx) WHERE m + 1 <> c"),
        "0",
        "step indices are not 0..n"
    );
    assert_eq!(
        one("SELECT count(*) FROM step_labels l WHERE n <> CASE WHEN step_idx + 1 = (SELECT max(step_idx) + 1 FROM step_labels m WHERE m.prompt_id = l.prompt_id AND m.sample_idx = l.sample_idx) THEN 1 ELSE 3 END"),
        "0"
    );
    // labelling does not depend on the batch size
    run(&f, &store("b"), &["stages.step_labels.batch_size=5"]);
    assert_eq!(sql_csv(&store("b"), LABELS), sql_csv(&s, LABELS), "labels differ at batch size 5");

    // the PRM trained on them, and scored one row per step of every rollout
    assert!(one("SELECT count(*) FROM train_log WHERE stage = 'prm'") != "0");
    assert_eq!(one("SELECT count(*) FROM step_scores"), one("SELECT sum(array_length(split_steps(response))) FROM verified"));
    assert_eq!(one("SELECT count(*) FROM step_scores WHERE NOT (score > 0 AND score < 1)"), "0");
    // a response's score is the minimum over its steps
    assert_eq!(
        one("SELECT count(*) FROM scored s JOIN (SELECT prompt_id, sample_idx, min(score) AS m FROM step_scores GROUP BY prompt_id, sample_idx) x ON s.prompt_id = x.prompt_id AND s.sample_idx = x.sample_idx WHERE s.score <> x.m"),
        "0"
    );
    // selection: only correct rollouts, at most 2 per prompt, the best scores
    assert_eq!(one("SELECT count(*) FROM selected s JOIN scored v ON s.prompt_id = v.prompt_id AND s.sample_idx = v.sample_idx WHERE NOT v.correct"), "0");
    assert_eq!(one("SELECT count(*) FROM (SELECT prompt_id FROM selected GROUP BY prompt_id HAVING count(*) > 2)"), "0");
    assert_eq!(
        one("SELECT count(*) FROM scored v JOIN selected s ON v.prompt_id = s.prompt_id WHERE v.correct AND v.score > s.score AND NOT EXISTS (SELECT 1 FROM selected t WHERE t.prompt_id = v.prompt_id AND t.sample_idx = v.sample_idx)"),
        "0",
        "a better-scored correct rollout was left out"
    );
    // metrics hang together
    let m = sql_csv(&s, "SELECT name, value FROM prm_metrics ORDER BY name");
    let get = |n: &str| -> f64 {
        m.lines().find(|l| l.starts_with(&format!("{n},"))).unwrap_or_else(|| panic!("{n} missing: {m}")).split(',').nth(1).unwrap().parse().unwrap()
    };
    assert!(get("best_of_n") <= get("reward_pass@2") && get("reward_pass@2") <= get("pass@k"), "{m}");
    let r = sql_csv(&s, "SELECT name, value FROM prm_report ORDER BY name");
    for name in ["step_auroc", "steps", "sound_share_prm_top2", "sound_share_random2", "sound_share_all_correct"] {
        assert!(r.contains(&format!("{name},")), "{name} missing: {r}");
    }
}

/// prm_report over input tables of many files holds what its query gives on the committed tables
/// (its step AUROC once came out as the `steps` count there: two scalar subqueries of one CTE).
#[test]
fn prm_report_over_tables_of_many_files() {
    let d = tempfile::tempdir().unwrap();
    let f = prm_pipeline(d.path());
    let s = d.path().join("a").to_string_lossy().into_owned();
    run(&f, &s, &["rows_per_file=2"]);
    let stored = sql_csv(&s, "SELECT split, name, value FROM prm_report WHERE iteration = 1 ORDER BY name");
    let file = d.path().join("sql/prm_report.sql");
    let (again, _) = ok(bin().args(["sql", "--store", &s, "--format", "csv", "--file"]).arg(&file).args([
        "--param",
        "iteration=1",
        "--param",
        "split=test",
        "--param",
        "seed=0",
    ]));
    let mut again: Vec<&str> = again.lines().collect();
    again[1..].sort();
    assert_eq!(stored.lines().count(), 12, "{stored}");
    assert_eq!(stored, again.join("\n") + "\n", "the stored report differs from its query on the committed tables");
    let auroc = stored.lines().find(|l| l.contains(",step_auroc,")).unwrap().rsplit(',').next().unwrap().to_string();
    let steps = stored.lines().find(|l| l.contains(",steps,")).unwrap().rsplit(',').next().unwrap().to_string();
    assert!(auroc == "NaN" || auroc.parse::<f64>().is_ok_and(|v| (0.0..=1.0).contains(&v)), "step_auroc {auroc} (steps {steps})");
}

#[test]
fn scoring_with_a_policy_checkpoint_is_a_clear_error() {
    let d = tempfile::tempdir().unwrap();
    let f = prm_pipeline(d.path());
    let store = d.path().join("s").to_string_lossy().into_owned();
    let mut c = bin();
    c.arg("run").arg(&f).args(["--store", &store]);
    for s in PRM_MICRO.iter().chain(&["stages.step_scores.prm=[warmup]"]) {
        c.args(["--set", s]);
    }
    let (_, _, err) = fails(&mut c);
    assert!(err.contains("is a policy, not a process reward model"), "{err}");
}
