#!/usr/bin/env python3
"""A small leank-serve client on grpcio, with stubs generated from the repo's protos.

Stubs are generated at first use into a cache folder (system protoc +
grpc_python_plugin, as Debian's protobuf-compiler / protobuf-compiler-grpc ship
them; else grpc_tools.protoc), so nothing generated is committed.

  python3 leank_client.py --target 127.0.0.1:50051 generate --text "Hello" --max-tokens 16
  python3 leank_client.py --target 127.0.0.1:50051 chat --user "Hi!" --temperature 0
  python3 leank_client.py --target 127.0.0.1:50051 health
  python3 leank_client.py --target 127.0.0.1:50051 info | state | tokenize --text "..."
  python3 leank_client.py --target 127.0.0.1:50051 selftest   # health + one generation

Debian: apt-get install python3-grpcio python3-protobuf protobuf-compiler protobuf-compiler-grpc
"""

import argparse
import importlib
import os
import shutil
import subprocess
import sys
import tempfile

REPO = os.path.abspath(os.path.join(os.path.dirname(__file__), "..", ".."))
PROTO_ROOT = os.path.join(REPO, "proto")
PROTOS = ["leank/v1/leank.proto", "grpc/health/v1/health.proto"]


def generate_stubs(out_dir):
    """Writes leank/v1/leank_pb2*.py and leank_health/health_pb2*.py under out_dir."""
    os.makedirs(out_dir, exist_ok=True)
    # The health proto is compiled from a copy under another path: its Python module
    # would otherwise be "grpc.health.v1", which grpcio's own "grpc" package shadows.
    # The proto package (grpc.health.v1), hence the wire contract, is unchanged.
    src = os.path.join(out_dir, "src")
    os.makedirs(os.path.join(src, "leank_health"), exist_ok=True)
    shutil.copy(os.path.join(PROTO_ROOT, "grpc/health/v1/health.proto"),
                os.path.join(src, "leank_health", "health.proto"))
    inputs = [(PROTO_ROOT, "leank/v1/leank.proto"), (src, "leank_health/health.proto")]
    protoc = shutil.which("protoc")
    plugin = shutil.which("grpc_python_plugin")
    for root, proto in inputs:
        if protoc and plugin:
            cmd = [protoc, f"--proto_path={root}", f"--python_out={out_dir}",
                   f"--grpc_out={out_dir}", f"--plugin=protoc-gen-grpc={plugin}"]
        else:
            # grpc_tools bundles its own protoc (it must know proto3 `optional`: >= 3.15).
            cmd = [sys.executable, "-m", "grpc_tools.protoc", f"--proto_path={root}",
                   f"--python_out={out_dir}", f"--grpc_python_out={out_dir}"]
        subprocess.run(cmd + [os.path.join(root, proto)], check=True)


def load_stubs():
    cache = os.environ.get("LEANK_STUB_DIR") or os.path.join(
        tempfile.gettempdir(), f"leank-stubs-{os.getuid()}")
    stamp = max(os.path.getmtime(os.path.join(PROTO_ROOT, p)) for p in PROTOS)
    marker = os.path.join(cache, ".stamp")
    if not os.path.exists(marker) or os.path.getmtime(marker) < stamp:
        generate_stubs(cache)
        with open(marker, "w") as f:
            f.write("ok\n")
    sys.path.insert(0, cache)
    leank_pb2 = importlib.import_module("leank.v1.leank_pb2")
    leank_pb2_grpc = importlib.import_module("leank.v1.leank_pb2_grpc")
    health_pb2 = importlib.import_module("leank_health.health_pb2")
    health_pb2_grpc = importlib.import_module("leank_health.health_pb2_grpc")
    return leank_pb2, leank_pb2_grpc, health_pb2, health_pb2_grpc


import grpc  # noqa: E402  (after the docstring's requirements)

pb, pb_grpc, health_pb, health_grpc = load_stubs()


