"""Tests of tools/import_leank_mask.py (run by ctest; needs numpy and safetensors)."""

import os
import subprocess
import sys
import tempfile
import unittest

import numpy as np
from safetensors import safe_open
from safetensors.numpy import load_file

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


if __name__ == "__main__":
    unittest.main()
