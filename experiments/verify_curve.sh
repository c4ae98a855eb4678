#!/usr/bin/env bash
# The verify curve of specbench and llama.cpp on the same GGUF files, in one sitting, with the
# same threads: what one forward of n rows after CONTEXT cached positions costs against one row.
#
#   experiments/verify_curve.sh OUT_DIR [MODEL.gguf ...]
#
# Per file, specbench (`bench forward --rows $ROWS`, the lengths taking turns within each
# repeat, the median kept) and then llama.cpp (`llama-bench -p <each n> -n 0 -d $CONTEXT`: a
# batch of n tokens on a cache of CONTEXT, the mean of $REPEATS) append to
# OUT_DIR/verify_curve.csv; `specbench report OUT_DIR` then writes verify_curve.md and
# plots/verify_curve. Defaults: the SmolLM2 files scripts/fetch_smollm2.sh and the peer scripts
# leave in models/derived, ROWS=1-17,33,65 (k + 1 for k up to 16, 32, 64), CONTEXT=190,
# REPEATS=10, THREADS=2, LLAMACPP_BIN=.llamacpp/bin (scripts/build_llamacpp.sh). Stop
# everything else first: both engines spin their thread pools.
set -euo pipefail
cd "$(dirname "$0")/.."
out=${1:?usage: experiments/verify_curve.sh OUT_DIR [MODEL.gguf ...]}
shift
models=("$@")
[ ${#models[@]} -gt 0 ] || models=(models/derived/smollm2-f32.gguf models/derived/smollm2-f16.gguf
  models/derived/smollm2-q8_0.gguf models/derived/smollm2-q4_0.gguf models/derived/smollm2-q4_k_m.gguf)
rows=${ROWS:-1-17,33,65} context=${CONTEXT:-190} repeats=${REPEATS:-10} threads=${THREADS:-2}
bin=${LLAMACPP_BIN:-.llamacpp/bin}
cargo build --release --quiet
specbench=target/release/specbench
[ -x "$bin/llama-bench" ] || { echo "error: no $bin/llama-bench (scripts/build_llamacpp.sh)" >&2; exit 1; }
mkdir -p "$out"
csv=$out/verify_curve.csv
# The lengths as llama-bench takes them: 1-17,33,65 → 1,2,…,17,33,65.
lengths=$(python3 -c "
import sys
out = []
for part in sys.argv[1].split(','):
    low, _, high = part.partition('-')
    out += range(int(low), int(high or low) + 1)
print(','.join(map(str, sorted(set(out) | {1}))))" "$rows")
for model in "${models[@]}"; do
  [ -f "$model" ] || { echo "error: no model file $model" >&2; exit 1; }
  echo "specbench: $model" >&2
  RAYON_NUM_THREADS=$threads "$specbench" bench forward --model "$model" --backend flex --context "$context" \
    --rows "$rows" --repeats "$repeats" --out "$csv"
  echo "llama.cpp: $model" >&2
  "$bin/llama-bench" -m "$model" -t "$threads" -p "$lengths" -n 0 -d "$context" -r "$repeats" -o csv 2>/dev/null |
    python3 -c "
import csv, sys
rows = [r for r in csv.DictReader(sys.stdin) if r['n_prompt'] != '0']
one = next(float(r['avg_ns']) for r in rows if r['n_prompt'] == '1')
out = csv.writer(open(sys.argv[1], 'a', newline=''))
for r in rows:
    s = float(r['avg_ns']) / 1e9
    out.writerow(['llama.cpp', sys.argv[2], 'cpu', r['model_type'].split()[-1], r['n_depth'], r['n_prompt'], s, s / (one / 1e9), r['model_size']])
" "$csv" "$model"
done
"$specbench" report "$out"
