#!/usr/bin/env python3
"""Golden outputs of llama.cpp for `run` on quantized GGUF files (tests/run_gguf.rs).

Writes a small random llama-architecture model (dim 256, so every k-quant applies; 2 layers, 4 heads
of 64, 2 kv heads, ffn 512, the 384-token byte-level vocabulary of testdata/run/hf-mha, pre-tokenizer
llama-bpe) as an f32 GGUF with gguf-py, quantizes it with llama.cpp's `llama-quantize` to each type
mix below, and records `llama-completion`'s greedy continuation of a few prompts from each file:

  testdata/gguf/run/tiny-<MIX>.gguf   the quantized files (committed, ~1 MB each)
  testdata/gguf/run/llamacpp.json     {mix: {prompt: generated text}}

  LLAMA_CPP=/path/to/llama.cpp (source tree with build/bin/llama-quantize and llama-completion)
  PYTHONPATH=$LLAMA_CPP/gguf-py python scripts/make_gguf_run_golden.py
"""
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import gguf

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "testdata" / "gguf" / "run"
LLAMA_CPP = Path(os.environ["LLAMA_CPP"])
BIN = LLAMA_CPP / "build" / "bin"

DIM, LAYERS, HEADS, KV_HEADS, FFN = 256, 2, 4, 2, 512
MIXES = ["Q4_K_M", "Q2_K", "Q5_1", "Q4_0"]
PROMPTS = ["hello world", "the cat sat on the mat", "12345 and 678", "once upon a time"]
GEN = 12


def vocabulary():
    tok = json.loads((ROOT / "testdata/run/hf-mha/tokenizer.json").read_text())
    vocab = tok["model"]["vocab"]
    tokens = [None] * len(vocab)
    for t, i in vocab.items():
        tokens[i] = t
    types = [gguf.TokenType.NORMAL] * len(tokens)
    for a in tok["added_tokens"]:
        tokens[a["id"]] = a["content"]
        types[a["id"]] = gguf.TokenType.CONTROL if a["special"] else gguf.TokenType.USER_DEFINED
    merges = [m if isinstance(m, str) else " ".join(m) for m in tok["model"]["merges"]]
    return tokens, types, merges


def write_f32(path):
    tokens, types, merges = vocabulary()
    vocab = len(tokens)
    hd = DIM // HEADS
    rng = np.random.default_rng(0)

    def mat(rows, cols):
        return (rng.standard_normal((rows, cols)) * (1.5 / np.sqrt(cols))).astype(np.float32)

    w = gguf.GGUFWriter(str(path), "llama")
    w.add_name("tiny random")
    w.add_block_count(LAYERS)
    w.add_context_length(256)
    w.add_embedding_length(DIM)
    w.add_feed_forward_length(FFN)
    w.add_head_count(HEADS)
    w.add_head_count_kv(KV_HEADS)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    w.add_vocab_size(vocab)
    w.add_rope_dimension_count(hd)
    w.add_file_type(gguf.LlamaFileType.ALL_F32)
    w.add_tokenizer_model("gpt2")
    w.add_tokenizer_pre("llama-bpe")
    w.add_token_list(tokens)
    w.add_token_types(types)
    w.add_token_merges(merges)
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_add_bos_token(True)
    w.add_tensor("token_embd.weight", mat(vocab, DIM))
    for l in range(LAYERS):
        p = f"blk.{l}."
        w.add_tensor(p + "attn_norm.weight", (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32))
        w.add_tensor(p + "attn_q.weight", mat(HEADS * hd, DIM))
        w.add_tensor(p + "attn_k.weight", mat(KV_HEADS * hd, DIM))
        w.add_tensor(p + "attn_v.weight", mat(KV_HEADS * hd, DIM))
        w.add_tensor(p + "attn_output.weight", mat(DIM, HEADS * hd))
        w.add_tensor(p + "ffn_norm.weight", (1 + 0.1 * rng.standard_normal(DIM)).astype(np.float32))
        w.add_tensor(p + "ffn_gate.weight", mat(FFN, DIM))
        w.add_tensor(p + "ffn_up.weight", mat(FFN, DIM))
        w.add_tensor(p + "ffn_down.weight", mat(DIM, FFN))
    w.add_tensor("output_norm.weight", np.ones(DIM, dtype=np.float32))
    w.add_tensor("output.weight", mat(vocab, DIM))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()


def complete(model, prompt):
    out = subprocess.run(
        [str(BIN / "llama-completion"), "-m", str(model), "-p", prompt, "-n", str(GEN),
         "--temp", "0", "-no-cnv", "--simple-io", "-t", "1", "--no-warmup", "-s", "1"],
        capture_output=True, text=True, check=True)
    text = out.stdout
    if not text.startswith(prompt):
        sys.exit(f"llama-completion output does not start with the prompt: {text!r}")
    return text[len(prompt):]


def main():
    OUT.mkdir(parents=True, exist_ok=True)
    golden = {}
    with tempfile.TemporaryDirectory() as tmp:
        f32 = Path(tmp) / "tiny-f32.gguf"
        write_f32(f32)
        for mix in MIXES:
            dst = OUT / f"tiny-{mix.lower()}.gguf"
            subprocess.run([str(BIN / "llama-quantize"), str(f32), str(dst), mix],
                           check=True, capture_output=True)
            golden[mix.lower()] = {p: complete(dst, p) for p in PROMPTS}
    (OUT / "llamacpp.json").write_text(json.dumps(golden, indent=1, ensure_ascii=False) + "\n")
    print(json.dumps(golden, indent=1, ensure_ascii=False))


if __name__ == "__main__":
    main()
