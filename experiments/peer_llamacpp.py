#!/usr/bin/env python3
"""Decode and prefill speed of specbench and llama.cpp on the same GGUF files, same sitting.

For each file, `repeats` rounds alternate one specbench run (`generate --ban-eos`: a prompt of
about 64 tokens, then 128 new tokens, flex backend, 2 threads) with llama-bench on the same work
(2 threads): the prompt less its last token as one prefill (`-p N`), and 128 new tokens decoded
after N cached positions (`-p 0 -n 128 -d N`), as specbench's decode loop feeds the prompt's last
token first. (llama-bench's plain tg128 decodes from an empty cache: on the embedded target, where
attention over ~190 cached positions is a third of a step, that is not the same work.) The rounds
alternate, so drift of the machine hits both alike. Writes DIR/decode.csv (one row per
engine, file and test, with the median and range over the rounds), DIR/machine.json and
DIR/summary.md. Run on an idle machine: llama.cpp collapses under CPU contention.

With --presets, also the shapes of `random:PRESET` in q8_0 and q4_0: a GGUF of random weights
with those shapes (made here, every tensor in the one type, no vocabulary), which both engines
run (specbench reads a vocabulary-less file's text as bytes).

The files: the embedded target as f32/bf16/q8_0/q4_0/Q4_K_M GGUF (tests/fixtures/tiny-gguf, plus
an f32 copy made by llama-quantize) and SmolLM2-135M-Instruct as shipped (q4_1) and requantized by
llama-quantize to q8_0, q4_0, Q4_K_M, q5_0, q5_1, f16 and f32 (from the q4_1 weights: the same
speed as the original precision, not the same quality; SmolLM2's width, 576, is no multiple of the
K-quants' 256, so llama-quantize keeps only the 1536-wide down projections in K-quants and falls
back to q5_0/q8_0 elsewhere). llama.cpp comes from scripts/build_llamacpp.sh, SmolLM2 from
scripts/fetch_smollm2.sh.

    python3 experiments/peer_llamacpp.py --out results/decode-llamacpp/$(date +%F) [--repeats 5]
"""

import argparse
import csv
import json
import os
import platform
import statistics
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".llamacpp/bin"
SPECBENCH = ROOT / "target/release/specbench"
# Copies made by llama-quantize: git-ignored, remade when absent.
DERIVED = ROOT / "models/derived"
SMOL = ROOT / "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"
TINY = ROOT / "tests/fixtures/tiny-gguf"
THREADS = 2
NEW_TOKENS = 128
# About 64 tokens with SmolLM2's tokenizer (126 with the embedded pair's 2048-entry one); llama.cpp is
# given specbench's own count.
PROMPT = (
    "The history of the printing press begins in the fifteenth century, when Johannes Gutenberg "
    "combined movable metal type, oil-based ink and a wooden press adapted from those used for "
    "wine. Within fifty years, presses in more than two hundred cities had printed millions of "
    "books, and the price of a book fell"
)


def machine_facts():
    """The CPU (model, family, the vector extensions that decide kernel paths), how llama.cpp was
    built for it, and which kernel path specbench takes: every figure holds for this CPU."""
    info = {}
    for line in open("/proc/cpuinfo"):
        key, _, value = line.partition(":")
        info.setdefault(key.strip(), value.strip())
    flags = set(info.get("flags", "").split())
    wanted = ["avx2", "fma", "f16c", "avx512f", "avx512vl", "avx512_vnni", "avx512_bf16", "avx_vnni", "amx_tile"]
    features = BIN / "FEATURES"
    runtime = subprocess.run([SPECBENCH, "generate", "--model", "random:custom", "--prompt", "a", "--max-new-tokens", "1",
                              "--backend", "flex", "--json"], capture_output=True, text=True)
    kernels = json.loads(runtime.stdout)["runtime"].split("; ")[-1] if runtime.returncode == 0 else "unknown"
    return {
        "cpu": f"{info.get('model name', '')} (family {info.get('cpu family')}, model {info.get('model')})",
        "extensions": [f for f in wanted if f in flags],
        "cores": os.cpu_count(), "platform": platform.platform(), "threads": THREADS,
        "llama.cpp": "0c1e57098bba (llama-cpp-python 0.3.36 sdist), built with "
                     + (features.read_text().strip() if features.exists() else "unrecorded options"),
        "specbench": subprocess.run(["git", "rev-parse", "--short", "HEAD"], capture_output=True, text=True, cwd=ROOT).stdout.strip(),
        "specbench kernels": kernels,
    }


def quantize(source, target, kind):
    if not target.exists():
        target.parent.mkdir(parents=True, exist_ok=True)
        subprocess.run(
            [str(BIN / "llama-quantize"), "--allow-requantize", str(source), str(target), kind],
            check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
        )
    return target


