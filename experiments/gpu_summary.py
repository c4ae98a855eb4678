#!/usr/bin/env python3
"""The GPU suite's closing table, from the files it wrote (standard library only):
bandwidth.csv, forward.csv (specbench and peers), sweep/ and tiny/ result folders, peers.csv and
stages.csv. Prints markdown and writes it to OUT/summary.md.

    python3 experiments/gpu_summary.py results/gpu/RUN
"""
import csv
import os
import sys


def rows(path):
    if not os.path.exists(path):
        return []
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def main(out):
    lines = [f"# GPU suite: {os.path.basename(os.path.normpath(out))}", ""]
    bandwidth = rows(os.path.join(out, "bandwidth.csv"))
    gbs = max((float(r["gb_per_s"]) for r in bandwidth), default=None)
    if gbs:
        lines += [f"Read bandwidth (`specbench bench bandwidth`, best of the runs): {gbs:.1f} GB/s.", ""]
    forward = rows(os.path.join(out, "forward.csv"))
    curves = {}
    for r in forward:
        curves.setdefault((r["engine"], r["model"], r["dtype"], r["backend"]), {})[int(r["tokens"])] = r
    if curves:
        lines += ["## Decode and verify (one forward after a 256-token cache)", "",
                  "| engine | model | dtype | decode ms/token | tokens/s | floor tokens/s | % of floor "
                  "| verify 9 tokens / 1 | verify 16 / 1 |", "|---|---|---|---|---|---|---|---|---|"]
        for (engine, model, dtype, backend), curve in sorted(curves.items()):
            one = float(curve[1]["seconds"])
            floor = gbs * 1e9 / float(curve[1]["weight_bytes"]) if gbs else None
            ratio = lambda n: f"{float(curve[n]['seconds']) / one:.2f}" if n in curve else "—"
            lines.append(f"| {engine} ({backend}) | {model} | {dtype} | {one * 1e3:.2f} | {1 / one:.1f} | "
                         f"{f'{floor:.1f}' if floor else '—'} | {f'{100 / one / floor:.0f}%' if floor else '—'} "
                         f"| {ratio(9)} | {ratio(16)} |")
        lines.append("")
    for folder, title in [("sweep", "Speculative sweep (random weights: speed only, acceptance meaningless)"),
                          ("tiny", "Embedded tiny pair on wgpu")]:
        summary = [r for r in rows(os.path.join(out, folder, "summary.csv")) if r["category"] == "all"]
        if summary:
            lines += [f"## {title}", "", "| T | k | tokens/s | target-only tokens/s | speedup [95% CI] | α | c |",
                      "|---|---|---|---|---|---|---|"]
            num = lambda v, digits: f"{float(v):.{digits}f}" if v else "—"
            for r in summary:
                ci = f" [{num(r['speedup_ci_low'], 2)}, {num(r['speedup_ci_high'], 2)}]" if r["speedup_ci_low"] else ""
                speedup = f"{num(r['speedup'], 2)}×{ci}" if r["speedup"] else "—"
                lines.append(f"| {r['temperature']} | {r['k']} | {num(r['tokens_per_s'], 1)} | "
                             f"{num(r['baseline_tokens_per_s'], 1)} | {speedup} | {num(r['alpha'], 3)} | "
                             f"{num(r['cost_ratio'], 3)} |")
            lines.append("")
    peers = rows(os.path.join(out, "peers.csv"))
    if peers:
        lines += ["## Peers not measured", ""] + [f"- {p['peer']}: {p['status']} ({p['why']})" for p in peers] + [""]
    stages = rows(os.path.join(out, "stages.csv"))
    if stages:
        lines += ["## Stages", "", "| stage | status | seconds |", "|---|---|---|"]
        lines += [f"| {s['stage']} | {s['status']} | {s['seconds']} |" for s in stages]
        lines.append("")
    text = "\n".join(lines)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(text)
    print(text)


if __name__ == "__main__":
    main(sys.argv[1])
