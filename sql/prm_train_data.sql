-- PRM training rows: each labeled response (its steps rejoined) with the steps' ${label}
-- labels in step order, and its prompt's question and image.
WITH r AS (
  SELECT prompt_id, sample_idx,
         array_to_string(array_agg(step_text ORDER BY step_idx), chr(10)) AS response,
         array_agg(CAST(${label} AS DOUBLE) ORDER BY step_idx) AS labels
  FROM step_labels
  GROUP BY prompt_id, sample_idx
)
SELECT r.prompt_id, r.sample_idx, p.question, p.images, r.response, r.labels
FROM r JOIN prompts p ON r.prompt_id = p.prompt_id
