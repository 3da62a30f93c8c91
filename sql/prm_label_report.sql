-- How well the PRM's Monte Carlo step labels themselves tell sound reasoning from lucky answers
-- (synthetic task): for each labelled response that reaches the gold answer, its lowest soft
-- label over the steps before the last, and whether the oracle accepts every step.
--   pair_auroc_labels  within each prompt's correct responses, P(a sound one's lowest label is
--                      above an unsound one's), ties ½ — the most a PRM fitted to these labels
--                      can be expected to rank
--   pairs              the (sound, unsound) pairs behind it
--   min_label_sound / min_label_unsound   mean lowest label of sound / unsound correct responses
--   correct_responses, sound_share         how many, and the share the oracle accepts
-- Reads `step_labels`, `label_samples` and `prompts` (the stage names of pipelines/mstar.yaml):
--   mstar sql --store S --file sql/prm_label_report.sql
WITH last AS (
  SELECT prompt_id, sample_idx, max(step_idx) AS last FROM step_labels GROUP BY prompt_id, sample_idx
),
r AS (
  SELECT l.prompt_id, l.sample_idx,
         coalesce(min(CASE WHEN l.step_idx < x.last THEN l.soft END), 1.0) AS min_label,
         max(CASE WHEN l.step_idx = x.last THEN l.soft END) AS correct,
         bool_and(coalesce(synth_step_ok(p.scene, p.meta, s.response, l.step_idx), false)) AS sound
  FROM step_labels l
  JOIN last x ON x.prompt_id = l.prompt_id AND x.sample_idx = l.sample_idx
  JOIN label_samples s ON s.prompt_id = l.prompt_id AND s.sample_idx = l.sample_idx
  JOIN prompts p ON p.prompt_id = l.prompt_id
  GROUP BY l.prompt_id, l.sample_idx
),
c AS (SELECT * FROM r WHERE correct = 1.0),
pairs AS (
  SELECT CASE WHEN a.min_label > b.min_label THEN 1.0 WHEN a.min_label = b.min_label THEN 0.5 ELSE 0.0 END AS win
  FROM c a JOIN c b ON a.prompt_id = b.prompt_id AND a.sound AND NOT b.sound
)
SELECT 'pair_auroc_labels' AS name, (SELECT avg(win) FROM pairs) AS value
UNION ALL SELECT 'pairs', CAST((SELECT count(*) FROM pairs) AS DOUBLE)
UNION ALL SELECT 'min_label_sound', avg(min_label) FROM c WHERE sound
UNION ALL SELECT 'min_label_unsound', avg(min_label) FROM c WHERE NOT sound
UNION ALL SELECT 'correct_responses', CAST(count(*) AS DOUBLE) FROM c
UNION ALL SELECT 'sound_share', avg(CASE WHEN sound THEN 1.0 ELSE 0.0 END) FROM c
