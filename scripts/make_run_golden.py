#!/usr/bin/env python3
"""Golden outputs for `llamactl run` (tests/run.rs), from the reference implementations.

Not run by CI. Needs the reference venv (torch CPU, fairscale, llama-models 0.3.0, transformers 5.x):

    /root/venvs/ref/bin/python scripts/make_run_golden.py            # everything
    /root/venvs/ref/bin/python scripts/make_run_golden.py --only meta
    /root/venvs/ref/bin/python scripts/make_run_golden.py --only hf

Writes under testdata/run/:
  meta_golden.json   Meta's own Llama3 generator (llama-models model.py + generation.py, f32, CPU) on the
                     tiny fixture testdata/tiny-mp1: 5 prompts of different lengths as ONE batch, greedy,
                     32 steps, per-token logprobs. The same weights permuted into Hugging Face layout and
                     run by transformers' LlamaForCausalLM must give the same tokens (asserted here).
  hf-tied-gqa/       small LlamaForCausalLM dirs written by transformers (random weights, f32, own tiny
  hf-mha/            BPE tokenizer.json, a ChatML chat template, not Llama 3's), covering tied embeddings +
                     GQA + `rope_parameters` config style, and untied + MHA + `rope_theta`/`rope_scaling`
                     style + chat_template.jinja + generation_config.json stop ids.
  hf_golden.json     greedy tokens from transformers (f32) for prompts and dialogs on those dirs.
"""
import argparse
import json
import os
import shutil
import sys
import tempfile
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "testdata" / "run"

META_PROMPTS = [
    "Hi",
    "The capital of France is",
    "Simply put, the theory of relativity states that ",
    "I believe the meaning of life is to find out what makes you happy, and then",
    "Translate English to French:\n\nsea otter => loutre de mer\npeppermint => menthe poivr\u00e9e\ncheese =>",
]
META_STEPS = 32
META_MAX_SEQ = 128


def load_meta_model(fixture: Path, max_seq_len: int, max_batch_size: int):
    """Meta's model.py Transformer (fairscale model parallel, world size 1) with the fixture's weights, f32."""
    os.environ.setdefault("MASTER_ADDR", "127.0.0.1")
    os.environ.setdefault("MASTER_PORT", "29533")
    import torch.distributed as dist
    from fairscale.nn.model_parallel.initialize import initialize_model_parallel, model_parallel_is_initialized
    from llama_models.llama3.args import ModelArgs
    from llama_models.llama3.model import Transformer

    if not dist.is_initialized():
        dist.init_process_group("gloo", rank=0, world_size=1)
    if not model_parallel_is_initialized():
        initialize_model_parallel(1)
    torch.set_default_dtype(torch.float32)
    params = json.loads((fixture / "params.json").read_text())
    args = ModelArgs(max_seq_len=max_seq_len, max_batch_size=max_batch_size, **params)
    shards = sorted(fixture.glob("consolidated.*.pth"))
    assert len(shards) == 1, "the golden fixture is MP 1"
    sd = torch.load(shards[0], map_location="cpu", weights_only=True)
    model = Transformer(args)
    model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True)
    return model.eval()


@torch.inference_mode()
def meta_generate(model, prompt_tokens, max_gen_len, stop_tokens, pad_id=-1):
    """Greedy generation with logprobs, step for step as llama-models' Llama3.generate (which itself
    cannot be imported without torchvision): right-padded batch, start at the shortest prompt,
    prompt tokens forced, logprobs as -cross_entropy of the logits."""
    import torch.nn.functional as F

    params = model.params
    bsz = len(prompt_tokens)
    min_len = min(len(t) for t in prompt_tokens)
    max_len = max(len(t) for t in prompt_tokens)
    total_len = min(max_gen_len + max_len, params.max_seq_len)
    tokens = torch.full((bsz, total_len), pad_id, dtype=torch.long)
    for k, t in enumerate(prompt_tokens):
        tokens[k, : len(t)] = torch.tensor(t, dtype=torch.long)
    token_logprobs = torch.zeros_like(tokens, dtype=torch.float)
    eos_reached = torch.tensor([False] * bsz)
    input_text_mask = tokens != pad_id
    stop = torch.tensor(sorted(stop_tokens))
    prev_pos = 0
    for cur_pos in range(min_len, total_len):
        logits = model.forward(tokens[:, prev_pos:cur_pos], prev_pos)
        next_token = torch.argmax(logits[:, -1], dim=-1).reshape(-1)
        next_token = torch.where(input_text_mask[:, cur_pos], tokens[:, cur_pos], next_token)
        tokens[:, cur_pos] = next_token
        token_logprobs[:, prev_pos + 1 : cur_pos + 1] = -F.cross_entropy(
            input=logits.transpose(1, 2), target=tokens[:, prev_pos + 1 : cur_pos + 1], reduction="none",
            ignore_index=pad_id,
        )
        eos_reached |= (~input_text_mask[:, cur_pos]) & torch.isin(next_token, stop)
        prev_pos = cur_pos
        if all(eos_reached):
            break
    outs, lps = [], []
    for i, t in enumerate(prompt_tokens):
        toks = tokens[i, len(t) : len(t) + max_gen_len].tolist()
        lp = token_logprobs[i, len(t) : len(t) + max_gen_len].tolist()
        for s in stop_tokens:
            if s in toks:
                cut = toks.index(s)
                toks, lp = toks[:cut], lp[:cut]
        # Positions never reached keep the pad id.
        if pad_id in toks:
            cut = toks.index(pad_id)
            toks, lp = toks[:cut], lp[:cut]
        outs.append(toks)
        lps.append(lp)
    return outs, lps


