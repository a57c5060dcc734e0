#!/usr/bin/env python3
"""Oracle check for `llamactl convert --to gguf` (not run by CI).

For Meta fixtures (MP 1 and 2, base and instruct, Llama 3 and 3.1 with scaled rope, bf16/f16/f32
sources) it makes the HF dir with `llamactl convert --to hf`, runs llama.cpp's own
convert_hf_to_gguf.py on it (the oracle) for every --outtype, and checks with gguf-py's reader that
`llamactl convert --to gguf` from the Meta dir and from the HF dir writes the same file: metadata
keys in the same order with the same types and values (naming keys derived from the directory
aside), the same tensors (names, order, GGML types, shapes, bytes). Then llama.cpp's
llama-completion generates greedily from both files and the texts must match.

Quantized types (`--dtype q4_k_m` and the other llama-quantize file types): the oracle is
llama.cpp's converter with --outtype equal to the source's dtype, then `llama-quantize IN OUT TYPE`
(no importance matrix). On fixtures whose rows are multiples of 256 and ones whose rows are not,
MP 1 and 2, base and instruct, Llama 3 and 3.1, from the Meta dir, the HF dir and the converter's
GGUF, our file must equal llama-quantize's; llama-completion's greedy text must match. An fp8
fixture (Meta's 405B layout) is dequantized by torch (w.float() * scale[:, None]) into an HF dir,
through the converter (f32) and llama-quantize; ours reads the fp8 dir directly.

--golden also writes testdata/gguf/: the oracle's structure for testdata/tiny-mp1 (metadata values
or digests, tensor table, per-tensor sha256), gguf-py's Q8_0 bytes for a fixed input, ggml's own
quantizer output (libggml-base's ggml_quantize_chunk) for rows chosen to hit ties, zero blocks and
outliers (quants.json), llama-quantize's structure for tiny-mp1 in several types, and a small
synthetic bf16 GGUF whose rows are whole 256-blocks (k256-bf16.gguf) with llama-quantize's
structure for every type; the CI tests (tests/gguf.rs, tests/gguf_quant.rs) compare against them.

Usage (llama.cpp source tree with gguf-py, built llama-completion and llama-quantize; a Python with
torch, transformers, numpy; LLAMACTL=path/to/llamactl, default target/release/llamactl):
    PYTHONPATH=LLAMA_CPP/gguf-py python scripts/check_gguf.py --llama-cpp LLAMA_CPP [--golden] [--quick]
"""
import argparse
import ctypes
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
from make_fixtures import fp8_shards, make_weights, split  # noqa: E402

