#!/usr/bin/env bash
# Figure: speedup vs k for Llama-3.1-8B-Instruct with a Llama-3.2-1B-Instruct draft on a GPU
# (wgpu). Needs the checkpoints under $SPECBENCH_MODELS and a build with --features wgpu.
source "$(dirname "$0")/common.sh"
cargo build --release --quiet --features wgpu
run_figure configs/llama3-8b-1b.toml results/llama3-8b-1b/figures-run speedup_vs_k fig_llama3_8b_1b_speedup
