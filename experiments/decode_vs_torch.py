#!/usr/bin/env python3
"""Target-only greedy decode speed on the CPU: specbench's CPU backends against torch +
transformers, same machine, same run, next to the memory-bandwidth floor.

Every engine decodes the same model shape with the same prompt length and new-token count; the
engines take turns, `--repeats` times, so that drift in the machine hits all of them alike.
Each engine's rate is decode forwards per second after the prompt:
  specbench: its own report (n new tokens take n forwards after a prefill of the prompt but one);
  torch: (n - 1) / (time of generate(n) - time of generate(1)), i.e. prefill and the first
  token subtracted out, so both count forwards over a cache of the same length.
The floor is the weight bytes that one decode step must read (every parameter once; a tied head
reads the embedding matrix again in full, counted once since the lookup reads one row), divided
by the read bandwidth measured here: a torch reduction over a 1 GiB f32 buffer on `--threads`
threads, best of 10. Real weights and random weights in the same shape run at the same speed.

    python3 experiments/decode_vs_torch.py random:llama3.2-1b models/tiny/target \
        --threads 2 --new-tokens 16 --repeats 3 --out results/decode-cpu

`--dtype bf16` (or f16) runs both engines' weights in that precision; the floor counts its bytes.

Writes OUT/DATE/{decode.csv, summary.md, machine.json}. Pinned: torch==2.5.1, transformers==4.46.3
(torch 2.15 / transformers 5.24 for the bf16 figures; machine.json records the versions).
"""
import argparse
import csv
import datetime
import json
import os
import platform
import re
import statistics
import subprocess
import time

import torch
from transformers import LlamaConfig, LlamaForCausalLM

PRESETS = {
    "random:llama3.2-1b": dict(hidden_size=2048, intermediate_size=8192, num_hidden_layers=16,
                               num_attention_heads=32, num_key_value_heads=8, head_dim=64,
                               tie_word_embeddings=True, rope_scaling_factor=32.0),
    "random:llama3.2-3b": dict(hidden_size=3072, intermediate_size=8192, num_hidden_layers=28,
                               num_attention_heads=24, num_key_value_heads=8, head_dim=128,
                               tie_word_embeddings=True, rope_scaling_factor=32.0),
}
PROMPT = "The quick brown fox jumps over the lazy dog"


DTYPES = {"f32": torch.float32, "bf16": torch.bfloat16, "f16": torch.float16}


def torch_model(model: str, dtype: str) -> LlamaForCausalLM:
    return _torch_model(model).to(DTYPES[dtype])


def _torch_model(model: str) -> LlamaForCausalLM:
    if model in PRESETS:
        shape = dict(PRESETS[model])
        factor = shape.pop("rope_scaling_factor")
        config = LlamaConfig(vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5,
                             max_position_embeddings=131072,
                             rope_scaling={"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                                           "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                             **shape)
        torch.manual_seed(0)
        return LlamaForCausalLM(config).eval()
    return LlamaForCausalLM.from_pretrained(model, torch_dtype=torch.float32).eval()


def decode_bytes(model: LlamaForCausalLM) -> int:
    return sum(p.numel() * p.element_size() for p in model.parameters())


def torch_decode(model: LlamaForCausalLM, prompt_tokens: int, new_tokens: int) -> float:
    ids = torch.randint(3, 256, (1, prompt_tokens))

    def timed(n: int) -> float:
        start = time.perf_counter()
        model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=n, min_new_tokens=n,
                       do_sample=False, pad_token_id=0)
        return time.perf_counter() - start

    with torch.no_grad():
        timed(2)  # warm-up
        return (new_tokens - 1) / (timed(new_tokens) - timed(1))


def specbench_decode(binary: str, model: str, engine: str, new_tokens: int, dtype: str) -> tuple[float, int]:
    """`engine` is BACKEND or BACKEND:PROJECTIONS (host or backend)."""
    backend, _, projections = engine.partition(":")
    extra = ["--projections", projections] if projections else []
    out = subprocess.run([binary, "generate", "--model", model, "--backend", backend, "--prompt", PROMPT,
                          "--max-new-tokens", str(new_tokens), "--ignore-eos", "--dtype", dtype, *extra],
                         capture_output=True, text=True, check=True).stderr
    rate = float(re.search(r"new tokens at ([0-9.]+) tokens/s", out).group(1))
    prompt_tokens = int(re.search(r"prefill (\d+) tokens", out).group(1))
    return rate, prompt_tokens + 1  # our prefill leaves the last prompt token to the first step


