#!/usr/bin/env python3
"""Where a decode or speculative step spends its time, by kind of operation: `perf record` on
`specbench generate`, self time per symbol, grouped by the patterns below into projections (the
host kernels), the host forward path's own loops, the kernel pool's hand-offs and spinning (its
worker spins between products: idle time, sampled), Burn's matmuls (attention), element-wise ops
(norms, RoPE, SiLU, softmax), copies, allocation, thread wake-ups, sampling, and the rest. Standard library
only; needs `perf` (linux-tools).

    python3 experiments/profile_ops.py --model models/tiny/target --backend flex \
        [--draft models/tiny/draft --k 2] [--tokens 500] [--out results/profile/NAME.md]

Each `generate` runs once under perf at 2000 Hz; the table is the share of all samples.
"""
import argparse
import collections
import os
import re
import subprocess
import tempfile

KINDS = [
    ("input quantization (q8 rows)", r"Q8Row|Q8KRow|rintf|roundeven"),
    ("projections (host kernels)", r"specbench::kernels::(matvec|quant|kquant)|specbench::model::matvec"),
    ("pool hand-off and idle spinning", r"specbench::kernels::pool|clock_gettime|Instant|vdso"),
    ("host forward (attention, norms, RoPE, SwiGLU)", r"specbench::model::host|specbench::kernels::dot"),
    ("Burn matmul (attention; projections on the backend)", r"gemm|matrixmultiply|linalg|matmul"),
    ("thread wake-ups and idle spinning", r"sched_yield|futex|rayon_core|try_to_wake_up|finish_task_switch|"
                                          r"raw_spin|__schedule|Condvar|do_syscall|syscall_exit|rseq|"
                                          r"entry_SYSCALL|queued_spin"),
    ("allocation and page faults", r"malloc|free|unlink_chunk|clear_page|page_fault|mmap|munmap|brk|"
                                   r"AllocationController|rust_alloc|rust_dealloc|__list_del|__list_add"),
    ("RoPE angles (host cos/sin)", r"__cos|__sin|sincos"),
    ("element-wise (norms, RoPE, SiLU, softmax)", r"macerator|binary|unary|expf|reduce|softmax|silu|RmsNorm|"
                                                  r"broadcast|ndarray::zip|burn_flex::ops"),
    ("copies", r"memmove|memcpy|memset|copy_mc|from_iter|AVec|clone|to_vec|into_data|from_data|slice_write|"
               r"into_contiguous"),
    ("tensor bookkeeping (dispatch, layouts, shapes)", r"burn_dispatch|burn_flex|burn_tensor|burn_backend|"
                                                       r"Shape::|smallvec|cubecl|ndarray::"),
    ("sampling and acceptance", r"specbench::sampling|specbench::decoding::acceptance|WeightedIndex|rand"),
]


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--model", required=True)
    ap.add_argument("--draft")
    ap.add_argument("--k", type=int, default=2)
    ap.add_argument("--backend", default="flex")
    ap.add_argument("--dtype", default="f32")
    ap.add_argument("--tokens", type=int, default=500)
    ap.add_argument("--specbench", default="target/release/specbench")
    ap.add_argument("--out")
    args = ap.parse_args()
    command = [args.specbench, "generate", "--model", args.model, "--backend", args.backend, "--dtype", args.dtype,
               "--prompt", "class Queue:", "--max-new-tokens", str(args.tokens), "--ignore-eos"]
    if args.draft:
        command += ["--draft", args.draft, "--k", str(args.k)]
    with tempfile.TemporaryDirectory() as tmp:
        data = os.path.join(tmp, "perf.data")
        run = subprocess.run(["perf", "record", "-F", "2000", "-o", data, "--", *command],
                             capture_output=True, text=True, check=True)
        speed = re.search(r"new tokens at ([0-9.]+) tokens/s", run.stderr)
        report = subprocess.run(["perf", "report", "-i", data, "--no-children", "--sort", "symbol", "--stdio"],
                                capture_output=True, text=True, check=True).stdout
    shares = collections.Counter()
    for line in report.splitlines():
        match = re.match(r"\s*([0-9.]+)%\s+\[[.k]\]\s+(.*)", line)
        if not match:
            continue
        share, symbol = float(match.group(1)), match.group(2).strip()
        kind = next((name for name, pattern in KINDS if re.search(pattern, symbol)), "other")
        shares[kind] += share
    title = f"{args.model} on {args.backend}/{args.dtype}" + (f" + draft {args.draft}, k = {args.k}" if args.draft else "")
    lines = [f"## {title}", "", f"`{' '.join(command)}` under `perf record -F 2000`"
             + (f": {speed.group(1)} tokens/s" if speed else ""), "", "| kind | share of samples |", "|---|---|"]
    lines += [f"| {kind} | {share:.1f}% |" for kind, share in shares.most_common()]
    text = "\n".join(lines) + "\n"
    print(text)
    if args.out:
        os.makedirs(os.path.dirname(args.out) or ".", exist_ok=True)
        with open(args.out, "a") as f:
            f.write(text + "\n")


if __name__ == "__main__":
    main()
