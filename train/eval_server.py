"""LeanK evaluation through the real gRPC server, cross-checked against the PyTorch evaluation.

  python3 -m train.leank_eval --config train/configs/smollm2-eval-server.json \
      --server-bin build-eval/bin/leank-server          # one loopback server per method
  python3 -m train.leank_eval --config ... --server leank-s70=127.0.0.1:50051   # running ones

For every method (dense, leank-sNN) and every sample, the server gets the PyTorch prompt as
`token_ids` (so both see exactly the same tokens) and generates greedily (temperature 0,
ignore_eos, max_tokens = the gold answer's length, as the PyTorch eval teacher-forces the whole
answer) with top-20 logprobs. Then the PyTorch model (train/model.py, the same middle-key rule,
the same S / W / B as the server) runs the prompt once and, from its cache, the server's
output and the gold answer, teacher-forced. From that:

  accuracy      server: output == gold; PyTorch: argmax == gold at every answer position
                (leank_eval's metric). Both per (task, length) cell.
  greedy agreement   PyTorch's argmax equals the server's token at every position (so the
                PyTorch greedy decode IS the server's); else the first position where it does
                not, with both sides' top-1 / top-2 margin there (near-ties).
  logprob agreement  at positions whose context both decodes share: max |server logprob -
                PyTorch logprob| over the server's top-20 tokens, and the bucket KL below.
  fidelity      method vs dense, both through the server, at the answer positions whose context
                is the same for both (up to and including the first position where their greedy
                outputs differ): top-1 agreement and the bucket KL(dense || method); the same
                from PyTorch's full distributions next to it (exact KL and bucket KL), so the
                bucket KL's gap to the exact KL is visible.

Bucket KL (what a top-20 logprob API allows to compute honestly): for two distributions P, Q
of which only the top-20 entries are known, take the tokens in BOTH top-20 lists as one bucket
each and everything else as one "rest" bucket (p_rest = 1 - sum of P's known bucket masses,
likewise q_rest). Both coarse distributions are known exactly, so their KL is exact, and by
the data-processing inequality it is a LOWER BOUND of the full KL(P || Q); nothing is imputed.
"""

from __future__ import annotations

import contextlib
import json
import math
import signal
import socket
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import torch

from train import st_io
from train.data import load_samples
from train.leank_train import resolve, sparsity_tag
from train.masks import load_mask
from train.model import KVCache, LlamaModel

REPO = Path(__file__).resolve().parent.parent
TopList = List[Tuple[int, float]]  # [(token id, logprob)], best first


# ---- the client ------------------------------------------------------------------------------

class ServerError(RuntimeError):
    """A server that does not start, answer or serve what the config expects (leank_eval
    prints it as one line)."""


def _client_module():
    """tools/python_client/leank_client.py (generates grpc stubs from proto/ at first use)."""
    sys.path.insert(0, str(REPO / "tools" / "python_client"))
    try:
        import leank_client  # noqa: E402
    finally:
        sys.path.pop(0)
    return leank_client


