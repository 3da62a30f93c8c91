-- This iteration's interval of the labeled prompts in `${pool}`: a deterministic 1/${interval}
-- slice in prompt_id order (M-STAR: each iteration covers 25% of the prompts; iteration
-- interval + 1 starts over with the first slice).
SELECT * EXCLUDE (iteration, rn)
FROM (SELECT *, ROW_NUMBER() OVER (ORDER BY prompt_id) - 1 AS rn FROM ${pool} WHERE answer IS NOT NULL)
WHERE rn % ${interval} = (${iteration} - 1) % ${interval}
