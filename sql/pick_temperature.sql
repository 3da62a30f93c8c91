-- M-STAR's automatic temperature: per sampling temperature of `${samples}` (an eval stage over
-- the validation prompts at a grid of temperatures, with PRM scores), Reward-Pass@2 (a correct
-- sample among the 2 the PRM ranks highest), Pass@K and mean sample accuracy; the chosen row has
-- the highest Reward-Pass@2 (ties: higher Pass@K, then higher sample accuracy, then lower T).
WITH s AS (SELECT * FROM ${samples} WHERE iteration = ${iteration} AND NOT greedy),
ranked AS (
  SELECT temperature, prompt_id, correct,
         ROW_NUMBER() OVER (PARTITION BY temperature, prompt_id ORDER BY score DESC NULLS LAST, sample_idx ASC) AS rk
  FROM s
),
per_prompt AS (
  SELECT temperature, prompt_id,
         max(CASE WHEN rk <= 2 AND correct THEN 1.0 ELSE 0.0 END) AS top2,
         max(CASE WHEN correct THEN 1.0 ELSE 0.0 END) AS any_correct,
         avg(CASE WHEN correct THEN 1.0 ELSE 0.0 END) AS accuracy,
         count(*) AS k
  FROM ranked GROUP BY temperature, prompt_id
),
per_t AS (
  SELECT temperature, avg(top2) AS reward_pass_at_2, avg(any_correct) AS pass_at_k,
         avg(accuracy) AS sample_accuracy, count(*) AS prompts, max(k) AS k
  FROM per_prompt GROUP BY temperature
)
SELECT temperature, reward_pass_at_2, pass_at_k, sample_accuracy, prompts, k,
       ROW_NUMBER() OVER (ORDER BY reward_pass_at_2 DESC, pass_at_k DESC, sample_accuracy DESC, temperature ASC) = 1 AS chosen
FROM per_t
