#!/usr/bin/env python3
"""Peer decode-attention timings on the GPU machine, same shapes as leank-bench-kernels.

Llama-3.1-8B decode attention (32 q heads, 8 kv heads, head_dim 128, bf16), batch x
context grid. Peers: PyTorch SDPA with the cuDNN and flash backends (dense contiguous KV,
enable_gqa=True) and FlashInfer's BatchDecodeWithPagedKVCacheWrapper (page size 16,
shuffled page table, CUDA-core and tensor-core variants) when it imports. A timed run is
32 back-to-back calls (like the 32 layers of our sweep, KV copies rotated so that L2
cannot flatter small points), captured in a CUDA graph when possible to keep Python
launch overhead out; time_us = median over --iters runs / 32. Records follow
bench/results/kernels-*.json.
"""
import argparse
import datetime
import json
import math
import traceback

import torch
import torch.nn.functional as F

HQ, HKV, D, PAGE = 32, 8, 128, 16
CALLS = 32


def read_bandwidth(gb=4, iters=20):
    x = torch.empty(int(gb * 2**30) // 4, dtype=torch.float32, device="cuda").fill_(1.0)
    times = []
    for i in range(iters + 3):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        torch.sum(x)
        b.record()
        b.synchronize()
        if i >= 3:
            times.append(a.elapsed_time(b))
    del x
    times.sort()
    return gb * 2**30 / (times[len(times) // 2] * 1e-3) / 1e9


def time_calls(calls, iters, use_graph=True):
    """calls: list of CALLS zero-arg callables. Returns (median us per call, graph used)."""
    for c in calls:
        c()
    torch.cuda.synchronize()
    run = lambda: [c() for c in calls]
    graph = None
    if use_graph:
        try:
            s = torch.cuda.Stream()
            s.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(s):
                run()
            torch.cuda.current_stream().wait_stream(s)
            graph = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph):
                run()
            torch.cuda.synchronize()
        except Exception:  # not capturable: time eagerly
            graph = None
            torch.cuda.synchronize()
    step = graph.replay if graph is not None else run
    for _ in range(3):
        step()
    times = []
    for _ in range(iters):
        a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        a.record()
        step()
        b.record()
        b.synchronize()
        times.append(a.elapsed_time(b))
    times.sort()
    return times[len(times) // 2] * 1e3 / CALLS, graph is not None


def copies_for(bytes_one, free):
    n = max(1, min(16, math.ceil((512 << 20) / bytes_one)))
    while n > 1 and n * bytes_one > 0.6 * free:
        n -= 1
    return n


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--json", required=True)
    ap.add_argument("--git-commit", default="unknown")
    ap.add_argument("--batches", default="1,8,32,64")
    ap.add_argument("--contexts", default="4096,16384,32768,65536,131072")
    ap.add_argument("--iters", type=int, default=50)
    ap.add_argument("--fi-tensor-cores", action="store_true",
                    help="also time FlashInfer's tensor-core decode (10x slower in this shape on H100)")
    args = ap.parse_args()
    dev = torch.cuda.get_device_name()
    read_gbps = read_bandwidth()
    print(f"device {dev}, torch {torch.__version__}, read-only bandwidth {read_gbps:.0f} GB/s", flush=True)
    try:
        import flashinfer
        fi_error = None
        print(f"flashinfer {flashinfer.__version__}", flush=True)
    except Exception as e:  # report exactly why
        flashinfer, fi_error = None, f"import failed: {type(e).__name__}: {e}"
        print("flashinfer:", fi_error, flush=True)
    common = dict(device=dev, date=datetime.date.today().isoformat(), git_commit=args.git_commit,
                  read_gbps=read_gbps, shape="llama-3.1-8b: 32 q heads, 8 kv heads, head_dim 128, bf16",
                  timing="median of iters runs of 32 back-to-back calls / 32, CUDA events",
                  iters=args.iters)
    records, errors = [], {}
    if fi_error:
        errors["flashinfer"] = fi_error
    from torch.nn.attention import SDPBackend, sdpa_kernel
    for batch in map(int, args.batches.split(",")):
        for ctx in map(int, args.contexts.split(",")):
            kv_bytes = 2 * batch * HKV * ctx * D * 2
            total_bytes = kv_bytes + 2 * batch * HQ * D * 2
            free, _ = torch.cuda.mem_get_info()
            if kv_bytes + (2 << 30) > free:
                print(f"{batch:6d} {ctx:7d} skipped: does not fit", flush=True)
                continue
            row = {}
            q = torch.randn(batch, HQ, 1, D, dtype=torch.bfloat16, device="cuda")
            # --- SDPA on dense contiguous KV
            n = copies_for(kv_bytes, free)
            kv = [(torch.randn(batch, HKV, ctx, D, dtype=torch.bfloat16, device="cuda"),
                   torch.randn(batch, HKV, ctx, D, dtype=torch.bfloat16, device="cuda")) for _ in range(n)]
            for impl, backend in (("sdpa_cudnn", SDPBackend.CUDNN_ATTENTION),
                                  ("sdpa_flash", SDPBackend.FLASH_ATTENTION)):
                try:
                    def mk(i):
                        k, v = kv[i % n]
                        def call():
                            with sdpa_kernel([backend]):
                                return F.scaled_dot_product_attention(q, k, v, enable_gqa=True)
                        return call
                    t, graphed = time_calls([mk(i) for i in range(CALLS)], args.iters)
                    row[impl] = t
                    records.append(dict(common, impl=impl, batch=batch, context=ctx, time_us=t,
                                        bytes=total_bytes, gbps=total_bytes / t / 1e3,
                                        frac_read=total_bytes / t / 1e3 / read_gbps, cuda_graph=graphed,
                                        kv_layout="contiguous [B, 8, ctx, 128]"))
                except Exception as e:
                    errors[f"{impl} b{batch} c{ctx}"] = f"{type(e).__name__}: {str(e)[:300]}"
            del kv
            torch.cuda.empty_cache()
            # --- FlashInfer paged decode
            if flashinfer is not None:
                try:
                    pages_per_seq = (ctx + PAGE - 1) // PAGE
                    npages = batch * pages_per_seq
                    free, _ = torch.cuda.mem_get_info()
                    n = copies_for(kv_bytes, free)
                    caches = [torch.randn(npages, 2, PAGE, HKV, D, dtype=torch.bfloat16, device="cuda")
                              for _ in range(n)]
                    g = torch.Generator(device="cpu").manual_seed(1234)
                    indices = torch.randperm(npages, generator=g).int().cuda()
                    indptr = (torch.arange(batch + 1, dtype=torch.int32) * pages_per_seq).cuda()
                    last = torch.full((batch,), ctx - (pages_per_seq - 1) * PAGE, dtype=torch.int32).cuda()
                    variants = [("flashinfer", False)] + ([("flashinfer_tc", True)] if args.fi_tensor_cores else [])
                    for impl, tc in variants:
                        try:
                            ws = torch.empty(256 << 20, dtype=torch.uint8, device="cuda")
                            w = flashinfer.BatchDecodeWithPagedKVCacheWrapper(ws, "NHD", use_tensor_cores=tc)
                            w.plan(indptr, indices, last, HQ, HKV, D, PAGE, q_data_type=torch.bfloat16,
                                   kv_data_type=torch.bfloat16)
                            qf = q.view(batch, HQ, D)
                            calls = [(lambda c=caches[i % n]: w.run(qf, c)) for i in range(CALLS)]
                            t, graphed = time_calls(calls, args.iters)
                            row[impl] = t
                            records.append(dict(common, impl=impl, batch=batch, context=ctx, time_us=t,
                                                bytes=total_bytes, gbps=total_bytes / t / 1e3,
                                                frac_read=total_bytes / t / 1e3 / read_gbps,
                                                cuda_graph=graphed, flashinfer_version=flashinfer.__version__,
                                                kv_layout="paged NHD, page 16, shuffled pages"))
                        except Exception as e:
                            errors[f"{impl} b{batch} c{ctx}"] = f"{type(e).__name__}: {str(e)[:300]}"
                            traceback.print_exc()
                    del caches
                    torch.cuda.empty_cache()
                except Exception as e:
                    errors[f"flashinfer b{batch} c{ctx}"] = f"{type(e).__name__}: {str(e)[:300]}"
            print(f"{batch:6d} {ctx:7d} " + " ".join(f"{k}={v:.1f}us" for k, v in row.items()), flush=True)
            with open(args.json, "w") as f:
                json.dump({"records": records, "errors": errors}, f, indent=1)
    with open(args.json, "w") as f:
        json.dump({"records": records, "errors": errors}, f, indent=1)
    for k, v in errors.items():
        print("error:", k, v)


if __name__ == "__main__":
    main()
