# Shared by the figure scripts: build once, run a config into a named folder, rebuild its report,
# and copy the figure next to the script's name under results/figures/.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
cargo build --release --quiet
SPECBENCH=target/release/specbench

# run_figure CONFIG FOLDER PLOT FIGURE_NAME
run_figure() {
  local config=$1 folder=$2 plot=$3 figure=$4
  if [ -f "$folder/runs.csv" ]; then
    "$SPECBENCH" run "$config" --resume "$folder"
  else
    "$SPECBENCH" run "$config" --out "$folder"
  fi
  "$SPECBENCH" report "$folder" >/dev/null
  mkdir -p results/figures
  for ext in png svg; do
    cp "$folder/plots/$plot.$ext" "results/figures/$figure.$ext"
  done
  echo "figure: results/figures/$figure.{png,svg} (data: $folder)"
}
