-- Unlabeled prompts: the pseudo-label is the answer with the largest summed PRM score over
-- the prompt's rollouts (PRM-weighted voting; ties: the smaller answer). `share` is its part
-- of the total weight, a confidence to filter on.
WITH answers AS (
  SELECT prompt_id, pred, sum(score) AS weight, count(*) AS votes
  FROM scored WHERE iteration = ${iteration} AND pred IS NOT NULL
  GROUP BY prompt_id, pred
),
ranked AS (
  SELECT prompt_id, pred, weight, votes,
         sum(weight) OVER (PARTITION BY prompt_id) AS total,
         ROW_NUMBER() OVER (PARTITION BY prompt_id ORDER BY weight DESC, pred ASC) AS rk
  FROM answers
)
SELECT prompt_id, pred AS pseudo_answer, votes, weight, CASE WHEN total > 0 THEN weight / total ELSE 0.0 END AS share
FROM ranked WHERE rk = 1
