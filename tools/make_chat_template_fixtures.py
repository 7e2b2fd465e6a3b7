#!/usr/bin/env python3
"""Differential fixture for engine/tokenizer/chat_template.cc: seeded random
conversations rendered by transformers' own Jinja renderer from the committed
template texts (tests/data/tokenizer/templates/<name>.tokenizer_config.json, made
by tools/make_tokenizer_fixtures.py).

Writes tests/data/tokenizer/templates/random_chat.jsonl, one record a line
(compact, to keep the fixture small; messages as [role, content] pairs, "gen" is
add_generation_prompt):
  {"template", "gen", "messages": [[role, content], ...], "text"}   rendered, or
  {"template", "gen", "messages": [[role, content], ...], "error"}  the template raised.
Messages use system/user/assistant, plus (rarely) roles our Render refuses
(tool, function, developer, ipython): for those the record keeps what the
template does, and the C++ test expects a refusal (see engine/tokenizer/README.md).
Regression cases (REGRESSIONS) come first.

Needs only transformers + jinja2:
  python3 tools/make_chat_template_fixtures.py [--per-template N]
      [--seed S] [--out PATH] [--size compact|normal|long]
Deterministic for a given seed and transformers version.
"""

from __future__ import annotations

import argparse
import json
import random
from pathlib import Path

from transformers.utils.chat_template_utils import render_jinja_template

REPO = Path(__file__).resolve().parent.parent
TDIR = REPO / "tests" / "data" / "tokenizer" / "templates"
TEMPLATES = ["llama3", "llama3.1", "qwen2.5", "smollm2"]

# Every character Python's str.strip() (Jinja's `trim`) removes, and look-alikes it keeps.
STRIPPED = ["\t", "\n", "\x0b", "\x0c", "\r", "\x1c", "\x1d", "\x1e", "\x1f", " ", "\x85",
            "\xa0", "\u1680", "\u2000", "\u2001", "\u2002", "\u2003", "\u2004", "\u2005",
            "\u2006", "\u2007", "\u2008", "\u2009", "\u200a", "\u2028", "\u2029", "\u202f",
            "\u205f", "\u3000"]
KEPT = ["\u200b", "\u200c", "\u200d", "\u2060", "\ufeff", "\u180e", "\x00", "\x01", "\x7f",
        "\u00ad", "\u034f"]
WORDS = ["hello", "Hi", "What is 2+2?", "4", "The capital of France is Paris.", "ok", "x",
         "中文", "日本語のテキスト", "한국어", "Привет, мир", "مرحبا", "שלום", "😀", "👨‍👩‍👧‍👦",
         "🇫🇷", "e\u0301", "Straße", "\U0001d49c", "{{ messages }}", "{% if %}", "{#", "'", '"',
         "\\n", "\\", "<|im_start|>", "<|im_end|>", "<|im_start|>assistant\n", "<|eot_id|>",
         "<|start_header_id|>user<|end_header_id|>\n\n", "<|begin_of_text|>",
         "<|end_header_id|>", "<|endoftext|>", "<s>", "</s>", "[INST]", "system", "assistant",
         "```python\nprint('hi')\n```", "a\nb", "line1\r\nline2", "tab\there", "null", "None",
         "true", "0", "<think>", "</think>", "Cutting Knowledge Date: x", "Today Date: y"]
PLAIN = ["system", "user", "assistant"]
ODD = ["tool", "function", "developer", "ipython", "System", "USER", ""]


