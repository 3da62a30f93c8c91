-- Reward-model metrics of this iteration's `scored` rollouts (long metrics format):
--   pass@k          a correct rollout among all K
--   reward_pass@2   a correct rollout among the 2 ranked highest by the PRM (ties: lower sample_idx)
--   random_pass@2   a correct rollout among 2 drawn at random (a hash of seed, prompt, sample)
--   best_of_n       the PRM's top-ranked rollout is correct
--   majority_vote   the most frequent answer is right (ties: the smaller answer)
--   weighted_vote   the answer with the largest summed PRM score is right
WITH r AS (SELECT * FROM scored WHERE iteration = ${iteration}),
ranked AS (
  SELECT prompt_id, correct,
         ROW_NUMBER() OVER (PARTITION BY prompt_id ORDER BY score DESC, sample_idx ASC) AS rk,
         ROW_NUMBER() OVER (PARTITION BY prompt_id ORDER BY md5(concat('${seed}', '/', prompt_id, '/', CAST(sample_idx AS VARCHAR))), sample_idx) AS by_chance
  FROM r
),
per_prompt AS (
  SELECT prompt_id,
         max(CASE WHEN correct THEN 1.0 ELSE 0.0 END) AS any_correct,
         max(CASE WHEN rk <= 2 AND correct THEN 1.0 ELSE 0.0 END) AS top2,
         max(CASE WHEN rk = 1 AND correct THEN 1.0 ELSE 0.0 END) AS top1,
         max(CASE WHEN by_chance <= 2 AND correct THEN 1.0 ELSE 0.0 END) AS random2
  FROM ranked GROUP BY prompt_id
),
answers AS (
  SELECT prompt_id, pred, bool_or(correct) AS correct, count(*) AS votes, sum(score) AS weight
  FROM r WHERE pred IS NOT NULL GROUP BY prompt_id, pred
),
votes AS (
  SELECT prompt_id, correct,
         ROW_NUMBER() OVER (PARTITION BY prompt_id ORDER BY votes DESC, pred ASC) AS by_count,
         ROW_NUMBER() OVER (PARTITION BY prompt_id ORDER BY weight DESC, pred ASC) AS by_weight
  FROM answers
)
SELECT '${split}' AS split, 'pass@k' AS name, avg(any_correct) AS value FROM per_prompt
UNION ALL SELECT '${split}', 'reward_pass@2', avg(top2) FROM per_prompt
UNION ALL SELECT '${split}', 'random_pass@2', avg(random2) FROM per_prompt
UNION ALL SELECT '${split}', 'best_of_n', avg(top1) FROM per_prompt
UNION ALL SELECT '${split}', 'majority_vote', sum(CASE WHEN by_count = 1 AND correct THEN 1.0 ELSE 0.0 END) / (SELECT count(*) FROM per_prompt) FROM votes
UNION ALL SELECT '${split}', 'weighted_vote', sum(CASE WHEN by_weight = 1 AND correct THEN 1.0 ELSE 0.0 END) / (SELECT count(*) FROM per_prompt) FROM votes
