"""Synthetic long-context retrieval data, built from text already on this machine (no downloads).

Haystacks (named sources; training and evaluation use different ones):
  pydoc-train  docstrings of the Python standard library, modules with an even name hash
  pydoc-eval   the same, modules with an odd name hash (disjoint from pydoc-train)
  licenses     /usr/share/common-licenses and /usr/share/doc/*/copyright (Debian)
  essay        sentences from a small built-in grammar (always available; used by tests)
Tasks (RULER-like needles; key words are split into train / eval halves):
  uuid         one "uuid key -> uuid value" needle
  number       one "word -> 7-digit number" needle
  multikey     4 word->number needles, asked for one
  multivalue   one word with 3 numbers, asked for all (in order of appearance)
Lengths (prompt + answer tokens) are spread evenly between min_len and max_len.

CLI: python3 -m train.data --tokenizer MODEL_DIR --out FILE.npz --n 200 --seed 1 \
        --min-len 1024 --max-len 8192 --tasks number,multikey --haystack pydoc-train --keys train
"""

from __future__ import annotations

import argparse
import ast
import glob
import hashlib
import io
import json
import lzma
import os
import random
import sysconfig
import uuid
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np

from train import st_io

WORDS = (
    "apple anchor basket beacon canyon candle dolphin dragon ember engine falcon fabric garden "
    "glacier harbor helmet island ivory jungle jacket kettle kingdom lantern ladder meadow marble "
    "nectar needle orchard oyster pepper pillow quartz quiver river rocket saddle silver tiger "
    "timber umbrella uniform valley violin walnut window yellow yogurt zebra zipper badger bamboo "
    "cactus cobalt denim desert eagle easel feather fossil ginger granite hammer hazel igloo "
    "indigo jasmine jigsaw kiwi koala lemon lizard magnet maple nickel noodle olive onion parrot "
    "pebble rabbit radish salmon sponge tomato tulip velvet vessel wizard walrus")
WORD_LIST = WORDS.split()
TASKS = ("uuid", "number", "multikey", "multivalue")
HAYSTACKS = ("pydoc-train", "pydoc-eval", "licenses", "essay")


@dataclass
class Sample:
    prompt: List[int]
    answer: List[int]
    task: str
    answer_text: str


# ---- haystack text --------------------------------------------------------------------------

def _paragraphs(text: str) -> List[str]:
    out = []
    for p in text.replace("\r", "").split("\n\n"):
        p = " ".join(p.split())
        if len(p) >= 40:
            out.append(p)
    return out


def _pydoc(parity: int) -> List[str]:
    root = Path(sysconfig.get_paths()["stdlib"])
    paras: List[str] = []
    for f in sorted(root.glob("*.py")) + sorted(root.glob("*/*.py")):
        if "test" in f.parts[-2:] or f.name.startswith("test"):
            continue
        if int(hashlib.md5(f.stem.encode()).hexdigest(), 16) % 2 != parity:
            continue
        try:
            tree = ast.parse(f.read_text(encoding="utf-8", errors="ignore"))
        except (SyntaxError, ValueError):
            continue
        for node in ast.walk(tree):
            if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef)):
                doc = ast.get_docstring(node)
                if doc:
                    paras.extend(_paragraphs(doc))
    return paras


def _licenses() -> List[str]:
    seen, paras = set(), []
    files = sorted(glob.glob("/usr/share/common-licenses/*")) + sorted(
        glob.glob("/usr/share/doc/*/copyright"))
    for f in files:
        real = os.path.realpath(f)
        if real in seen or not os.path.isfile(real):
            continue
        seen.add(real)
        with open(real, encoding="utf-8", errors="ignore") as fh:
            for p in _paragraphs(fh.read()):
                if p not in seen:
                    seen.add(p)
                    paras.append(p)
    return paras


