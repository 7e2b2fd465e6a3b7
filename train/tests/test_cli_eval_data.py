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
        heads = torch.zeros(shape[0] * shape[1])
        heads[torch.randperm(heads.numel(), generator=g)[: heads.numel() // 2]] = 1
        kept = heads.view(shape[:2])[..., None].expand(shape)
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
    st_io.save({"leank.kept": np.full((2, 2, 16), 2, np.uint8)}, d / "twos-s50.safetensors",
               {"format": "leank-mask/1", "align": "16"})
    raw = (d / "masks-s50.safetensors").read_bytes()
    (d / "cut-s50.safetensors").write_bytes(raw[:-5])


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
    # Before: tracebacks (TypeError of os.path, RuntimeError of torch, AttributeError after
    # the dense pass of the first task sample), or a silent replacement of the trained mask.
    ("fidelity=[5]", "fidelity[0]: must be a path, got 5"),
    ('tasks=["tasks.npz", null]', "tasks[1]: must be a path, got None"),
    ("device=foo", "device: must be a torch device"),
    ('extra_masks={"dense": "masks-s50.safetensors"}',
     "extra_masks.dense: the name of a built-in method"),
    ('extra_masks={"leank-s50": "masks-s50.safetensors"}',
     "extra_masks.leank-s50: the name of a built-in method"),
    ("leank_masks=twos-{tag}.safetensors", "holds values other than 0 and 1"),
    ("leank_masks=cut-{tag}.safetensors", "cut-s50.safetensors: truncated or not a safetensors"),
]


@pytest.mark.parametrize("override,message", BAD_EVAL, ids=[b[0] for b in BAD_EVAL])
def test_eval_bad_input_exits_2_naming_it(eval_dir, capsys, override, message):
    _files(eval_dir)
    with pytest.raises(SystemExit) as e:
        run_eval(eval_dir, override)
    assert e.value.code == 2
    one_line_error(capsys, "leank_eval", message)
    assert not (eval_dir / "out" / "eval.json").exists()


def test_eval_refuses_a_mask_of_another_sparsity(eval_dir, capsys):
    """Before: masks-s70.safetensors holding a 50% mask was evaluated and reported as
    leank-s70, next to magnitude-s70 and random-s70 baselines at other sparsities."""
    (eval_dir / "masks-s70.safetensors").write_bytes(
        (eval_dir / "masks-s50.safetensors").read_bytes())
    with pytest.raises(SystemExit) as e:
        run_eval(eval_dir, "sparsities=[0.7]")
    assert e.value.code == 2
    one_line_error(capsys, "leank_eval", "masks-s70.safetensors has K sparsity 0.5000, but "
                                         "sparsities asks for 0.7")


def test_eval_prints_progress(eval_dir, capsys, monkeypatch):
    """Before: nothing between the methods line and `fidelity done`, and nothing during the
    task samples (hours on a CPU without a time budget)."""
    monkeypatch.setattr(leank_eval, "PROGRESS_EVERY_S", 0.0)
    run_eval(eval_dir)
    out = capsys.readouterr().out
    for line in ("calibration texts 2/2", "fidelity texts 1/2", "fidelity texts 2/2",
                 "task samples 1/4 (next: random@", "task samples 4/4"):
        assert line in out, out
    monkeypatch.setattr(leank_eval, "PROGRESS_EVERY_S", 1e9)
    run_eval(eval_dir, "time_budget_s=1e-9")  # only each phase's last line, or the cut
    out = capsys.readouterr().out
    assert "time budget reached after 0/4 task samples" in out and "task samples 1/4" not in out


def test_eval_applies_torch_threads(eval_dir, monkeypatch):
    """torch_threads was read only by the --server path: the PyTorch evaluation ignored it."""
    got = []
    monkeypatch.setattr(leank_eval.torch, "set_num_threads", got.append)
    run_eval(eval_dir, "torch_threads=1")
    assert got == [1]


BAD_SERVER = [
    (["--server-bin", "/nonexistent/leank-server"],
     "--server-bin: /nonexistent/leank-server is not an executable file"),
    (["--server", "dense="], "--server: 'dense=': expected [NAME=]HOST:PORT"),
    (["--server-bin", "/bin/true", "--set", 'cells=[{"file": "tasks.npz"}]'],
     "cells[0].n: must be an integer >= 1, got None"),
    (["--server-bin", "/bin/true", "--set", 'cells=[{"file": "tasks.npz", "n": 1}]'],
     "cells[0].tasks: must be a non-empty list"),
    (["--server-bin", "/bin/true", "--set",
      'texts=[{"file": "text.npz", "n": 1, "prompt_len": 4, "gen": 4}]'],
     "texts[0].prompt_len: must be an integer >= 5, got 4"),
]


@pytest.mark.parametrize("args,message", BAD_SERVER, ids=[b[1][:30] for b in BAD_SERVER])
def test_eval_server_bad_input_exits_2_naming_it(eval_dir, capsys, args, message):
    """Before: FileNotFoundError of subprocess (a traceback), KeyError of select_samples."""
    with pytest.raises(SystemExit) as e:
        leank_eval.main(["--config", str(eval_dir / "eval.json"), "--root", str(eval_dir)]
                        + args)
    assert e.value.code == 2
    one_line_error(capsys, "leank_eval", message)


def test_eval_server_that_exits_is_one_line(eval_dir, capsys):
    """A server binary that exits at once (here /bin/false): one line naming it and its log,
    not a RuntimeError traceback."""
    pytest.importorskip("grpc")
    from train import eval_server as es
    try:
        es._client_module()
    except Exception:
        pytest.skip("the gRPC client stubs cannot be generated here (protoc)")
    with pytest.raises(SystemExit) as e:
        leank_eval.main(["--config", str(eval_dir / "eval.json"), "--root", str(eval_dir),
                         "--server-bin", "/bin/false", "--set", 'methods=["dense"]'])
    assert e.value.code == 2
    one_line_error(capsys, "leank_eval", "exited with 1 (its output: ")


def test_eval_server_rpc_failure_is_one_line(eval_dir, capsys, monkeypatch):
    """A server that goes away mid-run raises grpc's RpcError, whose text spans several lines:
    printed as one `server: CODE: details` line."""
    from train import eval_server as es

    class FakeRpcError(Exception):
        __module__ = "grpc._channel"

        def code(self):
            return type("Code", (), {"name": "UNAVAILABLE"})()

        def details(self):
            return "Socket closed"

        def __str__(self):
            return "<_InactiveRpcError of RPC that terminated with:\n\tstatus = ...>"

    def gone(*a, **k):
        raise FakeRpcError()

    monkeypatch.setattr(es, "_client_module", lambda: None)
    monkeypatch.setattr(es, "run", gone)
    with pytest.raises(SystemExit) as e:
        leank_eval.main(["--config", str(eval_dir / "eval.json"), "--root", str(eval_dir),
                         "--server-bin", "/bin/true"])
    assert e.value.code == 2
    one_line_error(capsys, "leank_eval", "server: UNAVAILABLE: Socket closed")


def test_eval_unreadable_config(eval_dir, capsys):
    (eval_dir / "bad.json").write_text("{")
    for name in ("bad.json", "missing.json"):
        with pytest.raises(SystemExit) as e:
            leank_eval.main(["--config", str(eval_dir / name)])
        assert e.value.code == 2
        one_line_error(capsys, "leank_eval", f"config {eval_dir / name}: cannot read")


@pytest.mark.parametrize("how", ["read-only folder", "name too long"])
def test_eval_unwritable_out_is_refused_before_the_work(eval_dir, capsys, monkeypatch, how):
    """An output that cannot be created is refused before the evaluation starts: in a folder
    where files cannot be created (CI runs as root, who writes into a chmod 500 folder, so
    there /proc/self, where root cannot create files either), or a file name longer than
    NAME_MAX (stat raised ENAMETOOLONG: exit 1 and no "cannot write")."""
    ro = eval_dir / "ro"
    ro.mkdir()
    ro.chmod(0o500)
    try:
        if how == "read-only folder":
            folder = ro if not _writable(ro) else Path("/proc/self")
            if _writable(folder):
                pytest.skip("no folder here that this user cannot write")
            out = str(folder / "eval.json")
        else:
            ro.chmod(0o700)
            out = "ro/" + "e" * 300 + ".json"
        monkeypatch.setattr(leank_eval, "channel_scores", _never)
        with pytest.raises(SystemExit) as e:
            run_eval(eval_dir, f"out={out}")
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


def test_eval_results_are_replaced_atomically(eval_dir, monkeypatch, capsys):
    """A failed write (disk full, Ctrl-C in the write) leaves the earlier file, not half of the
    new one; the full disk is one line and exit 1 (it was an OSError traceback)."""
    out = eval_dir / "out" / "eval.json"
    out.parent.mkdir()
    out.write_text("earlier results")
    fail_writes_halfway(monkeypatch, OSError(28, "No space left on device"))
    with pytest.raises(SystemExit) as e:
        run_eval(eval_dir)
    assert e.value.code == 1
    one_line_error(capsys, "leank_eval", "No space left on device")
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


def test_data_haystack_without_text_is_one_line(data_dir, capsys, monkeypatch):
    """Before: `RuntimeError: haystack 'licenses' has no text on this machine` with a traceback
    (a machine without /usr/share/common-licenses)."""
    monkeypatch.setattr(tdata, "haystack_paragraphs", lambda name: [])
    with pytest.raises(SystemExit) as e:
        run_data(data_dir, "--haystack", "licenses")
    assert e.value.code == 2
    one_line_error(capsys, "train.data", "--haystack: haystack 'licenses' has no text on this "
                                         "machine")
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
