#!/usr/bin/env python3
"""Train the embedded tiny draft/target pair (models/tiny/) that the README's main command runs.

Recipe, all seeded and CPU-only:
  1. corpus: the top-level *.py files of the CPython 3.11 standard library, sorted by name
     (what `sysconfig.get_paths()["stdlib"]` points at; every Python 3.11 install has it);
  2. a byte-level BPE tokenizer trained with Hugging Face `tokenizers` (the Rust crate's
     Python binding), vocabulary 2048;
  3. the target, a Llama (transformers' LlamaForCausalLM) trained on next-token prediction;
  4. the draft, a much smaller Llama distilled from the target's logits (KL divergence at
     temperature 1, plus the usual cross-entropy), which raises acceptance over training
     the draft on the corpus alone.
Weights are saved in bf16 as HF folders with tokenizer.json, plus a model card.

Pinned: torch==2.5.1, transformers==4.46.3.
    python3 scripts/train_tiny_pair.py             # ~1 hour on 2 CPU cores
"""
import argparse
import glob
import json
import math
import os
import sysconfig
import time

import torch
import torch.nn.functional as F
import transformers
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
from transformers import LlamaConfig, LlamaForCausalLM

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..")
OUT = os.path.join(ROOT, "models", "tiny")
SPECIALS = ["<|begin_of_text|>", "<|end_of_text|>"]
VOCAB = 2048
SEQ = 256

TARGET = dict(hidden_size=256, intermediate_size=768, num_hidden_layers=6, num_attention_heads=4,
              num_key_value_heads=2, head_dim=64)
DRAFT = dict(hidden_size=96, intermediate_size=256, num_hidden_layers=2, num_attention_heads=3,
             num_key_value_heads=1, head_dim=32)


def corpus() -> tuple[list[str], str]:
    stdlib = sysconfig.get_paths()["stdlib"]
    files = sorted(glob.glob(os.path.join(stdlib, "*.py")))
    texts = [open(f, encoding="utf-8", errors="replace").read() for f in files]
    return texts, stdlib


def train_tokenizer(texts: list[str]) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=VOCAB, special_tokens=SPECIALS,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
                                  show_progress=False)
    tok.train_from_iterator(texts, trainer=trainer)
    bos = tok.token_to_id(SPECIALS[0])
    tok.post_processor = processors.TemplateProcessing(
        single=f"{SPECIALS[0]} $A", special_tokens=[(SPECIALS[0], bos)])
    return tok


def encode_corpus(tok: Tokenizer, texts: list[str]) -> torch.Tensor:
    eos = tok.token_to_id(SPECIALS[1])
    ids = []
    for enc in tok.encode_batch(texts):
        ids.extend(enc.ids + [eos])
    return torch.tensor(ids, dtype=torch.long)


def config(shape: dict, tok: Tokenizer) -> LlamaConfig:
    return LlamaConfig(vocab_size=VOCAB, max_position_embeddings=1024, rope_theta=10000.0,
                       rms_norm_eps=1e-5, tie_word_embeddings=True,
                       bos_token_id=tok.token_to_id(SPECIALS[0]),
                       eos_token_id=tok.token_to_id(SPECIALS[1]), **shape)


def batches(data: torch.Tensor, batch: int, generator: torch.Generator):
    while True:
        starts = torch.randint(0, len(data) - SEQ - 1, (batch,), generator=generator)
        x = torch.stack([data[s:s + SEQ + 1] for s in starts])
        yield x[:, :-1], x[:, 1:]