def _essay(seed: int = 0, n: int = 3000) -> List[str]:
    rng = random.Random(seed)
    subj = ["The river", "A quiet town", "The old engine", "Every garden", "The market",
            "A patient teacher", "The northern road", "Our small boat", "The library"]
    verb = ["remembers", "carries", "changes", "watches", "follows", "welcomes", "hides"]
    obj = ["the morning light", "a long story", "the autumn rain", "many travellers",
           "an unfinished song", "the harvest", "a forgotten map", "the evening market"]
    tail = ["before the winter comes", "without a sound", "as the years go by",
            "for anyone who listens", "in the middle of the valley", "until the bells ring"]
    paras = []
    for _ in range(n):
        paras.append(" ".join(f"{rng.choice(subj)} {rng.choice(verb)} {rng.choice(obj)} "
                              f"{rng.choice(tail)}." for _ in range(rng.randint(3, 6))))
    return paras


def haystack_paragraphs(name: str) -> List[str]:
    if name == "pydoc-train":
        return _pydoc(0)
    if name == "pydoc-eval":
        return _pydoc(1)
    if name == "licenses":
        return _licenses()
    if name == "essay":
        return _essay()
    raise ValueError(f"unknown haystack {name!r}")


# ---- prompts ------------------------------------------------------------------------------

@dataclass
class Template:
    """ChatML (SmolLM2, Qwen2) by default; `plain` for base models."""
    head: str = "<|im_start|>user\nSome special magic values are hidden in the following text. " \
                "Memorize them.\n\n"
    foot: str = "<|im_end|>\n<|im_start|>assistant\n"

    @staticmethod
    def named(name: str) -> "Template":
        if name == "chatml":
            return Template()
        if name == "plain":
            return Template(head="Some special magic values are hidden in the following text. "
                                 "Memorize them.\n\n", foot="\n")
        raise ValueError(f"unknown template {name!r}")


def _number(rng: random.Random) -> str:
    return str(rng.randint(1000000, 9999999))


def _uuid(rng: random.Random) -> str:
    return str(uuid.UUID(int=rng.getrandbits(128), version=4))


def _needles(task: str, rng: random.Random, words: Sequence[str]):
    """-> (needle sentences, question, answer prefix, answer text)."""
    if task == "uuid":
        k, v = _uuid(rng), _uuid(rng)
        return ([f"The special magic uuid for {k} is: {v}."],
                f"What is the special magic uuid for {k} mentioned in the provided text?",
                f"The special magic uuid for {k} mentioned in the provided text is:", f" {v}")
    if task in ("number", "multikey"):
        keys = rng.sample(list(words), 1 if task == "number" else 4)
        vals = [_number(rng) for _ in keys]
        w, n = keys[0], vals[0]
        rng_order = list(zip(keys, vals))
        rng.shuffle(rng_order)
        return ([f"One of the special magic numbers for {k} is: {v}." for k, v in rng_order],
                f"What is the special magic number for {w} mentioned in the provided text?",
                f"The special magic number for {w} mentioned in the provided text is:", f" {n}")
    if task == "multivalue":
        w = rng.choice(list(words))
        vals = [_number(rng) for _ in range(3)]
        return ([f"One of the special magic numbers for {w} is: {v}." for v in vals],
                f"What are all the special magic numbers for {w} mentioned in the provided text?",
                f"The special magic numbers for {w} mentioned in the provided text are:",
                " " + ", ".join(vals))
    raise ValueError(f"unknown task {task!r}")