def build_request(args):
    req = pb.GenerateRequest()
    if getattr(args, "user", None):
        if args.system:
            req.messages.messages.add(role="system", content=args.system)
        req.messages.messages.add(role="user", content=args.user)
    elif getattr(args, "token_ids", None):
        req.token_ids.ids.extend(int(t) for t in args.token_ids.split(","))
    else:
        req.text = args.text
    req.max_tokens = args.max_tokens
    if args.temperature is not None:
        req.temperature = args.temperature
    if args.top_p is not None:
        req.top_p = args.top_p
    req.top_k = args.top_k
    if args.seed is not None:
        req.seed = args.seed
    req.stop.extend(args.stop or [])
    req.ignore_eos = args.ignore_eos
    if args.logprobs is not None:
        req.logprobs = args.logprobs
    return req


def generate(stub, req, timeout, out=sys.stdout):
    """Streams one generation; prints the text as it comes, then the final chunk's data."""
    final = None
    for chunk in stub.Generate(req, timeout=timeout):
        out.write(chunk.text)
        out.flush()
        if chunk.finish_reason:
            final = chunk
    out.write("\n")
    if final is not None:
        print("finish_reason:", pb.FinishReason.Name(final.finish_reason), file=out)
        print("prompt_tokens:", final.usage.prompt_tokens, file=out)
        print("completion_tokens:", final.usage.completion_tokens, file=out)
        print("ttft_s: %.4f" % final.timings.time_to_first_token_s, file=out)
    return final


def health(channel, service=""):
    stub = health_grpc.HealthStub(channel)
    resp = stub.Check(health_pb.HealthCheckRequest(service=service), timeout=5)
    return health_pb.HealthCheckResponse.ServingStatus.Name(resp.status)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--target", default="127.0.0.1:50051")
    ap.add_argument("--timeout", type=float, default=300)
    sub = ap.add_subparsers(dest="cmd", required=True)
    for name in ("generate", "chat", "selftest"):
        p = sub.add_parser(name)
        p.add_argument("--text", default="Hello")
        p.add_argument("--token-ids")
        p.add_argument("--user")
        p.add_argument("--system")
        p.add_argument("--max-tokens", type=int, default=64)
        p.add_argument("--temperature", type=float)
        p.add_argument("--top-p", type=float)
        p.add_argument("--top-k", type=int, default=0)
        p.add_argument("--seed", type=int)
        p.add_argument("--stop", action="append")
        p.add_argument("--ignore-eos", action="store_true")
        p.add_argument("--logprobs", type=int)
    sub.add_parser("health").add_argument("--service", default="")
    sub.add_parser("info")
    sub.add_parser("state")
    p = sub.add_parser("tokenize")
    p.add_argument("--text", required=True)
    args = ap.parse_args()

    channel = grpc.insecure_channel(args.target)
    stub = pb_grpc.LeankServiceStub(channel)
    try:
        if args.cmd in ("generate", "chat"):
            generate(stub, build_request(args), args.timeout)
        elif args.cmd == "selftest":
            print("health:", health(channel))
            args.temperature = 0.0 if args.temperature is None else args.temperature
            args.ignore_eos = True
            final = generate(stub, build_request(args), args.timeout)
            if final is None or final.usage.completion_tokens != args.max_tokens:
                print("selftest: unexpected final chunk", final, file=sys.stderr)
                return 1
        elif args.cmd == "health":
            print("health:", health(channel, args.service))
        elif args.cmd == "info":
            print(stub.GetModelInfo(pb.GetModelInfoRequest(), timeout=args.timeout))
        elif args.cmd == "state":
            print(stub.GetServerState(pb.GetServerStateRequest(), timeout=args.timeout))
        elif args.cmd == "tokenize":
            r = stub.Tokenize(pb.TokenizeRequest(text=args.text), timeout=args.timeout)
            print(list(r.token_ids))
            print(list(r.tokens))
    except grpc.RpcError as e:
        print(f"error: {e.code().name}: {e.details()}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
