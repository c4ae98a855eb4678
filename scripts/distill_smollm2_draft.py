#!/usr/bin/env python3
"""Distils a small draft model for SmolLM2-135M-Instruct from the teacher's own logits, on the CPU.

The student is a Llama with SmolLM2's tokenizer (vocabulary 49152, tied embeddings), small enough
that one of its forward passes costs a few percent of the teacher's. It learns to match the
teacher's next-token distribution (KL(teacher ‖ student), plus a little cross-entropy on the
text) in two stages:

1. `--steps` on text that Python itself ships: the *.py files of the CPython standard library
   (its packages, not its tests) and the reference documentation bundled as
   `pydoc_data/topics.py`, half of the windows wrapped in the chat template. Its embeddings
   start as the teacher's projected onto their top principal components (the student's width),
   so it starts from the teacher's token geometry rather than noise.
2. `--chat-steps` on conversations the teacher writes itself (self-instruct): it samples a user
   request after its chat template's user header (each begun with one of a few openings: write,
   explain, summarize, use the context, ...), then answers it. Python's text alone taught the
   student Python: on the benchmark's general chat prompts (configs/smollm2.toml, none of which
   is in this data) a stage-1 student was accepted at α = 0.08.

`--init` starts stage 2 from an earlier student (a folder or a GGUF file) instead of running
stage 1.

Writes models/smollm2-student/: the student as a q8_0 GGUF (llama.cpp's converter and
llama-quantize, scripts/build_llamacpp.sh), which both specbench and llama.cpp's speculative
examples load, and training.json with what this script measured.

Needs: scripts/fetch_smollm2.sh and scripts/build_llamacpp.sh run first, and a Python with torch,
transformers and gguf.

    python3 scripts/distill_smollm2_draft.py --steps 800 --chat-steps 250
"""

import argparse
import json
import math
import os
import random
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parent.parent
TEACHER_DIR = ROOT / "models/smollm2"
TEACHER_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
OUT = ROOT / "models/smollm2-student"
LLAMACPP = ROOT / ".llamacpp"

# Requests that put a text in the assistant's mouth; cycled deterministically.
REQUESTS = [
    "Write the next part of this Python module.",
    "Show me some Python code from the standard library.",
    "Explain this part of the Python documentation.",
    "Continue the text.",
    "Write an example.",
    "Answer in a few paragraphs.",
]


def corpus():
    stdlib = Path(os.__file__).parent
    skip = {"test", "tests", "idle_test", "site-packages", "lib2to3", "__pycache__"}
    files = [p for p in sorted(stdlib.rglob("*.py")) if not skip & set(p.relative_to(stdlib).parts)]
    code = [p.read_text(encoding="utf-8", errors="replace") for p in files]
    sys.path.insert(0, str(stdlib))
    from pydoc_data.topics import topics

    prose = [topics[k] for k in sorted(topics)]
    return code, prose, str(stdlib)


