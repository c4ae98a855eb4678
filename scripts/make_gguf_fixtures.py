#!/usr/bin/env python3
"""Makes the GGUF fixtures and the references no one here wrote, for issue 10's tests.

1. tests/fixtures/quant/: for each ggml block format, blocks and their dequantized values from
   the `gguf` package (llama.cpp's gguf-py); for q8_0/q4_0/q4_1/q5_0/q5_1 also the f32 input
   its `quantize` turned into those blocks.
2. tests/fixtures/tiny-gguf/: models/tiny/target converted by llama.cpp's convert_hf_to_gguf.py
   (bf16: the checkpoint's own precision, so lossless) and quantized by llama-quantize to q8_0,
   q4_0, q4_1 and q4_k_m; with llama.cpp's last-position logits and greedy continuations of a few
   prompts for each, computed through llama-cpp-python.
3. tests/fixtures/spm-gguf/: a Llama 2-style GGUF, whose tokenizer is SentencePiece (`llama`):
   a SentencePiece BPE model trained with Llama 2's trainer settings on the corpus the tiny pair
   was trained on, in a small random-weight Llama that llama.cpp's converter writes; with
   SentencePiece's and llama.cpp's tokenizations of awkward strings, llama.cpp's detokenization
   and its greedy continuations.
4. tests/fixtures/smollm2/reference.json: llama.cpp's tokenization, greedy continuation and the
   two top logits per step of SmolLM2-135M-Instruct.Q4_1.gguf (scripts/fetch_smollm2.sh) on
   five prompts.

Needs: scripts/build_llamacpp.sh run first (.llamacpp/src and .llamacpp/bin), and a Python with
numpy, torch, transformers, gguf and llama-cpp-python 0.3.36 (built from the same sdist:
`pip install .llamacpp/sdist/...` or `pip install --no-binary llama-cpp-python
llama-cpp-python==0.3.36`). Output is committed, so CI needs none of this.
"""

import json
import os
import runpy
import subprocess
import sys
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
LLAMACPP = ROOT / ".llamacpp"
QUANT_DIR = ROOT / "tests/fixtures/quant"
TINY_DIR = ROOT / "tests/fixtures/tiny-gguf"
SMOL_DIR = ROOT / "tests/fixtures/smollm2"
SMOL_GGUF = ROOT / "models/smollm2/SmolLM2-135M-Instruct.Q4_1.gguf"

TINY_PROMPTS = [
    "Once upon a time",
    "The little dog ran to the",
    "She said, \"Let's go home",
]
SPM_DIR = ROOT / "tests/fixtures/spm-gguf"
SPM_VOCAB = 1000
# Strings that exercise what SentencePiece does differently from byte-level BPE: the dummy space
# prefix, runs of spaces and newlines, digits split one by one, characters outside the
# vocabulary (byte fallback), control tokens in the text, and the empty string.
SPM_STRINGS = [
    "Hello world",
    "def main():\n    return 42\n",
    "  two leading spaces,   three inside, one trailing ",
    "\n\nnewlines first\tand a tab",
    "Numbers 12345 and 3.14159",
    "Café, naïve, Ærøskøbing — 日本語 🙂",
    "<s>[INST] a control token in the text [/INST]</s>",
    "import os\nimport sys\nfrom pathlib import Path",
    "",
]
SPM_PROMPTS = ["def fibonacci(n):", "The module provides"]
SPM_CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}{% if message['role'] == 'user' %}"
    "{{ '[INST] ' + message['content'] + ' [/INST]' }}{% else %}{{ ' ' + message['content'] + eos_token }}"
    "{% endif %}{% endfor %}"
)
SPM_CHAT_QUESTION = "What does os.path.join do?"
SMOL_PROMPTS = {
    "code": "def fibonacci(n):\n    \"\"\"Return the n-th Fibonacci number.\"\"\"\n",
    "prose": "The history of the printing press begins in",
    "facts": "The capital of France is",
    "list": "Three tips for staying healthy are:\n1.",
    "chat": None,  # rendered with the file's own chat template below
}
SMOL_CHAT_QUESTION = "What is the boiling point of water at sea level?"
NEW_TOKENS = 32


