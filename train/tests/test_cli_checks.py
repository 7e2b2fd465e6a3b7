"""leank_train's input checks: every bad config, model folder or data set exits 2 with one
message naming the problem (no traceback), before any training, and the masks it does write
are within what the server's loader accepts (cache/mask_io.cc)."""

import json

import numpy as np
import pytest

from conftest import one_line_error, random_samples, run_config_cli, tiny_config
from train import leank_train
from train.data import Sample, save_samples
from train.masks import load_mask
from train.model import LlamaModel


@pytest.fixture
def setup_dir(tmp_path):
    LlamaModel.random(tiny_config(max_position_embeddings=512), seed=3, std=0.15).save_hf(
        tmp_path / "model")
    save_samples(random_samples(4), tmp_path / "train.npz")
    save_samples(random_samples(2, seed=1), tmp_path / "val.npz")
    cfg = {"model": "model", "out_dir": "out", "device": "cpu",
           "data": {"file": "train.npz", "val": "val.npz"},
           "middle": {"sink": 8, "recent": 16, "block": 4},
           "stage1": {"steps": 2, "lr": 0.05, "reg": [0.01], "log_every": 1},
           "stage2": {"steps": 2, "targets": [0.5], "align": 16, "log_every": 1},
           "export": {"sink": 128, "recent": 768, "model": "tiny"}}
    (tmp_path / "cfg.json").write_text(json.dumps(cfg))
    return tmp_path


def run_cli(d, *sets):
    run_config_cli(leank_train.main, d / "cfg.json", d, *sets)


def edit_model_config(d, **kw):
    p = d / "model" / "config.json"
    c = json.loads(p.read_text())
    c.update(kw)
    p.write_text(json.dumps(c))


