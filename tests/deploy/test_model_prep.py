"""deploy/model-prep.sh on failures: nothing incomplete is marked ready, errors are one clear
line, a failed attempt leaves no temporary files on the volume; run by deploy/check.sh.

Only the Python standard library is needed (the masks tool is replaced by a stub, so the
tests run in check.sh's tool venv too); sources are local files (`dir:`, `url:file://`).
"""

from __future__ import annotations

import json
import os
import shutil
import struct
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

import drift

SCRIPT = drift.DEPLOY / "model-prep.sh"


def _safetensors(path: Path, tensors: dict[str, int]) -> None:
    """A minimal valid safetensors file: F32 tensors of the given element counts."""
    header, offset = {}, 0
    for name, n in tensors.items():
        header[name] = {"dtype": "F32", "shape": [n], "data_offsets": [offset, offset + 4 * n]}
        offset += 4 * n
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    path.write_bytes(struct.pack("<Q", len(raw)) + raw + bytes(offset))


@pytest.fixture
def seed(tmp_path: Path) -> Path:
    """A sharded model folder, as Hugging Face ships Llama-3.1-8B (index + shards)."""
    d = tmp_path / "seed" / "llama"
    d.mkdir(parents=True)
    (d / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 2, '
                                   '"num_attention_heads": 4, "hidden_size": 64}')
    (d / "tokenizer.json").write_text("{}")
    shards = {"model-00001-of-00002.safetensors": {"a": 64}, "model-00002-of-00002.safetensors": {"b": 64}}
    for name, tensors in shards.items():
        _safetensors(d / name, tensors)
    (d / "model.safetensors.index.json").write_text(json.dumps(
        {"weight_map": {t: name for name, ts in shards.items() for t in ts}}))
    return d


def _tar(src: Path, out: Path, names: list[str] | None = None, wrap: bool = False) -> Path:
    with tarfile.open(out, "w") as t:
        if wrap:
            t.add(src, arcname=src.name)
        else:
            for n in names or sorted(p.name for p in src.iterdir()):
                t.add(src / n, arcname=n)
    return out


def _run(tmp_path: Path, **env: str) -> subprocess.CompletedProcess:
    tools = tmp_path / "tools"
    tools.mkdir(exist_ok=True)
    # Stand-in for tools/import_leank_mask.py: a "masks file" is MASK + its layer count;
    # `random OUT` writes one (layers from --layers or --config), `info FILE` checks it, and
    # with --config also that its layers are the model's num_hidden_layers.
    (tools / "import_leank_mask.py").write_text(
        "import json, sys\n"
        "cmd, path, args = sys.argv[1], sys.argv[2], sys.argv[3:]\n"
        "opt = lambda k: args[args.index(k) + 1] if k in args else None\n"
        "layers = lambda d: str(json.load(open(d + '/config.json'))['num_hidden_layers'])\n"
        "if cmd == 'random':\n"
        "    n = opt('--layers') or layers(opt('--config'))\n"
        "    open(path, 'wb').write(b'MASK' + n.encode())\n"
        "    sys.exit(0)\n"
        "data = open(path, 'rb').read()\n"
        "if data[:4] != b'MASK':\n"
        "    sys.exit(f'{path}: not a masks file')\n"
        "if opt('--config') and data[4:].decode() != layers(opt('--config')):\n"
        "    sys.exit(f'{path}: mask of {data[4:].decode()} layers, the model has '\n"
        "             f'{layers(opt(\"--config\"))}')\n")
    full = {"PATH": os.environ.get("PATH", "/usr/bin:/bin"), "PYTHON": sys.executable,
            "PREP_TOOLS_DIR": str(tools), "LEANK_MASKS": "", **env}
    return subprocess.run(["bash", str(SCRIPT)], env=full, capture_output=True, text=True,
                          timeout=120)


def _leftovers(volume: Path) -> list[str]:
    return sorted(str(p.relative_to(volume)) for p in volume.rglob("*") if ".tmp." in p.name
                  or ".old." in p.name)


