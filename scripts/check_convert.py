#!/usr/bin/env python3
"""Oracle check for `llamactl convert` (not run by CI).

Runs transformers 4.44.2's convert_llama_weights_to_hf (the oracle) and `llamactl convert --to hf`
on the same Meta checkpoint, then checks:
  1. every safetensors tensor is bit-identical (and reports whether whole files are identical),
  2. config.json / generation_config.json agree on every field the oracle writes,
  3. transformers' LlamaForCausalLM on our output gives logits within 1e-4 (f32) of Meta's model.py
     (llama_models, fairscale with world size 1) on the source checkpoint,
  4. our tokenizer.json encodes a corpus to the same ids as AutoTokenizer on the oracle's output and
     as the tiktoken file (Meta's Tokenizer),
  5. `llamactl convert --to meta` on the oracle's output gives back the source tensors bit for bit
     and a tokenizer.model with the same ranks.
Two variants: the fixture as a Llama 3 base model, and a Llama 3.1 Instruct copy (use_scaled_rope).

Usage: /root/venvs/conv/bin/python scripts/check_convert.py [--fixture testdata/tiny-mp1]
"""
import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile

import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ORACLE_FIXES = {"transformers_version"}  # a version stamp, not a model property
FAILED = []


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what)
    if not ok:
        FAILED.append(what)


