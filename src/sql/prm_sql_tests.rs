//! The reward-model SQL of `sql/` (response scores, selections, PRM metrics, pseudo-labels)
//! run on small hand-made tables whose right answers are worked out in the comments.

use super::params::{substitute, ParamSet};
use arrow::util::display::array_value_to_string;

const FIXTURES: &str = "
CREATE TABLE step_scores (iteration INT, prompt_id VARCHAR, sample_idx INT, step_idx INT, step_text VARCHAR, score DOUBLE) AS VALUES
  (1, 'a', 0, 0, 's', 0.9), (1, 'a', 0, 1, 's', 0.2),
  (1, 'a', 1, 0, 's', 0.6), (1, 'a', 1, 1, 's', 0.7),
  (1, 'a', 2, 0, 's', 0.6),
  (1, 'a', 3, 0, 's', 0.95), (1, 'a', 3, 1, 's', 0.99),
  (1, 'b', 0, 0, 's', 0.8),
  (1, 'b', 1, 0, 's', 0.3), (1, 'b', 1, 1, 's', 0.1),
  (0, 'a', 0, 0, 's', 0.0);
CREATE TABLE verified (iteration INT, prompt_id VARCHAR, sample_idx INT, response VARCHAR, pred VARCHAR, correct BOOLEAN, num_tokens INT, logprob DOUBLE) AS VALUES
  (1, 'a', 0, 'r', '5', true, 10, -2.0), (1, 'a', 1, 'r', '5', true, 10, -5.0), (1, 'a', 2, 'r', '5', true, 4, -1.0), (1, 'a', 3, 'r', '7', false, 10, -1.0),
  (1, 'b', 0, 'r', '3', false, 10, -3.0), (1, 'b', 1, 'r', '4', true, 10, -4.0), (1, 'b', 2, '', '4', true, 0, 0.0),
  (0, 'a', 0, 'r', '5', true, 10, -2.0);
";

async fn session() -> datafusion::prelude::SessionContext {
    let ctx = super::new_session();
    for stmt in FIXTURES.split(';').filter(|s| !s.trim().is_empty()) {
        ctx.sql(stmt).await.unwrap().collect().await.unwrap();
    }
    ctx
}