BAD_SETS = [
    ("stage2.targets=[-0.1]", "stage2.targets: must be a number in [0, 1], got -0.1"),
    ("stage2.targets=[1.5]", "stage2.targets: must be a number in [0, 1], got 1.5"),
    ("stage2.targets=[]", "stage2.targets: must be a non-empty list"),
    ("stage2.targets=[0.5,0.501]", "give two masks the same file name (masks-s50"),
    ("stage2.align=8", "stage2.align: must be 16 or 32"),
    ("stage2.align=24", "stage2.align: must be 16 or 32"),
    ("stage2.align=0", "stage2.align: must be 16 or 32"),
    ("stage2.align=32", "stage2.align: 32 does not divide the model's head_dim 16"),
    ("stage1.steps=0", "stage1.steps: must be an integer >= 1, got 0"),
    ("stage2.steps=-3", "stage2.steps: must be an integer >= 1, got -3"),
    ("stage1.lr=-1", "stage1.lr: must be a finite number > 0, got -1"),
    ("stage1.lr=0", "stage1.lr: must be a finite number > 0, got 0"),
    ("stage1.reg=[-1]", "stage1.reg: must be a finite number >= 0, got -1"),
    ("stage1.reg=[]", "stage1.reg: the list is empty"),
    ("stage2.reg=[0.1]", "stage2.reg: must be one number"),
    ("stage2.zero_heads=keep", "stage2.zero_heads: must be one of drop, logit0, got 'keep'"),
    ("stage2.zero_heads=0", "stage2.zero_heads: must be one of drop, logit0, got 0"),
    ('stage2.zero_heads=["drop"]', "stage2.zero_heads: must be one of drop, logit0, got ['drop']"),
    ("stage1.grad_accum=0", "stage1.grad_accum: must be an integer >= 1, got 0"),
    ("stage1.log_every=0", "stage1.log_every: must be an integer >= 1, got 0"),
    ("stage1.ckpt_every=0", "stage1.ckpt_every: must be an integer >= 1, got 0"),
    ("stage1.warmup_frac=2", "stage1.warmup_frac: must be a number in [0, 1], got 2"),
    ("stage1.steps=2.5", "stage1.steps: must be an integer >= 1, got 2.5"),
    ("stage1.foo=1", "StageConfig: unknown config keys ['foo']"),
    ("foo=1", "unknown config keys ['foo']"),
    ("middle.sink=-1", "middle.sink: must be an integer >= 0, got -1"),
    ("middle.block=0", "middle.block: must be an integer >= 1, got 0"),
    ("export.sink=0", "export.sink: must be an integer in [1, 2147483647], got 0"),
    ("export.recent=-5", "export.recent: must be an integer in [1, 2147483647], got -5"),
    # Before: accepted, and the mask written with it fails leank-server --masks (an int).
    ("export.recent=4294967296",
     "export.recent: must be an integer in [1, 2147483647], got 4294967296"),
    ("dtype=float8", "dtype: must be one of float32, float16, bfloat16"),
    ("model=missing", "model folder"),
    ("data.file=missing.npz", "data.file: "),
    ("data.val=cfg.json", "data.val: "),
    ("stage1", "--set 'stage1': expected KEY=VALUE"),
    # Before: tracebacks (RuntimeError of torch, TypeError of os.path, ValueError of dict()).
    ("device=foo", "device: must be a torch device such as \"cpu\""),
    ("device=5", "device: must be a torch device such as \"cpu\", \"cuda\" or \"cuda:0\", got 5"),
    ("data.file=5", "data.file: must be a path, got 5"),
    ("data.val=[]", "data.val: must be a path, got []"),
    ("stage1=5", "stage1: must be an object, got 5"),
    ('stage2="x"', "stage2: must be an object, got 'x'"),
    ("export=5", "export: must be an object, got 5"),
    ('data={"generate": {}}', "data.generate.n: missing"),
    ('data={"generate": {"n": 2, "min_len": 100, "max_len": 120, "tasks": ["foo"], '
     '"haystack": "essay"}}', "data.generate.tasks: must be a non-empty list of uuid"),
    ('data={"generate": {"n": 2, "min_len": 100, "max_len": 90, "tasks": ["number"], '
     '"haystack": "essay"}}', "data.generate.max_len: must be an integer >= 100, got 90"),
    ('data={"generate": {"n": 2, "min_len": 100, "max_len": 120, "tasks": ["number"], '
     '"haystack": "web"}}', "data.generate.haystack: must be one of pydoc-train"),
    ('data={"generate": {"n": 2, "min_len": 100, "max_len": 120, "tasks": ["number"], '
     '"haystack": "essay"}}', "model/tokenizer.json does not exist"),
    # Before: trained for hours on a zero loss (no answer query sees a middle key).
    ("middle.recent=100", "no answer query of any sample has middle keys: that needs >= 112 "
                          "tokens (sink + recent + block), the longest sample has"),
]


@pytest.mark.parametrize("override,message", BAD_SETS, ids=[b[0] for b in BAD_SETS])
def test_bad_config_exits_2_naming_it(setup_dir, capsys, override, message):
    with pytest.raises(SystemExit) as e:
        run_cli(setup_dir, override)
    assert e.value.code == 2
    one_line_error(capsys, "leank_train", message)
    assert not (setup_dir / "out" / "alpha_stage1.safetensors").exists()


BAD_MODELS = [
    (dict(model_type="gpt2"), "model_type 'gpt2' is not supported"),
    (dict(rope_scaling={"rope_type": "yarn", "factor": 4.0}),
     "rope_scaling type 'yarn' is not supported (supported: default, linear, llama3)"),
    (dict(rope_scaling={"rope_type": "linear"}), "rope_scaling.factor: must be"),
    (dict(head_dim=15), "head_dim 15 must be even"),
    (dict(num_key_value_heads=3), "num_key_value_heads (3) must divide num_attention_heads"),
    (dict(hidden_act="gelu"), "hidden_act 'gelu' is not supported"),
    (dict(mlp_bias=True), "mlp_bias is not supported"),
    (dict(vocab_size=None), "vocab_size: must be an integer >= 1"),
    # The samples are 60-90 tokens: longer than these limits.
    (dict(max_position_embeddings=64), "more than the model's max_position_embeddings 64"),
    (dict(model_type="mistral", sliding_window=32), "more than the model's sliding_window 32"),
    (dict(vocab_size=50), "outside the model's vocabulary [0, 50)"),
]


