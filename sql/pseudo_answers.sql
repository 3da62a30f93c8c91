-- Pseudo-labels of this iteration's unlabeled prompts (answer NULL in `${prompts}`), by
-- PRM-weighted voting over their rollouts: each rollout's extracted answer weighs its PRM score
-- (min over steps from `step_scores`; 0 without steps); the heaviest answer wins (ties: the
-- smaller). `share` is its part of the total weight.
WITH s AS (
  SELECT prompt_id, sample_idx, min(score) AS score
  FROM step_scores WHERE iteration = ${iteration} GROUP BY prompt_id, sample_idx
),
r AS (
  SELECT r.prompt_id, extract_answer(r.response) AS pred, coalesce(s.score, 0.0) AS score
  FROM rollouts r
  JOIN ${prompts} b ON r.prompt_id = b.prompt_id AND b.iteration = ${iteration}
  LEFT JOIN s ON r.prompt_id = s.prompt_id AND r.sample_idx = s.sample_idx
  WHERE r.iteration = ${iteration} AND b.answer IS NULL
),
answers AS (
  SELECT prompt_id, pred, sum(score) AS weight, count(*) AS votes
  FROM r WHERE pred IS NOT NULL GROUP BY prompt_id, pred
),
ranked AS (
  SELECT prompt_id, pred, weight, votes,
         sum(weight) OVER (PARTITION BY prompt_id) AS total,
         ROW_NUMBER() OVER (PARTITION BY prompt_id ORDER BY weight DESC, pred ASC) AS rk
  FROM answers
)
SELECT prompt_id, pred AS pseudo_answer, votes, weight, CASE WHEN total > 0 THEN weight / total ELSE 0.0 END AS share
FROM ranked WHERE rk = 1
