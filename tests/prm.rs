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

/// A pipeline of hand-made step labels on synthetic prompts: each prompt's gold chain (sound,
/// right), the chain with every digit shifted (unsound, wrong) and with only its first line's
/// digits shifted (unsound, a lucky right answer); labels from a hash, the last step the verdict.
const HAND_LABELS: &str = r#"name: labels
seed: 0
iterations: 0
datasets:
  train: {synth: {split: train, count: 12, cot: 12, seed: 3}}
stages:
  - {id: label_prompts, op: import, dataset: train}
  - id: label_samples
    op: sql
    scope: setup
    query: |
      SELECT prompt_id, 0 AS sample_idx, gold_cot AS response FROM label_prompts
      UNION ALL SELECT prompt_id, 1, translate(gold_cot, '0123456789', '1234567890') FROM label_prompts
      UNION ALL SELECT prompt_id, 2, concat(translate(split_part(gold_cot, chr(10), 1), '0123456789', '1234567890'), substr(gold_cot, strpos(gold_cot, chr(10)))) FROM label_prompts
  - id: step_labels
    op: sql
    scope: setup
    query: |
      SELECT *, CAST(successes AS DOUBLE) / n AS soft FROM (
        SELECT prompt_id, sample_idx, step_idx, '' AS step_text, '' AS prefix, CAST(CASE WHEN step_idx = k - 1 THEN 1 ELSE 4 END AS INT) AS n,
               CAST(CASE WHEN step_idx = k - 1 THEN (CASE WHEN sample_idx = 1 THEN 0 ELSE 1 END)
                         ELSE ascii(substr(md5(concat(prompt_id, CAST(sample_idx AS VARCHAR), CAST(step_idx AS VARCHAR))), 1, 1)) % 5 END AS INT) AS successes
        FROM (SELECT prompt_id, sample_idx, unnest(range(0, array_length(split_steps(response)))) AS step_idx, array_length(split_steps(response)) AS k FROM label_samples))
  - {id: label_quality, op: sql, scope: setup, sql: label_quality, params: {labels: step_labels}}
  - {id: oracle, op: sql, scope: setup, sql: oracle_step_labels, params: {labels: step_labels}}
  - {id: oracle_quality, op: sql, scope: setup, sql: label_quality, params: {labels: oracle}}
  - {id: self_consensus, op: sql, scope: setup, sql: consensus_labels, params: {a: step_labels, b: step_labels, threshold: 0.5}}
"#;

