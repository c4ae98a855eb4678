#!/usr/bin/env bash
# The GPU measurements in one command, for the short GPU slots this project gets: builds nothing,
# takes a prebuilt `--features wgpu` binary, checks the adapter, and within ~9 minutes writes
# under OUT (default results/gpu/<run-id>/):
#   bandwidth.csv   the device's read bandwidth, measured here (`specbench bench bandwidth`)
#   forward.csv     one forward of 1..16 tokens after a 256-token cache (decode = 1 token,
#                   verify of k drafts = k + 1) for random:llama3.2-1b and random:llama3.1-8b in
#                   f16 (bf16 where the adapter has it), and transformers on CUDA beside it
#   sweep/          `specbench run` of random:llama3.1-8b + random:llama3.2-1b over k (runs.csv,
#                   summary, plots; random weights: the speed is real, the acceptance is not)
#   tiny/           the embedded tiny pair on wgpu (runs.csv, summary, plots)
#   peers.csv       peers that were skipped, and why; stages.csv: each stage's status and time
#   summary.md      the closing table (also printed)
# A stage that fails or runs out of time is recorded and the rest go on.
#
#   experiments/gpu_suite.sh [--smoke] [--bin PATH] [--out DIR] [--compile]
# --smoke: seconds-long shapes (what CI runs on lavapipe). --compile: torch.compile peer too.
# experiments/gpu_suite.md says how to run it on a remote GPU machine.
set -uo pipefail
cd "$(dirname "$0")/.."

SMOKE=0 BIN=target/release/specbench OUT="" COMPILE=""
while [ $# -gt 0 ]; do
  case $1 in
    --smoke) SMOKE=1 ;;
    --bin) BIN=$2; shift ;;
    --out) OUT=$2; shift ;;
    --compile) COMPILE=--compile ;;
    *) echo "usage: $0 [--smoke] [--bin PATH] [--out DIR] [--compile]" >&2; exit 2 ;;
  esac
  shift
done
if [ ! -x "$BIN" ]; then
  echo "error: no specbench binary at $BIN; build one first: cargo build --release --features wgpu" >&2
  exit 1
fi
OUT=${OUT:-results/gpu/$(date -u +%Y-%m-%dT%H-%M-%SZ)}
mkdir -p "$OUT" || exit 1
OUT=$(cd "$OUT" && pwd)
ROOT=$(pwd)
START=$(date +%s)
echo "stage,status,seconds" > "$OUT/stages.csv"

if [ $SMOKE = 1 ]; then
  BIG=random:custom,hidden=128,layers=2,heads=4,kv_heads=2,head_dim=32,intermediate=256,vocab=512
  SMALL=random:custom,hidden=64,layers=1,heads=2,kv_heads=1,head_dim=32,intermediate=128,vocab=512
  MODELS="$SMALL $BIG" MIB=16 CONTEXT=32 TOKENS=4 REPEATS=1 NEW=8 KS="[1, 2]" LIMIT=1 TINY_KS="[2]"
  TEMPS="[0.0]" LIMIT_SHORT=120 LIMIT_LONG=240 PEER_MODELS=none DTYPES="f32 f16 bf16" SWEEP_DTYPE=f32
else
  BIG=random:llama3.1-8b SMALL=random:llama3.2-1b
  MODELS="$SMALL $BIG" MIB=1024 CONTEXT=256 TOKENS=16 REPEATS=5 NEW=32 KS="[1, 2, 4]" LIMIT=1
  TINY_KS="[1, 2, 3, 4]" TEMPS="[0.0, 1.0]" LIMIT_SHORT=60 LIMIT_LONG=150
  PEER_MODELS=random:llama3.2-1b,random:llama3.1-8b DTYPES="f16 bf16" SWEEP_DTYPE=f16
fi

# stage NAME SECONDS COMMAND...: runs COMMAND under a time limit, logs it, records the outcome.
# A dtype the adapter does not have is recorded as skipped, not failed.
stage() {
  local name=$1 limit=$2 began=$(date +%s) status rc
  shift 2
  echo "[+$(( began - START ))s] $name ..."
  timeout "$limit" "$@" > "$OUT/$name.log" 2>&1
  rc=$?
  case $rc in
    0) status=ok ;;
    124) status="timed out after ${limit}s" ;;
    *) status="failed (exit $rc)" ;;
  esac
  if [ $rc != 0 ] && grep -q "is not supported by backend" "$OUT/$name.log"; then
    status="skipped (the adapter lacks this dtype)" rc=0
  fi
  echo "$name,$status,$(( $(date +%s) - began ))" >> "$OUT/stages.csv"
  echo "[+$(( $(date +%s) - START ))s] $name: $status"
  [ $rc = 0 ] || tail -n 5 "$OUT/$name.log" | sed 's/^/    /'
  return $rc
}