@pytest.mark.parametrize("edit,message", BAD_MODELS, ids=[m[1][:30] for m in BAD_MODELS])
def test_bad_model_folder_exits_2_naming_it(setup_dir, capsys, edit, message):
    if "vocab_size" in edit and edit["vocab_size"] == 50:
        # Shrink the weights too, so only the data's token ids are wrong.
        c = tiny_config(vocab_size=50, max_position_embeddings=512)
        LlamaModel.random(c, seed=3, std=0.15).save_hf(setup_dir / "model")
    else:
        edit_model_config(setup_dir, **edit)
    with pytest.raises(SystemExit) as e:
        run_cli(setup_dir)
    err = capsys.readouterr().err
    assert e.value.code == 2 and message in err and "Traceback" not in err, err


def test_empty_or_broken_model_folder(setup_dir, capsys):
    (setup_dir / "empty").mkdir()
    (setup_dir / "noweights").mkdir()
    (setup_dir / "noweights" / "config.json").write_text(
        (setup_dir / "model" / "config.json").read_text())
    (setup_dir / "badjson").mkdir()
    (setup_dir / "badjson" / "config.json").write_text("{")
    for folder, message in (("empty", "no config.json"), ("noweights", "no *.safetensors"),
                            ("badjson", "cannot read as JSON")):
        with pytest.raises(SystemExit) as e:
            run_cli(setup_dir, f"model={folder}")
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err, err


def test_bad_samples_and_out_dir(setup_dir, capsys):
    save_samples([Sample([1], [2], "t", "")], setup_dir / "short.npz")
    np.savez(setup_dir / "none.npz", tokens=np.zeros(0, np.uint16), offsets=np.zeros(1, np.int64),
             prompt_len=np.zeros(0, np.int64), tasks=np.zeros(0, str), answers=np.zeros(0, str))
    cases = (("data.file=short.npz", "needs >= 2 prompt tokens and >= 1 answer token"),
             ("data.file=none.npz", "data: no samples"),
             ("out_dir=cfg.json/out", "out_dir: cannot write"))
    for override, message in cases:
        with pytest.raises(SystemExit) as e:
            run_cli(setup_dir, override)
        err = capsys.readouterr().err
        assert e.value.code == 2 and message in err and "Traceback" not in err, err


@pytest.mark.parametrize("align", [16, 32])
def test_written_masks_meet_the_server_loader(setup_dir, align):
    """What cache/mask_io.cc checks: format, uint8 [L, H, D], align 16/32 dividing head_dim and
    every head's count, sink/recent > 0, target_sparsity in [0, 1]."""
    LlamaModel.random(tiny_config(head_dim=32, hidden_size=64, max_position_embeddings=512),
                      seed=3, std=0.15).save_hf(setup_dir / "model")
    run_cli(setup_dir, f"stage2.align={align}", "stage2.targets=[0, 0.5, 1]")
    for tag, t in (("s00", 0.0), ("s50", 0.5), ("s100", 1.0)):
        kept, meta = load_mask(setup_dir / "out" / f"masks-{tag}.safetensors")
        assert kept.shape == (2, 2, 32)
        assert meta["align"] == str(align) and not (kept.sum(-1) % align).any()
        assert int(meta["sink"]) == 128 and int(meta["recent"]) == 768
        assert 0.0 <= float(meta["target_sparsity"]) <= 1.0
        assert abs(1.0 - kept.mean() - t) <= align / (2 * kept.size)