class Generator:
    """Makes Samples from a tokenizer (encode: str -> ids) and a haystack."""

    def __init__(self, encode: Callable[[str], List[int]], haystack: str, keys: str = "train",
                 template: str = "chatml"):
        self.encode = encode
        self.tpl = Template.named(template)
        self.paras = [encode(p + "\n\n") for p in haystack_paragraphs(haystack)]
        if not self.paras:
            raise RuntimeError(f"haystack {haystack!r} has no text on this machine")
        self.words = WORD_LIST[0::2] if keys == "train" else WORD_LIST[1::2]

    def sample(self, task: str, length: int, rng: random.Random) -> Sample:
        if task == "text":  # plain haystack, for fidelity measurements
            toks, i = [], rng.randrange(len(self.paras))
            while len(toks) < length:
                toks += self.paras[i % len(self.paras)]
                i += 1
            return Sample(toks[:length], [], "text", "")
        needles, question, prefix, answer = _needles(task, rng, self.words)
        # Needles depend on the keys (and uuid needles are long), so everything is tokenised
        # before the haystack is sized to fill the rest of `length`.
        head = self.encode(self.tpl.head)
        tail = self.encode("\n\n" + question + self.tpl.foot + prefix)
        ans = self.encode(answer)
        ntoks = [self.encode(n + "\n\n") for n in needles]
        budget = length - len(head) - len(tail) - len(ans) - sum(map(len, ntoks))
        if budget < 0:
            raise ValueError(f"length {length} too short for task {task}")
        chunks, i, got = [], rng.randrange(len(self.paras)), 0
        while got < budget:
            p = self.paras[i % len(self.paras)][: budget - got]
            chunks.append(p)
            got += len(p)
            i += 1
        # Needles at uniformly random depths (paragraph boundaries), kept in their listed
        # order so that "in order of appearance" answers hold.
        slots = sorted(rng.randint(0, len(chunks)) for _ in ntoks)
        body: List[int] = []
        j = 0
        for ci in range(len(chunks) + 1):
            while j < len(slots) and slots[j] == ci:
                body += ntoks[j]
                j += 1
            if ci < len(chunks):
                body += chunks[ci]
        return Sample(head + body + tail, ans, task, answer)

    def dataset(self, n: int, seed: int, min_len: int, max_len: int,
                tasks: Sequence[str]) -> List[Sample]:
        rng = random.Random(seed)
        lens = np.linspace(min_len, max_len, n).round().astype(int) if n > 1 else [max_len]
        out = [self.sample(tasks[i % len(tasks)], int(lens[i]), rng) for i in range(n)]
        rng.shuffle(out)
        return out


# ---- storage --------------------------------------------------------------------------------

def save_samples(samples: Sequence[Sample], path, info: Optional[Dict] = None) -> None:
    """.npz, or .npz.xz: LZMA with a large window, which finds the haystack paragraphs that
    samples share (a training set shrinks ~10x more than with zip)."""
    seqs = [s.prompt + s.answer for s in samples]
    offsets = np.cumsum([0] + [len(x) for x in seqs]).astype(np.int64)
    toks = np.concatenate([np.asarray(x, np.int64) for x in seqs])
    toks = toks.astype(np.uint16 if toks.max(initial=0) < 65536 else np.int32)
    buf = io.BytesIO()
    np.savez(
        buf, tokens=toks, offsets=offsets,
        prompt_len=np.asarray([len(s.prompt) for s in samples], np.int64),
        tasks=np.asarray([s.task for s in samples]),
        answers=np.asarray([s.answer_text for s in samples]),
        info=np.asarray(json.dumps(info or {})))
    data = buf.getvalue()
    if str(path).endswith(".xz"):
        data = lzma.compress(data, preset=9 | lzma.PRESET_EXTREME)
    st_io.write_atomic(path, data)  # NAME.tmp, then a rename: no partial file at `path`


def load_samples(path) -> List[Sample]:
    data = Path(path).read_bytes()
    if str(path).endswith(".xz"):
        data = lzma.decompress(data)
    z = np.load(io.BytesIO(data))
    toks, off, pl = z["tokens"], z["offsets"], z["prompt_len"]
    out = []
    for i in range(len(pl)):
        seq = toks[off[i]:off[i + 1]].tolist()
        out.append(Sample(seq[:pl[i]], seq[pl[i]:], str(z["tasks"][i]), str(z["answers"][i])))
    return out


