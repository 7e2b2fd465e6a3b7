"""Stage-2 binarisation (exact ratio, alignment), file round trips, LeanK import."""

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import fail_writes_halfway
from train import st_io
from train.masks import (binarize, head_counts, import_leank, import_leank_to_file,
                         kept_counts, load_mask, magnitude_mask, random_mask, save_mask,
                         target_total)
from train.trainer import ste_mask


@pytest.mark.parametrize("shape", [(30, 3, 64), (4, 2, 32), (32, 8, 128)])
@pytest.mark.parametrize("sparsity", [0.5, 0.6, 0.7, 0.33, 0.0, 1.0])
@pytest.mark.parametrize("align", [16, 32])
def test_stage2_exact_ratio_and_alignment(shape, sparsity, align):
    if shape[2] % align:
        pytest.skip("head_dim not a multiple of align")
    g = torch.Generator().manual_seed(hash((shape, sparsity, align)) % 1000)
    alpha = torch.rand(shape, generator=g) ** 3  # skewed, like trained factors
    n = alpha.numel()
    kept = binarize(alpha, sparsity, align)
    counts = kept_counts(kept)
    assert set(kept.unique().tolist()) <= {0.0, 1.0}
    assert torch.all(counts % align == 0)
    # "Exactly": the total is the multiple of align nearest to (1 - s) * N ...
    assert int(kept.sum()) == target_total(n, sparsity, align)
    assert abs((1 - kept.mean().item()) - sparsity) <= align / (2 * n) + 1e-9
    # ... each head keeps its own top channels ...
    for li in range(shape[0]):
        for hi in range(shape[1]):
            c = int(counts[li, hi])
            if 0 < c < shape[2]:
                assert alpha[li, hi][kept[li, hi] == 1].min() >= alpha[li, hi][kept[li, hi] == 0].max()
    # ... and each head's count is its share of the global top-k, rounded to align.
    k = int(round((1 - sparsity) * n))
    thr = torch.sort(alpha.flatten(), descending=True).values[k - 1] if k else float("inf")
    share = (alpha >= thr).sum(-1)
    assert torch.all((counts - share).abs() <= align)


def test_exact_when_divisible():
    alpha = torch.rand(30, 3, 64, generator=torch.Generator().manual_seed(1))
    for s in (0.5, 0.75, 0.25):  # (1 - s) * 5760 is a multiple of 16
        assert 1 - binarize(alpha, s, 16).mean().item() == pytest.approx(s, abs=0)


def test_ties_go_to_the_lower_index():
    """Stage 1 clamps factors to [0, 1], so trained factors tie (many are exactly 0 or 1): the
    global top-k prefers the lower flat index, and a head keeps its lower channels."""
    ones = torch.ones(1, 2, 32)
    assert torch.equal(binarize(ones, 0.5, 16)[0], torch.stack([torch.ones(32), torch.zeros(32)]))
    assert torch.equal(binarize(ones, 0.75, 16)[0, 0], (torch.arange(32) < 16).float())
    # Factors 1 in head 1's first half and in head 0's upper half, 0 elsewhere: at 75% the
    # 16 kept channels are the first 16 factors equal to 1 in flat order (head 0's 16-31).
    a = torch.zeros(1, 2, 32)
    a[0, 0, 16:] = 1
    a[0, 1, :16] = 1
    want = torch.zeros(1, 2, 32)
    want[0, 0, 16:] = 1
    assert torch.equal(binarize(a, 0.75, 16), want)
    assert torch.equal(binarize(a, 0.5, 16), a)


def test_ste_forward_is_hard_backward_is_identity():
    alpha = torch.rand(3, 2, 32, generator=torch.Generator().manual_seed(2)).requires_grad_()
    m, hard, skip = ste_mask(alpha, 0.6, 16)
    assert torch.equal(m.detach(), hard)
    assert torch.equal(skip, hard.sum(-1) == 0)
    (m * torch.arange(32.0)).sum().backward()
    assert torch.equal(alpha.grad, torch.arange(32.0).expand(3, 2, 32))