def test_zero_heads_logit0_trains_and_exports(setup_dir):
    """stage2.zero_heads=logit0 reaches the trainer (stage 2 trains the 0-kept heads: other
    factors than the default "drop") and the masks are written as usual."""
    from train import st_io
    alpha2 = {}
    for mode in ("drop", "logit0"):
        run_cli(setup_dir, f"stage2.zero_heads={mode}", f"out_dir=out-{mode}",
                "stage2.targets=[0.75]")
        kept, meta = load_mask(setup_dir / f"out-{mode}" / "masks-s75.safetensors")
        assert meta["target_sparsity"] == "0.75" and int(kept.sum()) == kept.size // 4
        alpha2[mode] = st_io.load(setup_dir / f"out-{mode}" / "alpha_stage2.safetensors")["alpha"]
    assert not np.array_equal(alpha2["drop"], alpha2["logit0"])


def test_out_dir_of_another_run_is_refused_unless_overwrite(setup_dir, capsys):
    """A finished stage of another config used to be reused silently (stage-2 factors of
    target 0.5 exported as the mask of 0.6); now the same config resumes, another is refused,
    and --overwrite starts afresh."""
    out = setup_dir / "out"
    run_cli(setup_dir)
    first = (out / "masks-s50.safetensors").read_bytes()
    for override, message in (("stage2.targets=[0.6]", "stage2.targets: [0.5] -> [0.6]"),
                              ("stage1.steps=3", "stage1.steps: 2 -> 3")):
        with pytest.raises(SystemExit) as e:
            run_cli(setup_dir, override)
        err = capsys.readouterr().err
        assert e.value.code == 2 and "holds a run of another config" in err and message in err
        assert "--overwrite" in err and "Traceback" not in err
    assert (out / "masks-s50.safetensors").read_bytes() == first
    run_cli(setup_dir, "stage1.log_every=5")  # logging does not change the run: resumes
    assert "stage1: finished earlier" in capsys.readouterr().out
    leank_train.main(["--config", str(setup_dir / "cfg.json"), "--root", str(setup_dir),
                      "--set", "stage2.targets=[0.75]", "--overwrite"])
    assert sorted(p.name for p in out.glob("masks-*")) == ["masks-s75.safetensors"]
    log = [json.loads(l) for l in (out / "train_log.jsonl").read_text().splitlines()]
    assert [r["event"] for r in log if "event" in r].count("start") == 1


def test_out_dir_with_outputs_but_no_log_is_refused(setup_dir, capsys):
    (setup_dir / "out").mkdir()
    (setup_dir / "out" / "masks-s50.safetensors").write_bytes(b"x")
    with pytest.raises(SystemExit) as e:
        run_cli(setup_dir)
    err = capsys.readouterr().err
    assert e.value.code == 2 and "no config to resume from" in err, err
    assert (setup_dir / "out" / "masks-s50.safetensors").read_bytes() == b"x"


def test_pyflakes_is_clean_in_train():
    """pyflakes (Debian: python3-pyflakes) reports nothing in train/ and its tests: no undefined
    name (it flagged best_v in the stage-1 selection, which only worked because `r == 0 or`
    short-circuits), no unused import or variable."""
    api = pytest.importorskip("pyflakes.api")
    reporter = pytest.importorskip("pyflakes.reporter")
    import io
    from pathlib import Path
    out = io.StringIO()
    root = Path(leank_train.__file__).parent
    for f in sorted(root.glob("*.py")) + sorted((root / "tests").glob("*.py")):
        api.checkPath(str(f), reporter.Reporter(out, out))
    assert not out.getvalue(), out.getvalue()


def test_cuda_device_the_machine_does_not_have(setup_dir, capsys):
    import torch
    n = torch.cuda.device_count() if torch.cuda.is_available() else 0
    with pytest.raises(SystemExit) as e:
        run_cli(setup_dir, f"device=cuda:{n}")
    assert e.value.code == 2
    one_line_error(capsys, "leank_train", f"device: 'cuda:{n}' but torch sees")


def _truncate_weights(folder):
    f = folder / "model.safetensors"
    f.write_bytes(f.read_bytes()[:-1000])


