"""Helper of scripts/check_real_model.sh (read that file first).

  build GGUF OUT      write a Hugging Face Llama dir (bf16 safetensors, tokenizer.json, configs) from a
                      llama-architecture GGUF, dequantizing its quantized tensors
  compare OUT A F32   compare two `llamactl run --json --logprobs` outputs (A: --dtype auto, F32:
                      --dtype f32) with each other and with transformers' f32 LlamaForCausalLM on OUT

Needs numpy, torch, safetensors, tokenizers, transformers, and gguf-py (`pip install gguf`, or a
llama.cpp checkout's gguf-py on PYTHONPATH).
"""

import json
import sys
from pathlib import Path

import numpy as np


def gguf_value(reader, key):
    field = reader.fields.get(key)
    return None if field is None else field.contents()


def unpermute(w, n_head):
    """Undo llama.cpp's q/k row order (rotary pairs interleaved per head) back to HF's (halves)."""
    rows = w.shape[0]
    return w.reshape(n_head, rows // n_head // 2, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


LAYER_NAMES = {
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_output": "self_attn.o_proj",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}


def hf_name(name):
    top = {
        "token_embd.weight": "model.embed_tokens.weight",
        "output_norm.weight": "model.norm.weight",
        "output.weight": "lm_head.weight",
    }
    if name in top:
        return top[name]
    _, layer, kind, suffix = name.split(".")
    return f"model.layers.{layer}.{LAYER_NAMES[kind]}.{suffix}"


def build_weights(reader, n_head, n_kv):
    import torch
    from gguf.quants import dequantize

    out = {}
    for t in reader.tensors:
        w = dequantize(t.data, t.tensor_type).astype(np.float32)
        w = w.reshape(tuple(int(d) for d in reversed(t.shape)))
        kind = t.name.split(".")[2] if t.name.startswith("blk.") else ""
        if kind == "attn_q":
            w = unpermute(w, n_head)
        elif kind == "attn_k":
            w = unpermute(w, n_kv)
        out[hf_name(t.name)] = torch.from_numpy(np.ascontiguousarray(w)).to(torch.bfloat16)
    return out


def build_config(reader, tied):
    g = lambda k: gguf_value(reader, "llama." + k)  # noqa: E731
    return {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_act": "silu",
        "attention_bias": False,
        "mlp_bias": False,
        "hidden_size": int(g("embedding_length")),
        "intermediate_size": int(g("feed_forward_length")),
        "num_hidden_layers": int(g("block_count")),
        "num_attention_heads": int(g("attention.head_count")),
        "num_key_value_heads": int(g("attention.head_count_kv")),
        "max_position_embeddings": int(g("context_length")),
        # GGUF stores these as f32; write the shortest decimal that rounds to the same f32.
        "rms_norm_eps": float(f"{g('attention.layer_norm_rms_epsilon'):.7g}"),
        "rope_theta": float(f"{g('rope.freq_base'):.7g}"),
        "vocab_size": len(gguf_value(reader, "tokenizer.ggml.tokens")),
        "tie_word_embeddings": tied,
        "bos_token_id": int(gguf_value(reader, "tokenizer.ggml.bos_token_id")),
        "eos_token_id": int(gguf_value(reader, "tokenizer.ggml.eos_token_id")),
        "torch_dtype": "bfloat16",
    }


def build_tokenizer(reader):
    """Byte-level BPE; the `smollm` pre-tokenizer is llama.cpp's name for digits split one by one,
    then GPT-2's regex."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, AddedToken

    if gguf_value(reader, "tokenizer.ggml.model") != "gpt2":
        sys.exit("only byte-level BPE (tokenizer.ggml.model = gpt2) GGUF tokenizers are handled")
    pre = gguf_value(reader, "tokenizer.ggml.pre")
    if pre != "smollm":
        sys.exit(f"tokenizer.ggml.pre = {pre!r}: only 'smollm' is handled")
    tokens = gguf_value(reader, "tokenizer.ggml.tokens")
    types = gguf_value(reader, "tokenizer.ggml.token_type")
    merges = [tuple(m.split(" ", 1)) for m in gguf_value(reader, "tokenizer.ggml.merges")]
    vocab = {t: i for i, t in enumerate(tokens)}
    tok = Tokenizer(models.BPE(vocab=vocab, merges=merges, fuse_unk=False))
    tok.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True),
        ]
    )
    tok.decoder = decoders.ByteLevel()
    tok.post_processor = processors.ByteLevel(trim_offsets=False)
    control = [AddedToken(t, special=True, normalized=False) for t, ty in zip(tokens, types) if ty == 3]
    tok.add_special_tokens(control)
    return tok, tokens


def build(gguf_path, out):
    import torch  # noqa: F401  (fail early when missing)
    from gguf import GGUFReader
    from safetensors.torch import save_file

    reader = GGUFReader(gguf_path)
    arch = gguf_value(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"{gguf_path}: architecture {arch!r}, not llama")
    cfg_tied = not any(t.name == "output.weight" for t in reader.tensors)
    config = build_config(reader, cfg_tied)
    weights = build_weights(reader, config["num_attention_heads"], config["num_key_value_heads"])
    tok, tokens = build_tokenizer(reader)
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(weights, str(out / "model.safetensors"), metadata={"format": "pt"})
    (out / "config.json").write_text(json.dumps(config, indent=2) + "\n")
    tok.save(str(out / "tokenizer.json"))
    bos, eos = config["bos_token_id"], config["eos_token_id"]
    tok_cfg = {
        "tokenizer_class": "GPT2Tokenizer",
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "unk_token": tokens[int(gguf_value(reader, "tokenizer.ggml.unknown_token_id"))],
        "pad_token": tokens[int(gguf_value(reader, "tokenizer.ggml.padding_token_id"))],
        "add_prefix_space": False,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
    }
    template = gguf_value(reader, "tokenizer.chat_template")
    if template:
        tok_cfg["chat_template"] = template
    (out / "tokenizer_config.json").write_text(json.dumps(tok_cfg, indent=2) + "\n")
    gen = {"bos_token_id": bos, "eos_token_id": eos, "do_sample": False}
    (out / "generation_config.json").write_text(json.dumps(gen, indent=2) + "\n")
    print(f"wrote {out}: {len(weights)} tensors (bf16), tied lm_head: {cfg_tied}, vocab {len(tokens)}")


def transformers_opinion(model, prompt_ids, n_new):
    """Greedy tokens of transformers' model for `n_new` steps (no stop tokens: the caller's count
    already ends where llamactl stopped)."""
    import torch

    seq = list(prompt_ids)
    with torch.no_grad():
        for _ in range(n_new):
            logits = model(torch.tensor([seq])).logits[0, -1]
            seq.append(int(torch.argmax(logits)))
    return seq[len(prompt_ids):]


def teacher_logprobs(model, prompt_ids, tokens):
    import torch

    seq = torch.tensor([prompt_ids + tokens])
    with torch.no_grad():
        logits = model(seq).logits[0].float()
    lp = torch.log_softmax(logits, dim=-1)
    n = len(prompt_ids)
    return [lp[n - 1 + i, t].item() for i, t in enumerate(tokens)]


def compare(out, auto_path, f32_path):
    import torch
    from transformers import LlamaForCausalLM

    torch.manual_seed(0)
    model = LlamaForCausalLM.from_pretrained(out, torch_dtype=torch.float32).eval()
    runs = {k: json.loads(Path(p).read_text()) for k, p in (("auto", auto_path), ("f32", f32_path))}
    for k, r in runs.items():
        s = r["stats"]
        print(f"llamactl --dtype {k}: {s['dtype']} weights, {s['activations']} activations, "
              f"{s['kernels']} kernels, {s['mapped_weight_bytes']} weight bytes mapped")
    auto, ref = runs["auto"]["results"], runs["f32"]["results"]
    worst_all, all_ok = 0.0, True
    for i, (a, f) in enumerate(zip(auto, ref)):
        same = a["tokens"] == f["tokens"] and a["prompt_tokens"] == f["prompt_tokens"]
        d = max((abs(x - y) for x, y in zip(a["logprobs"], f["logprobs"])), default=0.0)
        hf_tokens = transformers_opinion(model, f["prompt_tokens"], len(f["tokens"]))
        hf_lp = teacher_logprobs(model, f["prompt_tokens"], f["tokens"])
        d_hf = max((abs(x - y) for x, y in zip(hf_lp, f["logprobs"])), default=0.0)
        hf_same = hf_tokens == f["tokens"]
        worst_all = max(worst_all, d)
        all_ok &= same and d <= 1e-2
        print(f"prompt {i}: {f['prompt']!r}")
        print(f"  text (f32): {f['text']!r}")
        print(f"  tokens auto == f32: {'yes' if same else 'no'} ({len(a['tokens'])} vs {len(f['tokens'])} tokens)")
        print(f"  max |dlogprob| auto vs f32: {d:.3e}")
        print(f"  transformers f32 greedy tokens == llamactl f32: {'yes' if hf_same else 'no'}")
        if not hf_same:
            print(f"    transformers text: {model_text(out, hf_tokens)!r}")
        print(f"  max |dlogprob| llamactl f32 vs transformers (same tokens): {d_hf:.3e}")
    print(f"overall: max |dlogprob| auto vs f32 = {worst_all:.3e}; acceptance (tokens equal, <= 1e-2): "
          f"{'PASS' if all_ok else 'FAIL'}")
    return 0 if all_ok else 1


def model_text(out, ids):
    from tokenizers import Tokenizer

    return Tokenizer.from_file(str(Path(out) / "tokenizer.json")).decode(ids, skip_special_tokens=False)


if __name__ == "__main__":
    if len(sys.argv) == 4 and sys.argv[1] == "build":
        build(sys.argv[2], sys.argv[3])
    elif len(sys.argv) == 5 and sys.argv[1] == "compare":
        sys.exit(compare(sys.argv[2], sys.argv[3], sys.argv[4]))
    else:
        sys.exit(__doc__)
