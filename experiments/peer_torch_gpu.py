#!/usr/bin/env python3
"""transformers on the GPU beside specbench's wgpu: the same random-weight shapes, the same
measurement as `specbench bench forward` (median time of one forward of 1..N tokens after a
256-token cache, the cache cropped back after each), rows in the same forward.csv schema with
engine = transformers-eager / transformers-compile. Where torch, CUDA or the time is missing, a
row in peers.csv says which peer was skipped and why; nothing here fails the suite.

    python3 experiments/peer_torch_gpu.py --out results/gpu/RUN --models random:llama3.2-1b \
        --dtypes f16 --context 256 --max-tokens 16 --repeats 5 [--compile]
"""
import argparse
import csv
import os
import sys
import time

PRESETS = {
    # hidden, intermediate, layers, heads, kv_heads, head_dim, tied, rope factor
    "random:llama3.2-1b": (2048, 8192, 16, 32, 8, 64, True, 32.0),
    "random:llama3.2-3b": (3072, 8192, 28, 24, 8, 128, True, 32.0),
    "random:llama3.1-8b": (4096, 14336, 32, 32, 8, 128, False, 8.0),
}
FORWARD_COLUMNS = ["engine", "model", "backend", "dtype", "cache_len", "tokens", "seconds", "ratio_to_one",
                   "weight_bytes"]


def append(path, columns, rows):
    new = not os.path.exists(path)
    with open(path, "a", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=columns)
        if new:
            writer.writeheader()
        writer.writerows(rows)


def skip(out, peer, why):
    append(os.path.join(out, "peers.csv"), ["peer", "status", "why"], [dict(peer=peer, status="skipped", why=why)])
    print(f"{peer}: skipped ({why})")


def build(torch, transformers, name, dtype):
    hidden, inter, layers, heads, kv, head_dim, tied, factor = PRESETS[name]
    config = transformers.LlamaConfig(
        vocab_size=128256, hidden_size=hidden, intermediate_size=inter, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv, head_dim=head_dim, tie_word_embeddings=tied,
        max_position_embeddings=131072, rms_norm_eps=1e-5, rope_theta=500000.0,
        rope_scaling={"rope_type": "llama3", "factor": factor, "low_freq_factor": 1.0, "high_freq_factor": 4.0,
                      "original_max_position_embeddings": 8192})
    torch.manual_seed(0)
    previous = torch.get_default_dtype()
    torch.set_default_dtype(dtype)
    with torch.device("cuda"):
        model = transformers.LlamaForCausalLM(config).eval()
    torch.set_default_dtype(previous)
    return model


def forward_curve(torch, transformers, model, context, max_tokens, repeats, forward):
    ids = torch.randint(3, 128000, (1, context + max_tokens), device="cuda")
    cache = transformers.DynamicCache()
    with torch.no_grad():
        forward(ids[:, :context], cache)
        medians = []
        for tokens in range(1, max_tokens + 1):
            feed = ids[:, context:context + tokens]
            times = []
            for rep in range(repeats + 1):
                torch.cuda.synchronize()
                start = time.perf_counter()
                forward(feed, cache)
                torch.cuda.synchronize()
                if rep > 0:
                    times.append(time.perf_counter() - start)
                cache.crop(context - cache.get_seq_length())  # negative: drop that many (4.x and 5.x)
            times.sort()
            medians.append(times[len(times) // 2])
    return medians


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", required=True)
    parser.add_argument("--models", default="random:llama3.2-1b,random:llama3.1-8b")
    parser.add_argument("--dtypes", default="f16")
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--max-tokens", type=int, default=16)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--compile", action="store_true", help="also torch.compile (slow to start)")
    args = parser.parse_args()
    os.makedirs(args.out, exist_ok=True)
    try:
        import torch
        import transformers
    except ImportError as e:
        skip(args.out, "transformers", f"torch/transformers not importable: {e}")
        return
    if not torch.cuda.is_available():
        skip(args.out, "transformers", "torch sees no CUDA device")
        return
    dtypes = {"f16": torch.float16, "bf16": torch.bfloat16, "f32": torch.float32}
    gpu = torch.cuda.get_device_name(0)
    print(f"torch {torch.__version__}, transformers {transformers.__version__}, {gpu}")
    engines = [("transformers-eager", None)] + ([("transformers-compile", "compile")] if args.compile else [])
    for name in args.models.split(","):
        if name not in PRESETS:
            skip(args.out, f"transformers {name}", "no such preset here")
            continue
        for dtype_name in args.dtypes.split(","):
            try:
                model = build(torch, transformers, name, dtypes[dtype_name])
            except Exception as e:  # out of memory, an unknown dtype: record and go on
                skip(args.out, f"transformers {name} {dtype_name}", f"{type(e).__name__}: {e}")
                continue
            weight_bytes = sum(p.numel() * p.element_size() for p in model.parameters())
            for engine, mode in engines:
                call = model if mode is None else torch.compile(model, dynamic=True)

                def forward(ids, cache, call=call):
                    return call(input_ids=ids, past_key_values=cache, use_cache=True)

                try:
                    medians = forward_curve(torch, transformers, model, args.context, args.max_tokens,
                                            args.repeats, forward)
                except Exception as e:
                    skip(args.out, f"{engine} {name} {dtype_name}", f"{type(e).__name__}: {e}")
                    continue
                rows = [dict(engine=engine, model=name, backend=f"cuda ({gpu})", dtype=dtype_name,
                             cache_len=args.context, tokens=i + 1, seconds=s, ratio_to_one=s / medians[0],
                             weight_bytes=weight_bytes) for i, s in enumerate(medians)]
                append(os.path.join(args.out, "forward.csv"), FORWARD_COLUMNS, rows)
                print(f"{engine} {name} {dtype_name}: {medians[0] * 1e3:.2f} ms/token, "
                      f"verify of 9 = {medians[min(8, len(medians) - 1)] / medians[0]:.2f}x one token")
            del model
            torch.cuda.empty_cache()


if __name__ == "__main__":
    sys.exit(main())