def _drop_offsets(folder):
    f = folder / "model.safetensors"
    raw = f.read_bytes()
    n = int.from_bytes(raw[:8], "little")
    header = json.loads(raw[8:8 + n])
    del header["lm_head.weight"]["data_offsets"]
    blob = json.dumps(header).encode()
    blob += b" " * ((8 - len(blob) % 8) % 8)
    f.write_bytes(len(blob).to_bytes(8, "little") + blob + raw[8 + n:])


@pytest.mark.parametrize("damage,message", [
    (_truncate_weights, "model.safetensors: truncated or not a safetensors file"),
    (_drop_offsets, "model.safetensors: not a safetensors file (tensor 'lm_head.weight': "
                    "data_offsets None"),
])
def test_damaged_weights_are_named(setup_dir, capsys, damage, message):
    """Before: `cannot reshape array of size 1334 into shape (32,48)` / `error: data_offsets`,
    naming neither the file nor the tensor."""
    damage(setup_dir / "model")
    with pytest.raises(SystemExit) as e:
        run_cli(setup_dir)
    assert e.value.code == 2
    one_line_error(capsys, "leank_train", message)


def _cut(path):
    path.write_bytes(path.read_bytes()[:100])


def test_damaged_or_mismatched_resume_files_are_named(setup_dir, capsys):
    """Resuming read alpha_stage1.safetensors / stage2.ckpt.pt without a check: a damaged file
    (a disk error, a copy cut short) was a traceback, and one of another model's shape (the
    model folder replaced under the same path) a shape error deep in training."""
    out = setup_dir / "out"
    run_cli(setup_dir)
    capsys.readouterr()
    a1 = (out / "alpha_stage1.safetensors").read_bytes()

    def again(message):
        with pytest.raises(SystemExit) as e:
            run_cli(setup_dir)
        assert e.value.code == 2
        one_line_error(capsys, "leank_train", message)
        assert not (out / "masks-s50.safetensors").exists()

    for f in ("alpha_stage2.safetensors", "masks-s50.safetensors"):
        (out / f).unlink()
    _cut(out / "alpha_stage1.safetensors")
    again(f"out_dir: cannot resume from {out / 'alpha_stage1.safetensors'}: not a safetensors "
          "file")
    (out / "alpha_stage1.safetensors").write_bytes(a1)
    (out / "stage2.ckpt.pt").write_bytes(b"garbage")
    again(f"cannot resume from {out / 'stage2.ckpt.pt'}: not a readable checkpoint")
    (out / "stage2.ckpt.pt").unlink()
    LlamaModel.random(tiny_config(num_hidden_layers=3, max_position_embeddings=512), seed=3,
                      std=0.15).save_hf(setup_dir / "model")
    again("alpha_stage1.safetensors: factors of shape [1, 2, 2, 16], this run needs "
          "[1, 3, 2, 16]; delete it to redo that stage, or rerun with --overwrite")


def test_odd_lines_in_an_earlier_log_are_skipped(setup_dir, capsys):
    """Before: a log line that is JSON but no object (`5`) was an AttributeError, a byte that
    is not UTF-8 a UnicodeDecodeError (tracebacks)."""
    out = setup_dir / "out"
    out.mkdir()
    (out / "train_log.jsonl").write_bytes(b"5\n\xff\xfe\n")
    with pytest.raises(SystemExit) as e:
        run_cli(setup_dir)
    assert e.value.code == 2
    one_line_error(capsys, "leank_train", "no config to resume from")


