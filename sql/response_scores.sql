-- A rollout's score (`params.score`): the PRM's minimum over its steps (`score_min`, M-STAR),
-- the mean or the last step's score (`score_mean`, `score_last`), or — no PRM — the policy's own
-- confidence, its mean token log-probability of the rollout (`logprob_mean`). Reads this
-- iteration's `verified` rollouts and `step_scores`; a rollout without steps scores 0.
WITH agg AS (
  SELECT prompt_id, sample_idx,
         min(score) AS score_min,
         avg(score) AS score_mean,
         last_value(score ORDER BY step_idx) AS score_last,
         count(*) AS num_steps
  FROM step_scores WHERE iteration = ${iteration}
  GROUP BY prompt_id, sample_idx
),
j AS (
  SELECT v.* EXCLUDE (iteration),
         coalesce(a.score_min, 0.0) AS score_min,
         coalesce(a.score_mean, 0.0) AS score_mean,
         coalesce(a.score_last, 0.0) AS score_last,
         coalesce(a.num_steps, 0) AS num_steps,
         v.logprob / greatest(v.num_tokens, 1) AS logprob_mean
  FROM verified v
  LEFT JOIN agg a ON v.prompt_id = a.prompt_id AND v.sample_idx = a.sample_idx
  WHERE v.iteration = ${iteration}
)
SELECT *, ${score} AS score FROM j
