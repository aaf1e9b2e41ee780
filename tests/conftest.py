"""Test-suite settings: CPU, headless matplotlib, and a persistent JAX compilation cache.

The cache (`<repo>/.cache/jax`, git-ignored) keeps the compiled XLA programs of one run for the
next: a warm `make test` skips most compilation. It is set through environment variables before
JAX is imported, so subprocesses (CLI tests, multi-device and multi-process tests) and the
notebook kernels of tests/test_notebooks.py use it too. A cached executable is the same program,
so results do not change. Set `JAX_COMPILATION_CACHE_DIR` yourself to move it, or
`JAX_ENABLE_COMPILATION_CACHE=false` to turn it off.
"""

import os
from pathlib import Path

JAX_CACHE_DIR = Path(__file__).resolve().parents[1] / ".cache" / "jax"
JAX_CACHE_ENV = {
    "JAX_COMPILATION_CACHE_DIR": str(JAX_CACHE_DIR),
    # programs that compile in under a second are not worth a file each
    "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS": "1",
}
try:  # JAX bounds the cache only with filelock (a test dependency); without it a size makes every read warn
    import filelock  # noqa: F401

    JAX_CACHE_ENV["JAX_COMPILATION_CACHE_MAX_SIZE"] = str(2 * 1024**3)  # bytes; least recently used go first
except ImportError:
    pass

os.environ.setdefault("JAX_PLATFORMS", "cpu")
os.environ.setdefault("MPLBACKEND", "Agg")
for _name, _value in JAX_CACHE_ENV.items():
    os.environ.setdefault(_name, _value)

import jax  # noqa: E402
import pytest  # noqa: E402


@pytest.fixture
def key():
    return jax.random.key(0)


# A separate process holding the reservations of some output paths (`sdift_prob.io.reserve`), as a
# second `sdift ... --out PATH` started meanwhile meets them. It imports only sdift_prob.io (no JAX).
_HOLDER = """
import contextlib, sys
from sdift_prob.io import reserve
with contextlib.ExitStack() as stack:
    for p in sys.argv[1:]:
        stack.enter_context(reserve(p, argument="--out"))
    print("held", flush=True)
    sys.stdin.readline()
"""


@pytest.fixture
def held_elsewhere():
    """`held_elsewhere(*paths)` starts a process that reserves `paths` and keeps them until the
    test ends (or `.release()` is called); returns its `Popen`."""
    import subprocess
    import sys

    procs = []
    root = Path(__file__).resolve().parents[1]

    def start(*paths):
        env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(root), os.environ.get("PYTHONPATH")]))}
        proc = subprocess.Popen([sys.executable, "-c", _HOLDER, *map(str, paths)], cwd=root, env=env, text=True,
                                stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
        procs.append(proc)
        assert proc.stdout.readline().strip() == "held", proc.stderr.read()

        def release():
            out, err = proc.communicate("\n", timeout=30)
            assert proc.returncode == 0, err

        proc.release = release
        return proc

    yield start
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
