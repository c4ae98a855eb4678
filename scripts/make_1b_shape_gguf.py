#!/usr/bin/env python3
"""Writes a GGUF file of Llama-3.2-1B's shape with random weights, for timing both engines on a
model larger than the last-level cache (no 1B checkpoint is reachable here).

    python3 scripts/make_1b_shape_gguf.py OUT.gguf [--from models/derived/smollm2-f32.gguf]

The body is Llama 3.2 1B's: 16 layers, hidden 2048, MLP 8192, 32 query and 8 key/value heads of
64, RoPE base 500000, tied embeddings. The vocabulary and tokenizer are copied from the SmolLM2
file (49152 tokens, so the head is 49152 × 2048 where Llama 3.2's is 128256 × 2048: about 0.97B
parameters instead of 1.24B); llama.cpp needs a real tokenizer to load a file, and timing does
not depend on what the tokens mean. Weights are N(0, 0.02) in f16, norms 1; quantize the file
with `llama-quantize OUT.gguf OUT-q8_0.gguf q8_0` (and q4_0) for the quantized shapes.

Needs numpy and llama.cpp's gguf-py (`PYTHONPATH=.llamacpp/src/gguf-py`, from
scripts/build_llamacpp.sh, or `pip install gguf`).
"""

import argparse
from pathlib import Path

import numpy as np

try:
    import gguf
except ImportError:
    import sys

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / ".llamacpp/src/gguf-py"))
    import gguf

HIDDEN, MLP, LAYERS, HEADS, KV_HEADS, HEAD_DIM = 2048, 8192, 16, 32, 8, 64


def copy_tokenizer(source: Path, writer: "gguf.GGUFWriter") -> int:
    """Copies every `tokenizer.*` key of `source`; returns its vocabulary size."""
    reader = gguf.GGUFReader(source)
    vocab = 0
    for name, field in reader.fields.items():
        if not name.startswith("tokenizer."):
            continue
        value = field.contents()
        sub_type = field.types[-1] if field.types[0] == gguf.GGUFValueType.ARRAY else None
        writer.add_key_value(name, value, field.types[0], sub_type=sub_type)
        if name == "tokenizer.ggml.tokens":
            vocab = len(value)
    if vocab == 0:
        raise SystemExit(f"{source}: no tokenizer.ggml.tokens")
    return vocab


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", type=Path)
    parser.add_argument("--from", dest="source", type=Path, default=Path("models/derived/smollm2-f32.gguf"))
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    writer = gguf.GGUFWriter(args.out, "llama")
    writer.add_name("random Llama-3.2-1B shape (SmolLM2 vocabulary)")
    vocab = copy_tokenizer(args.source, writer)
    writer.add_context_length(8192)
    writer.add_embedding_length(HIDDEN)
    writer.add_block_count(LAYERS)
    writer.add_feed_forward_length(MLP)
    writer.add_head_count(HEADS)
    writer.add_head_count_kv(KV_HEADS)
    writer.add_rope_dimension_count(HEAD_DIM)
    writer.add_rope_freq_base(500000.0)
    writer.add_layer_norm_rms_eps(1e-5)
    writer.add_vocab_size(vocab)
    writer.add_file_type(gguf.LlamaFileType.MOSTLY_F16)

    rng = np.random.default_rng(args.seed)

    def weight(rows: int, cols: int) -> np.ndarray:
        return (rng.standard_normal((rows, cols), dtype=np.float32) * 0.02).astype(np.float16)

    def norm() -> np.ndarray:
        return np.ones(HIDDEN, dtype=np.float32)

    writer.add_tensor("token_embd.weight", weight(vocab, HIDDEN))
    for layer in range(LAYERS):
        block = f"blk.{layer}"
        writer.add_tensor(f"{block}.attn_norm.weight", norm())
        writer.add_tensor(f"{block}.attn_q.weight", weight(HEADS * HEAD_DIM, HIDDEN))
        writer.add_tensor(f"{block}.attn_k.weight", weight(KV_HEADS * HEAD_DIM, HIDDEN))
        writer.add_tensor(f"{block}.attn_v.weight", weight(KV_HEADS * HEAD_DIM, HIDDEN))
        writer.add_tensor(f"{block}.attn_output.weight", weight(HIDDEN, HEADS * HEAD_DIM))
        writer.add_tensor(f"{block}.ffn_norm.weight", norm())
        writer.add_tensor(f"{block}.ffn_gate.weight", weight(MLP, HIDDEN))
        writer.add_tensor(f"{block}.ffn_up.weight", weight(MLP, HIDDEN))
        writer.add_tensor(f"{block}.ffn_down.weight", weight(HIDDEN, MLP))
    writer.add_tensor("output_norm.weight", norm())

    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()
    print(f"{args.out}: {args.out.stat().st_size / 2**30:.2f} GiB")


if __name__ == "__main__":
    main()
