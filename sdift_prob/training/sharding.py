"""Data-parallel training: the minibatch split over a 1-D mesh axis `"batch"`, the parameters and
optimiser state replicated; XLA inserts the all-reduce of the gradients (see `sdift_prob.parallel`)."""

from __future__ import annotations

from typing import Any

import equinox as eqx
import jax
from jax.sharding import Mesh

from ..parallel import BATCH_AXIS, batch_sharding, replicated, resolve_devices
from ..parallel import mesh as device_mesh


def data_parallel(devices: Any, batch: int, *, what: str) -> tuple[int, Mesh | None]:
    """`(n, mesh)`: the number of devices a minibatch of `batch` items is split over (`devices`
    as in `sdift_prob.parallel.resolve_devices`; `what` names the batch in messages) and their
    `"batch"` mesh (None for one device)."""
    n = resolve_devices(devices, batch, what=what)
    return n, (device_mesh(n, BATCH_AXIS) if n > 1 else None)


def constrain(tree: Any, mesh: Mesh | None, *, batch: bool) -> Any:
    """Inside jit: split axis 0 of every array leaf over the mesh (`batch`) or replicate it;
    the identity without a mesh."""
    if mesh is None:
        return tree

    def one(x):
        if not eqx.is_array(x):
            return x
        return jax.lax.with_sharding_constraint(x, batch_sharding(mesh, x.ndim) if batch else replicated(mesh))

    return jax.tree_util.tree_map(one, tree)
