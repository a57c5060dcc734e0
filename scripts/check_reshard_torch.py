#!/usr/bin/env python3
"""Load `llamactl reshard` outputs with torch and compare them with llama-models' oracle.

Run by hand after `cargo build --release` (CI never runs this):
    /root/venvs/ref/bin/python scripts/check_reshard_torch.py [path/to/llamactl]

For every case of scripts/make_reshard_golden.py it runs our binary through the case's MP steps,
loads each output shard with torch.load(weights_only=True, mmap=True) (the strict loader: any
pickle global outside torch's allowlist fails it), checks checklist.chk with hashlib, and compares
every tensor (dtype, shape, values bit for bit) with the documented split rule and with each oracle
run of the case (llama-models' maybe_reshard_state_dict / reshard_mp).
"""
import hashlib, os, subprocess, sys, tempfile

import torch

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from make_reshard_golden import CASES, ROOT, load_dir, merge, run_oracle, split_rule  # noqa: E402

BIN = sys.argv[1] if len(sys.argv) > 1 else os.path.join(ROOT, "..", "target", "release", "llamactl")


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.view(torch.uint8) if a.dim() else a,
                                                                     b.view(torch.uint8) if b.dim() else b)


def main():
    failed = 0
    with tempfile.TemporaryDirectory() as tmp:
        for case, (src, steps, oracle_runs) in CASES.items():
            cur = os.path.join(ROOT, src)
            for i, mp in enumerate(steps):
                out = os.path.join(tmp, f"{case}-{i}")
                subprocess.run([BIN, "reshard", "--mp", str(mp), cur, out], check=True,
                               stderr=subprocess.DEVNULL)
                cur = out
            with open(os.path.join(cur, "checklist.chk")) as f:
                chk = [line.split("  ", 1) for line in f.read().splitlines()]
            bad_md5 = [n for h, n in chk
                       if hashlib.md5(open(os.path.join(cur, n), "rb").read()).hexdigest() != h]
            ours = [torch.load(os.path.join(cur, f"consolidated.{r:02d}.pth"), weights_only=True, mmap=True)
                    for r in range(steps[-1])]
            params, shards = load_dir(os.path.join(ROOT, src))
            full, ed = merge(params, shards)
            rule = split_rule(params, full, ed, steps[-1])
            n = sum(len(sd) for sd in ours)
            rule_ok = sum(same(sd[k], rule[r][k]) for r, sd in enumerate(ours) for k in sd)
            order_ok = all(list(sd) == list(rule[r]) for r, sd in enumerate(ours))
            line = (f"{case:12s} MP {src} -> {' -> '.join(map(str, steps))}: torch.load(weights_only, mmap) "
                    f"ok for {len(ours)} shards / {n} tensors; checklist {len(chk) - len(bad_md5)}/{len(chk)} md5 ok; "
                    f"= rule {rule_ok}/{n}{'' if order_ok else ' (ORDER DIFFERS)'}")
            for start, osteps in oracle_runs:
                orc = run_oracle(start, osteps, tmp)
                eq = sum(k in orc[r] and same(sd[k], orc[r][k]) for r, sd in enumerate(ours) for k in sd) \
                    if len(orc) == len(ours) else 0
                line += f"; = oracle from {os.path.basename(start)} via {osteps} {eq}/{n}"
            print(line)
            failed += (rule_ok != n) + (not order_ok) + len(bad_md5)
    print("FAILED" if failed else "all outputs load with torch and equal the rule")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