/// label_quality's AUROCs are what counting every (accepted, rejected) pair gives; oracle labels
/// rank perfectly; a label table's consensus with itself keeps every response.
#[test]
fn label_quality_measures_the_labels_against_the_oracle() {
    let d = tempfile::tempdir().unwrap();
    prm_pipeline(d.path()); // the sql/ folder beside the spec
    let f = d.path().join("labels.yaml");
    std::fs::write(&f, HAND_LABELS).unwrap();
    let s = d.path().join("a").to_string_lossy().into_owned();
    ok(bin().arg("run").arg(&f).args(["--store", &s]));
    let report = |t: &str| sql_csv(&s, &format!("SELECT name, value FROM {t} ORDER BY name"));
    let (stored, oracle) = (report("label_quality"), report("oracle_quality"));
    let get = |r: &str, n: &str| -> f64 {
        r.lines().find(|l| l.starts_with(&format!("{n},"))).unwrap_or_else(|| panic!("{n} missing: {r}")).split(',').nth(1).unwrap().parse().unwrap()
    };
    // every step with the oracle's verdict on it and on its prefix, and the response's outcome
    let rows = sql_csv(
        &s,
        "SELECT l.prompt_id, l.sample_idx, l.step_idx, l.soft, CAST(synth_step_ok(p.scene, p.meta, s.response, l.step_idx) AS INT) AS ok, \
                CAST(min(CASE WHEN synth_step_ok(p.scene, p.meta, s.response, l.step_idx) THEN 1 ELSE 0 END) OVER (PARTITION BY l.prompt_id, l.sample_idx ORDER BY l.step_idx ROWS UNBOUNDED PRECEDING) AS INT) AS prefix_ok, \
                max(l.step_idx) OVER (PARTITION BY l.prompt_id, l.sample_idx) AS last, \
                coalesce(answer_match(extract_answer(s.response), p.answer, p.answer_type, p.precision, p.choices), false) AS correct \
         FROM step_labels l JOIN label_samples s ON s.prompt_id = l.prompt_id AND s.sample_idx = l.sample_idx JOIN label_prompts p ON p.prompt_id = l.prompt_id",
    );
    struct Step {
        prompt: String,
        sample: String,
        idx: i64,
        soft: f64,
        ok: Option<bool>,
        prefix_ok: bool,
        last: i64,
        correct: bool,
    }
    let steps: Vec<Step> = rows
        .lines()
        .skip(1)
        .map(|l| {
            let c: Vec<&str> = l.split(',').collect();
            Step {
                prompt: c[0].into(),
                sample: c[1].into(),
                idx: c[2].parse().unwrap(),
                soft: c[3].parse().unwrap(),
                ok: (!c[4].is_empty()).then(|| c[4] == "1"),
                prefix_ok: c[5] == "1",
                last: c[6].parse().unwrap(),
                correct: c[7] == "true",
            }
        })
        .collect();
    let auroc = |pos: &[f64], neg: &[f64]| -> f64 {
        let wins: f64 = pos
            .iter()
            .map(|a| {
                neg.iter()
                    .map(|b| {
                        if a > b {
                            1.0
                        } else if a == b {
                            0.5
                        } else {
                            0.0
                        }
                    })
                    .sum::<f64>()
            })
            .sum();
        wins / (pos.len() * neg.len()) as f64
    };
    let judged: Vec<&Step> = steps.iter().filter(|x| x.idx < x.last && x.ok.is_some()).collect();
    let split = |y: &dyn Fn(&Step) -> bool| -> (Vec<f64>, Vec<f64>) {
        (judged.iter().filter(|x| y(x)).map(|x| x.soft).collect(), judged.iter().filter(|x| !y(x)).map(|x| x.soft).collect())
    };
    let ((sp, sn), (pp, pn)) = (split(&|x| x.ok == Some(true)), split(&|x| x.prefix_ok));
    assert!(sp.len() > 5 && sn.len() > 5 && pp.len() > 5 && pn.len() > 5, "too few of a kind to test: {rows}");
    assert_eq!(get(&stored, "steps"), judged.len() as f64);
    assert!((get(&stored, "step_auroc") - auroc(&sp, &sn)).abs() < 1e-12, "{stored}");
    assert!((get(&stored, "prefix_auroc") - auroc(&pp, &pn)).abs() < 1e-12, "{stored}");
    // within-prompt pairs of right responses: sound = every step accepted
    // (prompt, sample) → (lowest label before the last step, right, sound)
    type Response = (f64, bool, bool);
    let mut responses: std::collections::BTreeMap<(String, String), Response> = Default::default();
    for x in &steps {
        let r = responses.entry((x.prompt.clone(), x.sample.clone())).or_insert((1.0, false, true));
        if x.idx < x.last {
            r.0 = r.0.min(x.soft);
        }
        r.1 = x.correct;
        r.2 &= x.ok == Some(true);
    }
    let right: Vec<(&(String, String), &Response)> = responses.iter().filter(|(_, r)| r.1).collect();
    let (mut wins, mut pairs) = (0.0, 0);
    for (a, ra) in right.iter().filter(|(_, r)| r.2) {
        for (_, rb) in right.iter().filter(|(b, r)| b.0 == a.0 && !r.2) {
            wins += if ra.0 > rb.0 {
                1.0
            } else if ra.0 == rb.0 {
                0.5
            } else {
                0.0
            };
            pairs += 1;
        }
    }
    assert!(pairs > 3, "{stored}");
    assert_eq!(get(&stored, "pairs"), pairs as f64);
    assert!((get(&stored, "pair_auroc") - wins / pairs as f64).abs() < 1e-12, "{stored}");
    assert_eq!(get(&stored, "responses"), responses.len() as f64);
    assert_eq!(get(&stored, "correct_responses"), right.len() as f64);
    // the oracle's own labels rank sound prefixes and sound responses perfectly
    assert_eq!((get(&oracle, "prefix_auroc"), get(&oracle, "pair_auroc"), get(&oracle, "pairs")), (1.0, 1.0, pairs as f64), "{oracle}");
    // a table agrees with itself: every response kept, the counts doubled
    let one = |q: &str| sql_csv(&s, q).lines().nth(1).unwrap_or_default().to_string();
    assert_eq!(one("SELECT count(*) FROM self_consensus c JOIN step_labels l USING (prompt_id, sample_idx, step_idx) WHERE c.n = 2 * l.n AND c.soft = CAST(c.successes AS DOUBLE) / c.n"), one("SELECT count(*) FROM step_labels"));
}
