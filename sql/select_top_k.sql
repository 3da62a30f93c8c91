-- M-STAR's selection: among the correct rollouts of each prompt, the top-${k} by PRM score
-- (`scored`, from response_scores.sql). Ties go to the lower sample_idx, so the selection is
-- deterministic.
SELECT prompt_id, sample_idx, response, score, rank
FROM (
  SELECT prompt_id, sample_idx, response, score,
         ROW_NUMBER() OVER (PARTITION BY prompt_id ORDER BY score DESC, sample_idx ASC) AS rank
  FROM scored
  WHERE iteration = ${iteration} AND correct
)
WHERE rank <= ${k}
