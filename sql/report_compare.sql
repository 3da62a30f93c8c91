-- `mstar report`, across runs (`runs`: one row per run store, metric, iteration): mean and
-- spread (sample standard deviation; 0 for a single seed) over the seeds of each pipeline.
SELECT pipeline, iteration, split, name,
       avg(value) AS mean,
       coalesce(stddev(value), 0.0) AS spread,
       count(*) AS seeds
FROM runs
GROUP BY pipeline, iteration, split, name
ORDER BY pipeline, split, name, iteration
