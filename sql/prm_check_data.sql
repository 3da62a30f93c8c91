-- PRM reading checks: each sampled answer to a perception drill (check_samples of
-- check_prompts), every step labelled 1.0 when the answer is the drill's response word for word
-- and 0.0 when it is not. Same columns as prm_train_data.
SELECT s.prompt_id, CAST(s.sample_idx AS INT) AS sample_idx, p.question, p.images, s.response,
       array_repeat(CASE WHEN btrim(s.response, concat(' ', chr(9), chr(10), chr(13))) = p.gold THEN 1.0 ELSE 0.0 END,
                    CAST(cardinality(split_steps(s.response)) AS BIGINT)) AS labels
FROM check_samples s JOIN check_prompts p ON s.prompt_id = p.prompt_id
WHERE cardinality(split_steps(s.response)) > 0
