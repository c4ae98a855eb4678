#!/usr/bin/env python3
"""llama.cpp's speculative decoding beside specbench's, same prompts, same k, same sitting.

Runs `specbench run CONFIG --out DIR` (or takes a finished run with --into DIR), then for every
prompt of that run and every drafter llama.cpp has an equivalent of, at each fixed k of the
config and T = 0:

- target only: `llama-completion`;
- `quantized` drafters (q4_0, q8_0): `llama-speculative-simple` with the target quantized by
  `llama-quantize --pure` (every tensor in that type, as specbench quantizes on load);
- `model` drafters: `llama-speculative-simple` with that GGUF file as it is, when the drafter
  loads it without a dtype (or in f32); the embedded pair's folders are converted to f32 GGUF
  by llama.cpp's converter first;
- `ngram` drafters: `llama-lookup` (its n-gram sizes are fixed at 1..4 in llama.cpp);
- `eagle3` drafters: `llama-speculative-simple --spec-type draft-eagle3` with the same head
  converted by llama.cpp's converter (`--target-model-dir models/derived/smollm2-hf`, the target's
  config and tokenizer, which scripts/train_eagle3_smollm2.py writes), f32;
- the `confidence:P` schedule: `--spec-draft-p-min P` at the largest k (llama.cpp's
  `--draft-p-min`, the same rule: stop before a draft token whose top probability is below P).

Layer skipping and the heuristic schedule have no llama.cpp counterpart; sampled rows (T > 0) are
left to specbench (llama-speculative-simple accepts a token only when the target samples the same
one, a different rule). Each llama.cpp row goes into DIR/runs.csv in specbench's schema with
`engine = llama.cpp` and the config's drafter name, counts as llama.cpp reports them (target
calls = tokens - accepted), prompt time as `prefill_s`, decode time as the rest; then `specbench
report DIR` rebuilds the summary, whose "decode speedup" compares both engines on decoding alone
(llama.cpp's tools report no end-to-end time that includes the draft's prompt). The prompt is the
text specbench tokenizes (`specbench prompts --rendered`: chat template applied), given to
llama.cpp as is, 2 threads, `max_new_tokens` of the config, EOS honoured by both, or banned by
both where the config says `[experiment] ban_eos = true` (llama.cpp's `--ignore-eos` bans; 
specbench's `generate --ignore-eos` only keeps going past an emitted EOS, which is other work).
For every prompt it also checks that both engines' greedy target-only text is the same (it should
be where the weights are f32 or f16) and writes DIR/greedy_check.md with the first divergence of
each prompt that differs. Multi-turn prompts are refused: each engine would need its own answers.

    python3 experiments/peer_llamacpp_spec.py --config configs/smollm2.toml --out results/smollm2/DIR
    python3 experiments/peer_llamacpp_spec.py --config configs/tiny.toml --out results/tiny-vs-llamacpp/DIR
"""

import argparse
import csv
import json
import os
import re
import subprocess
import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = ROOT / ".llamacpp/bin"
SPECBENCH = ROOT / "target/release/specbench"
DERIVED = ROOT / "models/derived"
THREADS = "2"


def run(command, env=None):
    done = subprocess.run([str(c) for c in command], capture_output=True, text=True, env=env)
    if done.returncode != 0:
        raise SystemExit(f"{command[0]} failed ({done.returncode}):\n{done.stderr[-3000:]}")
    return done


def quantized_copy(target, kind):
    """The target as `kind` in every tensor, made once by llama-quantize --pure."""
    out = DERIVED / f"{target.stem}-pure-{kind}.gguf"
    if not out.exists():
        DERIVED.mkdir(parents=True, exist_ok=True)
        run([BIN / "llama-quantize", "--pure", "--allow-requantize", target, out, kind])
    return out


def as_gguf(path):
    """A GGUF file as is; the embedded pair's folders (models/tiny) converted to f32 once, by
    llama.cpp's converter (scripts/make_gguf_fixtures.py)."""
    out = DERIVED / f"{path.parent.name}-{path.name}-f32.gguf"
    if path.suffix == ".gguf" or out.exists():
        return path if path.suffix == ".gguf" else out
    import sys

    # The converter needs numpy and llama.cpp's gguf-py (scripts/make_gguf_fixtures.py says how).
    sys.path.insert(0, str(ROOT / "scripts"))
    from make_gguf_fixtures import convert_embedded

    return convert_embedded(path, "f32", out)


def eagle3_gguf(head):
    """The EAGLE-3 head folder `head` as an f32 GGUF, made once by llama.cpp's converter."""
    out = DERIVED / f"{head.name}-eagle3-f32.gguf"
    if not out.exists():
        import sys

        src = ROOT / ".llamacpp/src"
        # The converter needs llama.cpp's own gguf-py (it knows the EAGLE3 architecture).
        run([sys.executable, src / "convert_hf_to_gguf.py", head, "--outtype", "f32", "--outfile", out,
             "--target-model-dir", DERIVED / "smollm2-hf"], env={**os.environ, "PYTHONPATH": str(src / "gguf-py")})
    return out


