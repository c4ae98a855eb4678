#!/usr/bin/env python3
"""Writes tests/fixtures/eagle3-specforge: a small EAGLE-3 head built and run by SpecForge's own
`LlamaForCausalLMEagle3` (specforge 0.2.0 from PyPI), as the reference the `eagle3` drafter's
head is held to (tests/eagle3.rs).

The head (hidden 64, 4 heads of 16, 2 KV heads, intermediate 96, vocabulary 320, draft vocabulary
200, target hidden 48) has SpecForge's initialisation with seeded norms and `d2t`; it is saved in
SpecForge's checkpoint names, `embed_tokens` included. reference.json holds random fused target
features [7, 3 · 48], token ids, and SpecForge's outputs for them in one causal pass from position
0: the layer's output before `norm` (the features the next draft reads) and `lm_head(norm(·))`
for every row.

    pip install specforge==0.2.0 --no-deps   # its draft model needs only torch and transformers
    python3 scripts/make_eagle3_fixture.py
"""

import json
from pathlib import Path

import torch
from safetensors.torch import save_file
from specforge.modeling.draft.llama3_eagle import LlamaForCausalLMEagle3, prepare_decoder_attention_mask
from transformers import LlamaConfig

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "tests/fixtures/eagle3-specforge"
ROWS = 7


def main():
    torch.manual_seed(0)
    config = LlamaConfig(
        hidden_size=64, intermediate_size=96, num_hidden_layers=1, num_attention_heads=4, num_key_value_heads=2,
        head_dim=16, vocab_size=320, max_position_embeddings=256, rms_norm_eps=1e-5, rope_theta=10000.0,
        hidden_act="silu", tie_word_embeddings=False, pad_token_id=0, initializer_range=0.2,
    )
    config.draft_vocab_size = 200
    config.target_hidden_size = 48
    model = LlamaForCausalLMEagle3(config).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.copy_(1.0 + 0.2 * torch.randn_like(p))
        # Draft token d is target token 3d/2 (d2t holds the offsets).
        model.d2t.copy_(torch.arange(200) * 3 // 2 - torch.arange(200))
        model.t2d.zero_()
        model.t2d[torch.arange(200) * 3 // 2] = True

        features = torch.randn(1, ROWS, 3 * 48)
        ids = torch.randint(0, 320, (1, ROWS))
        mask = prepare_decoder_attention_mask(torch.ones(1, ROWS, dtype=torch.bool), (1, ROWS), features, 0)
        fused = model.project_hidden_states(features)
        out = model.backbone(model.embed_input_ids(ids), fused, None, mask, torch.arange(ROWS).unsqueeze(0))
        logits = model.compute_logits(out)

    OUT.mkdir(parents=True, exist_ok=True)
    save_file({k: v.contiguous() for k, v in model.state_dict().items()}, OUT / "model.safetensors")
    saved = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": 64, "intermediate_size": 96, "num_hidden_layers": 1, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 320, "max_position_embeddings": 256,
        "rms_norm_eps": 1e-5, "rope_theta": 10000.0, "tie_word_embeddings": False, "pad_token_id": 0,
        "draft_vocab_size": 200, "target_hidden_size": 48, "torch_dtype": "float32",
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": [1, 2, 3]},
    }
    (OUT / "config.json").write_text(json.dumps(saved, indent=2) + "\n")
    reference = {
        "specforge": "0.2.0",
        "features": features[0].flatten().tolist(),
        "ids": ids[0].tolist(),
        "output": out[0].flatten().tolist(),
        "logits": logits[0].flatten().tolist(),
    }
    (OUT / "reference.json").write_text(json.dumps(reference) + "\n")
    print(f"wrote {OUT}: {sorted(p.name for p in OUT.iterdir())}")


if __name__ == "__main__":
    main()