def meta_golden(fixture: Path):
    from llama_models.llama3.tokenizer import Tokenizer

    model = load_meta_model(fixture, META_MAX_SEQ, len(META_PROMPTS))
    tok = Tokenizer(fixture / "tokenizer.model")
    prompt_tokens = [tok.encode(p, bos=True, eos=False) for p in META_PROMPTS]
    assert len({len(p) for p in prompt_tokens}) == len(prompt_tokens), "prompt lengths must differ"
    out, lps = meta_generate(model, prompt_tokens, META_STEPS, set(tok.stop_tokens))
    # Greedy margins: how far the winner is ahead of the runner-up at each step. A tiny margin would
    # make the exact-token comparison depend on summation order.
    margins = greedy_margins_meta(model, prompt_tokens, out)
    print(f"meta: smallest greedy margin {min(margins):.3e}", file=sys.stderr)

    hf_tokens = hf_from_meta(fixture, model, prompt_tokens)
    for i, (a, b) in enumerate(zip(out, hf_tokens)):
        if a != b:
            raise SystemExit(f"HF layout disagrees with Meta on prompt {i}: {a} vs {b}")
    print("meta: HF-layout transformers run gives the same tokens", file=sys.stderr)

    doc = {
        "source": "llama-models 0.3.0 model.py Transformer + generation.py loop, torch CPU f32, world size 1",
        "fixture": "testdata/tiny-mp1",
        "max_seq_len": META_MAX_SEQ,
        "max_batch_size": len(META_PROMPTS),
        "max_gen_len": META_STEPS,
        "results": [
            {"prompt": p, "prompt_tokens": t, "tokens": o, "logprobs": l}
            for p, t, o, l in zip(META_PROMPTS, prompt_tokens, out, lps)
        ],
    }
    (OUT / "meta_golden.json").write_text(json.dumps(doc, indent=1) + "\n")


@torch.inference_mode()
def greedy_margins_meta(model, prompt_tokens, outs):
    margins = []
    for p, o in zip(prompt_tokens, outs):
        ids = torch.tensor([p + o])
        logits = model.forward(ids, 0)[0]
        for k in range(len(o)):
            top = torch.topk(logits[len(p) - 1 + k], 2).values
            margins.append(float(top[0] - top[1]))
    return margins


