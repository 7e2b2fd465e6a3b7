"""Times one training step (stage 1, stage 2) and one evaluation forward of a random model
in SmolLM2-135M's shape, so that the GPU run can size its steps to its time budget.
Writes the timings as JSON to argv[1]."""

import json
import sys
import time

import torch

from train.data import Sample
from train.masks import binarize
from train.model import LlamaModel, ModelConfig
from train.attention import MiddleSpec
from train.trainer import MiddleConfig, sample_losses, ste_mask

cfg = ModelConfig(vocab_size=49152, hidden_size=576, intermediate_size=1536,
                  num_hidden_layers=30, num_attention_heads=9, num_key_value_heads=3,
                  head_dim=64, rope_theta=100000.0, max_position_embeddings=8192,
                  tie_word_embeddings=True, name="bench")
dev = "cuda"
torch.backends.cuda.matmul.allow_tf32 = True
model = LlamaModel.random(cfg, seed=0, std=0.02).to(dev)
mid = MiddleConfig(64, 256, 16)
R = int(sys.argv[2]) if len(sys.argv) > 2 else 3
alpha = torch.rand(R, 30, 3, 64, device=dev, requires_grad=True)
out = {"device": torch.cuda.get_device_name(), "torch": torch.__version__, "R": R}


def timed(fn, n=3):
    fn()
    torch.cuda.synchronize()
    t = time.time()
    for _ in range(n):
        fn()
    torch.cuda.synchronize()
    return (time.time() - t) / n


for L in (1024, 4096, 8192):
    s = Sample(list(range(100, 100 + L - 10)), list(range(10)), "x", "")

    def s1():
        sum(sample_losses(model, s, mid, [alpha[r] for r in range(R)])).backward()

    def s2():
        st = [ste_mask(alpha[r], 0.7, 16) for r in range(R)]
        sum(sample_losses(model, s, mid, [x[0] for x in st], [x[2] for x in st])).backward()

    kept = binarize(torch.rand(30, 3, 64), 0.7, 16).to(dev)
    spec = MiddleSpec.from_mask(kept, 128, 768, 16)
    ids = torch.tensor(s.prompt + s.answer, device=dev)

    def fwd():
        with torch.no_grad():
            model(ids, spec=spec)

    out[str(L)] = {"stage1": timed(s1), "stage2": timed(s2), "eval_fwd": timed(fwd)}
    print(L, out[str(L)], flush=True)
out["mem_gb"] = torch.cuda.max_memory_allocated() / 2**30
json.dump(out, open(sys.argv[1], "w"), indent=1)
print(json.dumps(out))