import gguf  # noqa: E402
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
    exe = os.environ.get("LLAMACTL") or os.path.join(ROOT, "target", "release", "llamactl")
    subprocess.run([exe, *args], check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def llama_quantize(llama_cpp, src, out, qtype):
    exe = os.path.join(llama_cpp, "build", "bin", "llama-quantize")
    subprocess.run([exe, src, out, qtype.upper(), "2"], check=True,
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


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
    return {**base, **p}


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


# llama-quantize's file types llamactl writes; the first six are checked on every fixture.
QTYPES = ["q4_0", "q4_k_s", "q4_k_m", "q5_k_m", "q6_k", "q8_0",
          "q4_1", "q5_0", "q5_1", "q2_k", "q3_k_s", "q3_k_m", "q3_k_l", "q5_k_s"]
QFIXTURES = [
    # name, params, source dtype, MP, instruct, types. dim 256 and hidden 512: every row is whole
    # 256-blocks; the others exercise the fallbacks (rows of 64, 128, hidden not a multiple of 256).
    ("k256-llama31-base-mp2", dict(dim=256, n_layers=8, n_heads=4, n_kv_heads=2, multiple_of=256,
                                   ffn_dim_multiplier=0.75, use_scaled_rope=True),
     torch.bfloat16, 2, False, QTYPES[:6]),
    ("k256-llama3-instruct-mp1", dict(dim=256, n_layers=3, n_heads=2, n_kv_heads=2, multiple_of=256),
     torch.float32, 1, True, ["q4_k_m", "q6_k"]),
    ("llama3-base-mp1", dict(dim=64, n_layers=2, n_heads=4, n_kv_heads=2), torch.bfloat16, 1, False,
     QTYPES[:6]),
    ("llama31-instruct-mp2", dict(dim=128, n_layers=2, n_heads=2, n_kv_heads=2, use_scaled_rope=True),
     torch.bfloat16, 2, True, QTYPES[:6]),
]
OUTTYPE = {torch.bfloat16: "bf16", torch.float16: "f16", torch.float32: "f32"}


def same_tensors(ours, ref):
    """Why two files' tensors differ by name (type, shape, bytes), whatever their order."""
    def table(path):
        return {t.name: (int(t.tensor_type), list(map(int, t.shape)), t.data.tobytes())
                for t in GGUFReader(path).tensors}
    a, b = table(ours), table(ref)
    if a.keys() != b.keys():
        return [f"names {sorted(a.keys() ^ b.keys())}"]
    return [f"tensor {k}" for k in a if a[k] != b[k]]


def check_quantized(tmp, llama_cpp, name, meta, hf, flag, ref_src, types, generate_for=("q4_k_m",)):
    """Our file for each type from the Meta dir (and for q4_k_m also from the HF dir and the
    converter's GGUF), against llama-quantize run on the converter's GGUF. Every type from a GGUF
    source is also checked by the CI goldens (k256-*.json). q8_0 from a directory is the
    converter's own Q8_0 layout (checked against it above); against llama-quantize its tensors are
    compared."""
    for t in types:
        ref = os.path.join(tmp, name, f"ref-{t}.gguf")
        llama_quantize(llama_cpp, ref_src, ref, t)
        outs = {}
        for src_kind, src, extra in (("Meta", meta, [flag]), ("HF", hf, []), ("GGUF", ref_src, [])):
            if src is None or (src_kind != "Meta" and t != "q4_k_m"):
                continue
            ours = os.path.join(tmp, name, f"ours-{src_kind}-{t}.gguf")
            llamactl("convert", "--to", "gguf", src, ours, "--dtype", t, *extra)
            outs[src_kind] = ours
            by_dir = t == "q8_0" and src_kind != "GGUF"
            why = same_tensors(ours, ref) if by_dir else same_file(ours, ref)
            what = "tensors equal" if by_dir else "equals"
            check(not why, f"{name} {t} from {src_kind} {what} llama-quantize's"
                  + (f" ({'; '.join(why[:4])})" if why else ""))
        if t in generate_for and "Meta" in outs:
            a, b = generate(llama_cpp, outs["Meta"]), generate(llama_cpp, ref)
            check(a == b, f"{name} {t}: llama-completion greedy text equal: {a.strip()!r}")


def check_quant_fixture(tmp, llama_cpp, name, p, dtype, mp, instruct, types):
    meta = os.path.join(tmp, name, "meta")
    hf = os.path.join(tmp, name, "hf")
    meta_dir(meta, params_of(p), dtype, mp, seed=len(name))
    flag = "--instruct" if instruct else "--base"
    llamactl("convert", "--to", "hf", meta, hf, flag)
    ref_src = os.path.join(tmp, name, f"ref-{OUTTYPE[dtype]}.gguf")
    oracle(llama_cpp, hf, OUTTYPE[dtype], ref_src)
    check_quantized(tmp, llama_cpp, name, meta, hf, flag, ref_src, types)


def check_fp8(tmp, llama_cpp):
    """Meta's fp8 layout: ours reads the fp8 dir; the oracle dequantizes with torch."""
    name = "fp8-llama31-mp2"
    p = params_of(dict(dim=256, n_layers=4, n_heads=4, n_kv_heads=2, multiple_of=256,
                       use_scaled_rope=True))
    meta = os.path.join(tmp, name, "meta")
    os.makedirs(meta)
    with open(os.path.join(meta, "params.json"), "w") as f:
        json.dump(p, f)
    sd = make_weights(p, p["vocab_size"], torch.bfloat16, seed=8)
    shards, scales = fp8_shards(split(sd, 2), p["n_layers"])
    for r, (shard, sc) in enumerate(zip(shards, scales)):
        torch.save(shard, os.path.join(meta, f"consolidated.{r:02d}.pth"))
        torch.save(sc, os.path.join(meta, f"fp8_scales_{r}.pt"))
    shutil.copy(os.path.join(ROOT, "testdata", "tokenizer.model"), os.path.join(meta, "tokenizer.model"))
    # The dequantized checkpoint, by torch: f32 for the fp8 weights, the rest as stored.
    deq = os.path.join(tmp, name, "deq-meta")
    os.makedirs(deq)
    shutil.copy(os.path.join(meta, "params.json"), deq)
    shutil.copy(os.path.join(meta, "tokenizer.model"), deq)
    for r in range(2):
        sdr = torch.load(os.path.join(meta, f"consolidated.{r:02d}.pth"), weights_only=True)
        sc = torch.load(os.path.join(meta, f"fp8_scales_{r}.pt"), weights_only=True)
        for k, w in sdr.items():
            if w.dtype == torch.float8_e4m3fn:
                layer, proj = k.split(".")[1], k.split(".")[3]
                sdr[k] = w.float() * sc[f"{layer}_feed_forward.{proj}_{r}"][:, None]
        torch.save(sdr, os.path.join(deq, f"consolidated.{r:02d}.pth"))
    # bf16: torch rounds the dequantized f32 to bf16; HF dir in bf16, the converter's bf16 GGUF.
    hf_bf16 = os.path.join(tmp, name, "hf-bf16")
    llamactl("convert", "--to", "hf", deq, hf_bf16, "--base", "--dtype", "bf16")
    ref = os.path.join(tmp, name, "ref-bf16.gguf")
    oracle(llama_cpp, hf_bf16, "bf16", ref)
    ours = os.path.join(tmp, name, "ours-bf16.gguf")
    llamactl("convert", "--to", "gguf", meta, ours, "--dtype", "bf16", "--base")
    why = same_file(ours, ref)
    check(not why, f"{name} bf16 from the fp8 dir equals the converter's on torch's dequantized weights"
          + (f" ({'; '.join(why[:4])})" if why else ""))
    ours_hf = os.path.join(tmp, name, "ours-hf")
    llamactl("convert", "--to", "hf", meta, ours_hf, "--base", "--dtype", "bf16")
    a = open(os.path.join(ours_hf, "model.safetensors"), "rb").read()
    b = open(os.path.join(hf_bf16, "model.safetensors"), "rb").read()
    check(a == b, f"{name} convert --to hf --dtype bf16 from the fp8 dir equals torch's dequantization")
    # Quantized: the dequantized values in f32 (HF dir f32, converter f32), then llama-quantize.
    hf_f32 = os.path.join(tmp, name, "hf-f32")
    llamactl("convert", "--to", "hf", deq, hf_f32, "--base", "--dtype", "f32")
    ref_src = os.path.join(tmp, name, "ref-f32.gguf")
    oracle(llama_cpp, hf_f32, "f32", ref_src)
    check_quantized(tmp, llama_cpp, name, meta, None, "--base", ref_src, ["q4_k_m", "q8_0", "q6_k"],
                    generate_for=())


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
    write_quant_golden(tmp, llama_cpp, out_dir)
    print(f"wrote golden files to {out_dir}")


def ggml_quantize(llama_cpp, qtype, x):
    """ggml's own quantizer (libggml-base's ggml_quantize_chunk, no importance matrix)."""
    lib = ctypes.CDLL(os.path.join(llama_cpp, "build", "bin", "libggml-base.so"))
    lib.ggml_quantize_chunk.restype = ctypes.c_size_t
    lib.ggml_quantize_chunk.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_int64,
                                        ctypes.c_int64, ctypes.c_int64, ctypes.c_void_p]
    lib.ggml_row_size.restype = ctypes.c_size_t
    lib.ggml_row_size.argtypes = [ctypes.c_int, ctypes.c_int64]
    x = np.ascontiguousarray(x, dtype=np.float32)
    out = np.zeros(lib.ggml_row_size(qtype, x.shape[1]) * x.shape[0], dtype=np.uint8)
    lib.ggml_quantize_chunk(qtype, x.ctypes.data, out.ctypes.data, 0, x.shape[0], x.shape[1], None)
    return out.tobytes()


def quant_inputs():
    """Rows of 512 values that hit the quantizers' corner cases."""
    g = np.random.default_rng(20)
    n = 512
    rows = [g.standard_normal(n)]
    r = g.standard_normal(n) * 1e-3
    r[::7] = 0
    rows.append(r)                                  # small, some zeros
    r = g.standard_normal(n) * 0.02
    r[:256] = 0
    r[300] = 1e-20
    rows.append(r)                                  # an all-zero super-block
    rows.append(g.standard_t(2, n))                 # heavy tails
    r = (g.standard_normal(n) * 0.02).astype(np.float32)
    rows.append((r.view(np.uint32) & 0xFFFF0000).view(np.float32))  # bf16 values, as weights are
    rows.append(np.round(g.standard_normal(n) * 8) / 2)             # halves
    rows.append(np.full(n, 0.375))                  # constant
    r = -np.abs(g.standard_normal(n)) * 3
    r[5] = 2
    rows.append(r)                                  # negative-dominated
    # Groups of 16 led by -8: Q3_K's first scale is exactly 1/2, so odd values give exact ties
    # (ggml rounds them to even).
    group = [-8.0, 1, 3, -1, 5, -3, 7, -5, 1, 3, -7, 1, -1, 5, 3, 1]
    rows.append(np.tile(np.array(group, dtype=np.float64), n // 16))
    return np.array(rows, dtype=np.float32)


def write_k256_source(path):
    """A bf16 GGUF whose every matrix row is whole 256-blocks (2 layers, small vocab, no
    tokenizer: llama-quantize does not need one), written with gguf-py."""
    g = torch.Generator().manual_seed(256)
    dim, n_layers, heads, kv, ffn, vocab = 256, 2, 4, 1, 256, 256
    hd = dim // heads
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(n_layers)
    w.add_context_length(2048)
    w.add_embedding_length(dim)
    w.add_feed_forward_length(ffn)
    w.add_head_count(heads)
    w.add_head_count_kv(kv)
    w.add_rope_freq_base(500000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_key_length(hd)
    w.add_value_length(hd)
    w.add_file_type(32)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(hd)

    def t(name, *shape, scale=0.02):
        x = torch.randn(*shape, generator=g) * scale
        if len(shape) == 1:
            w.add_tensor(name, (1.0 + x).numpy().astype(np.float32))
        else:
            b = x.to(torch.bfloat16).view(torch.int16).numpy().view(np.uint16)
            w.add_tensor(name, b, raw_shape=list(shape), raw_dtype=GGMLQuantizationType.BF16)
    t("token_embd.weight", vocab, dim, scale=1.0)
    for i in range(n_layers):
        t(f"blk.{i}.attn_norm.weight", dim)
        t(f"blk.{i}.attn_q.weight", dim, dim)
        t(f"blk.{i}.attn_k.weight", kv * hd, dim)
        t(f"blk.{i}.attn_v.weight", kv * hd, dim)
        t(f"blk.{i}.attn_output.weight", dim, dim)
        t(f"blk.{i}.ffn_norm.weight", dim)
        t(f"blk.{i}.ffn_gate.weight", ffn, dim)
        t(f"blk.{i}.ffn_up.weight", ffn, dim)
        t(f"blk.{i}.ffn_down.weight", dim, ffn)
    t("output_norm.weight", dim)
    t("output.weight", vocab, dim)
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def write_quant_golden(tmp, llama_cpp, out_dir):
    x = quant_inputs()
    types = {"Q4_0": 2, "Q4_1": 3, "Q5_0": 6, "Q5_1": 7, "Q8_0": 8,
             "Q2_K": 10, "Q3_K": 11, "Q4_K": 12, "Q5_K": 13, "Q6_K": 14}
    doc = {"made_by": "scripts/check_gguf.py (ggml_quantize_chunk of llama.cpp's libggml-base, no imatrix)",
           "rows": x.shape[0], "cols": x.shape[1], "input_f32_hex": x.tobytes().hex(),
           "quantized_hex": {k: ggml_quantize(llama_cpp, v, x).hex() for k, v in types.items()}}
    with open(os.path.join(out_dir, "quants.json"), "w") as f:
        json.dump(doc, f, indent=0)
        f.write("\n")
    # tiny-mp1 (rows of 16 and 64: the fallbacks) from the converter's bf16 file.
    hf = os.path.join(tmp, "tiny-mp1-bf16-hf")
    src = os.path.join(tmp, "tiny-mp1-src.gguf")
    if not os.path.isdir(hf):
        llamactl("convert", "--to", "hf", os.path.join(ROOT, "testdata", "tiny-mp1"), hf, "--base")
    oracle(llama_cpp, hf, "bf16", src)
    k256 = os.path.join(out_dir, "k256-bf16.gguf")
    write_k256_source(k256)
    for label, source, types_ in (("tiny-mp1", src, ["q4_k_m", "q4_0", "q6_k"]), ("k256", k256, QTYPES)):
        for t in types_:
            ref = os.path.join(tmp, f"{label}-{t}.gguf")
            llama_quantize(llama_cpp, source, ref, t)
            doc = {"made_by": f"scripts/check_gguf.py (llama-quantize {t.upper()} on "
                   + ("llama.cpp's converter output, bf16" if label == "tiny-mp1" else "k256-bf16.gguf") + ")",
                   "source": label, "outtype": t, **golden_structure(ref)}
            with open(os.path.join(out_dir, f"{label}-{t}.json"), "w") as f:
                f.write(one_entry_per_line(doc))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--llama-cpp", required=True)
    ap.add_argument("--golden", action="store_true")
    ap.add_argument("--keep", help="work in this dir and keep it")
    ap.add_argument("--quick", action="store_true", help="only the quantized-type checks")
    a = ap.parse_args()
    tmp = a.keep or tempfile.mkdtemp(prefix="check-gguf-")
    try:
        if a.golden:
            write_golden(tmp, a.llama_cpp)
        if not a.quick:
            check_templates(tmp, a.llama_cpp)
            for fx in FIXTURES:
                check_fixture(tmp, a.llama_cpp, *fx)
        for fx in QFIXTURES:
            check_quant_fixture(tmp, a.llama_cpp, *fx)
        check_fp8(tmp, a.llama_cpp)
    finally:
        if not a.keep:
            shutil.rmtree(tmp, ignore_errors=True)
    print(f"\n{len(FAILED)} failed" if FAILED else "\nall checks passed")
    sys.exit(1 if FAILED else 0)


if __name__ == "__main__":
    main()
