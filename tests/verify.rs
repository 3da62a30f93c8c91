//! `mstar data synth` and the `verify` operator end to end: gold chains are correct with sound
//! steps, bare answers are correct without sound steps, wrong answers are wrong.

mod common;
use common::*;

#[test]
fn synth_is_deterministic_and_verify_scores_answers_and_steps() {
    let d = tempfile::tempdir().unwrap();
    let p = d.path();
    let synth = |out: &str| {
        ok(bin().args(["data", "synth", "--out"]).arg(p.join(out)).args([
            "--seed",
            "3",
            "--train",
            "120",
            "--cot",
            "120",
            "--unlabeled",
            "10",
            "--val",
            "10",
            "--test",
            "10",
            "--test-hard",
            "10",
        ]))
    };
    let (stats, _) = synth("a");
    assert!(stats.contains("| train     | 120  | 120     | 120"), "{stats}");
    synth("b");
    for split in ["train", "unlabeled", "val", "test", "test_hard"] {
        let a = std::fs::read(p.join(format!("a/{split}.parquet"))).unwrap();
        let b = std::fs::read(p.join(format!("b/{split}.parquet"))).unwrap();
        assert!(a == b, "{split}.parquet differs between two runs with the same seed");
    }
    let unlabeled = sql_csv_plain(&format!("SELECT count(answer) AS n FROM '{}'", p.join("a/unlabeled.parquet").display()));
    assert_eq!(unlabeled, "n\n0\n");

    std::fs::write(
        p.join("v.yaml"),
        "name: v
datasets:
  synth: {path: a/train.parquet}
stages:
  - id: prompts
    op: import
    dataset: synth
  - id: rollouts
    op: sql
    query: |
      SELECT prompt_id, 0 AS sample_idx, gold_cot AS response FROM prompts
      UNION ALL SELECT prompt_id, 1, 'Answer: ' || answer FROM prompts
      UNION ALL SELECT prompt_id, 2, regexp_replace(gold_cot, 'Answer: .*$',
        CASE WHEN choices IS NULL THEN 'Answer: 999' WHEN answer = choices[1] THEN 'Answer: B' ELSE 'Answer: A' END) FROM prompts
  - id: verified
    op: verify
    rollouts: rollouts
    prompts: prompts
",
    )
    .unwrap();
    let store = p.join("store");
    ok(bin().arg("run").arg(p.join("v.yaml")).arg("--store").arg(&store));
    let s = store.to_str().unwrap();
    let got = sql_csv(s, "SELECT sample_idx, count(*) AS n, sum(CAST(correct AS INT)) AS correct, sum(CAST(steps_ok AS INT)) AS steps_ok, count(pred) AS with_pred FROM verified GROUP BY sample_idx ORDER BY sample_idx");
    assert_eq!(got, "sample_idx,n,correct,steps_ok,with_pred\n0,120,120,120,120\n1,120,120,0,120\n2,120,0,0,120\n");
    // the UDFs work in ad-hoc SQL, with and without a store
    assert_eq!(
        sql_csv_plain("SELECT extract_answer('Step 1: 2 + 2 = 4.\nAnswer: 4') AS a, answer_match('B', 'red', 'text', NULL, ['blue', 'red']) AS m, cardinality(split_steps('Step 1: x\nStep 2: y\nAnswer: 3')) AS n"),
        "a,m,n\n4,true,3\n"
    );
}

fn sql_csv_plain(q: &str) -> String {
    ok(bin().args(["sql", "--format", "csv", q])).0
}