def block_fixtures():
    from gguf import GGMLQuantizationType as T
    from gguf import quants

    QUANT_DIR.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(20261125)
    for name in ["Q8_0", "Q4_0", "Q4_1", "Q5_0", "Q5_1"]:
        kind = T[name]
        x = rng.standard_normal(8 * 256).astype(np.float32)
        x[:32] = 0.0  # an all-zero block: scale 0
        x[32:64] = np.linspace(-1, 1, 32, dtype=np.float32)  # ties at the extremes
        blocks = quants.quantize(x.reshape(8, 256), kind)
        values = quants.dequantize(blocks, kind).astype(np.float32)
        stem = QUANT_DIR / name.lower()
        x.tofile(f"{stem}.input.f32")
        blocks.tofile(f"{stem}.blocks")
        values.tofile(f"{stem}.dequantized.f32")
    for name in ["Q4_K", "Q5_K", "Q6_K"]:
        kind = T[name]
        block_bytes = {"Q4_K": 144, "Q5_K": 176, "Q6_K": 210}[name]
        blocks = rng.integers(0, 256, size=(8, block_bytes), dtype=np.uint8)
        # Sane f16 scales (random bytes would make infinities and NaNs).
        scales = rng.uniform(0.001, 0.05, size=(8, 2)).astype(np.float16).view(np.uint8)
        if name == "Q6_K":
            blocks[:, 208:210] = scales[:, :2]
        else:
            blocks[:, 0:4] = scales
        values = quants.dequantize(blocks, kind).astype(np.float32)
        stem = QUANT_DIR / name.lower()
        blocks.tofile(f"{stem}.blocks")
        values.tofile(f"{stem}.dequantized.f32")


def convert_embedded(model_dir, outtype, out):
    """`model_dir` (one of the embedded checkpoints) as a GGUF by llama.cpp's convert_hf_to_gguf.py.
    The converter refuses tokenizers whose pre-tokenizer hash it does not know; the tiny pair's
    is GPT-2's byte-level split, so the check is answered with `gpt-2`."""
    src = LLAMACPP / "src"
    code = (
        "import sys, runpy\n"
        f"sys.path.insert(0, {str(src)!r}); sys.path.insert(1, {str(src / 'gguf-py')!r})\n"
        "import conversion.base as base\n"
        "base.TextModel.get_vocab_base_pre = lambda self, tokenizer: 'gpt-2'\n"
        f"sys.argv = ['convert_hf_to_gguf.py', {str(model_dir)!r}, '--outtype', {outtype!r}, '--outfile', {str(out)!r}]\n"
        f"runpy.run_path({str(src / 'convert_hf_to_gguf.py')!r}, run_name='__main__')\n"
    )
    out.parent.mkdir(parents=True, exist_ok=True)
    subprocess.run([sys.executable, "-c", code], check=True, capture_output=True, env={**os.environ, "NO_LOCAL_GGUF": ""})
    return out


def convert_tiny_target():
    out = convert_embedded(ROOT / "models/tiny/target", "bf16", TINY_DIR / "target-bf16.gguf")
    for kind in ["q8_0", "q4_0", "q4_1", "q4_k_m"]:
        subprocess.run(
            [str(LLAMACPP / "bin/llama-quantize"), str(out), str(TINY_DIR / f"target-{kind}.gguf"), kind.upper()],
            check=True,
            stdout=subprocess.DEVNULL,
        )


def llama(path):
    """llama.cpp with an f32 KV cache, as specbench keeps it: its default f16 cache rounds every
    key and value, which moved one SmolLM2 logit by 0.4 and flipped a greedy step that the f32
    cache agrees with us on (type_k = type_v = 0 is GGML_TYPE_F32)."""
    from llama_cpp import Llama

    return Llama(
        model_path=str(path), n_ctx=512, n_threads=2, n_batch=512, logits_all=True, verbose=False, seed=0,
        type_k=0, type_v=0,
    )


