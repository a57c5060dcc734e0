#!/usr/bin/env python3
"""Fidelity of `llamactl run` on a quantized GGUF file (not run by CI).

For each prompt, greedy generation three ways on the same file:
  1. llamactl --dtype auto  (the quantized blocks, activations quantized per row as ggml does)
  2. llamactl --dtype f32   (every weight dequantized to f32: the exactness reference)
  3. llama.cpp's llama-completion --temp 0
and reports: how many prompts give the same tokens in 1 and 2, the largest |logprob difference| over
the tokens where they agree (target <= 5e-2), and how many prompts give llama.cpp's text, with the
first divergence where they do not.

The same two measures are taken for llama.cpp's own quantized path: `llama_logprobs.cpp` (built here
against the llama.cpp tree) feeds 2's tokens to llama.cpp on the same file and reports, per step, the
token's log-probability and llama.cpp's greedy choice. That separates what the file's quantization
(and ggml's activation quantization, which both follow) costs from what our code adds.

  LLAMA_CPP=/path/to/llama.cpp python scripts/gguf_fidelity.py MODEL.gguf [N_TOKENS]
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(os.environ.get("CARGO_TARGET_DIR", ROOT / "target")) / "release" / "llamactl"
LLAMA_CPP = Path(os.environ["LLAMA_CPP"])

PROMPTS = [
    "The capital of France is",
    "Once upon a time, there was a little",
    "The three primary colors are",
    "def fibonacci(n):",
    "Water boils at a temperature of",
    "The best way to learn a new language is",
    "In 1969, the first man to walk on the moon was",
    "A list of fruits: apple, banana,",
    "To make a cup of tea, first",
    "The largest planet in the solar system is",
]


def ours(model, dtype, n):
    args = [str(BIN), "run", "--ckpt-dir", str(model), "--dtype", dtype, "--temperature", "0",
            "--max-gen-len", str(n), "--logprobs", "--json", "--max-batch-size", str(len(PROMPTS))]
    for p in PROMPTS:
        args += ["--prompt", p]
    out = subprocess.run(args, capture_output=True, text=True, check=True)
    return json.loads(out.stdout)["results"]


def theirs(model, prompt, n):
    """llama-completion's greedy text (f32 KV cache, as ours). Its stdout now and then comes back cut
    short, so it runs until an output ends with the blank line it prints last."""
    for _ in range(10):
        out = subprocess.run(
            [str(LLAMA_CPP / "build/bin/llama-completion"), "-m", str(model), "-p", prompt, "-n",
             str(n), "--temp", "0", "-no-cnv", "--simple-io", "--no-warmup", "-ctk", "f32", "-ctv",
             "f32"],
            capture_output=True, check=True)
        text = out.stdout
        if text.startswith(prompt.encode()) and text.endswith(b"\n\n"):
            gen = text[len(prompt.encode()):-2].removesuffix(b" [end of text]\n")
            return gen.decode("utf-8", errors="replace")
    sys.exit(f"llama-completion gave no whole output for {prompt!r}")


def llama_cpp_forced(model, f32_results):
    """llama.cpp's quantized path on 2's tokens: (prompts where its greedy keeps them all, the
    largest |logprob difference| to 2 before its first different choice)."""
    exe = Path(tempfile.mkdtemp()) / "llama_logprobs"
    lib = LLAMA_CPP / "build/bin"
    subprocess.run(["c++", "-O2", "-o", str(exe), str(ROOT / "scripts/llama_logprobs.cpp"),
                    f"-I{LLAMA_CPP / 'include'}", f"-I{LLAMA_CPP / 'ggml/include'}", f"-L{lib}",
                    "-lllama", "-lggml", "-lggml-base", f"-Wl,-rpath,{lib}"], check=True)
    same, worst = 0, 0.0
    for r in f32_results:
        out = subprocess.run([str(exe), str(model), r["prompt"], ",".join(map(str, r["tokens"]))],
                             capture_output=True, text=True, check=True).stdout.split()
        steps = [(float(out[i + 1]), int(out[i + 2])) for i in range(0, len(out), 3)]
        k = 0
        while k < len(steps) and steps[k][1] == r["tokens"][k]:
            worst = max(worst, abs(steps[k][0] - r["logprobs"][k]))
            k += 1
        same += k == len(r["tokens"])
    return same, worst


def main():
    model = Path(sys.argv[1])
    n = int(sys.argv[2]) if len(sys.argv) > 2 else 24
    q, f = ours(model, "auto", n), ours(model, "f32", n)
    same, worst = 0, 0.0
    for a, b in zip(q, f):
        k = 0
        while k < min(len(a["tokens"]), len(b["tokens"])) and a["tokens"][k] == b["tokens"][k]:
            worst = max(worst, abs(a["logprobs"][k] - b["logprobs"][k]))
            k += 1
        if a["tokens"] == b["tokens"]:
            same += 1
        else:
            print(f"quantized vs f32 diverge at token {k}: {a['prompt']!r}")
    print(f"{model.name}: quantized == f32 greedy tokens on {same}/{len(q)} prompts; "
          f"max |dlogprob| where they agree {worst:.4f} (target <= 0.05)")
    same, worst = llama_cpp_forced(model, f)
    print(f"{model.name}: llama.cpp's quantized path keeps the f32 greedy tokens on {same}/{len(f)} "
          f"prompts; max |dlogprob| where it does {worst:.4f}")
    agree = 0
    for r in q:
        ref = theirs(model, r["prompt"], n)
        if r["text"] == ref:
            agree += 1
        else:
            i = next((i for i, (x, y) in enumerate(zip(r["text"], ref)) if x != y),
                     min(len(r["text"]), len(ref)))
            print(f"llama.cpp differs on {r['prompt']!r} at char {i}: "
                  f"ours {r['text'][i:i + 30]!r} vs {ref[i:i + 30]!r}")
    print(f"{model.name}: llama-completion's greedy text == ours on {agree}/{len(q)} prompts")


if __name__ == "__main__":
    main()