def hf_encoder(model_dir) -> Callable[[str], List[int]]:
    from tokenizers import Tokenizer  # only needed to build data sets
    tok = Tokenizer.from_file(str(Path(model_dir) / "tokenizer.json"))
    return lambda s: tok.encode(s, add_special_tokens=False).ids


def checked_generator(model_dir, haystack: str, keys: str, template: str, tok_key: str,
                      hay_key: str) -> "Generator":
    """A Generator with model_dir's tokenizer, or ConfigError naming tok_key / hay_key: no
    tokenizer.json, no `tokenizers` package, a file it cannot read, a haystack with no text
    on this machine."""
    from train.checks import ConfigError
    tok = Path(model_dir) / "tokenizer.json"
    if not tok.is_file():
        raise ConfigError(f"{tok_key}: {tok} does not exist")
    try:
        enc = hf_encoder(model_dir)
    except ImportError:
        raise ConfigError(f"{tok_key}: reading tokenizer.json needs the `tokenizers` package "
                          "(pip install tokenizers)") from None
    except Exception as e:  # the tokenizers package's own errors
        raise ConfigError(f"{tok_key}: cannot read {tok}: {e}") from None
    try:
        return Generator(enc, haystack, keys, template)
    except RuntimeError as e:  # "haystack H has no text on this machine"
        raise ConfigError(f"{hay_key}: {e}") from None


def checked_dataset(gen: "Generator", n: int, seed: int, min_len: int, max_len: int,
                    tasks: Sequence[str], len_key: str) -> List[Sample]:
    from train.checks import ConfigError
    try:
        return gen.dataset(n, seed, min_len, max_len, tasks)
    except ValueError as e:  # "length L too short for task T"
        raise ConfigError(f"{len_key}: {e} (prompt template, question and needles do not "
                          "fit)") from None


def main(argv=None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--tokenizer", required=True, help="model folder with tokenizer.json")
    ap.add_argument("--out", required=True)
    ap.add_argument("--n", type=int, default=100)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--min-len", type=int, default=1024)
    ap.add_argument("--max-len", type=int, default=8192)
    ap.add_argument("--tasks", default="number,multikey,multivalue,uuid",
                    help="comma list of " + ", ".join(TASKS) + ", text")
    ap.add_argument("--haystack", default="pydoc-train", choices=HAYSTACKS)
    ap.add_argument("--keys", default="train", choices=["train", "eval"])
    ap.add_argument("--template", default="chatml", choices=["chatml", "plain"])
    a = ap.parse_args(argv)
    from train.checks import run_cli
    run_cli("train.data", "nothing written", lambda: generate(a))


def generate(a) -> None:
    from train.checks import ConfigError, check_out_file, need_int
    need_int("--n", a.n, 1)
    need_int("--seed", a.seed, 0)
    need_int("--min-len", a.min_len, 1)
    need_int("--max-len", a.max_len, a.min_len)
    tasks = a.tasks.split(",")
    bad = [t for t in tasks if t not in TASKS + ("text",)]
    if bad:
        raise ConfigError(f"--tasks: unknown task {bad[0]!r} (known: {', '.join(TASKS)}, text)")
    tok = Path(a.tokenizer) / "tokenizer.json"
    if not tok.is_file():
        raise ConfigError(f"--tokenizer: {tok} does not exist")
    check_out_file(a.out, "--out")
    gen = checked_generator(a.tokenizer, a.haystack, a.keys, a.template, "--tokenizer",
                            "--haystack")
    samples = checked_dataset(gen, a.n, a.seed, a.min_len, a.max_len, tasks, "--min-len")
    save_samples(samples, a.out, vars(a))
    lens = [len(s.prompt) + len(s.answer) for s in samples]
    print(f"{a.out}: {len(samples)} samples, tokens {min(lens)}..{max(lens)}, "
          f"{len(gen.paras)} haystack paragraphs")


if __name__ == "__main__":
    main()
