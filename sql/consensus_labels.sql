-- Consensus filtering of Monte Carlo step labels (after Qwen's "Lessons of Developing Process
-- Reward Models", arXiv 2501.07301, and Athena-PRM, arXiv 2506.09532): two label tables of the
-- same responses (`${a}`, `${b}`: prm_label stages with other completers — another policy, other
-- completions, another temperature) keep a response only where both put its first error at
-- the same step (the first step before the last whose soft label is below ${threshold}; no such
-- step in both also agrees). A kept response's steps pool both counts: n = n_a + n_b,
-- successes = successes_a + successes_b, soft = successes / n, hard = successes > 0. The
-- result has step_labels' columns, so prm_train_data reads it like prm_label's table.
WITH j AS (
  SELECT a.prompt_id, a.sample_idx, a.step_idx, a.step_text, a.prefix,
         a.n + b.n AS n, a.successes + b.successes AS successes,
         max(a.step_idx) OVER (PARTITION BY a.prompt_id, a.sample_idx) AS last,
         a.soft AS soft_a, b.soft AS soft_b
  FROM ${a} a JOIN ${b} b ON a.prompt_id = b.prompt_id AND a.sample_idx = b.sample_idx AND a.step_idx = b.step_idx
),
first_error AS (
  SELECT prompt_id, sample_idx,
         coalesce(min(CASE WHEN step_idx < last AND soft_a < ${threshold} THEN step_idx END), -1) AS fa,
         coalesce(min(CASE WHEN step_idx < last AND soft_b < ${threshold} THEN step_idx END), -1) AS fb
  FROM j GROUP BY prompt_id, sample_idx
)
SELECT j.prompt_id, j.sample_idx, j.step_idx, j.step_text, j.prefix,
       CAST(j.n AS INT) AS n, CAST(j.successes AS INT) AS successes,
       CAST(j.successes AS DOUBLE) / j.n AS soft, j.successes > 0 AS hard
FROM j JOIN first_error f ON j.prompt_id = f.prompt_id AND j.sample_idx = f.sample_idx
WHERE f.fa = f.fb
