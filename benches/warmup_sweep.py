"""Warm-up perception sweep: writes two-stage warm-up pipelines (grid captions, then gold
chains of thought) with caption and task evaluation, for the perception table of docs/results.md:
    mstar data synth --out data/synth40 --seed 0 --train 40000
    python3 benches/warmup_sweep.py          # writes G40.yaml, ... here
    mstar run G40.yaml --store st-G40        # one run per file (26-60 s per 1,000 steps on an H200)
Edit `runs` to choose configurations; each pipeline's summary prints greedy accuracy, Pass@4,
cell_exact and digit_right (share of objects whose digit the greedy grid caption gets right)."""
import sys
def pipe(name, cap_epochs, cap_lr, cot_epochs, cot_lr, size="tiny", cfg=None, data="data/synth", cap="synth_grid_caption", ncap=4000):
    cap_steps = ncap // 16 * cap_epochs
    cot_steps = 38 * cot_epochs
    cfgline = f"\n    config: {cfg}" if cfg else ""
    return f"""name: {name}
seed: 0
iterations: 0
datasets:
  train: {{path: {data}/train.parquet}}
  test: {{path: {data}/test.parquet}}
stages:
  - {{id: train_prompts, op: import, dataset: train}}
  - {{id: test_prompts, op: import, dataset: test}}
  - id: cot
    op: sql
    scope: setup
    query: SELECT prompt_id, question, images, gold_cot AS response FROM train_prompts WHERE gold_cot IS NOT NULL
  - id: captions
    op: sql
    scope: setup
    query: SELECT prompt_id, 'Describe every shape in the image.' AS question, images, {cap}(scene) AS response FROM train_prompts
  - id: init
    op: model_init
    corpus: train_prompts
    size: {size}{cfgline}
  - id: caps
    op: train
    scope: setup
    data: captions
    base: init
    epochs: {cap_epochs}
    micro_batch: 16
    schedule: {{kind: warmup_cosine, lr: {cap_lr}, warmup_steps: 20, total_steps: {cap_steps}, min_lr: {cap_lr/10}}}
    adamw: {{weight_decay: 0.01}}
    clip: 1.0
  - id: warmup
    op: train
    scope: setup
    data: cot
    base: caps
    optimizer: reset
    epochs: {cot_epochs}
    micro_batch: 16
    schedule: {{kind: warmup_cosine, lr: {cot_lr}, warmup_steps: 10, total_steps: {cot_steps}, min_lr: {cot_lr/10}}}
    adamw: {{weight_decay: 0.01}}
    clip: 1.0
  - id: eval_test
    op: eval
    scope: setup
    prompts: test_prompts
    policy: [warmup]
    split: test
    k: 4
    limit: 300
  - {{id: test_metrics, op: sql, scope: setup, sql: eval_metrics, params: {{samples: eval_test}}}}
  - id: test_caps
    op: sql
    scope: setup
    query: SELECT prompt_id, 'Describe every shape in the image.' AS question, images, scene FROM test_prompts ORDER BY prompt_id LIMIT 200
  - id: cap_greedy
    op: generate
    scope: setup
    prompts: test_caps
    policy: [caps]
    samples: 1
    sampling: {{temperature: 0, max_new_tokens: 128}}
  - id: cap_eval
    op: sql
    scope: setup
    query: |
      WITH cells AS (
        SELECT split_steps(g.response)[i] AS said, split_steps({cap}(t.scene))[i] AS truth
        FROM cap_greedy g JOIN test_caps t USING (prompt_id) CROSS JOIN (SELECT unnest([1,2,3,4,5,6,7,8,9]) AS i))
      SELECT avg(CASE WHEN said = truth THEN 1.0 ELSE 0.0 END) AS cell_exact,
             avg(CASE WHEN truth NOT LIKE '%empty' THEN CASE WHEN right(said, 1) = right(truth, 1) THEN 1.0 ELSE 0.0 END END) AS digit_right
      FROM cells
summary:
  query: SELECT name, round(value, 3) AS value FROM test_metrics UNION ALL SELECT 'cell_exact', round(cell_exact, 3) FROM cap_eval UNION ALL SELECT 'digit_right', round(digit_right, 3) FROM cap_eval
"""
runs = {
  "C16": dict(cap_epochs=10, cap_lr=5e-4, cot_epochs=8, cot_lr=5e-4, cfg="{vision_config: {stem_channels: 16}}"),
  "C16h": dict(cap_epochs=10, cap_lr=1e-3, cot_epochs=8, cot_lr=5e-4, cfg="{vision_config: {stem_channels: 16}}"),
  "C32": dict(cap_epochs=10, cap_lr=5e-4, cot_epochs=8, cot_lr=5e-4, cfg="{vision_config: {stem_channels: 32}}"),
  "C32f": dict(cap_epochs=1, cap_lr=5e-4, cot_epochs=8, cot_lr=5e-4, ncap=40000, data="data/synth40", cfg="{vision_config: {stem_channels: 32}}"),
  "C16f": dict(cap_epochs=1, cap_lr=5e-4, cot_epochs=8, cot_lr=5e-4, ncap=40000, data="data/synth40", cfg="{vision_config: {stem_channels: 16}}"),
}
for k, v in runs.items():
    open(f"{k}.yaml", "w").write(pipe(k, **v))