def greedy(model, ids, n):
    """llama.cpp's greedy continuation: argmax of each step's logits, with the two largest."""
    model.reset()
    model.eval(ids)
    out, tops = [], []
    for _ in range(n):
        logits = np.array(model.scores[model.n_tokens - 1], dtype=np.float32)
        order = np.argsort(-logits, kind="stable")[:2]
        tops.append({"ids": [int(i) for i in order], "values": [float(logits[i]) for i in order]})
        token = int(order[0])
        out.append(token)
        model.eval([token])
    return out, tops


def tiny_references():
    references = {}
    for kind in ["bf16", "q8_0", "q4_0", "q4_1", "q4_k_m"]:
        path = TINY_DIR / f"target-{kind}.gguf"
        model = llama(path)
        cases = []
        for prompt in TINY_PROMPTS:
            ids = model.tokenize(prompt.encode(), add_bos=True, special=True)
            model.reset()
            model.eval(ids)
            last = [float(v) for v in np.array(model.scores[len(ids) - 1], dtype=np.float32)]
            tokens, tops = greedy(model, ids, NEW_TOKENS)
            cases.append({"prompt": prompt, "prompt_ids": ids, "last_logits": last, "greedy": tokens, "top2": tops})
        references[kind] = cases
    (TINY_DIR / "reference.json").write_text(json.dumps(references) + "\n")


def spm_model():
    """A SentencePiece BPE model trained with Llama 2's settings (byte fallback, digits split,
    whitespace kept as it is) in a random-weight Llama folder, converted by llama.cpp's converter."""
    import sentencepiece as spm
    import tempfile
    import torch
    from safetensors.torch import save_file

    stdlib = Path(os.__file__).parent
    text = "\n".join(open(f, encoding="utf-8", errors="replace").read() for f in sorted(stdlib.glob("*.py")))
    work = Path(tempfile.mkdtemp())
    (work / "corpus.txt").write_text(text)
    spm.SentencePieceTrainer.train(
        input=str(work / "corpus.txt"), model_prefix=str(work / "tokenizer"), model_type="bpe",
        vocab_size=SPM_VOCAB, byte_fallback=True, split_digits=True, allow_whitespace_only_pieces=True,
        remove_extra_whitespaces=False, normalization_rule_name="identity", character_coverage=0.9995,
        max_sentence_length=1 << 16, input_sentence_size=200000, shuffle_input_sentence=False,
        unk_id=0, bos_id=1, eos_id=2, pad_id=-1, num_threads=2, minloglevel=2,
    )
    folder = work / "llama2-style"
    folder.mkdir()
    (work / "tokenizer.model").rename(folder / "tokenizer.model")
    config = {
        "architectures": ["LlamaForCausalLM"], "model_type": "llama", "vocab_size": SPM_VOCAB,
        "hidden_size": 64, "intermediate_size": 128, "num_hidden_layers": 2, "num_attention_heads": 4,
        "num_key_value_heads": 2, "max_position_embeddings": 256, "rms_norm_eps": 1e-5, "rope_theta": 10000.0,
        "tie_word_embeddings": False, "bos_token_id": 1, "eos_token_id": 2, "hidden_act": "silu",
        "torch_dtype": "float32",
    }
    (folder / "config.json").write_text(json.dumps(config))
    (folder / "tokenizer_config.json").write_text(json.dumps({
        "add_bos_token": True, "add_eos_token": False, "bos_token": "<s>", "eos_token": "</s>",
        "unk_token": "<unk>", "chat_template": SPM_CHAT_TEMPLATE,
    }))
    g = torch.Generator().manual_seed(20261126)
    hidden, inter, kv = 64, 128, 32

    def rand(*shape, scale=0.08):
        return (torch.randn(*shape, generator=g) * scale).contiguous()

    weights = {"model.embed_tokens.weight": rand(SPM_VOCAB, hidden, scale=0.5),
               "model.norm.weight": torch.ones(hidden), "lm_head.weight": rand(SPM_VOCAB, hidden, scale=0.5)}
    for layer in range(2):
        p = f"model.layers.{layer}."
        weights |= {
            p + "input_layernorm.weight": torch.ones(hidden), p + "post_attention_layernorm.weight": torch.ones(hidden),
            p + "self_attn.q_proj.weight": rand(hidden, hidden), p + "self_attn.k_proj.weight": rand(kv, hidden),
            p + "self_attn.v_proj.weight": rand(kv, hidden), p + "self_attn.o_proj.weight": rand(hidden, hidden),
            p + "mlp.gate_proj.weight": rand(inter, hidden), p + "mlp.up_proj.weight": rand(inter, hidden),
            p + "mlp.down_proj.weight": rand(hidden, inter),
        }
    save_file(weights, str(folder / "model.safetensors"), metadata={"format": "pt"})
    SPM_DIR.mkdir(parents=True, exist_ok=True)
    (SPM_DIR / "tokenizer.model").write_bytes((folder / "tokenizer.model").read_bytes())
    convert_embedded(folder, "f32", SPM_DIR / "llama2-style-f32.gguf")