def test_complete_tar_is_prepared_once(tmp_path, seed):
    volume = tmp_path / "models"
    archive = _tar(seed, tmp_path / "m.tar")
    env = {"LEANK_MODEL": str(volume / "llama"), "PREP_MODEL_SOURCE": f"url:file://{archive}"}
    r = _run(tmp_path, **env)
    assert r.returncode == 0, r.stderr
    assert (volume / "llama" / ".leank-ready").read_text().strip() == env["PREP_MODEL_SOURCE"]
    r = _run(tmp_path, **env)
    assert r.returncode == 0 and "model ready: " in r.stderr and "(from url:" in r.stderr, r.stderr
    assert _leftovers(volume) == []


def test_tar_cut_at_a_file_boundary_is_not_marked_ready(tmp_path, seed):
    """tar exits 0 on an archive cut between two members; the missing shard must still fail."""
    volume = tmp_path / "models"
    full = _tar(seed, tmp_path / "m.tar", ["config.json", "tokenizer.json",
                                           "model.safetensors.index.json",
                                           "model-00001-of-00002.safetensors",
                                           "model-00002-of-00002.safetensors"])
    with tarfile.open(full) as t:
        last = t.getmember("model-00002-of-00002.safetensors").offset
    cut = tmp_path / "cut.tar"
    cut.write_bytes(full.read_bytes()[:last])
    r = _run(tmp_path, LEANK_MODEL=str(volume / "llama"), PREP_MODEL_SOURCE=f"url:file://{cut}")
    assert r.returncode != 0
    assert "model-00002-of-00002.safetensors" in r.stderr and "missing" in r.stderr, r.stderr
    assert not (volume / "llama").exists()
    assert _leftovers(volume) == []


def test_truncated_shard_is_not_marked_ready(tmp_path, seed):
    volume = tmp_path / "models"
    shard = seed / "model-00002-of-00002.safetensors"
    shard.write_bytes(shard.read_bytes()[:-40])
    r = _run(tmp_path, LEANK_MODEL=str(volume / "llama"), PREP_MODEL_SOURCE=f"dir:{seed}")
    assert r.returncode != 0
    assert "model-00002-of-00002.safetensors" in r.stderr and "truncated" in r.stderr, r.stderr
    assert not (volume / "llama").exists() and _leftovers(volume) == []


def test_no_weights_the_server_can_open(tmp_path, seed):
    (seed / "model.safetensors.index.json").unlink()  # shards without their index
    r = _run(tmp_path, LEANK_MODEL=str(tmp_path / "models" / "llama"),
             PREP_MODEL_SOURCE=f"dir:{seed}")
    assert r.returncode != 0
    assert "neither model.safetensors nor model.safetensors.index.json" in r.stderr, r.stderr


def test_failed_download_is_one_clear_line(tmp_path):
    volume = tmp_path / "models"
    r = _run(tmp_path, LEANK_MODEL=str(volume / "llama"),
             PREP_MODEL_SOURCE=f"url:file://{tmp_path}/no-such.tar")
    assert r.returncode != 0
    assert "Traceback" not in r.stderr, r.stderr
    assert "[model-prep] error: download of file://" in r.stderr, r.stderr
    assert _leftovers(volume) == [] and not (volume / "llama").exists()


def test_not_a_tar_is_reported_and_cleaned_up(tmp_path):
    volume = tmp_path / "models"
    junk = tmp_path / "junk.tar"
    junk.write_bytes(os.urandom(4096))
    r = _run(tmp_path, LEANK_MODEL=str(volume / "llama"), PREP_MODEL_SOURCE=f"url:file://{junk}")
    assert r.returncode != 0 and "not a readable (or a complete) tar archive" in r.stderr, r.stderr
    assert _leftovers(volume) == []


def test_tar_of_the_folder_itself_is_accepted(tmp_path, seed):
    """`tar -cf llama.tar llama/` (one top-level folder) is the usual way to pack a folder."""
    volume = tmp_path / "models"
    archive = _tar(seed, tmp_path / "wrapped.tar", wrap=True)
    r = _run(tmp_path, LEANK_MODEL=str(volume / "llama"), PREP_MODEL_SOURCE=f"url:file://{archive}")
    assert r.returncode == 0, r.stderr
    assert (volume / "llama" / "config.json").is_file()
    assert (volume / "llama" / "model-00002-of-00002.safetensors").is_file()