def test_project_format_roundtrip(tmp_path):
    alpha = torch.rand(6, 3, 64, generator=torch.Generator().manual_seed(3))
    kept = binarize(alpha, 0.7, 16)
    p = tmp_path / "m.safetensors"
    save_mask(kept, p, sink=128, recent=768, align=16, target_sparsity=0.7, model="tiny")
    back, meta = load_mask(p)
    assert back.dtype == np.uint8 and back.shape == (6, 3, 64)
    assert np.array_equal(back, kept.numpy().astype(np.uint8))
    assert meta == {"format": "leank-mask/1", "sink": "128", "recent": "768", "align": "16",
                    "target_sparsity": "0.7", "model": "tiny"}
    info = st_io.tensor_info(p)
    assert info == {"leank.kept": ("U8", [6, 3, 64])}


def test_fallback_writer_matches_safetensors(tmp_path, monkeypatch):
    pytest.importorskip("safetensors")
    t = {"leank.kept": (np.arange(96) % 2).astype(np.uint8).reshape(2, 3, 16),
         "alpha": np.linspace(0, 1, 12, dtype=np.float32).reshape(3, 4)}
    st_io.save(t, tmp_path / "a.safetensors", {"format": "leank-mask/1", "x": "1"})
    monkeypatch.setattr(st_io, "_st_save", None)
    monkeypatch.setattr(st_io, "_st_load", None)
    st_io.save(t, tmp_path / "b.safetensors", {"format": "leank-mask/1", "x": "1"})
    # Same header (as JSON: the Rust writer's key order varies) and the same data bytes.
    ha, oa = st_io._read_header(tmp_path / "a.safetensors")
    hb, ob = st_io._read_header(tmp_path / "b.safetensors")
    assert ha == hb
    assert (tmp_path / "a.safetensors").read_bytes()[oa:] == \
        (tmp_path / "b.safetensors").read_bytes()[ob:]
    back = st_io.load(tmp_path / "b.safetensors")
    assert all(np.array_equal(back[k], t[k]) for k in t)


def test_interrupted_write_leaves_the_old_file(tmp_path, monkeypatch):
    """A mask/factor file is written to a temporary file and renamed: Ctrl-C (or a full disk)
    in the middle of a write leaves no partial file at the output path."""
    p = tmp_path / "masks-s50.safetensors"
    kept = binarize(torch.rand(2, 2, 16, generator=torch.Generator().manual_seed(1)), 0.5, 16)
    save_mask(kept, p, sink=128, recent=768, align=16, target_sparsity=0.5, model="tiny")
    before = p.read_bytes()

    def interrupted(tensors, path, metadata=None):
        Path(path).write_bytes(b"\x10\x00\x00")  # a partial header
        raise KeyboardInterrupt

    monkeypatch.setattr(st_io, "_st_save", interrupted)
    with pytest.raises(KeyboardInterrupt):
        save_mask(1 - kept, p, sink=128, recent=768, align=16, target_sparsity=0.5, model="x")
    assert p.read_bytes() == before and os.listdir(tmp_path) == [p.name]
    with pytest.raises(KeyboardInterrupt):
        save_mask(kept, tmp_path / "new.safetensors", sink=128, recent=768, align=16,
                  target_sparsity=0.5, model="x")
    assert os.listdir(tmp_path) == [p.name]


def test_bad_alignment_refused(tmp_path):
    kept = np.zeros((2, 2, 32), np.uint8)
    kept[0, 0, :5] = 1
    with pytest.raises(ValueError, match="align"):
        save_mask(kept, tmp_path / "x.safetensors", sink=128, recent=768, align=16,
                  target_sparsity=0.5, model="x")


def _fake_release(tmp_path):
    g = torch.Generator().manual_seed(7)
    counts = torch.randint(0, 5, (4, 2), generator=g) * 32
    kept = random_mask(counts, 128, seed=1)
    torch.save(kept.clone(), tmp_path / "m.pth")
    j = {"format": "kept-channel index lists", "model": "fake", "num_layers": 4,
         "num_kv_heads": 2, "head_dim": 128, "align": 32, "sink": 128, "recent": 768,
         "kept": [[torch.nonzero(kept[l, h]).flatten().tolist() for h in range(2)]
                  for l in range(4)]}
    (tmp_path / "m.json").write_text(json.dumps(j))
    return kept


def test_import_leank_pth_and_json(tmp_path):
    kept = _fake_release(tmp_path)
    a, meta_a = import_leank(tmp_path / "m.pth")
    b, meta_b = import_leank(tmp_path / "m.json")
    assert np.array_equal(a, kept.numpy().astype(np.uint8)) and np.array_equal(a, b)
    assert meta_a["align"] == "32" and meta_b["model"] == "fake"
    out = import_leank_to_file(tmp_path / "m.pth", tmp_path / "m.safetensors")
    back, meta = load_mask(tmp_path / "m.safetensors")
    assert np.array_equal(back, out) and meta["format"] == "leank-mask/1"


