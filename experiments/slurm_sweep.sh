#!/usr/bin/env bash
# A sweep as a Slurm job array: array task i runs shard i of N (`specbench run CONFIG --shard
# i/N`) into OUT/shard<i>, and once every task has ended `specbench merge` joins them into
# OUT/all. This is the README's recipe; tests/slurm.rs runs it on a one-node cluster.
#
#   experiments/slurm_sweep.sh CONFIG N [OUT]
#
# OUT defaults to results/slurm/<config name>-<UTC time>. sbatch takes its options (partition,
# time limit, CPUs per task) from the environment as it always does: SBATCH_PARTITION,
# SBATCH_TIMELIMIT, ...; SPECBENCH names the binary (default target/release/specbench). Exits
# with merge's status: 0 only when the merged folder holds every row the config expects; a
# failed task leaves its folder for `specbench run CONFIG --resume OUT/shard<i>`.
set -euo pipefail
if [ $# -lt 2 ] || [ $# -gt 3 ]; then
  echo "usage: $0 CONFIG N [OUT]" >&2
  exit 2
fi
case $2 in
  '' | *[!0-9]* | 0) echo "error: N must be a positive number of shards, got '$2'" >&2; exit 2 ;;
esac
[ -f "$1" ] || { echo "error: no config at $1" >&2; exit 2; }
command -v sbatch >/dev/null || { echo "error: sbatch not found: this needs a Slurm cluster" >&2; exit 2; }
config=$(realpath "$1")
n=$2
name=$(basename "$config" .toml)
out=$(realpath -m "${3:-results/slurm/$name-$(date -u +%Y-%m-%dT%H-%M-%SZ)}")
bin=$(realpath "${SPECBENCH:-target/release/specbench}")
mkdir -p "$out"

# --wait returns once every array task has ended, non-zero when one of them failed.
status=0
sbatch --wait --array="0-$((n - 1))" --job-name="specbench-$name" --output="$out/shard%a.log" \
  --wrap="exec '$bin' run '$config' --shard \${SLURM_ARRAY_TASK_ID}/$n --out '$out'/shard\${SLURM_ARRAY_TASK_ID}" ||
  status=$?
if [ "$status" != 0 ]; then
  echo "warning: a task of the array failed (sbatch exit $status); its log is $out/shard<i>.log" >&2
fi
shards=()
for i in $(seq 0 $((n - 1))); do
  [ -d "$out/shard$i" ] && shards+=("$out/shard$i")
done
[ ${#shards[@]} -gt 0 ] || { echo "error: no shard wrote a folder under $out" >&2; exit 1; }
exec "$bin" merge "${shards[@]}" --out "$out/all"
