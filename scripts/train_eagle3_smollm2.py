#!/usr/bin/env python3
"""Trains an EAGLE-3 head for SmolLM2-135M-Instruct on the CPU, from the target's own generations.

The head is EAGLE-3's draft network (Li et al. 2025) in the SpecForge `LlamaForCausalLMEagle3`
checkpoint format, which specbench's `eagle3` drafter and llama.cpp's converter
(`convert_hf_to_gguf.py --target-model-dir`) both read:

- `fc` fuses the target's hidden states entering layers (2, L/2, L-3) (vLLM's default; Hugging
  Face's `hidden_states[l]`) into one feature of the target's width;
- one Llama decoder layer (`midlayer.*`) whose q/k/v read [input_layernorm(embedding of the next
  token); hidden_norm(feature)] and whose residual stream starts at the feature;
- `norm` and `lm_head` over a draft vocabulary of the most frequent target tokens of the training
  data, with `d2t` (target id = draft id + d2t[draft id]) and `t2d` (which target ids it holds).

The embedding is the target's (frozen, not saved: the drafter takes it from the target).

Training-time test: a window is run `--ttt` times; step 0 reads the target's fused features,
step j > 0 the head's own outputs of step j - 1 one position earlier, at the position it would
take while drafting (i + j), attending to step 0's keys causally and to its own earlier steps'
keys at the same row only, as drafting's cache holds them. The loss of step j is the
cross-entropy against the target's distribution (its top 16 tokens in the draft vocabulary,
renormalised) for the token j + 2 ahead, weighted 0.8^j, at positions whose target arg-max is in
the draft vocabulary.

Data: conversations the target writes itself (`self_instruct` of distill_smollm2_draft.py: a
request sampled after its chat template's user header, then its answer), none of them a prompt of
configs/smollm2*.toml.

Writes models/smollm2-eagle3/: config.json, model.safetensors (bf16; d2t int64, t2d bool) and
training.json (data, time, loss curve, held-out accuracy per step).

    python3 scripts/train_eagle3_smollm2.py --dialogues 1600 --steps 1200
"""

import argparse
import json
import math
import random
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F

sys.path.insert(0, str(Path(__file__).resolve().parent))
from distill_smollm2_draft import self_instruct, windows  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
TEACHER_DIR = ROOT / "models/smollm2"
TEACHER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "models/smollm2-eagle3"
TOP = 16