def random_content(rng: random.Random, size: str) -> str:
    """size: "compact" (the committed fixture: short contents, rare 200-500 character
    ones), "normal" or "long" (2k-20k characters; exploration runs)."""
    r = rng.random()
    if r < 0.08:
        return ""
    if r < 0.14:
        return "".join(rng.choice(STRIPPED + KEPT) for _ in range(rng.randint(1, 6)))
    if r < (0.15 if size == "compact" else 0.17):
        lo, hi = {"compact": (100, 300), "normal": (300, 1500), "long": (2000, 20000)}[size]
        n = rng.randint(lo, hi)
        unit = rng.choice(["word ", "長い", "a", "\n", "<|im_end|>", " \t"])
        return unit * (n // len(unit))
    parts = []
    for _ in range(rng.randint(1, 2 if size == "compact" else 8)):
        parts.append(rng.choice(WORDS))
        if rng.random() < 0.5:
            parts.append(rng.choice([" ", " ", "\n", "\n\n", "  ", "\t", ""]))
    s = "".join(parts)
    # Leading / trailing whitespace of every kind, often.
    if rng.random() < 0.4:
        s = "".join(rng.choice(STRIPPED + KEPT) for _ in range(rng.randint(1, 4))) + s
    if rng.random() < 0.4:
        s += "".join(rng.choice(STRIPPED + KEPT) for _ in range(rng.randint(1, 4)))
    return s


def random_conversation(rng: random.Random, size: str) -> list[dict]:
    n = rng.randint(1, 8)
    if size == "compact":  # 1-8 still, fewer long ones (fixture size)
        n = min(n, rng.randint(1, 8))
    msgs = []
    if rng.random() < 0.5:
        msgs.append({"role": "system", "content": random_content(rng, size)})
    shape = rng.random()
    while len(msgs) < n:
        if shape < 0.5:  # alternating user/assistant, sometimes starting with assistant
            role = ["user", "assistant"][(len(msgs) + (shape < 0.1)) % 2]
            if rng.random() < 0.1:
                role = "system"  # a system message in the middle
        else:  # anything: consecutive same roles, middle system messages
            role = rng.choice(PLAIN)
        msgs.append({"role": role, "content": random_content(rng, size)})
    if rng.random() < 0.06:  # a role our Render refuses
        msgs[rng.randrange(len(msgs))]["role"] = rng.choice(ODD)
    return msgs


def render(cfg: dict, messages: list[dict], gen: bool, **kwargs) -> dict:
    try:
        text = render_jinja_template(
            [messages], chat_template=cfg["chat_template"], add_generation_prompt=gen,
            bos_token=cfg.get("bos_token") or "", eos_token=cfg.get("eos_token") or "",
            **kwargs)[0][0]
        return {"text": text}
    except Exception as e:  # jinja2 UndefinedError, TemplateError, ...
        return {"error": f"{type(e).__name__}: {e}"}


# Cases that once differed or that pin a documented decision; kept first in the file.
REGRESSIONS: list[tuple[list[dict], bool]] = [
    ([], True),  # empty conversation: Qwen2.5 / Llama-3.1 raise, we refuse
    ([{"role": "tool", "content": "42"}], True),
    ([{"role": "user", "content": "a"}, {"role": "developer", "content": "b"}], True),
    ([{"role": "system", "content": "\x1c\x1d sys \x1e\x1f"}, {"role": "user", "content": "\u200bq\ufeff"}], True),
    ([{"role": "user", "content": "q"}, {"role": "system", "content": " mid "},
      {"role": "system", "content": "again"}, {"role": "assistant", "content": "a"}], False),
    ([{"role": "system", "content": "only system"}], True),
    ([{"role": "system", "content": "only system"}], False),
]


def record(name: str, cfg: dict, msgs: list[dict], gen: bool) -> dict:
    return {"template": name, "gen": gen, "messages": [[m["role"], m["content"]] for m in msgs],
            **render(cfg, msgs, gen)}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--per-template", type=int, default=150)
    ap.add_argument("--seed", type=int, default=2024)
    ap.add_argument("--size", choices=["compact", "normal", "long"], default="compact",
                    help="content sizes: compact (committed fixture), normal, long (2k-20k chars)")
    ap.add_argument("--out", type=Path, default=TDIR / "random_chat.jsonl")
    args = ap.parse_args()
    configs = {n: json.loads((TDIR / f"{n}.tokenizer_config.json").read_text()) for n in TEMPLATES}
    records = []
    for name in TEMPLATES:
        for msgs, gen in REGRESSIONS:
            records.append(record(name, configs[name], msgs, gen))
    for name in TEMPLATES:
        rng = random.Random(f"{args.seed}:{name}")
        for _ in range(args.per_template):
            msgs = random_conversation(rng, args.size)
            gen = rng.random() < 0.5
            records.append(record(name, configs[name], msgs, gen))
    with open(args.out, "w", encoding="utf-8") as f:
        for r in records:
            f.write(json.dumps(r, ensure_ascii=False, separators=(",", ":")) + "\n")
    errors = sum("error" in r for r in records)
    print(f"{args.out}: {len(records)} records ({errors} template errors), "
          f"{args.out.stat().st_size} bytes")


if __name__ == "__main__":
    main()