class ServerClient:
    def __init__(self, target: str):
        import grpc
        self.grpc = grpc
        self.lc = _client_module()
        self.target = target
        self.channel = grpc.insecure_channel(target)
        self.stub = self.lc.pb_grpc.LeankServiceStub(self.channel)

    def wait_serving(self, timeout_s: float = 180.0, proc: Optional[subprocess.Popen] = None):
        t0 = time.time()
        last = ""
        while time.time() - t0 < timeout_s:
            if proc is not None and proc.poll() is not None:
                raise ServerError(f"server at {self.target} exited with {proc.returncode}")
            try:
                last = self.lc.health(self.channel)
                if last == "SERVING":
                    return
            except self.grpc.RpcError as e:
                last = e.code().name
            time.sleep(0.5)
        raise ServerError(f"server at {self.target} not SERVING after {timeout_s:.0f}s ({last})")

    def info(self) -> dict:
        r = self.stub.GetModelInfo(self.lc.pb.GetModelInfoRequest(), timeout=30)
        return {"model": r.model, "backend": r.backend, "dtype": r.dtype, "masked": r.masked,
                "k_sparsity": r.k_sparsity, "sink": r.sink, "recent": r.recent,
                "block_size": r.block_size, "max_model_len": r.max_model_len,
                "kv_capacity_tokens": r.kv_capacity_tokens}

    def generate(self, prompt: Sequence[int], max_tokens: int, logprobs: int = 20,
                 timeout_s: float = 600.0) -> dict:
        """Greedy generation from token ids: {tokens, logprob (chosen), top [[(id, lp)]], ...}."""
        pb = self.lc.pb
        req = pb.GenerateRequest(max_tokens=max_tokens, temperature=0.0, ignore_eos=True,
                                 logprobs=logprobs)
        req.token_ids.ids.extend(int(t) for t in prompt)
        toks, chosen, top, final = [], [], [], None
        t0 = time.time()
        for c in self.stub.Generate(req, timeout=timeout_s):
            toks += list(c.token_ids)
            for lp in c.logprobs:
                chosen.append(lp.logprob)
                top.append([(t.token_id, t.logprob) for t in lp.top])
            if c.finish_reason:
                final = c
        if final is None or pb.FinishReason.Name(final.finish_reason) == "FINISH_REASON_ERROR":
            raise ServerError(f"{self.target}: generation failed: {final}")
        return {"tokens": toks, "logprob": chosen, "top": top,
                "finish": pb.FinishReason.Name(final.finish_reason),
                "prompt_tokens": final.usage.prompt_tokens, "wall_s": time.time() - t0}

    def close(self):
        self.channel.close()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def spawn_server(binary: str, model: str, masks: Optional[str], sink: int, recent: int,
                 threads: int = 2, kv_memory: str = "256MiB", log: Optional[Path] = None,
                 wait_s: float = 180.0) -> Iterator[Tuple[str, subprocess.Popen]]:
    """Starts leank-server on a free loopback port, waits for SERVING, yields (target, proc);
    always stops it (SIGTERM, then SIGKILL after 20 s)."""
    port = free_port()
    cmd = [binary, "--model", model, "--host", "127.0.0.1", "--port", str(port),
           "--metrics-port", "0", "--num-threads", str(threads), "--kv-cache-memory", kv_memory,
           "--drain-timeout", "5"]
    if masks:
        cmd += ["--masks", masks, "--sink", str(sink), "--recent", str(recent)]
    out = open(log, "a") if log else subprocess.DEVNULL
    proc = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT)
    target = f"127.0.0.1:{port}"
    try:
        cl = ServerClient(target)
        try:
            cl.wait_serving(wait_s, proc)
        except ServerError as e:
            raise ServerError(f"{e}" + (f" (its output: {log})" if log else "")) from None
        finally:
            cl.close()
        yield target, proc
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(20)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(10)
        if log:
            out.close()


# ---- comparisons -----------------------------------------------------------------------------

def bucket_kl(p: TopList, q: TopList) -> float:
    """KL(P || Q) over the buckets {t} for t in both top lists, plus one "rest" bucket: exact
    for the coarse-grained distributions, a lower bound of the full KL."""
    qd = dict(q)
    kl, p_in, q_in = 0.0, 0.0, 0.0
    for t, lp in p:
        if t in qd:
            pi = math.exp(lp)
            kl += pi * (lp - qd[t])
            p_in += pi
            q_in += math.exp(qd[t])
    p_rest, q_rest = max(0.0, 1.0 - p_in), max(1e-30, 1.0 - q_in)
    if p_rest > 1e-12:
        kl += p_rest * math.log(p_rest / q_rest)
    return max(0.0, kl)


def top_list(lp: torch.Tensor, k: int = 20) -> TopList:
    v, i = torch.topk(lp, k)
    return [(int(a), float(b)) for a, b in zip(i.tolist(), v.tolist())]


def common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b):
        if x != y:
            break
        n += 1
    return n


# ---- PyTorch side ----------------------------------------------------------------------------

class TorchSide:
    """Logprobs at the answer positions, teacher-forced, with one prompt prefill per
    (sample, method) shared by every continuation."""

    def __init__(self, model: LlamaModel, sink: int, recent: int, block: int):
        from train.leank_eval import Evaluator
        self.ev = Evaluator(model, sink, recent, block)

    def answer_logprobs(self, prompt: List[int], conts: List[List[int]], kept) -> List[torch.Tensor]:
        """For each continuation c (len A): log-softmax [A, V] at positions P-1 .. P+A-2."""
        m, dev = self.ev.model, self.ev.dev
        spec = self.ev.spec(kept)
        out = []
        with torch.no_grad():
            cache = KVCache()
            h_last = m(torch.tensor(prompt, device=dev), spec=spec, fill_cache=cache)[-1:]
            for c in conts:
                if len(c) > 1:
                    h = m(torch.tensor(c[:-1], device=dev), start=len(prompt), cache=cache,
                          spec=spec)
                    h = torch.cat([h_last, h], 0)
                else:
                    h = h_last
                out.append(self.ev.logprobs(h).cpu())
        return out


