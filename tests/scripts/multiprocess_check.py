"""One of two processes joined by `jax.distributed.initialize` on this machine (one CPU device
each; see tests/test_multidevice.py): draws sharded across the processes, saved for comparison
with a single process.

Usage: python tests/scripts/multiprocess_check.py PORT PROCESS_ID OUT.npz
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import jax  # noqa: E402
import numpy as np  # noqa: E402

from sdift_prob.cli import init_distributed  # noqa: E402


def linear_draws(**kw) -> np.ndarray:
    """Posterior draws of a small linear-Gaussian problem with an analytic denoiser."""
    from inference.guided import GuidedConfig, sample_posterior
    from sdift_prob.data.observations import PaddedObservations

    rng = np.random.default_rng(0)
    M, P, D = 4, 3, 2
    padded = PaddedObservations(times=np.arange(M, dtype=float), values=rng.normal(size=(M, P)),
                                coords=np.zeros((M, P, 1)), noise_scale=np.ones((M, P)), mask=rng.random((M, P)) < 0.7)

    def white(x, sigma, t):
        return 0.25 / (0.25 + sigma**2) * x

    draws, _ = sample_posterior(jax.random.key(2), white, rng.normal(size=(M, P, D)), padded, core_mean=0.3,
                                core_std=2.0, times_norm=np.linspace(0.0, 1.0, M), noise_chol=np.eye(M),
                                config=GuidedConfig(method="mpdps", guidance="fisher", num_steps=6, sigma_y=0.3), num_draws=4, **kw)
    return draws


if __name__ == "__main__":
    port, pid, out = sys.argv[1], int(sys.argv[2]), sys.argv[3]
    init_distributed(f"localhost:{port}", 2, pid)
    assert len(jax.devices()) == 2 and len(jax.local_devices()) == 1
    np.savez(out, draws=linear_draws(), devices=len(jax.devices()))
    jax.distributed.shutdown()
