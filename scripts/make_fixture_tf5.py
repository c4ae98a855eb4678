#!/usr/bin/env python3
"""Build the transformers-5 fixture: a tiny Llama saved by transformers 5, whose config.json holds
`rope_parameters` (rope_theta inside it, a `linear` rope type) and `dtype` instead of 4.x's
`rope_theta` / `rope_scaling` / `torch_dtype`, with transformers' own outputs to test against.

Pinned: torch==2.15.0, transformers==5.24.0 (what `pip install torch transformers` gives today).
    python3 scripts/make_fixture_tf5.py      # writes tests/fixtures/tiny-tf5{,.reference.json}

Seeded: re-running reproduces the committed files on the same library versions. CI never runs it.
"""
import json
import os
import shutil
import sys

import torch
import transformers
from transformers import LlamaConfig

sys.path.insert(0, os.path.dirname(__file__))
from make_fixtures import OUT, SPECIALS, build_model, record_reference, train_tokenizer  # noqa: E402

NAME = "tiny-tf5"


def main():
    assert transformers.__version__.startswith("5."), "this fixture is transformers 5's format"
    tok = train_tokenizer(320)
    cfg = LlamaConfig(
        vocab_size=tok.get_vocab_size(), bos_token_id=tok.token_to_id(SPECIALS[0]),
        eos_token_id=tok.token_to_id(SPECIALS[1]), max_position_embeddings=256,
        hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, tie_word_embeddings=True, rms_norm_eps=1e-5, initializer_range=0.15,
        # Far from the 10000 that a reader ignoring rope_parameters would fall back to, and a
        # linear rope type, which the 4.x fixtures do not have.
        rope_parameters={"rope_type": "linear", "rope_theta": 500.0, "factor": 2.0},
    )
    path = os.path.join(OUT, NAME)
    shutil.rmtree(path, ignore_errors=True)
    model = build_model(cfg, seed=4)
    model.save_pretrained(path)
    os.remove(os.path.join(path, "generation_config.json"))
    tok.save(os.path.join(path, "tokenizer.json"))
    with open(os.path.join(path, "config.json")) as f:
        saved = json.load(f)
    assert "rope_parameters" in saved and "rope_theta" not in saved, saved
    ref = record_reference(path, tok, "The quick brown fox", seed=4)
    with open(os.path.join(OUT, f"{NAME}.reference.json"), "w") as f:
        json.dump(ref, f)
    print(f"{NAME}: torch {torch.__version__}, transformers {transformers.__version__}, "
          f"greedy gap {ref['greedy_min_top2_gap']:.4f}")


if __name__ == "__main__":
    main()