def sequences(tokenizer, code, prose, length, rng):
    """Windows of `length` tokens over the texts cut into 3000-character pieces, every other
    piece chat-wrapped, shuffled and joined into one stream; shuffled, 3% held out."""
    chunks = []
    for texts in (code, prose):
        for text in texts:
            for start in range(0, len(text), 3000):
                chunks.append(text[start : start + 3000])
    rng.shuffle(chunks)
    stream = []
    for i, chunk in enumerate(chunks):
        if i % 2:
            messages = [{"role": "user", "content": REQUESTS[i % len(REQUESTS)]}, {"role": "assistant", "content": chunk}]
            text = tokenizer.apply_chat_template(messages, tokenize=False)
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
        else:
            ids = tokenizer(chunk)["input_ids"] + [tokenizer.eos_token_id]
        stream.extend(ids)
    seqs = windows([stream], length, rng)
    held = max(1, len(seqs) * 3 // 100)
    return seqs[held:], seqs[:held]


def student_config(teacher, hidden, layers, intermediate, heads, kv_heads):
    from transformers import LlamaConfig

    t = teacher.config
    return LlamaConfig(
        vocab_size=t.vocab_size, hidden_size=hidden, intermediate_size=intermediate, num_hidden_layers=layers,
        num_attention_heads=heads, num_key_value_heads=kv_heads, max_position_embeddings=t.max_position_embeddings,
        rms_norm_eps=t.rms_norm_eps, rope_theta=getattr(t, "rope_theta", None) or t.rope_parameters["rope_theta"],
        tie_word_embeddings=True, bos_token_id=t.bos_token_id, eos_token_id=t.eos_token_id, hidden_act="silu",
    )


def pca_embeddings(teacher_embed, width):
    """The teacher's embeddings projected onto their top `width` principal directions, scaled
    to the student's initial embedding scale."""
    centred = teacher_embed - teacher_embed.mean(0, keepdim=True)
    _, _, v = torch.pca_lowrank(centred, q=width, center=False, niter=4)
    projected = centred @ v[:, :width]
    # Logits = normalised hidden state · embeddings: an element scale of 1/√width starts them
    # near unit spread, neither uniform nor saturated.
    return projected * (1.0 / math.sqrt(width) / projected.std())


def distill_loss(student_logits, teacher_logits, labels, ce_weight):
    s = F.log_softmax(student_logits.float(), -1)
    t = F.log_softmax(teacher_logits.float(), -1)
    kl = (t.exp() * (t - s)).sum(-1).mean()
    ce = F.nll_loss(s[:, :-1].reshape(-1, s.shape[-1]), labels[:, 1:].reshape(-1))
    return (1 - ce_weight) * kl + ce_weight * ce, kl, ce


@torch.no_grad()
def evaluate(student, teacher, held, batch):
    """Held-out KL(teacher ‖ student), cross-entropy, and how often the two argmaxes agree (the
    greedy acceptance rate a one-token draft would see)."""
    student.eval()
    kl = ce = agree = n = 0.0
    for i in range(0, len(held), batch):
        x = held[i : i + batch]
        t = teacher(x).logits
        with torch.autocast("cpu", dtype=torch.bfloat16):
            s = student(x).logits
        _, k, c = distill_loss(s, t, x, 0.0)
        kl += k.item() * len(x)
        ce += c.item() * len(x)
        agree += (s.argmax(-1) == t.argmax(-1)).float().mean().item() * len(x)
        n += len(x)
    student.train()
    return {"kl": kl / n, "cross_entropy": ce / n, "argmax_agreement": agree / n}


def to_gguf(folder, out):
    """The student folder as a q8_0 GGUF: llama.cpp's converter (f16), then llama-quantize."""
    src = LLAMACPP / "src"
    f16 = folder / "student-f16.gguf"
    subprocess.run(
        [sys.executable, str(src / "convert_hf_to_gguf.py"), str(folder), "--outtype", "f16", "--outfile", str(f16)],
        check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(src / "gguf-py")},
    )
    subprocess.run([str(LLAMACPP / "bin/llama-quantize"), str(f16), str(out), "Q8_0"], check=True, capture_output=True)


# Openings of the user requests the teacher writes in stage 2, cycled: the benchmark's prompt
# categories (code, chat, summarization, RAG) and a few more.
OPENINGS = ["Write", "Explain", "Summarize", "What", "How", "Can you", "Use the context", "Given", "Why",
            "Give me", "Describe", "List", "Translate", "Fix", "Compare", "Tell me"]


