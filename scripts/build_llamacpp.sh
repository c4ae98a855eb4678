#!/usr/bin/env bash
# Builds llama.cpp, the peer specbench is measured and checked against, from the source that the
# PyPI sdist `llama-cpp-python` 0.3.36 vendors (llama.cpp 0c1e57098bba): only that package is
# fetched, as source; cmake and ninja come from PyPI. Binaries land in .llamacpp/bin, the source
# (with convert_hf_to_gguf.py and its gguf-py) in .llamacpp/src.
#
# GGML_NATIVE=OFF with the vector extensions named: on our VMs the CPU reports AMX, which the VM
# cannot run, and a native build segfaults on quantized models.
set -euo pipefail
cd "$(dirname "$0")/.."
version=0.3.36
root=$PWD/.llamacpp
targets="llama-bench llama-completion llama-simple llama-speculative llama-speculative-simple llama-quantize llama-lookup"
missing=0
for t in $targets; do [ -x "$root/bin/$t" ] || missing=1; done
if [ "$missing" = 0 ]; then
  echo "already built: $root/bin"
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
cmake -S "$root/src" -B "$root/build" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DGGML_NATIVE=OFF -DGGML_AVX2=ON -DGGML_AVX512=ON -DGGML_AVX512_VBMI=ON -DGGML_AVX512_VNNI=ON \
  -DGGML_AVX512_BF16=ON -DGGML_AVX_VNNI=ON -DGGML_FMA=ON -DGGML_F16C=ON \
  -DBUILD_SHARED_LIBS=OFF -DLLAMA_OPENSSL=OFF -DLLAMA_CURL=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_BUILD_TESTS=OFF >/dev/null
# shellcheck disable=SC2086 # the list splits into targets
cmake --build "$root/build" -j "$(nproc)" --target $targets
mkdir -p "$root/bin"
cp "$root/build/bin/"llama-* "$root/bin/"
echo "built: $root/bin"
