"""What the simulators share: argument checks, seeds and keys, and wrapping arrays into a field collection."""

from __future__ import annotations

import importlib.metadata
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import jax
import numpy as np
import xarray as xr
from tqdm.auto import tqdm

from ...errors import NumericalError, bad_input
from ..fields import assign_split, make_field_dataset

# jax.random.key silently wraps seeds at 2**32 (2**32 gives the same key as 0).
MAX_SEED = 2**32 - 1
_VERSIONED = ("sdift-prob", "numpy", "jax", "exponax", "gsw", "xarray", "scipy")


def check_int(name: str, value: Any, *, minimum: int, maximum: int | None = None) -> int:
    """`value` as an int in `[minimum, maximum]`, else `InputError` naming `name`."""
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
        raise bad_input(name, "an int", value)
    if value < minimum or (maximum is not None and value > maximum):
        bound = f">= {minimum}" if maximum is None else f"in [{minimum}, {maximum}]"
        raise bad_input(name, f"an int {bound}", value)
    return int(value)


def check_range(name: str, value: Any, *, lo: float | None = None, hi: float | None = None,
                lo_open: bool = False) -> float:
    """`value` as a finite float with `lo <= value <= hi` (`lo < value` if `lo_open`)."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise bad_input(name, "a number", value)
    v = float(value)
    if not math.isfinite(v):
        raise bad_input(name, "a finite number", value)
    if lo is not None and (v <= lo if lo_open else v < lo):
        raise bad_input(name, f"a number {'>' if lo_open else '>='} {lo}", value)
    if hi is not None and v > hi:
        raise bad_input(name, f"a number <= {hi}", value)
    return v


def check_interval(name: str, value: Any, *, lo: float, hi: float, lo_open: bool = False) -> tuple[float, float]:
    """A pair `(a, b)` with `lo <= a <= b <= hi` (`lo < a` if `lo_open`): a range to draw from."""
    try:
        a, b = value
    except (TypeError, ValueError) as exc:
        raise bad_input(name, "a pair (min, max)", value) from exc
    a = check_range(f"{name}[0]", a, lo=lo, hi=hi, lo_open=lo_open)
    b = check_range(f"{name}[1]", b, lo=lo, hi=hi, lo_open=lo_open)
    if a > b:
        raise bad_input(name, "min <= max", value)
    return a, b


def check_choice(name: str, value: Any, allowed: Sequence[str]) -> tuple[str, ...]:
    """A non-empty tuple of distinct names from `allowed`."""
    if isinstance(value, str) or not isinstance(value, Sequence) or len(value) == 0:
        raise bad_input(name, f"a non-empty sequence of names from {tuple(allowed)}", value)
    names = tuple(value)
    bad = [v for v in names if v not in allowed]
    if bad:
        raise bad_input(name, f"names from {tuple(allowed)}", bad)
    if len(set(names)) != len(names):
        raise bad_input(name, "distinct names", names)
    return names


def resolve_n_test(n_test: Any, n_trajectories: int) -> int:
    """`n_test` checked against `n_trajectories` (default `n_trajectories // 6`)."""
    if n_test is None:
        return n_trajectories // 6
    return check_int("n_test", n_test, minimum=0, maximum=n_trajectories - 1)


def check_seed(seed: Any) -> int:
    """`seed` as an int in `[0, 2**32 - 1]`."""
    return check_int("seed", seed, minimum=0, maximum=MAX_SEED)


def trajectory_keys(seed: int, indices: np.ndarray) -> jax.Array:
    """Typed keys `(n,)`: key of trajectory `i` is `fold_in(fold_in(key(seed), 0), i)`.

    So trajectory `i` does not depend on how many trajectories are drawn or in what batches.
    """
    root = jax.random.fold_in(jax.random.key(seed), 0)
    return jax.vmap(lambda i: jax.random.fold_in(root, i))(np.asarray(indices, dtype=np.uint32))


def split_key(seed: int) -> jax.Array:
    """The key of the train/test permutation: a stream apart from the trajectory keys."""
    return jax.random.fold_in(jax.random.key(seed), 1)


def package_versions() -> dict[str, str]:
    versions = {}
    for name in _VERSIONED:
        try:
            versions[name] = importlib.metadata.version(name)
        except importlib.metadata.PackageNotFoundError:
            versions[name] = "not installed"
    return versions


def finish_collection(
    *,
    simulator: str,
    seed: int,
    parameters: Mapping[str, Any],
    values: np.ndarray,
    time: np.ndarray,
    space_coords: Mapping[str, np.ndarray],
    units: str,
    long_name: str,
    coord_units: Mapping[str, str],
    coord_long_names: Mapping[str, str],
    n_test: int,
    extra: Mapping[str, tuple[np.ndarray, str, str]] | None = None,
) -> xr.Dataset:
    """Wrap simulated arrays into a field collection with provenance and a train/test split.

    `extra` maps a data variable name to `(values, units, long_name)` of the same dims as
    `field` (e.g. ocean temperature next to sound speed).
    """
    ds = make_field_dataset(
        values,
        time,
        space_coords,
        units=units,
        long_name=long_name,
        coord_units=coord_units,
        coord_long_names=coord_long_names,
        provenance={
            "simulator": simulator,
            "parameters": dict(parameters),
            "seed": int(seed),
            "package_versions": json.dumps(package_versions(), sort_keys=True),
        },
    )
    dims = ds["field"].dims
    for name, (arr, var_units, var_long_name) in (extra or {}).items():
        if not np.isfinite(arr).all():
            raise bad_input(name, "finite values", f"{int((~np.isfinite(arr)).sum())} NaN/inf entries")
        ds[name] = (dims, arr, {"units": var_units, "long_name": var_long_name})
    return assign_split(ds, n_test=n_test, key=split_key(seed))


def run_batches(
    batch_fn: Callable[[jax.Array], Any], seed: int, n: int, batch_size: int, *, desc: str, progress: bool
) -> tuple[np.ndarray, ...]:
    """Run `batch_fn(keys (batch_size,))` over trajectories `0..n-1` in padded batches.

    Every call sees exactly `batch_size` keys, so each trajectory goes through the same compiled
    program whatever `n` is; padding trajectories are computed and dropped.
    """
    outputs: list[list[np.ndarray]] = []
    with tqdm(total=n, desc=desc, unit="traj", disable=not progress) as bar:
        for start in range(0, n, batch_size):
            stop = min(start + batch_size, n)
            keys = trajectory_keys(seed, np.arange(start, start + batch_size))
            result = jax.tree_util.tree_map(np.asarray, batch_fn(keys))
            if not outputs:
                outputs = [[] for _ in result]
            for store, arr in zip(outputs, result):
                store.append(arr[: stop - start])
            bar.update(stop - start)
    return tuple(np.concatenate(store, axis=0) for store in outputs)


def check_solver_finite(simulator: str, values: np.ndarray, params: np.ndarray, names: tuple[str, ...],
                        dt: float) -> None:
    """Raise `NumericalError` naming the first trajectory (and its parameters) whose solve blew up."""
    bad = ~np.isfinite(values).reshape(values.shape[0], -1).all(axis=1)
    if bad.any():
        i = int(np.flatnonzero(bad)[0])
        shown = ", ".join(f"{n}={params[i, k]:.4g}" for k, n in enumerate(names))
        raise NumericalError(
            f"{simulator}: the solver blew up in {int(bad.sum())} trajectories (first: {i}, {shown}); "
            f"use a smaller dt (now {dt})"
        )
