#!/usr/bin/env python3
"""Differential fuzz of our tokenizer against HF `tokenizers` (seeded).

Generates strings (random Unicode of many scripts, combining marks and
decomposed forms, emoji sequences, contractions in all cases, digit runs,
whitespace runs, control characters, special tokens in text, very long words,
the empty string), encodes them with HF `tokenizers` (with and without special
tokens) and decodes (skip_special_tokens false/true), runs the same through
build/bin/tokenizer_fuzz_driver, and prints every difference.

  python3 tools/fuzz_tokenizer.py run [--n N] [--seed S] [--only NAME]
      compare; exit 1 on any mismatch.
  python3 tools/fuzz_tokenizer.py fixture [--n N] [--seed S]
      write tests/data/tokenizer/fuzz/<name>.jsonl: a compact seeded corpus
      with HF's ids and decodes (needs only `tokenizers`), checked by
      tokenizer_test (FuzzCorpus*).
  python3 tools/fuzz_tokenizer.py regression
      rewrite tests/data/tokenizer/fuzz/regression.jsonl: strings that once
      differed, with HF's ids for each tokenizer (needs only `tokenizers`).

Fixture line: {"text", "ids", "ids_special" (if != ids; or "special_prefix"
when it is ids with a prefix such as Llama-3's BOS), "decoded" (HF decode
of ids if != text), "decoded_skip" (skip_special_tokens=True, if != decoded)}.
SmolLM2's tokenizer.json: $LEANK_CACHE_DIR/models/smollm2-135m-instruct or
.cache/models/... (tools/convert_smollm2.py); skipped when absent.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import subprocess
import sys
import unicodedata
from pathlib import Path

from tokenizers import Tokenizer

REPO = Path(__file__).resolve().parent.parent
DATA = REPO / "tests" / "data" / "tokenizer"
FUZZ = DATA / "fuzz"


def tokenizer_paths() -> dict[str, Path]:
    cache = Path(os.environ.get("LEANK_CACHE_DIR", REPO / ".cache"))
    out = {"llama3-mini": DATA / "llama3-mini" / "tokenizer.json",
           "qwen2-mini": DATA / "qwen2-mini" / "tokenizer.json"}
    smol = cache / "models" / "smollm2-135m-instruct" / "tokenizer.json"
    if smol.exists():
        out["smollm2"] = smol
    return out


# ----------------------------------------------------------------------------- generator
def rchar(rng: random.Random, lo: int, hi: int) -> str:
    return chr(rng.randint(lo, hi))


def any_char(rng: random.Random) -> str:
    while True:
        cp = rng.choice([rng.randint(0, 0x7FF), rng.randint(0, 0xFFFF), rng.randint(0, 0x10FFFF)])
        if not 0xD800 <= cp <= 0xDFFF:
            return chr(cp)


COMBINING = [chr(c) for c in range(0x300, 0x370)] + ["\u0483", "\u05b7", "\u093c", "\u0e31",
                                                     "\u1ab0", "\u1dc0", "\u20d0", "\u302a",
                                                     "\u3099", "\u309a", "\ufe20"]
PRECOMPOSED = "ÀÁÂÃÄÅÇÈÉÊËÌÍÎÏÑÒÓÔÕÖÙÚÛÜÝàáâãäåçèéêëìíîïñòóôõöùúûüýÿĀāĂăĄąĆćĈĉŐőŰűǕǖǗǘ" \
              "ḀḁẞẠạẤấỆệỲỳΆΈΉΊΌΎΏάέήίόύώϊϋЁЇЙйёїÅΩ가각힣ゔがぎぐダヂ"
CONTRACTIONS = ["'s", "'t", "'re", "'ve", "'m", "'ll", "'d"]
WS = [" ", " ", " ", "\t", "\n", "\n", "\r\n", "\r", "\u00a0", "\u3000", "\u2000", "\u2009",
      "\u200a", "\u2028", "\u2029", "\u0085", "\u000b", "\u000c", "\u1680", "\u202f", "\u205f",
      "\u180e", "\u200b", "\ufeff", "\u0020\u0301"]
PUNCT = "!\"#$%&'()*+,-./:;<=>?@[\\]^_`{|}~"
DIGITS = ["0123456789", "٠١٢٣٤٥٦٧٨٩", "०१२३४५६७८९", "０１２３４５６７８９", "²³¹¼½¾", "๐๑๒๓",
          "ⅠⅡⅢⅣ", "①②③"]
EMOJI_BASE = [0x1F600, 0x1F64F, 0x1F300, 0x1F5FF, 0x1F900, 0x1F9FF, 0x2600, 0x27BF, 0x1FA70,
              0x1FAFF]
SCRIPTS = [(0x41, 0x5A), (0x61, 0x7A), (0xC0, 0x24F), (0x1E00, 0x1EFF), (0x370, 0x3FF),
           (0x400, 0x4FF), (0x4E00, 0x9FFF), (0x3400, 0x4DBF), (0x20000, 0x2A6DF), (0x3040, 0x30FF),
           (0xAC00, 0xD7A3), (0x1100, 0x11FF), (0xE01, 0xE5B), (0x900, 0x97F), (0x600, 0x6FF),
           (0x5D0, 0x5EA), (0x591, 0x5C7), (0x10A0, 0x10FF), (0x1200, 0x137F), (0xFF00, 0xFFEF),
           (0x2000, 0x206F), (0x2100, 0x214F), (0xE000, 0xF8FF), (0xFFF0, 0xFFFF),
           (0x1D400, 0x1D7FF), (0x10FFF0, 0x10FFFF), (0xF0000, 0xF00FF)]


def emoji(rng: random.Random) -> str:
    k = rng.randrange(6)
    lo, hi = EMOJI_BASE[2 * (r := rng.randrange(5))], EMOJI_BASE[2 * r + 1]
    e = rchar(rng, lo, hi)
    if k == 0:  # skin tone
        return rchar(rng, 0x1F466, 0x1F469) + rchar(rng, 0x1F3FB, 0x1F3FF)
    if k == 1:  # ZWJ sequence
        return "\u200d".join(rchar(rng, 0x1F466, 0x1F469) for _ in range(rng.randint(2, 4)))
    if k == 2:  # flag
        return rchar(rng, 0x1F1E6, 0x1F1FF) + rchar(rng, 0x1F1E6, 0x1F1FF)
    if k == 3:  # variation selector / keycap
        return rng.choice(["\u2764\ufe0f", "\u263a\ufe0e", "1\ufe0f\u20e3", "#\u20e3",
                           e + "\ufe0f", "\U0001F3F4\U000E0067\U000E0062\U000E0065\U000E006E"
                           "\U000E0067\U000E007F", "\U0001F468\u200d\u2764\ufe0f\u200d\U0001F468"])
    return e


def cased(rng: random.Random, s: str) -> str:
    return "".join(c.upper() if rng.random() < 0.5 else c for c in s)


def word(rng: random.Random) -> str:
    lo, hi = rng.choice(SCRIPTS[:3]) if rng.random() < 0.6 else rng.choice(SCRIPTS)
    return "".join(rchar(rng, lo, hi) for _ in range(rng.randint(1, 8)))


def fragment(rng: random.Random, specials: list[str]) -> str:
    k = rng.randrange(16)
    if k == 0:
        return word(rng)
    if k == 1:  # combining marks on a base, possibly reorderable (NFC canonical order)
        base = rng.choice("aeiouAEIOUnNcCsSzZ\u03b1\u0438\u3042 1'.")
        return base + "".join(rng.choice(COMBINING) for _ in range(rng.randint(1, 4)))
    if k == 2:  # decomposed / precomposed forms
        s = "".join(rng.choice(PRECOMPOSED) for _ in range(rng.randint(1, 5)))
        return rng.choice([unicodedata.normalize("NFD", s), s, unicodedata.normalize("NFKD", s)])
    if k == 3:
        return emoji(rng)
    if k == 4:  # contractions in all cases, with or without a word before
        w = rng.choice(["", "don", "I", "we", "THEY", "it", "x", "é", "1", " "])
        return w + cased(rng, rng.choice(CONTRACTIONS)) + rng.choice(["", " ", "s", "x", "'", "."])
    if k == 5:  # digit runs 1-10
        d = rng.choice(DIGITS) if rng.random() < 0.3 else DIGITS[0]
        return "".join(rng.choice(d) for _ in range(rng.randint(1, 10)))
    if k == 6:  # whitespace runs before letters, punctuation, end
        ws = "".join(rng.choice(WS) for _ in range(rng.randint(1, 6)))
        return ws + rng.choice(["", "a", "Word", ".", "!?", "中", "1", "'s", "\n", "é"])
    if k == 7:
        return "".join(rng.choice(PUNCT) for _ in range(rng.randint(1, 6)))
    if k == 8:  # control characters
        return "".join(chr(rng.choice(list(range(0, 32)) + [127] + list(range(0x80, 0xA0))))
                       for _ in range(rng.randint(1, 3)))
    if k == 9 and specials:  # special/added tokens, whole or partial, spaces around
        t = rng.choice(specials)
        if rng.random() < 0.15:
            t = t[: rng.randint(1, len(t))]
        return rng.choice(["", " ", "  ", "\n", "\t"]) + t + rng.choice(["", " ", "  ", "\n", "x"])
    if k == 10:
        return any_char(rng)
    if k == 11:
        return "".join(any_char(rng) for _ in range(rng.randint(2, 6)))
    if k == 12:
        return rng.choice(["Hello", "world", " the", "The", "code()", "x = 1;", "<tag>", "http://a.b/c",
                           "e.g.", "U.S.A.", "naïve", "Straße", "İstanbul", "ǅ", "ﬁ", "ß", "ẞ"])
    if k == 13:  # Hangul jamo (NFC composes L+V(+T))
        return "".join(chr(c) for c in (rng.randint(0x1100, 0x1112), rng.randint(0x1161, 0x1175),
                                        rng.randint(0x11A7, 0x11C2)))[: rng.randint(1, 3)]
    if k == 14:
        lo, hi = rng.choice(SCRIPTS)
        return " ".join("".join(rchar(rng, lo, hi) for _ in range(rng.randint(1, 5)))
                        for _ in range(rng.randint(1, 4)))
    return rng.choice(WS)


def long_word(rng: random.Random) -> str:
    n = rng.randint(1001, 3000)
    k = rng.randrange(8)
    if k == 0:
        return "a" * n
    if k == 1:
        return "".join(rng.choice("abcdefghijklmnopqrstuvwxyz") for _ in range(n))
    if k == 2:
        return "".join(rchar(rng, 0x4E00, 0x9FFF) for _ in range(n // 3))
    if k == 3:
        return "".join(rng.choice("0123456789") for _ in range(n))
    if k == 4:
        return " " * n + "x"
    if k == 5:
        return "".join(emoji(rng) for _ in range(n // 8))
    if k == 6:
        return "e" + "\u0301" * (n // 2)
    return "".join(rng.choice(PUNCT) for _ in range(n))


def make_string(rng: random.Random, specials: list[str]) -> str:
    r = rng.random()
    if r < 0.01:
        return ""
    if r < 0.025:
        return rng.choice(["", " ", "x "]) + long_word(rng) + rng.choice(["", " ", "!", " y"])
    n = rng.choice([1, 1, 2, 3, 4, 6, 10, 20])
    sep = rng.choice(["", "", " ", ""])
    return sep.join(fragment(rng, specials) for _ in range(n))


def specials_of(tok: Tokenizer) -> list[str]:
    return [t.content for t in tok.get_added_tokens_decoder().values()]


def make_strings(seed: int, n: int, specials: list[str]) -> list[str]:
    rng = random.Random(seed)
    out = ["", " ", "\n", "\r\n", "\u00a0", "\u3000"]
    while len(out) < n:
        out.append(make_string(rng, specials))
    return out[:n]


# ----------------------------------------------------------------------------- HF side
def hf_expect(tok: Tokenizer, text: str) -> dict:
    ids = tok.encode(text, add_special_tokens=False).ids
    ids_special = tok.encode(text, add_special_tokens=True).ids
    return {"text": text, "ids": ids, "ids_special": ids_special,
            "decoded": tok.decode(ids, skip_special_tokens=False),
            "decoded_skip": tok.decode(ids, skip_special_tokens=True),
            "special_decoded": tok.decode(ids_special, skip_special_tokens=False),
            "special_decoded_skip": tok.decode(ids_special, skip_special_tokens=True)}


def compact(e: dict) -> dict:
    out = {"text": e["text"], "ids": e["ids"]}
    ids, special = e["ids"], e["ids_special"]
    if special != ids:
        if len(special) > len(ids) and special[len(special) - len(ids):] == ids:
            out["special_prefix"] = special[: len(special) - len(ids)]  # e.g. Llama-3's BOS
        else:
            out["ids_special"] = special
    if e["decoded"] != e["text"]:
        out["decoded"] = e["decoded"]
    if e["decoded_skip"] != e["decoded"]:
        out["decoded_skip"] = e["decoded_skip"]
    return out


# ----------------------------------------------------------------------------- our side
def run_driver(driver: Path, tokenizer: Path, texts: list[str]) -> list[dict]:
    inp = "".join(json.dumps({"text": t}, ensure_ascii=False) + "\n" for t in texts)
    res = subprocess.run([str(driver), str(tokenizer)], input=inp.encode(), capture_output=True,
                         check=True)
    return [json.loads(l) for l in res.stdout.decode().split("\n") if l]


def compare(name: str, hf: list[dict], ours: list[dict], max_show: int) -> int:
    bad = 0
    for e, o in zip(hf, ours, strict=True):
        diffs = []
        for key, okey in (("ids", "ids"), ("ids_special", "ids_special"),
                          ("decoded", "ids_decoded"), ("decoded_skip", "ids_decoded_skip"),
                          ("special_decoded", "ids_special_decoded"),
                          ("special_decoded_skip", "ids_special_decoded_skip")):
            if o.get(okey) != e[key]:
                diffs.append((key, o.get(okey, o.get("ids_error")), e[key]))
        if diffs:
            bad += 1
            if bad <= max_show:
                print(f"[{name}] MISMATCH text={json.dumps(e['text'][:300], ensure_ascii=True)}")
                for key, got, want in diffs:
                    print(f"    {key}: ours={json.dumps(got)[:400]}\n    {' ' * len(key)}  hf  ="
                          f" {json.dumps(want)[:400]}")
    return bad


def cmd_run(args) -> int:
    driver = Path(args.driver)
    total_bad = 0
    for i, (name, path) in enumerate(sorted(tokenizer_paths().items())):
        if args.only and name != args.only:
            continue
        tok = Tokenizer.from_file(str(path))
        texts = make_strings(args.seed * 1000 + i, args.n, specials_of(tok))
        hf = [hf_expect(tok, t) for t in texts]
        ours = run_driver(driver, path, texts)
        bad = compare(name, hf, ours, args.show)
        # decode(encode(s)) == s (after the normalizer), as reported by HF itself
        norm = tok.normalizer
        rt = sum(1 for e in hf
                 if e["decoded"] != (norm.normalize_str(e["text"]) if norm else e["text"]))
        print(f"{name}: {len(texts)} strings, {bad} mismatches vs HF, "
              f"{rt} where HF's own decode(encode(s)) != normalize(s)")
        total_bad += bad
    return 1 if total_bad else 0


def cmd_fixture(args) -> int:
    FUZZ.mkdir(parents=True, exist_ok=True)
    for i, (name, path) in enumerate(sorted(tokenizer_paths().items())):
        tok = Tokenizer.from_file(str(path))
        rng_texts = make_strings(args.seed * 1000 + i, args.n, specials_of(tok))
        long_kept = 0
        with open(FUZZ / f"{name}.jsonl", "w", encoding="utf-8") as f:
            for t in rng_texts:
                e = compact(hf_expect(tok, t))
                # Keep the fixture small: a few long words (> 1000 bytes, few ids), no
                # other string over 250 bytes.
                n = len(t.encode())
                if n > 1000 and len(e["ids"]) < 700 and long_kept < 3:
                    long_kept += 1
                elif n > 250:
                    continue
                f.write(json.dumps(e, ensure_ascii=False) + "\n")
        print(name, (FUZZ / f"{name}.jsonl").stat().st_size, "bytes")
    return 0


# Strings that once differed from HF (see git log of this file); each is checked
# against every tokenizer.
REGRESSION: list[str] = [
    # Letters and digits of Unicode 15/16 (HF's Oniguruma and Rust know them,
    # PCRE2 10.42's Unicode 14 tables did not): \p{L}, \p{N} and Digits.
    "don's  \U00010D46\U00065D17\u06da\u5ee0 ",  # Garay digit after spaces (Digits)
    "  \U00010D46", "a\U00010D40\U00010D41b 12", "x \U00016FF4\U00011DE0 y",
    "\u0c77\u01ae\u02cb[\U0001438D\U0001F379\u1109",  # Egyptian hieroglyph ext-A
    "\u1123\u1104\uc415\U000C4279\U000315B2\u0391\u0aa1",  # CJK extension H
    "\U00031350\U0002EBF0 \u1C89\uA7CB'S \U0001E5F1\U0001E5F2\U0001E5F3\U0001E5F4",
    # NFC: HF's tables are Unicode 9.0, marks added later are starters there and
    # U+11935 U+11930 does not compose (Qwen2's normalizer).
    "\u3042\u0352\u0318\u036f\u0344\u1df9\u1509",
    "it'S'\u0e16 \u0e23\u0e41\u0e09\u0e28\u0e4b\u0c3c\U000D65DD",
    "a\u0301\u1df9 e\u0308\u1df6\u0316 \u0915\u0d3b\u093c \u0898\u05b7",
    "\U00011935\U00011930 \U00011938 \U0001E130\u0301 \u1ac0\u0300",
]


def cmd_regression(args) -> int:
    FUZZ.mkdir(parents=True, exist_ok=True)
    with open(FUZZ / "regression.jsonl", "w", encoding="utf-8") as f:
        for name, path in sorted(tokenizer_paths().items()):
            tok = Tokenizer.from_file(str(path))
            for t in REGRESSION:
                e = compact(hf_expect(tok, t))
                f.write(json.dumps({"tokenizer": name, **e}, ensure_ascii=False) + "\n")
    print("regression.jsonl", (FUZZ / "regression.jsonl").stat().st_size, "bytes")
    return 0


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=["run", "fixture", "regression"])
    ap.add_argument("--n", type=int, default=None)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--only", default=None)
    ap.add_argument("--show", type=int, default=20)
    ap.add_argument("--driver", default=str(REPO / "build" / "bin" / "tokenizer_fuzz_driver"))
    args = ap.parse_args()
    if args.n is None:
        args.n = 20000 if args.mode == "run" else 350
    return {"run": cmd_run, "fixture": cmd_fixture, "regression": cmd_regression}[args.mode](args)


if __name__ == "__main__":
    sys.exit(main())
