#!/usr/bin/env python3
"""Makes the tokenizer test fixtures under tests/data/tokenizer/ (no hub needed).

  * llama3-mini/tokenizer.json, qwen2-mini/tokenizer.json: small byte-level BPE
    tokenizers TRAINED here with the HF `tokenizers` library on local text
    (Python's stdlib sources, /usr/share/common-licenses, synthetic Unicode),
    configured exactly like their families: Llama-3 (Split with the Llama-3
    regex + ByteLevel(use_regex=false), ignore_merges, 256 special tokens,
    Sequence[ByteLevel, TemplateProcessing] post-processor adding BOS) and
    Qwen2 (NFC normalizer, Qwen2 regex, ChatML specials, non-special added
    tokens).
  * <name>.cases.jsonl: >= 2000 strings each with the ids HF produces
    (ids; ids_special for encode(add_special_tokens=True) where it differs;
    decoded where HF's decode(ids) != text, e.g. after NFC).
  * <name>.decode.jsonl: random id sequences with HF's decode (lossy, U+FFFD)
    with and without skip_special_tokens.
  * smollm2: the tokenizer.json is NOT committed (2 MB); it is built by
    tools/convert_smollm2.py into .cache/models/smollm2-135m-instruct/. This
    script uses that converter's build_tokenizer() on the GGUF to produce the
    expected ids, so the committed cases check the real converted file.
  * templates/*.json: tokenizer_config.json excerpts (chat_template, bos) and
    chat.jsonl: conversations rendered with transformers' own jinja renderer.

Usage: python3 tools/make_tokenizer_fixtures.py [--skip-smollm2]
Deterministic (fixed seeds) for a given `tokenizers` version.
"""

from __future__ import annotations

import argparse
import glob
import json
import os
import random
import sys
import unicodedata
from pathlib import Path

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, normalizers
from tokenizers import pre_tokenizers, processors, trainers

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "data" / "tokenizer"

LLAMA3_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}|"
                r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")
QWEN2_REGEX = (r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}|"
               r" ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+")


# ----------------------------------------------------------------------------- corpus
def synthetic_unicode(rng: random.Random, n_lines: int) -> list[str]:
    words = ["中文", "日本語", "東京", "こんにちは", "カタカナ", "한국어", "서울", "Привет", "мир",
             "Ελληνικά", "αβγ", "مرحبا", "שלום", "हिन्दी", "ภาษาไทย", "café", "naïve", "Straße",
             "façade", "Øre", "ñandú", "Ünïcödé", "😀", "👍🏽", "🇫🇷", "❤️", "…", "—", "“quoted”"]
    lines = []
    for _ in range(n_lines):
        k = rng.randint(3, 12)
        lines.append(" ".join(rng.choice(words) for _ in range(k)))
    return lines


def corpus_lines(max_bytes: int = 6_000_000) -> list[str]:
    paths = sorted(glob.glob("/usr/share/common-licenses/*"))
    pylib = os.path.dirname(os.__file__)
    paths += sorted(glob.glob(os.path.join(pylib, "*.py")))
    paths += sorted(glob.glob(os.path.join(pylib, "email", "*.py")))
    lines, total = [], 0
    for p in paths:
        if not os.path.isfile(p):
            continue
        try:
            text = open(p, encoding="utf-8").read()
        except (UnicodeDecodeError, OSError):
            continue
        for line in text.splitlines(keepends=True):
            lines.append(line)
            total += len(line)
        if total > max_bytes:
            break
    lines += [l + "\n" for l in synthetic_unicode(random.Random(7), 3000)]
    return lines


def train(regex: str, vocab_size: int, lines: list[str], nfc: bool) -> Tokenizer:
    tok = Tokenizer(models.BPE())
    if nfc:
        tok.normalizer = normalizers.NFC()
    tok.pre_tokenizer = pre_tokenizers.Sequence([
        pre_tokenizers.Split(Regex(regex), behavior="isolated", invert=False),
        pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
    ])
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                  initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
    tok.train_from_iterator(lines, trainer=trainer)
    return tok


