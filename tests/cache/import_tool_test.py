"""Tests of tools/import_leank_mask.py (run by ctest, or pytest; needs numpy and safetensors,
skipped without them: exit status 77 when run as a script; the .pth cases also need torch)."""

import importlib.util
import json
import os
import subprocess
import sys
import tempfile
import unittest
from unittest import mock

try:
    import numpy as np
    from safetensors import safe_open
    from safetensors.numpy import load_file, save_file
    HAVE_DEPS = True
except ImportError:
    HAVE_DEPS = False
HAVE_TORCH = importlib.util.find_spec("torch") is not None

SOURCE_DIR = os.environ.get("LEANK_SOURCE_DIR",
                            os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
TOOL = os.path.join(SOURCE_DIR, "tools", "import_leank_mask.py")
DATA = os.path.join(SOURCE_DIR, "tests", "data", "cache")


def run(*args):
    return subprocess.run([sys.executable, TOOL, *args], capture_output=True, text=True)


def read(path):
    with safe_open(path, framework="numpy") as f:
        meta = f.metadata()
    return load_file(path)["leank.kept"], meta


@unittest.skipUnless(HAVE_DEPS, "needs numpy and safetensors")
class ImportToolTest(unittest.TestCase):
    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()

    def tearDown(self):
        self.tmp.cleanup()

    def out(self, name):
        return os.path.join(self.tmp.name, name)

    def test_json_import_matches_committed_pth_import(self):
        out = self.out("llama.safetensors")
        r = run("import", os.path.join(DATA, "llama3.1-8b-instruct.json"), out,
                "--expect-counts", "0:47,32:120,64:67,96:22")
        self.assertEqual(r.returncode, 0, r.stderr)
        got, meta = read(out)
        want, _ = read(os.path.join(DATA, "llama3.1-8b-instruct.leank.safetensors"))
        self.assertEqual(got.dtype, np.uint8)
        self.assertEqual(got.shape, (32, 8, 128))
        np.testing.assert_array_equal(got, want)
        self.assertEqual(meta["format"], "leank-mask/1")
        self.assertEqual((meta["sink"], meta["recent"], meta["align"]), ("128", "768", "32"))
        self.assertEqual(meta["model"], "Llama-3.1-8B-Instruct")
        self.assertAlmostEqual(float(meta["target_sparsity"]), 0.6875)

    def test_wrong_expected_counts_fail(self):
        r = run("import", os.path.join(DATA, "llama3.1-8b-instruct.json"), self.out("x.safetensors"),
                "--expect-counts", "0:48,32:119,64:67,96:22")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("expected", r.stderr)

    def test_random_masks_are_aligned_and_hit_the_target(self):
        for align, frac, seed in ((16, 0.3, 1), (32, 0.5, 2), (16, 0.05, 3)):
            out = self.out(f"r{seed}.safetensors")
            r = run("random", out, "--layers", "30", "--heads", "3", "--head-dim", "64",
                    "--kept-fraction", str(frac), "--align", str(align), "--seed", str(seed))
            self.assertEqual(r.returncode, 0, r.stderr)
            arr, meta = read(out)
            counts = arr.sum(axis=2)
            self.assertTrue(((counts % align) == 0).all())
            self.assertIn(0, counts)
            self.assertIn(64, counts)
            self.assertAlmostEqual(arr.mean(), frac, delta=align / 64 / 90 + 1e-9)
            self.assertEqual(meta["align"], str(align))
            # Same seed, same mask.
            again = self.out(f"r{seed}b.safetensors")
            run("random", again, "--layers", "30", "--heads", "3", "--head-dim", "64",
                "--kept-fraction", str(frac), "--align", str(align), "--seed", str(seed))
            np.testing.assert_array_equal(read(again)[0], arr)

    def test_bad_align_is_refused(self):
        r = run("random", self.out("bad.safetensors"), "--head-dim", "48", "--align", "32")
        self.assertNotEqual(r.returncode, 0)
        self.assertIn("does not divide head_dim", r.stderr)


def load_tool():
    spec = importlib.util.spec_from_file_location("import_leank_mask", TOOL)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


SMOL_CONFIG = {"architectures": ["LlamaForCausalLM"], "num_hidden_layers": 30,
               "num_attention_heads": 9, "num_key_value_heads": 3, "hidden_size": 576}
LLAMA_JSON = os.path.join(DATA, "llama3.1-8b-instruct.json")


@unittest.skipUnless(HAVE_DEPS, "needs numpy and safetensors")
class BadInputTest(unittest.TestCase):
    """Every bad input: one line on stderr naming the fault, exit 1 (2 for flags), no traceback,
    and nothing written."""

    def setUp(self):
        self.tmp = tempfile.TemporaryDirectory()
        self.dir = self.tmp.name

    def tearDown(self):
        self.tmp.cleanup()

    def path(self, name):
        return os.path.join(self.dir, name)

    def write_json(self, name, obj):
        with open(self.path(name), "w") as f:
            f.write(obj if isinstance(obj, str) else json.dumps(obj))
        return self.path(name)

    def small_json(self, **changes):
        d = {"format": "kept-channel index lists, kept[layer][kv_head] = sorted channel indices",
             "num_layers": 2, "num_kv_heads": 2, "head_dim": 32, "align": 16,
             "kept": [[list(range(16)), []], [list(range(32)), list(range(8, 24))]]}
        d.update(changes)
        return d

    def refused(self, args, *needles, code=1):
        r = run(*args)
        self.assertEqual(r.returncode, code, f"stdout: {r.stdout}\nstderr: {r.stderr}")
        self.assertNotIn("Traceback", r.stderr)
        lines = r.stderr.strip().splitlines()
        if code == 1:
            self.assertEqual(len(lines), 1, r.stderr)
            self.assertTrue(lines[0].startswith("import_leank_mask: "), r.stderr)
        for n in needles:
            self.assertIn(n, r.stderr)
        leftovers = [f for f in os.listdir(self.dir) if f.endswith(".tmp")]
        self.assertEqual(leftovers, [])
        return r.stderr

    def test_small_json_imports(self):
        out = self.path("ok.safetensors")
        r = run("import", self.write_json("m.json", self.small_json()), out)
        self.assertEqual(r.returncode, 0, r.stderr)
        arr, meta = read(out)
        self.assertEqual(arr.sum(axis=2).tolist(), [[16, 0], [32, 16]])
        self.assertEqual(meta["align"], "16")
        self.assertEqual(oct(os.stat(out).st_mode & 0o777), oct(0o666 & ~current_umask()))

    def test_missing_and_unreadable_sources(self):
        out = self.path("o.safetensors")
        self.refused(["import", self.path("nosuch.json"), out], "nosuch.json: no such file")
        self.refused(["import", self.path("nosuch.pth"), out], "nosuch.pth: no such file")
        self.refused(["import", self.write_json("m.txt", "{}"), out], "m.txt", ".pth, .pt or .json")
        src = self.write_json("same.json", self.small_json())
        self.refused(["import", src, src], "is the source itself")
        os.mkdir(self.path("d.json"))
        self.refused(["import", self.path("d.json"), out], "d.json: is a directory")
        self.assertFalse(os.path.exists(out))

    def test_corrupt_and_malformed_json(self):
        out = self.path("o.safetensors")
        cases = [
            ('{"format": "kept', "not a LeanK .json mask: invalid JSON at line 1"),
            ("[1, 2]", "top level is a JSON list"),
            (self.small_json(format="other"), "format 'other'"),
            ({k: v for k, v in self.small_json().items() if k != "head_dim"}, 'no "head_dim"'),
            (self.small_json(num_layers="2"), '"num_layers" is \'2\', expected a positive integer'),
            (self.small_json(num_kv_heads=0), '"num_kv_heads" is 0'),
            (self.small_json(num_layers=3), "[3][2] list"),
            (self.small_json(kept=None), '"kept" is not a [2][2] list'),
            (self.small_json(kept=[[[1, 0], []], [[], []]]), "layer 0 head 0: channels must be"),
            (self.small_json(kept=[[[0, 40], []], [[], []]]), "in [0, 32)"),
            (self.small_json(kept=[[["a"], []], [[], []]]), "layer 0 head 0"),
            (self.small_json(kept=[[[], []], [[], [1.5]]]), "layer 1 head 1"),
            (self.small_json(sink=-1), '"sink" is -1'),
            (self.small_json(model=7), '"model" is 7'),
        ]
        for i, (doc, needle) in enumerate(cases):
            with self.subTest(needle=needle):
                self.refused(["import", self.write_json(f"bad{i}.json", doc), out], needle)
        self.assertFalse(os.path.exists(out))

    def test_kept_counts_not_a_multiple_of_align(self):
        src = self.write_json("m.json", self.small_json(
            kept=[[list(range(16)), list(range(8))], [[], []]]))
        self.refused(["import", src, self.path("o.safetensors")],
                     "layer 0, head 1 keeps 8 channels, not a multiple of align 16")
        src = self.write_json("n.json", self.small_json())  # counts 16, 0, 32, 16
        self.refused(["import", src, self.path("o.safetensors"), "--align", "32"],
                     "layer 0, head 0 keeps 16 channels, not a multiple of align 32",
                     "try --align 16")
        src = self.write_json("p.json", self.small_json(align=8))
        self.refused(["import", src, self.path("o.safetensors")], "align 8 must be 16 or 32")

    def test_bad_flags(self):
        out = self.path("o.safetensors")
        src = self.write_json("m.json", self.small_json())
        for flags, needle in ((["--sink", "-5"], "--sink: -5 must be a positive integer"),
                              (["--recent", "x"], "--recent: 'x' is not an integer"),
                              (["--align", "24"], "--align: 24 must be 16 or 32")):
            with self.subTest(flags=flags):
                self.refused(["import", src, out, *flags], needle, code=2)
        self.refused(["import", src, out, "--expect-counts", "0=47"],
                     "--expect-counts '0=47': expected KEPT:HEADS pairs")
        for flags, needle in ((["--layers", "0"], "--layers: 0 must be a positive integer"),
                              (["--head-dim", "-64"], "--head-dim: -64"),
                              (["--kept-fraction", "1.5"], "--kept-fraction: 1.5 must be in [0, 1]"),
                              (["--kept-fraction", "nan"], "--kept-fraction"),
                              (["--align", "8"], "--align: 8 must be 16 or 32"),
                              (["--seed", "-1"], "--seed: -1 must be >= 0")):
            with self.subTest(flags=flags):
                self.refused(["random", out, *flags], needle, code=2)
        self.refused(["random", out, "--head-dim", "48", "--align", "32"],
                     "--align 32 does not divide head_dim 48")
        self.assertFalse(os.path.exists(out))

    def test_unwritable_outputs(self):
        src = self.write_json("m.json", self.small_json())
        self.refused(["import", src, self.path("no/such/dir/o.safetensors")], "does not exist")
        self.refused(["import", src, self.dir], "is a directory")
        self.refused(["random", self.path("missing/r.safetensors")], "does not exist")
        if os.geteuid() != 0:  # root writes anywhere
            ro = self.path("ro")
            os.mkdir(ro, 0o555)
            self.refused(["import", src, os.path.join(ro, "o.safetensors")], "not writable")

    def test_failed_write_leaves_the_old_file_and_no_temporary(self):
        tool = load_tool()
        out = self.path("o.safetensors")
        with open(out, "wb") as f:
            f.write(b"old contents")
        src = self.write_json("m.json", self.small_json())
        with mock.patch.object(tool.os, "fsync", side_effect=OSError(28, "No space left on device")), \
                mock.patch("sys.stderr") as err:
            code = tool.main(["import", src, out])
        self.assertEqual(code, 1)
        message = "".join(c.args[0] for c in err.write.call_args_list)
        self.assertIn("cannot write: No space left on device", message)
        with open(out, "rb") as f:
            self.assertEqual(f.read(), b"old contents")
        self.assertEqual(sorted(os.listdir(self.dir)), ["m.json", "o.safetensors"])
        # A good run replaces it.
        self.assertEqual(tool.main(["import", src, out]), 0)
        self.assertEqual(read(out)[0].shape, (2, 2, 32))

    def test_mask_for_the_wrong_model(self):
        cfg = self.write_json("config.json", SMOL_CONFIG)
        out = self.path("o.safetensors")
        self.refused(["import", LLAMA_JSON, out, "--config", cfg],
                     "mask shape [32, 8, 128] does not match the model's [30, 3, 64]")
        self.assertFalse(os.path.exists(out))
        llama = dict(SMOL_CONFIG, num_hidden_layers=32, num_attention_heads=32,
                     num_key_value_heads=8, hidden_size=4096, head_dim=128)
        os.mkdir(self.path("llama"))
        with open(self.path("llama/config.json"), "w") as f:
            json.dump(llama, f)
        r = run("import", LLAMA_JSON, out, "--config", self.path("llama"))  # a model folder
        self.assertEqual(r.returncode, 0, r.stderr)
        r = run("info", out, "--config", self.path("llama"))
        self.assertEqual(r.returncode, 0, r.stderr)
        self.refused(["info", out, "--config", cfg], "does not match the model's [30, 3, 64]")
        self.refused(["import", LLAMA_JSON, out, "--config", self.path("nosuch.json")],
                     "nosuch.json: no such file")
        bad_cfg = self.write_json("bad.json", {"hidden_size": 576})
        self.refused(["import", LLAMA_JSON, out, "--config", bad_cfg], 'no "num_hidden_layers"')
        # random takes its shape from the config; a contradicting flag is refused.
        r = run("random", self.path("r.safetensors"), "--config", cfg)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(read(self.path("r.safetensors"))[0].shape, (30, 3, 64))
        self.refused(["random", self.path("r2.safetensors"), "--config", cfg, "--heads", "8"],
                     "--heads 8 disagrees with the model's 3")

    def test_absent_kv_heads_take_the_architectures_default(self):
        """leank-server reads an absent num_key_value_heads as transformers does (Mistral 8,
        Qwen2 32, Llama the head count); the tool used the head count for every model."""
        mistral = {"model_type": "mistral", "num_hidden_layers": 32, "num_attention_heads": 32,
                   "hidden_size": 4096}
        cfg = self.write_json("mistral.json", mistral)
        r = run("random", self.path("m.safetensors"), "--config", cfg)
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(read(self.path("m.safetensors"))[0].shape, (32, 8, 128))
        r = run("import", LLAMA_JSON, self.path("l.safetensors"), "--config", cfg)
        self.assertEqual(r.returncode, 0, r.stderr)  # [32, 8, 128] fits
        llama = self.write_json("llama.json", dict(mistral, model_type="llama"))
        self.refused(["info", self.path("l.safetensors"), "--config", llama],
                     "does not match the model's [32, 32, 128]")
        nulled = self.write_json("null.json", dict(mistral, num_key_value_heads=None))
        self.refused(["info", self.path("l.safetensors"), "--config", nulled],
                     "does not match the model's [32, 32, 128]")

    def test_info_checks_like_the_cpp_loader(self):
        good = np.zeros((2, 2, 32), dtype=np.uint8)
        good[0, 0, :16] = 1
        meta = {"format": "leank-mask/1", "align": "16", "sink": "128", "recent": "768",
                "target_sparsity": "0.75", "model": "t"}
        cases = [
            ({"leank.kept": good}, meta, None),
            ({"other": good}, meta, 'no tensor "leank.kept"'),
            ({"leank.kept": good}, {k: v for k, v in meta.items() if k != "format"},
             'metadata has no "format"'),
            ({"leank.kept": good}, dict(meta, format="x"), 'format is "x"'),
            ({"leank.kept": good.astype(np.float32)}, meta, "dtype float32, expected uint8"),
            ({"leank.kept": good[0]}, meta, "has shape [2, 32]"),
            ({"leank.kept": good * 2}, meta, "value 2 at (layer, head, channel) (0, 0, 0)"),
            ({"leank.kept": good}, dict(meta, align="32"), "keeps 16 channels, not a multiple of align 32"),
            ({"leank.kept": good}, dict(meta, sink="-1"), '"sink" must be a positive integer'),
            ({"leank.kept": good}, dict(meta, recent="x"), '"recent" must be a positive integer'),
            # The C++ loader reads an int: "²" was a traceback (isdigit, then int()), and a
            # value beyond INT32_MAX passed info but fails the server's load.
            ({"leank.kept": good}, dict(meta, sink="\u00b2"), '"sink" must be a positive integer'),
            ({"leank.kept": good}, dict(meta, recent="4294967296"),
             '"recent" must be a positive integer'),
            ({"leank.kept": good}, dict(meta, target_sparsity="1.5"), '"target_sparsity" must be'),
        ]
        for i, (tensors, md, needle) in enumerate(cases):
            with self.subTest(needle=needle):
                path = self.path(f"m{i}.safetensors")
                save_file(tensors, path, metadata=md)
                if needle is None:
                    r = run("info", path)
                    self.assertEqual(r.returncode, 0, r.stderr)
                    self.assertIn("heads by kept count {0: 3, 16: 1}", r.stdout)
                else:
                    self.refused(["info", path], needle)
        self.refused(["info", self.path("nosuch.safetensors")], "no such file")
        self.refused(["info", LLAMA_JSON], "not a readable safetensors file")
        with open(self.path("trunc.safetensors"), "wb") as f, \
                open(os.path.join(DATA, "llama3.1-8b-instruct.leank.safetensors"), "rb") as g:
            f.write(g.read()[:300])
        self.refused(["info", self.path("trunc.safetensors")], "not a readable safetensors file")

    @unittest.skipUnless(HAVE_TORCH, "needs torch")
    def test_bad_pth_files(self):
        import torch
        out = self.path("o.safetensors")
        torch.save([1, 2], self.path("list.pth"))
        torch.save(torch.ones(2, 3), self.path("flat.pth"))
        torch.save(torch.full((2, 2, 32), 0.5), self.path("half.pth"))
        torch.save({"a": torch.ones(1, 1, 16), "b": torch.ones(1, 1, 16)}, self.path("two.pth"))
        with open(self.path("junk.pth"), "wb") as f:
            f.write(b"not a torch file at all")
        self.refused(["import", self.path("list.pth"), out], "holds a list, expected a tensor")
        self.refused(["import", self.path("flat.pth"), out], "tensor shape [2, 3]")
        self.refused(["import", self.path("half.pth"), out], "value 0.5 at (layer, head, channel) (0, 0, 0)")
        self.refused(["import", self.path("two.pth"), out], "expected one tensor, found keys ['a', 'b']")
        self.refused(["import", self.path("junk.pth"), out], "junk.pth: not a readable torch file")
        ok = torch.zeros(2, 2, 32)
        ok[0, 0, :16] = 1
        torch.save({"mask": ok}, self.path("ok.pth"))
        r = run("import", self.path("ok.pth"), out, "--align", "16")
        self.assertEqual(r.returncode, 0, r.stderr)
        self.assertEqual(read(out)[0].sum(), 16)


def current_umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask


if __name__ == "__main__":
    if not HAVE_DEPS:
        print("SKIP: needs numpy and safetensors")
        sys.exit(77)
    unittest.main()
