#!/usr/bin/env python3
"""Greedy speculative decoding of the embedded pair, specbench beside llama.cpp, same sitting.

For every prompt of configs/tiny.toml and k in 0 (target-only), 1, 2, 3: llama.cpp's
`llama-completion` (k = 0) or `llama-speculative-simple --spec-type draft-simple
--spec-draft-n-max k`, and `specbench generate` (--draft, --k), 64 new tokens past EOS, greedy,
2 threads, the models as f32 GGUF (converted by llama.cpp's convert_hf_to_gguf.py; see
scripts/make_gguf_fixtures.py) for both engines. Decode tokens/s (prompt excluded, as both
report it) summed over prompts; acceptance as each engine counts it. Writes DIR/spec.csv and
DIR/summary.md.

    python3 experiments/peer_llamacpp_spec.py --out results/spec-llamacpp/$(date +%F)
"""

import argparse
import csv
import json
import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".llamacpp/bin"
SPECBENCH = ROOT / "target/release/specbench"
DERIVED = ROOT / "models/derived"
NEW_TOKENS = 64
THREADS = "2"


def convert(model_dir, out):
    """The embedded checkpoints as f32 GGUF, made once."""
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_gguf_fixtures import convert_embedded

    return out if out.exists() else convert_embedded(model_dir, "f32", out)


def llama_cpp(target, draft, prompt, k):
    common = ["-p", prompt, "-n", str(NEW_TOKENS), "--temp", "0", "-t", THREADS, "--ignore-eos"]
    if k == 0:
        err = subprocess.run([str(BIN / "llama-completion"), "-m", str(target), "-no-cnv", *common],
                             capture_output=True, text=True, check=True).stderr
        runs, ms = re.search(r"\seval time =\s+([0-9.]+) ms /\s+(\d+) runs", err).group(2, 1)
        return {"tokens": int(runs), "seconds": float(ms) / 1000, "accepted": 0, "drafted": 0}
    err = subprocess.run(
        [str(BIN / "llama-speculative-simple"), "-m", str(target), "-md", str(draft), "--spec-type", "draft-simple",
         "--spec-draft-n-max", str(k), "-td", THREADS, *common],
        capture_output=True, text=True, check=True,
    ).stderr
    tokens, seconds = re.search(r"decoded\s+(\d+) tokens in\s+([0-9.]+) seconds", err).groups()
    return {"tokens": int(tokens), "seconds": float(seconds),
            "accepted": int(re.search(r"n_accept\s+=\s+(\d+)", err).group(1)),
            "drafted": int(re.search(r"n_drafted\s+=\s+(\d+)", err).group(1))}


def specbench(target, draft, prompt, k):
    command = [str(SPECBENCH), "generate", "--model", str(target), "--prompt", prompt, "--max-new-tokens",
               str(NEW_TOKENS), "--ignore-eos", "--backend", "flex", "--json"]
    if k:
        command += ["--draft", str(draft), "--k", str(k)]
    report = json.loads(subprocess.run(command, capture_output=True, text=True, check=True,
                                       env={**os.environ, "RAYON_NUM_THREADS": THREADS}).stdout)
    t = report["timings"]
    accepted = sum(report["accepted_per_call"])
    return {"tokens": len(report["generated_ids"]), "seconds": t["wall"] - t["prefill"],
            "accepted": accepted, "drafted": k * len(report["accepted_per_call"])}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    target = convert(ROOT / "models/tiny/target", DERIVED / "tiny-target-f32.gguf")
    draft = convert(ROOT / "models/tiny/draft", DERIVED / "tiny-draft-f32.gguf")
    prompts = [json.loads(line) for line in subprocess.run(
        [str(SPECBENCH), "prompts", str(ROOT / "configs/tiny.toml")], capture_output=True, text=True, check=True
    ).stdout.splitlines()]
    rows = []
    for prompt in prompts:
        for k in [0, 1, 2, 3]:
            for engine, run in [("llama.cpp", llama_cpp), ("specbench", specbench)]:
                result = run(target, draft, prompt["prompt"], k)
                rows.append({"engine": engine, "prompt_id": prompt["id"], "k": k, **result})
    args.out.mkdir(parents=True, exist_ok=True)
    with open(args.out / "spec.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    lines = ["| engine | k | decode tokens/s | vs own k = 0 | acceptance (accepted / drafted) |", "|---|---|---|---|---|"]
    base = {}
    for engine in ["llama.cpp", "specbench"]:
        for k in [0, 1, 2, 3]:
            sel = [r for r in rows if r["engine"] == engine and r["k"] == k]
            speed = sum(r["tokens"] for r in sel) / sum(r["seconds"] for r in sel)
            base.setdefault(engine, speed)
            drafted = sum(r["drafted"] for r in sel)
            acceptance = f"{sum(r['accepted'] for r in sel) / drafted:.3f}" if drafted else "—"
            lines.append(f"| {engine} | {k} | {speed:.0f} | {speed / base[engine]:.2f}× | {acceptance} |")
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
