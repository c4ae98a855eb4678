#!/usr/bin/env bash
# Figure: measured speedup vs draft length k with 95% CIs, against Theorem 3.8's prediction from
# the measured α and c (embedded tiny pair, ndarray, T = 0 and 1).
source "$(dirname "$0")/common.sh"
run_figure configs/tiny.toml results/tiny/figures-run speedup_vs_k fig_speedup_vs_k
