#!/usr/bin/env bash
# Builds llama.cpp, the peer specbench is measured and checked against, from the source that the
# PyPI sdist `llama-cpp-python` 0.3.36 vendors (llama.cpp 0c1e57098bba): only that package is
# fetched, as source; cmake and ninja come from PyPI. Binaries land in .llamacpp/bin, the source
# (with convert_hf_to_gguf.py and its gguf-py) in .llamacpp/src.
#
# GGML_NATIVE=OFF with the vector extensions this CPU has named, and the others off: on our VMs
# the CPU reports AMX, which the VM cannot run (a native build segfaults on quantized models), and
# an extension the CPU lacks (AVX-VNNI on AMD Zen 4) dies with SIGILL. Sessions land on different
# CPUs, so the build records the extensions it was made for (.llamacpp/bin/FEATURES) and is
# rebuilt when they differ; after a build, llama-bench runs once on a quantized file.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36
root=$PWD/.llamacpp
targets="llama-bench llama-completion llama-simple llama-speculative llama-speculative-simple llama-quantize llama-lookup"

# The ggml options for this CPU's extensions (x86-64; elsewhere ggml's portable defaults).
options=(-DGGML_NATIVE=OFF)
if [ "$(uname -m)" = x86_64 ]; then
  flags=" $(grep -m1 '^flags' /proc/cpuinfo | cut -d: -f2) "
  for pair in avx:GGML_AVX avx2:GGML_AVX2 fma:GGML_FMA f16c:GGML_F16C bmi2:GGML_BMI2 \
    avx512f:GGML_AVX512 avx512vbmi:GGML_AVX512_VBMI avx512_vnni:GGML_AVX512_VNNI \
    avx512_bf16:GGML_AVX512_BF16 avx_vnni:GGML_AVX_VNNI; do
    flag=${pair%%:*} option=${pair##*:}
    if [[ $flags == *" $flag "* ]]; then options+=("-D$option=ON"); else options+=("-D$option=OFF"); fi
  done
  options+=(-DGGML_AMX_TILE=OFF -DGGML_AMX_INT8=OFF -DGGML_AMX_BF16=OFF)
fi
features="${options[*]}"

missing=0
for t in $targets; do [ -x "$root/bin/$t" ] || missing=1; done
if [ "$missing" = 0 ] && [ "$(cat "$root/bin/FEATURES" 2>/dev/null)" = "$features" ]; then
  echo "already built for this CPU: $root/bin"
  exit 0
fi
mkdir -p "$root"
if [ ! -d "$root/src" ]; then
  python3 -m pip download --quiet --no-deps --no-binary llama-cpp-python "llama-cpp-python==$version" -d "$root/sdist"
  tar -xzf "$root/sdist/llama_cpp_python-$version.tar.gz" -C "$root/sdist"
  mv "$root/sdist/llama_cpp_python-$version/vendor/llama.cpp" "$root/src"
  rm -rf "$root/sdist"
fi
python3 -m venv "$root/tools"
"$root/tools/bin/pip" install --quiet cmake ninja
export PATH="$root/tools/bin:$PATH"
echo "building llama.cpp with: $features"
cmake -S "$root/src" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release "${options[@]}" \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF >/dev/null
# shellcheck disable=SC2086 # the list splits into targets
cmake --build "$root/build" -j "$(nproc)" --target $targets
mkdir -p "$root/bin"
cp "$root/build/bin/"llama-* "$root/bin/"
# One quantized run proves the binaries run on this CPU (an extension it lacks is SIGILL here,
# not in the middle of a measurement).
if ! "$root/bin/llama-bench" -m tests/fixtures/tiny-gguf/target-q4_0.gguf -p 8 -n 8 -r 1 -t 2 >/dev/null 2>&1; then
  echo "error: the llama.cpp just built does not run a q4_0 model on this CPU ($features)" >&2
  exit 1
fi
echo "$features" >"$root/bin/FEATURES"
echo "built for this CPU: $root/bin"
