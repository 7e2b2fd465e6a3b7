#!/usr/bin/env python3
"""Greedy generations of two running leank-servers compared token for token.

Used on the GPU machine to check the CUDA backend against the CPU reference through the
whole product path (server, engine, scheduler, cache): the same chat prompts, temperature 0,
EOS ignored, top-2 logprobs from both. A divergence is accepted only at a near-tie: where the
reference's (CPU) top-2 logprob gap at the first differing step is below --near-tie.
No grpcio needed: it drives `leank-cli --json`.

  compare_greedy.py --cli ".device/run leank-cli" --ref HOST:PORT --test HOST:PORT --json OUT
"""
import argparse
import json
import shlex
import subprocess
import sys

PROMPTS = [
    "What is the capital of France?", "Write a haiku about the ocean.",
    "Explain what a CPU cache is in two sentences.", "List three prime numbers.",
    "What is 12 times 7?", "Give me a name for a pet goldfish.",
    "Translate 'good morning' into Spanish.", "Why is the sky blue?",
    "Write one sentence about autumn.", "What does a compiler do?",
    "Suggest a title for a mystery novel.", "How many legs does a spider have?",
    "Describe the taste of lemon.", "What is photosynthesis?",
    "Name a famous painter.", "Write a limerick about a cat.",
    "What is the boiling point of water?", "Give two tips for better sleep.",
    "What is the largest planet in the solar system?", "Tell me a fun fact about octopuses.",
]


def generate(cli, server, prompt, tokens):
    cmd = shlex.split(cli) + ["--server", server, "--timeout", "300", "--json", "generate", "--chat",
                              "--temperature", "0", "--max-tokens", str(tokens), "--ignore-eos",
                              "--logprobs", "2", prompt]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    if out.returncode != 0:
        raise RuntimeError(f"{server}: exit {out.returncode}: {out.stderr.strip()}")
    ids, gaps = [], []
    for line in out.stdout.splitlines():
        chunk = json.loads(line)
        ids += chunk.get("token_ids", [])
        for lp in chunk.get("logprobs", []):
            top = lp.get("top", [])
            gaps.append(top[0]["logprob"] - top[1]["logprob"] if len(top) > 1 else float("inf"))
    return ids, gaps


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--ref", required=True, help="reference server (CPU backend)")
    ap.add_argument("--test", required=True, help="server under test (CUDA backend)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--near-tie", type=float, default=0.1, help="logprob gap (nats)")
    ap.add_argument("--label", default="")
    ap.add_argument("--json", required=True)
    args = ap.parse_args()
    cases, identical, unexplained = [], 0, 0
    for p in PROMPTS:
        ref, ref_gap = generate(args.cli, args.ref, p, args.tokens)
        test, test_gap = generate(args.cli, args.test, p, args.tokens)
        first = next((i for i, (a, b) in enumerate(zip(ref, test)) if a != b), None)
        if first is None and len(ref) != len(test):
            first = min(len(ref), len(test))
        case = {"prompt": p, "identical": first is None, "ref_ids": ref, "test_ids": test}
        if first is None:
            identical += 1
        else:
            case.update(first_divergence=first, ref_top2_gap=ref_gap[first],
                        test_top2_gap=test_gap[first] if first < len(test_gap) else None,
                        near_tie=ref_gap[first] < args.near_tie)
            unexplained += 0 if case["near_tie"] else 1
        cases.append(case)
        status = "same" if first is None else (
            f"diverges at {first} (ref gap {ref_gap[first]:.4f}, test gap {case['test_top2_gap']:.4f})")
        print(f"{args.label} {p[:40]:40s} {status}", flush=True)
    summary = {"label": args.label, "prompts": len(PROMPTS), "tokens": args.tokens,
               "identical": identical, "divergences_not_near_tie": unexplained,
               "near_tie_threshold": args.near_tie}
    json.dump({"summary": summary, "cases": cases}, open(args.json, "w"), indent=1)
    print(json.dumps(summary))
    return 0 if identical >= 18 and unexplained == 0 else 1


if __name__ == "__main__":
    sys.exit(main())