def run_oracle(src, dst, version, instruct):
    # The converter calls from_pretrained(low_cpu_mem_usage=True), which needs `accelerate`; the
    # flag only changes how the model is materialised, so drop it rather than install accelerate.
    code = (
        "import sys\n"
        "import transformers.models.llama.convert_llama_weights_to_hf as c\n"
        "orig = c.LlamaForCausalLM.from_pretrained\n"
        "def fp(*a, **k):\n"
        "    k.pop('low_cpu_mem_usage', None)\n"
        "    return orig(*a, **k)\n"
        "c.LlamaForCausalLM.from_pretrained = fp\n"
        "sys.argv = ['convert'] + sys.argv[1:]\n"
        "c.main()\n"
    )
    args = [sys.executable, "-c", code, "--input_dir", src, "--model_size", "8B",
            "--llama_version", version, "--output_dir", dst]
    if instruct:
        args += ["--instruct", "True"]
    subprocess.run(args, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def llamactl(*args):
    exe = os.environ.get("LLAMACTL", os.path.join(ROOT, "target/release/llamactl"))
    r = subprocess.run([exe, *args], capture_output=True, text=True)
    if r.returncode != 0:
        print(r.stderr)
        raise SystemExit(f"llamactl {' '.join(args)} failed with {r.returncode}")
    return r.stderr


def tensors_of(d):
    from safetensors import safe_open
    out = {}
    for f in sorted(os.listdir(d)):
        if f.endswith(".safetensors"):
            with safe_open(os.path.join(d, f), "pt") as s:
                for k in s.keys():
                    out[k] = (f, s.get_tensor(k))
    return out


def compare_weights(ours, oracle):
    a, b = tensors_of(ours), tensors_of(oracle)
    check(sorted(a) == sorted(b), f"same tensor names ({len(b)} tensors)")
    same = [k for k in b if k in a and a[k][1].dtype == b[k][1].dtype and a[k][1].shape == b[k][1].shape
            and torch.equal(a[k][1].view(torch.uint8), b[k][1].view(torch.uint8))]
    check(len(same) == len(b), f"tensors bit-identical: {len(same)}/{len(b)}")
    files = sorted(f for f in os.listdir(oracle) if f.endswith(".safetensors") or f.endswith(".index.json"))
    check(files == sorted(f for f in os.listdir(ours) if f.endswith(".safetensors") or f.endswith(".index.json")),
          f"same weight files {files}")
    identical = [f for f in files if os.path.exists(os.path.join(ours, f))
                 and open(os.path.join(ours, f), "rb").read() == open(os.path.join(oracle, f), "rb").read()]
    print(f"      whole files byte-identical: {identical}")


def compare_json(ours, oracle, name, known=None):
    known = known or {}
    a = json.load(open(os.path.join(ours, name)))
    b = json.load(open(os.path.join(oracle, name)))
    diffs = []
    for k, v in b.items():
        if k in ORACLE_FIXES or k.startswith("_"):
            continue
        if a.get(k, "<missing>") != v:
            diffs.append(k)
    explained = [k for k in diffs if k in known]
    bad = [k for k in diffs if k not in known]
    check(not bad, f"{name}: equal on every oracle field ({len(b)} fields)" +
          (f"; differs on {[(k, a.get(k), b[k]) for k in bad]}" if bad else ""))
    for k in explained:
        print(f"      {name}.{k}: ours {a.get(k)!r}, oracle {b[k]!r} -- {known[k]}")
    extra = sorted(set(a) - set(b))
    if extra:
        print(f"      {name}: fields only we write: {extra}")


def meta_logits(src, tokens):
    import torch.distributed as dist
    from fairscale.nn.model_parallel.initialize import initialize_model_parallel, model_parallel_is_initialized
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer
    if not dist.is_initialized():
        os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
        os.environ.setdefault("MASTER_PORT", "29517")
        dist.init_process_group("gloo", rank=0, world_size=1)
    if not model_parallel_is_initialized():
        initialize_model_parallel(1)
    params = json.load(open(os.path.join(src, "params.json")))
    args = ModelArgs(max_seq_len=64, max_batch_size=1, **params)
    torch.set_default_dtype(torch.float32)
    model = Transformer(args)
    sd = torch.load(os.path.join(src, "consolidated.00.pth"), map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=False)
    return model(torch.tensor([tokens]), 0).float()


def hf_logits(d, tokens):
    from transformers import AutoModelForCausalLM
    model = AutoModelForCausalLM.from_pretrained(d, torch_dtype=torch.float32)
    model.eval()
    with torch.no_grad():
        return model(torch.tensor([tokens])).logits.float()


CORPUS = [
    "This is a test sentence.",
    "Hello, world! How are you doing today?",
    "  leading spaces, trailing spaces   ",
    "Numbers 1234567 and 3.14159, dates 2024-07-23.",
    "Ünïcödé: 日本語のテキスト, emoji 🦙🚀, Ελληνικά, русский.",
    "def f(x):\n    return x ** 2\n\n\n\tTabs\tand\r\nCRLF",
    "<|begin_of_text|> looks special but is text here",
    "don't won't I'm you're they'll we've he'd",
    "a" * 300 + " " + "b c " * 50,
    "",
]


def compare_tokenizers(ours, oracle, tiktoken_path):
    from transformers import AutoTokenizer
    from llama_models.llama3.tokenizer import Tokenizer
    if not os.path.exists(os.path.join(ours, "tokenizer.json")):
        check(False, "tokenizer.json written")
        return
    ta = AutoTokenizer.from_pretrained(ours)
    tb = AutoTokenizer.from_pretrained(oracle)
    from pathlib import Path
    meta = Tokenizer(Path(tiktoken_path))
    n_same_oracle = n_same_meta = 0
    for text in CORPUS:
        a = ta.encode(text, add_special_tokens=False)
        b = tb.encode(text, add_special_tokens=False)
        # HF tokenizers match special-token text as added tokens; Meta's allowed_special="all" does too.
        m = meta.encode(text, bos=False, eos=False, allowed_special="all")
        n_same_oracle += a == b
        n_same_meta += a == m
    check(n_same_oracle == len(CORPUS), f"tokenizer.json ids == AutoTokenizer(oracle) ids: {n_same_oracle}/{len(CORPUS)} texts")
    check(n_same_meta == len(CORPUS), f"tokenizer.json ids == tiktoken file ids: {n_same_meta}/{len(CORPUS)} texts")
    # transformers 4.44.2's converter leaves BOS out of the post-processor (its docstring tells users
    # to add it by hand); the published meta-llama repos and ours add it, as Meta's encode(bos=True).
    a = ta.encode("This is a test sentence.")
    b = tb.encode("This is a test sentence.")
    m = meta.encode("This is a test sentence.", bos=True, eos=False)
    check(a == m and a == [128000] + b, f"with special tokens: BOS + text, as Meta's encode(bos=True): {a}")
    dialog = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": " hi "}]
    if tb.chat_template:
        pa = ta.apply_chat_template(dialog, tokenize=False, add_generation_prompt=True)
        pb = tb.apply_chat_template(dialog, tokenize=False, add_generation_prompt=True)
        check(pa == pb, "chat template renders the same prompt (add_generation_prompt=True)")
        pa = ta.apply_chat_template(dialog, tokenize=False, add_generation_prompt=False)
        print(f"      add_generation_prompt=False: ours ends {pa[-12:]!r} (no assistant header, as the published "
              "meta-llama template); the 4.44.2 converter's template appends the header regardless")
    for name in ["tokenizer_config.json", "special_tokens_map.json"]:
        a = json.load(open(os.path.join(ours, name)))
        b = json.load(open(os.path.join(oracle, name)))
        known = {"chat_template"}  # compared by rendering above
        diff = [k for k in b if a.get(k) != b[k] and k not in known]
        check(not diff, f"{name}: equal on every oracle field" + (f"; differs on {diff}" if diff else ""))


def round_trip_meta(oracle, src, work):
    back = os.path.join(work, "back-meta")
    llamactl("convert", "--to", "meta", oracle, back)
    a = torch.load(os.path.join(back, "consolidated.00.pth"), map_location="cpu", weights_only=True)
    b = torch.load(os.path.join(src, "consolidated.00.pth"), map_location="cpu", weights_only=True)
    same = [k for k in b if k in a and torch.equal(a[k].view(torch.uint8), b[k].contiguous().view(torch.uint8))]
    check(sorted(a) == sorted(b) and len(same) == len(b),
          f"--to meta on the oracle's output gives the source tensors bit for bit: {len(same)}/{len(b)}")
    if os.path.exists(os.path.join(back, "tokenizer.model")):
        ranks = lambda p: sorted(l.split() for l in open(p).read().splitlines() if l.strip())
        check(ranks(os.path.join(back, "tokenizer.model")) == ranks(os.path.join(src, "tokenizer.model")),
              "tokenizer.model rebuilt from the oracle's tokenizer.json has the same ranks")
    else:
        check(False, "tokenizer.model written by --to meta")


def variant(src, work, label, version, instruct):
    print(f"== {label}")
    oracle = os.path.join(work, f"oracle-{label}")
    ours = os.path.join(work, f"ours-{label}")
    run_oracle(src, oracle, version, instruct)
    llamactl("convert", "--to", "hf", *(["--instruct"] if instruct else ["--base"]), src, ours)
    compare_weights(ours, oracle)
    known = {}
    if version == "3.1":
        known["rope_scaling"] = "transformers 4.44.2's converter omits Llama 3.1's rope scaling (added in 4.45)"
    if version == "3" and instruct:
        known["eos_token_id"] = "we follow the published Meta-Llama-3-8B-Instruct config (128009)"
    compare_json(ours, oracle, "config.json", known)
    if os.path.exists(os.path.join(oracle, "generation_config.json")):
        compare_json(ours, oracle, "generation_config.json")
    tokens = [128000, 2028, 374, 264, 1296, 11914, 13, 4438, 527, 499, 30, 128009, 5, 99, 127999]
    tokens += [(t * 7919) % 128000 for t in range(1, 49)]  # long enough for rope scaling to show
    lm = meta_logits(src, tokens)
    lh = hf_logits(ours, tokens)
    diff = (lm - lh).abs().max().item()
    check(diff <= 1e-4, f"logits: max |Meta model.py - transformers(ours)| = {diff:.3e} (<= 1e-4), shape {tuple(lh.shape)}")
    if version == "3.1":
        # Control: the same weights without rope_scaling are measurably off, so the check above sees it.
        plain = os.path.join(work, f"plain-{label}")
        shutil.copytree(ours, plain)
        c = json.load(open(os.path.join(plain, "config.json")))
        c["rope_scaling"] = None
        c["max_position_embeddings"] = 8192
        json.dump(c, open(os.path.join(plain, "config.json"), "w"))
        off = (lm - hf_logits(plain, tokens)).abs().max().item()
        check(off > 1e-3, f"control: without rope_scaling the logits differ by {off:.3e}")
    compare_tokenizers(ours, oracle, os.path.join(src, "tokenizer.model"))
    round_trip_meta(oracle, src, os.path.join(work, label))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--fixture", default=os.path.join(ROOT, "testdata/tiny-mp1"))
    ap.add_argument("--keep", help="keep outputs in this directory")
    a = ap.parse_args()
    work = a.keep or tempfile.mkdtemp(prefix="check-convert-")
    os.makedirs(work, exist_ok=True)
    try:
        src = os.path.abspath(a.fixture)
        variant(src, work, "llama3-base", "3", False)
        # A Llama 3.1 Instruct copy of the same weights: params gain use_scaled_rope.
        src31 = os.path.join(work, "Llama3.1-tiny-Instruct")
        os.makedirs(src31, exist_ok=True)
        shutil.copy(os.path.join(src, "consolidated.00.pth"), src31)
        shutil.copy(os.path.realpath(os.path.join(src, "tokenizer.model")), os.path.join(src31, "tokenizer.model"))
        p = json.load(open(os.path.join(src, "params.json")))
        p["use_scaled_rope"] = True
        json.dump(p, open(os.path.join(src31, "params.json"), "w"))
        variant(src31, work, "llama31-instruct", "3.1", True)
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)
    print("ALL OK" if not FAILED else f"{len(FAILED)} FAILED")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
