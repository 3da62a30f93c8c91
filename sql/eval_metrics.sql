-- Monitoring metrics of an eval stage's decodes (`${samples}`, this iteration), per split, in
-- the long metrics format:
--   greedy_accuracy, greedy_steps_ok (synthetic task: the greedy answer's steps all pass the
--   oracle), prompts, k, pass@k (a correct sample among K), sample_accuracy,
--   pass@k_minus_greedy, reward_pass@2 (a correct sample among the 2 the PRM ranks highest,
--   ties to the lower sample_idx; only when the samples carry PRM scores),
--   sound_prm_top1 / sound_random1 (synthetic task, PRM scores: over the prompts with a correct
--   sample, the share whose highest-scored correct sample has all its steps sound, and the
--   share a correct sample picked at random would have: how well the PRM ranks reasoning)
WITH s AS (SELECT * FROM ${samples} WHERE iteration = ${iteration}),
g AS (
  SELECT split,
         avg(CASE WHEN correct THEN 1.0 ELSE 0.0 END) AS acc,
         avg(CASE WHEN steps_ok THEN 1.0 ELSE 0.0 END) AS sound,
         count(steps_ok) AS judged,
         count(*) AS prompts
  FROM s WHERE greedy GROUP BY split
),
ranked AS (
  SELECT split, prompt_id, correct, score,
         ROW_NUMBER() OVER (PARTITION BY split, prompt_id ORDER BY score DESC NULLS LAST, sample_idx ASC) AS rk
  FROM s WHERE NOT greedy
),
per_prompt AS (
  SELECT split, prompt_id,
         max(CASE WHEN correct THEN 1.0 ELSE 0.0 END) AS any_correct,
         avg(CASE WHEN correct THEN 1.0 ELSE 0.0 END) AS accuracy,
         max(CASE WHEN rk <= 2 AND correct THEN 1.0 ELSE 0.0 END) AS top2,
         count(*) AS k,
         count(score) AS scored
  FROM ranked GROUP BY split, prompt_id
),
correct_ranked AS (
  SELECT split, prompt_id, CASE WHEN steps_ok THEN 1.0 ELSE 0.0 END AS ok,
         ROW_NUMBER() OVER (PARTITION BY split, prompt_id ORDER BY score DESC, sample_idx ASC) AS rk
  FROM s WHERE NOT greedy AND correct AND steps_ok IS NOT NULL AND score IS NOT NULL
),
rerank AS (
  SELECT split, avg(top1) AS top1, avg(mean_ok) AS random1
  FROM (SELECT split, prompt_id, max(CASE WHEN rk = 1 THEN ok ELSE 0.0 END) AS top1, avg(ok) AS mean_ok
        FROM correct_ranked GROUP BY split, prompt_id)
  GROUP BY split
),
sampled AS (
  SELECT split, avg(any_correct) AS pass_k, avg(accuracy) AS accuracy, avg(top2) AS top2,
         max(k) AS k, min(scored) AS scored
  FROM per_prompt GROUP BY split
)
SELECT split, 'greedy_accuracy' AS name, acc AS value FROM g
UNION ALL SELECT split, 'prompts', CAST(prompts AS DOUBLE) FROM g
UNION ALL SELECT split, 'greedy_steps_ok', sound FROM g WHERE judged > 0
UNION ALL SELECT split, 'k', CAST(k AS DOUBLE) FROM sampled
UNION ALL SELECT split, 'pass@k', pass_k FROM sampled
UNION ALL SELECT split, 'sample_accuracy', accuracy FROM sampled
UNION ALL SELECT split, 'reward_pass@2', top2 FROM sampled WHERE scored > 0
UNION ALL SELECT sampled.split, 'pass@k_minus_greedy', pass_k - acc FROM sampled JOIN g ON sampled.split = g.split
UNION ALL SELECT split, 'sound_prm_top1', top1 FROM rerank
UNION ALL SELECT split, 'sound_random1', random1 FROM rerank
