#!/usr/bin/env python3
"""Show that files written by llamactl's .pth and safetensors writers load in real torch.

    python scripts/check_torch_compat.py [--zip64]

For every torch-written fixture under testdata/ it re-writes the file with our PthWriter
(examples/pth_copy.rs, bytes streamed from the source), then loads the result with
torch.load(weights_only=True) and torch.load(weights_only=True, mmap=True) and compares every tensor
with the source; it also loads our safetensors output with safetensors.torch. With --zip64 it writes a
>4 GiB record and reads it back through torch's mmap path (needs ~5 GB of free disk).
"""
import glob, os, subprocess, sys, tempfile
import torch
from safetensors.torch import load_file

ROOT = os.path.abspath(os.path.join(os.path.dirname(__file__), ".."))
subprocess.run(["cargo", "build", "--release", "--quiet", "--example", "pth_copy"], cwd=ROOT, check=True)
TOOL = os.path.join(ROOT, "target", "release", "examples", "pth_copy")
ok = True


def same(a, b):
    return a.dtype == b.dtype and a.shape == b.shape and torch.equal(a.contiguous().view(-1).view(torch.uint8), b.contiguous().view(-1).view(torch.uint8))


with tempfile.TemporaryDirectory() as tmp:
    files = sorted(glob.glob(os.path.join(ROOT, "testdata", "**", "*.pth"), recursive=True))
    for src in files:
        rel = os.path.relpath(src, ROOT)
        ref = torch.load(src, weights_only=True)
        dst = os.path.join(tmp, os.path.basename(src))
        subprocess.run([TOOL, "copy", src, dst], check=True, capture_output=True)
        for mode in ({"weights_only": True}, {"weights_only": True, "mmap": True}):
            got = torch.load(dst, **mode)
            good = list(got) == list(ref) and all(same(got[k], ref[k]) for k in ref)
            ok &= good
            print(f"{'OK ' if good else 'BAD'} torch.load({', '.join(f'{k}={v}' for k, v in mode.items())}) {rel}: {len(ref)} tensors equal")
        st = os.path.join(tmp, os.path.basename(src) + ".safetensors")
        subprocess.run([TOOL, "safetensors", src, st], check=True, capture_output=True)
        got = load_file(st)
        good = set(got) == set(ref) and all(same(got[k], ref[k]) for k in ref)
        ok &= good
        print(f"{'OK ' if good else 'BAD'} safetensors.torch.load_file {rel}: {len(ref)} tensors equal")
    if "--zip64" in sys.argv:
        big = os.path.join(tmp, "big.pth")
        subprocess.run([TOOL, "big", big, "4"], check=True)
        t = torch.load(big, weights_only=True, mmap=True)
        n = t["big"].numel()
        idx = torch.tensor([0, 1, 250, 251, (1 << 32) - 1, 1 << 32, n - 1])
        good = n == (4 << 30) + 12345 and torch.equal(t["big"][idx], (idx % 251).to(torch.uint8)) and t["after"].tolist() == [1.0, 2.0, 3.0, 4.0]
        ok &= good
        print(f"{'OK ' if good else 'BAD'} ZIP64: a {n}-byte record and the tensor after it load with mmap=True")
print("all OK" if ok else "FAILURES")
sys.exit(0 if ok else 1)
