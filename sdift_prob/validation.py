"""Checks of the arguments a user hands to a public function, shared by every stage.

Each check raises `InputError` (via `sdift_prob.errors.bad_input`) with a message that names the
argument and says what was expected, e.g. `num_draws: expected an integer >= 1, got 0`.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np

from .errors import bad_input

__all__ = ["check_count", "check_key", "check_positive"]


def check_key(key: Any, argument: str = "key") -> None:
    """`key` must be one typed PRNG key (`jax.random.key(seed)`, shape `()`); raw `uint32`
    keys (`jax.random.PRNGKey`), batches of keys and seeds are refused."""
    if not (isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key)) \
            or key.shape != ():
        raise bad_input(argument, "a single typed PRNG key from jax.random.key(seed)", key)


def check_count(value: Any, argument: str, minimum: int = 1) -> int:
    """`value` as an `int >= minimum`: a Python or NumPy integer, not a bool, not a float."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
        raise bad_input(argument, f"an integer >= {minimum}", value)
    return int(value)


def check_positive(value: Any, argument: str) -> float:
    """`value` as a finite `float > 0`: a Python or NumPy real number, not a bool."""
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    try:
        ok = ok and math.isfinite(float(value)) and value > 0
    except OverflowError:  # an int too large for a float
        ok = False
    if not ok:
        raise bad_input(argument, "a positive finite number", value)
    return float(value)
