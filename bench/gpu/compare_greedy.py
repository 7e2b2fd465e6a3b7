#!/usr/bin/env python3
"""Greedy generations of two running leank-servers compared token for token.

Used on the GPU machine to check the CUDA backend against the CPU reference through the
whole product path (server, engine, scheduler, cache): the same chat prompts, temperature 0,
EOS ignored, top-2 logprobs from both. A divergence is accepted only at a near-tie: where the
reference's (CPU) top-2 logprob gap at the first differing step is below --near-tie.
No grpcio needed: it drives `leank-cli --json`.

  compare_greedy.py --cli ".device/run leank-cli" --ref HOST:PORT --test HOST:PORT --json OUT

Several references (e.g. the fp32 CPU server and one run with --cpu-activations bf16): give
--ref NAME=HOST:PORT and --json OUT once per reference, in the same order; the server under
test generates once per prompt and is compared with each. Every JSON is rewritten after each
prompt ("complete": false until the last), so a run cut short by a timeout still reports.
"""
import argparse
import json
import shlex
import subprocess
import sys
import time

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


def compare(prompt, ref, ref_gap, test, test_gap, near_tie):
    """One prompt's case: identical, or where it diverges and whether that is a near-tie."""
    first = next((i for i, (a, b) in enumerate(zip(ref, test)) if a != b), None)
    if first is None and len(ref) != len(test):
        first = min(len(ref), len(test))
    case = {"prompt": prompt, "identical": first is None, "ref_ids": ref, "test_ids": test}
    if first is not None:
        gap = ref_gap[first] if first < len(ref_gap) else float("inf")
        case.update(first_divergence=first, ref_top2_gap=gap,
                    test_top2_gap=test_gap[first] if first < len(test_gap) else None,
                    near_tie=gap < near_tie)
    return case


class Comparison:
    """The cases against one reference server and their summary, written to its JSON."""

    def __init__(self, name, server, path, args):
        self.name, self.server, self.path, self.args = name, server, path, args
        self.label = "-".join(x for x in (args.label, name) if x)
        self.cases, self.start, self.ref_s = [], time.time(), 0.0

    def summary(self, complete):
        identical = sum(c["identical"] for c in self.cases)
        unexplained = sum(not c["identical"] and not c["near_tie"] for c in self.cases)
        return {"label": self.label, "ref": self.name or "ref", "ref_server": self.server,
                "prompts": len(self.cases), "tokens": self.args.tokens, "identical": identical,
                "divergences_not_near_tie": unexplained, "near_tie_threshold": self.args.near_tie,
                "complete": complete, "wall_s": round(time.time() - self.start, 1),
                "ref_generate_s": round(self.ref_s, 1)}

    def write(self, complete):
        with open(self.path, "w") as f:
            json.dump({"summary": self.summary(complete), "cases": self.cases}, f, indent=1)

    def passed(self):
        s = self.summary(True)
        return s["identical"] >= 18 and s["divergences_not_near_tie"] == 0


def parse_ref(text):
    """'NAME=HOST:PORT' or 'HOST:PORT' -> (NAME or '', HOST:PORT)."""
    name, _, server = text.rpartition("=")
    return name, server


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--cli", required=True)
    ap.add_argument("--ref", required=True, action="append",
                    help="reference server (CPU backend), [NAME=]HOST:PORT; repeatable")
    ap.add_argument("--test", required=True, help="server under test (CUDA backend)")
    ap.add_argument("--tokens", type=int, default=64)
    ap.add_argument("--near-tie", type=float, default=0.1, help="logprob gap (nats)")
    ap.add_argument("--label", default="")
    ap.add_argument("--json", required=True, action="append",
                    help="output file, one per --ref in the same order")
    args = ap.parse_args()
    if len(args.json) != len(args.ref):
        ap.error(f"--json: give one per --ref ({len(args.ref)} refs, {len(args.json)} files)")
    comps = [Comparison(*parse_ref(r), path, args) for r, path in zip(args.ref, args.json)]
    for p in PROMPTS:
        test, test_gap = generate(args.cli, args.test, p, args.tokens)
        for c in comps:
            t0 = time.time()
            ref, ref_gap = generate(args.cli, c.server, p, args.tokens)
            c.ref_s += time.time() - t0
            case = compare(p, ref, ref_gap, test, test_gap, args.near_tie)
            c.cases.append(case)
            c.write(complete=False)
            status = "same" if case["identical"] else (
                f"diverges at {case['first_divergence']} (ref gap {case['ref_top2_gap']:.4f}, "
                f"test gap {case['test_top2_gap'] if case['test_top2_gap'] is not None else float('nan'):.4f})")
            print(f"{c.label} {p[:40]:40s} {status}", flush=True)
    for c in comps:
        c.write(complete=True)
        print(json.dumps(c.summary(True)))
    return 0 if all(c.passed() for c in comps) else 1


if __name__ == "__main__":
    sys.exit(main())
