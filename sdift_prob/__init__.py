"""sdift-prob: probabilistic SDIFT in JAX.

Stages, one place each: `sdift_prob.data` (fields, observations, simulators) →
`sdift_prob.ftm` (functional Tucker model) → `sdift_prob.gpsd` (GP-based sequential
diffusion prior) → `models` (NumPyro models) → `inference` (DPS/MPDPS, ArviZ reports).
"""

from importlib.metadata import PackageNotFoundError, version

try:
    __version__ = version("sdift-prob")
except PackageNotFoundError:  # running from a source tree that is not installed
    __version__ = "0.0.0+unknown"