def seconds(pattern, text):
    found = re.search(pattern, text)
    return float(found.group(1)) if found else 0.0


def llama_cpp(kind, target, prompt, max_new, k=0, draft=None, p_min=None, ban_eos=False, spec_type="draft-simple"):
    """One generation; returns the numbers a runs.csv row needs. `ban_eos`: llama.cpp's
    `--ignore-eos`, which bans the end-of-generation tokens as `[experiment] ban_eos` does."""
    common = ["-p", prompt, "-n", max_new, "--temp", "0", "-t", THREADS] + (["--ignore-eos"] if ban_eos else [])
    if kind == "completion":
        done = run([BIN / "llama-completion", "-m", target, "-no-cnv", "--no-display-prompt", *common])
        err = done.stderr
        tokens = int(re.search(r"\seval time =\s+[0-9.]+ ms /\s+(\d+) runs", err).group(1))
        prompt_s = seconds(r"prompt eval time =\s+([0-9.]+) ms", err) / 1000
        decode_s = seconds(r"\seval time =\s+([0-9.]+) ms /\s+\d+ runs", err) / 1000
        return {"new_tokens": tokens, "prefill_s": prompt_s, "decode_s": decode_s, "drafted": 0, "accepted": 0,
                "text": done.stdout}
    if kind == "lookup":
        command = [BIN / "llama-lookup", "-m", target, "--spec-draft-n-max", k, *common]
    else:
        command = [BIN / "llama-speculative-simple", "-m", target, "-md", draft, "--spec-type", spec_type,
                   "--spec-draft-n-max", k, "-td", THREADS, *common]
        if p_min is not None:
            command += ["--spec-draft-p-min", p_min]
    # llama-speculative-simple now and then exits 0 right after loading the draft, having
    # generated nothing (the embedded pair, one run in a few hundred): such a run is repeated.
    for _ in range(3):
        err = run(command).stderr
        if "n_predict" in err:
            break

    def count(pattern):
        found = re.search(pattern, err)
        if found is None:
            raise SystemExit(f"{command[0]} printed no `{pattern}`:\n{err[-3000:]}")
        return int(found.group(1))

    return {
        "new_tokens": count(r"n_predict\s+=\s+(\d+)"),
        "prefill_s": seconds(r"encoded\s+\d+ tokens in\s+([0-9.]+) seconds", err),
        "decode_s": seconds(r"decoded\s+\d+ tokens in\s+([0-9.]+) seconds", err),
        "drafted": count(r"n_drafted\s+=\s+(\d+)"),
        "accepted": count(r"n_accept\s+=\s+(\d+)"),
    }


def specbench_text(target, prompt, config, ban_eos):
    """specbench's greedy target-only continuation of `prompt`, as `generate` prints it."""
    command = [SPECBENCH, "generate", "--model", target, "--prompt", prompt["prompt"], "--max-new-tokens",
               config["experiment"]["max_new_tokens"], "--backend", "flex",
               "--dtype", config["models"]["target"].get("dtype", "f32"), "--json"]
    command += ["--chat"] if config.get("prompts", {}).get("chat") else []
    command += ["--ban-eos"] if ban_eos else []
    return json.loads(run(command).stdout)["text"]


def first_divergence(ours, theirs):
    """None when the two texts are the same (llama.cpp ends its output with a newline or two),
    else the first differing character's index (the shorter one's length when one stops
    earlier) and both texts around it."""
    ours, theirs = ours.rstrip(), theirs.rstrip()
    if ours == theirs:
        return None
    at = next((i for i, (a, b) in enumerate(zip(ours, theirs)) if a != b), min(len(ours), len(theirs)))
    return at, ours[max(at - 20, 0):at + 20], theirs[max(at - 20, 0):at + 20]


