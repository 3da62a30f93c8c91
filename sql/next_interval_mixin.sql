-- next_interval.sql plus unlabeled prompts: from iteration ${mixin_from} on (M-STAR's T_mixin),
-- the iteration's 1/${interval} slice of `unlabeled_prompts` (answer NULL) joins the labeled
-- slice of `${pool}`; their answers come from PRM-weighted voting (pseudo_answers.sql).
SELECT * EXCLUDE (iteration, rn)
FROM (SELECT *, ROW_NUMBER() OVER (ORDER BY prompt_id) - 1 AS rn FROM ${pool} WHERE answer IS NOT NULL)
WHERE rn % ${interval} = (${iteration} - 1) % ${interval}
UNION ALL
SELECT * EXCLUDE (iteration, rn)
FROM (SELECT *, ROW_NUMBER() OVER (ORDER BY prompt_id) - 1 AS rn FROM unlabeled_prompts)
WHERE ${iteration} >= ${mixin_from} AND rn % ${interval} = (${iteration} - 1) % ${interval}
