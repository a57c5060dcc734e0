#!/usr/bin/env python3
"""Oracle check for `llamactl convert --to gguf` (not run by CI).

For Meta fixtures (MP 1 and 2, base and instruct, Llama 3 and 3.1 with scaled rope, bf16/f16/f32
sources) it makes the HF dir with `llamactl convert --to hf`, runs llama.cpp's own
convert_hf_to_gguf.py on it (the oracle) for every --outtype, and checks with gguf-py's reader that
`llamactl convert --to gguf` from the Meta dir and from the HF dir writes the same file: metadata
keys in the same order with the same types and values (naming keys derived from the directory
aside), the same tensors (names, order, GGML types, shapes, bytes). Then llama.cpp's
llama-completion generates greedily from both files and the texts must match.

--golden also writes testdata/gguf/: the oracle's structure for testdata/tiny-mp1 (metadata values
or digests, tensor table, per-tensor sha256) and gguf-py's Q8_0 bytes for a fixed input, which
the CI tests (tests/gguf.rs) compare against.

Usage (llama.cpp source tree with gguf-py, built llama-completion; a Python with torch,
transformers, numpy):
    PYTHONPATH=LLAMA_CPP/gguf-py python scripts/check_gguf.py --llama-cpp LLAMA_CPP [--golden]
"""
import argparse
import hashlib
import json
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
from make_fixtures import make_weights, split  # noqa: E402

from gguf import GGUFReader, GGMLQuantizationType  # noqa: E402
from gguf.quants import quantize  # noqa: E402

# Keys the converter derives from the directory name (and ours from the source dir).
NAMING = {"general.name", "general.basename", "general.size_label", "general.finetune",
          "general.type", "general.version", "general.organization"}
FAILED = []
PROMPT = "The capital of France is"


def check(ok, what):
    print(("ok    " if ok else "FAIL  ") + what, flush=True)
    if not ok:
        FAILED.append(what)


