"""Gaussian processes over time: kernels, jittered Cholesky factors, GP noise, leave-one-out weights.

One GP over (normalised) time is used in three places: it correlates the diffusion noise of the
GPSD prior, it carries evidence between time stamps in MPDPS (leave-one-out weights), and it is
the temporal prior of the conjugate `gp` baseline. The covariances come from GPJax kernels; the
random variables live in NumPyro (`models/`).

Jitter convention: every jitter here is *relative* to the mean of the kernel matrix's diagonal,
`K + jitter * mean(diag K) * I`, so it means the same thing whatever the kernel variance. For a
unit-variance kernel it is the plain `K + jitter * I` of the reference code (`1e-5`).

The pieces: `sdift_prob.gp.kernels` (`TemporalKernel`, `validate_times`), `sdift_prob.gp.linalg`
(jittered Cholesky factors, `gram_float64`, `gp_noise`, `loo_weights`), `sdift_prob.gp.fit`
(`fit_lengthscale`).
"""

from __future__ import annotations

from .kernels import (
    KERNEL_NAMES as KERNEL_NAMES,
    TemporalKernel as TemporalKernel,
    validate_times as validate_times,
)
from .linalg import (
    cholesky_jittered as cholesky_jittered,
    cholesky_with_jitter as cholesky_with_jitter,
    gp_noise as gp_noise,
    gram_float64 as gram_float64,
    loo_weights as loo_weights,
    time_cholesky as time_cholesky,
)
from .fit import (
    fit_lengthscale as fit_lengthscale,
)

__all__ = [
    "KERNEL_NAMES",
    "TemporalKernel",
    "validate_times",
    "cholesky_with_jitter",
    "cholesky_jittered",
    "time_cholesky",
    "gram_float64",
    "gp_noise",
    "loo_weights",
    "fit_lengthscale",
]
