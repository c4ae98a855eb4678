#!/usr/bin/env bash
# Figure: mean accepted length τ vs k against E = (1 − α^(k+1)) / (1 − α).
source "$(dirname "$0")/common.sh"
run_figure configs/tiny.toml results/tiny/figures-run accepted_len_vs_k fig_accepted_len_vs_k
