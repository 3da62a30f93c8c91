-- Step labels from the synthetic task's oracle instead of Monte Carlo completions (an upper
-- bound on what better labels can give a PRM; synthetic task only): the steps of `${labels}`
-- (prm_label's table: the same responses and steps) relabelled 1 where the oracle accepts the
-- step and every step before it — and, for the last step, the answer is right — else 0. A step
-- the oracle cannot align counts as rejected. n = 1; step_labels' columns.
WITH j AS (
  SELECT l.prompt_id, l.sample_idx, l.step_idx, l.step_text, l.prefix, l.successes, l.n,
         max(l.step_idx) OVER (PARTITION BY l.prompt_id, l.sample_idx) AS last,
         min(CASE WHEN synth_step_ok(p.scene, p.meta, s.response, l.step_idx) THEN 1 ELSE 0 END)
           OVER (PARTITION BY l.prompt_id, l.sample_idx ORDER BY l.step_idx ROWS UNBOUNDED PRECEDING) AS prefix_ok
  FROM ${labels} l
  JOIN label_samples s ON s.prompt_id = l.prompt_id AND s.sample_idx = l.sample_idx
  JOIN label_prompts p ON p.prompt_id = l.prompt_id
),
y AS (SELECT *, CASE WHEN prefix_ok = 1 AND (step_idx < last OR successes = n) THEN 1 ELSE 0 END AS ok FROM j)
SELECT prompt_id, sample_idx, step_idx, step_text, prefix, CAST(1 AS INT) AS n, CAST(ok AS INT) AS successes,
       CAST(ok AS DOUBLE) AS soft, ok = 1 AS hard
FROM y
