"""A loaded run directory as the samplers need it: `Run` (the fitted FTM, the trained GPSD prior
and the quantities derived from them once: GP prior of the cores, core moments, representation
error, prior spectrum, training range, fitted message kernel) and `open_run`.

The run directory's format (manifest, checksums, files) is `sdift_prob.run` and
`sdift_prob.ftm.bundle`; this module is the inference side's view of it, kept in `inference/`
because its derived quantities use `models` and `inference` objects (the stages import downwards).
"""

from __future__ import annotations

import dataclasses
import functools
import os
from pathlib import Path
from typing import Any

import numpy as np

from models.gp_prior import GPPriorParams
from sdift_prob.errors import InputError
from sdift_prob.ftm import FTMFit, load_run
from sdift_prob.gp import TemporalKernel, fit_lengthscale
from sdift_prob.gpsd import load_prior
from sdift_prob.run import read_manifest

from . import self_checks
from .preconditioners import PriorSpectrum



@dataclasses.dataclass(frozen=True, eq=False)
class Run:
    """A loaded run directory: the fitted FTM and, when trained, the GPSD prior."""

    ftm: FTMFit
    prior: Any | None
    path: Path | None = None
    provenance: dict[str, Any] = dataclasses.field(default_factory=dict)  # how the FTM was fitted

    @property
    def space_dims(self) -> tuple[str, ...]:
        return tuple(self.ftm.model.space_dims)

    @property
    def core_shape(self) -> tuple[int, ...]:
        return tuple(int(r) for r in self.ftm.cores.shape[2:])

    def normalise_time(self, t: Any) -> np.ndarray:
        t0, t1 = self.ftm.time_domain
        span = (t1 - t0) if t1 != t0 else 1.0
        return (np.asarray(t, dtype=np.float64) - t0) / span

    @functools.cached_property
    def gp_params(self) -> Any:
        """GP temporal prior fitted to the training cores (the `gp` baseline), computed once."""
        return GPPriorParams.from_training_cores(np.asarray(self.ftm.cores), self.ftm.normalised_times())


    @functools.cached_property
    def core_moments(self) -> tuple[np.ndarray, np.ndarray]:
        """Mean `(D,)` and covariance `(D, D)` of the training cores over trajectories and time
        (FTM units): the Gaussian stand-in of the prior that σ is inferred under
        (`inference.sigma_marginal`), computed once."""
        cores = np.asarray(self.ftm.cores, dtype=np.float64)
        flat = cores.reshape(-1, int(np.prod(self.core_shape)))
        return flat.mean(axis=0), np.atleast_2d(np.cov(flat, rowvar=False))

    @functools.cached_property
    def representation_error(self) -> tuple[float, str]:
        """The FTM's own error at a point (std, normalised field units) and where it comes from.

        The basis cannot represent a field exactly; data assimilation calls this the
        representativeness error and adds it to the observation error, which keeps a posterior
        from over-fitting precise data through the basis. It is the RMSE on held-out entries at
        fit time, recorded with the run by `fit_ftm` since this version (its `FTMFit.metadata`);
        for older runs the held-out VRMSE of `sdift fit-ftm`'s summary stands in for it (exact
        when every training trajectory has the training set's variance; larger otherwise, i.e.
        on the safe side).
        """
        recorded = self.provenance.get("representation_error") if isinstance(self.provenance, dict) else None
        if isinstance(recorded, dict) and recorded.get("std") is not None:
            return float(recorded["std"]), str(recorded.get("source", "recorded with the run"))
        fit = self.provenance.get("fit", {}) if isinstance(self.provenance, dict) else {}
        for key in ("holdout_vrmse", "full_vrmse"):
            if fit.get(key) is not None:
                return float(fit[key]), f"{key} at fit time (per-trajectory variance taken as the training variance)"
        return 0.0, "unknown: the run records no fit error, none added"

    @functools.cached_property
    def prior_spectrum(self) -> Any:
        """Principal axes and variances of the training cores' per-frame covariance in the
        prior's normalised units (`inference.preconditioners.PriorSpectrum`, for the MMPS
        preconditioner), computed once; None without a prior."""
        if self.prior is None:
            return None
        cores = np.asarray(self.ftm.cores, dtype=np.float64)
        x = (cores - float(self.prior.core_mean)) / float(self.prior.core_std)
        return PriorSpectrum.from_samples(x.reshape(-1, int(np.prod(self.core_shape))))

    @functools.cached_property
    def training_range(self) -> tuple[float, float]:
        """`(min, max)` of the training fields as decoded by the FTM, normalised units (a subset
        of the trajectories; `inference.self_checks.training_range`), computed once."""
        return self_checks.training_range(self.ftm.model, self.ftm.cores, self.ftm.grids)

    @functools.cached_property
    def fitted_message_kernel(self) -> Any:
        """MPDPS message kernel fitted to the training cores: Matérn-1/2 over normalised time,
        lengthscale by marginal likelihood on the standardised cores (`sdift_prob.gp.fit_lengthscale`).

        The reference kernel `exp(−Δt²)` assumes every frame is strongly correlated with every
        other one; on fields that decorrelate between time stamps (fluid2d: lag-1 core
        correlation ≈ 0.5) its leave-one-out messages then carry wrong evidence. The Matérn-1/2
        (Markov) kernel fitted to the training cores gives each frame's LOO prediction from its
        neighbours only, with weights bounded by 1/2, at the correlation the data show."""
        cores = np.asarray(self.ftm.cores, dtype=np.float64)
        z = (cores - cores.mean(axis=(0, 1))) / cores.std(axis=(0, 1))
        return fit_lengthscale(z, self.ftm.normalised_times(), TemporalKernel("matern12", 0.1, 1.0),
                               fit_variance=False)


def open_run(run_dir: str | os.PathLike, *, require_prior: bool = False) -> Run:
    """Load a run directory written by `sdift fit-ftm` (and `sdift train-prior`).

    **Arguments:**

    - `run_dir`: the folder.
    - `require_prior`: raise when the run has no trained prior (needed by `mpdps`/`dps`).
    """
    path = Path(run_dir)
    ftm = load_run(path)
    sections = read_manifest(path, verify=False).get("sections", {})  # load_run verified it
    prior = None
    if "prior" in sections:
        prior = load_prior(path)
    elif require_prior:
        raise InputError(
            f"run_dir: {path} has no trained prior; run `sdift train-prior {path}` first "
            "(or use sampler='gp', which needs only the FTM)"
        )
    provenance = sections.get("ftm", {}).get("info", {}).get("extra", {})
    return Run(ftm=ftm, prior=prior, path=path, provenance=provenance)
