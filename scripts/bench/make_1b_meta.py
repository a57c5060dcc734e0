#!/usr/bin/env python3
"""The Llama 3.2 1B-shaped bf16 Meta checkpoint the GGUF benchmarks use (dim 2048, 16 layers, 32 heads /
8 kv, ffn_dim_multiplier 1.5, multiple_of 256, vocab 128256, random weights, seed 0).

Usage: make_1b_meta.py OUT_DIR TOKENIZER_MODEL
"""
import json, os, shutil, sys
import torch
src, tok = sys.argv[1], sys.argv[2]
os.makedirs(src)
p = {"dim": 2048, "n_layers": 16, "n_heads": 32, "n_kv_heads": 8, "vocab_size": 128256,
     "ffn_dim_multiplier": 1.5, "multiple_of": 256, "norm_eps": 1e-05, "rope_theta": 500000.0,
     "use_scaled_rope": True}
json.dump(p, open(os.path.join(src, "params.json"), "w"))
shutil.copy(tok, os.path.join(src, "tokenizer.model"))
g = torch.Generator().manual_seed(0)
d, kv, hid, v = 2048, 8 * 64, 8192, 128256
def w(*shape):
    return (torch.randn(*shape, generator=g) * 0.02).to(torch.bfloat16)
sd = {"tok_embeddings.weight": w(v, d)}
for l in range(16):
    sd.update({f"layers.{l}.attention.wq.weight": w(d, d), f"layers.{l}.attention.wk.weight": w(kv, d),
               f"layers.{l}.attention.wv.weight": w(kv, d), f"layers.{l}.attention.wo.weight": w(d, d),
               f"layers.{l}.feed_forward.w1.weight": w(hid, d), f"layers.{l}.feed_forward.w2.weight": w(d, hid),
               f"layers.{l}.feed_forward.w3.weight": w(hid, d),
               f"layers.{l}.attention_norm.weight": (1 + w(d)).to(torch.bfloat16),
               f"layers.{l}.ffn_norm.weight": (1 + w(d)).to(torch.bfloat16)})
sd["norm.weight"] = (1 + w(d)).to(torch.bfloat16)
sd["output.weight"] = w(v, d)
torch.save(sd, os.path.join(src, "consolidated.00.pth"))
