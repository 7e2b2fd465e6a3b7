import os
import random
import sys

from pathlib import Path

import pytest
import torch

sys.path.insert(0, os.path.abspath(os.path.join(os.path.dirname(__file__), "..", "..")))

from train.data import Sample  # noqa: E402
from train.model import LlamaModel, ModelConfig  # noqa: E402


def tiny_config(model_type="llama", **kw) -> ModelConfig:
    base = dict(vocab_size=101, hidden_size=48, intermediate_size=80, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, head_dim=16, rope_theta=10000.0,
                tie_word_embeddings=model_type == "qwen2", attention_bias=model_type == "qwen2",
                model_type=model_type, name=f"tiny-{model_type}")
    base.update(kw)
    return ModelConfig(**base)


@pytest.fixture
def tiny_model():
    torch.manual_seed(0)
    return LlamaModel.random(tiny_config(), seed=3, std=0.15)


def fail_writes_halfway(monkeypatch, exc):
    """Path.write_bytes writes half of its data, then raises `exc` (a full disk, a Ctrl-C)."""
    write_bytes = Path.write_bytes

    def half_then_raise(self, data):
        write_bytes(self, data[: len(data) // 2])
        raise exc

    monkeypatch.setattr(Path, "write_bytes", half_then_raise)


def run_config_cli(main, config, root, *sets):
    """Calls a CLI's main with --config CONFIG --root ROOT and one --set per override."""
    args = ["--config", str(config), "--root", str(root)]
    for s in sets:
        args += ["--set", s]
    main(args)


def one_line_error(capsys, prog, message):
    """The captured stderr is one `PROG: error: ...` line containing `message`."""
    err = capsys.readouterr().err
    assert err.startswith(f"{prog}: error: ") and message in err, err
    assert "Traceback" not in err and len(err.strip().splitlines()) == 1, err


def random_samples(n, vocab=101, min_len=60, max_len=90, answer_len=4, seed=0):
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        L = rng.randint(min_len, max_len)
        toks = [rng.randrange(vocab) for _ in range(L)]
        out.append(Sample(toks[:-answer_len], toks[-answer_len:], "random", ""))
    return out


@pytest.fixture
def samples():
    return random_samples(8)
