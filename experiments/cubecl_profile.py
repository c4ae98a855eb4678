#!/usr/bin/env python3
"""Where the GPU time of a wgpu run goes: sums a CubeCL profile log per kernel family.

CubeCL (Burn's GPU runtime) logs each kernel's device time when a `cubecl.toml` in the working
directory asks for it (every kernel is then timed on its own, so the sum runs above an
unprofiled run, but the shares hold):

    [profiling.logger]
    level = "basic"
    file = "prof.log"

    experiments/cubecl_profile.py prof.log[.gz] [--last-forward N]

--last-forward N: only the kernels from the N-th last matmul on (one decode step of a model
with N matmuls per forward: 6 per layer + 1 head here, 193 for the 8B shape), listed in order.
"""
import argparse
import collections
import gzip
import re
import sys

UNITS = {"ns": 1e-9, "µs": 1e-6, "us": 1e-6, "ms": 1e-3, "s": 1.0}
LINE = re.compile(r"^\|\s*([0-9.]+)(ns|µs|us|ms|s)\s*\|\s*(.+?)\s*$")


def kernels(lines):
    """(seconds, name) for each timed kernel line, in log order (summary tables skipped)."""
    for line in lines:
        match = LINE.match(line)
        if match:
            seconds = float(match.group(1)) * UNITS[match.group(2)]
            yield seconds, match.group(3).rstrip("|").strip()


def family(name):
    """Groups a kernel's launches: the matmul algorithm's family, or the name without its hash."""
    if "Matmul" in name:
        found = re.search(r"(\w+MatmulFamily|\w+VecMat\w*|\w+Gemv\w*)", name)
        return "matmul " + (found.group(1) if found else name.split("|")[0].strip())
    return re.sub(r"_[0-9a-f]{8}$", "", name)


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("log")
    parser.add_argument("--last-forward", type=int, metavar="N")
    parser.add_argument("--top", type=int, default=15)
    args = parser.parse_args()
    opener = gzip.open if args.log.endswith(".gz") else open
    with opener(args.log, "rt", encoding="utf-8") as f:
        rows = list(kernels(f))
    if not rows:
        sys.exit(f"error: {args.log} holds no profiled kernels (is level = \"basic\" set?)")
    if args.last_forward:
        matmuls = [i for i, (_, name) in enumerate(rows) if "Matmul" in name]
        if len(matmuls) < args.last_forward:
            sys.exit(f"error: {args.log} has {len(matmuls)} matmuls, fewer than {args.last_forward}")
        rows = rows[matmuls[-args.last_forward]:]
    total = collections.Counter()
    count = collections.Counter()
    for seconds, name in rows:
        total[family(name)] += seconds
        count[family(name)] += 1
    whole = sum(total.values())
    print(f"{len(rows)} kernels, {whole * 1e3:.1f} ms")
    print("| kernel family | ms | share | launches |\n|---|---|---|---|")
    for name, seconds in total.most_common(args.top):
        print(f"| {name[:90]} | {seconds * 1e3:.1f} | {100 * seconds / whole:.1f}% | {count[name]} |")


if __name__ == "__main__":
    main()
