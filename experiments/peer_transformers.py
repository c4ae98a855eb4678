#!/usr/bin/env python3
"""Run Hugging Face transformers on the same checkpoints, prompts, seeds and max_new_tokens as a
specbench config, and write rows in specbench's runs.csv schema with engine = transformers, so
`specbench report` puts both engines in one table and one plot.

For every temperature of the config: target-only `generate` (k = 0) and assisted generation
(`assistant_model`, `num_assistant_tokens = k`, constant schedule, confidence threshold 0 so
every block is drafted to length k) for each k.

Timing: wall time of `generate`; the target's and the draft's forward calls are wrapped to count
them and time them (CUDA synchronised), which gives verify_s, draft_s, target_calls, proposed
(= draft forwards) and accepted (= new tokens − target calls). Prefill is the first target call.

Pinned: torch==2.5.1, transformers==4.46.3.
    python3 experiments/peer_transformers.py configs/tiny.toml --specbench target/release/specbench \
        --out results/tiny/RUN-ID/peer-runs.csv --threads 2
    cat results/tiny/RUN-ID/peer-runs.csv | tail -n +2 >> results/tiny/RUN-ID/runs.csv
    specbench report results/tiny/RUN-ID
"""
import argparse
import csv
import json
import os
import re
import subprocess
import time
import tomllib

import torch
from transformers import AutoTokenizer, LlamaForCausalLM, PreTrainedTokenizerFast

COLUMNS = ["engine", "backend", "dtype", "target", "draft", "prompt_id", "category", "temperature", "k",
           "repeat", "seed", "new_tokens", "target_calls", "proposed", "accepted", "alpha_hat", "alpha",
           "mean_accepted_len", "prefill_s", "draft_s", "verify_s", "other_s", "wall_s", "tokens_per_s",
           "position_proposed", "position_accepted", "accepted_len_hist", "overlap_sum", "overlap_count"]
DTYPES = {"f32": torch.float32, "f16": torch.float16, "bf16": torch.bfloat16}


def expand(path: str, config_path: str) -> str:
    def var(m):
        name, _, default = m.group(1).partition(":-")
        return os.environ.get(name, default)
    path = re.sub(r"\$\{([^}]*)\}", var, path)
    path = re.sub(r"\$([A-Za-z_][A-Za-z0-9_]*)", lambda m: os.environ.get(m.group(1), ""), path)
    return path if os.path.isabs(path) else os.path.join(os.path.dirname(config_path), path)


class ForwardMeter:
    """Counts and times a model's forward calls."""

    def __init__(self, model, device):
        self.calls, self.seconds, self.first = 0, 0.0, None
        original = model.forward

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = original(*args, **kwargs)
            if device == "cuda":
                torch.cuda.synchronize()
            elapsed = time.perf_counter() - start
            self.calls += 1
            self.seconds += elapsed
            if self.first is None:
                self.first = elapsed
            return out

        model.forward = timed

    def reset(self):
        self.calls, self.seconds, self.first = 0, 0.0, None


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("config")
    ap.add_argument("--out", required=True)
    ap.add_argument("--specbench", default="target/release/specbench", help="binary, to list the prompts")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=None)
    ap.add_argument("--repeats", type=int, default=None, help="override the config's repeats")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)

    config = tomllib.load(open(args.config, "rb"))
    exp, sweep = config["experiment"], config["sweep"]
    prompts = [json.loads(line) for line in subprocess.run(
        [args.specbench, "prompts", args.config], check=True, capture_output=True, text=True).stdout.splitlines()]
    target_path = expand(config["models"]["target"]["path"], args.config)
    draft_path = expand(config["models"]["draft"]["path"], args.config)
    dtype_name = config["models"]["target"].get("dtype", "f32")
    dtype = DTYPES[dtype_name]
    tok = AutoTokenizer.from_pretrained(target_path) if os.path.exists(os.path.join(target_path, "tokenizer_config.json")) \
        else PreTrainedTokenizerFast(tokenizer_file=os.path.join(target_path, "tokenizer.json"))
    target = LlamaForCausalLM.from_pretrained(target_path, torch_dtype=dtype).to(args.device).eval()
    draft = LlamaForCausalLM.from_pretrained(draft_path, torch_dtype=dtype).to(args.device).eval()
    t_meter, d_meter = ForwardMeter(target, args.device), ForwardMeter(draft, args.device)
    eos = target.config.eos_token_id
    backend = f"torch-{args.device}"

    def generate(ids, temperature, k, seed):
        torch.manual_seed(seed)
        kwargs = dict(max_new_tokens=exp["max_new_tokens"], attention_mask=torch.ones_like(ids),
                      pad_token_id=eos, eos_token_id=eos, do_sample=temperature > 0)
        if temperature > 0:
            kwargs.update(temperature=temperature, top_p=sweep.get("top_p", 1.0), top_k=sweep.get("top_k", 0) or None)
        if k > 0:
            draft.generation_config.num_assistant_tokens = k
            draft.generation_config.num_assistant_tokens_schedule = "constant"
            # transformers >= 4.45 stops drafting once the draft's confidence falls below 0.4;
            # a constant-k comparison needs every block drafted to length k.
            draft.generation_config.assistant_confidence_threshold = 0.0
            kwargs["assistant_model"] = draft
        t_meter.reset(), d_meter.reset()
        start = time.perf_counter()
        with torch.no_grad():
            out = target.generate(ids, **kwargs)
        if args.device == "cuda":
            torch.cuda.synchronize()
        return out[0, ids.shape[1]:].tolist(), time.perf_counter() - start

    with open(args.out, "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=COLUMNS)
        writer.writeheader()
        for temperature in sweep["temperatures"]:
            for k in [0] + sweep["k"]:
                encoded = [torch.tensor([tok(p["prompt"]).input_ids], device=args.device) for p in prompts]
                for _ in range(exp.get("warmup", 1)):
                    generate(encoded[0], temperature, k, 0)
                for repeat in range(args.repeats or exp.get("repeats", 1)):
                    for i, p in enumerate(prompts):
                        seed = exp.get("seed", 0) * 1_000_003 + i * 1000 + repeat
                        tokens, wall = generate(encoded[i], temperature, k, seed)
                        calls = t_meter.calls
                        row = dict(engine="transformers", backend=backend, dtype=dtype_name,
                                   target=target_path, draft=draft_path if k else "", prompt_id=p["id"],
                                   category=p["category"], temperature=temperature, k=k, repeat=repeat,
                                   seed=seed, new_tokens=len(tokens), target_calls=calls,
                                   proposed=d_meter.calls if k else 0,
                                   accepted=max(len(tokens) - calls, 0) if k else 0,
                                   alpha_hat="", alpha="",
                                   mean_accepted_len=len(tokens) / calls if calls else 1.0,
                                   prefill_s=t_meter.first or 0.0, draft_s=d_meter.seconds,
                                   verify_s=t_meter.seconds - (t_meter.first or 0.0),
                                   other_s=max(wall - t_meter.seconds - d_meter.seconds, 0.0), wall_s=wall,
                                   tokens_per_s=len(tokens) / wall, position_proposed="", position_accepted="",
                                   accepted_len_hist="", overlap_sum="", overlap_count="")
                        if k:
                            row["alpha_hat"] = row["accepted"] / row["proposed"] if row["proposed"] else ""
                        writer.writerow(row)
                        f.flush()
                print(f"transformers {backend} T={temperature} k={k} done", flush=True)


if __name__ == "__main__":
    main()
