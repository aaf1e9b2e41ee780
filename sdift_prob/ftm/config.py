"""Settings of the Functional Tucker Model fit (`FTMConfig`) and their checks."""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from ..errors import bad_input
from ..validation import check_count
from .tucker import check_ranks


@dataclasses.dataclass(frozen=True)
class FTMConfig:
    """Settings of `fit_ftm` (defaults tuned on the default ocean and fluid2d datasets).

    - `ranks`: optional; when given it must equal the `ranks` argument of `fit_ftm` (the
      stored config always carries the ranks used).
    - `width`, `depth`, `omega`: coordinate network size and sine frequency.
    - `lr`: peak learning rate of the networks (AdamW with `weight_decay`).
    - `lr_cores`: peak learning rate of the cores (Adam per trajectory; the cores need a
      larger step than the networks).
    - `warmup`: linear warm-up in optimiser steps, then cosine decay to 1% of the peak.
    - `epochs`: passes over the trajectories; `steps`, when set, replaces it (rounded up to
      whole epochs).
    - `batch_trajectories`: trajectories per minibatch (capped at the number available).
    - `beta_tv`: weight of the TV term. The data term is a mean squared error in normalised
      units (order 1 at the start) and TV is averaged over the trajectories of a batch, so
      `beta_tv` is the weight of one trajectory's total core variation relative to the
      per-entry squared error; the reference's 1e-7 multiplies a sum over a batch of raw
      cores and is not comparable. On the default datasets 1e-4 and 0 fit equally well
      (within noise) while 1e-2 already costs accuracy on the fast-changing fluid2d field.
    - `core_init_scale`: std of the normal initial cores (small: the fit starts from the mean).
    - `train_fraction`: fraction of the entries that are not held out used for training
      (1.0: all; 0.1 reproduces the reference's 10% mask).
    - `holdout_fraction`: fraction of all entries held out for early stopping (0 disables it).
    - `eval_every`: epochs between held-out evaluations; `patience`: evaluations without
      improvement before stopping (the best parameters are kept).
    - `margin`: allowed extrapolation of coordinates, as a fraction of the domain width.
    """

    ranks: tuple[int, ...] | None = None
    width: int = 64
    depth: int = 2
    omega: float = 20.0
    lr: float = 2e-3
    lr_cores: float = 0.2
    weight_decay: float = 1e-4
    warmup: int = 100
    epochs: int = 400
    steps: int | None = None
    batch_trajectories: int = 16
    beta_tv: float = 1e-4
    core_init_scale: float = 1e-2
    train_fraction: float = 1.0
    holdout_fraction: float = 0.05
    eval_every: int = 5
    patience: int = 10
    margin: float = 0.05

    def __post_init__(self) -> None:
        if self.ranks is not None:
            if isinstance(self.ranks, (str, bytes)) or not isinstance(self.ranks, Sequence):
                raise bad_input("ranks", "None or a sequence of positive integers", self.ranks)
            object.__setattr__(self, "ranks", check_ranks(self.ranks, len(self.ranks)))
        for name in ("width", "depth", "epochs", "batch_trajectories", "eval_every", "patience"):
            check_count(getattr(self, name), name)
        check_count(self.warmup, "warmup", minimum=0)
        if self.steps is not None:
            check_count(self.steps, "steps")
        for name in ("omega", "lr", "lr_cores"):
            _check_float(name, getattr(self, name), lo=0.0, lo_open=True)
        for name in ("weight_decay", "beta_tv", "core_init_scale", "margin"):
            _check_float(name, getattr(self, name), lo=0.0)
        _check_float("train_fraction", self.train_fraction, lo=0.0, lo_open=True, hi=1.0)
        _check_float("holdout_fraction", self.holdout_fraction, lo=0.0, hi=1.0, hi_open=True)

    def to_dict(self) -> dict[str, Any]:
        """JSON-serialisable dict (ranks as a list)."""
        d = dataclasses.asdict(self)
        if d["ranks"] is not None:
            d["ranks"] = list(d["ranks"])
        return d

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> FTMConfig:
        """Inverse of `to_dict`; unknown keys are an `InputError`."""
        if not isinstance(d, dict):
            raise bad_input("d", "a dict of FTMConfig fields", d)
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(d) - known)
        if unknown:
            raise bad_input("d", f"only FTMConfig fields {sorted(known)}", f"unknown keys {unknown}")
        kw = dict(d)
        if kw.get("ranks") is not None:
            kw["ranks"] = tuple(kw["ranks"])
        return cls(**kw)


def _check_float(
    name: str, value: object, *, lo: float, lo_open: bool = False, hi: float = math.inf, hi_open: bool = False
) -> None:
    ok = not isinstance(value, bool) and isinstance(value, (int, float, np.integer, np.floating))
    if ok:
        v = float(value)  # type: ignore[arg-type]
        ok = math.isfinite(v) and (v > lo if lo_open else v >= lo) and (v < hi if hi_open else v <= hi)
    if not ok:
        lb = "(" if lo_open else "["
        ub = ")" if hi_open else "]"
        raise bad_input(name, f"a number in {lb}{lo:g}, {hi:g}{ub}", value)