def row(header, config, manifest, prompt, drafter, k, schedule, draft, result):
    wall = result["prefill_s"] + result["decode_s"]
    calls = max(result["new_tokens"] - result["accepted"], 1)
    values = {
        "engine": "llama.cpp", "backend": "cpu", "dtype": config["models"]["target"].get("dtype", "f32"),
        "target": manifest["models"]["target"]["spec"], "draft": draft, "drafter": drafter,
        "prompt_id": prompt["id"], "category": prompt["category"], "temperature": 0.0, "k": k,
        "schedule": schedule, "repeat": 0, "seed": 0, "new_tokens": result["new_tokens"], "target_calls": calls,
        "proposed": result["drafted"], "accepted": result["accepted"],
        "alpha_hat": result["accepted"] / result["drafted"] if result["drafted"] else "",
        "mean_accepted_len": result["new_tokens"] / calls, "prefill_s": result["prefill_s"], "draft_s": 0.0,
        "verify_s": 0.0, "other_s": result["decode_s"], "wall_s": wall,
        "tokens_per_s": result["new_tokens"] / wall if wall > 0 else 0.0,
    }
    return {name: values.get(name, "") for name in header}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", type=Path, required=True)
    where = parser.add_mutually_exclusive_group(required=True)
    where.add_argument("--out", type=Path, help="run specbench into this new folder first")
    where.add_argument("--into", type=Path, help="a finished specbench run of the config")
    args = parser.parse_args()
    env = {**os.environ, "RAYON_NUM_THREADS": THREADS}
    if args.out:
        subprocess.run([str(SPECBENCH), "run", str(args.config), "--out", str(args.out)], check=True, env=env)
    folder = args.out or args.into
    config = tomllib.loads(args.config.read_text())
    manifest = json.loads((folder / "manifest.json").read_text())
    target = as_gguf(Path(manifest["models"]["target"]["spec"]))
    drafters = config.get("drafters", [])
    if "draft" in config["models"]:
        # The one-drafter shorthand, named `draft` as specbench names it.
        drafters = [{"name": "draft", "kind": "model", **config["models"]["draft"]}]
    recorded = manifest["models"].get("drafters", {})
    prompts = [json.loads(line) for line in run([SPECBENCH, "prompts", args.config, "--rendered"]).stdout.splitlines()]
    max_new = config["experiment"]["max_new_tokens"]
    ban_eos = config["experiment"].get("ban_eos", False)
    if any("turns" in p for p in prompts):
        raise SystemExit("multi-turn prompts need each engine's own answers between turns; this script runs single turns")
    ks = config["sweep"]["k"]
    confidences = [float(s.split(":")[1]) for s in config["sweep"].get("adaptive", []) if s.startswith("confidence:")]
    runs_csv = folder / "runs.csv"
    with open(runs_csv, newline="") as f:
        header = next(csv.reader(f))
    rows = []
    checks = []
    for prompt in prompts:
        text = prompt["text"]
        plain = llama_cpp("completion", target, text, max_new, ban_eos=ban_eos)
        rows.append(row(header, config, manifest, prompt, "", 0, "", "", plain))
        # Both engines' greedy output from the same input: identical where the weights are f32
        # or f16 (quantized activations may flip a near tie in either engine).
        # llama-completion marks an emitted end of sequence in its text; specbench prints none.
        theirs = plain["text"].replace(" [end of text]", "")
        found = first_divergence(specbench_text(target, prompt, config, ban_eos), theirs)
        checks.append(f"| {prompt['id']} | " + ("same text |" if found is None else
                      f"differ from character {found[0]}: specbench `{found[1]!r}`, llama.cpp `{found[2]!r}` |"))
        for drafter in drafters:
            name, kind = drafter["name"], drafter["kind"]
            if kind == "quantized" and drafter["dtype"] in ("q4_0", "q8_0"):
                draft = quantized_copy(target, drafter["dtype"].upper())
            elif kind == "model" and drafter.get("dtype", "f32") == "f32" and name in recorded:
                # Without a dtype a GGUF's quantized blocks stay as they are in specbench too.
                draft = as_gguf(Path(recorded[name]["spec"]))
            elif kind == "eagle3":
                draft = eagle3_gguf(Path(recorded[name]["spec"]))
                for k in ks:
                    rows.append(row(header, config, manifest, prompt, name, k, "", str(draft),
                                    llama_cpp("speculative", target, text, max_new, k, draft, ban_eos=ban_eos,
                                              spec_type="draft-eagle3")))
                continue
            elif kind == "ngram":
                for k in ks:
                    rows.append(row(header, config, manifest, prompt, name, k, "", "llama-lookup ngram 1..=4",
                                    llama_cpp("lookup", target, text, max_new, k, ban_eos=ban_eos)))
                continue
            else:
                continue
            for k in ks:
                rows.append(row(header, config, manifest, prompt, name, k, "", str(draft),
                                llama_cpp("speculative", target, text, max_new, k, draft, ban_eos=ban_eos)))
            for p_min in confidences:
                rows.append(row(header, config, manifest, prompt, name, max(ks), f"confidence:{p_min:g}", str(draft),
                                llama_cpp("speculative", target, text, max_new, max(ks), draft, p_min, ban_eos)))
        print(f"llama.cpp: {prompt['id']} done", flush=True)
    with open(runs_csv, "a", newline="") as f:
        csv.DictWriter(f, fieldnames=header).writerows(rows)
    same = sum(c.endswith("same text |") for c in checks)
    (folder / "greedy_check.md").write_text(
        f"# Greedy target-only output, specbench against llama.cpp\n\n{target}, T = 0, {max_new} new tokens, "
        f"EOS {'banned' if ban_eos else 'honoured'} by both; {same} of {len(checks)} prompts give the same text.\n\n"
        "| prompt | result |\n|---|---|\n" + "\n".join(checks) + "\n")
    print(f"greedy check: {same} of {len(checks)} prompts give the same text (greedy_check.md)")
    run([SPECBENCH, "report", folder])
    print(f"{len(rows)} llama.cpp rows appended to {runs_csv}; summary rebuilt")


if __name__ == "__main__":
    main()
