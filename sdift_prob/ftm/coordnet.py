"""SIREN-style coordinate networks: one per spatial mode, mapping a coordinate to R_k features."""

from __future__ import annotations

import math

import equinox as eqx
import jax
import jax.numpy as jnp
from jaxtyping import Array, Float, PRNGKeyArray

from ..validation import check_count, check_positive


class CoordinateNet(eqx.Module):
    """Sine MLP f_k: [0, 1] -> R^rank, the latent function of one Tucker mode.

    `depth` sine layers h <- sin(omega (W h + b)), then a linear head and tanh (as in the
    reference SDIFT code). Initialisation follows SIREN: the first layer draws weights from
    U(-1/fan_in, 1/fan_in), later sine layers from U(-sqrt(6/fan_in)/omega, sqrt(6/fan_in)/omega),
    so every pre-activation stays of order one whatever the width; the head uses the usual
    U(-1/sqrt(fan_in), 1/sqrt(fan_in)) so that features start of order 0.1-1 (inside tanh's
    linear range) rather than 1/omega.
    """

    weights: tuple[Float[Array, "out in"], ...]
    biases: tuple[Float[Array, " out"], ...]
    head_weight: Float[Array, "rank width"]
    head_bias: Float[Array, " rank"]
    rank: int = eqx.field(static=True)
    width: int = eqx.field(static=True)
    depth: int = eqx.field(static=True)
    omega: float = eqx.field(static=True)

    def __init__(
        self,
        rank: int,
        *,
        width: int = 64,
        depth: int = 2,
        omega: float = 20.0,
        key: PRNGKeyArray,
    ):
        """**Arguments:**

        - `rank`: number of output features R_k.
        - `width`: hidden width of every sine layer.
        - `depth`: number of sine layers (at least 1).
        - `omega`: frequency factor of the sine layers.
        - `key`: a typed PRNG key (`jax.random.key`).
        """
        self.rank = check_count(rank, "rank")
        self.width = check_count(width, "width")
        self.depth = check_count(depth, "depth")
        self.omega = check_positive(omega, "omega")
        shapes: list[tuple[int, ...]] = []
        bounds: list[float] = []
        fan_in = 1
        for layer in range(self.depth):
            w_bound = 1.0 / fan_in if layer == 0 else math.sqrt(6.0 / fan_in) / self.omega
            shapes += [(self.width, fan_in), (self.width,)]
            bounds += [w_bound, 1.0 / math.sqrt(fan_in)]
            fan_in = self.width
        shapes += [(self.rank, fan_in), (self.rank,)]
        bounds += [1.0 / math.sqrt(fan_in)] * 2
        # one draw for all parameters: a single random kernel to compile per network size
        sizes = [math.prod(s) for s in shapes]
        u = jax.random.uniform(key, (sum(sizes),), minval=-1.0, maxval=1.0)
        params = []
        offset = 0
        for shape, size, bound in zip(shapes, sizes, bounds):
            params.append(bound * u[offset : offset + size].reshape(shape))
            offset += size
        self.weights = tuple(params[0:-2:2])
        self.biases = tuple(params[1:-2:2])
        self.head_weight, self.head_bias = params[-2], params[-1]

    def __call__(self, x: Float[Array, " n"]) -> Float[Array, "n rank"]:
        """**Arguments:**

        - `x`: normalised coordinates, shape `(n,)`, nominally in `[0, 1]`.

        **Returns:** features of shape `(n, rank)`, each in `(-1, 1)`.
        """
        h = x[:, None]
        for w, b in zip(self.weights, self.biases):
            h = jnp.sin(self.omega * (h @ w.T + b[None, :]))
        return jnp.tanh(h @ self.head_weight.T + self.head_bias[None, :])
