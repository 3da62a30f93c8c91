-- The closing summary of an M-STAR run: one row per iteration (0 = the warm-up policy) with
-- greedy accuracy and Pass@K on test, Reward-Pass@2 on val, greedy accuracy on test_hard, the
-- sampling temperature the iteration's rollouts used, and how many rollouts were selected
-- (with the share the oracle finds fully sound). Shares in percent (columns ending in `_%`),
-- as `mstar report` shows them; the metrics tables keep fractions.
WITH m AS (
  SELECT iteration, split, name, value FROM warmup_metrics
  UNION ALL SELECT iteration, split, name, value FROM eval_metrics
),
t AS (SELECT iteration, max(temperature) AS temperature FROM rollouts GROUP BY iteration),
tr AS (SELECT iteration, name AS tname, value AS tvalue FROM train_metrics)
SELECT m.iteration,
       round(100 * max(CASE WHEN split = 'test' AND name = 'greedy_accuracy' THEN value END), 1) AS "test_greedy_%",
       round(100 * max(CASE WHEN split = 'test' AND name = 'pass@k' THEN value END), 1) AS "test_pass_k_%",
       round(100 * max(CASE WHEN split = 'val' AND name = 'greedy_accuracy' THEN value END), 1) AS "val_greedy_%",
       round(100 * max(CASE WHEN split = 'val' AND name = 'reward_pass@2' THEN value END), 1) AS "val_reward_pass_2_%",
       round(100 * max(CASE WHEN split = 'test_hard' AND name = 'greedy_accuracy' THEN value END), 1) AS "test_hard_greedy_%",
       max(t.temperature) AS temperature,
       CAST(max(CASE WHEN tname = 'selected_rows' THEN tvalue END) AS BIGINT) AS selected,
       round(100 * max(CASE WHEN tname = 'selected_sound_share' THEN tvalue END), 1) AS "selected_sound_%"
FROM m
LEFT JOIN t ON t.iteration = m.iteration
LEFT JOIN tr ON tr.iteration = m.iteration
GROUP BY m.iteration
ORDER BY m.iteration
