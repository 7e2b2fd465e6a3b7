"""Minimal safetensors reading/writing on numpy arrays.

Uses the `safetensors` package when it is installed; otherwise a small reader/writer of the
(simple, documented) format itself, so that train/ runs on Debian's python3-torch with no pip
package at all. Both paths write the same header (as JSON) and the same data bytes.
"""

from __future__ import annotations

import json
import os
import struct
from pathlib import Path
from typing import Dict, Tuple

import numpy as np

try:  # Optional: the reference implementation.
    from safetensors.numpy import load_file as _st_load
    from safetensors.numpy import save_file as _st_save
    from safetensors import safe_open as _st_open
except ImportError:  # pragma: no cover - depends on the environment
    _st_load = _st_save = _st_open = None

_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "I64": np.int64,
    "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8, "BOOL": np.bool_,
}
_NAMES = {np.dtype(v): k for k, v in _DTYPES.items()}


def _read_header(path: Path) -> Tuple[dict, int]:
    """ValueError (not a MemoryError or struct.error) for a file that is not safetensors."""
    size = os.path.getsize(path)
    with open(path, "rb") as f:
        head = f.read(8)
        n = struct.unpack("<Q", head)[0] if len(head) == 8 else 0
        if not 2 <= n <= size - 8:
            raise ValueError(f"{path}: not a safetensors file (header length {n}, file size "
                             f"{size})")
        try:
            header = json.loads(f.read(n).decode("utf-8"))
        except ValueError as e:
            raise ValueError(f"{path}: not a safetensors file (header: {e})") from None
    if not isinstance(header, dict):
        raise ValueError(f"{path}: not a safetensors file (header is not a JSON object)")
    _check_entries(path, header, size - 8 - n)
    return header, 8 + n


_ITEMSIZE = {"F64": 8, "F32": 4, "F16": 2, "BF16": 2, "I64": 8, "I32": 4, "I16": 2, "I8": 1,
             "U64": 8, "U32": 4, "U16": 2, "U8": 1, "BOOL": 1, "F8_E4M3": 1, "F8_E5M2": 1}


def _check_entries(path: Path, header: dict, data_size: int) -> None:
    """Every tensor entry names a dtype, a shape and a byte range inside the file that fits the
    shape (a truncated or hand-edited file is a ValueError naming the file and tensor, not a
    reshape error or a KeyError later)."""
    meta = header.get("__metadata__")
    if meta is not None and not isinstance(meta, dict):
        raise ValueError(f"{path}: not a safetensors file (__metadata__ is not an object)")
    for name, info in header.items():
        if name == "__metadata__":
            continue
        bad = f"{path}: not a safetensors file (tensor {name!r}"
        if not isinstance(info, dict) or not isinstance(info.get("dtype"), str):
            raise ValueError(f"{bad} has no dtype)")
        shape, off = info.get("shape"), info.get("data_offsets")
        if not isinstance(shape, list) or not all(
                isinstance(d, int) and not isinstance(d, bool) and d >= 0 for d in shape):
            raise ValueError(f"{bad}: shape {shape!r} is not a list of sizes)")
        if not (isinstance(off, list) and len(off) == 2 and all(
                isinstance(o, int) and not isinstance(o, bool) for o in off)
                and 0 <= off[0] <= off[1]):
            raise ValueError(f"{bad}: data_offsets {off!r} are not [begin, end])")
        if off[1] > data_size:
            raise ValueError(f"{path}: truncated or not a safetensors file (tensor {name!r} "
                             f"ends at byte {off[1]} of the data, which has {data_size})")
        size = _ITEMSIZE.get(info["dtype"])
        if size is not None and off[1] - off[0] != size * int(np.prod(shape, dtype=np.int64)):
            raise ValueError(f"{bad}: {off[1] - off[0]} bytes do not hold {info['dtype']} "
                             f"{shape})")


def read_metadata(path) -> Dict[str, str]:
    header, _ = _read_header(Path(path))
    return dict(header.get("__metadata__", {}) or {})


def tensor_info(path) -> Dict[str, Tuple[str, list]]:
    """name -> (dtype string, shape) without reading data (works for BF16 too)."""
    header, _ = _read_header(Path(path))
    return {k: (v["dtype"], v["shape"]) for k, v in header.items() if k != "__metadata__"}


def read_raw(path, name: str) -> Tuple[str, list, bytes]:
    """(dtype string, shape, raw little-endian bytes) of one tensor; handles BF16."""
    path = Path(path)
    header, base = _read_header(path)
    if name not in header:
        raise KeyError(f"{path}: no tensor named {name!r}")
    info = header[name]
    start, end = info["data_offsets"]
    with open(path, "rb") as f:
        f.seek(base + start)
        data = f.read(end - start)
    return info["dtype"], info["shape"], data


def load(path) -> Dict[str, np.ndarray]:
    """All tensors of a file with numpy dtypes (BF16 is not a numpy dtype: use read_raw)."""
    path = Path(path)
    header, _ = _read_header(path)  # a ValueError naming the file, whichever reader follows
    if _st_load is not None:
        try:
            return dict(_st_load(str(path)))
        except Exception as e:  # safetensors' own SafetensorError is no ValueError
            raise ValueError(f"{path}: not a readable safetensors file: {e}") from None
    out = {}
    for name, info in header.items():
        if name == "__metadata__":
            continue
        dtype, shape, data = read_raw(path, name)
        if dtype not in _DTYPES:
            raise ValueError(f"{path}: tensor {name!r} has dtype {dtype}, not readable as numpy")
        out[name] = np.frombuffer(data, dtype=_DTYPES[dtype]).reshape(shape).copy()
    return out


def _replace(path: Path, write) -> None:
    """write(NAME.tmp), then a rename over `path`; the temporary file is removed on failure."""
    tmp = path.with_name(path.name + ".tmp")
    try:
        write(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def save(tensors: Dict[str, np.ndarray], path, metadata: Dict[str, str] | None = None) -> None:
    """Writes atomically: a temporary file beside `path`, then a rename, so an interrupted or
    failed write never leaves a partial file at `path` (nor replaces an earlier one)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    _replace(path, lambda tmp: _write(tensors, tmp, metadata))


def write_atomic(path, data: bytes) -> None:
    """Any file, written like save(): NAME.tmp, then a rename over `path`."""
    _replace(Path(path), lambda tmp: tmp.write_bytes(data))


def _write(tensors: Dict[str, np.ndarray], path: Path, metadata: Dict[str, str] | None) -> None:
    tensors = {k: np.ascontiguousarray(v) for k, v in tensors.items()}
    metadata = {str(k): str(v) for k, v in (metadata or {}).items()}
    if _st_save is not None:
        _st_save(tensors, str(path), metadata=metadata or None)
        return
    # Same layout as the reference writer: tensors sorted by (dtype alignment desc, name),
    # header padded with spaces to a multiple of 8 bytes.
    order = sorted(tensors, key=lambda k: (-tensors[k].dtype.itemsize, k))
    header: dict = {}
    if metadata:
        header["__metadata__"] = metadata
    offset = 0
    for k in order:
        a = tensors[k]
        header[k] = {"dtype": _NAMES[a.dtype], "shape": list(a.shape),
                     "data_offsets": [offset, offset + a.nbytes]}
        offset += a.nbytes
    blob = json.dumps(header, separators=(",", ":")).encode("utf-8")
    blob += b" " * ((8 - len(blob) % 8) % 8)
    with open(path, "wb") as f:
        f.write(struct.pack("<Q", len(blob)))
        f.write(blob)
        for k in order:
            f.write(tensors[k].tobytes())