def make_llama3(lines: list[str]) -> Tokenizer:
    tok = train(LLAMA3_REGEX, 3000, lines, nfc=False)
    n = tok.get_vocab_size()
    names = {0: "<|begin_of_text|>", 1: "<|end_of_text|>", 6: "<|start_header_id|>",
             7: "<|end_header_id|>", 8: "<|eom_id|>", 9: "<|eot_id|>", 10: "<|python_tag|>"}
    specials, reserved = [], 0
    for i in range(256):
        if i in names:
            specials.append(names[i])
        else:
            specials.append(f"<|reserved_special_token_{reserved}|>")
            reserved += 1
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False) for s in specials])
    bos = "<|begin_of_text|>"
    tok.post_processor = processors.Sequence([
        processors.ByteLevel(add_prefix_space=True, trim_offsets=False, use_regex=True),
        processors.TemplateProcessing(single=f"{bos} $A", pair=f"{bos} $A {bos} $B",
                                      special_tokens=[(bos, n)]),
    ])
    data = json.loads(tok.to_str())
    data["model"]["ignore_merges"] = True  # as Llama-3's tokenizer.json
    return Tokenizer.from_str(json.dumps(data))


def make_qwen2(lines: list[str]) -> Tokenizer:
    tok = train(QWEN2_REGEX, 2500, lines, nfc=True)
    tok.add_special_tokens([AddedToken(s, special=True, normalized=False)
                            for s in ["<|endoftext|>", "<|im_start|>", "<|im_end|>",
                                      "<|object_ref_start|>", "<|vision_pad|>"]])
    # Qwen2.5 has non-special added tokens (normalized=false); one normalized=true
    # token is added too, to exercise matching after the normalizer.
    tok.add_tokens([AddedToken("<tool_call>", special=False, normalized=False),
                    AddedToken("</tool_call>", special=False, normalized=False),
                    AddedToken("<|fim_prefix|>", special=False, normalized=False),
                    AddedToken("Ωmé", special=False, normalized=True)])
    tok.post_processor = processors.ByteLevel(add_prefix_space=False, trim_offsets=False,
                                              use_regex=False)
    return tok


# ----------------------------------------------------------------------------- strings
POOLS = {
    "ascii": ["hello", "world", "The", "quick", "brown", "fox", "jumps", "over", "lazy", "dog",
              "I'm", "you're", "DON'T", "it'S", "we've", "they'll", "she'd", "I'LL", "x", "a",
              "tokenizer", "inference", "LeanK", "GPU", "cache", "don't", "rock'n'roll"],
    "accent": ["café", "naïve", "résumé", "Straße", "façade", "Ångström", "Øre", "ñandú", "über",
               "Zürich", "crème brûlée", "São Paulo", "Łódź", "İstanbul", "ǅ", "ﬁ", "Ǆemal"],
    "combining": ["e\u0301", "a\u0308", "o\u0302\u0323", "a\u0323\u0307", "a\u0307\u0323",
                  "n\u0303", "A\u030a", "\u0301", "x\u0300\u0301\u0302", "u\u031b\u0309",
                  "\u1100\u1161\u11a8", "\u1112\u1161\u11ab", "Z\u0351\u036b\u0343\u036a"],
    "cjk": ["中文", "日本語", "東京タワー", "こんにちは", "カタカナ", "한국어", "서울특별시", "漢字",
            "𠀋𡈽", "你好，世界！", "「引用」", "ｆｕｌｌｗｉｄｔｈ", "〇一二三"],
    "other": ["Привет", "мир", "Ελληνικά", "مرحبا بالعالم", "שלום", "हिन्दी", "ภาษาไทย", "ქართული",
              "Հայերեն", "አማርኛ", "ꦗꦮ", "ᚠᚢᚦ", "ſ", "'ſ", "K", "ǈ"],
    "emoji": ["😀", "👍🏽", "👨‍👩‍👧‍👦", "🏳️‍🌈", "🇫🇷", "🇯🇵", "1️⃣", "❤️", "🧑🏿‍💻", "👩‍❤️‍💋‍👨",
              "🫠", "✨", "©", "™", "🀄"],
    "space": [" ", "  ", "   ", "\t", "\t\t", "\n", "\n\n", "\r\n", " \n ", "\u00a0", "\u2003",
              "\u3000", "\u200b", "\u2028", "\u0085", "\u000b", "\u000c", "\u180e", "\u202f",
              "\ufeff", "        "],
    "digits": ["0", "7", "42", "123", "1234", "12345678", "3.14159", "1,000,000", "2025-01-31",
               "٣٤٥", "०१२", "²³", "½", "Ⅻ", "①", "0x1F", "1e-9", "１２３"],
    "punct": [".", ",", "!", "?", "...", "--", "'", "\"", "(", ")", "[]", "{}", "<>", "#", "@",
              "$", "%", "^&*", "==", "!=", "->", "::", "/*", "*/", "'''", "\\", "`", "~", "|"],
    "code": ["def f(x):\n    return x ** 2\n", "for (int i = 0; i < n; ++i) {\n\tsum += a[i];\n}",
             "if __name__ == '__main__':\n    main()", "#include <vector>\n", "SELECT * FROM t;",
             "x = {'a': 1, \"b\": [2, 3]}", "    \n    \n", "```python\nprint('hi')\n```",
             "std::vector<int32_t> ids;", "// comment\n", "<div class=\"x\">&amp;</div>"],
    "partial": ["<|", "|>", "<|im", "<|im_start", "<|endoftext", "<|begin_of", "<tool_call",
                "<<|", "|>>", "< |im_start| >"],
}


