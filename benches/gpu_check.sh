#!/usr/bin/env bash
# One GPU check of the real-checkpoint path, writing every number to one JSON-lines file:
#   1. the device-independent model tests on the device (`cargo test --features cuda cuda`);
#   2. Qwen-VL generation and one LoRA SFT step, mstar vs transformers side by side
#      (benches/qwen_bench.py: tok/s and peak memory at batch 16 and 64);
#   3. pipelines/qwen.yaml end to end (PRM, temperature search, top-2 selection, LoRA SFT), timed.
#
#   benches/gpu_check.sh build                 # where Rust is: the cuda binaries into target-gpu/
#   benches/gpu_check.sh run --device cuda     # on the GPU machine (≈ 10 min on an H200)
#   benches/gpu_check.sh run --device cpu      # the same checks, CPU-sized (tiny model, batch 2/4)
#
# `build` needs the CUDA toolchain of .ci/cuda-toolchain.sh (no GPU needed) and leaves
# target-gpu/{mstar,model_tests} (about 80 MB): copy that folder with the checkout to a machine
# with an NVIDIA driver, where `run` needs Python with torch, transformers 5.x and peft but no
# Rust. With `--device cpu` `run` builds the CPU binaries itself when target-gpu/ is absent.
# Results: $OUT/gpu_check.jsonl (OUT defaults to ./gpu-check-out), one JSON object per line.
set -euo pipefail
REPO=$(cd "$(dirname "$0")/.." && pwd)
cd "$REPO"
cmd=${1:-}
shift || true
DEVICE=cuda
while [ $# -gt 0 ]; do
  case "$1" in
    --device) DEVICE=$2; shift 2 ;;
    *) echo "unknown argument $1" >&2; exit 2 ;;
  esac
done
BIN=$REPO/target-gpu

# build FEATURES PROFILE: the binary and the library's unit tests into target-gpu/
build() {
  local features=$1 profile=$2 dir
  export CARGO_TARGET_DIR=${CARGO_TARGET_DIR:-$HOME/.cache/mstar-target}
  cargo build --profile "$profile" $features --bin mstar
  # the library's unit tests as one binary (cargo prints its path)
  local t
  t=$(cargo test --profile "$profile" $features --lib --no-run --message-format=json 2>/dev/null |
    python3 -c 'import json,sys
for l in sys.stdin:
    m = json.loads(l)
    if m.get("reason") == "compiler-artifact" and m.get("executable") and m["target"]["kind"] == ["lib"]:
        print(m["executable"])' | tail -1)
  mkdir -p "$BIN"
  if [ "$profile" = dev ]; then dir=debug; else dir=$profile; fi
  cp "$CARGO_TARGET_DIR/$dir/mstar" "$BIN/mstar"
  cp "$t" "$BIN/model_tests"
  # stripped and packed, so both fit what a remote runner carries (≈ 25 MB for a release cuda build)
  strip "$BIN/mstar" "$BIN/model_tests" 2>/dev/null || true
  tar czf "$BIN/bins.tar.gz" -C "$BIN" mstar model_tests
  ls -la "$BIN"
}

case "$cmd" in
  build)
    [ -n "${CUDA_HOME:-}" ] || { echo "set CUDA_HOME etc. as .ci/cuda-toolchain.sh prints" >&2; exit 2; }
    build "--features cuda" release
    exit 0 ;;
  run) ;;
  *) sed -n '2,17p' "$0"; exit 2 ;;
esac

# a packed build carried here alone (target-gpu/bins.tar.gz) is unpacked first
if [ ! -x "$BIN/mstar" ] && [ -f "$BIN/bins.tar.gz" ]; then tar xzf "$BIN/bins.tar.gz" -C "$BIN"; fi
OUT=${OUT:-$REPO/gpu-check-out}
mkdir -p "$OUT"
RES=$OUT/gpu_check.jsonl
: >"$RES"
PY=${PYTHON:-python3}
if [ "$DEVICE" = cpu ]; then
  # the dev profile (dependencies optimized) is enough for the tiny CPU-sized run
  [ -x "$BIN/mstar" ] || build "" "${MSTAR_PROFILE:-dev}"
  SIZE=tiny; BATCHES="2 4"; NEW=16; TRAIN_LEN=128
else
  SIZE=2b; BATCHES="16 64"; NEW=128; TRAIN_LEN=512
  [ -x "$BIN/mstar" ] || { echo "no $BIN/mstar: run '$0 build' where Rust and the CUDA toolchain are" >&2; exit 2; }
  # the CUDA 13 libraries of a pip-installed torch/nvidia stack, when the system has none
  cu=$("$PY" -c 'import nvidia, os; print(os.path.join(list(nvidia.__path__)[0], "cu13", "lib"))' 2>/dev/null || true)
  [ -n "$cu" ] && [ -d "$cu" ] && export LD_LIBRARY_PATH="$cu:${LD_LIBRARY_PATH:-}"
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader | sed 's/^/gpu: /' | tee -a "$OUT/gpu.txt"
fi
note() { echo "$1" >>"$RES"; echo "$1"; }
t0=$(date +%s)

# 1. model tests on the device (on the CPU: the same tests, CPU)
start=$(date +%s)
if [ "$DEVICE" = cuda ]; then filter=cuda; else filter=qwen; fi
if out=$(MSTAR_DEVICE=$DEVICE "$BIN/model_tests" "$filter" 2>&1); then status=pass; else status=fail; fi
summary=$(echo "$out" | grep -E '^test result' | tail -1)
note "{\"check\": \"model_tests\", \"device\": \"$DEVICE\", \"filter\": \"$filter\", \"status\": \"$status\", \"result\": \"$summary\", \"seconds\": $(( $(date +%s) - start ))}"
[ "$status" = pass ] || echo "$out" | tail -30

# 2. mstar vs transformers: generation at each batch, one LoRA SFT step (the first run's folder reused)
folder=$OUT/qwen-$SIZE
for b in $BATCHES; do
  start=$(date +%s)
  line=$("$PY" benches/qwen_bench.py --mstar "$BIN/mstar" --size "$SIZE" --device "$DEVICE" --batch "$b" \
    --new-tokens "$NEW" --train-len "$TRAIN_LEN" --folder "$folder" --json 2>"$OUT/qwen_bench_$b.log") || { tail -20 "$OUT/qwen_bench_$b.log"; line='{"error": "qwen_bench failed"}'; }
  note "{\"check\": \"qwen_bench\", \"size\": \"$SIZE\", \"device\": \"$DEVICE\", \"batch\": $b, \"seconds\": $(( $(date +%s) - start )), \"result\": $line}"
done

# 3. pipelines/qwen.yaml end to end on the tiny fixture folder
start=$(date +%s)
store=$OUT/qwen-store
rm -rf "$store"
if MSTAR_DEVICE=$DEVICE "$BIN/mstar" run pipelines/qwen.yaml --store "$store" >"$OUT/qwen_yaml.log" 2>&1; then status=pass; else status=fail; tail -20 "$OUT/qwen_yaml.log"; fi
metrics=$("$BIN/mstar" sql --store "$store" --format json "SELECT iteration, name, round(value, 4) AS value FROM eval_metrics ORDER BY iteration, name" 2>/dev/null | tr -d '\n' || echo null)
note "{\"check\": \"qwen_yaml\", \"device\": \"$DEVICE\", \"status\": \"$status\", \"seconds\": $(( $(date +%s) - start )), \"eval_metrics\": ${metrics:-null}}"
note "{\"check\": \"total\", \"device\": \"$DEVICE\", \"seconds\": $(( $(date +%s) - t0 ))}"
echo "results: $RES"