def test_full_disk_at_export_is_one_line_and_resumes(setup_dir, capsys, monkeypatch):
    """A full disk while a mask is written was an OSError traceback; now one line and exit 1,
    no partial mask, and the rerun resumes from the finished stages."""
    from train import st_io
    write = st_io._write

    def full_for_masks(tensors, path, metadata):
        if path.name.startswith("masks-"):
            path.write_bytes(b"\x10\x00")
            raise OSError(28, "No space left on device")
        write(tensors, path, metadata)

    monkeypatch.setattr(st_io, "_write", full_for_masks)
    with pytest.raises(SystemExit) as e:
        run_cli(setup_dir)
    assert e.value.code == 1
    err = capsys.readouterr().err  # the progress lines of both stages, then the error
    last = err.strip().splitlines()[-1]
    assert last.startswith("leank_train: error: [Errno 28] No space left on device; the files "
                           "already in out_dir are complete") and "Traceback" not in err, err
    out = setup_dir / "out"
    assert not list(out.glob("masks-*")) and (out / "alpha_stage2.safetensors").exists()
    monkeypatch.undo()
    run_cli(setup_dir)
    assert "stage2: finished earlier" in capsys.readouterr().out
    assert load_mask(out / "masks-s50.safetensors")[0].shape == (2, 2, 16)


def test_data_generate_trains_and_its_tokenizer_is_checked(setup_dir, capsys, monkeypatch):
    """`data.generate` makes the samples at start (train.data's generator, checked like its
    options); before, a missing tokenizer / `tokenizers` package or a haystack without text
    was a traceback."""
    from train import data as tdata

    def fake_encoder(model_dir):  # no `tokenizers` needed: bytes % 101, at most 40 tokens
        return lambda s: [b % 101 for b in s.encode()][:40]

    gen = ('data={"generate": {"n": 3, "min_len": 300, "max_len": 400, "tasks": ["number"], '
           '"haystack": "essay"}, "val": "val.npz"}')
    with pytest.raises(SystemExit) as e:
        run_cli(setup_dir, gen)
    assert e.value.code == 2
    one_line_error(capsys, "leank_train", "data.generate (model): ")
    (setup_dir / "model" / "tokenizer.json").write_text("{}")
    monkeypatch.setattr(tdata, "hf_encoder", fake_encoder)
    monkeypatch.setattr(tdata, "haystack_paragraphs", lambda name: [])
    with pytest.raises(SystemExit) as e:
        run_cli(setup_dir, gen)
    assert e.value.code == 2
    one_line_error(capsys, "leank_train", "data.generate.haystack: haystack 'essay' has no text")
    monkeypatch.undo()
    monkeypatch.setattr(tdata, "hf_encoder", fake_encoder)
    run_cli(setup_dir, gen)
    assert load_mask(setup_dir / "out" / "masks-s50.safetensors")[0].shape == (2, 2, 16)


def test_config_defaults_follow_transformers_as_the_server_reads_them():
    """engine/model/config.cc (ConfigTest.AbsentKeysTakeTheArchitecturesTransformersDefaults):
    an absent key takes the transformers config class's default, null means none/heads."""
    from train.checks import kv_heads, sliding_window
    base = {"num_attention_heads": 16, "num_hidden_layers": 30}
    assert kv_heads({**base, "model_type": "llama"}) == 16
    assert kv_heads({**base, "model_type": "mistral"}) == 8
    assert kv_heads({**base, "model_type": "qwen2"}) == 32
    assert kv_heads({**base, "model_type": "mistral", "num_key_value_heads": None}) == 16
    assert kv_heads({**base, "model_type": "qwen2", "num_key_value_heads": 4}) == 4
    assert sliding_window({**base, "model_type": "mistral"}) == 4096
    assert sliding_window({**base, "model_type": "mistral", "sliding_window": None}) == 0
    assert sliding_window({**base, "model_type": "mistral", "sliding_window": 512}) == 512
    assert sliding_window({**base, "model_type": "llama", "sliding_window": 512}) == 0
    qwen = {**base, "model_type": "qwen2", "use_sliding_window": True}
    assert sliding_window({**qwen, "use_sliding_window": False}) == 0
    assert sliding_window(qwen) == 4096  # 30 layers > max_window_layers 28: some slide
    assert sliding_window({**qwen, "max_window_layers": 30, "sliding_window": 512}) == 0
    assert sliding_window({**qwen, "layer_types": ["full_attention"] * 30}) == 0
    assert sliding_window({**qwen, "layer_types": ["sliding_attention"] * 30,
                           "sliding_window": 512}) == 512
