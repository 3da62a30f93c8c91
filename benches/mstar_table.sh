#!/usr/bin/env bash
# The README's M-STAR results table: the demo (M-STAR) and its baselines for each seed, then
# `mstar report` over all of them. The baselines start from a copy of the demo store's setup
# stages (warm-up, PRM: iteration 0), which have the same fingerprints in every variant.
#   bash benches/mstar_table.sh [SEEDS…]        (default: 0; each seed ≈ 22 + 4 × 7 min on 2 cores)
set -euo pipefail
cd "$(dirname "$0")/.."
MSTAR=${MSTAR:-target/debug/mstar}
OUT=$(realpath -m "${OUT:-benches/runs/mstar}")   # store paths are absolute (relative ones resolve against the pipeline file)
BASELINES=${BASELINES:-"rest_em iterative_rft continuous prm_top2"}
seeds=("${@:-0}")
stores=()
for seed in "${seeds[@]}"; do
  demo="$OUT/seed$seed/demo"
  "$MSTAR" run pipelines/demo.yaml --store "$demo" --set seed="$seed"
  stores+=("$demo")
  for b in $BASELINES; do
    dst="$OUT/seed$seed/$b"
    if [ ! -e "$dst/run.json" ]; then
      mkdir -p "$dst"
      cp -r "$demo"/. "$dst"/
      # keep only the setup stages (iteration 0): the variant recomputes every iteration
      rm -rf "$dst"/_manifests/iteration=[1-9]* "$dst"/tables/*/iteration=[1-9]* "$dst"/checkpoints/*/iteration=[1-9]*
    fi
    "$MSTAR" run "pipelines/ablations/$b.yaml" --store "$dst" --set seed="$seed" --allow-other-pipeline
    stores+=("$dst")
  done
done
"$MSTAR" report "${stores[@]}" --out "$OUT/report"
