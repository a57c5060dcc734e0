#!/usr/bin/env python3
"""Write the tiny torch checkpoints under testdata/ and golden JSON describing them.

Run by hand with a Python that has torch (CI never runs this):
    python scripts/make_fixtures.py
Outputs (deterministic for a given torch version):
  testdata/tiny-mp1/      real Llama 3 vocabulary (128256) with tiny dims, bf16, MP 1 (for run/demo)
  testdata/small-mp1/     vocab 256, 8 heads / 2 kv heads, bf16, MP 1; three norms share one storage
  testdata/small-mp2/     the same weights split as Meta's fairscale layers split them
  testdata/misc/          f16.pth, f32.pth, views.pth (a non-contiguous view), llama2-mp2/ (dim-1 embedding split),
                          types.pth (fp8 e4m3fn/e5m2, uint16/32/64, bool: torch writes them with _rebuild_tensor_v3)
  testdata/fp8-mp2/       the Llama 3.1 405B fp8 release in miniature: 4 layers, MP 2, FFN w1/w2/w3 of layers
                          1..n-2 as float8_e4m3fn with row scales in fp8_scales_{rank}.pt, the rest bf16;
                          misc/fp8-mp2-dequant.json: statistics of its dequantized fp8 matrices
  testdata/golden/*.json  per file: tensor names, dtypes, shapes, and the sha256 of each tensor's
                          row-major bytes, plus storage sharing facts
"""
import hashlib, json, math, os, shutil, sys
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testdata")
DT_NAME = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32", torch.float64: "F64",
           torch.int64: "I64", torch.int32: "I32", torch.int16: "I16", torch.int8: "I8", torch.uint8: "U8",
           torch.bool: "BOOL", torch.float8_e4m3fn: "F8_E4M3", torch.float8_e5m2: "F8_E5M2",
           torch.uint16: "U16", torch.uint32: "U32", torch.uint64: "U64"}
FP8_MAX = 448.0  # largest finite float8_e4m3fn


