#!/usr/bin/env python3
"""Run a resharded checkpoint with Meta's own model code under torchrun, one rank per shard.

Run by hand (CI never runs this), e.g. after `llamactl reshard --mp 2 testdata/small-mp1 /tmp/mp2`:
    torchrun --nproc_per_node 1 scripts/check_reshard_torchrun.py testdata/small-mp1 /tmp/mp1.pt
    torchrun --nproc_per_node 2 scripts/check_reshard_torchrun.py /tmp/mp2 /tmp/mp2.pt
    python scripts/check_reshard_torchrun.py --compare /tmp/mp1.pt /tmp/mp2.pt

Each rank builds llama-models' llama3 Transformer with fairscale model parallelism (gloo, CPU),
loads its own consolidated.NN.pth with torch.load(weights_only=True, mmap=True) and
load_state_dict(strict=True), and runs one forward pass; rank 0 saves the gathered logits.
"""
import json, os, sys

import torch


def run(ckpt_dir, out):
    import torch.distributed as dist
    from fairscale.nn.model_parallel.initialize import initialize_model_parallel, get_model_parallel_rank
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer

    dist.init_process_group("gloo")
    world = dist.get_world_size()
    initialize_model_parallel(world)
    rank = get_model_parallel_rank()
    shards = sorted(f for f in os.listdir(ckpt_dir) if f.startswith("consolidated.") and f.endswith(".pth"))
    assert len(shards) == world, f"{ckpt_dir} has {len(shards)} shards, torchrun started {world} ranks"
    params = json.load(open(os.path.join(ckpt_dir, "params.json")))
    torch.manual_seed(0)
    model = Transformer(ModelArgs(max_seq_len=32, max_batch_size=1, **params))
    sd = torch.load(os.path.join(ckpt_dir, shards[rank]), weights_only=True, mmap=True)
    model.load_state_dict(sd, strict=True)
    tokens = torch.tensor([[1, 7, 42, 200, 13, 99, 5, 250]])
    logits = model(tokens, 0)
    if rank == 0:
        torch.save(logits, out)
        print(f"{ckpt_dir}: MP {world}, logits {list(logits.shape)} -> {out}")
    dist.destroy_process_group()


def compare(a, b):
    x, y = torch.load(a), torch.load(b)
    diff = (x - y).abs().max().item()
    same_argmax = bool((x.argmax(-1) == y.argmax(-1)).all())
    print(f"max |logits difference| {diff:.3g} (scale {x.abs().max().item():.3g}); argmax identical: {same_argmax}")
    return 0 if diff < 1e-4 * max(1.0, x.abs().max().item()) and same_argmax else 1


if __name__ == "__main__":
    if sys.argv[1] == "--compare":
        sys.exit(compare(sys.argv[2], sys.argv[3]))
    run(sys.argv[1], sys.argv[2])
