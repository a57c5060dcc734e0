#!/usr/bin/env python3
"""Golden outputs for `llamactl reshard`, checked against Meta's llama-models checkpoint.py.

Run by hand with the reference venv (CI never runs this):
    /root/venvs/ref/bin/python scripts/make_reshard_golden.py

For each case (a source fixture and the MP steps the test applies to it) this writes
testdata/reshard/<case>.json: per output shard, per tensor, name / dtype / shape / sha256 of the
row-major bytes. The expected tensors are the source's full weights split by the documented rules
(DESIGN.md: fairscale split dims; kv heads replicated by the GQA group of each rank's query heads),
and every case is also run through the oracle, llama-models' own load-time path
`maybe_reshard_state_dict` -> `map_mp_rank` + `reshard_mp`, with fairscale's rank functions
pointed at each new rank in turn. Where the oracle agrees the JSON says so; where it does not
(kv heads past n_kv_heads when not starting from the native MP, merging repeated kv heads, Llama 2's
dim-1 embedding), the differences are listed under "oracle_runs" and printed.
"""
import hashlib, json, os, sys, tempfile

import torch
import llama_models.checkpoint as oracle

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_fixtures import DT_NAME, sha, split_dim  # noqa: E402

ROOT = os.path.normpath(os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "testdata"))

# name -> (source fixture, MP steps the test applies, oracle runs: (start fixture, steps)).
# small-*: 8 heads / 2 kv heads, so MP 2 is the native MP where every shard holds one kv head.
CASES = {
    "small-1to2": ("small-mp1", [2], [("small-mp1", [2])]),
    "small-2to1": ("small-mp2", [1], [("small-mp2", [1])]),
    "small-2to4": ("small-mp2", [4], [("small-mp2", [4])]),
    "small-4to2": ("small-mp2", [4, 2], [("small-mp2", [4, 2])]),
    "small-1to4": ("small-mp1", [4], [("small-mp2", [4]), ("small-mp1", [4])]),
    "small-1to8": ("small-mp1", [8], [("small-mp2", [8]), ("small-mp1", [8])]),
    "small-8to1": ("small-mp2", [8, 1], [("small-mp2", [8, 1])]),
    "llama2-2to1": ("misc/llama2-mp2", [1], [("misc/llama2-mp2", [1])]),
    "llama2-2to4": ("misc/llama2-mp2", [4], [("misc/llama2-mp2", [4])]),
}


def load_dir(d):
    paths = sorted(p for p in os.listdir(d) if p.startswith("consolidated.") and p.endswith(".pth"))
    with open(os.path.join(d, "params.json")) as f:
        params = json.load(f)
    return params, [torch.load(os.path.join(d, p), weights_only=True, mmap=True) for p in paths]


def embed_dim(params, shards):
    if len(shards) == 1:
        return 1 if params["vocab_size"] == -1 else 0
    return 1 if shards[0]["tok_embeddings.weight"].shape[1] != params["dim"] else 0


def merge(params, shards):
    """The full weights of a checkpoint whose MP is at most n_kv_heads."""
    ed = embed_dim(params, shards)
    full = {}
    for k in shards[0]:
        d = split_dim(k, ed)
        full[k] = shards[0][k] if d is None else torch.cat([s[k] for s in shards], dim=d)
    return full, ed


def split_rule(params, full, ed, mp):
    """Rank r's tensors by the documented rules; kv heads by the GQA group of rank r's queries."""
    n_heads = params["n_heads"]
    kv = params.get("n_kv_heads", n_heads)
    hd = params["dim"] // n_heads
    out = []
    for r in range(mp):
        sd = {}
        for k, t in full.items():
            d = split_dim(k, ed)
            if d is None:
                sd[k] = t
            elif mp > kv and (k.endswith("attention.wk.weight") or k.endswith("attention.wv.weight")):
                head = (r * (n_heads // mp)) // (n_heads // kv)
                sd[k] = t[head * hd:(head + 1) * hd]
            else:
                sd[k] = t.chunk(mp, dim=d)[r]
        out.append(sd)
    return out


def oracle_step(paths, n_kv, new_mp, order):
    """Every new rank as llama-models computes it at load time."""
    saved = torch.get_default_dtype()
    out = []
    for rank in range(new_mp):
        oracle.get_model_parallel_world_size = lambda: new_mp
        oracle.get_model_parallel_rank = lambda: rank
        sd = oracle.maybe_reshard_state_dict(paths, n_kv, mmap=True)
        out.append({k: sd[k] for k in order})
    torch.set_default_dtype(saved)
    return out


def run_oracle(start, steps, tmp):
    d = os.path.join(ROOT, start)
    params, shards = load_dir(d)
    n_kv = params.get("n_kv_heads", params["n_heads"])
    order = list(shards[0].keys())
    paths = [os.path.join(d, p) for p in sorted(os.listdir(d)) if p.endswith(".pth")]
    for i, mp in enumerate(steps):
        result = oracle_step(paths, n_kv, mp, order)
        step_dir = tempfile.mkdtemp(dir=tmp)
        paths = []
        for r, sd in enumerate(result):
            p = os.path.join(step_dir, f"consolidated.{r:02d}.pth")
            torch.save({k: v.contiguous().clone() for k, v in sd.items()}, p)
            paths.append(p)
    return [torch.load(p, weights_only=True) for p in paths]


def describe(sd):
    return [{"name": k, "dtype": DT_NAME[v.dtype], "shape": list(v.shape), "sha256": sha(v)}
            for k, v in sd.items()]


def main():
    out_dir = os.path.join(ROOT, "reshard")
    os.makedirs(out_dir, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        for case, (src, steps, oracle_runs) in CASES.items():
            params, shards = load_dir(os.path.join(ROOT, src))
            full, ed = merge(params, shards)
            want = [describe(sd) for sd in split_rule(params, full, ed, steps[-1])]
            runs = []
            for start, osteps in oracle_runs:
                got = [describe(sd) for sd in run_oracle(start, osteps, tmp)]
                diffs = []
                for r, (w, g) in enumerate(zip(want, got)):
                    for wt, gt in zip(w, g):
                        assert wt["name"] == gt["name"]
                        if (wt["shape"], wt["sha256"]) != (gt["shape"], gt["sha256"]):
                            diffs.append(f"consolidated.{r:02d}.pth {wt['name']}: oracle shape "
                                         f"{gt['shape']} sha256 {gt['sha256'][:12]}, rule shape "
                                         f"{wt['shape']} sha256 {wt['sha256'][:12]}")
                if len(got) != len(want):
                    diffs.append(f"oracle wrote {len(got)} shards, rule {len(want)}")
                runs.append({"from": src if start == src else start, "steps": osteps,
                             "agrees": not diffs, "differences": diffs})
                verdict = "agrees on every tensor" if not diffs else f"differs on {len(diffs)} tensors"
                print(f"{case}: oracle from {start} via MP {osteps} {verdict}")
                for d in diffs[:4]:
                    print("   ", d)
                if len(diffs) > 4:
                    print(f"    ... {len(diffs) - 4} more")
            doc = {"case": case, "src": src, "steps": steps,
                   "rule": "fairscale split dims; kv heads by the GQA group of each rank's query heads",
                   "oracle_runs": runs,
                   "shards": [{"file": f"consolidated.{r:02d}.pth", "tensors": t} for r, t in enumerate(want)]}
            with open(os.path.join(out_dir, case + ".json"), "w") as f:
                json.dump(doc, f, indent=1)
                f.write("\n")
    print("golden files written under", out_dir, "with torch", torch.__version__)


if __name__ == "__main__":
    sys.exit(main())
