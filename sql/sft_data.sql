-- The SFT rows of this iteration: the selected rollouts with their prompts' question and image.
SELECT s.prompt_id, s.sample_idx, b.question, b.images, s.response
FROM selected s JOIN ${prompts} b ON s.prompt_id = b.prompt_id
WHERE s.iteration = ${iteration} AND b.iteration = ${iteration}
ORDER BY s.prompt_id, s.sample_idx
