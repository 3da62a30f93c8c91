-- This iteration's prompts with the pseudo-labels filled in: unlabeled prompts take the
-- weighted-vote answer of `pseudo` (and stay unanswerable without one); `pseudo` marks them.
SELECT b.* EXCLUDE (iteration, answer), coalesce(b.answer, p.pseudo_answer) AS answer, b.answer IS NULL AS pseudo
FROM ${prompts} b
LEFT JOIN pseudo p ON b.prompt_id = p.prompt_id AND p.iteration = ${iteration}
WHERE b.iteration = ${iteration}