@torch.no_grad()
def self_instruct(teacher, tokenizer, dialogues, batch, question_tokens, answer_tokens):
    """`dialogues` conversations the teacher writes: a sampled request, then its answer
    (temperature 0.7), each as the token ids of the whole templated conversation."""
    marker = "\x00"
    rendered = tokenizer.apply_chat_template([{"role": "user", "content": marker}], tokenize=False)
    header = rendered[: rendered.index(marker)]
    tokenizer.padding_side = "left"
    out = []
    for start in range(0, dialogues, batch):
        openings = [OPENINGS[(start + i) % len(OPENINGS)] for i in range(batch)]
        x = tokenizer([header + o for o in openings], return_tensors="pt", add_special_tokens=False, padding=True)
        asked = teacher.generate(**x, do_sample=True, temperature=1.0, max_new_tokens=question_tokens,
                                 eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        questions = [o + tokenizer.decode(q, skip_special_tokens=True)
                     for o, q in zip(openings, asked[:, x["input_ids"].shape[1]:])]
        prompts = [tokenizer.apply_chat_template([{"role": "user", "content": q.strip()}], tokenize=False,
                                                 add_generation_prompt=True) for q in questions]
        x = tokenizer(prompts, return_tensors="pt", add_special_tokens=False, padding=True)
        answered = teacher.generate(**x, do_sample=True, temperature=0.7, max_new_tokens=answer_tokens,
                                    eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.eos_token_id)
        for row, mask in zip(answered, x["attention_mask"]):
            ids = row[int((mask == 0).sum()):].tolist()
            while len(ids) > 1 and ids[-1] == tokenizer.eos_token_id and ids[-2] == tokenizer.eos_token_id:
                ids.pop()
            out.append(ids)
        print(f"self-instruct: {len(out)}/{dialogues} conversations", flush=True)
    return out


def windows(token_lists, length, rng):
    """The lists joined into one stream, cut into windows of `length`, shuffled."""
    stream = [t for ids in token_lists for t in ids]
    seqs = [stream[s : s + length] for s in range(0, len(stream) - length + 1, length)]
    rng.shuffle(seqs)
    return torch.tensor(seqs)


def distil(student, teacher, train, held, steps, lr, args, stage):
    """`steps` of AdamW on KL(teacher ‖ student) + a little cross-entropy, warm-up then cosine."""
    decay = [p for p in student.parameters() if p.ndim >= 2]
    other = [p for p in student.parameters() if p.ndim < 2]
    opt = torch.optim.AdamW([{"params": decay, "weight_decay": 0.1}, {"params": other, "weight_decay": 0.0}],
                            lr=lr, betas=(0.9, 0.95))
    warmup = max(1, steps // 20)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        opt, lambda s: min(1.0, (s + 1) / warmup) * 0.5 * (1 + math.cos(math.pi * min(1.0, s / steps))))
    before = evaluate(student, teacher, held, args.batch)
    print(f"{stage} before: {before}", flush=True)
    log = []
    began = time.time()
    for step in range(steps):
        x = train[(step * args.batch) % len(train):][: args.batch]
        with torch.no_grad():
            t = teacher(x).logits
        # Mixed precision: bf16 products, f32 master weights and loss.
        with torch.autocast("cpu", dtype=torch.bfloat16):
            logits = student(x).logits
        loss, kl, ce = distill_loss(logits, t, x, args.ce_weight)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        torch.nn.utils.clip_grad_norm_(student.parameters(), 1.0)
        opt.step()
        schedule.step()
        if step % 25 == 0 or step == steps - 1:
            elapsed = time.time() - began
            log.append({"step": step, "kl": kl.item(), "cross_entropy": ce.item(), "seconds": round(elapsed, 1)})
            print(f"{stage} step {step}: kl {kl.item():.3f} ce {ce.item():.3f} ({elapsed / (step + 1):.2f} s/step)",
                  flush=True)
    after = evaluate(student, teacher, held, args.batch)
    print(f"{stage} after: {after}", flush=True)
    return {"steps": steps, "lr": lr, "sequences": len(train), "tokens_seen": steps * args.batch * args.length,
            "seconds": round(time.time() - began, 1), "held_out_before": before, "held_out_after": after, "log": log}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=800, help="stage 1 steps (Python's text)")
    parser.add_argument("--chat-steps", type=int, default=250, help="stage 2 steps (the teacher's conversations)")
    parser.add_argument("--dialogues", type=int, default=1280, help="conversations the teacher writes for stage 2")
    parser.add_argument("--init", type=Path, help="start stage 2 from this student (folder or .gguf)")
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--length", type=int, default=256)
    parser.add_argument("--hidden", type=int, default=192)
    parser.add_argument("--layers", type=int, default=3)
    parser.add_argument("--intermediate", type=int, default=512)
    parser.add_argument("--heads", type=int, default=3)
    parser.add_argument("--kv-heads", type=int, default=1)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--chat-lr", type=float, default=1.5e-3)
    parser.add_argument("--ce-weight", type=float, default=0.1)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from transformers import AutoModelForCausalLM, AutoTokenizer, LlamaForCausalLM

    torch.manual_seed(args.seed)
    torch.set_num_threads(args.threads)
    rng = random.Random(args.seed)
    began = time.time()
    tokenizer = AutoTokenizer.from_pretrained(TEACHER_DIR, gguf_file=TEACHER_FILE)
    teacher = AutoModelForCausalLM.from_pretrained(TEACHER_DIR, gguf_file=TEACHER_FILE, dtype=torch.float32).eval()
    teacher_embed = teacher.model.embed_tokens.weight.detach().clone()
    # bf16 (AVX512-BF16 here) runs the teacher 3.4x faster than f32 on this CPU; its logits are
    # targets to match, where bf16's rounding is far below what a small student can resolve.
    teacher = teacher.to(torch.bfloat16)
    for p in teacher.parameters():
        p.requires_grad_(False)
    report = {"teacher": f"models/smollm2/{TEACHER_FILE} (transformers, dequantized, run in bf16)"}

    if args.init:
        folder, name = (args.init.parent, args.init.name) if args.init.suffix == ".gguf" else (args.init, None)
        loaded = LlamaForCausalLM.from_pretrained(folder, gguf_file=name, dtype=torch.float32)
        # A plain model with those weights: one loaded from GGUF will not save.
        student = LlamaForCausalLM(student_config(teacher, args.hidden, args.layers, args.intermediate, args.heads,
                                                  args.kv_heads))
        student.load_state_dict(loaded.state_dict())
        report["stage1"] = f"skipped: started from {args.init}"
    else:
        code, prose, stdlib = corpus()
        train, held = sequences(tokenizer, code, prose, args.length, rng)
        print(f"corpus: {len(code)} stdlib files + {len(prose)} documentation topics from {stdlib}; "
              f"{len(train)} training sequences of {args.length} tokens", flush=True)
        config = student_config(teacher, args.hidden, args.layers, args.intermediate, args.heads, args.kv_heads)
        student = LlamaForCausalLM(config)
        with torch.no_grad():
            student.model.embed_tokens.weight.copy_(pca_embeddings(teacher_embed, args.hidden))
        student.tie_weights()
        report["stage1"] = {
            "corpus": f"{len(code)} *.py files of the CPython stdlib (tests excluded) and {len(prose)} topics of "
                      f"pydoc_data/topics.py ({stdlib}); half of the windows chat-wrapped",
            **distil(student, teacher, train, held[:32], args.steps, args.lr, args, "stage 1"),
        }
    params = sum(p.numel() for p in student.parameters())
    print(f"student: {params:,} parameters, teacher {sum(p.numel() for p in teacher.parameters()):,}", flush=True)

    generated = time.time()
    conversations = self_instruct(teacher, tokenizer, args.dialogues, 64, 48, 128)
    generation_seconds = time.time() - generated
    chats = windows(conversations, args.length, rng)
    held = max(1, len(chats) * 3 // 100)
    report["stage2"] = {
        "conversations": len(conversations), "generation_seconds": round(generation_seconds, 1),
        "example": tokenizer.decode(conversations[0]),
        **distil(student, teacher, chats[held:], chats[:held][:32], args.chat_steps, args.chat_lr, args, "stage 2"),
    }

    OUT.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        student.save_pretrained(folder, safe_serialization=True)
        tokenizer.save_pretrained(folder)
        to_gguf(folder, OUT / "SmolLM2-student-q8_0.gguf")
    report |= {
        "student": {"parameters": params, **{k: getattr(args, k) for k in
                    ["hidden", "layers", "intermediate", "heads", "kv_heads"]}},
        "training": {k: getattr(args, k) for k in ["batch", "length", "ce_weight", "threads", "seed"]},
        "total_seconds": round(time.time() - began, 1),
        "versions": {"torch": torch.__version__, "transformers": __import__("transformers").__version__},
    }
    (OUT / "training.json").write_text(json.dumps(report, indent=1) + "\n")
    print(json.dumps({k: v for k, v in report.items() if k not in ("stage1", "stage2")}, indent=1))


if __name__ == "__main__":
    main()
