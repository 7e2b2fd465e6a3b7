"""What the project's Python command-line tools share: bad input as one line (Failure), JSON
files read with every way of failing named, outputs written through a temporary file renamed
into place, and argparse types that check ranges.

Used by tools/import_leank_mask.py, tools/make_random_llama.py, tools/plot_bench.py and
bench/kernels/results.py (each catches Failure in main and prints `PROG: message`). Standard
library only: the model-prep image copies it next to import_leank_mask.py.
"""
import argparse
import json
import math
import os
import tempfile


class Failure(Exception):
    """A bad input, named in one line."""


def fail(msg):
    raise Failure(msg)


def is_int(v):
    return isinstance(v, int) and not isinstance(v, bool)


def is_number(v):
    """A finite int or float (not a bool)."""
    return isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)


def read_json_file(path, what):
    """The parsed JSON of `path`; Failure naming the file when it is missing, a folder,
    unreadable, not UTF-8 or not JSON. `what` names the expected file ("a masks JSON file")."""
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        fail(f"{path}: no such file")
    except IsADirectoryError:
        fail(f"{path}: is a directory, expected {what}")
    except OSError as e:
        fail(f"{path}: cannot read: {e.strerror or e}")
    except UnicodeDecodeError:
        fail(f"{path}: not {what} (not UTF-8 text)")
    except json.JSONDecodeError as e:
        fail(f"{path}: not {what}: invalid JSON at line {e.lineno} column {e.colno}: {e.msg}")


def replace_atomically(path, write):
    """Calls write(binary file object) on a temporary file in path's folder, then renames it
    over `path`: a reader sees the old file or the whole new one, never a part. Failure names
    `path` when it cannot be written (the temporary file is removed)."""
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        fail(f"{path}: is a directory")
    if not os.path.isdir(folder):
        fail(f"{path}: folder {folder} does not exist")
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".",
                                   suffix=".tmp")
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600; these are ordinary files
        os.replace(tmp, path)
        tmp = None
    except OSError as e:
        fail(f"{path}: cannot write: {e.strerror or e}")
    finally:
        if tmp is not None and os.path.exists(tmp):
            os.unlink(tmp)


def int_arg(lo):
    """An argparse type: an integer >= lo."""
    def parse(text):
        try:
            v = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not an integer")
        if v < lo:
            raise argparse.ArgumentTypeError(
                f"{text} must be a positive integer" if lo == 1 else f"{text} must be >= {lo}")
        return v
    return parse


def float_arg(lo, hi=math.inf, lo_open=False):
    """An argparse type: a finite number in [lo, hi] ((lo, hi] when lo_open)."""
    def parse(text):
        try:
            v = float(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number")
        if not math.isfinite(v) or v > hi or (v <= lo if lo_open else v < lo):
            if lo_open and hi == math.inf and lo == 0:
                raise argparse.ArgumentTypeError(f"{text} must be a positive number")
            raise argparse.ArgumentTypeError(
                f"{text} must be in {'(' if lo_open else '['}{lo:g}, {hi:g}]")
        return v
    return parse
