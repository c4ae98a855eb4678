#!/usr/bin/env python3
"""Target-only greedy decode speed, specbench (ndarray) vs torch on the CPU, same machine, back to
back: random weights in a preset's exact shape, the same prompt length and new-token count.

    python3 experiments/decode_vs_torch.py random:llama3.2-1b --threads 2 --new-tokens 16
"""
import argparse
import re
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
PROMPT = "The quick brown fox jumps over the lazy dog"  # 44 bytes: 44 tokens for random presets


def torch_decode(preset: str, new_tokens: int) -> float:
    shape = dict(PRESETS[preset])
    factor = shape.pop("rope_scaling_factor")
    config = LlamaConfig(vocab_size=128256, rope_theta=500000.0, rms_norm_eps=1e-5, max_position_embeddings=131072,
                         rope_scaling={"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0,
                                       "high_freq_factor": 4.0, "original_max_position_embeddings": 8192},
                         **shape)
    torch.manual_seed(0)
    model = LlamaForCausalLM(config).eval()
    ids = torch.randint(0, 256, (1, 44))
    with torch.no_grad():
        model.generate(ids, max_new_tokens=2, do_sample=False, pad_token_id=0)  # warm-up
        start = time.perf_counter()
        model(ids, use_cache=True)
        prefill = time.perf_counter() - start
        start = time.perf_counter()
        out = model.generate(ids, attention_mask=torch.ones_like(ids), max_new_tokens=new_tokens,
                             min_new_tokens=new_tokens, do_sample=False, pad_token_id=0)
        total = time.perf_counter() - start
    generated = out.shape[1] - ids.shape[1]
    return generated / (total - prefill)


def specbench_decode(preset: str, new_tokens: int, binary: str) -> float:
    out = subprocess.run([binary, "generate", "--model", preset, "--prompt", PROMPT,
                          "--max-new-tokens", str(new_tokens)], capture_output=True, text=True, check=True)
    return float(re.search(r"new tokens at ([0-9.]+) tokens/s", out.stderr).group(1))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("preset", choices=sorted(PRESETS))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--new-tokens", type=int, default=16)
    ap.add_argument("--specbench", default="target/release/specbench")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    ours = specbench_decode(args.preset, args.new_tokens, args.specbench)
    theirs = torch_decode(args.preset, args.new_tokens)
    print(f"{args.preset}, f32, {args.new_tokens} new tokens after a 44-token prompt, {args.threads} threads")
    print(f"specbench ndarray: {ours:.3f} tokens/s")
    print(f"torch {torch.__version__} + transformers: {theirs:.3f} tokens/s")
    print(f"ratio specbench / torch: {ours / theirs:.2f}")


if __name__ == "__main__":
    main()
