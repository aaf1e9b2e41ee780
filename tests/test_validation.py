"""The shared argument checks (`sdift_prob.validation`) and the one-way imports of the data layer."""

import ast
from pathlib import Path

import jax
import numpy as np
import pytest

from sdift_prob.errors import InputError
from sdift_prob.validation import check_count, check_key, check_positive

DATA = Path(__file__).resolve().parents[1] / "sdift_prob" / "data"


def test_check_key_takes_one_typed_key_only():
    check_key(jax.random.key(0))
    for bad in (0, jax.random.PRNGKey(0), jax.random.split(jax.random.key(0), 2), None):
        with pytest.raises(InputError, match=r"^key: expected a single typed PRNG key from jax\.random\.key\(seed\)"):
            check_key(bad)
    with pytest.raises(InputError, match="^rng_key: expected"):
        check_key(1, "rng_key")


def test_check_count_is_an_int_not_a_bool():
    assert check_count(3, "n") == 3
    assert type(check_count(np.int64(3), "n")) is int
    assert check_count(0, "seed", minimum=0) == 0
    for bad in (0, -1, True, 1.0, "2", None):
        with pytest.raises(InputError, match="^n: expected an integer >= 1"):
            check_count(bad, "n")
    with pytest.raises(InputError, match="^n_bins: expected an integer >= 2, got 1"):
        check_count(1, "n_bins", minimum=2)


def test_check_positive_is_a_finite_number_above_zero():
    assert check_positive(np.float32(0.5), "omega") == 0.5 and check_positive(2, "omega") == 2.0
    for bad in (0, -1.0, True, float("inf"), float("nan"), "1", None, 10**400):
        with pytest.raises(InputError, match="^omega: expected a positive finite number"):
            check_positive(bad, "omega")


def _imported_modules(path: Path) -> set[str]:
    """Relative module names (`.x`, `..x`) imported anywhere in `path`, in functions too."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level:
            names.add("." * node.level + (node.module or ""))
    return names


def test_data_layer_imports_run_one_way():
    # fields <- observations <- sampling, readers: never back.
    assert not {".observations", ".sampling", ".readers"} & _imported_modules(DATA / "fields.py")
    assert not {".sampling", ".readers"} & _imported_modules(DATA / "observations.py")
    assert ".observations" in _imported_modules(DATA / "sampling.py")
    assert ".observations" in _imported_modules(DATA / "readers.py")