def permute_to_hf(w, heads):
    # Meta rotates adjacent pairs, HF rotates halves: [heads, hd/2, 2, dim] -> [heads, 2, hd/2, dim].
    out, dim = w.shape
    hd = out // heads
    return w.view(heads, hd // 2, 2, dim).transpose(1, 2).reshape(out, dim)


@torch.inference_mode()
def hf_from_meta(fixture, meta_model, prompt_tokens):
    """The Meta weights in HF layout (q/k rows permuted, names mapped), run greedily by transformers."""
    from transformers import LlamaConfig, LlamaForCausalLM

    params = json.loads((fixture / "params.json").read_text())
    sd = meta_model.state_dict()
    n_heads = params["n_heads"]
    n_kv = params.get("n_kv_heads") or n_heads
    dim = params["dim"]
    hidden = sd["layers.0.feed_forward.w1.weight"].shape[0]
    rope = {"rope_type": "default", "rope_theta": params.get("rope_theta", 500000.0)}
    if params.get("use_scaled_rope"):
        rope = {
            "rope_type": "llama3",
            "rope_theta": params.get("rope_theta", 500000.0),
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 8192,
        }
    cfg = LlamaConfig(
        vocab_size=params["vocab_size"],
        hidden_size=dim,
        intermediate_size=hidden,
        num_hidden_layers=params["n_layers"],
        num_attention_heads=n_heads,
        num_key_value_heads=n_kv,
        rms_norm_eps=params["norm_eps"],
        rope_parameters=rope,
        max_position_embeddings=META_MAX_SEQ,
        tie_word_embeddings=False,
    )
    hf = LlamaForCausalLM(cfg).float().eval()
    new = {"model.embed_tokens.weight": sd["tok_embeddings.weight"], "model.norm.weight": sd["norm.weight"],
           "lm_head.weight": sd["output.weight"]}
    for l in range(params["n_layers"]):
        m, h = f"layers.{l}.", f"model.layers.{l}."
        new[h + "self_attn.q_proj.weight"] = permute_to_hf(sd[m + "attention.wq.weight"], n_heads)
        new[h + "self_attn.k_proj.weight"] = permute_to_hf(sd[m + "attention.wk.weight"], n_kv)
        new[h + "self_attn.v_proj.weight"] = sd[m + "attention.wv.weight"]
        new[h + "self_attn.o_proj.weight"] = sd[m + "attention.wo.weight"]
        new[h + "mlp.gate_proj.weight"] = sd[m + "feed_forward.w1.weight"]
        new[h + "mlp.up_proj.weight"] = sd[m + "feed_forward.w3.weight"]
        new[h + "mlp.down_proj.weight"] = sd[m + "feed_forward.w2.weight"]
        new[h + "input_layernorm.weight"] = sd[m + "attention_norm.weight"]
        new[h + "post_attention_layernorm.weight"] = sd[m + "ffn_norm.weight"]
    missing, unexpected = hf.load_state_dict(new, strict=False)
    assert not unexpected and all("rotary" in k for k in missing), (missing, unexpected)
    return [greedy_hf(hf, p, META_STEPS, {128001, 128009})[0] for p in prompt_tokens]


@torch.inference_mode()
def greedy_hf(model, prompt, steps, stop):
    ids = list(prompt)
    out, margins = [], []
    for _ in range(steps):
        logits = model(torch.tensor([ids])).logits[0, -1].float()
        top = torch.topk(logits, 2)
        margins.append(float(top.values[0] - top.values[1]))
        nxt = int(top.indices[0])
        if nxt in stop:
            break
        out.append(nxt)
        ids.append(nxt)
    return out, margins


# ---------------------------------------------------------------------------------------------
# Small HF-architecture models with their own tokenizer and chat template.

CORPUS = """The quick brown fox jumps over the lazy dog. A journey of a thousand miles begins with a single step.
To be or not to be, that is the question. All that glitters is not gold. Hello there, how are you today?
I am fine, thank you. What is the capital of France? Paris is the capital of France. Tell me a story about
a small robot who wanted to learn how to paint the sea, the sky and the mountains at dawn.
Numbers: 0 1 2 3 4 5 6 7 8 9 10 42 100. Punctuation! Questions? Quotes "like this" and 'this'.
"""

CHATML = (
    "{{ bos_token }}{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{{ message['content'] | trim }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)

HF_PROMPTS = ["Hello there", "What is the capital of France?", "A journey of a thousand miles begins"]
HF_DIALOGS = [
    [{"role": "user", "content": "Tell me a story."}],
    [
        {"role": "system", "content": "You are a robot who paints."},
        {"role": "user", "content": "What is the capital of France?"},
        {"role": "assistant", "content": "Paris."},
        {"role": "user", "content": "And the sea?"},
    ],
]
HF_STEPS = 16


def build_tokenizer():
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

    tok = Tokenizer(models.BPE())
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=384,
        special_tokens=["<s>", "</s>", "<|im_start|>", "<|im_end|>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    tok.train_from_iterator([CORPUS], trainer)
    bos = tok.token_to_id("<s>")
    tok.post_processor = processors.TemplateProcessing(single="<s> $A", special_tokens=[("<s>", bos)])
    return tok


def make_hf_dir(name, *, tied, n_kv, old_style_config, template_file, seed):
    from transformers import GenerationConfig, LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    d = OUT / name
    if d.exists():
        shutil.rmtree(d)
    raw = build_tokenizer()
    tok = PreTrainedTokenizerFast(tokenizer_object=raw, bos_token="<s>", eos_token="</s>")
    tok.chat_template = CHATML
    vocab = raw.get_vocab_size()
    im_end = raw.token_to_id("<|im_end|>")
    eos = raw.token_to_id("</s>")
    cfg = LlamaConfig(
        vocab_size=vocab,
        hidden_size=64,
        intermediate_size=176,
        num_hidden_layers=2,
        num_attention_heads=4,
        num_key_value_heads=n_kv,
        rms_norm_eps=1e-5,
        max_position_embeddings=256,
        rope_parameters={
            "rope_type": "llama3",
            "rope_theta": 10000.0,
            "factor": 4.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 32,
        },
        tie_word_embeddings=tied,
        bos_token_id=raw.token_to_id("<s>"),
        eos_token_id=eos,
        initializer_range=0.25,
    )
    torch.manual_seed(seed)
    model = LlamaForCausalLM(cfg).float().eval()
    # Norm weights start at 1; make them vary so a mix-up between norms would show.
    with torch.no_grad():
        for n, p in model.named_parameters():
            if n.endswith("norm.weight"):
                p.uniform_(0.5, 1.5)
    model.save_pretrained(d, safe_serialization=True)
    tok.save_pretrained(d)
    GenerationConfig(bos_token_id=cfg.bos_token_id, eos_token_id=[eos, im_end]).save_pretrained(d)

    conf_path = d / "config.json"
    conf = json.loads(conf_path.read_text())
    if old_style_config:
        rp = conf.pop("rope_parameters")
        conf["rope_theta"] = rp.pop("rope_theta")
        conf["rope_scaling"] = rp
    conf_path.write_text(json.dumps(conf, indent=2) + "\n")

    tc_path = d / "tokenizer_config.json"
    tc = json.loads(tc_path.read_text())
    jinja = d / "chat_template.jinja"
    if template_file:
        tc.pop("chat_template", None)
        jinja.write_text(CHATML)
    else:
        tc["chat_template"] = CHATML
        if jinja.exists():
            jinja.unlink()
    tc_path.write_text(json.dumps(tc, indent=2) + "\n")
    assert tied == ("lm_head.weight" not in safetensors_names(d / "model.safetensors"))
    return d, {eos, im_end}


def safetensors_names(path):
    from safetensors import safe_open

    with safe_open(str(path), "pt") as f:
        return set(f.keys())


@torch.inference_mode()
def hf_golden():
    from transformers import AutoModelForCausalLM, AutoTokenizer

    OUT.mkdir(parents=True, exist_ok=True)
    specs = [
        ("hf-tied-gqa", dict(tied=True, n_kv=2, old_style_config=False, template_file=True, seed=11)),
        ("hf-mha", dict(tied=False, n_kv=4, old_style_config=True, template_file=False, seed=12)),
    ]
    doc = {"source": "transformers LlamaForCausalLM, f32, CPU, greedy", "max_gen_len": HF_STEPS, "models": []}
    for name, kw in specs:
        d, stop = make_hf_dir(name, **kw)
        # Reload from disk exactly as a user would, so the golden reflects the files.
        tok = AutoTokenizer.from_pretrained(d)
        model = AutoModelForCausalLM.from_pretrained(d, dtype=torch.float32).eval()
        entry = {"dir": f"testdata/run/{name}", "stop_ids": sorted(stop), "prompts": [], "dialogs": []}
        smallest = float("inf")
        for p in HF_PROMPTS:
            ids = tok(p)["input_ids"]
            out, m = greedy_hf(model, ids, HF_STEPS, stop)
            smallest = min([smallest] + m)
            entry["prompts"].append({"prompt": p, "prompt_tokens": ids, "tokens": out})
        for dialog in HF_DIALOGS:
            text = tok.apply_chat_template(dialog, tokenize=False, add_generation_prompt=True)
            ids = tok(text, add_special_tokens=False)["input_ids"]
            out, m = greedy_hf(model, ids, HF_STEPS, stop)
            smallest = min([smallest] + m)
            entry["dialogs"].append({"dialog": dialog, "prompt_tokens": ids, "tokens": out})
        print(f"{name}: smallest greedy margin {smallest:.3e}", file=sys.stderr)
        doc["models"].append(entry)
    (OUT / "hf_golden.json").write_text(json.dumps(doc, indent=1) + "\n")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--fixture", type=Path, default=ROOT / "testdata" / "tiny-mp1")
    ap.add_argument("--only", choices=["meta", "hf"])
    a = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    if a.only in (None, "hf"):
        hf_golden()
    if a.only in (None, "meta"):
        meta_golden(a.fixture)


if __name__ == "__main__":
    main()
