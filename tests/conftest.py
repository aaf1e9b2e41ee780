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
