"""Where the training values of a fit come from: all in memory (`InMemory`) or read from disk one
minibatch at a time (`Streamed`), behind one interface.

Both hold a collection of `B` trajectories `(B, *trajectory shape)` and a `masks(lo, hi)`
function giving the (training, held-out) boolean masks of the trajectories `lo:hi`, and offer:

- `statistics()`: mean and std of the training entries, entry counts per trajectory and a
  fingerprint of the values (one pass over the data);
- `prepare(forward)`: fix the map from raw values to model units (e.g. a normaliser) before
  training;
- `host_blocks()`: `(lo, hi, raw values)` blocks of consecutive trajectories;
- `device_blocks()`: `(lo, hi, values, train mask, held-out mask)` blocks in model units as
  device arrays (evaluation passes);
- `run_epoch(key, whole_epoch=, one_batch=, order=)`: one pass of optimisation. In memory the
  whole epoch is one compiled call `whole_epoch(values, train mask, key)`; streamed, the host
  reads the minibatches of `order(key)` and calls `one_batch(idx, values, train mask)` for each.
  Both return the mean loss of the epoch as a float.

A streamed pass over data in memory gives bitwise the results of a streamed pass over the same
data on disk; it is not bitwise the in-memory pass (float32 rounding apart).
"""

from __future__ import annotations

import dataclasses
import hashlib
import math
from collections.abc import Callable, Iterator

import jax.numpy as jnp
import numpy as np
import xarray as xr

from ..streaming import TrajectoryReader

Masks = Callable[[int, int], tuple[np.ndarray, np.ndarray]]
Forward = Callable[[np.ndarray], np.ndarray]


@dataclasses.dataclass(frozen=True)
class EntryStats:
    """Training-entry statistics of a data source: `mean` and `std` of the raw training values
    (NaN when a trajectory has no training entry), `n_train` / `n_holdout` entries per trajectory
    `(B,)`, and `fingerprint`, a SHA-256 of the shape and values."""

    mean: float
    std: float
    n_train: np.ndarray
    n_holdout: np.ndarray
    fingerprint: str


def data_source(field: xr.DataArray, masks: Masks, *, stream: bool, chunk: int, argument: str = "fields"):
    """`Streamed` (read by a `TrajectoryReader`, `chunk` trajectories per block) or `InMemory`
    (float64 values) over the `field` DataArray `(trajectory, ...)`."""
    if stream:
        return Streamed(TrajectoryReader(field, argument), masks, chunk)
    return InMemory(np.asarray(field.values, dtype=np.float64), masks)


def _fingerprint(shape: tuple[int, ...], blocks: Iterator[tuple[int, int, np.ndarray]]) -> str:
    digest = hashlib.sha256(repr(shape).encode())
    for _, _, block in blocks:
        digest.update(np.ascontiguousarray(block).tobytes())
    return digest.hexdigest()


def _combine_moments(acc: tuple[float, float, float], x: np.ndarray) -> tuple[float, float, float]:
    """Chan et al.'s parallel update of (count, mean, sum of squared deviations) with a block."""
    n_a, mean_a, m2_a = acc
    n_b = float(x.size)
    if n_b == 0:
        return acc
    mean_b = float(x.mean())
    m2_b = float(((x - mean_b) ** 2).sum())
    n = n_a + n_b
    delta = mean_b - mean_a
    return n, mean_a + delta * n_b / n, m2_a + m2_b + delta**2 * n_a * n_b / n


def _counts(mask: np.ndarray) -> np.ndarray:
    return mask.reshape(mask.shape[0], -1).sum(axis=1)


class InMemory:
    """All values in host memory `(B, ...)`, moved to the device once by `prepare`."""

    streamed = False

    def __init__(self, values: np.ndarray, masks: Masks):
        self.values = values
        self.shape = tuple(values.shape)
        self.train, self.holdout = masks(0, self.shape[0])
        self._device: tuple | None = None

    def host_blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        yield 0, self.shape[0], self.values

    def statistics(self) -> EntryStats:
        n_train, n_holdout = _counts(self.train), _counts(self.holdout)
        mean = std = math.nan
        if n_train.min() > 0:
            train_vals = self.values[self.train]
            mean, std = float(train_vals.mean()), float(train_vals.std())
        return EntryStats(mean, std, n_train, n_holdout, _fingerprint(self.shape, self.host_blocks()))

    def prepare(self, forward: Forward) -> None:
        self._device = (jnp.asarray(forward(self.values), dtype=jnp.float32), jnp.asarray(self.train),
                        jnp.asarray(self.holdout))

    def device_blocks(self) -> Iterator[tuple]:
        yield 0, self.shape[0], *self._device

    def run_epoch(self, key, *, whole_epoch: Callable, one_batch: Callable, order: Callable) -> float:
        y, train, _ = self._device
        return float(whole_epoch(y, train, key))


class Streamed:
    """Values read from a `TrajectoryReader` when needed: `chunk` trajectories per block in the
    statistics and evaluation passes, one minibatch at a time in training."""

    streamed = True

    def __init__(self, reader, masks: Masks, chunk: int):
        self.reader = reader
        self.masks = masks
        self.chunk = chunk
        self.shape = tuple(reader.shape)
        self._forward: Forward | None = None

    def host_blocks(self) -> Iterator[tuple[int, int, np.ndarray]]:
        yield from self.reader.chunks(self.chunk)

    def statistics(self) -> EntryStats:
        """One pass over the file: moments of the training values, entry counts, fingerprint."""
        moments = (0.0, 0.0, 0.0)
        n_train = np.zeros(self.shape[0], np.int64)
        n_holdout = np.zeros(self.shape[0], np.int64)
        digest = hashlib.sha256(repr(self.shape).encode())
        for lo, hi, block in self.host_blocks():
            tr, ho = self.masks(lo, hi)
            moments = _combine_moments(moments, block[tr])
            n_train[lo:hi] = _counts(tr)
            n_holdout[lo:hi] = _counts(ho)
            digest.update(np.ascontiguousarray(block).tobytes())
        count, mean, m2 = moments
        std = math.sqrt(m2 / count) if count > 0 else 0.0
        return EntryStats(mean, std, n_train, n_holdout, digest.hexdigest())

    def prepare(self, forward: Forward) -> None:
        self._forward = forward

    def device_blocks(self) -> Iterator[tuple]:
        for lo, hi, block in self.host_blocks():
            tr, ho = self.masks(lo, hi)
            yield lo, hi, jnp.asarray(self._forward(block), dtype=jnp.float32), jnp.asarray(tr), jnp.asarray(ho)

    def batch(self, idx: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Values in model units and training mask of the trajectories `idx` (any order, repeats)."""
        vals = self.reader.read(idx)
        masks = [self.masks(int(b), int(b) + 1)[0] for b in idx]
        return np.asarray(self._forward(vals), dtype=np.float32), np.concatenate(masks)

    def run_epoch(self, key, *, whole_epoch: Callable, one_batch: Callable, order: Callable) -> float:
        losses = [one_batch(idx, *self.batch(idx)) for idx in order(key)]
        return float(jnp.mean(jnp.stack(losses)))
