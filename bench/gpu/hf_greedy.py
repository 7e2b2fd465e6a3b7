#!/usr/bin/env python3
"""The noise floor of the greedy criterion: transformers against itself in fp32 and bf16.

The CUDA backend's greedy generations are compared with the fp32 CPU reference
(compare_greedy.py): "identical for >= 18 of 20 prompts x 64 tokens". This script asks how
many of the same 20 chat prompts transformers' own bf16 run keeps identical to its fp32
run, on the same model, with the same chat template, temperature 0 and EOS ignored. Given
a compare_greedy.py JSON (--ref-json), it also compares that run's fp32 CPU reference
(`ref_ids`) and CUDA server (`test_ids`) with transformers' fp32 and bf16 runs.

  hf_greedy.py --model DIR [--device cpu|cuda] [--ref-json greedy-smollm2-dense-f32.json]
               --json OUT

A divergence counts as a near-tie where the fp32 run's top-2 logprob gap at the first
differing step is below --near-tie (nats), as in compare_greedy.py.
"""
import argparse
import json
import os
import sys
import time

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from compare_greedy import PROMPTS, compare  # noqa: E402


def greedy(model, tok, prompt, tokens, device):
    """Token ids and top-2 logprob gaps of `tokens` greedy steps (EOS ignored)."""
    text = tok.apply_chat_template([{"role": "user", "content": prompt}], tokenize=False,
                                   add_generation_prompt=True)
    ids = torch.tensor([tok.encode(text, add_special_tokens=False)], device=device)
    out, gaps, past = [], [], None
    with torch.no_grad():
        step = ids
        for _ in range(tokens):
            res = model(input_ids=step, past_key_values=past, use_cache=True)
            past = res.past_key_values
            logp = torch.log_softmax(res.logits[0, -1].float(), dim=-1)
            top = torch.topk(logp, 2)
            out.append(int(top.indices[0]))
            gaps.append(float(top.values[0] - top.values[1]))
            step = top.indices[:1].view(1, 1)
    return out, gaps


def summarize(name, cases, tokens, near_tie):
    identical = sum(c["identical"] for c in cases)
    unexplained = sum(not c["identical"] and not c["near_tie"] for c in cases)
    print(f"{name}: {identical}/{len(cases)} identical, {unexplained} divergences not at a "
          f"near-tie", flush=True)
    return {"comparison": name, "prompts": len(cases), "tokens": tokens, "identical": identical,
            "divergences_not_near_tie": unexplained, "near_tie_threshold": near_tie,
            "cases": cases}


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True, help="HF directory (config, safetensors, tokenizer)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--near-tie", type=float, default=0.1)
    ap.add_argument("--ref-json", help="compare_greedy.py JSON: its ref_ids are the fp32 CPU "
                    "reference, its test_ids the CUDA server")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    if not os.path.isfile(os.path.join(args.model, "config.json")):
        ap.error(f"--model {args.model}: no config.json there")
    tok = AutoTokenizer.from_pretrained(args.model)
    runs = {}
    for dtype in ("float32", "bfloat16"):
        t0 = time.time()
        model = AutoModelForCausalLM.from_pretrained(
            args.model, torch_dtype=getattr(torch, dtype)).to(args.device).eval()
        runs[dtype] = [greedy(model, tok, p, args.tokens, args.device) for p in PROMPTS]
        print(f"transformers {dtype} on {args.device}: {len(PROMPTS)} prompts in "
              f"{time.time() - t0:.1f} s", flush=True)
        del model
    f32, b16 = runs["float32"], runs["bfloat16"]
    results = [summarize("hf_bf16 vs hf_f32", [
        compare(p, r[0], r[1], t[0], t[1], args.near_tie) for p, r, t in zip(PROMPTS, f32, b16)
    ], args.tokens, args.near_tie)]
    if args.ref_json:
        with open(args.ref_json) as f:
            ref = {c["prompt"]: c for c in json.load(f)["cases"]}
        missing = [p for p in PROMPTS if p not in ref]
        if missing:
            sys.exit(f"--ref-json {args.ref_json}: no case for {len(missing)} prompts, "
                     f"e.g. {missing[0]!r}")
        for name, key, run in (("cpu_reference_f32 vs hf_f32", "ref_ids", f32),
                               ("cuda_server vs hf_f32", "test_ids", f32),
                               ("cuda_server vs hf_bf16", "test_ids", b16)):
            # The HF run is the reference here: its gaps decide what a near-tie is.
            results.append(summarize(name, [
                compare(p, r[0], r[1], ref[p][key], [], args.near_tie)
                for p, r in zip(PROMPTS, run)
            ], args.tokens, args.near_tie))
    meta = {"model": os.path.basename(os.path.normpath(args.model)), "device": args.device,
            "torch": torch.__version__, "transformers": __import__("transformers").__version__,
            "ref_json": args.ref_json}
    if args.device.startswith("cuda"):
        meta["device_name"] = torch.cuda.get_device_name()
    with open(args.json, "w") as f:
        json.dump({"meta": meta, "results": results}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