def llamactl(*args):
    exe = os.path.join(ROOT, "target", "release", "llamactl")
    subprocess.run([exe, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def oracle(llama_cpp, hf_dir, outtype, out):
    conv = os.path.join(llama_cpp, "convert_hf_to_gguf.py")
    subprocess.run([sys.executable, conv, hf_dir, "--outtype", outtype, "--outfile", out],
                   check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def meta_dir(d, params, dtype, mp, seed):
    os.makedirs(d)
    with open(os.path.join(d, "params.json"), "w") as f:
        json.dump(params, f)
    sd = make_weights(params, params["vocab_size"], dtype, seed)
    for r, shard in enumerate(split(sd, mp) if mp > 1 else [sd]):
        torch.save(shard, os.path.join(d, f"consolidated.{r:02d}.pth"))
    shutil.copy(os.path.join(ROOT, "testdata", "tokenizer.model"), os.path.join(d, "tokenizer.model"))


def field_bytes(f):
    return b"".join(bytes(p) for p in f.parts[3:])


def kvs(path):
    r = GGUFReader(path)
    return [(f.name, [int(t) for t in f.types], field_bytes(f))
            for f in r.fields.values() if not f.name.startswith("GGUF.")], r


def same_file(ours, ref):
    """Why two GGUF files differ (empty when they are equal apart from naming keys)."""
    (ka, ra), (kb, rb) = kvs(ours), kvs(ref)
    ka = [k for k in ka if k[0] not in NAMING]
    kb = [k for k in kb if k[0] not in NAMING]
    why = []
    if [k[0] for k in ka] != [k[0] for k in kb]:
        why.append(f"keys {[k[0] for k in ka]} vs {[k[0] for k in kb]}")
    why += [f"value of {x[0]}" for x, y in zip(ka, kb) if x[0] == y[0] and x != y]
    ta = [(t.name, int(t.tensor_type), list(map(int, t.shape))) for t in ra.tensors]
    tb = [(t.name, int(t.tensor_type), list(map(int, t.shape))) for t in rb.tensors]
    if ta != tb:
        why.append("tensor table")
    why += [f"bytes of {x.name}" for x, y in zip(ra.tensors, rb.tensors)
            if x.data.tobytes() != y.data.tobytes()]
    return why


def generate(llama_cpp, model):
    exe = os.path.join(llama_cpp, "build", "bin", "llama-completion")
    out = subprocess.run([exe, "-m", model, "-p", PROMPT, "-n", "16", "--temp", "0", "-no-cnv",
                          "--simple-io", "-t", "2", "-s", "1", "--no-warmup"],
                         capture_output=True, text=True, errors="replace")
    return out.stdout if out.returncode == 0 else f"<llama-completion exit {out.returncode}>"


FIXTURES = [
    # name, params, source dtype, MP, instruct
    ("llama3-base-mp1", dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2), torch.bfloat16, 1, False),
    ("llama3-instruct-mp2", dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2), torch.bfloat16, 2, True),
    ("llama31-base-mp2", dict(dim=128, n_layers=2, n_heads=2, n_kv_heads=2, use_scaled_rope=True),
     torch.float16, 2, False),
    ("llama31-instruct-mp1", dict(dim=128, n_layers=2, n_heads=1, n_kv_heads=1, use_scaled_rope=True),
     torch.float32, 1, True),
]
OUTTYPES = ["f32", "bf16", "f16", "q8_0"]


def params_of(p):
    base = dict(vocab_size=128256, multiple_of=32, norm_eps=1e-05, rope_theta=500000.0)
    return {**p, **base}


def check_fixture(tmp, llama_cpp, name, p, dtype, mp, instruct):
    meta = os.path.join(tmp, name, "meta")
    hf = os.path.join(tmp, name, "hf")
    meta_dir(meta, params_of(p), dtype, mp, seed=len(name))
    flag = "--instruct" if instruct else "--base"
    llamactl("convert", "--to", "hf", meta, hf, flag)
    for t in OUTTYPES:
        ref = os.path.join(tmp, name, f"ref-{t}.gguf")
        oracle(llama_cpp, hf, t, ref)
        ours_meta = os.path.join(tmp, name, f"ours-meta-{t}.gguf")
        ours_hf = os.path.join(tmp, name, f"ours-hf-{t}.gguf")
        llamactl("convert", "--to", "gguf", meta, ours_meta, "--dtype", t, flag)
        llamactl("convert", "--to", "gguf", hf, ours_hf, "--dtype", t)
        for src, ours in (("Meta", ours_meta), ("HF", ours_hf)):
            why = same_file(ours, ref)
            check(not why, f"{name} {t} from {src} dir equals llama.cpp's converter"
                  + (f" ({'; '.join(why[:4])})" if why else ""))
        if t in ("bf16", "q8_0"):
            a, b = generate(llama_cpp, ours_meta), generate(llama_cpp, ref)
            if a == b and a.startswith("<llama-completion exit"):
                print(f"skip  {name} {t}: llama-completion fails on llama.cpp's own file too: {b}")
                continue
            check(a == b, f"{name} {t}: llama-completion greedy text equal: {a.strip()!r}")


def template_fields(path):
    r = GGUFReader(path)
    out = []
    for k, v in r.fields.items():
        if k.startswith("tokenizer.chat_template"):
            out.append((k, bytes(v.parts[-1]).decode() if int(v.types[0]) == 8
                        else [bytes(v.parts[i]).decode() for i in v.data]))
    return out


def check_templates(tmp, llama_cpp):
    """Chat templates as a tokenizer_config.json list, as chat_template.jinja plus
    additional_chat_templates/, and as chat_template.json. One extra name each: the converter
    lists the names from a Python set, whose order is not fixed."""
    hf = os.path.join(tmp, "templates-hf")
    llamactl("convert", "--to", "hf", os.path.join(ROOT, "testdata", "tiny-mp1"), hf, "--instruct")
    cfg_path = os.path.join(hf, "tokenizer_config.json")
    with open(cfg_path) as f:
        cfg = json.load(f)

    def write(path, text):
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as f:
            f.write(text)

    def config(template):
        c = dict(cfg)
        if template is None:
            c.pop("chat_template", None)
        else:
            c["chat_template"] = template
        write(cfg_path, json.dumps(c))

    def compare(label):
        ref, ours = os.path.join(tmp, f"tpl-{label}-ref.gguf"), os.path.join(tmp, f"tpl-{label}-ours.gguf")
        oracle(llama_cpp, hf, "bf16", ref)
        llamactl("convert", "--to", "gguf", hf, ours)
        a, b = template_fields(ours), template_fields(ref)
        check(a == b, f"chat templates ({label}) equal llama.cpp's converter: {b}")

    config([{"name": "default", "template": "D"}, {"name": "tool use", "template": "T"}])
    compare("config list")
    config(None)
    write(os.path.join(hf, "chat_template.jinja"), "J")
    write(os.path.join(hf, "additional_chat_templates", "rag.jinja"), "R")
    compare("jinja files")
    os.remove(os.path.join(hf, "chat_template.jinja"))
    shutil.rmtree(os.path.join(hf, "additional_chat_templates"))
    write(os.path.join(hf, "chat_template.json"), json.dumps({"chat_template": "C"}))
    compare("chat_template.json")


def golden_structure(path):
    r = GGUFReader(path)
    kv = []
    for f in r.fields.values():
        if f.name.startswith("GGUF."):
            continue
        t = int(f.types[0])
        if t == 9 or f.name in NAMING:  # arrays (and naming keys) by digest
            kv.append([f.name, t, {"sha256": hashlib.sha256(field_bytes(f)).hexdigest()}])
        elif t == 8:
            kv.append([f.name, t, bytes(f.parts[-1]).decode()])
        else:
            kv.append([f.name, t, f.parts[-1].tolist()[0]])
    tensors = [[t.name, int(t.tensor_type), [int(d) for d in t.shape], int(t.data_offset - r.tensors[0].data_offset),
                hashlib.sha256(t.data.tobytes()).hexdigest()] for t in r.tensors]
    return {"kvs": kv, "tensors": tensors}


def one_entry_per_line(doc):
    head = json.dumps({k: v for k, v in doc.items() if k not in ("kvs", "tensors")})[:-1]
    kv = ",\n".join(json.dumps(k) for k in doc["kvs"])
    ts = ",\n".join(json.dumps(t) for t in doc["tensors"])
    return f'{head},\n"kvs": [\n{kv}\n],\n"tensors": [\n{ts}\n]}}\n'


def write_golden(tmp, llama_cpp):
    out_dir = os.path.join(ROOT, "testdata", "gguf")
    os.makedirs(out_dir, exist_ok=True)
    tiny = os.path.join(ROOT, "testdata", "tiny-mp1")
    # Llama 3 base (the fixture as it is) and Llama 3.1 instruct (its weights with use_scaled_rope).
    t31 = os.path.join(tmp, "tiny31")
    os.makedirs(t31)
    for f in os.listdir(tiny):
        if f.endswith(".pth") or f == "tokenizer.model":
            shutil.copy(os.path.join(tiny, f), os.path.join(t31, f))
    with open(os.path.join(tiny, "params.json")) as f:
        p = json.load(f)
    with open(os.path.join(t31, "params.json"), "w") as f:
        json.dump({**p, "use_scaled_rope": True}, f)
    variants = [("tiny-mp1", tiny, "--base", "bf16"), ("tiny-mp1", tiny, "--base", "q8_0"),
                ("tiny31-instruct", t31, "--instruct", "f32")]
    for label, src, flag, t in variants:
        hf = os.path.join(tmp, f"{label}-{t}-hf")
        llamactl("convert", "--to", "hf", src, hf, flag)
        ref = os.path.join(tmp, f"{label}-{t}.gguf")
        oracle(llama_cpp, hf, t, ref)
        doc = {"made_by": "scripts/check_gguf.py (llama.cpp convert_hf_to_gguf.py on `convert --to hf` output)",
               "source": label, "flag": flag, "outtype": t, **golden_structure(ref)}
        with open(os.path.join(out_dir, f"{label}-{t}.json"), "w") as f:
            f.write(one_entry_per_line(doc))
    # Q8_0: blocks with exact halves after scaling, zeros, negative maxima, tiny and large values.
    g = torch.Generator().manual_seed(7)
    x = (torch.randn(4, 64, generator=g) * torch.tensor([1e-3, 1.0, 30.0, 1e4]).reshape(4, 1)).numpy()
    x = x.astype(np.float32)
    x[0, :32] = 0.0
    # max 127 gives d = 1, so k + 0.5 are exact ties.
    x[1, :32] = [127.0] + [(k + 0.5) * (-1) ** k for k in range(31)]
    q = quantize(x, GGMLQuantizationType.Q8_0)
    with open(os.path.join(out_dir, "q8_0.json"), "w") as f:
        json.dump({"made_by": "scripts/check_gguf.py (gguf-py quants.quantize)", "rows": 4, "cols": 64,
                   "input": [float(v) for v in x.reshape(-1)], "q8_0_hex": q.tobytes().hex()}, f)
        f.write("\n")
    print(f"wrote golden files to {out_dir}")


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True)
    ap.add_argument("--golden", action="store_true")
    ap.add_argument("--keep", help="work in this dir and keep it")
    a = ap.parse_args()
    tmp = a.keep or tempfile.mkdtemp(prefix="check-gguf-")
    try:
        if a.golden:
            write_golden(tmp, a.llama_cpp)
        check_templates(tmp, a.llama_cpp)
        for fx in FIXTURES:
            check_fixture(tmp, a.llama_cpp, *fx)
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{len(FAILED)} failed" if FAILED else "\nall checks passed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
