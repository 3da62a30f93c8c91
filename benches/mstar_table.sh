#!/usr/bin/env bash
# The M-STAR results table (README.md, docs/results.md): the demo (M-STAR) and its baselines for each seed, then
# `mstar report` over all of them. The baselines start from a copy of the demo store's setup
# stages (warm-up, PRM: iteration 0), which have the same fingerprints in every variant.
#   bash benches/mstar_table.sh [SEEDS…]        (default: 0; each seed ≈ 18 + 7 × 4 min on 2 cores)
#   PARALLEL=1 bash benches/mstar_table.sh 0 1 2  (seeds side by side, a seed's baselines side by
#                                                 side: for a GPU or many cores; logs in $OUT/logs)
set -euo pipefail
cd "$(dirname "$0")/.."
MSTAR=${MSTAR:-target/debug/mstar}
OUT=$(realpath -m "${OUT:-benches/runs/mstar}")   # store paths are absolute (relative ones resolve against the pipeline file)
BASELINES=${BASELINES:-"rest_em iterative_rft continuous random2 prm_top2 fixed_t confidence2"}
PARALLEL=${PARALLEL:-}
seeds=("${@:-0}")
mkdir -p "$OUT/logs"

# run NAME CMD…: in the foreground, or in the background with its output in $OUT/logs/NAME.log
run() {
  local name=$1; shift
  if [ -n "$PARALLEL" ]; then "$@" >"$OUT/logs/$name.log" 2>&1; else "$@"; fi
}

baseline() {
  local seed=$1 b=$2 demo="$OUT/seed$1/demo" dst="$OUT/seed$1/$2"
  if [ ! -e "$dst/run.json" ]; then
    mkdir -p "$dst"
    cp -r "$demo"/. "$dst"/
    # keep only the setup stages (iteration 0): the variant recomputes every iteration
    rm -rf "$dst"/_manifests/iteration=[1-9]* "$dst"/tables/*/iteration=[1-9]* "$dst"/checkpoints/*/iteration=[1-9]*
  fi
  run "seed$seed-$b" "$MSTAR" run "pipelines/ablations/$b.yaml" --store "$dst" --set seed="$seed" --allow-other-pipeline
}

one_seed() {
  local seed=$1
  run "seed$seed-demo" "$MSTAR" run pipelines/demo.yaml --store "$OUT/seed$seed/demo" --set seed="$seed"
  for b in $BASELINES; do
    if [ -n "$PARALLEL" ]; then baseline "$seed" "$b" & else baseline "$seed" "$b"; fi
  done
  wait
}

stores=()
for seed in "${seeds[@]}"; do
  if [ -n "$PARALLEL" ]; then one_seed "$seed" & else one_seed "$seed"; fi
  stores+=("$OUT/seed$seed/demo")
  for b in $BASELINES; do stores+=("$OUT/seed$seed/$b"); done
done
wait
"$MSTAR" report "${stores[@]}" --out "$OUT/report"