def method_name(info: dict) -> str:
    return f"leank-{sparsity_tag(info['k_sparsity'])}" if info["masked"] else "dense"


# ---- the run ---------------------------------------------------------------------------------

def select_samples(cfg: dict, root: Path) -> List[dict]:
    """cfg["cells"]: [{"file", "tasks": [...], "n"}] -> the first n samples of each task, in file
    order; cfg["texts"]: [{"file", "n", "prompt_len", "gen"}] -> plain-text prompts."""
    out = []
    for cell in cfg.get("cells", []):
        got = defaultdict(int)
        for i, s in enumerate(load_samples(resolve(root, cell["file"]))):
            if s.task in cell["tasks"] and got[s.task] < cell["n"]:
                got[s.task] += 1
                L = len(s.prompt) + len(s.answer)
                out.append({"id": f"{s.task}@{L}#{i}", "cell": f"{s.task}@{L}",
                            "prompt": s.prompt, "gold": s.answer, "max_tokens": len(s.answer)})
    for t in cfg.get("texts", []):
        for i, s in enumerate(load_samples(resolve(root, t["file"]))[:t["n"]]):
            P = t["prompt_len"] - t["gen"]
            out.append({"id": f"text@{t['prompt_len']}#{i}", "cell": f"text@{t['prompt_len']}",
                        "prompt": s.prompt[:P], "gold": None, "max_tokens": t["gen"]})
    return out


def run(cfg: dict, root: Path, model: LlamaModel, servers: Optional[Dict[str, str]] = None,
        server_bin: Optional[str] = None, log=print, keep_outputs: bool = False) -> dict:
    """Evaluates cfg's methods through servers (given targets, or spawned from server_bin one
    at a time) and PyTorch on the same samples; returns the result dict (see module doc).
    cfg["methods"] (optional) restricts the methods; keep_outputs keeps the raw server outputs
    (tokens, top-20 logprobs) in res["server_outputs"]."""
    mid = cfg["middle"]
    S, W, B = mid["sink"], mid["recent"], mid["block"]
    samples = select_samples(cfg, root)
    torch_side = TorchSide(model, S, W, B)
    names = ["dense"] + [f"leank-{sparsity_tag(s)}" for s in cfg["sparsities"]]
    names = [n for n in names if n in cfg.get("methods", names)]
    if servers:
        names = [n for n in names if n in servers] + [n for n in servers if n not in names]
    t_start = time.time()
    res = {"config": cfg, "samples": [{k: s[k] for k in ("id", "cell", "max_tokens")}
                                      for s in samples],
           "servers": {}, "per_sample": {}}
    srv_out: Dict[str, Dict[str, dict]] = {}
    lp_dense: Dict[str, torch.Tensor] = {}  # PyTorch dense logprobs on dense-server context

    def mask_of(name):
        if name == "dense":
            return None, None
        path = resolve(root, cfg["leank_masks"].format(tag=name.split("-", 1)[1]))
        return path, torch.from_numpy(load_mask(path)[0]).float()

    for name in names:
        path, kept = mask_of(name)
        # 1. the server, alone on the CPU
        with contextlib.ExitStack() as stack:
            if servers:
                target = servers[name]
            else:
                target, _ = stack.enter_context(spawn_server(
                    server_bin, str(resolve(root, cfg["model"])), str(path) if path else None,
                    S, W, cfg.get("server_threads", 2), cfg.get("kv_cache_memory", "256MiB"),
                    resolve(root, cfg["out"]).with_suffix(".server.log")))
            cl = stack.enter_context(contextlib.closing(ServerClient(target)))
            cl.wait_serving(60)
            info = cl.info()
            res["servers"][name] = info
            if method_name(info) != name:
                raise ServerError(f"{target} serves {method_name(info)}, expected {name}")
            if kept is not None and (info["sink"], info["recent"], info["block_size"]) != (S, W, B):
                raise ServerError(f"{target}: sink/recent/block {info['sink']}/"
                                  f"{info['recent']}/{info['block_size']} != config {S}/{W}/{B}")
            srv_out[name] = {}
            for s in samples:
                g = cl.generate(s["prompt"], s["max_tokens"])
                if len(g["tokens"]) != s["max_tokens"]:
                    raise ServerError(f"{name} {s['id']}: {len(g['tokens'])} tokens")
                srv_out[name][s["id"]] = g
            log(f"{name}: server done ({time.time() - t_start:.0f}s)")
        # 2. PyTorch on the same prompts (the server is stopped)
        for s in samples:
            g = srv_out[name][s["id"]]
            conts = [g["tokens"]]
            if s["gold"] is not None and s["gold"] != g["tokens"]:
                conts.append(s["gold"])
            lps = torch_side.answer_logprobs(s["prompt"], conts, kept)
            res["per_sample"].setdefault(name, {})[s["id"]] = per_sample(
                s, g, lps, srv_out.get("dense", {}).get(s["id"]), lp_dense.get(s["id"]))
            if name == "dense":
                lp_dense[s["id"]] = lps[0]
        log(f"{name}: pytorch done ({time.time() - t_start:.0f}s)")
    if keep_outputs:
        res["server_outputs"] = srv_out
    res["summary"] = summarise(res, samples)
    res["elapsed_s"] = time.time() - t_start
    return res