def random_string(rng: random.Random, specials: list[str]) -> str:
    kinds = list(POOLS)
    parts = []
    for _ in range(rng.randint(1, 14)):
        r = rng.random()
        if r < 0.08 and specials:
            parts.append(rng.choice(specials))
        elif r < 0.12:  # random code point from assorted ranges
            lo, hi = rng.choice([(0x20, 0x7e), (0xa0, 0x24f), (0x300, 0x36f), (0x370, 0x3ff),
                                 (0x400, 0x4ff), (0x4e00, 0x9fff), (0xac00, 0xd7a3),
                                 (0x1f300, 0x1faff), (0x2000, 0x206f), (0x10000, 0x1007f),
                                 (0xe000, 0xe0ff), (0x1100, 0x11ff)])
            parts.append("".join(chr(rng.randint(lo, hi)) for _ in range(rng.randint(1, 4))))
        else:
            parts.append(rng.choice(POOLS[rng.choice(kinds)]))
        if rng.random() < 0.5:
            parts.append(rng.choice([" ", " ", " ", "", "\n", "  ", "\t"]))
    return "".join(parts)


def make_strings(seed: int, lines: list[str], specials: list[str], n: int = 2200) -> list[str]:
    rng = random.Random(seed)
    out = ["", " ", "  ", "\n", "a", "Hello world", "Hello, world!", "   leading", "trailing   ",
           "tabs\tand\nnewlines\r\n", "12345678901234567890", "don't DON'T 'S", "e\u0301",
           "👨‍👩‍👧‍👦", "中文字符测试", " " * 100, "a" * 300, "\n" * 20, "1" * 50,
           "x" * 5000, "ab" * 2000]
    for s in specials[:6]:
        out += [s, f" {s} ", f"text{s}text", f"{s}{s}", f"\n{s}\n", f"{s} hello"]
    picks = [l for l in lines if 0 < len(l) < 300]
    while len(out) < n:
        r = rng.random()
        if r < 0.25:
            out.append(rng.choice(picks))
        elif r < 0.35:
            out.append("".join(rng.choice(picks) for _ in range(rng.randint(2, 5))))
        else:
            out.append(random_string(rng, specials))
    return out


def write_cases(tok: Tokenizer, name: str, strings: list[str], nfc: bool) -> None:
    with open(OUT / f"{name}.cases.jsonl", "w", encoding="utf-8") as f:
        for s in strings:
            ids = tok.encode(s, add_special_tokens=False).ids
            rec = {"text": s, "ids": ids}
            with_sp = tok.encode(s, add_special_tokens=True).ids
            if with_sp != ids:
                rec["ids_special"] = with_sp
            dec = tok.decode(ids, skip_special_tokens=False)
            if dec != s:
                rec["decoded"] = dec
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
    rng = random.Random(99)
    n = tok.get_vocab_size(with_added_tokens=True)
    with open(OUT / f"{name}.decode.jsonl", "w", encoding="utf-8") as f:
        for _ in range(300):
            ids = [rng.randrange(n) for _ in range(rng.randint(1, 8))]
            rec = {"ids": ids, "text": tok.decode(ids, skip_special_tokens=False),
                   "text_skip": tok.decode(ids, skip_special_tokens=True)}
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")
    print(f"{name}: {len(strings)} cases, vocab {n}")


