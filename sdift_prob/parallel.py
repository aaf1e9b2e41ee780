"""Devices: one place that decides how many devices a computation spreads over, and builds meshes.

Everything here is JAX's own engine (`jax.sharding.Mesh`, `NamedSharding`, `jax.shard_map`); no
`pmap`. Two kinds of parallelism are used in the package:

- **Independent work** (posterior draws): the batch axis is split over a 1-D mesh with axis
  `"draws"` by `jax.shard_map`; every device runs the same vmapped program on its slice. Each
  draw's arithmetic does not depend on the others, but XLA compiles the program for the smaller
  per-device batch and may order batched dots and convolutions differently, so the draws equal
  the 1-device draws to float32 rounding (often bitwise; not guaranteed). Several test
  trajectories at once (`inference.guided.sample_posterior_many`): the same over a mesh axis
  `"trajectories"`.
- **Data-parallel training** (FTM fit, GPSD prior): the minibatch is sharded over a 1-D mesh
  with axis `"batch"` with `jax.lax.with_sharding_constraint`, the parameters and optimiser
  state are replicated; XLA inserts the all-reduce of the gradients. The sums over the batch
  are then added in another order, so results agree with 1 device to float32 rounding
  (not bitwise).

`devices` arguments everywhere take `None` (automatic: all local devices when there is more
than one and the batch divides evenly, else one), an int (that many of `jax.devices()`, the
batch must divide evenly), or `1` (off).

Multi-host: after `jax.distributed.initialize(...)` on every host, `jax.devices()` lists the
devices of all hosts and the same code runs (see docs/SCALING.md).
"""

from __future__ import annotations

import warnings
from typing import Any

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from .errors import bad_input

__all__ = ["DRAWS_AXIS", "TRAJECTORY_AXIS", "BATCH_AXIS", "device_count", "resolve_devices", "mesh", "batch_sharding", "replicated"]

DRAWS_AXIS = "draws"
TRAJECTORY_AXIS = "trajectories"
BATCH_AXIS = "batch"


def device_count() -> int:
    """Number of devices JAX can use (all hosts after `jax.distributed.initialize`)."""
    return len(jax.devices())


def resolve_devices(devices: Any, batch: int, *, argument: str = "devices", what: str = "batch") -> int:
    """How many devices to spread a batch of `batch` items over.

    **Arguments:**

    - `devices`: `None` (automatic), or an int in `[1, device_count()]`.
    - `batch`: size of the axis to split (each device gets `batch / n`).
    - `argument`, `what`: names for error messages.

    **Returns:** `n >= 1`. With `devices=None`: all devices when more than one exists and `batch`
    divides evenly, else the largest divisor of `batch` not above the device count (a warning
    says so when that is fewer than all). An explicit int must divide `batch`.
    """
    available = device_count()
    if devices is None:
        if available == 1 or batch < 2:
            return 1
        n = max(d for d in range(1, available + 1) if batch % d == 0)
        if n < available:
            warnings.warn(
                f"{what} of {batch} does not divide over {available} devices; using {n} "
                f"(pick a {what} divisible by {available} to use all of them)",
                RuntimeWarning,
                stacklevel=3,
            )
        return n
    if isinstance(devices, bool) or not isinstance(devices, (int, np.integer)) or not 1 <= devices <= available:
        raise bad_input(argument, f"None (automatic) or an integer in [1, {available}] (jax.devices() has {available})",
                        devices)
    if batch % int(devices):
        raise bad_input(argument, f"a number of devices that divides the {what} ({batch})", devices)
    return int(devices)


def mesh(n: int, axis: str) -> Mesh:
    """A 1-D mesh over the first `n` devices of `jax.devices()` with axis name `axis`."""
    devs = jax.devices()
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or not 1 <= n <= len(devs):
        raise bad_input("n", f"an integer in [1, {len(devs)}]", n)
    return Mesh(np.asarray(devs[: int(n)]), (axis,))


def batch_sharding(m: Mesh, ndim: int) -> NamedSharding:
    """Sharding of an array of rank `ndim` split along its first axis over the mesh's one axis."""
    (axis,) = m.axis_names
    return NamedSharding(m, PartitionSpec(axis, *([None] * (ndim - 1))))


def replicated(m: Mesh) -> NamedSharding:
    """Sharding that keeps a full copy on every device of the mesh."""
    return NamedSharding(m, PartitionSpec())