def per_sample(s: dict, g: dict, lps: List[torch.Tensor], g_dense: Optional[dict],
               lp_dense: Optional[torch.Tensor]) -> dict:
    """One (method, sample): server vs PyTorch, and (for masked methods) vs dense."""
    toks, lp = g["tokens"], lps[0]  # lp: PyTorch on the server's own output
    arg = lp.argmax(-1).tolist()
    d = common_prefix(arg, toks)  # PyTorch greedy == server greedy on positions < d
    r = {"tokens": toks, "server_correct": None, "torch_correct": None,
         "greedy_equal": d == len(toks), "first_diff": None}
    if s["gold"] is not None:
        r["server_correct"] = toks == s["gold"]
        gl = lps[1] if len(lps) > 1 else lp
        r["torch_correct"] = gl.argmax(-1).tolist() == s["gold"]
    if d < len(toks):  # margins at the first disagreement: near-ties?
        srv_top = g["top"][d]
        t2 = torch.topk(lp[d], 2)
        r["first_diff"] = {"pos": d, "server_token": toks[d], "torch_token": arg[d],
                           "server_margin": srv_top[0][1] - srv_top[1][1],
                           "torch_margin": float(t2.values[0] - t2.values[1])}
    # logprobs: server's top-20 vs PyTorch at the same tokens, positions 0..d (same context)
    dmax, bkl = 0.0, []
    for t in range(min(d + 1, len(toks))):
        srv = g["top"][t]
        dmax = max([dmax] + [abs(v - float(lp[t, i])) for i, v in srv])
        bkl.append(bucket_kl(srv, top_list(lp[t])))
    r["lp_max_abs_diff"] = dmax
    r["lp_bucket_kl"] = bkl
    if g_dense is not None and lp_dense is not None and g_dense is not g:
        # fidelity: positions 0..c where dense's and this method's server contexts agree
        c = common_prefix(g_dense["tokens"], toks)
        n = min(c + 1, len(toks))
        fid = {"positions": n, "srv_top1": 0, "srv_bkl": 0.0, "torch_top1": 0,
               "torch_kl": 0.0, "torch_bkl": 0.0}
        for t in range(n):
            pd, pm = g_dense["top"][t], g["top"][t]
            fid["srv_top1"] += int(pd[0][0] == pm[0][0])
            fid["srv_bkl"] += bucket_kl(pd, pm)
            a, b = lp_dense[t], lp[t]
            fid["torch_top1"] += int(int(a.argmax()) == int(b.argmax()))
            fid["torch_kl"] += float((a.exp() * (a - b)).sum())
            fid["torch_bkl"] += bucket_kl(top_list(a), top_list(b))
        r["fidelity"] = fid
    return r


