"""The trained GPSD prior: EMA network + EDM settings + time kernel + core normalisation.

Normalisation: the network works on `x = (W − core_mean) / core_std` for FTM cores `W`, i.e.
`W = core_mean + core_std · x`. At training time `core_mean` is the mean of all training core
entries and `core_std` their standard deviation divided by `sigma_data`, so the normalised
training cores have standard deviation exactly `sigma_data` (EDM's assumption about the data).
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import Array, ArrayLike, Float, PRNGKeyArray

from ..errors import FormatError, InputError, bad_input
from ..gp import TemporalKernel, time_cholesky, validate_times
from ..io import atomic_file
from ..run import add_artifact, read_manifest, section_files
from ..training.checkpoint import load_checkpoint, read_header, write_tree_file
from .edm import EDMConfig, heun_sample, precondition
from .unet import TemporalUNet

PRIOR_KIND = "gpsd_prior"


class GPSDPrior(eqx.Module):
    """A trained GP-based sequential diffusion prior over Tucker-core sequences.

    **Fields:**

    - `net`: the (EMA) `TemporalUNet`.
    - `config`: `EDMConfig` (σ_data, schedule, jitter).
    - `kernel`: the `TemporalKernel` of the diffusion noise over normalised time.
    - `core_mean`, `core_std`: scalars of the core normalisation, `W = core_mean + core_std · x`
      (module docstring).
    - `core_shape`: `(R1, .., RK)`.
    """

    net: TemporalUNet
    config: EDMConfig = eqx.field(static=True)
    kernel: TemporalKernel = eqx.field(static=True)
    core_mean: float = eqx.field(static=True)
    core_std: float = eqx.field(static=True)
    core_shape: tuple[int, ...] = eqx.field(static=True)

    def __init__(self, net: TemporalUNet, config: EDMConfig, kernel: TemporalKernel, core_mean: float, core_std: float):
        if not isinstance(net, TemporalUNet):
            raise bad_input("net", "a TemporalUNet", type(net).__name__)
        if not isinstance(config, EDMConfig):
            raise bad_input("config", "an EDMConfig", type(config).__name__)
        if not isinstance(kernel, TemporalKernel):
            raise bad_input("kernel", "a TemporalKernel", type(kernel).__name__)
        if not math.isfinite(core_mean):
            raise bad_input("core_mean", "a finite number", core_mean)
        if not (math.isfinite(core_std) and core_std > 0):
            raise bad_input("core_std", "a finite positive number", core_std)
        self.net, self.config, self.kernel = net, config, kernel
        self.core_mean, self.core_std = float(core_mean), float(core_std)
        self.core_shape = tuple(net.core_shape)

    def normalise(self, cores: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """FTM core units → the network's units: `(W − core_mean) / core_std`."""
        return (jnp.asarray(cores) - self.core_mean) / self.core_std

    def denormalise(self, x: Float[ArrayLike, "*shape"]) -> Float[Array, "*shape"]:
        """The network's units → FTM core units: `core_mean + core_std · x`."""
        return jnp.asarray(x) * self.core_std + self.core_mean

    def denoise(
        self, x: Float[Array, "T *core"], sigma: Float[Array, ""] | float, t_norm: Float[Array, " T"]
    ) -> Float[Array, "T *core"]:
        """EDM denoiser D(x; σ) in normalised core units (jit-safe).

        **Arguments:**

        - `x`: noisy normalised core sequence `(T, R1, .., RK)`.
        - `sigma`: scalar noise level.
        - `t_norm`: normalised time stamps `(T,)`.

        **Returns:** the estimate of the clean normalised sequence, shape of `x`.
        """
        return precondition(self.net, x, sigma, t_norm, sigma_data=self.config.sigma_data)

    def noise_cholesky(self, times_norm: Float[ArrayLike, " M"]) -> Float[Array, "M M"]:
        """Cholesky factor of the noise kernel over `times_norm` (plus the configured jitter).

        Raises `InputError` for times that are not finite or not strictly increasing, and
        `NumericalError` (explaining near-duplicate time stamps) when the matrix is not positive
        definite even with jitter.
        """
        t = validate_times(times_norm, "times_norm")
        return time_cholesky(self.kernel, t, self.config.jitter)

    def sample(
        self,
        key: PRNGKeyArray,
        times_norm: Float[ArrayLike, " M"],
        num_draws: int,
        num_steps: int | None = None,
        *,
        batch_size: int | None = None,
        progress: bool = False,
    ) -> Float[Array, "num_draws M *core"]:
        """Unconditional draws of core sequences at any (irregular, longer) time grid.

        Draw `i` uses `jax.random.split(key, num_draws)[i]`, so the draws do not depend on
        `batch_size`.

        **Arguments:**

        - `key`: typed PRNG key.
        - `times_norm`: normalised time stamps `(M,)`, finite and strictly increasing.
        - `num_draws`: number of draws (≥ 1).
        - `num_steps`: sampler steps (default `config.num_steps`).
        - `batch_size`: draws per vmapped batch (default: all at once).
        - `progress`: a progress bar over the draws, advanced batch by batch (`tqdm.auto`).

        **Returns:** `(num_draws, M, R1, .., RK)` in FTM core units.
        """
        if not isinstance(num_draws, (int, np.integer)) or num_draws < 1:
            raise bad_input("num_draws", "a positive integer", num_draws)
        num_steps = self.config.num_steps if num_steps is None else num_steps
        if not isinstance(num_steps, (int, np.integer)) or num_steps < 1:
            raise bad_input("num_steps", "a positive integer", num_steps)
        batch_size = int(num_draws) if batch_size is None else batch_size
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise bad_input("batch_size", "a positive integer", batch_size)
        chol = self.noise_cholesky(times_norm)
        t = jnp.asarray(validate_times(times_norm, "times_norm"), jnp.float32)
        keys = jax.random.split(key, int(num_draws))
        chunks = []
        from tqdm.auto import tqdm

        bar = tqdm(total=int(num_draws), desc="prior sampling", unit="draw", disable=not progress)
        for start in range(0, int(num_draws), int(batch_size)):
            part = keys[start : start + batch_size]
            n = part.shape[0]
            if n < batch_size:  # pad the last batch so every batch has one compiled shape
                part = jnp.concatenate([part, jnp.broadcast_to(part[-1:], (batch_size - n,))])
            chunks.append(_draws(self, part, t, chol, int(num_steps))[:n])
            chunks[-1].block_until_ready()
            bar.update(n)
        bar.close()
        return self.denormalise(jnp.concatenate(chunks, axis=0))


