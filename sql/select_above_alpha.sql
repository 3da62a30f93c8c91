-- Ablation: every correct rollout whose PRM score is above ${alpha}.
SELECT prompt_id, sample_idx, response, score,
       ROW_NUMBER() OVER (PARTITION BY prompt_id ORDER BY score DESC, sample_idx ASC) AS rank
FROM scored
WHERE iteration = ${iteration} AND correct AND score > ${alpha}
