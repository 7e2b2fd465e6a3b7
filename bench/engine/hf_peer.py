#!/usr/bin/env python3
"""HF transformers peer for leank-bench-engine: `generate` (default dynamic cache, sdpa,
greedy, bf16) on the same random-weight model, batch 1 and 32 at a 1K-token prompt.
Decode tokens/s = batch * N / (time(N + 1 new tokens) - time(1 new token)), so the
prompt's prefill is not counted. Writes records in the engine JSON format."""

import argparse
import datetime
import json
import time

import torch
from transformers import AutoModelForCausalLM


def timed_generate(model, ids, new_tokens):
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    model.generate(ids, max_new_tokens=new_tokens, min_new_tokens=new_tokens, do_sample=False,
                   pad_token_id=0)
    torch.cuda.synchronize()
    return time.perf_counter() - t0


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--model", required=True)
    ap.add_argument("--json", required=True)
    ap.add_argument("--git-commit", default="unknown")
    ap.add_argument("--context", type=int, default=1024)
    ap.add_argument("--batches", default="1,32")
    ap.add_argument("--new-tokens", type=int, default=32)
    args = ap.parse_args()
    t0 = time.time()
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.bfloat16,
                                                 attn_implementation="sdpa").cuda().eval()
    print(f"hf: loaded in {time.time() - t0:.1f} s", flush=True)
    dev = torch.cuda.get_device_name(0)
    g = torch.Generator().manual_seed(0)
    records = []
    with torch.inference_mode():
        for b in [int(x) for x in args.batches.split(",")]:
            ids = torch.randint(0, model.config.vocab_size, (b, args.context), generator=g).cuda()
            timed_generate(model, ids, 2)  # warm-up
            t1 = timed_generate(model, ids, 1)
            tn = timed_generate(model, ids, args.new_tokens + 1)
            tps = b * args.new_tokens / (tn - t1)
            print(f"hf batch {b:3d} ctx {args.context}: {tps:.1f} tok/s decode "
                  f"(prefill {t1:.2f} s)", flush=True)
            records.append({
                "scenario": "batch1" if b == 1 else "batch", "impl": "hf", "batch": b,
                "context": args.context, "tokens_per_s": tps, "prefill_s": t1,
                "device": dev, "git_commit": args.git_commit,
                "date": datetime.datetime.now(datetime.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "peer": "transformers generate (DynamicCache, sdpa, greedy, bf16)",
                "transformers": __import__("transformers").__version__,
                "torch": torch.__version__})
    with open(args.json, "w") as f:
        json.dump(records, f, indent=1)


if __name__ == "__main__":
    main()