def files(presets):
    """(model, weights, llama.cpp's file, what specbench runs, specbench's --dtype)."""
    out = [
        ("tiny", "f32", quantize(TINY / "target-bf16.gguf", DERIVED / "tiny-f32.gguf", "F32")),
        ("tiny", "bf16", TINY / "target-bf16.gguf"),
        ("tiny", "q8_0", TINY / "target-q8_0.gguf"),
        ("tiny", "q4_0", TINY / "target-q4_0.gguf"),
        ("tiny", "q4_k_m", TINY / "target-q4_k_m.gguf"),
    ]
    if SMOL.exists():
        out += [
            ("smollm2-135m", "f32", quantize(SMOL, DERIVED / "smollm2-f32.gguf", "F32")),
            ("smollm2-135m", "f16", quantize(SMOL, DERIVED / "smollm2-f16.gguf", "F16")),
            ("smollm2-135m", "q8_0", quantize(SMOL, DERIVED / "smollm2-q8_0.gguf", "Q8_0")),
            ("smollm2-135m", "q4_0", quantize(SMOL, DERIVED / "smollm2-q4_0.gguf", "Q4_0")),
            ("smollm2-135m", "q4_k_m", quantize(SMOL, DERIVED / "smollm2-q4_k_m.gguf", "Q4_K_M")),
            ("smollm2-135m", "q5_0", quantize(SMOL, DERIVED / "smollm2-q5_0.gguf", "Q5_0")),
            ("smollm2-135m", "q5_1", quantize(SMOL, DERIVED / "smollm2-q5_1.gguf", "Q5_1")),
            ("smollm2-135m", "q4_1", SMOL),
        ]
    out = [(model, dtype, path, path, "f32") for model, dtype, path in out]
    for preset in presets:
        for kind in ["q8_0", "q4_0"]:
            path = random_gguf(preset, kind)
            out.append((f"random:{preset}", kind, path, path, "f32"))
    return out


# Shapes of `random:PRESET` (src/model/config.rs), for llama.cpp: random f16 weights (normal, std
# 0.02; norms 1) in a GGUF with no vocabulary, then llama-quantize --pure, so that every tensor,
# the tied embedding included, is in the one type, as `specbench --dtype` quantizes them.
PRESETS = {
    "llama3.2-1b": dict(hidden=2048, layers=16, heads=32, kv_heads=8, ffn=8192, vocab=128256, tied=True),
    "llama3.1-8b": dict(hidden=4096, layers=32, heads=32, kv_heads=8, ffn=14336, vocab=128256, tied=False),
}


def random_gguf(preset, kind):
    target = DERIVED / f"random-{preset}-{kind}.gguf"
    if target.exists():
        return target
    # Only making the files needs numpy and gguf (`pip install numpy gguf`).
    import numpy as np
    from gguf import GGUFWriter

    dims = PRESETS[preset]
    f16 = DERIVED / f"random-{preset}-f16.gguf"
    if not f16.exists():
        DERIVED.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        writer = GGUFWriter(str(f16), "llama")
        h, d = dims["hidden"], dims["hidden"] // dims["heads"]
        writer.add_block_count(dims["layers"])
        writer.add_context_length(8192)
        writer.add_embedding_length(h)
        writer.add_feed_forward_length(dims["ffn"])
        writer.add_head_count(dims["heads"])
        writer.add_head_count_kv(dims["kv_heads"])
        writer.add_rope_freq_base(500000.0)
        writer.add_layer_norm_rms_eps(1e-5)
        writer.add_vocab_size(dims["vocab"])
        writer.add_tokenizer_model("none")
        # (name, shape, norm?) in file order; written one tensor at a time, so that the 8B
        # shape's 16 GB never sit in memory at once.
        kv = dims["kv_heads"] * d
        tensors = [("token_embd.weight", (dims["vocab"], h), False), ("output_norm.weight", (h,), True)]
        if not dims["tied"]:
            tensors.append(("output.weight", (dims["vocab"], h), False))
        for i in range(dims["layers"]):
            for name, shape in [("attn_q", (h, h)), ("attn_k", (kv, h)), ("attn_v", (kv, h)), ("attn_output", (h, h)),
                                ("ffn_gate", (dims["ffn"], h)), ("ffn_up", (dims["ffn"], h)), ("ffn_down", (h, dims["ffn"]))]:
                tensors.append((f"blk.{i}.{name}.weight", shape, False))
            tensors += [(f"blk.{i}.attn_norm.weight", (h,), True), (f"blk.{i}.ffn_norm.weight", (h,), True)]
        for name, shape, norm in tensors:
            dtype = np.dtype(np.float32 if norm else np.float16)
            writer.add_tensor_info(name, shape, dtype, int(np.prod(shape)) * dtype.itemsize)
        writer.write_header_to_file()
        writer.write_kv_data_to_file()
        writer.write_ti_data_to_file()
        for name, shape, norm in tensors:
            if norm:
                writer.write_tensor_data(np.ones(shape, dtype=np.float32))
            else:
                writer.write_tensor_data((rng.standard_normal(shape, dtype=np.float32) * 0.02).astype(np.float16))
        writer.close()
    subprocess.run(
        [str(BIN / "llama-quantize"), "--pure", "--output-tensor-type", kind, "--token-embedding-type", kind,
         str(f16), str(target), kind.upper()],
        check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
    )
    return target