def write_strip_cases(lines: list[str]) -> None:
    """llama3-mini with lstrip/rstrip set on two added tokens (the C++ test makes
    the same edit): HF's ids for strings with whitespace around those tokens."""
    data = json.loads((OUT / "llama3-mini" / "tokenizer.json").read_text())
    for t in data["added_tokens"]:
        if t["content"] == "<|eot_id|>":
            t["lstrip"] = True
        if t["content"] == "<|end_of_text|>":
            t["rstrip"] = True
        if t["content"] == "<|start_header_id|>":
            t["lstrip"] = t["rstrip"] = True
    tok = Tokenizer.from_str(json.dumps(data))
    rng = random.Random(5)
    ws = [" ", "  ", "\n", "\t", "\u3000", "\u00a0", "", " \n "]
    toks = ["<|eot_id|>", "<|end_of_text|>", "<|start_header_id|>", "<|end_header_id|>"]
    with open(OUT / "strip.cases.jsonl", "w", encoding="utf-8") as f:
        for _ in range(400):
            parts = []
            for _ in range(rng.randint(1, 6)):
                parts += [rng.choice(ws), rng.choice(toks + ["word", "x y", "é"]), rng.choice(ws)]
            text = "".join(parts)
            rec = {"text": text, "ids": tok.encode(text, add_special_tokens=False).ids}
            f.write(json.dumps(rec, ensure_ascii=False, separators=(",", ":")) + "\n")


def write_nfc_cases() -> None:
    """Random strings rich in combining marks, Hangul and singletons with
    Python's unicodedata NFC (the Unicode version of gen_unicode_tables.py)."""
    rng = random.Random(11)
    pools = ["aeiouAEOnszSZ", "".join(map(chr, range(0x300, 0x370))),
             "\u0591\u05b0\u05b4\u05bc\u05c1\u093c\u094d\u3099\u309a\u0e38\u0e48\u0f71\u0f72",
             "".join(map(chr, range(0x1100, 0x1113))) + "".join(map(chr, range(0x1161, 0x1176)))
             + "".join(map(chr, range(0x11a8, 0x11c3))),
             "\uac00\uac01\ud7a3\ub098\u212b\u2126\u0958\u0344\u0f73\u1e9b\u00e9\u00c5\u1ea5",
             "\u30ab\u30cf\u304b\u0627\u0653\u0654\u0648\u09c7\u09be\u0b47\u0b3e\u1025\u102e"]
    with open(OUT / "nfc.jsonl", "w", encoding="utf-8") as f:
        for _ in range(3000):
            text = "".join(rng.choice(rng.choice(pools)) for _ in range(rng.randint(1, 10)))
            nfc = unicodedata.normalize("NFC", text)
            f.write(json.dumps({"text": text, "nfc": nfc}, ensure_ascii=False,
                               separators=(",", ":")) + "\n")


def specials_of(tok: Tokenizer) -> list[str]:
    return [t.content for _, t in sorted(tok.get_added_tokens_decoder().items())]


# ----------------------------------------------------------------------------- smollm2
def smollm2_tokenizer() -> Tokenizer:
    sys.path.insert(0, str(REPO / "tools"))
    import convert_smollm2  # the project's converter: same tokenizer.json as CI builds
    import gguf
    reader = gguf.GGUFReader(str(convert_smollm2.find_gguf()))
    data, _ = convert_smollm2.build_tokenizer(reader)
    chat_template = convert_smollm2.field(reader, "tokenizer.chat_template")
    return Tokenizer.from_str(json.dumps(data)), chat_template


# ----------------------------------------------------------------------------- templates
LLAMA3_TEMPLATE = (
    "{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = "
    "'<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim"
    " + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}"
    "{{ content }}{% endfor %}{% if add_generation_prompt %}"
    "{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}")

