-- A rollout's PRM score: the minimum over its steps (M-STAR), with the mean and the last
-- step's score for comparison. Reads this iteration's `verified` rollouts and `step_scores`;
-- a rollout without steps scores 0.
WITH agg AS (
  SELECT prompt_id, sample_idx,
         min(score) AS score_min,
         avg(score) AS score_mean,
         last_value(score ORDER BY step_idx) AS score_last,
         count(*) AS num_steps
  FROM step_scores WHERE iteration = ${iteration}
  GROUP BY prompt_id, sample_idx
)
SELECT v.* EXCLUDE (iteration),
       coalesce(a.${score}, 0.0) AS score,
       coalesce(a.score_min, 0.0) AS score_min,
       coalesce(a.score_mean, 0.0) AS score_mean,
       coalesce(a.score_last, 0.0) AS score_last,
       coalesce(a.num_steps, 0) AS num_steps
FROM verified v
LEFT JOIN agg a ON v.prompt_id = a.prompt_id AND v.sample_idx = a.sample_idx
WHERE v.iteration = ${iteration}
