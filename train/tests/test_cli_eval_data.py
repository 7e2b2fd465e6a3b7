"""leank_eval's and train.data's command lines: a bad config, model folder, mask, data file,
option or output path exits 2 with one line naming it (no traceback) before any work; Ctrl-C
exits 130 with one line; outputs are written to NAME.tmp and renamed (an interrupted run
leaves the earlier output intact and no partial file)."""

import json
from pathlib import Path

import numpy as np
import pytest
import torch

from conftest import (fail_writes_halfway, one_line_error, random_samples, run_config_cli,
                      tiny_config)
from train import data as tdata
from train import leank_eval, st_io
from train.data import save_samples
from train.masks import save_mask
from train.model import LlamaModel


def no_escape(run, *args):
    """Runs a CLI whose Ctrl-C is simulated; a KeyboardInterrupt escaping it would otherwise
    stop the whole pytest session."""
    try:
        run(*args)
    except KeyboardInterrupt:
        pytest.fail("KeyboardInterrupt escaped the CLI (traceback, exit 1)")


# ---- leank_eval -------------------------------------------------------------------------------

def write_mask(path, shape=(2, 2, 16), align=16, seed=0):
    g = torch.Generator().manual_seed(seed)
    kept = torch.zeros(*shape)
    kept[..., : shape[-1] // 2] = 1
    if shape[-1] == align:  # a head keeps 0 or all: half the heads at random
        kept = (torch.rand(shape[:2], generator=g) < 0.5).float()[..., None].expand(shape)
    save_mask(kept, path, sink=128, recent=768, align=align, target_sparsity=0.5, model="tiny")


@pytest.fixture
def eval_dir(tmp_path):
    LlamaModel.random(tiny_config(max_position_embeddings=512), seed=3, std=0.15).save_hf(
        tmp_path / "model")
    save_samples(random_samples(4), tmp_path / "tasks.npz")
    save_samples(random_samples(2, seed=1), tmp_path / "text.npz")
    write_mask(tmp_path / "masks-s50.safetensors")
    cfg = {"model": "model", "device": "cpu", "middle": {"sink": 8, "recent": 16, "block": 4},
           "sparsities": [0.5], "align": 16, "leank_masks": "masks-{tag}.safetensors",
           "calib": "text.npz", "fidelity": ["text.npz"], "tasks": ["tasks.npz"],
           "out": "out/eval.json"}
    (tmp_path / "eval.json").write_text(json.dumps(cfg))
    return tmp_path


def run_eval(d, *sets):
    run_config_cli(leank_eval.main, d / "eval.json", d, *sets)


def test_eval_runs(eval_dir):
    run_eval(eval_dir)
    res = json.loads((eval_dir / "out" / "eval.json").read_text())
    assert set(res["methods"]) == {"dense", "leank-s50", "magnitude-s50", "random-s50"}
    assert not list((eval_dir / "out").glob("*.tmp"))


def _files(d):
    (d / "empty").mkdir()
    gpt2 = d / "gpt2"
    gpt2.mkdir()
    c = json.loads((d / "model" / "config.json").read_text())
    (gpt2 / "config.json").write_text(json.dumps({**c, "model_type": "gpt2"}))
    (d / "junk.npz").write_bytes(b"not a sample file")
    (d / "junk-s50.safetensors").write_bytes(b"not safetensors")
    (d / "short-s50.safetensors").write_bytes(b"\x01")
    write_mask(d / "wrong-s50.safetensors", shape=(3, 2, 16))
    st_io.save({"leank.kept": np.ones((2, 2, 16), np.uint8)[..., :16] * (np.arange(16) < 5)},
               d / "unaligned-s50.safetensors", {"format": "leank-mask/1", "align": "16"})
    st_io.save({"x": np.zeros(3, np.float32)}, d / "other-s50.safetensors")
    np.savez(d / "none.npz", tokens=np.zeros(0, np.uint16), offsets=np.zeros(1, np.int64),
             prompt_len=np.zeros(0, np.int64), tasks=np.zeros(0, str), answers=np.zeros(0, str))


BAD_EVAL = [
    ("model=missing", "model folder"),
    ("model=empty", "empty: no config.json"),
    ("model=gpt2", "model_type 'gpt2' is not supported"),
    ('tasks=["missing.npz"]', "tasks: "),
    ('tasks=["junk.npz"]', "is not a sample file of train.data"),
    ('tasks=["none.npz"]', "tasks: no samples"),
    ("calib=junk.npz", "calib: "),
    ('fidelity=["missing.npz"]', "fidelity: "),
    ("middle.sink=100", "no query has middle keys"),
    ("leank_masks=missing-{tag}.safetensors", "missing-s50.safetensors does not exist"),
    ("leank_masks=junk-{tag}.safetensors", "not a safetensors file"),
    ("leank_masks=short-{tag}.safetensors", "not a safetensors file"),
    ("leank_masks=other-{tag}.safetensors", "metadata format is None"),
    ("leank_masks=wrong-{tag}.safetensors", "has shape [3, 2, 16], the model needs [2, 2, 16]"),
    ("leank_masks=unaligned-{tag}.safetensors", "not a multiple of align=16"),
    ("leank_masks=masks.safetensors", "leank_masks: must contain {tag}"),
    ('extra_masks={"x": "wrong-s50.safetensors"}', "extra_masks.x: "),
    ("sparsities=[-0.5]", "sparsities: must be a number in [0, 1], got -0.5"),
    ("sparsities=[1.5]", "sparsities: must be a number in [0, 1], got 1.5"),
    ("sparsities=[]", "sparsities: must be a non-empty list"),
    ("align=0", "align: must be 16 or 32"),
    ("align=32", "align: 32 does not divide the model's head_dim 16"),
    ("middle.block=0", "middle.block: must be an integer >= 1, got 0"),
    ("middle.sink=-1", "middle.sink: must be an integer >= 0, got -1"),
    ('middle={"sink": 8}', "middle.recent: missing"),
    ("time_budget_s=0", "time_budget_s: must be a finite number > 0, got 0"),
    ("fidelity_share=2", "fidelity_share: must be a number in [0, 1], got 2"),
    ("seed=-1", "seed: must be an integer >= 0, got -1"),
    ("dtype=float8", "dtype: must be one of"),
    ("tasks=tasks.npz", "tasks: must be a list"),
    ("foo=1", "unknown config keys ['foo']"),
    ("out=eval.json/x.json", "eval.json is not a folder"),
    ("out=model", "is a folder, expected a file name"),
    ("nokv", "--set 'nokv': expected KEY=VALUE"),
]


@pytest.mark.parametrize("override,message", BAD_EVAL, ids=[b[0] for b in BAD_EVAL])
def test_eval_bad_input_exits_2_naming_it(eval_dir, capsys, override, message):
    _files(eval_dir)
    with pytest.raises(SystemExit) as e:
        run_eval(eval_dir, override)
    assert e.value.code == 2
    one_line_error(capsys, "leank_eval", message)
    assert not (eval_dir / "out" / "eval.json").exists()


def test_eval_unreadable_config(eval_dir, capsys):
    (eval_dir / "bad.json").write_text("{")
    for name in ("bad.json", "missing.json"):
        with pytest.raises(SystemExit) as e:
            leank_eval.main(["--config", str(eval_dir / name)])
        assert e.value.code == 2
        one_line_error(capsys, "leank_eval", f"config {eval_dir / name}: cannot read")


def test_eval_unwritable_out_is_refused_before_the_work(eval_dir, capsys, monkeypatch):
    ro = eval_dir / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if _writable(ro):
            pytest.skip("running as a user who can write a read-only folder (root)")
        monkeypatch.setattr(leank_eval, "channel_scores", _never)
        with pytest.raises(SystemExit) as e:
            run_eval(eval_dir, "out=ro/eval.json")
        assert e.value.code == 2
        one_line_error(capsys, "leank_eval", "out: cannot write")
    finally:
        ro.chmod(0o700)


def _writable(folder: Path) -> bool:
    try:
        (folder / "probe").write_bytes(b"")
        (folder / "probe").unlink()
        return True
    except OSError:
        return False


def _never(*a, **k):
    raise AssertionError("the evaluation started before the output path was checked")


def test_eval_ctrl_c_exits_130_and_keeps_the_earlier_results(eval_dir, capsys, monkeypatch):
    out = eval_dir / "out" / "eval.json"
    out.parent.mkdir()
    out.write_text("earlier results")
    calls = [0]
    hidden = leank_eval.Evaluator.hidden

    def interrupt_later(self, ids, kept):
        calls[0] += 1
        if calls[0] == 5:
            raise KeyboardInterrupt
        return hidden(self, ids, kept)

    monkeypatch.setattr(leank_eval.Evaluator, "hidden", interrupt_later)
    with pytest.raises(SystemExit) as e:
        no_escape(run_eval, eval_dir)
    assert e.value.code == 130 and calls[0] == 5
    err = capsys.readouterr().err
    assert err.strip() == "leank_eval: interrupted; no results written", err
    assert out.read_text() == "earlier results"
    assert not list(out.parent.glob("*.tmp"))


def test_eval_results_are_replaced_atomically(eval_dir, monkeypatch):
    """A failed write (disk full, Ctrl-C in the write) leaves the earlier file, not half of the
    new one."""
    out = eval_dir / "out" / "eval.json"
    out.parent.mkdir()
    out.write_text("earlier results")
    fail_writes_halfway(monkeypatch, OSError(28, "No space left on device"))
    with pytest.raises(OSError):
        run_eval(eval_dir)
    assert out.read_text() == "earlier results"
    assert sorted(p.name for p in out.parent.iterdir()) == ["eval.json"]


# ---- train.data -------------------------------------------------------------------------------

@pytest.fixture
def data_dir(tmp_path, monkeypatch):
    """A tokenizer folder with a fake encoder (bytes % 101), so no `tokenizers` is needed."""
    (tmp_path / "tok").mkdir()
    (tmp_path / "tok" / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(tdata, "hf_encoder",
                        lambda d: (lambda s: [b % 101 for b in s.encode()][:40]))
    return tmp_path


def run_data(d, *args):
    base = {"--tokenizer": str(d / "tok"), "--out": str(d / "d.npz"), "--n": "3",
            "--min-len": "400", "--max-len": "500", "--haystack": "essay"}
    extra = dict(zip(args[0::2], args[1::2]))
    tdata.main([x for kv in {**base, **extra}.items() for x in kv])


def test_data_runs(data_dir):
    run_data(data_dir)
    got = tdata.load_samples(data_dir / "d.npz")
    assert len(got) == 3 and all(400 <= len(s.prompt) + len(s.answer) <= 500 for s in got)


BAD_DATA = [
    (("--tokenizer", "missing"), "--tokenizer: missing/tokenizer.json does not exist"),
    (("--n", "-1"), "--n: must be an integer >= 1, got -1"),
    (("--n", "0"), "--n: must be an integer >= 1, got 0"),
    (("--seed", "-2"), "--seed: must be an integer >= 0, got -2"),
    (("--min-len", "0"), "--min-len: must be an integer >= 1, got 0"),
    (("--max-len", "10"), "--max-len: must be an integer >= 400, got 10"),
    (("--min-len", "20", "--max-len", "20"), "--min-len: length 20 too short for task"),
    (("--tasks", "number,foo"), "--tasks: unknown task 'foo'"),
    (("--out", "tok/tokenizer.json/x.npz"), "--out: cannot write"),
    (("--out", "tok"), "--out: "),
]


@pytest.mark.parametrize("args,message", BAD_DATA, ids=[" ".join(b[0]) for b in BAD_DATA])
def test_data_bad_input_exits_2_naming_it(data_dir, capsys, monkeypatch, args, message):
    monkeypatch.chdir(data_dir)
    with pytest.raises(SystemExit) as e:
        run_data(data_dir, *args)
    assert e.value.code == 2
    one_line_error(capsys, "train.data", message)
    assert not (data_dir / "d.npz").exists()


def test_data_ctrl_c_exits_130_and_keeps_the_earlier_file(data_dir, capsys, monkeypatch):
    (data_dir / "d.npz").write_bytes(b"earlier")

    def interrupted(*a, **k):
        raise KeyboardInterrupt

    monkeypatch.setattr(tdata.Generator, "dataset", interrupted)
    with pytest.raises(SystemExit) as e:
        no_escape(run_data, data_dir)
    assert e.value.code == 130
    assert capsys.readouterr().err.strip() == "train.data: interrupted; nothing written"
    assert (data_dir / "d.npz").read_bytes() == b"earlier"


def test_save_samples_is_atomic(tmp_path, monkeypatch):
    out = tmp_path / "d.npz.xz"
    out.write_bytes(b"earlier")
    fail_writes_halfway(monkeypatch, KeyboardInterrupt())
    with pytest.raises(KeyboardInterrupt):
        save_samples(random_samples(2), out)
    assert out.read_bytes() == b"earlier"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.npz.xz"]
