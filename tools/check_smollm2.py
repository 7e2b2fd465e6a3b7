#!/usr/bin/env python3
"""Checks the SmolLM2 folder written by tools/convert_smollm2.py and writes the
real-model reference outputs for the C++ tests.

1. Tokenizer: tokenizer.json (via `tokenizers`) against the GGUF vocabulary,
   merges and special tokens, plus encode/decode round trips.
2. Weights: the un-permuted Q/K layout must give a much lower loss on English
   text than llama.cpp's permuted layout (guards the RoPE un-permute).
3. Greedy generation with transformers (torch CPU, float32 compute on the
   bf16 weights) for chat prompts rendered by the model's chat template.
4. Writes tests/data/smollm2/expected.json (see tests/data/smollm2/README.md).

Usage: python3 tools/check_smollm2.py [--model DIR] [--expected PATH] [--no-write]
Exits non-zero when a check fails; expected.json is then left as it was (written, through a
temporary file, only when every check passed).
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import convert_smollm2  # noqa: E402  (same folder)

REPO_ROOT = convert_smollm2.REPO_ROOT
EXPECTED_PATH = REPO_ROOT / "tests" / "data" / "smollm2" / "expected.json"
NUM_NEW_TOKENS = 32

# Prompts for expected.json: each is a list of chat messages.
EXPECTED_PROMPTS = [
    [{"role": "user", "content": "What is the capital of France?"}],
    [{"role": "user", "content": "Write a haiku about the ocean."}],
    [{"role": "system", "content": "You are a concise assistant."},
     {"role": "user", "content": "Explain in two sentences what a CPU cache is."}],
]
ROUND_TRIP_TEXTS = [
    "Hello world",
    "  leading spaces and trailing  ",
    "Numbers: 1234567890 and 3.14159, year 2024!",
    "Ünïcödé: naïve café, 日本語のテキスト, emoji 🙂👍",
    "Code:\n\tdef f(x):\n\t\treturn x ** 2  # square\n",
    "<|im_start|>user\nHi there<|im_end|>\n<|im_start|>assistant\n",
    "Mixed\r\nline endings\rand tabs\t\there.",
]
LOSS_TEXT = (
    "The quick brown fox jumps over the lazy dog. Paris is the capital and most "
    "populous city of France. Water boils at one hundred degrees Celsius at sea level."
)

failures: list[str] = []


def check(cond: bool, msg: str) -> None:
    print(("  ok   " if cond else "  FAIL ") + msg, flush=True)
    if not cond:
        failures.append(msg)


def check_tokenizer(model_dir: Path) -> None:
    import gguf
    from tokenizers import Tokenizer

    print("== tokenizer.json vs GGUF")
    reader = gguf.GGUFReader(str(convert_smollm2.find_gguf()))
    tokens = reader.fields["tokenizer.ggml.tokens"].contents()
    types = reader.fields["tokenizer.ggml.token_type"].contents()
    merges = reader.fields["tokenizer.ggml.merges"].contents()
    tok = Tokenizer.from_file(str(model_dir / "tokenizer.json"))

    check(tok.get_vocab_size(with_added_tokens=True) == len(tokens),
          f"vocab size {tok.get_vocab_size(with_added_tokens=True)} == GGUF {len(tokens)}")
    mismatched = [i for i, t in enumerate(tokens) if tok.token_to_id(t) != i]
    check(not mismatched, f"every GGUF token maps to its id (mismatches: {mismatched[:5]})")
    data = json.loads((model_dir / "tokenizer.json").read_text(encoding="utf-8"))
    file_merges = [" ".join(m) for m in data["model"]["merges"]]
    check(file_merges == list(merges), f"{len(merges)} merges identical and in GGUF rank order")
    specials = [i for i, t in enumerate(types) if t == convert_smollm2.TOKEN_TYPE_CONTROL]
    for i in specials:
        if tok.encode(tokens[i], add_special_tokens=False).ids != [i]:
            check(False, f"special token {tokens[i]!r} encodes to its single id {i}")
            break
    else:
        check(True, f"{len(specials)} special tokens each encode to their single id")

    for text in ROUND_TRIP_TEXTS:
        ids = tok.encode(text, add_special_tokens=False).ids
        back = tok.decode(ids, skip_special_tokens=False)
        check(back == text, f"round trip {text[:30]!r} ({len(ids)} tokens)")
    digits = tok.encode("2024", add_special_tokens=False).tokens
    check(digits == ["2", "0", "2", "4"], f"digits are split one by one: {digits}")
    hello = tok.encode("Hello world", add_special_tokens=False).tokens
    check(hello == ["Hello", "Ġworld"], f"'Hello world' -> {hello}")


def load_model(model_dir: Path):
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    try:
        model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    except TypeError:  # transformers 4.x
        model = AutoModelForCausalLM.from_pretrained(model_dir, torch_dtype=torch.float32)
    model.eval()
    return tokenizer, model


def check_rope_layout(tokenizer, model) -> None:
    """Re-applying llama.cpp's permute must make the model clearly worse."""
    import torch

    print("== Q/K RoPE layout")
    ids = torch.tensor([tokenizer.encode(LOSS_TEXT, add_special_tokens=False)])
    with torch.no_grad():
        good = model(ids, labels=ids).loss.item()
        saved = {}
        cfg = model.config
        for layer in model.model.layers:
            for proj, n in ((layer.self_attn.q_proj, cfg.num_attention_heads),
                            (layer.self_attn.k_proj, cfg.num_key_value_heads)):
                w = proj.weight.data
                saved[proj] = w.clone()
                d = w.shape[0] // n
                w.copy_(w.reshape(n, 2, d // 2, -1).swapaxes(1, 2).reshape(w.shape))
        bad = model(ids, labels=ids).loss.item()
        for proj, w in saved.items():
            proj.weight.data.copy_(w)
    check(good < 3.5 and good + 0.5 < bad,
          f"loss with converted layout {good:.3f} < 3.5 and well below llama.cpp layout {bad:.3f}")


def render_prompt(tokenizer, messages) -> list[int]:
    enc = tokenizer.apply_chat_template(messages, add_generation_prompt=True, tokenize=True)
    if hasattr(enc, "keys"):  # transformers 5 returns a BatchEncoding
        enc = enc["input_ids"]
    return [int(i) for i in enc]


def greedy(model, prompt_ids: list[int], steps: int) -> tuple[list[int], list[float]]:
    """Plain argmax for `steps` tokens (does not stop at EOS), with KV cache.
    Returns the ids and, per step, top1 - top2 logit."""
    import torch

    import inspect

    # transformers >= 5.24 renamed past_key_values to cache.
    cache_kw = "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"
    ids, gaps = [], []
    with torch.no_grad():
        out = model(torch.tensor([prompt_ids]), use_cache=True)
        for _ in range(steps):
            logits = out.logits[0, -1].float()
            top2 = torch.topk(logits, 2)
            nxt = int(top2.indices[0])
            ids.append(nxt)
            gaps.append(round(float(top2.values[0] - top2.values[1]), 5))
            past = getattr(out, "cache", None) or out.past_key_values
            out = model(torch.tensor([[nxt]]), use_cache=True, **{cache_kw: past})
    return ids, gaps


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", type=Path, default=None, help="converted model folder")
    ap.add_argument("--expected", type=Path, default=EXPECTED_PATH, help="where to write expected.json")
    ap.add_argument("--no-write", action="store_true", help="do not write expected.json")
    args = ap.parse_args()
    model_dir = (args.model or convert_smollm2.default_out_dir()).resolve()
    if not convert_smollm2.is_complete(model_dir):
        sys.exit(f"error: {model_dir} is not a complete conversion; run tools/convert_smollm2.py")

    check_tokenizer(model_dir)
    import torch
    import transformers

    torch.manual_seed(0)
    t0 = time.time()
    tokenizer, model = load_model(model_dir)
    check_rope_layout(tokenizer, model)

    print("== greedy generation (float32 compute on bf16 weights)")
    eos = model.config.eos_token_id
    cases = []
    for messages in EXPECTED_PROMPTS:
        prompt_ids = render_prompt(tokenizer, messages)
        gen, gaps = greedy(model, prompt_ids, NUM_NEW_TOKENS)
        stop = gen.index(eos) + 1 if eos in gen else len(gen)
        text = tokenizer.decode(gen[:stop], skip_special_tokens=True)
        print(f"--- {messages[-1]['content']!r}\n{text}\n    (min top-2 gap {min(gaps):.3f})")
        cases.append({
            "messages": messages,
            "prompt_text": tokenizer.decode(prompt_ids, skip_special_tokens=False),
            "prompt_ids": prompt_ids,
            "greedy_ids": gen,
            "top2_gap": gaps,
            "text_until_eos": text,
        })
    check(all(len(c["text_until_eos"].strip()) > 0 for c in cases), "every prompt generated text")
    check("Paris" in cases[0]["text_until_eos"], "the capital of France is Paris")
    print(f"(model checks took {time.time() - t0:.1f}s)")

    if failures:
        # expected.json is the C++ golden tests' reference: a model or tokenizer that fails a
        # check must not replace it.
        sys.exit(f"{len(failures)} check(s) failed: {failures}"
                 + ("" if args.no_write else f"; {args.expected} was not written"))
    if not args.no_write:
        doc = {
            "format": "leank-smollm2-expected/1",
            "model": "smollm2-135m-instruct, converted by tools/convert_smollm2.py "
                     f"(converter v{convert_smollm2.CONVERTER_VERSION})",
            "reference": f"transformers {transformers.__version__}, torch {torch.__version__}, "
                         "CPU, float32 compute on bf16 weights, prefill then KV-cache decode",
            "num_new_tokens": NUM_NEW_TOKENS,
            "eos_token_id": eos,
            "note": "greedy_ids is plain argmax for num_new_tokens steps and does not stop at EOS; "
                    "top2_gap[i] = top1 - top2 logit at step i (small = near tie, may flip)",
            "cases": cases,
        }
        args.expected.parent.mkdir(parents=True, exist_ok=True)
        tmp = args.expected.with_name(args.expected.name + ".tmp")  # no half-written file
        with open(tmp, "w", encoding="utf-8") as f:
            json.dump(doc, f, indent=1, ensure_ascii=False)
            f.write("\n")
        os.replace(tmp, args.expected)
        print(f"wrote {args.expected}")
    print("all checks passed")


if __name__ == "__main__":
    main()
