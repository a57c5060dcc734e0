#!/usr/bin/env python3
"""Checks llamactl's Hugging Face tokenizer files against transformers and Meta.

    /root/venvs/ref/bin/python scripts/check_hf_tokenizer.py [CONV_PYTHON]

1. llamactl writes tokenizer.json / tokenizer_config.json / special_tokens_map.json from
   testdata/tokenizer.model (base and instruct), via the tokenize_tool example.
2. transformers 4.44.2's converter (CONV_PYTHON, default /root/venvs/conv/bin/python) writes its
   own from the same file; vocab, merges, added tokens, pre-tokenizer and decoder must be equal.
3. AutoTokenizer (this interpreter's transformers, and 4.44.2's) loads llamactl's files and
   encodes the golden corpus: ids must equal Meta's Tokenizer.encode(bos=True); the instruct
   chat template must give Meta's ChatFormat ids.
4. tokenizer.json -> tokenizer.model (to-tiktoken) must give back the original file byte for byte.
Prints one line per check and exits 1 if any fails. Needs cargo, llama-models, transformers.
"""
import json
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MODEL = ROOT / "testdata" / "tokenizer.model"
CONV_PY = sys.argv[1] if len(sys.argv) > 1 else "/root/venvs/conv/bin/python"
failures = []


def check(name, ok, detail=""):
    print(f"{'ok  ' if ok else 'FAIL'} {name}{(': ' + detail) if detail else ''}")
    if not ok:
        failures.append(name)


def tool(*args):
    subprocess.run(["cargo", "run", "-q", "--release", "--example", "tokenize_tool", "--", *map(str, args)],
                   cwd=ROOT, check=True)


CONVERT = r"""
import sys
from transformers.models.llama.convert_llama_weights_to_hf import Llama3Converter, DEFAULT_LLAMA_SPECIAL_TOKENS
Llama3Converter(sys.argv[1], DEFAULT_LLAMA_SPECIAL_TOKENS[sys.argv[4]], sys.argv[3] == "instruct",
                model_max_length=int(sys.argv[5])).tokenizer.save_pretrained(sys.argv[2])
"""

ENCODE = r"""
import json, sys
from transformers import AutoTokenizer, __version__
tok = AutoTokenizer.from_pretrained(sys.argv[1])
inp = json.load(open(sys.argv[2]))
out = {"version": __version__,
       "texts": [tok(t)["input_ids"] for t in inp["texts"]],
       "chat": [tok.apply_chat_template(d, add_generation_prompt=True, tokenize=True) for d in inp["dialogs"]]}
out["chat"] = [list(c["input_ids"]) if hasattr(c, "keys") else list(c) for c in out["chat"]]
json.dump(out, open(sys.argv[3], "w"))
"""


def merges_of(tj):
    return [tuple(m.split(" ")) if isinstance(m, str) else tuple(m) for m in tj["model"]["merges"]]


