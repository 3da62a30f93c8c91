-- This iteration's interval of the labeled training prompts: a deterministic
-- 1/${interval} slice (M-STAR: each iteration covers 25% of the prompts).
SELECT prompt_id, question, answer, answer_type
FROM prompts
WHERE split = 'train'
  AND answer IS NOT NULL
  AND prompt_id % ${interval} = (${iteration} - 1) % ${interval}