/// Runs `sql/NAME.sql` with parameters and returns its rows as strings, ordered.
async fn run(ctx: &datafusion::prelude::SessionContext, name: &str, params: &[(&str, &str)], order: &str) -> Vec<String> {
    let text = std::fs::read_to_string(format!("{}/sql/{name}.sql", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut p = ParamSet::new();
    for (k, v) in params {
        p.insert(k, v.to_string());
    }
    let q = format!("SELECT * FROM ({}) ORDER BY {order}", substitute(&text, &p).unwrap());
    let batches = ctx.sql(&q).await.unwrap_or_else(|e| panic!("{name}: {e}")).collect().await.unwrap();
    let mut rows = Vec::new();
    for b in &batches {
        for i in 0..b.num_rows() {
            rows.push((0..b.num_columns()).map(|c| array_value_to_string(b.column(c), i).unwrap()).collect::<Vec<_>>().join(" "));
        }
    }
    rows
}

/// `scored` as response_scores.sql makes it (with the `iteration` column the engine adds).
async fn with_scored(score: &str) -> datafusion::prelude::SessionContext {
    let ctx = session().await;
    let text = std::fs::read_to_string(format!("{}/sql/response_scores.sql", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut p = ParamSet::new();
    p.insert("iteration", "1".into());
    p.insert("score", score.into());
    let q = substitute(&text, &p).unwrap();
    ctx.sql(&format!("CREATE TABLE scored AS SELECT 1 AS iteration, * FROM ({q})")).await.unwrap().collect().await.unwrap();
    ctx
}

#[tokio::test]
async fn response_score_is_the_minimum_over_steps() {
    let ctx = with_scored("score_min").await;
    let rows = run(&ctx, "response_scores", &[("iteration", "1"), ("score", "score_min")], "prompt_id, sample_idx").await;
    // columns: prompt_id sample_idx response pred correct num_tokens logprob score_min score_mean
    // score_last num_steps logprob_mean score
    assert_eq!(
        rows,
        vec![
            "a 0 r 5 true 10 -2.0 0.2 0.55 0.2 2 -0.2 0.2",
            "a 1 r 5 true 10 -5.0 0.6 0.6499999999999999 0.7 2 -0.5 0.6",
            "a 2 r 5 true 4 -1.0 0.6 0.6 0.6 1 -0.25 0.6",
            "a 3 r 7 false 10 -1.0 0.95 0.97 0.99 2 -0.1 0.95",
            "b 0 r 3 false 10 -3.0 0.8 0.8 0.8 1 -0.3 0.8",
            "b 1 r 4 true 10 -4.0 0.1 0.2 0.1 2 -0.4 0.1",
            "b 2  4 true 0 0.0 0.0 0.0 0.0 0 0.0 0.0", // no steps: scores 0; no tokens: logprob_mean 0
        ]
    );
    let mean = run(&ctx, "response_scores", &[("iteration", "1"), ("score", "score_mean")], "prompt_id, sample_idx").await;
    assert!(mean[0].ends_with(" 0.55"), "{}", mean[0]);
    // the policy's confidence instead of the PRM: top-2 of a's correct rollouts by mean token
    // log-probability are s0 (−0.2) and s2 (−0.25), not the PRM's s1 and s2
    let ctx = with_scored("logprob_mean").await;
    let top2 = run(&ctx, "select_top_k", &[("iteration", "1"), ("k", "2")], "prompt_id, rank").await;
    assert_eq!(top2, vec!["a 0 r -0.2 1", "a 2 r -0.25 2", "b 2  0.0 1", "b 1 r -0.4 2"]);
}

#[tokio::test]
async fn top_k_keeps_the_best_correct_rollouts_and_breaks_ties_by_sample() {
    let ctx = with_scored("score_min").await;
    // a: correct s0 0.2, s1 0.6, s2 0.6 (tie → s1 first); s3 scores best but is wrong
    // b: correct s1 0.1 and s2 0.0
    let top2 = run(&ctx, "select_top_k", &[("iteration", "1"), ("k", "2")], "prompt_id, rank").await;
    assert_eq!(top2, vec!["a 1 r 0.6 1", "a 2 r 0.6 2", "b 1 r 0.1 1", "b 2  0.0 2"]);
    let top1 = run(&ctx, "select_top_k", &[("iteration", "1"), ("k", "1")], "prompt_id, rank").await;
    assert_eq!(top1, vec!["a 1 r 0.6 1", "b 1 r 0.1 1"]);
    let alpha = run(&ctx, "select_above_alpha", &[("iteration", "1"), ("alpha", "0.5")], "prompt_id, rank").await;
    assert_eq!(alpha, vec!["a 1 r 0.6 1", "a 2 r 0.6 2"]);
    // random-2: only correct rows, 2 per prompt, reproducible, and seed-dependent somewhere
    let r0 = run(&ctx, "select_random_k", &[("iteration", "1"), ("k", "2"), ("seed", "0")], "prompt_id, rank").await;
    assert_eq!(r0.len(), 4);
    assert!(r0.iter().all(|r| !r.starts_with("a 3") && !r.starts_with("b 0")), "{r0:?}");
    assert_eq!(r0, run(&ctx, "select_random_k", &[("iteration", "1"), ("k", "2"), ("seed", "0")], "prompt_id, rank").await);
    let picks: std::collections::BTreeSet<Vec<String>> = futures::future::join_all((0..8).map(|s| {
        let ctx = ctx.clone();
        async move { run(&ctx, "select_random_k", &[("iteration", "1"), ("k", "2"), ("seed", &s.to_string())], "prompt_id, sample_idx").await }
    }))
    .await
    .into_iter()
    .collect();
    assert!(picks.len() > 1, "random-2 ignores the seed");
}

#[tokio::test]
async fn reward_pass_at_2_best_of_n_and_votes() {
    let ctx = with_scored("score_min").await;
    let rows = run(&ctx, "prm_metrics", &[("iteration", "1"), ("split", "val"), ("seed", "0")], "name").await;
    // Reward-Pass@2: a's top-2 are s3 (wrong) and s1 (right); b's are s0 (wrong) and s1 (right).
    // Best-of-N: a's top is s3, b's is s0: both wrong. Majority: a → 5 (right), b → 4 (right).
    // Weighted: a → 5 (1.4 against 0.95), b → 3 (0.8 against 0.1): wrong. Random-2: any 2 of a's
    // rollouts (3 of 4 correct) or b's (2 of 3) hold a correct one.
    assert_eq!(
        rows,
        vec!["val best_of_n 0.0", "val majority_vote 1.0", "val pass@k 1.0", "val random_pass@2 1.0", "val reward_pass@2 1.0", "val weighted_vote 0.5"]
    );
    let labels = run(&ctx, "pseudo_labels", &[("iteration", "1")], "prompt_id").await;
    // share = weight / total weight: 1.4 / 2.35 and 0.8 / 0.9 (the last digit depends on the summation order)
    assert_eq!(labels.len(), 2);
    assert!(labels[0].starts_with("a 5 3 1.4 0.595744680851063") && labels[1].starts_with("b 3 1 0.8 0.88888888888888"), "{labels:?}");
}

#[tokio::test]
async fn pseudo_answers_are_prm_weighted_votes_of_unlabeled_prompts_only() {
    let ctx = session().await;
    // a is labeled (ignored); b is unlabeled: "3" weighs 0.8 (sample 0's min), "4" weighs
    // 0.1 + 0 (sample 1's min; sample 2 has no steps) → 3 with share 0.8 / 0.9; c has no answer.
    for stmt in [
        "CREATE TABLE rollouts (iteration INT, prompt_id VARCHAR, sample_idx INT, response VARCHAR) AS VALUES \
         (1, 'a', 0, 'Answer: 7'), (1, 'b', 0, 'Step 1: x\nAnswer: 3'), (1, 'b', 1, 'Answer: 4'), (1, 'b', 2, 'Answer: 4'), (1, 'c', 0, 'no idea'), (0, 'b', 0, 'Answer: 9')",
        "CREATE TABLE batch (iteration INT, prompt_id VARCHAR, answer VARCHAR, question VARCHAR) AS VALUES (1, 'a', '7', 'q'), (1, 'b', NULL, 'q'), (1, 'c', NULL, 'q')",
    ] {
        ctx.sql(stmt).await.unwrap().collect().await.unwrap();
    }
    let rows = run(&ctx, "pseudo_answers", &[("iteration", "1"), ("prompts", "batch")], "prompt_id").await;
    assert_eq!(rows, vec!["b 3 1 0.8 0.888888888888889"]);
    let text = std::fs::read_to_string(format!("{}/sql/pseudo_answers.sql", env!("CARGO_MANIFEST_DIR"))).unwrap();
    let mut p = ParamSet::new();
    p.insert("iteration", "1".into());
    p.insert("prompts", "batch".into());
    ctx.sql(&format!("CREATE TABLE pseudo AS SELECT 1 AS iteration, * FROM ({})", substitute(&text, &p).unwrap())).await.unwrap().collect().await.unwrap();
    let labeled = run(&ctx, "labeled_batch", &[("iteration", "1"), ("prompts", "batch")], "prompt_id").await;
    // columns: prompt_id question answer pseudo
    assert_eq!(labeled, vec!["a q 7 false", "b q 3 true", "c q  true"]);
}

#[tokio::test]
async fn eval_metrics_and_the_temperature_choice() {
    let ctx = super::new_session();
    // prompt p: greedy right; samples at T 0.5: [wrong 0.9, right 0.8, wrong 0.1]; at T 1.0:
    // [wrong 0.9, wrong 0.8, right 0.7]. prompt q: greedy wrong; T 0.5: [right 0.2, wrong 0.3,
    // wrong 0.1]; T 1.0: [right 0.9, wrong 0.1, wrong 0.0].
    // T 0.5: Reward-Pass@2 p 1 (top-2 0.9, 0.8), q 1 (0.3, 0.2) → 1.0; Pass@3 1.0.
    // T 1.0: p 0 (0.9, 0.8 wrong), q 1 → 0.5; Pass@3 1.0. Chosen: 0.5.
    ctx.sql(
        "CREATE TABLE s (iteration INT, split VARCHAR, prompt_id VARCHAR, greedy BOOLEAN, temperature DOUBLE, sample_idx INT, correct BOOLEAN, steps_ok BOOLEAN, score DOUBLE) AS VALUES \
         (1, 'val', 'p', true, 0.0, 0, true, true, 0.5), (1, 'val', 'q', true, 0.0, 0, false, false, 0.5), \
         (1, 'val', 'p', false, 0.5, 0, false, NULL, 0.9), (1, 'val', 'p', false, 0.5, 1, true, NULL, 0.8), (1, 'val', 'p', false, 0.5, 2, false, NULL, 0.1), \
         (1, 'val', 'q', false, 0.5, 0, true, NULL, 0.2), (1, 'val', 'q', false, 0.5, 1, false, NULL, 0.3), (1, 'val', 'q', false, 0.5, 2, false, NULL, 0.1), \
         (1, 'val', 'p', false, 1.0, 0, false, NULL, 0.9), (1, 'val', 'p', false, 1.0, 1, false, NULL, 0.8), (1, 'val', 'p', false, 1.0, 2, true, NULL, 0.7), \
         (1, 'val', 'q', false, 1.0, 0, true, NULL, 0.9), (1, 'val', 'q', false, 1.0, 1, false, NULL, 0.1), (1, 'val', 'q', false, 1.0, 2, false, NULL, 0.0)",
    )
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    let t = run(&ctx, "pick_temperature", &[("iteration", "1"), ("samples", "s")], "temperature").await;
    // temperature reward_pass_at_2 pass_at_k sample_accuracy prompts k chosen
    assert_eq!(t, vec!["0.5 1.0 1.0 0.3333333333333333 2 3 true", "1.0 0.5 1.0 0.3333333333333333 2 3 false"]);
    // eval_metrics over the T = 1.0 samples only (one temperature, as an eval stage has)
    ctx.sql("CREATE TABLE e AS SELECT * FROM s WHERE greedy OR temperature = 1.0").await.unwrap().collect().await.unwrap();
    let m = run(&ctx, "eval_metrics", &[("iteration", "1"), ("samples", "e")], "name").await;
    assert_eq!(
        m,
        vec![
            "val greedy_accuracy 0.5",
            "val greedy_steps_ok 0.5",
            "val k 3.0",
            "val pass@k 1.0",
            "val pass@k_minus_greedy 0.5",
            "val prompts 2.0",
            "val reward_pass@2 0.5",
            "val sample_accuracy 0.3333333333333333",
        ]
    );
}

#[tokio::test]
async fn eval_metrics_measure_how_the_prm_ranks_sound_reasoning() {
    let ctx = super::new_session();
    // x: correct samples 0.9 unsound, 0.5 sound, 0.3 sound (and a wrong one scored higher): the
    // PRM's top correct is unsound, a random correct is sound 2/3 of the time. y: correct 0.2
    // sound, 0.1 unsound: top sound, random 1/2. z: nothing correct, not counted.
    ctx.sql(
        "CREATE TABLE e (iteration INT, split VARCHAR, prompt_id VARCHAR, greedy BOOLEAN, temperature DOUBLE, sample_idx INT, correct BOOLEAN, steps_ok BOOLEAN, score DOUBLE) AS VALUES \
         (1, 'test', 'x', true, 0.0, 0, true, true, 0.5), (1, 'test', 'y', true, 0.0, 0, false, false, 0.5), (1, 'test', 'z', true, 0.0, 0, false, false, 0.5), \
         (1, 'test', 'x', false, 1.0, 0, true, false, 0.9), (1, 'test', 'x', false, 1.0, 1, true, true, 0.5), (1, 'test', 'x', false, 1.0, 2, true, true, 0.3), (1, 'test', 'x', false, 1.0, 3, false, false, 0.95), \
         (1, 'test', 'y', false, 1.0, 0, true, true, 0.2), (1, 'test', 'y', false, 1.0, 1, true, false, 0.1), \
         (1, 'test', 'z', false, 1.0, 0, false, false, 0.7), (1, 'test', 'z', false, 1.0, 1, false, true, 0.2)",
    )
    .await
    .unwrap()
    .collect()
    .await
    .unwrap();
    let m = run(&ctx, "eval_metrics", &[("iteration", "1"), ("samples", "e")], "name").await;
    let sound: Vec<&String> = m.iter().filter(|r| r.contains(" sound_")).collect();
    assert_eq!(sound.len(), 2, "{m:?}");
    assert_eq!(sound[0], "test sound_prm_top1 0.5");
    assert!(sound[1].starts_with("test sound_random1 0.58333"), "{m:?}");
}

#[tokio::test]
async fn reading_checks_label_every_step_by_an_exact_match_with_the_drill() {
    let ctx = super::new_session();
    for stmt in [
        "CREATE TABLE check_prompts (prompt_id VARCHAR, question VARCHAR, images VARCHAR, gold VARCHAR) AS VALUES
           ('i-read', 'q1', 'img', concat('Step 1: The red circle shows 6.', chr(10), 'Answer: 6')),
           ('i-list', 'q2', 'img', 'Step 1: The red shapes show 6, 2.')",
        // right (two steps: the reading and the answer line), misread, right with trailing
        // whitespace, wrong listing, and an empty response (no steps: left out)
        "CREATE TABLE check_samples (prompt_id VARCHAR, sample_idx INT, response VARCHAR) AS VALUES
           ('i-read', 0, concat('Step 1: The red circle shows 6.', chr(10), 'Answer: 6')),
           ('i-read', 1, concat('Step 1: The red circle shows 8.', chr(10), 'Answer: 8')),
           ('i-list', 0, concat('Step 1: The red shapes show 6, 2.', chr(10), '')),
           ('i-list', 1, 'Step 1: The red shapes show 6.'),
           ('i-list', 2, '')",
    ] {
        ctx.sql(stmt).await.unwrap().collect().await.unwrap();
    }
    let rows = run(&ctx, "prm_check_data", &[], "prompt_id, sample_idx").await;
    // columns: prompt_id sample_idx question images response labels
    assert_eq!(
        rows,
        vec![
            "i-list 0 q2 img Step 1: The red shapes show 6, 2.\n [1.0]",
            "i-list 1 q2 img Step 1: The red shapes show 6. [0.0]",
            "i-read 0 q1 img Step 1: The red circle shows 6.\nAnswer: 6 [1.0, 1.0]",
            "i-read 1 q1 img Step 1: The red circle shows 8.\nAnswer: 8 [0.0, 0.0]",
        ]
    );
}
