-- How well step labels (`${labels}`: prm_label's Monte Carlo labels, a consensus of two label
-- tables, …) tell sound reasoning from unsound, against the synthetic oracle, before any PRM is
-- trained on them. Over every labelled step before a response's last (the last step's label
-- is the response's own verdict):
--   step_auroc      P(the label of a step the oracle accepts > the label of one it rejects), ties ½
--   prefix_auroc    the same for prefixes: the step and every step before it accepted
--   steps           the steps judged (the oracle could align them)
-- Over the labelled responses that reach the gold answer:
--   pair_auroc      within each prompt, P(a sound response's lowest label > an unsound one's),
--                   ties ½ — what top-k selection needs of a PRM fitted to these labels
--   pairs           the (sound, unsound) pairs behind it
--   min_label_sound, min_label_unsound   the mean lowest label of sound / unsound ones
--   correct_responses, sound_share       how many, and the share whose every step the oracle accepts
--   responses       every labelled response
-- Reads `${labels}`, `label_samples` (response) and `label_prompts` (scene, meta, answer, …).
WITH judged AS (
  SELECT l.prompt_id, l.sample_idx, l.step_idx, l.soft,
         max(l.step_idx) OVER (PARTITION BY l.prompt_id, l.sample_idx) AS last,
         synth_step_ok(p.scene, p.meta, s.response, l.step_idx) AS ok,
         coalesce(answer_match(extract_answer(s.response), p.answer, p.answer_type, p.precision, p.choices), false) AS correct
  FROM ${labels} l
  JOIN label_samples s ON s.prompt_id = l.prompt_id AND s.sample_idx = l.sample_idx
  JOIN label_prompts p ON p.prompt_id = l.prompt_id
),
prefixed AS (
  SELECT *, min(CASE WHEN ok THEN 1 ELSE 0 END) OVER (PARTITION BY prompt_id, sample_idx ORDER BY step_idx ROWS UNBOUNDED PRECEDING) AS prefix_ok
  FROM judged
),
steps AS (SELECT soft, CASE WHEN ok THEN 1 ELSE 0 END AS y, prefix_ok AS yp FROM prefixed WHERE step_idx < last AND ok IS NOT NULL),
ranked AS (SELECT y, yp, RANK() OVER (ORDER BY soft) + (count(*) OVER (PARTITION BY soft) - 1) / 2.0 AS r FROM steps),
auc AS (
  SELECT (sum(CASE WHEN y = 1 THEN r ELSE 0 END) - sum(y) * (sum(y) + 1) / 2.0) / (sum(y) * (count(*) - sum(y))) AS step_auroc,
         (sum(CASE WHEN yp = 1 THEN r ELSE 0 END) - sum(yp) * (sum(yp) + 1) / 2.0) / (sum(yp) * (count(*) - sum(yp))) AS prefix_auroc,
         count(*) AS n
  FROM ranked
),
responses AS (
  SELECT prompt_id, sample_idx,
         coalesce(min(CASE WHEN step_idx < last THEN soft END), 1.0) AS min_label,
         bool_or(correct) AS correct,
         bool_and(coalesce(ok, false)) AS sound
  FROM judged GROUP BY prompt_id, sample_idx
),
correct AS (SELECT * FROM responses WHERE correct),
pairs AS (
  SELECT CASE WHEN a.min_label > b.min_label THEN 1.0 WHEN a.min_label = b.min_label THEN 0.5 ELSE 0.0 END AS win
  FROM correct a JOIN correct b ON a.prompt_id = b.prompt_id AND a.sound AND NOT b.sound
)
SELECT 'step_auroc' AS name, step_auroc AS value FROM auc
UNION ALL SELECT 'prefix_auroc', prefix_auroc FROM auc
UNION ALL SELECT 'steps', CAST(n AS DOUBLE) FROM auc
UNION ALL SELECT 'pair_auroc', avg(win) FROM pairs
UNION ALL SELECT 'pairs', CAST(count(*) AS DOUBLE) FROM pairs
UNION ALL SELECT 'min_label_sound', avg(CASE WHEN sound THEN min_label END) FROM correct
UNION ALL SELECT 'min_label_unsound', avg(CASE WHEN NOT sound THEN min_label END) FROM correct
UNION ALL SELECT 'correct_responses', CAST(count(*) AS DOUBLE) FROM correct
UNION ALL SELECT 'sound_share', avg(CASE WHEN sound THEN 1.0 ELSE 0.0 END) FROM correct
UNION ALL SELECT 'responses', CAST(count(*) AS DOUBLE) FROM responses