def measured(command, env=None):
    """Runs `command` under /usr/bin/time: its stdout and peak resident memory in MB."""
    done = subprocess.run(["/usr/bin/time", "-f", "MAXRSS %M", *command], check=True, capture_output=True,
                          text=True, env=env)
    rss_kb = next(int(line.split()[1]) for line in reversed(done.stderr.splitlines()) if line.startswith("MAXRSS"))
    return done.stdout, rss_kb / 1024


def llama_bench(path, cached):
    """One round: tokens/s of a `cached`-token prefill and of 128 tokens decoded after `cached`
    positions, and the larger peak resident MB of the two runs."""
    result, peak = {}, 0.0
    for test, flags in [("prefill", ["-p", str(cached), "-n", "0"]),
                        ("decode", ["-p", "0", "-n", str(NEW_TOKENS), "-d", str(cached)])]:
        out, rss = measured([str(BIN / "llama-bench"), "-m", str(path), "-t", str(THREADS), *flags, "-r", "1", "-o", "json"])
        (row,) = json.loads(out)
        result[test], peak = row["avg_ts"], max(peak, rss)
    result["rss_mb"] = peak
    return result


def specbench(path, dtype="f32"):
    out, rss = measured(
        [str(SPECBENCH), "generate", "--model", str(path), "--prompt", PROMPT, "--max-new-tokens",
         str(NEW_TOKENS), "--ban-eos", "--backend", "flex", "--dtype", dtype, "--json"],
        env={**os.environ, "RAYON_NUM_THREADS": str(THREADS)},
    )
    report = json.loads(out)
    # Prefill feeds all of the prompt but its last token, which the first decode step feeds.
    cached = len(report["prompt_ids"]) - 1
    return {
        "prefill": cached / report["timings"]["prefill"],
        "decode": report["decode_tokens_per_s"],
        "rss_mb": rss,
        "cached": cached,
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--presets", default="", help="comma-separated random presets to add, e.g. llama3.2-1b")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    presets = [p for p in args.presets.split(",") if p]
    models = files(presets)
    rows = []
    for model, dtype, path, ours, our_dtype in models:
        samples = {e: {"prefill": [], "decode": [], "rss_mb": []} for e in ["llama.cpp", "specbench"]}
        # A first specbench run, not counted, says how many positions its prompt caches.
        cached = specbench(ours, our_dtype)["cached"]
        for _ in range(args.repeats):
            for engine, run in [("llama.cpp", lambda: llama_bench(path, cached)), ("specbench", lambda: specbench(ours, our_dtype))]:
                for test, value in run().items():
                    if test != "cached":
                        samples[engine][test].append(value)
        for engine, tests in samples.items():
            rss = round(statistics.median(tests.pop("rss_mb")))
            for test, values in tests.items():
                rows.append({
                    "engine": engine, "model": model, "dtype": dtype,
                    "file": str(path.relative_to(ROOT)) if engine == "llama.cpp" else str(ours).replace(str(ROOT) + "/", ""),
                    "threads": THREADS, "test": test,
                    "tokens": NEW_TOKENS if test == "decode" else cached, "cached": cached,
                    "tokens_per_s": round(statistics.median(values), 2),
                    "min": round(min(values), 2), "max": round(max(values), 2), "repeats": len(values),
                    "max_rss_mb": rss,
                })
        print(model, dtype, {e: round(statistics.median(t["decode"]), 1) for e, t in samples.items()}, flush=True)
    with open(args.out / "decode.csv", "w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    machine = machine_facts()
    (args.out / "machine.json").write_text(json.dumps(machine, indent=1) + "\n")
    cpu = machine["cpu"]
    lines = [f"# specbench vs llama.cpp, {THREADS} threads, same sitting ({cpu}; specbench {machine['specbench kernels']})", "",
             "| model | weights | test | cached positions | llama.cpp tok/s | specbench tok/s | ratio | peak RSS MB (llama.cpp / specbench) |",
             "|---|---|---|---|---|---|---|---|"]
    index = {(r["engine"], r["model"], r["dtype"], r["test"]): r for r in rows}
    for model, dtype, *_ in models:
        for test in ["decode", "prefill"]:
            peer, ours = index[("llama.cpp", model, dtype, test)], index[("specbench", model, dtype, test)]
            lines.append(
                f"| {model} | {dtype} | {test} | {ours['cached']} | {peer['tokens_per_s']} ({peer['min']}–{peer['max']}) | "
                f"{ours['tokens_per_s']} ({ours['min']}–{ours['max']}) | {ours['tokens_per_s'] / peer['tokens_per_s']:.2f}× | "
                f"{peer['max_rss_mb']} / {ours['max_rss_mb']} |"
            )
    (args.out / "summary.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
