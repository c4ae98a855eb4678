#!/usr/bin/env python3
"""Build the tiny reference checkpoints and transformers' outputs that the parity tests read.

Pinned: torch==2.5.1, transformers==4.46.3, tokenizers (as transformers pins it).
    pip install torch==2.5.1 transformers==4.46.3
    python3 scripts/make_fixtures.py            # writes tests/fixtures/

Everything is seeded, so re-running reproduces the committed files bit for bit on the same
library versions. CI never runs this: the outputs are committed.
"""
import json
import os
import shutil

import torch
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM

OUT = os.path.join(os.path.dirname(__file__), "..", "tests", "fixtures")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]

# A small corpus written for this project; the tokenizer only needs some merges to be realistic.
CORPUS = """
A small draft model proposes a few tokens and a large target model checks them in one pass.
Speculative decoding keeps the target distribution exactly, by modified rejection sampling.
The quick brown fox jumps over the lazy dog while the cat sleeps in the warm afternoon sun.
def add(a, b):
    return a + b
for i in range(10):
    print(i * i)
Translation, summarization, question answering and math reasoning are common tasks.
""" * 20


def train_tokenizer(vocab_size: int) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=SPECIALS,
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tok.train_from_iterator(CORPUS.splitlines(), trainer=trainer)
    bos = tok.token_to_id(SPECIALS[0])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIALS[0]} $A", special_tokens=[(SPECIALS[0], bos)]
    )
    return tok


def build_model(cfg: LlamaConfig, seed: int) -> LlamaForCausalLM:
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).eval()
    # Norm weights start at 1.0; perturb them so a loader that skips them fails parity.
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "norm" in name:
                p.add_(0.1 * torch.randn_like(p))
    return model


@torch.no_grad()
def record_reference(model_dir: str, tok: Tokenizer, prompt_text: str, seed: int) -> dict:
    # Reload from disk in f32: bf16 checkpoints are then compared on the very weights we load.
    model = LlamaForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32).eval()
    vocab = model.config.vocab_size
    g = torch.Generator().manual_seed(seed)
    tokens = torch.randint(2, tok.get_vocab_size(), (16,), generator=g).tolist()
    logits = model(torch.tensor([tokens])).logits[0]

    prompt_ids = tok.encode(prompt_text).ids
    # An explicit mask: otherwise generate() infers padding from pad_token_id and would hide
    # any prompt token that shares its id.
    ids = torch.tensor([prompt_ids])
    out = model.generate(
        ids,
        attention_mask=torch.ones_like(ids),
        max_new_tokens=32,
        do_sample=False,
        eos_token_id=None,
        pad_token_id=tok.token_to_id(SPECIALS[1]),
    )[0].tolist()
    continuation = out[len(prompt_ids):]

    # The smallest top-1/top-2 gap along the greedy path: a tiny gap would make parity fragile.
    full = model(torch.tensor([out])).logits[0, len(prompt_ids) - 1 : -1]
    top2 = full.topk(2, dim=-1).values
    min_gap = (top2[:, 0] - top2[:, 1]).min().item()
    assert min_gap > 1e-3, f"greedy path has a near tie ({min_gap}); pick another seed"
    return {
        "vocab_size": vocab,
        "tokens": tokens,
        "logits": logits.flatten().tolist(),
        "prompt": prompt_text,
        "prompt_ids": prompt_ids,
        "greedy_continuation": continuation,
        "greedy_min_top2_gap": min_gap,
        "torch": torch.__version__,
        "transformers": transformers.__version__,
    }


def write_fixture(name: str, cfg: LlamaConfig, dtype, seed: int, tok: Tokenizer, shard: str | None):
    path = os.path.join(OUT, name)
    shutil.rmtree(path, ignore_errors=True)
    model = build_model(cfg, seed).to(dtype)
    kwargs = {"safe_serialization": True}
    if shard:
        kwargs["max_shard_size"] = shard
    model.save_pretrained(path, **kwargs)
    # generation_config.json is transformers' own; specbench reads config.json only.
    os.remove(os.path.join(path, "generation_config.json"))
    tok.save(os.path.join(path, "tokenizer.json"))
    ref = record_reference(path, tok, "The quick brown fox", seed)
    with open(os.path.join(OUT, f"{name}.reference.json"), "w") as f:
        json.dump(ref, f)
    print(f"{name}: vocab {ref['vocab_size']}, greedy gap {ref['greedy_min_top2_gap']:.4f}")


def main():
    os.makedirs(OUT, exist_ok=True)
    tok = train_tokenizer(320)
    vocab = tok.get_vocab_size()
    bos, eos = tok.token_to_id(SPECIALS[0]), tok.token_to_id(SPECIALS[1])
    common = dict(vocab_size=vocab, bos_token_id=bos, eos_token_id=eos, max_position_embeddings=256,
                  attention_bias=False, mlp_bias=False, hidden_act="silu", initializer_range=0.15)

    # GQA, tied embeddings, llama3 rope scaling with an original context short enough that all
    # three frequency bands (kept, interpolated, scaled) occur at head_dim 16.
    gqa = LlamaConfig(hidden_size=64, intermediate_size=160, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
                      rope_theta=10000.0, rms_norm_eps=1e-5,
                      rope_scaling={"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                    "high_freq_factor": 4.0, "original_max_position_embeddings": 64},
                      **common)
    write_fixture("tiny-gqa", gqa, torch.float32, seed=1, tok=tok, shard=None)

    # Untied, no rope scaling, head_dim (16) not hidden/heads (12), bf16 storage, sharded files.
    untied = LlamaConfig(hidden_size=48, intermediate_size=112, num_hidden_layers=3,
                         num_attention_heads=4, num_key_value_heads=4, head_dim=16,
                         tie_word_embeddings=False, rope_theta=500000.0, rms_norm_eps=1e-6,
                         **common)
    write_fixture("tiny-untied-bf16", untied, torch.bfloat16, seed=2, tok=tok, shard="100KB")


if __name__ == "__main__":
    main()
