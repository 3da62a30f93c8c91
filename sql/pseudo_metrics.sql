-- How good the pseudo-labels are (synthetic task: the oracle's answer is in `meta`): the share of
-- unlabeled prompts with a pseudo-label, the share of those that are right, and how many
-- selected training rollouts came from unlabeled prompts.
WITH u AS (
  SELECT l.prompt_id, l.answer, regexp_match(l.meta, '"answer":"([^"]*)"')[1] AS truth, l.answer_type, l.precision, l.choices
  FROM labeled_batch l WHERE l.iteration = ${iteration} AND l.pseudo
)
SELECT 'train' AS split, 'unlabeled_prompts' AS name, CAST(count(*) AS DOUBLE) AS value FROM u
UNION ALL SELECT 'train', 'pseudo_labeled_share', avg(CASE WHEN answer IS NOT NULL THEN 1.0 ELSE 0.0 END) FROM u
UNION ALL SELECT 'train', 'pseudo_label_accuracy', avg(CASE WHEN coalesce(answer_match(answer, truth, answer_type, precision, choices), false) THEN 1.0 ELSE 0.0 END) FROM u WHERE answer IS NOT NULL
UNION ALL SELECT 'train', 'selected_from_unlabeled', CAST(count(*) AS DOUBLE) FROM selected s JOIN u ON s.prompt_id = u.prompt_id WHERE s.iteration = ${iteration}