def test_import_writes_only_masks_the_server_loads(tmp_path):
    """cache/mask.cc accepts align 16 or 32 dividing head_dim. The importer fell back to align
    8 (or 1) when the kept counts were not multiples of 16, and picked 32 for head_dim 80, and
    wrote files the server refuses; save_mask wrote any align it was given."""
    def release(name, head_dim, counts):
        kept = [[list(range(c)) for c in layer] for layer in counts]
        (tmp_path / name).write_text(json.dumps(
            {"format": "kept-channel index lists", "num_layers": len(counts),
             "num_kv_heads": len(counts[0]), "head_dim": head_dim, "kept": kept}))
        return tmp_path / name
    odd = release("odd.json", 128, [[8, 32], [0, 64]])
    with pytest.raises(ValueError, match="not all multiples of 16 or 32"):
        import_leank_to_file(odd, tmp_path / "odd.safetensors")
    assert not (tmp_path / "odd.safetensors").exists()
    hd80 = release("hd80.json", 80, [[64, 32], [0, 64]])
    import_leank_to_file(hd80, tmp_path / "hd80.safetensors")
    assert load_mask(tmp_path / "hd80.safetensors")[1]["align"] == "16"
    for align in (8, 64):
        with pytest.raises(ValueError, match="must be 16 or 32"):
            save_mask(torch.zeros(2, 2, 64), tmp_path / "a.safetensors", sink=128, recent=768,
                      align=align, target_sparsity=1.0, model="x")
    assert not (tmp_path / "a.safetensors").exists()


# shared/ beside the clone (where CI lays it), else the developers' /work/shared.
RELEASED = next((str(p) for p in (Path(__file__).resolve().parents[3] / "shared",
                                  Path("/work/shared"))
                 if (p / "leank-masks" / "llama3.1-8b-instruct.pth").exists()),
                "/work/shared") + "/leank-masks/llama3.1-8b-instruct.pth"


@pytest.mark.skipif(not os.path.exists(RELEASED), reason="released masks not on this machine")
def test_import_released_llama_mask():
    kept, meta = import_leank(RELEASED)
    counts = kept.sum(-1)
    assert kept.shape == (32, 8, 128) and meta["align"] == "32"
    assert {int(c): int((counts == c).sum()) for c in np.unique(counts)} == \
        {0: 47, 32: 120, 64: 67, 96: 22}
    j, _ = import_leank(RELEASED.replace(".pth", ".json"))
    assert np.array_equal(kept, j)


def test_baselines_have_requested_budget():
    score = torch.rand(5, 3, 64, generator=torch.Generator().manual_seed(8)) + 0.01
    mag = magnitude_mask(score, 0.6, 16)
    assert int(mag.sum()) == target_total(score.numel(), 0.6, 16)
    counts = head_counts(score, 0.6, 16)
    rnd = random_mask(counts, 64, seed=3)
    assert torch.equal(kept_counts(rnd), counts)


@pytest.mark.parametrize("content", [b"", b"\x01", b"not safetensors at all",
                                     (100).to_bytes(8, "little") + b"{}",
                                     (2).to_bytes(8, "little") + b"[]",
                                     (4).to_bytes(8, "little") + b"\xff\xfe{}"])
def test_read_of_a_file_that_is_not_safetensors_is_a_value_error(tmp_path, content):
    """Before: a MemoryError (a text file's first 8 bytes read as a huge header length),
    struct.error (a short file) or a bare JSON error without the file name."""
    p = tmp_path / "x.safetensors"
    p.write_bytes(content)
    with pytest.raises(ValueError, match="not a safetensors file"):
        st_io.read_metadata(p)


