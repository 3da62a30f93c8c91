#!/bin/bash
# The cost of sharding, side by side in one run: the sharded stages of pipelines/prm.yaml (small
# settings: the tiny policy, 192 prompts × 4 rollouts) computed as 1, 2 and 4 shards (`mstar run
# --from 1/rollouts --shards N`) on a local folder and on S3 (s3s-fs on 127.0.0.1, when installed).
# Prints each sharded stage's wall time and the coordinator's commit latency (markers read and
# checked, conditional manifest put) as the run logs them.
# usage: benches/shard_overhead.sh [MSTAR_BINARY]     (run from the repository root)
set -uo pipefail
MSTAR=$(realpath "${1:-${CARGO_TARGET_DIR:-target}/debug/mstar}") || { echo "no mstar binary: build it (cargo build) or name it" >&2; exit 2; }
tmp=$(mktemp -d); trap 'kill $(jobs -p) 2>/dev/null; rm -rf "$tmp"' EXIT
cp pipelines/prm.yaml "$tmp/p.yaml"; cp -r sql "$tmp/sql"
sets=(
  "datasets.train.synth={split: train, count: 24, cot: 16, seed: 5}"
  "datasets.test.synth={split: test, count: 192, seed: 5}"
  "stages.init.vocab_size=320" "stages.warmup.epochs=2"
  "stages.label_prompts.query=SELECT * FROM train_prompts WHERE gold_cot IS NULL ORDER BY prompt_id LIMIT 8"
  "stages.label_samples.samples=2" "stages.label_samples.sampling={temperature: 1.0, max_new_tokens: 24}"
  "stages.step_labels.completions=3" "stages.step_labels.sampling={temperature: 1.0, max_new_tokens: 24}"
  "stages.prm.epochs=2" "stages.rollouts.samples=4" "stages.rollouts.sampling={temperature: 1.0, max_new_tokens: 40}"
)
args=(); for s in "${sets[@]}"; do args+=(--set "$s"); done
run() { "$MSTAR" run "$tmp/p.yaml" --store "$1" "${args[@]}" "${@:2}" 2>&1; }
report() { # $1 label, rest: the run's log on stdin
  grep -E "stage .* (rollouts|verified|step_scores) .*computed|shards done" | sed "s/^/$1 /"
}
run "$tmp/local" >/dev/null                              # everything once (the base)
echo "== local folder"
for n in 1 2 4; do run "$tmp/local" --from 1/rollouts --shards "$n" | report "local N=$n"; done
if command -v s3s-fs >/dev/null; then
  port=$((20000 + RANDOM % 20000)); mkdir -p "$tmp/s3/bucket"
  s3s-fs --host 127.0.0.1 --port "$port" --access-key mstar --secret-key mstarsecret "$tmp/s3" >/dev/null 2>&1 &
  for _ in $(seq 100); do (exec 3<>/dev/tcp/127.0.0.1/$port) 2>/dev/null && break; sleep 0.1; done
  export AWS_ACCESS_KEY_ID=mstar AWS_SECRET_ACCESS_KEY=mstarsecret AWS_REGION=us-east-1 AWS_ENDPOINT_URL=http://127.0.0.1:$port
  run s3://bucket/run >/dev/null
  echo "== s3 (s3s-fs on 127.0.0.1)"
  for n in 1 2 4; do run s3://bucket/run --from 1/rollouts --shards "$n" | report "s3 N=$n"; done
fi
