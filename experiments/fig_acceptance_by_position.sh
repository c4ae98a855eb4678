#!/usr/bin/env bash
# Figure: acceptance rate of each draft position at the largest k, against α^i (what i.i.d.
# acceptance would give). Same run as the speedup figure: a second call reuses its rows.
source "$(dirname "$0")/common.sh"
run_figure configs/tiny.toml results/tiny/figures-run acceptance_by_position fig_acceptance_by_position
