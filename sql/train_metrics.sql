-- This iteration's training-side figures (split 'train', long metrics format): the rollouts'
-- Pass@K and accuracy, how many prompts and rows were selected, and the selection's quality:
-- the share of selected rollouts whose reasoning the synthetic oracle finds fully sound
-- (`steps_ok`), next to the same share among all correct rollouts.
WITH r AS (SELECT * FROM scored WHERE iteration = ${iteration}),
per_prompt AS (
  SELECT prompt_id, max(CASE WHEN correct THEN 1.0 ELSE 0.0 END) AS any_correct,
         avg(CASE WHEN correct THEN 1.0 ELSE 0.0 END) AS accuracy
  FROM r GROUP BY prompt_id
),
sel AS (
  SELECT r.* FROM selected s JOIN r ON s.prompt_id = r.prompt_id AND s.sample_idx = r.sample_idx
  WHERE s.iteration = ${iteration}
)
SELECT 'train' AS split, 'pass@k' AS name, avg(any_correct) AS value FROM per_prompt
UNION ALL SELECT 'train', 'sample_accuracy', avg(accuracy) FROM per_prompt
UNION ALL SELECT 'train', 'prompts', CAST(count(*) AS DOUBLE) FROM per_prompt
UNION ALL SELECT 'train', 'selected_rows', CAST(count(*) AS DOUBLE) FROM sel
UNION ALL SELECT 'train', 'selected_prompts', CAST(count(DISTINCT prompt_id) AS DOUBLE) FROM sel
UNION ALL SELECT 'train', 'selected_sound_share', avg(CASE WHEN steps_ok THEN 1.0 ELSE 0.0 END) FROM sel
UNION ALL SELECT 'train', 'correct_sound_share', avg(CASE WHEN steps_ok THEN 1.0 ELSE 0.0 END) FROM r WHERE correct
