"""Masks: stage-2 binarisation, the project's file format, LeanK's released masks, baselines.

Project format (docs/DESIGN.md, cache/mask.h): masks.safetensors with tensor `leank.kept`
uint8 [num_layers, num_kv_heads, head_dim] (1 = keep) and string metadata
{"format": "leank-mask/1", "sink", "recent", "align", "target_sparsity", "model"}.

"Exactly the target ratio" (binarize): with N = L * H * D factors and target sparsity s, the
total kept count is T = align * round((1 - s) * N / align), the multiple of `align` nearest to
(1 - s) * N (Python round: an exact .5 goes to the even multiple). So the achieved sparsity
differs from s by at most align / (2N) (SmolLM2, align 16: 0.14 percentage points), and by
exactly 0 whenever (1 - s) * N is a multiple of align. Every head keeps a multiple of `align`.
"""

from __future__ import annotations

import json
import pickle
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np
import torch

from train import st_io

FORMAT = "leank-mask/1"
TENSOR = "leank.kept"
SERVER_ALIGNS = (32, 16)  # cache/mask.cc: align 16 or 32, dividing head_dim


def target_total(n: int, sparsity: float, align: int) -> int:
    return int(align * round((1.0 - sparsity) * n / align))


def head_counts(alpha: torch.Tensor, sparsity: float, align: int) -> torch.Tensor:
    """Kept channels per head [L, H] (multiples of align) for factors alpha [L, H, D].

    A global quantile picks the (1 - s) * N largest factors; each head's share of them is then
    rounded to a multiple of align by the largest-remainder method, so the total is exactly
    target_total(). Ties in alpha are broken by flat index (stable, deterministic)."""
    L, H, D = alpha.shape
    if D % align:
        raise ValueError(f"head_dim {D} is not a multiple of align {align}")
    n = alpha.numel()
    total = target_total(n, sparsity, align)
    flat = alpha.detach().reshape(-1).float().cpu()
    k = int(round((1.0 - sparsity) * n))
    share = torch.zeros(n, dtype=torch.int64)
    if k > 0:
        # Stable descending order: sort by (-alpha, index).
        order = np.lexsort((np.arange(n), -flat.numpy()))
        share[torch.from_numpy(order[:k])] = 1
    raw = share.view(L * H, D).sum(-1)  # each head's share of the global top-k
    base = (raw // align) * align
    rem = raw - base
    units = (total - int(base.sum())) // align
    counts = base.clone()
    # Give one more block of `align` to the heads with the largest remainders (ties: lower
    # index first); take one away from the smallest if rounding went the other way.
    if units > 0:
        cand = [i for i in np.lexsort((np.arange(L * H), -rem.numpy())) if counts[i] + align <= D]
        for i in cand[:units]:
            counts[i] += align
    elif units < 0:
        cand = [i for i in np.lexsort((np.arange(L * H), rem.numpy())) if counts[i] >= align]
        for i in cand[:-units]:
            counts[i] -= align
    return counts.view(L, H)


def binarize(alpha: torch.Tensor, sparsity: float, align: int) -> torch.Tensor:
    """0/1 mask [L, H, D] (dtype of alpha): each head keeps its head_counts() largest factors."""
    counts = head_counts(alpha, sparsity, align)
    a = alpha.detach()
    # Rank channels within each head by (-alpha, channel): stable top-c selection.
    order = torch.argsort(-a.float().cpu(), dim=-1, stable=True) if _has_stable_argsort() \
        else torch.from_numpy(np.argsort(-a.float().cpu().numpy(), axis=-1, kind="stable"))
    rank = torch.empty_like(order)
    rank.scatter_(-1, order, torch.arange(a.shape[-1]).expand_as(order).contiguous())
    kept = (rank < counts[..., None]).to(alpha.dtype)
    return kept.to(alpha.device)


def _has_stable_argsort() -> bool:
    try:
        torch.argsort(torch.zeros(2), stable=True)
        return True
    except TypeError:
        return False


def kept_counts(kept: torch.Tensor) -> torch.Tensor:
    return kept.reshape(kept.shape[0], kept.shape[1], -1).sum(-1).long()


# ---- project file format ------------------------------------------------------------------

def save_mask(kept, path, *, sink: int, recent: int, align: int, target_sparsity: float,
              model: str, extra: Optional[Dict[str, str]] = None) -> None:
    k = kept.detach().cpu().numpy() if isinstance(kept, torch.Tensor) else np.asarray(kept)
    k = (k > 0.5).astype(np.uint8)
    counts = k.sum(-1)
    if align not in SERVER_ALIGNS or k.shape[-1] % align:
        raise ValueError(f"{path}: align {align!r} must be 16 or 32 and divide head_dim "
                         f"{k.shape[-1]} (cache/mask.cc refuses any other)")
    if np.any(counts % align):
        raise ValueError(f"{path}: a head keeps a count not a multiple of align={align}")
    meta = {"format": FORMAT, "sink": str(sink), "recent": str(recent), "align": str(align),
            "target_sparsity": repr(float(target_sparsity)), "model": model}
    meta.update({k2: str(v) for k2, v in (extra or {}).items()})
    st_io.save({TENSOR: k}, path, meta)


def load_mask(path) -> Tuple[np.ndarray, Dict[str, str]]:
    """(kept uint8 [L, H, D], metadata). Checks the format tag and alignment."""
    path = Path(path)
    meta = st_io.read_metadata(path)
    if meta.get("format") != FORMAT:
        raise ValueError(f"{path}: metadata format is {meta.get('format')!r}, expected {FORMAT!r}")
    t = st_io.load(path)
    if TENSOR not in t:
        raise ValueError(f"{path}: no tensor {TENSOR!r}")
    kept = t[TENSOR]
    if kept.dtype != np.uint8 or kept.ndim != 3:
        raise ValueError(f"{path}: {TENSOR} must be uint8 [L, H, D], got {kept.dtype} {kept.shape}")
    if np.any(kept > 1):
        raise ValueError(f"{path}: {TENSOR} holds values other than 0 and 1")
    try:
        align = int(meta.get("align", "32"))
    except ValueError:
        align = 0
    if align < 1:
        raise ValueError(f"{path}: metadata align must be a positive integer, got "
                         f"{meta.get('align')!r}")
    if np.any(kept.sum(-1) % align):
        raise ValueError(f"{path}: a head's kept count is not a multiple of align={align}")
    return kept, meta


# ---- LeanK's released masks (microsoft/MInference) -----------------------------------------

def import_leank(src, *, align: Optional[int] = None) -> Tuple[np.ndarray, Dict[str, str]]:
    """Reads a released mask: `.pth` (float 0/1 tensor [L, H, D]) or the `.json` index lists
    beside it (kept[layer][kv_head] = channels). Returns (kept uint8, metadata)."""
    src = Path(src)
    meta = {"sink": "128", "recent": "768", "model": src.stem, "source": src.name}
    if src.suffix == ".json":
        j = json.loads(src.read_text())
        L, H, D = j["num_layers"], j["num_kv_heads"], j["head_dim"]
        kept = np.zeros((L, H, D), np.uint8)
        for li, heads in enumerate(j["kept"]):
            for hi, chans in enumerate(heads):
                kept[li, hi, chans] = 1
        meta.update({"sink": str(j.get("sink", 128)), "recent": str(j.get("recent", 768)),
                     "model": j.get("model", src.stem)})
        align = align or j.get("align")
    else:
        try:  # tensors only: a .pth from elsewhere must not run pickled code
            t = torch.load(str(src), map_location="cpu", weights_only=True)
        except TypeError:  # torch older than 1.13 has no weights_only
            t = torch.load(str(src), map_location="cpu")
        except pickle.UnpicklingError as e:
            raise ValueError(f"{src}: not a tensor-only torch file ({e})") from None
        if isinstance(t, dict):  # tolerate {"mask": tensor}
            t = next(v for v in t.values() if isinstance(v, torch.Tensor))
        t = t.float()
        if not torch.all((t == 0) | (t == 1)):
            raise ValueError(f"{src}: mask values are not all 0 or 1")
        kept = t.numpy().astype(np.uint8)
    counts = kept.sum(-1)
    if align is None:  # the larger of 32, 16 (what leank-server accepts) that fits every head
        D = kept.shape[-1]
        align = next((a for a in SERVER_ALIGNS if D % a == 0 and not np.any(counts % a)), None)
        if align is None:
            raise ValueError(f"{src}: the heads' kept counts "
                             f"{sorted({int(c) for c in np.unique(counts)})} (head_dim {D}) are "
                             "not all multiples of 16 or 32, the aligns leank-server accepts")
    meta["align"] = str(align)
    meta["target_sparsity"] = repr(float(1.0 - kept.mean()))
    return kept, meta


def import_leank_to_file(src, dst, *, sink=None, recent=None) -> np.ndarray:
    kept, meta = import_leank(src)
    save_mask(kept, dst, sink=int(sink or meta["sink"]), recent=int(recent or meta["recent"]),
              align=int(meta["align"]), target_sparsity=float(meta["target_sparsity"]),
              model=meta["model"], extra={"source": meta["source"]})
    return kept


# ---- baselines ---------------------------------------------------------------------------

def random_mask(counts: torch.Tensor, head_dim: int, seed: int) -> torch.Tensor:
    """Random channels with the given per-head kept counts [L, H] (aligned)."""
    g = torch.Generator().manual_seed(seed)
    L, H = counts.shape
    kept = torch.zeros(L, H, head_dim)
    for li in range(L):
        for hi in range(H):
            c = int(counts[li, hi])
            kept[li, hi, torch.randperm(head_dim, generator=g)[:c]] = 1
    return kept


def magnitude_mask(score: torch.Tensor, sparsity: float, align: int) -> torch.Tensor:
    """ThinK-like static baseline: channel score [L, H, D] = mean|q_c| * mean|k_c| over
    calibration text, normalised per head (so heads compete on relative importance, as ThinK
    prunes each head), then the same global quantile + alignment rule as stage 2."""
    s = score / score.sum(-1, keepdim=True).clamp_min(1e-12)
    return binarize(s, sparsity, align)
