#!/usr/bin/env bash
# A/B of two specbench binaries on the forward pass: `bench forward` for every model below, the
# binaries alternating within each round, so that drift of the machine falls on both alike.
#
#   experiments/ab_forward.sh BEFORE AFTER [ROUNDS] > results/profile/DATE-name.csv
#
# BEFORE and AFTER are commands (a binary, or a script that sets SPECBENCH_KERNELS and runs one);
# MODELS overrides the embedded GGUF files (space-separated), CONTEXT the cached positions.
#
# Prints CSV: round, binary (a or b), model, backend, tokens (rows of the step), context, µs (the
# median of --repeats forwards). Summarise with experiments/ab_summary.py. Stop background builds
# first: two cores, and the kernels' spinning pool shares them with anything else that runs.
set -euo pipefail
cd "$(dirname "$0")/.."
a=$1 b=$2 rounds=${3:-3}
models=(${MODELS:-tests/fixtures/tiny-gguf/target-bf16.gguf tests/fixtures/tiny-gguf/target-q8_0.gguf
  tests/fixtures/tiny-gguf/target-q4_0.gguf tests/fixtures/tiny-gguf/target-q4_k_m.gguf})
[ -f models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf ] && models+=(models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf)
context=${CONTEXT:-190}
echo "round,binary,model,backend,tokens,context,us"
for round in $(seq 1 "$rounds"); do
  for model in "${models[@]}"; do
    # The small embedded target needs many repeats for a stable median; SmolLM2 fewer.
    repeats=$([[ $model == *smollm2* ]] && echo 40 || echo 400)
    for label in a b; do
      bin=$([ $label = a ] && echo "$a" || echo "$b")
      "$bin" bench forward --model "$model" --backend flex --context "$context" --max-tokens 9 \
        --repeats "$repeats" 2>/dev/null | tail -n +2 |
        awk -F, -v r="$round" -v l="$label" -v m="$(basename "$model")" -v c="$context" \
          '$6 == 1 || $6 == 5 || $6 == 9 { printf "%s,%s,%s,%s,%s,%s,%.1f\n", r, l, m, $3, $6, c, $7 * 1e6 }'
    done
  done
done
