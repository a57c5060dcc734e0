#!/usr/bin/env python3
"""Write the tiny torch checkpoints under testdata/ and golden JSON describing them.

Run by hand with a Python that has torch (CI never runs this):
    python scripts/make_fixtures.py
Outputs (deterministic for a given torch version):
  testdata/tiny-mp1/      real Llama 3 vocabulary (128256) with tiny dims, bf16, MP 1 (for run/demo)
  testdata/small-mp1/     vocab 256, 8 heads / 2 kv heads, bf16, MP 1; three norms share one storage
  testdata/small-mp2/     the same weights split as Meta's fairscale layers split them
  testdata/misc/          f16.pth, f32.pth, views.pth (a non-contiguous view), llama2-mp2/ (dim-1 embedding split)
  testdata/golden/*.json  per file: tensor names, dtypes, shapes, and the sha256 of each tensor's
                          row-major bytes, plus storage sharing facts
"""
import hashlib, json, math, os, shutil, sys
import torch

ROOT = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testdata")
DT_NAME = {torch.bfloat16: "BF16", torch.float16: "F16", torch.float32: "F32"}


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


def model_dir(d, params, shards, tokenizer=True):
    if os.path.isdir(d):
        shutil.rmtree(d)
    os.makedirs(d)
    with open(os.path.join(d, "params.json"), "w") as f:
        json.dump(params, f)
    for r, sd in enumerate(shards):
        save(sd, os.path.join(d, f"consolidated.{r:02d}.pth"))
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
    print("fixtures written under", os.path.normpath(ROOT), "with torch", torch.__version__)


if __name__ == "__main__":
    sys.exit(main())
