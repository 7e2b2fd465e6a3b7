"""Tests of the Python tools beside the mask importer (run by ctest, or pytest):
bench/kernels/results.py, tools/plot_bench.py, tools/make_random_llama.py and
tools/convert_smollm2.py. Bad input must give one line on stderr naming the fault and a
non-zero exit status, never a traceback, and no half-written output.

Only the standard library is required; cases that need matplotlib, torch + safetensors, or
gguf + numpy are skipped without them.
"""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest
from pathlib import Path
from unittest import mock

SOURCE_DIR = os.environ.get("LEANK_SOURCE_DIR",
                            os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
RESULTS = os.path.join(SOURCE_DIR, "bench", "kernels", "results.py")
PLOT_BENCH = os.path.join(SOURCE_DIR, "tools", "plot_bench.py")
MAKE_RANDOM_LLAMA = os.path.join(SOURCE_DIR, "tools", "make_random_llama.py")
CONVERT = os.path.join(SOURCE_DIR, "tools", "convert_smollm2.py")


def have(*modules):
    return all(importlib.util.find_spec(m) is not None for m in modules)


HAVE_MPL = have("matplotlib")
HAVE_TORCH_ST = have("torch", "safetensors")
HAVE_GGUF = have("gguf", "numpy")


def run(script, *args, timeout=300):
    return subprocess.run([sys.executable, script, *args], capture_output=True, text=True,
                          timeout=timeout)


def load_module(path, name):
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class ToolTestCase(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, *names):
        return os.path.join(self.dir, *names)

    def write(self, name, obj):
        with open(self.path(name), "w") as f:
            f.write(obj if isinstance(obj, str) else json.dumps(obj))
        return self.path(name)

    def refused(self, script, args, *needles, code=1, prefix=None):
        r = run(script, *args)
        self.assertEqual(r.returncode, code, f"stdout: {r.stdout}\nstderr: {r.stderr}")
        self.assertNotIn("Traceback", r.stderr)
        lines = r.stderr.strip().splitlines()
        if code == 1:
            self.assertEqual(len(lines), 1, r.stderr)
            if prefix:
                self.assertTrue(lines[0].startswith(prefix), r.stderr)
        for n in needles:
            self.assertIn(n, r.stderr)
        return r

    def no_temporaries(self, folder=None):
        folder = folder or self.dir
        left = [f for f in os.listdir(folder) if f.endswith(".tmp") or ".tmp." in f]
        self.assertEqual(left, [])


# ---------------------------------------------------------------------------------------------
# bench/kernels/results.py


def kernel_records():
    recs = []
    for batch, ctx in ((1, 4096), (1, 16384), (8, 4096)):
        for impl, t in (("dense", 20.0), ("leank", 12.5), ("sdpa_cudnn", 18.0)):
            recs.append({"impl": impl, "batch": batch, "context": ctx, "time_us": t * batch,
                         "gbps": 1000.0, "read_gbps": 3000.0, "device": "test GPU"})
    recs.append({"impl": "prefill_causal", "context": 8192, "time_us": 900.0, "tflops": 120.0})
    return recs


class ResultsTest(ToolTestCase):
    def test_merge_and_table(self):
        a = self.write("leank.json", kernel_records()[:5])
        b = self.write("peers.json", {"records": kernel_records()[5:],
                                      "errors": {"flashinfer batch 64": "out of memory"}})
        out = self.path("merged.json")
        r = run(RESULTS, "merge", out, a, b)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(out) as f:
            merged = json.load(f)
        self.assertEqual(len(merged), len(kernel_records()) + 1)
        self.assertEqual(merged[-1], {"impl": "flashinfer", "error": "out of memory",
                                      "where": "flashinfer batch 64"})
        self.no_temporaries()
        r = run(RESULTS, "table", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("| 1 | 4096 | 20.0 | 12.5 | 18.0 | - | - | 33% | 33% | 1.60x | 1.44x |",
                      r.stdout)
        self.assertIn("prefill_causal: 900 us per layer at 8192 tokens causal, 120 TFLOP/s",
                      r.stdout)

    def test_bad_command_lines_exit_two(self):
        for args in ([], ["bogus", "x"], ["merge", self.path("out.json")], ["table"],
                     ["plot", "only-one"]):
            with self.subTest(args=args):
                r = self.refused(RESULTS, args, code=2)
                self.assertIn("usage:", r.stderr)
        self.assertFalse(os.path.exists(self.path("out.json")))

    def test_bad_inputs_are_named(self):
        good = self.write("good.json", kernel_records())
        cases = [
            ("missing", None, "no such file"),
            ("trunc.json", '[{"impl": "dense", ', "not JSON"),
            ("scalar.json", "3", "top level is a JSON int"),
            ("norecords.json", {"hello": 1}, 'an object without a "records" list'),
            ("badrec.json", [1], "record 0 is a JSON int"),
            ("noimpl.json", [{"time_us": 3}], 'record 0 has no "impl"'),
            ("badtime.json", [{"impl": "dense", "batch": 1, "context": 2, "time_us": "fast"}],
             "record 0 (dense): time_us is 'fast'"),
            ("zerotime.json", [{"impl": "dense", "batch": 1, "context": 2, "time_us": 0}],
             "expected a positive number"),
            ("badbatch.json", [{"impl": "dense", "batch": "1", "context": 2, "time_us": 1}],
             "batch is '1'"),
        ]
        for name, content, needle in cases:
            with self.subTest(name=name):
                src = self.path(name) if content is None else self.write(name, content)
                self.refused(RESULTS, ["table", src], needle, prefix=f"results.py: {src}")
                out = self.path("m.json")
                self.refused(RESULTS, ["merge", out, good, src], needle)
                self.assertFalse(os.path.exists(out))
        os.mkdir(self.path("adir"))
        self.refused(RESULTS, ["table", self.path("adir")], "is a directory")

    def test_merge_output_problems(self):
        good = self.write("good.json", kernel_records())
        self.refused(RESULTS, ["merge", self.path("no", "such", "m.json"), good], "does not exist")
        self.refused(RESULTS, ["merge", self.dir, good], "is a directory")
        # A failed write keeps the old file and leaves no temporary.
        old = self.write("m.json", "old")
        results = load_module(RESULTS, "results_under_test")
        with mock.patch.object(results.os, "replace", side_effect=OSError(28, "No space left on device")), \
                mock.patch("sys.stderr") as err, mock.patch("sys.stdout"):
            self.assertEqual(results.main(["merge", old, good]), 1)
        self.assertIn("cannot write: No space left on device",
                      "".join(c.args[0] for c in err.write.call_args_list))
        with open(old) as f:
            self.assertEqual(f.read(), "old")
        self.no_temporaries()

    @unittest.skipUnless(HAVE_MPL, "needs matplotlib")
    def test_plot(self):
        src = self.write("k.json", kernel_records())
        png = self.path("k.png")
        r = run(RESULTS, "plot", src, png)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(png, "rb") as f:
            self.assertEqual(f.read(8)[1:4], b"PNG")
        self.no_temporaries()
        self.refused(RESULTS, ["plot", src, self.path("k.xyz")], "unknown image type .xyz")
        self.refused(RESULTS, ["plot", src, self.path("nope", "k.png")], "does not exist")
        empty = self.write("e.json", [{"impl": "dense", "error": "boom"}])
        self.refused(RESULTS, ["plot", empty, png], "no decode records")


# ---------------------------------------------------------------------------------------------
# tools/plot_bench.py


def bench_result(label, concurrency, tput):
    stats = {"p50": 10.0, "p99": 20.0, "mean": 12.0}
    return {"tool": "leank-bench", "label": label,
            "config": {"mode": "closed", "concurrency": concurrency, "request_rate": None},
            "results": {"output_throughput": tput, "request_throughput": tput / 100,
                        "ttft_ms": stats, "tpot_ms": stats, "itl_ms": stats, "e2el_ms": stats},
            "requests": [{"ok": True, "ttft_ms": 5.0 + i, "tpot_ms": 1.0, "e2el_ms": 50.0 + i}
                         for i in range(4)]}


class PlotBenchTest(ToolTestCase):
    def test_bad_inputs_are_named(self):
        good = bench_result("dense", 1, 100.0)
        broken_cfg = dict(good, config={"concurrency": 1})
        no_ttft = json.loads(json.dumps(good))
        del no_ttft["results"]["ttft_ms"]
        bad_tput = json.loads(json.dumps(good))
        bad_tput["results"]["output_throughput"] = "fast"
        cases = [
            ("missing.json", None, "no such file"),
            ("trunc.json", '{"tool": ', "not JSON"),
            ("list.json", [1], "not a leank-bench result (top level is a JSON list)"),
            ("hello.json", {"hello": 1}, "not a leank-bench result (no tool/results)"),
            ("nomode.json", broken_cfg, 'config.mode must be "closed" or "open"'),
            ("nottft.json", no_ttft, "results.ttft_ms has no p50/p99 numbers"),
            ("badtput.json", bad_tput, "results.output_throughput is 'fast'"),
        ]
        out = self.path("plots")
        for name, content, needle in cases:
            with self.subTest(name=name):
                src = self.path(name) if content is None else self.write(name, content)
                self.refused(PLOT_BENCH, [src, "--out", out], needle, prefix=f"plot_bench.py: {src}")
        self.assertFalse(os.path.exists(out))  # nothing drawn from a bad set of inputs

    def test_bad_flags_and_outputs(self):
        src = self.write("r.json", bench_result("dense", 1, 100.0))
        self.refused(PLOT_BENCH, [src, "--prefix", "a/b"], "not a path", code=2)
        self.refused(PLOT_BENCH, [], code=2)
        self.refused(PLOT_BENCH, [src, "--out", src], "exists and is not a folder")

    @unittest.skipUnless(HAVE_MPL, "needs matplotlib")
    def test_plots_written_atomically(self):
        files = [self.write(f"{label}{c}.json", bench_result(label, c, 100.0 * c * (1 + (label == "leank"))))
                 for label in ("dense", "leank") for c in (1, 8)]
        out = self.path("plots")
        r = run(PLOT_BENCH, *files, "--out", out, "--prefix", "t-")
        self.assertEqual(r.returncode, 0, r.stderr)
        names = sorted(os.listdir(out))
        self.assertEqual(names, ["t-cdf.png", "t-compare-closed.png", "t-latency-closed.png",
                                 "t-throughput-closed.png"])
        for n in names:
            with open(os.path.join(out, n), "rb") as f:
                self.assertEqual(f.read(8)[1:4], b"PNG")
        self.no_temporaries(out)


    @unittest.skipUnless(HAVE_MPL, "needs matplotlib")
    def test_null_percentiles_and_no_server_info_are_plotted(self):
        """leank-bench writes a percentile it cannot compute as null (every request failed, or
        one output token each: no TPOT); the comparison plot divided by it (TypeError)."""
        dense = bench_result("dense", 1, 100.0)
        leank = bench_result("leank", 1, 150.0)
        leank["results"]["tpot_ms"] = {"p50": None, "p99": None, "mean": None}
        unlabelled = bench_result("", 8, 120.0)
        unlabelled["server"] = None
        out = self.path("plots")
        r = run(PLOT_BENCH, self.write("d.json", dense), self.write("l.json", leank), "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertIn("serving-compare-closed.png", sorted(os.listdir(out)))
        # No label and a "server" that is not an object: the series is "dense".
        r = run(PLOT_BENCH, self.write("u.json", unlabelled), "--out", out, "--prefix", "u-")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.no_temporaries(out)


# ---------------------------------------------------------------------------------------------
# tools/make_random_llama.py

TINY = {"hidden_size": 64, "intermediate_size": 96, "num_attention_heads": 4,
        "num_key_value_heads": 2, "head_dim": 16, "vocab_size": 128}


class MakeRandomLlamaTest(ToolTestCase):
    def test_bad_flags_exit_two(self):
        for flags, needle in ((["--layers", "0"], "--layers: 0 must be a positive integer"),
                              (["--layers", "-1"], "--layers: -1"),
                              (["--shard-gb", "0"], "--shard-gb: 0 must be a positive number"),
                              (["--shard-gb", "nan"], "--shard-gb: nan"),
                              (["--seed", "-3"], "--seed: -3 must be >= 0"),
                              (["--seed", "x"], "--seed: 'x' is not an integer")):
            with self.subTest(flags=flags):
                self.refused(MAKE_RANDOM_LLAMA, ["--out", self.path("m"), *flags], needle, code=2)
        self.assertFalse(os.path.exists(self.path("m")))

    def test_bad_outputs(self):
        f = self.write("file", "x")
        self.refused(MAKE_RANDOM_LLAMA, ["--out", f], "exists and is not a folder",
                     prefix="make_random_llama: ")
        os.mkdir(self.path("real"))
        self.write("real/config.json", {"_name_or_path": "meta-llama/Llama-3.1-8B"})
        self.write("real/model-00001-of-00004.safetensors", "real weights")
        self.refused(MAKE_RANDOM_LLAMA, ["--out", self.path("real")], "holds another model")
        with open(self.path("real", "model-00001-of-00004.safetensors")) as g:
            self.assertEqual(g.read(), "real weights")
        self.refused(MAKE_RANDOM_LLAMA, ["--out", os.path.join(f, "sub")], "cannot create the folder")

    @unittest.skipUnless(HAVE_TORCH_ST, "needs torch and safetensors")
    def test_tiny_model_sharded_reproducible_and_never_half_complete(self):
        import torch
        from safetensors.torch import load_file
        tool = load_module(MAKE_RANDOM_LLAMA, "make_random_llama_under_test")
        cfg = dict(tool.LLAMA31_8B, **TINY)
        out = self.path("m")
        argv = ["--out", out, "--layers", "3", "--seed", "7", "--shard-gb", "0.00005"]
        with mock.patch("sys.stdout") as stdout:
            self.assertEqual(tool.main(argv, base_cfg=cfg), 0)
        progress = "".join(c.args[0] for c in stdout.write.call_args_list)
        with open(os.path.join(out, "model.safetensors.index.json")) as f:
            index = json.load(f)
        shards = sorted(set(index["weight_map"].values()))
        self.assertGreater(len(shards), 2)
        self.assertIn(f"shard {len(shards)}/{len(shards)}", progress)
        self.assertEqual(len(index["weight_map"]), 3 + 9 * 3)
        with open(os.path.join(out, "config.json")) as f:
            config = json.load(f)
        self.assertEqual(config["num_hidden_layers"], 3)
        self.assertEqual(config["_name_or_path"], "random-llama3.1-8b-seed7")
        first = {}
        for s in shards:
            first.update(load_file(os.path.join(out, s)))
        self.assertEqual(tuple(first["model.layers.2.self_attn.k_proj.weight"].shape), (32, 64))
        self.assertEqual(first["model.norm.weight"].dtype, torch.bfloat16)
        self.assertAlmostEqual(float(first["lm_head.weight"].float().std()), 0.02, delta=0.003)
        self.assertEqual(sorted(os.listdir(out)), sorted(shards + ["config.json",
                                                                   "model.safetensors.index.json"]))

        # A run that dies while writing its second shard leaves no config.json or index, so the
        # folder does not look complete (bench scripts test config.json), and no temporaries.
        real_save = tool.replace_atomically
        calls = []

        def failing(path, write):
            calls.append(path)
            if len(calls) == 2:
                raise OSError(28, "No space left on device", path + ".tmp")
            real_save(path, write)

        with mock.patch.object(tool, "replace_atomically", side_effect=failing), \
                mock.patch("sys.stdout"), mock.patch("sys.stderr") as err:
            self.assertEqual(tool.main(["--out", out, "--layers", "3", "--seed", "8",
                                        "--shard-gb", "0.00005"], base_cfg=cfg), 1)
        message = "".join(c.args[0] for c in err.write.call_args_list)
        self.assertIn("No space left on device", message)
        self.assertNotIn("Traceback", message)
        self.assertFalse(os.path.exists(os.path.join(out, "config.json")))
        self.assertFalse(os.path.exists(os.path.join(out, "model.safetensors.index.json")))
        self.no_temporaries(out)

        # Rerun with the first seed and one shard: the same tensors, and the earlier shards the
        # new index does not name are gone.
        with mock.patch("sys.stdout"):
            self.assertEqual(tool.main(["--out", out, "--layers", "3", "--seed", "7"],
                                       base_cfg=cfg), 0)
        self.assertEqual(sorted(os.listdir(out)), ["config.json", "model-00001-of-00001.safetensors",
                                                   "model.safetensors.index.json"])
        again = load_file(os.path.join(out, "model-00001-of-00001.safetensors"))
        self.assertEqual(sorted(again), sorted(first))
        for name in first:
            self.assertTrue(torch.equal(again[name], first[name]), name)


# ---------------------------------------------------------------------------------------------
# tools/convert_smollm2.py


def make_gguf(path, seed, n_layer=1, hidden=32, n_head=4, n_kv=2, ff=48):
    """A tiny llama GGUF (f32 tensors, a byte-level vocabulary) shaped like SmolLM2's file."""
    import gguf
    import numpy as np
    rng = np.random.default_rng(seed)
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(n_layer)
    w.add_embedding_length(hidden)
    w.add_head_count(n_head)
    w.add_head_count_kv(n_kv)
    w.add_context_length(256)
    w.add_feed_forward_length(ff)
    w.add_rope_freq_base(10000.0)
    w.add_layer_norm_rms_eps(1e-5)
    tokens = ["<|im_start|>", "<|im_end|>"] + [chr(c) for c in range(33, 127)] + ["ab"]
    w.add_tokenizer_model("gpt2")
    w.add_token_list(tokens)
    w.add_token_types([3, 3] + [1] * (len(tokens) - 2))
    w.add_token_merges(["a b"])
    w.add_bos_token_id(0)
    w.add_eos_token_id(1)
    w.add_chat_template("{% for m in messages %}{{ m['content'] }}{% endfor %}")
    d = hidden // n_head

    def tensor(name, shape):
        w.add_tensor(name, rng.standard_normal(shape).astype(np.float32))

    tensor("token_embd.weight", (len(tokens), hidden))
    tensor("output_norm.weight", (hidden,))
    for l in range(n_layer):
        p = f"blk.{l}."
        tensor(p + "attn_norm.weight", (hidden,))
        tensor(p + "attn_q.weight", (n_head * d, hidden))
        tensor(p + "attn_k.weight", (n_kv * d, hidden))
        tensor(p + "attn_v.weight", (n_kv * d, hidden))
        tensor(p + "attn_output.weight", (hidden, hidden))
        tensor(p + "ffn_norm.weight", (hidden,))
        tensor(p + "ffn_gate.weight", (ff, hidden))
        tensor(p + "ffn_up.weight", (ff, hidden))
        tensor(p + "ffn_down.weight", (hidden, ff))
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.write_tensors_to_file()
    w.close()
    return path


@unittest.skipUnless(HAVE_GGUF, "needs gguf and numpy")
class ConvertSmolLM2Test(ToolTestCase):
    def convert(self, *args):
        return run(CONVERT, *args)

    def test_converts_and_reconverts_when_the_gguf_changes(self):
        a = make_gguf(self.path("a.gguf"), seed=1)
        b = make_gguf(self.path("b.gguf"), seed=2, n_layer=2)
        out = self.path("model")
        r = self.convert("--gguf", a, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        with open(os.path.join(out, "config.json")) as f:
            self.assertEqual(json.load(f)["num_hidden_layers"], 1)
        r = self.convert("--gguf", a, "--out", out)
        self.assertIn("nothing to do", r.stdout)
        # Another GGUF into the same folder is converted, not skipped as "complete".
        r = self.convert("--gguf", b, "--out", out)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertNotIn("nothing to do", r.stdout)
        with open(os.path.join(out, "config.json")) as f:
            self.assertEqual(json.load(f)["num_hidden_layers"], 2)
        self.assertFalse(os.path.exists(out + ".tmp"))

    def test_bad_ggufs_are_named(self):
        out = self.path("model")
        with open(self.path("junk.gguf"), "wb") as f:
            f.write(b"\x00" * 4096)
        good = make_gguf(self.path("good.gguf"), seed=1)
        with open(good, "rb") as f, open(self.path("trunc.gguf"), "wb") as g:
            g.write(f.read()[:3000])
        self.refused(CONVERT, ["--gguf", self.path("junk.gguf"), "--out", out],
                     "junk.gguf: not a readable GGUF file")
        self.refused(CONVERT, ["--gguf", self.path("trunc.gguf"), "--out", out],
                     "trunc.gguf: not a readable GGUF file")
        self.refused(CONVERT, ["--gguf", self.path("nosuch.gguf"), "--out", out], "not found")
        self.assertFalse(os.path.exists(out))
        self.assertFalse(os.path.exists(out + ".tmp"))

    def test_output_folder_with_other_files_is_not_wiped(self):
        good = make_gguf(self.path("good.gguf"), seed=1)
        os.mkdir(self.path("busy"))
        notes = self.write("busy/notes.txt", "precious")
        self.refused(CONVERT, ["--gguf", good, "--out", self.path("busy"), "--force"],
                     "holds files this converter did not write (notes.txt)")
        with open(notes) as f:
            self.assertEqual(f.read(), "precious")
        self.refused(CONVERT, ["--gguf", good, "--out", notes], "exists and is not a folder")

    def test_interrupted_swap_keeps_the_previous_conversion(self):
        """write_folder swaps the new folder in by renames; it deleted the old one first, so
        an interrupt before the last rename left no model at all."""
        module = load_module(CONVERT, "convert_smollm2_under_test")
        out = Path(self.path("model"))
        out.mkdir()
        (out / "config.json").write_text("previous")
        real_rename = Path.rename

        def interrupted(src, dst):
            if Path(src).name == "model.tmp":
                raise KeyboardInterrupt
            return real_rename(src, dst)

        weights = lambda path, *_: Path(path).write_bytes(b"w")
        gguf = Path(self.write("m.gguf", "gguf"))
        with mock.patch.object(module, "write_safetensors_bf16", weights), \
                mock.patch.object(Path, "rename", interrupted), \
                mock.patch.object(module, "log"):
            with self.assertRaises(KeyboardInterrupt):
                module.write_folder(Path(self.path("model.tmp")), out, gguf, {}, {}, {}, {}, {},
                                    {})
        self.assertEqual((Path(self.path("model.old")) / "config.json").read_text(), "previous")
        with mock.patch.object(module, "write_safetensors_bf16", weights), \
                mock.patch.object(module, "log"):
            module.write_folder(Path(self.path("model.tmp")), out, gguf, {}, {}, {}, {}, {}, {})
        self.assertEqual(json.loads((out / "config.json").read_text()), {})
        self.assertFalse(os.path.exists(self.path("model.old")))
        self.no_temporaries()


# ---------------------------------------------------------------------------------------------
# tools/check_smollm2.py (the model, tokenizer and transformers replaced by stand-ins)

CHECK = os.path.join(SOURCE_DIR, "tools", "check_smollm2.py")


@unittest.skipUnless(have("numpy"), "needs numpy (convert_smollm2 imports it)")
class CheckSmolLM2Test(ToolTestCase):
    def run_main(self, failing):
        module = load_module(CHECK, "check_smollm2_under_test")
        module.failures.clear()
        fake = mock.MagicMock()
        fake.config.eos_token_id = 2
        tokenizer = mock.MagicMock()
        tokenizer.decode.return_value = "Paris is the capital."
        expected = self.write("expected.json", "committed reference")

        def tokenizer_check(_):
            if failing:
                module.check(False, "every GGUF token maps to its id")

        stand_ins = {m: mock.MagicMock(__version__="0") for m in ("torch", "transformers")}
        with mock.patch.dict(sys.modules, stand_ins), \
                mock.patch.object(module.convert_smollm2, "is_complete", return_value=True), \
                mock.patch.object(module, "check_tokenizer", tokenizer_check), \
                mock.patch.object(module, "load_model", return_value=(tokenizer, fake)), \
                mock.patch.object(module, "check_rope_layout"), \
                mock.patch.object(module, "render_prompt", return_value=[1, 5]), \
                mock.patch.object(module, "greedy", return_value=([7, 2], [0.5, 0.25])), \
                mock.patch("sys.argv", ["check_smollm2.py", "--model", self.dir,
                                        "--expected", expected]), \
                mock.patch("sys.stdout"):
            try:
                module.main()
                code = 0
            except SystemExit as e:
                code = e.code
        with open(expected) as f:
            return code, f.read()

    def test_failed_check_keeps_the_committed_reference(self):
        """expected.json is the golden tests' reference: it was rewritten from a model that
        had failed a check (and only then did the script exit non-zero)."""
        code, text = self.run_main(failing=True)
        self.assertNotIn(code, (0, None))
        self.assertEqual(text, "committed reference")
        self.assertIn("was not written", str(code))
        code, text = self.run_main(failing=False)
        self.assertIn(code, (0, None))
        self.assertEqual(json.loads(text)["cases"][0]["greedy_ids"], [7, 2])
        self.no_temporaries()


if __name__ == "__main__":
    unittest.main()