# Llama-3.1-8B-Instruct's template (tool branches included: they are not taken
# without tools, but their presence is what the recogniser sees).
LLAMA31_TEMPLATE = """{{- bos_token }}
{%- if custom_tools is defined %}
    {%- set tools = custom_tools %}
{%- endif %}
{%- if not tools_in_user_message is defined %}
    {%- set tools_in_user_message = true %}
{%- endif %}
{%- if not date_string is defined %}
    {%- set date_string = "26 Jul 2024" %}
{%- endif %}
{%- if not tools is defined %}
    {%- set tools = none %}
{%- endif %}

{#- This block extracts the system message, so we can slot it into the right place. #}
{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content']|trim %}
    {%- set messages = messages[1:] %}
{%- else %}
    {%- set system_message = "" %}
{%- endif %}

{#- System message + builtin tools #}
{{- "<|start_header_id|>system<|end_header_id|>\\n\\n" }}
{%- if builtin_tools is defined or tools is not none %}
    {{- "Environment: ipython\\n" }}
{%- endif %}
{%- if builtin_tools is defined %}
    {{- "Tools: " + builtin_tools | reject('equalto', 'code_interpreter') | join(", ") + "\\n\\n"}}
{%- endif %}
{{- "Cutting Knowledge Date: December 2023\\n" }}
{{- "Today Date: " + date_string + "\\n\\n" }}
{%- if tools is not none and not tools_in_user_message %}
    {{- "You have access to the following functions. To call a function, please respond with JSON for a function call." }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
{%- endif %}
{{- system_message }}
{{- "<|eot_id|>" }}

{#- Custom tools are passed in a user message with some extra guidance #}
{%- if tools_in_user_message and not tools is none %}
    {#- Extract the first user message so we can plug it in here #}
    {%- if messages | length != 0 %}
        {%- set first_user_message = messages[0]['content']|trim %}
        {%- set messages = messages[1:] %}
    {%- else %}
        {{- raise_exception("Cannot put tools in the first user message when there's no first user message!") }}
{%- endif %}
    {{- '<|start_header_id|>user<|end_header_id|>\\n\\n' -}}
    {{- "Given the following functions, please respond with a JSON for a function call " }}
    {{- "with its proper arguments that best answers the given prompt.\\n\\n" }}
    {{- 'Respond in the format {"name": function name, "parameters": dictionary of argument name and its value}.' }}
    {{- "Do not use variables.\\n\\n" }}
    {%- for t in tools %}
        {{- t | tojson(indent=4) }}
        {{- "\\n\\n" }}
    {%- endfor %}
    {{- first_user_message + "<|eot_id|>"}}
{%- endif %}

{%- for message in messages %}
    {%- if not (message.role == 'ipython' or message.role == 'tool' or 'tool_calls' in message) %}
        {{- '<|start_header_id|>' + message['role'] + '<|end_header_id|>\\n\\n'+ message['content'] | trim + '<|eot_id|>' }}
    {%- elif 'tool_calls' in message %}
        {%- if not message.tool_calls|length == 1 %}
            {{- raise_exception("This model only supports single tool-calls at once!") }}
        {%- endif %}
        {%- set tool_call = message.tool_calls[0].function %}
        {%- if builtin_tools is defined and tool_call.name in builtin_tools %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- "<|python_tag|>" + tool_call.name + ".call(" }}
            {%- for arg_name, arg_val in tool_call.arguments | items %}
                {{- arg_name + '="' + arg_val + '"' }}
                {%- if not loop.last %}
                    {{- ", " }}
                {%- endif %}
                {%- endfor %}
            {{- ")" }}
        {%- else  %}
            {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' -}}
            {{- '{"name": "' + tool_call.name + '", ' }}
            {{- '"parameters": ' }}
            {{- tool_call.arguments | tojson }}
            {{- "}" }}
        {%- endif %}
        {%- if builtin_tools is defined %}
            {#- This means we're in ipython mode #}
            {{- "<|eom_id|>" }}
        {%- else %}
            {{- "<|eot_id|>" }}
        {%- endif %}
    {%- elif message.role == "tool" or message.role == "ipython" %}
        {{- "<|start_header_id|>ipython<|end_header_id|>\\n\\n" }}
        {%- if message.content is mapping or message.content is iterable %}
            {{- message.content | tojson }}
        {%- else %}
            {{- message.content }}
        {%- endif %}
        {{- "<|eot_id|>" }}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|start_header_id|>assistant<|end_header_id|>\\n\\n' }}
{%- endif %}
"""