def test_write_atomic_keeps_the_old_file_on_failure(tmp_path, monkeypatch):
    out = tmp_path / "r.json"
    out.write_bytes(b"earlier")
    fail_writes_halfway(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        st_io.write_atomic(out, b"new contents")
    assert out.read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["r.json"]
    monkeypatch.undo()
    st_io.write_atomic(out, b"new contents")
    assert out.read_bytes() == b"new contents" and not (tmp_path / "r.json.tmp").exists()


def _with_header(path, header, data):
    blob = json.dumps(header).encode()
    blob += b" " * ((8 - len(blob) % 8) % 8)
    path.write_bytes(len(blob).to_bytes(8, "little") + blob + data)


BAD_ENTRIES = [
    ({"x": 5}, b"", "tensor 'x' has no dtype"),
    ({"x": {"dtype": "F32", "shape": [2]}}, b"\0" * 8, "data_offsets None are not"),
    ({"x": {"dtype": "F32", "shape": "2", "data_offsets": [0, 8]}}, b"\0" * 8, "shape '2'"),
    ({"x": {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}}, b"\0" * 5,
     "truncated or not a safetensors file (tensor 'x' ends at byte 8 of the data, which has 5)"),
    ({"x": {"dtype": "F32", "shape": [3], "data_offsets": [0, 8]}}, b"\0" * 8,
     "8 bytes do not hold F32 [3]"),
    ({"__metadata__": [1], "x": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]}}, b"\0",
     "__metadata__ is not an object"),
]


@pytest.mark.parametrize("header,data,message", BAD_ENTRIES, ids=[b[2][:24] for b in BAD_ENTRIES])
def test_truncated_or_inconsistent_safetensors_is_a_value_error_naming_the_file(
        tmp_path, header, data, message):
    """Before: a truncated model or mask file gave `cannot reshape array of size 1334 into
    shape (32,48)` (no file named), an entry without data_offsets `KeyError: 'data_offsets'`,
    a non-object entry a TypeError traceback."""
    p = tmp_path / "x.safetensors"
    _with_header(p, header, data)
    for read in (st_io.tensor_info, st_io.load, st_io.read_metadata):
        with pytest.raises(ValueError) as e:
            read(p)
        assert str(p) in str(e.value) and message in str(e.value), str(e.value)


def test_load_of_a_truncated_file_is_a_value_error_with_the_package_too(tmp_path):
    """safetensors' own SafetensorError is no ValueError: the callers' `except ValueError`
    missed it (a traceback on machines with the package)."""
    p = tmp_path / "m.safetensors"
    save_mask(torch.ones(2, 2, 16), p, sink=128, recent=768, align=16, target_sparsity=0.0,
              model="tiny")
    p.write_bytes(p.read_bytes()[:-3])
    with pytest.raises(ValueError, match="truncated"):
        st_io.load(p)


@pytest.mark.parametrize("values,meta_align,message", [
    (2, "16", "holds values other than 0 and 1"),
    (1, "0", "metadata align must be a positive integer, got '0'"),
    (1, "x", "metadata align must be a positive integer, got 'x'"),
])
def test_load_mask_refuses_values_and_align_the_server_refuses(tmp_path, values, meta_align,
                                                               message):
    """Before: a value 2 scaled keys by 2 in leank_eval; align "0" passed (x % 0 is 0 in numpy
    with a warning); align "x" was a bare `invalid literal for int()`."""
    p = tmp_path / "m.safetensors"
    st_io.save({"leank.kept": np.full((2, 2, 16), values, np.uint8)}, p,
               {"format": "leank-mask/1", "align": meta_align})
    with pytest.raises(ValueError, match=message):
        load_mask(p)


def test_plots_are_written_atomically(tmp_path, monkeypatch):
    """plot-*.png were written by savefig straight to the output path (a partial PNG on a full
    disk or Ctrl-C), unlike every other output."""
    plots = pytest.importorskip("train.plots")  # needs matplotlib
    out = tmp_path / "plot-s50.png"
    out.write_bytes(b"earlier")
    alpha = torch.rand(2, 2, 16, generator=torch.Generator().manual_seed(0))
    fail_writes_halfway(monkeypatch, OSError(28, "No space left on device"))
    with pytest.raises(OSError):
        plots.plot_mask(alpha, binarize(alpha, 0.5, 16), out)
    assert out.read_bytes() == b"earlier" and os.listdir(tmp_path) == [out.name]


class _Planted:
    """Unpickling this runs code (it creates the file named)."""

    def __init__(self, path):
        self.path = str(path)

    def __reduce__(self):
        return (open, (self.path, "w"))


def test_import_leank_pth_runs_no_pickled_code(tmp_path):
    """A released mask is a tensor; a .pth carrying anything else is refused, not executed."""
    kept = _fake_release(tmp_path)
    planted = tmp_path / "planted"
    torch.save({"mask": kept, "extra": _Planted(planted)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth: not a tensor-only torch file"):
        import_leank(tmp_path / "bad.pth")
    assert not planted.exists()
