"""Summarises experiments/ab_forward.sh output: per model and row count, the range of each
binary's medians over the rounds, and the ratios b / a of the median and of the fastest round
(< 1 means b is faster; on a noisy VM the fastest round is the steadier of the two).

    python3 experiments/ab_summary.py results/profile/DATE-name.csv
"""

import csv
import statistics
import sys
from collections import defaultdict

runs = defaultdict(list)
with open(sys.argv[1]) as f:
    for row in csv.DictReader(f):
        runs[(row["model"], int(row["tokens"]), row["binary"])].append(float(row["us"]))

print("| model | rows | a (µs) | b (µs) | b / a, median | b / a, fastest |")
print("|---|---|---|---|---|---|")
for model, tokens in sorted({(m, t) for m, t, _ in runs}):
    a, b = runs[(model, tokens, "a")], runs[(model, tokens, "b")]
    span = lambda v: f"{min(v):.0f}–{max(v):.0f}"
    ratio = statistics.median(b) / statistics.median(a)
    print(f"| {model} | {tokens} | {span(a)} | {span(b)} | {ratio:.3f} | {min(b) / min(a):.3f} |")