def summarise(res: dict, samples: List[dict]) -> dict:
    out = {}
    for name, per in res["per_sample"].items():
        cells = defaultdict(lambda: {"n": 0, "server": 0, "torch": 0})
        agree = {"samples": 0, "greedy_equal": 0, "correct_equal": 0, "positions": 0,
                 "lp_max_abs_diff": 0.0, "lp_bucket_kl_mean": 0.0, "first_diffs": []}
        fid = defaultdict(float)
        kl_sum = 0.0
        for s in samples:
            r = per[s["id"]]
            agree["samples"] += 1
            agree["greedy_equal"] += int(r["greedy_equal"])
            if r["first_diff"]:
                agree["first_diffs"].append(dict(r["first_diff"], sample=s["id"]))
            agree["lp_max_abs_diff"] = max(agree["lp_max_abs_diff"], r["lp_max_abs_diff"])
            kl_sum += sum(r["lp_bucket_kl"])
            agree["positions"] += len(r["lp_bucket_kl"])
            if s["gold"] is not None:
                c = cells[s["cell"]]
                c["n"] += 1
                c["server"] += int(r["server_correct"])
                c["torch"] += int(r["torch_correct"])
                agree["correct_equal"] += int(r["server_correct"] == r["torch_correct"])
            for k, v in r.get("fidelity", {}).items():
                fid[k] += v
        agree["lp_bucket_kl_mean"] = kl_sum / max(1, agree["positions"])
        o = {"cells": dict(sorted(cells.items())), "agreement": agree}
        if fid:
            n = fid["positions"]
            o["fidelity"] = {"positions": int(n), "srv_top1": fid["srv_top1"] / n,
                             "srv_bucket_kl": fid["srv_bkl"] / n,
                             "torch_top1": fid["torch_top1"] / n, "torch_kl": fid["torch_kl"] / n,
                             "torch_bucket_kl": fid["torch_bkl"] / n}
        out[name] = o
    return out


def markdown(res: dict) -> str:
    """The tables of docs/accuracy.md's "Through the server" section."""
    summ = res["summary"]
    cells = sorted({c for o in summ.values() for c in o["cells"]},
                   key=lambda c: (int(c.split("@")[1]), c))
    lines = ["| method | " + " | ".join(cells) + " | all (server) | all (PyTorch) |",
             "|---" * (len(cells) + 3) + "|"]
    for name, o in summ.items():
        row, ts, tt, tn = [], 0, 0, 0
        for c in cells:
            v = o["cells"].get(c)
            if v is None:
                row.append("-")
                continue
            row.append(f"{v['server']}/{v['n']}" + ("" if v["server"] == v["torch"]
                                                    else f" (PyTorch {v['torch']}/{v['n']})"))
            ts, tt, tn = ts + v["server"], tt + v["torch"], tn + v["n"]
        lines.append(f"| {name} | " + " | ".join(row) +
                     f" | {100 * ts / max(1, tn):.1f} | {100 * tt / max(1, tn):.1f} |")
    lines += ["", "| method | samples | same greedy tokens | same correctness | positions compared |"
              " max abs logprob diff (top-20) | mean bucket KL(server &#124;&#124; PyTorch) |",
              "|---|---|---|---|---|---|---|"]
    for name, o in summ.items():
        a = o["agreement"]
        n_acc = sum(v["n"] for v in o["cells"].values())
        lines.append(f"| {name} | {a['samples']} | {a['greedy_equal']}/{a['samples']} | "
                     f"{a['correct_equal']}/{n_acc} | {a['positions']} | "
                     f"{a['lp_max_abs_diff']:.2e} | {a['lp_bucket_kl_mean']:.1e} |")
    fl = [(n, o["fidelity"]) for n, o in summ.items() if "fidelity" in o]
    if fl:
        lines += ["", "| method | positions | top-1 agreement with dense (server) | (PyTorch) |"
                  " bucket KL(dense &#124;&#124; method) server | PyTorch bucket KL | PyTorch exact KL |",
                  "|---|---|---|---|---|---|---|"]
        for name, f in fl:
            lines.append(f"| {name} | {f['positions']} | {100 * f['srv_top1']:.1f}% | "
                         f"{100 * f['torch_top1']:.1f}% | {f['srv_bucket_kl']:.4f} | "
                         f"{f['torch_bucket_kl']:.4f} | {f['torch_kl']:.4f} |")
    return "\n".join(lines)


def write(res: dict, out: Path) -> None:
    out.parent.mkdir(parents=True, exist_ok=True)
    st_io.write_atomic(out, json.dumps(res, indent=1).encode())