def test_force_replaces_a_ready_folder(tmp_path, seed):
    """PREP_FORCE=1 exists to repair a folder; it used to prepare a copy and then keep the old."""
    volume = tmp_path / "models"
    env = {"LEANK_MODEL": str(volume / "llama"), "PREP_MODEL_SOURCE": f"dir:{seed}"}
    assert _run(tmp_path, **env).returncode == 0
    (volume / "llama" / "tokenizer.json").write_text("damaged")
    r = _run(tmp_path, PREP_FORCE="1", **env)
    assert r.returncode == 0, r.stderr
    assert (volume / "llama" / "tokenizer.json").read_text() == "{}"
    assert _leftovers(volume) == []


def test_masks_failures_leave_nothing_ready(tmp_path, seed):
    volume = tmp_path / "models"
    model = {"LEANK_MODEL": str(volume / "llama"), "PREP_MODEL_SOURCE": f"dir:{seed}"}
    masks = volume / "masks" / "m.safetensors"
    good, bad = tmp_path / "good", tmp_path / "bad"
    good.write_bytes(b"MASK2")
    bad.write_bytes(b"JUNK....")
    r = _run(tmp_path, LEANK_MASKS=str(masks), PREP_MASKS_SOURCE=f"file:{bad}", **model)
    assert r.returncode != 0 and "is not a LeanK masks file" in r.stderr, r.stderr
    assert not masks.exists() and _leftovers(volume) == []
    r = _run(tmp_path, LEANK_MASKS=str(masks), PREP_MASKS_SOURCE=f"url:file://{tmp_path}/nope",
             **model)
    assert r.returncode != 0 and "Traceback" not in r.stderr and "download of" in r.stderr
    assert not masks.exists() and _leftovers(volume) == []
    r = _run(tmp_path, LEANK_MASKS=str(masks), PREP_MASKS_SOURCE=f"file:{good}", **model)
    assert r.returncode == 0, r.stderr
    assert masks.read_bytes() == good.read_bytes()
    assert Path(f"{masks}.leank-ready").read_text().strip() == f"file:{good}"


def test_masks_are_checked_against_the_model(tmp_path, seed):
    """The masks stamp names only the masks source: a `random` mask made for the previous
    model used to stay "ready" after LEANK_MODEL's source changed (the server then refuses it
    at start-up, a crash loop), and a masks file for another model was marked ready."""
    volume = tmp_path / "models"
    masks = volume / "masks" / "m.safetensors"
    env = {"LEANK_MODEL": str(volume / "llama"), "PREP_MODEL_SOURCE": f"dir:{seed}",
           "LEANK_MASKS": str(masks), "PREP_MASKS_SOURCE": "random"}
    r = _run(tmp_path, **env)
    assert r.returncode == 0, r.stderr
    assert masks.read_bytes() == b"MASK2"
    bigger = tmp_path / "seed" / "llama4"
    shutil.copytree(seed, bigger)
    (bigger / "config.json").write_text('{"model_type": "llama", "num_hidden_layers": 4, '
                                       '"num_attention_heads": 4, "hidden_size": 64}')
    r = _run(tmp_path, **dict(env, PREP_MODEL_SOURCE=f"dir:{bigger}"))
    assert r.returncode == 0, r.stderr
    assert "does not fit the model" in r.stderr, r.stderr
    assert masks.read_bytes() == b"MASK4"  # made again, for the 4-layer model
    r = _run(tmp_path, **dict(env, PREP_MODEL_SOURCE=f"dir:{bigger}"))
    assert r.returncode == 0 and "masks ready: " in r.stderr, r.stderr
    # A masks file for another model is refused, and what was there is kept.
    other = tmp_path / "other"
    other.write_bytes(b"MASK2")
    r = _run(tmp_path, **dict(env, PREP_MODEL_SOURCE=f"dir:{bigger}",
                              PREP_MASKS_SOURCE=f"file:{other}"))
    assert r.returncode != 0 and "for another model" in r.stderr, r.stderr
    assert masks.read_bytes() == b"MASK4"
    assert Path(f"{masks}.leank-ready").read_text().strip() == "random"
    assert _leftovers(volume) == []