@eqx.filter_jit
def _draws(prior: GPSDPrior, keys, t, chol, num_steps: int):
    def one(k):
        return heun_sample(prior.denoise, k, t, prior.core_shape, chol, prior.config, num_steps=num_steps)

    return jax.vmap(one)(keys)


# ---- files -------------------------------------------------------------------------------------


def prior_header(prior: GPSDPrior) -> dict[str, Any]:
    """JSON-ready description of a prior: everything except the network weights."""
    return {
        "sdift_kind": PRIOR_KIND,
        "net": prior.net.hyperparameters(),
        "edm": prior.config.to_dict(),
        "kernel": prior.kernel.to_dict(),
        "core_mean": prior.core_mean,
        "core_std": prior.core_std,
        "core_shape": list(prior.core_shape),
    }


def write_prior_file(path: str | os.PathLike, prior: GPSDPrior) -> None:
    """Write `prior` (header + EMA network weights) to `path` (not atomic; see `save_prior_file`)."""
    if not isinstance(prior, GPSDPrior):
        raise bad_input("prior", "a GPSDPrior", type(prior).__name__)
    write_tree_file(path, prior_header(prior), prior.net)


def save_prior_file(path: str | os.PathLike, prior: GPSDPrior, *, overwrite: bool = False) -> Path:
    """Atomically write a prior to one file (readable with `load_prior_file`)."""
    with atomic_file(path, overwrite=overwrite) as tmp:
        write_prior_file(tmp, prior)
    return Path(path)


def build_net_like(hyper: dict[str, Any]) -> TemporalUNet:
    """Skeleton of a `TemporalUNet` (shapes only, no computation) from its hyperparameters."""
    try:
        kwargs = dict(hyper)
        core_shape = tuple(kwargs.pop("core_shape"))
        return eqx.filter_eval_shape(lambda: TemporalUNet(core_shape, key=jax.random.key(0), **kwargs))
    except (KeyError, TypeError) as exc:
        raise bad_input("hyperparameters", "the TemporalUNet settings saved with the prior", hyper) from exc


