-- `mstar report`, per run store: the per-prompt values behind the charted metrics, for their
-- bootstrap intervals over prompts. One row per (iteration, split, name, prompt_id): the metric
-- is sum(num) / sum(den) over the prompts (den = 1 where it is a share of prompts). The same
-- definitions as sql/eval_metrics.sql (greedy_accuracy, pass@k, reward_pass@2; the eval stages
-- `eval_warmup` as iteration 0 and `eval`) and sql/train_metrics.sql (selected_sound_share: the
-- selected rollouts of a prompt, and how many of them have sound steps). A table the run lacks
-- reads as empty.
WITH s AS (
  SELECT iteration, split, prompt_id, greedy, sample_idx, correct, score FROM eval_warmup
  UNION ALL SELECT iteration, split, prompt_id, greedy, sample_idx, correct, score FROM eval
),
ranked AS (
  SELECT iteration, split, prompt_id, correct, score,
         ROW_NUMBER() OVER (PARTITION BY iteration, split, prompt_id ORDER BY score DESC NULLS LAST, sample_idx ASC) AS rk
  FROM s WHERE NOT greedy
),
per_prompt AS (
  SELECT iteration, split, prompt_id,
         max(CASE WHEN correct THEN 1.0 ELSE 0.0 END) AS any_correct,
         max(CASE WHEN rk <= 2 AND correct THEN 1.0 ELSE 0.0 END) AS top2,
         count(score) AS scored
  FROM ranked GROUP BY iteration, split, prompt_id
),
scored_splits AS (SELECT iteration, split FROM per_prompt GROUP BY iteration, split HAVING min(scored) > 0),
sel AS (
  SELECT v.iteration, v.prompt_id, v.steps_ok
  FROM selected x JOIN scored v ON x.iteration = v.iteration AND x.prompt_id = v.prompt_id AND x.sample_idx = v.sample_idx
)
SELECT iteration, split, 'greedy_accuracy' AS name, prompt_id, sum(CASE WHEN correct THEN 1.0 ELSE 0.0 END) AS num, CAST(count(*) AS DOUBLE) AS den
FROM s WHERE greedy GROUP BY iteration, split, prompt_id
UNION ALL SELECT iteration, split, 'pass@k', prompt_id, any_correct, 1.0 FROM per_prompt
UNION ALL SELECT p.iteration, p.split, 'reward_pass@2', p.prompt_id, p.top2, 1.0 FROM per_prompt p JOIN scored_splits t ON p.iteration = t.iteration AND p.split = t.split
UNION ALL SELECT iteration, 'train', 'selected_sound_share', prompt_id, sum(CASE WHEN steps_ok THEN 1.0 ELSE 0.0 END), CAST(count(*) AS DOUBLE)
FROM sel GROUP BY iteration, prompt_id