def spm_references():
    """SentencePiece's own tokenization (without BOS) and llama.cpp's (with BOS, control tokens
    parsed) of each string, llama.cpp's detokenization, and its greedy continuations."""
    import sentencepiece as spm
    from jinja2 import Template

    sp = spm.SentencePieceProcessor(model_file=str(SPM_DIR / "tokenizer.model"))
    model = llama(SPM_DIR / "llama2-style-f32.gguf")
    strings = []
    for text in SPM_STRINGS:
        ids = model.tokenize(text.encode(), add_bos=True, special=True)
        strings.append({
            "text": text, "sentencepiece": sp.encode(text), "llama_cpp": ids,
            "llama_cpp_detokenized": model.detokenize(ids[1:]).decode("utf-8", errors="replace"),
        })
    chat = Template(model.metadata["tokenizer.chat_template"]).render(
        messages=[{"role": "user", "content": SPM_CHAT_QUESTION}], bos_token="<s>", eos_token="</s>",
        add_generation_prompt=True,
    )
    cases = []
    for text in [*SPM_PROMPTS, chat]:
        ids = model.tokenize(text.encode(), add_bos=text != chat, special=True)
        tokens, tops = greedy(model, ids, NEW_TOKENS)
        case = {"prompt": text, "prompt_ids": ids, "greedy": tokens, "top2": tops}
        if text == chat:
            case["chat_message"] = SPM_CHAT_QUESTION
        cases.append(case)
    meta = {"engine": "llama.cpp 0c1e57098bba via llama-cpp-python 0.3.36; sentencepiece " + spm.__version__,
            "strings": strings, "cases": cases}
    (SPM_DIR / "reference.json").write_text(json.dumps(meta, indent=1, ensure_ascii=False) + "\n")


def smol_references():
    from jinja2 import Template

    model = llama(SMOL_GGUF)
    template = model.metadata["tokenizer.chat_template"]
    chat = Template(template).render(
        messages=[{"role": "user", "content": SMOL_CHAT_QUESTION}], add_generation_prompt=True
    )
    cases = []
    for category, prompt in SMOL_PROMPTS.items():
        text = chat if prompt is None else prompt
        ids = model.tokenize(text.encode(), add_bos=False, special=True)
        tokens, tops = greedy(model, ids, NEW_TOKENS)
        cases.append({"category": category, "prompt": text, "prompt_ids": ids, "greedy": tokens, "top2": tops})
    SMOL_DIR.mkdir(parents=True, exist_ok=True)
    meta = {
        "model": SMOL_GGUF.name,
        "sha256": "b179c9523d0e6a0f98a330c7562b682750a6f8c8c15e5bc70ea373728110db53",
        "engine": "llama.cpp 0c1e57098bba via llama-cpp-python 0.3.36, 2 threads, f32 KV cache, greedy",
        "cases": cases,
    }
    (SMOL_DIR / "reference.json").write_text(json.dumps(meta, indent=1) + "\n")


if __name__ == "__main__":
    steps = sys.argv[1:] or ["blocks", "tiny", "tiny-ref", "spm", "spm-ref", "smol-ref"]
    if "blocks" in steps:
        block_fixtures()
    if "tiny" in steps:
        convert_tiny_target()
    if "tiny-ref" in steps:
        tiny_references()
    if "spm" in steps:
        spm_model()
    if "spm-ref" in steps:
        spm_references()
    if "smol-ref" in steps and SMOL_GGUF.exists():
        smol_references()
