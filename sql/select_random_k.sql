-- Ablation: ${k} correct rollouts per prompt chosen at random, ignoring the PRM. The order is
-- a hash of (run seed, iteration, prompt_id, sample_idx), so it is reproducible.
SELECT prompt_id, sample_idx, response, score, rank
FROM (
  SELECT prompt_id, sample_idx, response, score,
         ROW_NUMBER() OVER (
           PARTITION BY prompt_id
           ORDER BY md5(concat('${seed}', '/', '${iteration}', '/', prompt_id, '/', CAST(sample_idx AS VARCHAR))), sample_idx
         ) AS rank
  FROM scored
  WHERE iteration = ${iteration} AND correct
)
WHERE rank <= ${k}