def read_bandwidth(threads: int) -> float:
    buffer = torch.ones(1 << 28)
    buffer.sum()
    best = min(_timed_sum(buffer) for _ in range(10))
    return buffer.numel() * buffer.element_size() / best


def _timed_sum(buffer: torch.Tensor) -> float:
    start = time.perf_counter()
    buffer.sum()
    return time.perf_counter() - start


def cpu_name() -> str:
    for line in open("/proc/cpuinfo"):
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor()


def git_commit() -> str:
    return subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("models", nargs="+", help="presets (random:llama3.2-1b, ...) or checkpoint folders")
    ap.add_argument("--engines", default="ndarray,flex",
                    help="specbench BACKEND or BACKEND:PROJECTIONS, comma-separated (e.g. ndarray:backend)")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--dtype", default="f32", choices=list(DTYPES), help="weights of both engines")
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--repeats", type=int, default=3)
    ap.add_argument("--specbench", default="target/release/specbench")
    ap.add_argument("--out", default="results/decode-cpu")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    os.environ["RAYON_NUM_THREADS"] = str(args.threads)

    bandwidth = read_bandwidth(args.threads)
    print(f"read bandwidth: {bandwidth / 1e9:.1f} GB/s ({args.threads} threads)")
    rows = []
    for model_name in args.models:
        model = torch_model(model_name, args.dtype)
        weight_bytes = decode_bytes(model)
        for repeat in range(args.repeats):
            for engine in args.engines.split(","):
                rate, prompt_tokens = specbench_decode(args.specbench, model_name, engine, args.new_tokens, args.dtype)
                rows.append(dict(model=model_name, engine=f"specbench {engine}", repeat=repeat, tokens_per_s=rate))
                print(f"{model_name} {engine} #{repeat}: {rate:.3f} tokens/s")
            rate = torch_decode(model, prompt_tokens, args.new_tokens)
            rows.append(dict(model=model_name, engine=f"torch {torch.__version__}", repeat=repeat, tokens_per_s=rate))
            print(f"{model_name} torch #{repeat}: {rate:.3f} tokens/s")
        for row in rows:
            if row["model"] == model_name:
                row.update(weight_bytes=weight_bytes, prompt_tokens=prompt_tokens,
                           floor_tokens_per_s=bandwidth / weight_bytes)
        del model

    out = os.path.join(args.out, datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H-%M-%SZ"))
    os.makedirs(out, exist_ok=True)
    with open(os.path.join(out, "decode.csv"), "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    machine = dict(cpu=cpu_name(), cores=os.cpu_count(), threads=args.threads,
                   read_bandwidth_gb_s=round(bandwidth / 1e9, 2), torch=torch.__version__,
                   transformers=__import__("transformers").__version__, specbench_commit=git_commit(),
                   new_tokens=args.new_tokens, repeats=args.repeats, dtype=args.dtype, command=" ".join(os.sys.argv))
    with open(os.path.join(out, "machine.json"), "w") as f:
        json.dump(machine, f, indent=2)
    summary = summarise(rows, args)
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write(summary)
    print(summary)
    print(f"results: {out}")


def summarise(rows: list[dict], args) -> str:
    lines = [f"{args.dtype}, {args.new_tokens} new tokens, {args.threads} threads, median [min, max] of {args.repeats} "
             "interleaved repeats; floor = read bandwidth / weight bytes per step", "",
             "| model | engine | tokens/s | vs torch | % of floor |", "|---|---|---|---|---|"]
    for model in dict.fromkeys(r["model"] for r in rows):
        mine = [r for r in rows if r["model"] == model]
        engines = dict.fromkeys(r["engine"] for r in mine)
        medians = {e: statistics.median(r["tokens_per_s"] for r in mine if r["engine"] == e) for e in engines}
        torch_median = next(m for e, m in medians.items() if e.startswith("torch"))
        floor = mine[0]["floor_tokens_per_s"]
        for engine, median in medians.items():
            rates = [r["tokens_per_s"] for r in mine if r["engine"] == engine]
            lines.append(f"| {model} | {engine} | {median:.2f} [{min(rates):.2f}, {max(rates):.2f}] | "
                         f"{median / torch_median:.2f} | {100 * median / floor:.0f}% |")
        lines.append(f"| {model} | floor ({mine[0]['weight_bytes'] / 1e9:.3f} GB/step) | {floor:.2f} | "
                     f"{floor / torch_median:.2f} | 100% |")
    return "\n".join(lines) + "\n"


if __name__ == "__main__":
    main()
