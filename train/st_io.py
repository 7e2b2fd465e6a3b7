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
    return header, 8 + n


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
    if _st_load is not None:
        return dict(_st_load(str(path)))
    header, _ = _read_header(path)
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