{ echo "binary: $BIN ($("$BIN" --version))"; uname -a; nvidia-smi -L 2>/dev/null || echo "nvidia-smi: none"; } \
  > "$OUT/machine.txt"
cat "$OUT/machine.txt"

if stage adapter 60 "$BIN" bench bandwidth --backend wgpu --mib 1 --repeats 1; then
  stage bandwidth "$LIMIT_SHORT" "$BIN" bench bandwidth --backend wgpu --mib "$MIB" --repeats 10 \
    --out "$OUT/bandwidth.csv"
  for model in $MODELS; do
    for dtype in $DTYPES; do
      label=forward-$( [ "$model" = "$BIG" ] && echo big || echo small )-$dtype
      stage "$label" "$LIMIT_LONG" "$BIN" bench forward --model "$model" --backend wgpu --dtype "$dtype" \
        --context "$CONTEXT" --max-tokens "$TOKENS" --repeats "$REPEATS" --out "$OUT/forward.csv"
    done
  done
  cat > "$OUT/sweep.toml" <<TOML
# Written by experiments/gpu_suite.sh: random weights, so speed only.
[experiment]
name = "gpu-sweep"
repeats = 1
warmup = 1
max_new_tokens = $NEW
[models.target]
path = "$BIG"
dtype = "$SWEEP_DTYPE"
[models.draft]
path = "$SMALL"
dtype = "$SWEEP_DTYPE"
[sweep]
k = $KS
backends = ["wgpu"]
temperatures = [0.0]
[prompts]
limit = $LIMIT
TOML
  stage sweep "$LIMIT_LONG" "$BIN" run "$OUT/sweep.toml" --out "$OUT/sweep"
  cat > "$OUT/tiny.toml" <<TOML
# Written by experiments/gpu_suite.sh: the embedded pair (configs/tiny.toml) on wgpu.
[experiment]
name = "gpu-tiny"
repeats = 1
warmup = 1
max_new_tokens = $NEW
[models.target]
path = "$ROOT/models/tiny/target"
[models.draft]
path = "$ROOT/models/tiny/draft"
[sweep]
k = $TINY_KS
backends = ["wgpu"]
temperatures = $TEMPS
[prompts]
file = "$ROOT/configs/tiny-prompts.jsonl"
limit = $LIMIT
TOML
  stage tiny "$LIMIT_LONG" "$BIN" run "$OUT/tiny.toml" --out "$OUT/tiny"
else
  echo "no usable wgpu adapter: the specbench stages are skipped (adapter.log says why)"
fi

if [ "$PEER_MODELS" = none ]; then
  # Smoke: the peer's skip path (no CUDA on a CI machine) still runs.
  stage peer-transformers 60 python3 experiments/peer_torch_gpu.py --out "$OUT" --models random:llama3.2-1b \
    --dtypes f16 --context "$CONTEXT" --max-tokens "$TOKENS" --repeats "$REPEATS"
else
  stage peer-transformers 240 python3 experiments/peer_torch_gpu.py --out "$OUT" --models "$PEER_MODELS" \
    --dtypes f16 --context "$CONTEXT" --max-tokens "$TOKENS" --repeats "$REPEATS" $COMPILE
fi
[ -f "$OUT/peers.csv" ] || echo "peer,status,why" > "$OUT/peers.csv"
if python3 -c "import llama_cpp, sys; sys.exit(0 if llama_cpp.llama_supports_gpu_offload() else 1)" 2>/dev/null; then
  why="a CUDA build of llama-cpp-python is installed, but the suite does not drive it yet"
else
  why="no CUDA build of llama-cpp-python on this machine (PyPI ships CPU wheels only)"
fi
echo "llama.cpp,skipped,$why" >> "$OUT/peers.csv"

echo
python3 experiments/gpu_summary.py "$OUT"
echo "results: $OUT ($(( $(date +%s) - START ))s)"
# The suite itself succeeds when it ran to the end; stages.csv holds each stage's outcome. Only a
# smoke run insists that the specbench stages passed, since CI has lavapipe.
if [ $SMOKE = 1 ] && grep -v '^stage' "$OUT/stages.csv" | grep -v '^peer' | grep -Eqv ',(ok|skipped[^,]*),'; then
  echo "error: a specbench stage failed in the smoke run" >&2
  exit 1
fi