# Qwen2.5-Instruct's template as published (tool branches included; the
# server renders no tools, but the recogniser must cope with the full text).
QWEN25_TEMPLATE = r"""{%- if tools %}
    {{- '<|im_start|>system\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are Qwen, created by Alibaba Cloud. You are a helpful assistant.' }}
    {%- endif %}
    {{- "\n\n# Tools\n\nYou may call one or more functions to assist with the user query.\n\nYou are provided with function signatures within <tools></tools> XML tags:\n<tools>" }}
    {%- for tool in tools %}
        {{- "\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\n</tools>\n\nFor each function call, return a json object with function name and arguments within <tool_call></tool_call> XML tags:\n<tool_call>\n{\"name\": <function-name>, \"arguments\": <args-json-object>}\n</tool_call><|im_end|>\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\n' + messages[0]['content'] + '<|im_end|>\n' }}
    {%- else %}
        {{- '<|im_start|>system\nYou are Qwen, created by Alibaba Cloud. You are a helpful assistant.<|im_end|>\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\n' + message.content + '<|im_end|>' + '\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\n<tool_call>\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\n<tool_response>\n' }}
        {{- message.content }}
        {{- '\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\n' }}
{%- endif %}
"""

CONVERSATIONS = [
    [{"role": "user", "content": "Hello!"}],
    [{"role": "system", "content": "You are terse."}, {"role": "user", "content": "Hi"}],
    [{"role": "user", "content": "  padded  \n"}, {"role": "assistant", "content": "\tok \n"},
     {"role": "user", "content": "again"}],
    [{"role": "system", "content": " sys with spaces \n"}, {"role": "user", "content": "中文 😀"},
     {"role": "assistant", "content": "答案"}, {"role": "system", "content": "late system"},
     {"role": "user", "content": "x"}],
    [{"role": "user", "content": ""}],
    [{"role": "assistant", "content": "I start."}, {"role": "user", "content": "fine"}],
    [{"role": "user", "content": "multi\nline\n\ncontent\u00a0\u3000"}],
]


def write_templates(smollm2_template: str | None) -> None:
    from transformers.utils.chat_template_utils import render_jinja_template
    tdir = OUT / "templates"
    tdir.mkdir(exist_ok=True)
    configs = {
        "llama3": {"chat_template": LLAMA3_TEMPLATE, "bos_token": "<|begin_of_text|>",
                   "eos_token": "<|eot_id|>"},
        "llama3.1": {"chat_template": LLAMA31_TEMPLATE, "bos_token": "<|begin_of_text|>",
                     "eos_token": "<|eot_id|>"},
        "qwen2.5": {"chat_template": QWEN25_TEMPLATE, "bos_token": None,
                    "eos_token": "<|im_end|>"},
    }
    if smollm2_template is not None:
        configs["smollm2"] = {"chat_template": smollm2_template, "bos_token": "<|im_start|>",
                              "eos_token": "<|im_end|>"}
    with open(tdir / "chat.jsonl", "w", encoding="utf-8") as f:
        for name, cfg in sorted(configs.items()):
            with open(tdir / f"{name}.tokenizer_config.json", "w", encoding="utf-8") as cf:
                json.dump(cfg, cf, ensure_ascii=False, indent=1)
            for conv in CONVERSATIONS:
                for gen in (True, False):
                    text = render_jinja_template(
                        [conv], chat_template=cfg["chat_template"], add_generation_prompt=gen,
                        bos_token=cfg["bos_token"] or "", eos_token=cfg["eos_token"])[0][0]
                    f.write(json.dumps({"template": name, "messages": conv,
                                        "add_generation_prompt": gen, "text": text},
                                       ensure_ascii=False) + "\n")
    print(f"templates: {sorted(configs)}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--skip-smollm2", action="store_true")
    args = ap.parse_args()
    OUT.mkdir(parents=True, exist_ok=True)
    lines = corpus_lines()
    print(f"corpus: {len(lines)} lines")

    for name, maker, seed, nfc in (("llama3-mini", make_llama3, 1, False),
                                   ("qwen2-mini", make_qwen2, 2, True)):
        tok = maker(lines)
        (OUT / name).mkdir(exist_ok=True)
        tok.save(str(OUT / name / "tokenizer.json"))
        tok = Tokenizer.from_file(str(OUT / name / "tokenizer.json"))
        write_cases(tok, name, make_strings(seed, lines, specials_of(tok)), nfc)

    write_strip_cases(lines)
    write_nfc_cases()
    template = None
    if not args.skip_smollm2:
        tok, template = smollm2_tokenizer()
        write_cases(tok, "smollm2", make_strings(3, lines, specials_of(tok)), False)
    write_templates(template)


if __name__ == "__main__":
    main()