def main():
    from llama_models.llama3.tokenizer import Tokenizer
    from llama_models.llama3.chat_format import ChatFormat
    from llama_models.datatypes import RawMessage

    meta = Tokenizer(MODEL)
    fmt = ChatFormat(meta)
    golden = json.loads((ROOT / "testdata" / "tokenizer" / "golden.json").read_text())
    texts = [c["text"] for c in golden["cases"] if c["allowed"] == "none" and "<|" not in c["text"]]
    dialogs = [c["dialog"] for c in golden["chat"]
               if all("<|" not in m["content"] and m["role"] != "tool" for m in c["dialog"])]

    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        # A Meta dir's params.json says which release it is: 3.1 sets use_scaled_rope.
        for version, kind, max_len in [("3", "base", 8192), ("3", "instruct", 8192), ("3.1", "instruct", 131072)]:
            src = tmp / f"meta-{version}"
            src.mkdir(exist_ok=True)
            (src / "tokenizer.model").write_bytes(MODEL.read_bytes())
            (src / "params.json").write_text(json.dumps({"dim": 4096, "use_scaled_rope": version == "3.1"}))
            kind_dir = f"{version}-{kind}"
            ours, ref = tmp / f"ours-{kind_dir}", tmp / f"ref-{kind_dir}"
            tool("write-hf", src / "tokenizer.model", ours, *(["--instruct"] if kind == "instruct" else []), max_len)
            subprocess.run([CONV_PY, "-c", CONVERT, src / "tokenizer.model", ref, kind, version, str(max_len)],
                           check=True, capture_output=True)
            kind = f"Llama {version} {kind}"
            a = json.loads((ours / "tokenizer.json").read_text())
            b = json.loads((ref / "tokenizer.json").read_text())
            check(f"{kind}: vocab equal to transformers 4.44.2 converter's ({len(a['model']['vocab'])} entries)",
                  a["model"]["vocab"] == b["model"]["vocab"])
            ma, mb = merges_of(a), merges_of(b)
            check(f"{kind}: merges equal, in order ({len(ma)} merges)", ma == mb,
                  "" if ma == mb else f"first difference at {next(i for i, (x, y) in enumerate(zip(ma, mb)) if x != y)}")
            check(f"{kind}: added tokens equal", a["added_tokens"] == b["added_tokens"])
            check(f"{kind}: pre-tokenizer and decoder equal",
                  a["pre_tokenizer"] == b["pre_tokenizer"] and a["decoder"] == b["decoder"])
            ca = json.loads((ours / "tokenizer_config.json").read_text())
            cb = json.loads((ref / "tokenizer_config.json").read_text())
            same_keys = ["added_tokens_decoder", "bos_token", "eos_token", "model_max_length", "tokenizer_class"]
            diff = [k for k in same_keys if ca.get(k) != cb.get(k)]
            check(f"{kind}: tokenizer_config {', '.join(same_keys)} equal", not diff, f"differ: {diff}")
            sa = json.loads((ours / "special_tokens_map.json").read_text())
            sb = json.loads((ref / "special_tokens_map.json").read_text())
            check(f"{kind}: special_tokens_map equal", sa == sb, f"{sa} vs {sb}")

            inp = tmp / "inp.json"
            inp.write_text(json.dumps({"texts": texts, "dialogs": dialogs if "instruct" in kind else []}))
            want = [meta.encode(t, bos=True, eos=False) for t in texts]
            want_chat = [fmt.encode_dialog_prompt([RawMessage(role=m["role"], content=m["content"].strip())
                                                   for m in d]).tokens for d in dialogs]
            for py in [sys.executable, CONV_PY]:
                out = tmp / "out.json"
                subprocess.run([py, "-c", ENCODE, ours, inp, out], check=True, capture_output=True)
                got = json.loads(out.read_text())
                v = got["version"]
                bad = [t for t, g, w in zip(texts, got["texts"], want) if g != w]
                check(f"{kind}: AutoTokenizer (transformers {v}) on llamactl's files = Meta's ids, "
                      f"{len(texts)} strings", not bad, f"{len(bad)} differ, e.g. {bad[:3]!r}")
                if "instruct" in kind:
                    check(f"{kind}: apply_chat_template (transformers {v}) = Meta's ChatFormat, "
                          f"{len(dialogs)} dialogs", got["chat"] == want_chat)

        back = tmp / "back.model"
        tool("to-tiktoken", tmp / "ours-3.1-instruct" / "tokenizer.json", back)
        check("tokenizer.json -> tokenizer.model is byte-identical to the original",
              back.read_bytes() == MODEL.read_bytes())
        back_ref = tmp / "back-ref.model"
        tool("to-tiktoken", tmp / "ref-3-base" / "tokenizer.json", back_ref)
        check("transformers' tokenizer.json -> tokenizer.model is byte-identical too",
              back_ref.read_bytes() == MODEL.read_bytes())

    print("all checks passed" if not failures else f"{len(failures)} check(s) failed")
    sys.exit(1 if failures else 0)


if __name__ == "__main__":
    main()