def ffn_hidden(dim, multiple_of, mult):
    h = int(2 * (4 * dim) / 3)
    if mult is not None:
        h = int(mult * h)
    return multiple_of * ((h + multiple_of - 1) // multiple_of)


def make_weights(p, vocab, dtype, seed):
    g = torch.Generator().manual_seed(seed)
    dim, hd = p["dim"], p["dim"] // p["n_heads"]
    kv = p.get("n_kv_heads", p["n_heads"]) * hd
    hidden = ffn_hidden(dim, p["multiple_of"], p.get("ffn_dim_multiplier"))

    def lin(o, i):
        return (torch.randn(o, i, generator=g) / math.sqrt(i)).to(dtype)

    def norm():
        return (1.0 + 0.1 * torch.randn(dim, generator=g)).to(dtype)

    sd = {"tok_embeddings.weight": torch.randn(vocab, dim, generator=g).to(dtype)}
    for l in range(p["n_layers"]):
        sd[f"layers.{l}.attention.wq.weight"] = lin(p["n_heads"] * hd, dim)
        sd[f"layers.{l}.attention.wk.weight"] = lin(kv, dim)
        sd[f"layers.{l}.attention.wv.weight"] = lin(kv, dim)
        sd[f"layers.{l}.attention.wo.weight"] = lin(dim, p["n_heads"] * hd)
        sd[f"layers.{l}.feed_forward.w1.weight"] = lin(hidden, dim)
        sd[f"layers.{l}.feed_forward.w2.weight"] = lin(dim, hidden)
        sd[f"layers.{l}.feed_forward.w3.weight"] = lin(hidden, dim)
        sd[f"layers.{l}.attention_norm.weight"] = norm()
        sd[f"layers.{l}.ffn_norm.weight"] = norm()
    sd["norm.weight"] = norm()
    sd["output.weight"] = lin(vocab, dim)
    return sd


# Meta's fairscale split dims: ColumnParallelLinear splits dim 0, RowParallelLinear dim 1,
# VocabParallelEmbedding (Llama 3) dim 0, ParallelEmbedding (Llama 2) dim 1, norms replicated.
def split_dim(name, embed_dim):
    if name == "tok_embeddings.weight":
        return embed_dim
    if name in ("norm.weight", "rope.freqs") or name.endswith("_norm.weight"):
        return None
    if name.endswith("attention.wo.weight") or name.endswith("feed_forward.w2.weight"):
        return 1
    return 0


def split(sd, mp, embed_dim=0):
    shards = [dict() for _ in range(mp)]
    for k, v in sd.items():
        d = split_dim(k, embed_dim)
        for r in range(mp):
            shards[r][k] = v.clone() if d is None else v.chunk(mp, dim=d)[r].clone()
    return shards


def sha(t):
    return hashlib.sha256(t.contiguous().reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()


def golden(path, sd):
    rel = os.path.relpath(path, ROOT)
    tensors = [{"name": k, "dtype": DT_NAME[v.dtype], "shape": list(v.shape), "sha256": sha(v)}
               for k, v in sd.items()]
    out = os.path.join(ROOT, "golden", rel.replace("/", "__") + ".json")
    os.makedirs(os.path.dirname(out), exist_ok=True)
    with open(out, "w") as f:
        json.dump({"file": rel, "tensors": tensors}, f, indent=1)
        f.write("\n")


def save(sd, path):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    torch.save(sd, path)
    # Golden facts come from torch reading the file back, not from the objects written.
    golden(path, torch.load(path, weights_only=True))


def checklist(d):
    lines = []
    for name in sorted(os.listdir(d)):
        if name == "checklist.chk":
            continue
        with open(os.path.join(d, name), "rb") as f:
            lines.append(f"{hashlib.md5(f.read()).hexdigest()}  {name}\n")
    with open(os.path.join(d, "checklist.chk"), "w") as f:
        f.writelines(lines)


def fp8_quantize(w):
    """Row-wise fp8 as Meta's 405B release stores it: value = q.float() * scale[:, None]."""
    w = w.float()
    scale = (w.abs().amax(dim=1) / FP8_MAX).clamp(min=1e-12)
    q = (w / scale[:, None]).clamp(-FP8_MAX, FP8_MAX).to(torch.float8_e4m3fn)
    return q, scale


def fp8_shards(shards, n_layers):
    """Quantize FFN w1/w2/w3 of layers 1..n-2 in each rank's shard; returns (shards, scales per rank).
    Each rank computes its own row scales: w1/w3 rows are that rank's rows, w2 rows span only that
    rank's columns, which is why w2 cannot be merged exactly across ranks."""
    scales = []
    for r, sd in enumerate(shards):
        sc = {}
        for l in range(1, n_layers - 1):
            for w in ("w1", "w3", "w2"):
                name = f"layers.{l}.feed_forward.{w}.weight"
                sd[name], sc[f"{l}_feed_forward.{w}_{r}"] = fp8_quantize(sd[name])
        scales.append(sc)
    return shards, scales


def model_dir(d, params, shards, tokenizer=True, extra=None):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    with open(os.path.join(d, "params.json"), "w") as f:
        json.dump(params, f)
    for r, sd in enumerate(shards):
        save(sd, os.path.join(d, f"consolidated.{r:02d}.pth"))
    for name, sd in (extra or {}).items():
        save(sd, os.path.join(d, name))
    if tokenizer:
        # A relative symlink keeps one copy of the real tokenizer in the repo.
        os.symlink("../tokenizer.model", os.path.join(d, "tokenizer.model"))
    checklist(d)


def main():
    torch.manual_seed(0)
    tiny = {"dim": 16, "n_layers": 2, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 128256,
            "multiple_of": 16, "ffn_dim_multiplier": 1.3, "norm_eps": 1e-05, "rope_theta": 500000.0}
    sd = make_weights(tiny, 128256, torch.bfloat16, seed=1)
    model_dir(os.path.join(ROOT, "tiny-mp1"), tiny, [sd])

    small = {"dim": 32, "n_layers": 2, "n_heads": 8, "n_kv_heads": 2, "vocab_size": 256,
             "multiple_of": 32, "norm_eps": 1e-05, "rope_theta": 500000.0}
    sd = make_weights(small, 256, torch.bfloat16, seed=2)
    # Three norms as views into one storage, as torch.save keeps shared storages shared.
    flat = torch.cat([sd["layers.0.attention_norm.weight"], sd["layers.0.ffn_norm.weight"], sd["norm.weight"]])
    dim = small["dim"]
    sd["layers.0.attention_norm.weight"] = flat[0:dim]
    sd["layers.0.ffn_norm.weight"] = flat[dim:2 * dim]
    sd["norm.weight"] = flat[2 * dim:3 * dim]
    model_dir(os.path.join(ROOT, "small-mp1"), small, [sd], tokenizer=False)
    model_dir(os.path.join(ROOT, "small-mp2"), small, split(sd, 2), tokenizer=False)

    misc = os.path.join(ROOT, "misc")
    g = torch.Generator().manual_seed(3)
    save({"a": torch.randn(5, 7, generator=g).half(), "b": torch.randn(3, generator=g).half()},
         os.path.join(misc, "f16.pth"))
    save({"a": torch.randn(4, 6, generator=g), "scalar": torch.tensor(2.5)}, os.path.join(misc, "f32.pth"))
    base = torch.randn(6, 4, generator=g)
    save({"transposed": base.t(), "row": base[2], "col": base[:, 1]}, os.path.join(misc, "views.pth"))

    llama2 = {"dim": 32, "n_layers": 1, "n_heads": 4, "multiple_of": 32, "norm_eps": 1e-06, "vocab_size": -1}
    sd = make_weights(llama2, 128, torch.float16, seed=4)
    hd = 32 // 4
    sd["rope.freqs"] = (1.0 / (10000.0 ** (torch.arange(0, hd, 2).float() / hd))).half()
    model_dir(os.path.join(misc, "llama2-mp2"), llama2, split(sd, 2, embed_dim=1), tokenizer=False)

    types = {"e4m3": torch.randn(3, 4, generator=g).to(torch.float8_e4m3fn),
             "e5m2": torch.randn(5, generator=g).to(torch.float8_e5m2),
             "u16": torch.tensor([0, 1, 65535], dtype=torch.int32).to(torch.uint16),
             "u32": torch.tensor([7, 4000000000], dtype=torch.int64).to(torch.uint32),
             "u64": torch.tensor([1, 2], dtype=torch.int64).to(torch.uint64),
             "mask": torch.tensor([True, False, True]),
             "i8": torch.tensor([-3, 4], dtype=torch.int8)}
    save(types, os.path.join(misc, "types.pth"))

    fp8 = {"dim": 32, "n_layers": 4, "n_heads": 4, "n_kv_heads": 2, "vocab_size": 256,
           "multiple_of": 32, "ffn_dim_multiplier": 1.2, "norm_eps": 1e-05, "rope_theta": 500000.0,
           "use_scaled_rope": True}
    sd = make_weights(fp8, 256, torch.bfloat16, seed=5)
    shards, scales = fp8_shards(split(sd, 2), fp8["n_layers"])
    model_dir(os.path.join(ROOT, "fp8-mp2"), fp8, shards, tokenizer=False,
              extra={f"fp8_scales_{r}.pt": sc for r, sc in enumerate(scales)})
    # What `verify --deep` must report for each fp8 matrix: statistics of w.float() * scale[:, None].
    deq = {}
    for r in range(2):
        d = os.path.join(ROOT, "fp8-mp2")
        sd = torch.load(os.path.join(d, f"consolidated.{r:02d}.pth"), weights_only=True)
        sc = torch.load(os.path.join(d, f"fp8_scales_{r}.pt"), weights_only=True)
        for name, w in sd.items():
            if w.dtype == torch.float8_e4m3fn:
                l, proj = name.split(".")[1], name.split(".")[3]
                v = (w.float() * sc[f"{l}_feed_forward.{proj}_{r}"][:, None]).double()
                deq[f"consolidated.{r:02d}.pth:{name}"] = {
                    "min": v.min().item(), "max": v.max().item(), "mean": v.mean().item(),
                    "std": v.std(unbiased=False).item()}
    with open(os.path.join(misc, "fp8-mp2-dequant.json"), "w") as f:
        json.dump(deq, f, indent=1, sort_keys=True)
        f.write("\n")
    print("fixtures written under", os.path.normpath(ROOT), "with torch", torch.__version__)


if __name__ == "__main__":
    sys.exit(main())