def lr_at(step: int, steps: int, peak: float) -> float:
    warmup = max(1, steps // 20)
    if step < warmup:
        return peak * (step + 1) / warmup
    return peak * 0.5 * (1 + math.cos(math.pi * (step - warmup) / (steps - warmup))) * 0.9 + peak * 0.1 * 0.5


def train(model, data, steps, batch, peak_lr, seed, teacher=None, log=""):
    g = torch.Generator().manual_seed(seed)
    opt = torch.optim.AdamW(model.parameters(), lr=peak_lr, weight_decay=0.1, betas=(0.9, 0.95))
    model.train()
    losses = []
    start = time.time()
    for step, (x, y) in zip(range(steps), batches(data, batch, g)):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps, peak_lr)
        logits = model(x).logits
        ce = F.cross_entropy(logits.reshape(-1, VOCAB), y.reshape(-1))
        loss = ce
        if teacher is not None:
            with torch.no_grad():
                t_logits = teacher(x).logits
            kd = F.kl_div(F.log_softmax(logits, -1), F.log_softmax(t_logits, -1),
                          log_target=True, reduction="batchmean") / SEQ
            loss = 0.8 * kd + 0.2 * ce
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
        opt.step()
        losses.append(ce.item())
        if step % 25 == 0 or step == steps - 1:
            print(f"{log} step {step}/{steps} ce {ce.item():.3f} loss {loss.item():.3f} "
                  f"{time.time() - start:.0f}s", flush=True)
    model.eval()
    return sum(losses[-20:]) / len(losses[-20:])


@torch.no_grad()
def eval_loss(model, data, seed, batches_n=8):
    g = torch.Generator().manual_seed(seed)
    total = 0.0
    for _, (x, y) in zip(range(batches_n), batches(data, 16, g)):
        total += F.cross_entropy(model(x).logits.reshape(-1, VOCAB), y.reshape(-1)).item()
    return total / batches_n


def save(model, tok, name):
    path = os.path.join(OUT, name)
    model.to(torch.bfloat16).save_pretrained(path, safe_serialization=True)
    os.remove(os.path.join(path, "generation_config.json"))
    tok.save(os.path.join(path, "tokenizer.json"))
    model.to(torch.float32)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--target-steps", type=int, default=600)
    ap.add_argument("--draft-steps", type=int, default=400)
    ap.add_argument("--batch", type=int, default=16)
    args = ap.parse_args()
    torch.manual_seed(0)
    torch.set_num_threads(2)
    os.makedirs(OUT, exist_ok=True)

    texts, stdlib = corpus()
    tok = train_tokenizer(texts)
    data = encode_corpus(tok, texts)
    split = int(len(data) * 0.97)
    train_data, val_data = data[:split], data[split:]
    print(f"corpus: {len(texts)} files from {stdlib}, {sum(map(len, texts))} chars, {len(data)} tokens",
          flush=True)

    target = LlamaForCausalLM(config(TARGET, tok))
    t_final = train(target, train_data, args.target_steps, args.batch, 3e-3, seed=1, log="target")
    save(target, tok, "target")
    draft = LlamaForCausalLM(config(DRAFT, tok))
    d_final = train(draft, train_data, args.draft_steps, args.batch, 4e-3, seed=2, teacher=target,
                    log="draft")
    save(draft, tok, "draft")

    card = {
        "corpus": f"{len(texts)} top-level *.py files of the CPython stdlib ({stdlib}), "
                  f"{sum(map(len, texts))} characters, {len(data)} tokens; last 3% held out",
        "tokenizer": f"byte-level BPE, {VOCAB} tokens, trained with HF tokenizers",
        "target": {"shape": TARGET, "parameters": sum(p.numel() for p in target.parameters()),
                   "steps": args.target_steps, "batch": f"{args.batch} x {SEQ} tokens",
                   "final_train_ce": round(t_final, 4),
                   "val_ce": round(eval_loss(target, val_data, 9), 4)},
        "draft": {"shape": DRAFT, "parameters": sum(p.numel() for p in draft.parameters()),
                  "steps": args.draft_steps, "batch": f"{args.batch} x {SEQ} tokens",
                  "distillation": "0.8 KL(target || draft) + 0.2 cross-entropy",
                  "final_train_ce": round(d_final, 4),
                  "val_ce": round(eval_loss(draft, val_data, 9), 4)},
        "torch": torch.__version__, "transformers": transformers.__version__,
        "python": sysconfig.get_python_version(),
    }
    with open(os.path.join(OUT, "training.json"), "w") as f:
        json.dump(card, f, indent=2)
    print(json.dumps(card, indent=2))


if __name__ == "__main__":
    main()
