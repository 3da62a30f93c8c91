-- PRM quality on the synthetic task, against the oracle's per-step verdicts:
--   step_auroc        P(score of a sound step > score of an unsound one), ties counting ½
--   steps             steps judged (the oracle could align)
--   sound_share_*     share of rollouts whose reasoning is fully sound (steps_ok) among the
--                     PRM's top-2 correct, 2 random correct, and all correct rollouts
--   step_ok_share_*   the same three groups: mean share of a rollout's steps the oracle accepts
--   pair_auroc_prm    within each prompt's correct rollouts, P(a sound one scores above an
--                     unsound one), ties ½: what top-k selection depends on
--   pair_auroc_logprob the same for the policy's own mean token log-probability (no PRM)
--   pairs             the (sound, unsound) pairs behind the two
-- Reads `step_scores`, `scored` (with steps_ok) and `prompts` (scene, meta) of this iteration.
WITH steps AS (
  SELECT s.score, synth_step_ok(p.scene, p.meta, v.response, s.step_idx) AS ok
  FROM step_scores s
  JOIN scored v ON s.prompt_id = v.prompt_id AND s.sample_idx = v.sample_idx AND v.iteration = ${iteration}
  JOIN prompts p ON s.prompt_id = p.prompt_id
  WHERE s.iteration = ${iteration}
),
judged AS (SELECT score, CASE WHEN ok THEN 1 ELSE 0 END AS y FROM steps WHERE ok IS NOT NULL),
step_share AS (
  SELECT s.prompt_id, s.sample_idx, avg(CASE WHEN synth_step_ok(p.scene, p.meta, v.response, s.step_idx) THEN 1.0 ELSE 0.0 END) AS share
  FROM step_scores s
  JOIN scored v ON s.prompt_id = v.prompt_id AND s.sample_idx = v.sample_idx AND v.iteration = ${iteration}
  JOIN prompts p ON s.prompt_id = p.prompt_id
  WHERE s.iteration = ${iteration}
  GROUP BY s.prompt_id, s.sample_idx
),
ranked AS (
  SELECT y, RANK() OVER (ORDER BY score) + (count(*) OVER (PARTITION BY score) - 1) / 2.0 AS r FROM judged
),
auc AS (
  SELECT (sum(CASE WHEN y = 1 THEN r ELSE 0 END) - sum(y) * (sum(y) + 1) / 2.0) / (sum(y) * (count(*) - sum(y))) AS v,
         count(*) AS n
  FROM ranked
),
correct AS (
  SELECT v.prompt_id, v.sample_idx, v.steps_ok, coalesce(x.share, 0.0) AS share,
         ROW_NUMBER() OVER (PARTITION BY v.prompt_id ORDER BY v.score DESC, v.sample_idx ASC) AS by_prm,
         ROW_NUMBER() OVER (PARTITION BY v.prompt_id ORDER BY md5(concat('${seed}', '/', v.prompt_id, '/', CAST(v.sample_idx AS VARCHAR))), v.sample_idx) AS by_chance
  FROM scored v LEFT JOIN step_share x ON v.prompt_id = x.prompt_id AND v.sample_idx = x.sample_idx
  WHERE v.iteration = ${iteration} AND v.correct
),
pairs AS (
  SELECT CASE WHEN a.score > b.score THEN 1.0 WHEN a.score = b.score THEN 0.5 ELSE 0.0 END AS prm,
         CASE WHEN a.lp > b.lp THEN 1.0 WHEN a.lp = b.lp THEN 0.5 ELSE 0.0 END AS lp
  FROM (SELECT prompt_id, score, logprob / greatest(num_tokens, 1) AS lp, steps_ok FROM scored WHERE iteration = ${iteration} AND correct) a
  JOIN (SELECT prompt_id, score, logprob / greatest(num_tokens, 1) AS lp, steps_ok FROM scored WHERE iteration = ${iteration} AND correct) b
    ON a.prompt_id = b.prompt_id AND a.steps_ok AND NOT b.steps_ok
)
SELECT '${split}' AS split, 'step_auroc' AS name, v AS value FROM auc
UNION ALL SELECT '${split}', 'steps', CAST(n AS DOUBLE) FROM auc
UNION ALL SELECT '${split}', 'sound_share_prm_top2', avg(CASE WHEN steps_ok THEN 1.0 ELSE 0.0 END) FROM correct WHERE by_prm <= 2
UNION ALL SELECT '${split}', 'sound_share_random2', avg(CASE WHEN steps_ok THEN 1.0 ELSE 0.0 END) FROM correct WHERE by_chance <= 2
UNION ALL SELECT '${split}', 'sound_share_all_correct', avg(CASE WHEN steps_ok THEN 1.0 ELSE 0.0 END) FROM correct
UNION ALL SELECT '${split}', 'step_ok_share_prm_top2', avg(share) FROM correct WHERE by_prm <= 2
UNION ALL SELECT '${split}', 'step_ok_share_random2', avg(share) FROM correct WHERE by_chance <= 2
UNION ALL SELECT '${split}', 'step_ok_share_all_correct', avg(share) FROM correct
UNION ALL SELECT '${split}', 'pair_auroc_prm', avg(prm) FROM pairs
UNION ALL SELECT '${split}', 'pair_auroc_logprob', avg(lp) FROM pairs
UNION ALL SELECT '${split}', 'pairs', CAST(count(*) AS DOUBLE) FROM pairs
