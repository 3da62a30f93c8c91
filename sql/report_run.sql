-- `mstar report`, per run store: every monitoring metric by iteration — the warm-up policy as
-- iteration 0 (warmup_metrics), each iteration's eval (eval_metrics) and training side
-- (train_metrics), and the sampling temperature of each iteration's rollouts (split 'train',
-- name 'temperature'). A table the run lacks reads as empty.
SELECT iteration, split, name, value FROM warmup_metrics
UNION ALL SELECT iteration, split, name, value FROM eval_metrics
UNION ALL SELECT iteration, split, name, value FROM train_metrics
UNION ALL SELECT iteration, 'train' AS split, 'temperature' AS name, max(temperature) AS value FROM rollouts GROUP BY iteration