def aux_layers(layers):
    return [2, layers // 2, layers - 3]


def rms_norm(x, weight, eps):
    return weight * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate(x, cos, sin):
    half = x.shape[-1] // 2
    a, b = x[..., :half], x[..., half:]
    return torch.cat([a * cos - b * sin, b * cos + a * sin], -1)


class Head(torch.nn.Module):
    """EAGLE-3's draft network, parameters named as SpecForge saves them."""

    def __init__(self, t, draft_vocab):
        super().__init__()
        h, self.heads, self.kv_heads = t.hidden_size, t.num_attention_heads, t.num_key_value_heads
        self.head_dim, self.eps = h // self.heads, t.rms_norm_eps
        lin = lambda i, o: torch.nn.Linear(i, o, bias=False)  # noqa: E731
        self.fc = lin(3 * h, h)
        self.q_proj, self.k_proj = lin(2 * h, self.heads * self.head_dim), lin(2 * h, self.kv_heads * self.head_dim)
        self.v_proj, self.o_proj = lin(2 * h, self.kv_heads * self.head_dim), lin(self.heads * self.head_dim, h)
        self.gate_proj, self.up_proj = lin(h, t.intermediate_size), lin(h, t.intermediate_size)
        self.down_proj = lin(t.intermediate_size, h)
        ones = lambda: torch.nn.Parameter(torch.ones(h))  # noqa: E731
        self.input_layernorm, self.hidden_norm, self.post_attention_layernorm, self.norm = ones(), ones(), ones(), ones()
        self.lm_head = lin(h, draft_vocab)
        theta = getattr(t, "rope_theta", None) or t.rope_parameters["rope_theta"]
        self.inv_freq = 1.0 / theta ** (torch.arange(0, self.head_dim, 2).float() / self.head_dim)

    def angles(self, positions):
        freqs = positions[:, None].float() * self.inv_freq[None]
        return freqs.cos(), freqs.sin()

    def qkv(self, emb, feature, positions):
        x = torch.cat([rms_norm(emb, self.input_layernorm, self.eps), rms_norm(feature, self.hidden_norm, self.eps)], -1)
        b, s, _ = x.shape
        q = self.q_proj(x).view(b, s, self.heads, self.head_dim)
        k = self.k_proj(x).view(b, s, self.kv_heads, self.head_dim)
        v = self.v_proj(x).view(b, s, self.kv_heads, self.head_dim)
        cos, sin = self.angles(positions)
        cos, sin = cos[None, :, None], sin[None, :, None]
        return rotate(q, cos, sin), rotate(k, cos, sin), v

    def step(self, emb, feature, positions, cache):
        """One training-time-test step over whole windows; `cache` holds the earlier steps' keys
        and values (step 0's first) and gains this step's. Returns the head's output features
        (before its norm)."""
        q, k, v = self.qkv(emb, feature, positions)
        cache.append((k, v))
        group = self.heads // self.kv_heads
        expand = lambda t: t.repeat_interleave(group, dim=2)  # noqa: E731
        k0, v0 = expand(cache[0][0]), expand(cache[0][1])
        scale = 1.0 / math.sqrt(self.head_dim)
        s = q.shape[1]
        causal = torch.ones(s, s, dtype=torch.bool).tril()
        scores = [torch.einsum("bihd,bjhd->bhij", q, k0).masked_fill(~causal, float("-inf")) * scale]
        for kj, _ in cache[1:]:
            scores.append(torch.einsum("bihd,bihd->bhi", q, expand(kj))[..., None] * scale)
        p = torch.cat(scores, -1).softmax(-1)
        out = torch.einsum("bhij,bjhd->bihd", p[..., :s], v0)
        for n, (_, vj) in enumerate(cache[1:]):
            out = out + p[..., s + n].permute(0, 2, 1)[..., None] * expand(vj)
        x = feature + self.o_proj(out.reshape(q.shape[0], s, -1))
        normed = rms_norm(x, self.post_attention_layernorm, self.eps)
        return x + self.down_proj(F.silu(self.gate_proj(normed)) * self.up_proj(normed))

    def logits(self, x):
        return self.lm_head(rms_norm(x, self.norm, self.eps))


@torch.no_grad()
def target_data(teacher, seqs, layers, t2d_ids, batch):
    """Per window: the fused features (bf16) and the target's top tokens in the draft vocabulary
    (draft ids and renormalised probabilities) at every position, plus its arg-max's membership."""
    out = []
    index = torch.full((teacher.config.vocab_size,), -1, dtype=torch.long)
    index[t2d_ids] = torch.arange(len(t2d_ids))
    for i in range(0, len(seqs), batch):
        x = torch.tensor(seqs[i : i + batch])
        o = teacher(x, output_hidden_states=True)
        feats = torch.cat([o.hidden_states[l] for l in layers], -1).to(torch.bfloat16)
        logits = o.logits.float()
        in_vocab = index[logits.argmax(-1)] >= 0
        p, ids = logits[..., t2d_ids].softmax(-1).topk(TOP, -1)
        for j in range(len(x)):
            out.append((x[j], feats[j], ids[j], (p[j] / p[j].sum(-1, keepdim=True)).to(torch.bfloat16), in_vocab[j]))
        print(f"target features: {len(out)}/{len(seqs)} windows", flush=True)
    return out


def ttt_loss(head, embed, batch, depth):
    """Summed weighted loss and per-step arg-max accuracy over a batch of windows."""
    x, feats, ids, p, member = (torch.stack(t) for t in zip(*batch))
    s = x.shape[1]
    feature = head.fc(feats.float())
    cache, total, accuracy = [], 0.0, []
    for j in range(depth):
        # Row i of step j drafts the token at i + j + 2 from the token at i + j + 1.
        n = s - j - 1
        emb = embed(x[:, j + 1 : j + 1 + n])
        cache = [(k[:, :n], v[:, :n]) for k, v in cache]
        out = head.step(emb, feature[:, :n], torch.arange(j, j + n), cache)
        logits = head.logits(out).log_softmax(-1)
        tgt_ids, tgt_p, mask = ids[:, j + 1 : j + 1 + n], p[:, j + 1 : j + 1 + n].float(), member[:, j + 1 : j + 1 + n]
        ce = -(tgt_p * logits.gather(-1, tgt_ids)).sum(-1)
        total = total + 0.8**j * (ce * mask).sum() / mask.sum().clamp(min=1)
        accuracy.append(((logits.argmax(-1) == tgt_ids[..., 0]) & mask).sum().item() / max(1, mask.sum().item()))
        feature = out
    return total, accuracy


def save(head, t2d_ids, t, layers, out):
    """The head in SpecForge's checkpoint format: model.safetensors (bf16; d2t int64, t2d bool) and
    config.json."""
    from safetensors.torch import save_file

    draft_vocab = len(t2d_ids)
    tensors = {
        "fc.weight": head.fc.weight,
        "midlayer.input_layernorm.weight": head.input_layernorm,
        "midlayer.hidden_norm.weight": head.hidden_norm,
        "midlayer.self_attn.q_proj.weight": head.q_proj.weight,
        "midlayer.self_attn.k_proj.weight": head.k_proj.weight,
        "midlayer.self_attn.v_proj.weight": head.v_proj.weight,
        "midlayer.self_attn.o_proj.weight": head.o_proj.weight,
        "midlayer.post_attention_layernorm.weight": head.post_attention_layernorm,
        "midlayer.mlp.gate_proj.weight": head.gate_proj.weight,
        "midlayer.mlp.up_proj.weight": head.up_proj.weight,
        "midlayer.mlp.down_proj.weight": head.down_proj.weight,
        "norm.weight": head.norm,
        "lm_head.weight": head.lm_head.weight,
    }
    tensors = {k: v.detach().to(torch.bfloat16).contiguous() for k, v in tensors.items()}
    tensors["d2t"] = (t2d_ids - torch.arange(draft_vocab)).to(torch.int64)
    t2d = torch.zeros(t.vocab_size, dtype=torch.bool)
    t2d[t2d_ids] = True
    tensors["t2d"] = t2d
    save_file(tensors, out / "model.safetensors", metadata={"format": "pt"})
    theta = getattr(t, "rope_theta", None) or t.rope_parameters["rope_theta"]
    config = {
        "architectures": ["LlamaForCausalLMEagle3"], "model_type": "llama", "hidden_act": "silu",
        "hidden_size": t.hidden_size, "intermediate_size": t.intermediate_size, "num_hidden_layers": 1,
        "num_attention_heads": t.num_attention_heads, "num_key_value_heads": t.num_key_value_heads,
        "head_dim": t.hidden_size // t.num_attention_heads, "rms_norm_eps": t.rms_norm_eps, "rope_theta": theta,
        "max_position_embeddings": t.max_position_embeddings, "vocab_size": t.vocab_size,
        "draft_vocab_size": draft_vocab, "target_hidden_size": t.hidden_size, "tie_word_embeddings": False,
        "bos_token_id": t.bos_token_id, "eos_token_id": t.eos_token_id, "torch_dtype": "bfloat16",
        "eagle_aux_hidden_state_layer_ids": layers,
        "eagle_config": {"eagle_aux_hidden_state_layer_ids": layers, "use_aux_hidden_state": True},
    }
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dialogues", type=int, default=1600, help="conversations the target writes")
    parser.add_argument("--steps", type=int, default=1200)
    parser.add_argument("--ttt", type=int, default=4, help="training-time-test depth")
    parser.add_argument("--draft-vocab", type=int, default=8192)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", type=Path, nargs="*", default=[],
                        help="conversations saved by earlier runs (JSON), used beside --dialogues new ones")
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer
    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    began = time.time()
    tokenizer = AutoTokenizer.from_pretrained(TEACHER_DIR, gguf_file=TEACHER_FILE)
    teacher = AutoModelForCausalLM.from_pretrained(TEACHER_DIR, gguf_file=TEACHER_FILE, dtype=torch.float32).eval()
    # bf16 (AVX512-BF16 where the CPU has it) for the target's generations and features: the
    # features are inputs to a small head, far coarser than bf16's rounding.
    teacher = teacher.to(torch.bfloat16)
    t = teacher.config
    embed = teacher.model.embed_tokens
    embed.weight.requires_grad_(False)
    layers = aux_layers(t.num_hidden_layers)
    out = args.out
    out.mkdir(parents=True, exist_ok=True)
    # The target's config and tokenizer, which llama.cpp's converter reads (--target-model-dir).
    target_dir = ROOT / "models/derived/smollm2-hf"
    t.save_pretrained(target_dir)
    tokenizer.save_pretrained(target_dir)

    conversations = [c for path in args.data for c in json.loads(path.read_text())]
    if args.dialogues:
        generated = self_instruct(teacher, tokenizer, args.dialogues, 64, 48, 160)
        (out / f"conversations-seed{args.seed}.json").write_text(json.dumps(generated))
        conversations += generated
    generated = time.time()
    evaluation = set()
    for config in sorted((ROOT / "configs").glob("smollm2*.jsonl")):
        evaluation |= {json.loads(line)["prompt"].strip() for line in config.read_text().splitlines() if line.strip()}
    texts = [tokenizer.decode(c) for c in conversations]
    overlap = sum(any(p in text for p in evaluation) for text in texts)
    conversations = [c for c, text in zip(conversations, texts) if not any(p in text for p in evaluation)]

    counts = torch.bincount(torch.tensor([i for c in conversations for i in c]), minlength=t.vocab_size)
    t2d_ids = counts.argsort(descending=True)[: args.draft_vocab].sort().values
    coverage = counts[t2d_ids].sum().item() / counts.sum().item()
    print(f"{len(conversations)} conversations ({overlap} dropped for overlapping evaluation prompts); "
          f"draft vocabulary of {args.draft_vocab} covers {coverage:.4f} of their tokens", flush=True)

    seqs = windows(conversations, args.length, rng)
    held = max(4, len(seqs) // 25)
    data = target_data(teacher, seqs, layers, t2d_ids, 16)
    train, test = data[held:], data[:held]
    featured = time.time()

    head = Head(t, args.draft_vocab)
    params = [p for n, p in head.named_parameters()]
    optimizer = torch.optim.AdamW(params, lr=args.lr, betas=(0.9, 0.95), weight_decay=0.0)
    warmup = max(1, args.steps // 20)
    schedule = lambda step: min(1.0, (step + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, step / args.steps)))  # noqa: E731
    curve = []

    def evaluate():
        with torch.no_grad():
            losses, accs = [], []
            for i in range(0, len(test), args.batch):
                loss, acc = ttt_loss(head, embed, test[i : i + args.batch], args.ttt)
                losses.append(loss.item())
                accs.append(acc)
            return sum(losses) / len(losses), [sum(a[j] for a in accs) / len(accs) for j in range(len(accs[0]))]

    for step in range(args.steps):
        for group in optimizer.param_groups:
            group["lr"] = args.lr * schedule(step)
        batch = rng.sample(train, args.batch)
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss, acc = ttt_loss(head, embed, batch, args.ttt)
        optimizer.zero_grad()
        loss.backward()
        torch.nn.utils.clip_grad_norm_(params, 1.0)
        optimizer.step()
        if step % 50 == 0 or step == args.steps - 1:
            entry = {"step": step, "loss": loss.item(), "accuracy": acc, "minutes": (time.time() - featured) / 60}
            if step % 200 == 0 or step == args.steps - 1:
                entry["held_out_loss"], entry["held_out_accuracy"] = evaluate()
            curve.append(entry)
            print(json.dumps(entry), flush=True)

    save(head, t2d_ids, t, layers, out)
    report = {
        "target": f"models/smollm2/{TEACHER_FILE} (transformers, dequantized, run in bf16)",
        "conversations": len(conversations), "dropped_for_overlap": overlap,
        "data": [str(p) for p in args.data] + ([f"{args.dialogues} written by this run (seed {args.seed})"] if args.dialogues else []),
        "tokens": sum(len(c) for c in conversations), "windows": {"train": len(train), "held_out": len(test)},
        "draft_vocab": args.draft_vocab, "draft_vocab_coverage": coverage, "aux_layers": layers,
        "args": {k: str(v) for k, v in vars(args).items()},
        "minutes": {"generation": (generated - began) / 60, "features": (featured - generated) / 60,
                    "training": (time.time() - featured) / 60, "total": (time.time() - began) / 60},
        "torch": torch.__version__, "curve": curve,
    }
    (out / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps(report["minutes"]), flush=True)


if __name__ == "__main__":
    main()