def load_prior_file(path: str | os.PathLike) -> GPSDPrior:
    """Read a prior written by `save_prior_file` / `write_prior_file`."""
    header = read_header(path, kind=PRIOR_KIND)
    like = build_net_like(header["net"])
    _, net = load_checkpoint(path, like, kind=PRIOR_KIND)
    prior = GPSDPrior(
        net,
        EDMConfig.from_dict(header["edm"]),
        TemporalKernel.from_dict(header["kernel"]),
        header["core_mean"],
        header["core_std"],
    )
    if list(prior.core_shape) != list(header["core_shape"]):
        raise InputError(f"{path}: network core shape {prior.core_shape} differs from the header's {header['core_shape']}")
    return prior


# ---- the prior inside a run directory ------------------------------------------------------------

PRIOR_SECTION = "prior"
PRIOR_FILE = "prior.eqx"
_FTM_SECTION = "ftm"


def _ftm_facts(run_dir: Path) -> tuple[list[int], str | None]:
    manifest = read_manifest(run_dir, verify=True)
    ftm = manifest["sections"].get(_FTM_SECTION)
    if ftm is None:
        raise InputError(f"run_dir: {run_dir} has no fitted FTM (no 'ftm' section); run `sdift fit-ftm` first")
    try:
        ranks = [int(r) for r in ftm["info"]["ranks"]]
    except (KeyError, TypeError, ValueError) as exc:
        raise FormatError(f"{run_dir}: the 'ftm' section has no valid 'ranks' entry") from exc
    return ranks, ftm["files"].get("cores.npz")


def save_prior(run_dir: str | os.PathLike, prior: GPSDPrior, report: dict[str, Any] | None = None,
               *, overwrite: bool = False) -> Path:
    """Add a trained prior to a run directory as its `"prior"` section (file `prior.eqx`).

    **Arguments:**

    - `run_dir`: a run directory with a fitted FTM (`sdift fit-ftm`).
    - `prior`: the `GPSDPrior`; its core shape must equal the FTM's ranks.
    - `report`: the training report of `train_prior` (its summary goes into the manifest).
    - `overwrite`: replace an existing prior.

    **Returns:** the path of `prior.eqx`.
    """
    root = Path(run_dir)
    if not isinstance(prior, GPSDPrior):
        raise bad_input("prior", "a GPSDPrior", type(prior).__name__)
    if report is not None and not isinstance(report, dict):
        raise bad_input("report", "None or the report dict of train_prior", type(report).__name__)
    ranks, cores_sha = _ftm_facts(root)
    if list(prior.core_shape) != ranks:
        raise InputError(
            f"prior: its core shape {tuple(prior.core_shape)} does not match the FTM ranks {tuple(ranks)} of {root}"
        )
    summary = {}
    if report:
        keep = ("steps", "final_loss", "wall_time_s", "steps_per_s", "num_parameters", "num_sequences",
                "num_frames", "seq_len", "max_window", "config")
        summary = {k: report[k] for k in keep if k in report}
        history = report.get("loss_history") or []
        stride = max(1, len(history) // 200)  # a readable trace, not every step
        summary["loss_trace"] = {"stride": stride, "values": [round(float(v), 6) for v in history[::stride]]}
    info = {**prior_header(prior), "ftm_cores_sha256": cores_sha, "training": summary}
    add_artifact(root, PRIOR_SECTION, {PRIOR_FILE: lambda p: write_prior_file(p, prior)}, info, overwrite=overwrite)
    return root / PRIOR_FILE


def load_prior(run_dir: str | os.PathLike) -> GPSDPrior:
    """The trained prior of a run directory (checksums verified).

    Raises `InputError` when the run has no FTM or no prior yet, and `FormatError` when the
    prior does not belong to the run's FTM (other ranks or other cores) or its file is damaged.
    """
    root = Path(run_dir)
    ranks, cores_sha = _ftm_facts(root)
    sections = read_manifest(root, verify=False)["sections"]
    if PRIOR_SECTION not in sections:
        raise InputError(f"run_dir: {root} has no trained prior; run `sdift train-prior {root}` first")
    info = sections[PRIOR_SECTION]["info"]
    files = section_files(root, PRIOR_SECTION, verify=False)
    if PRIOR_FILE not in files:
        raise FormatError(f"{root}: the 'prior' section does not list {PRIOR_FILE!r}")
    if info.get("ftm_cores_sha256") not in (None, cores_sha):
        raise FormatError(f"{root}: the prior was trained on other FTM cores than the run's; retrain it")
    prior = load_prior_file(files[PRIOR_FILE])
    if list(prior.core_shape) != ranks:
        raise FormatError(f"{root}: the prior's core shape {prior.core_shape} does not match the FTM ranks {tuple(ranks)}")
    return prior
