"""Saving and loading a fitted FTM as the `"ftm"` section of a run directory.

Files: `ftm.eqx` (the networks' leaves, `eqx.tree_serialise_leaves`) and `cores.npz`
(`cores (B, T, R..)`, `times (T,)`, `trajectory_ids (B,)`, `grid_<k> (I_k,)`). The manifest
section holds the config, ranks, space dims, domain, normaliser and time domain, from which
`load_run` rebuilds the network skeleton (`eqx.filter_eval_shape`) before reading the leaves.

How the cores were made is recorded in the section info's `"cores_provenance"`: a list of
entries `{"method": "fit" | "encode_grid", "ids": [...], ...}`, one for the trajectories
`fit_ftm` fitted and one per `append_cores` (`sdift encode`) batch that encoded trajectories
through the fixed basis, in the order they were written; a later entry's `"replaced"` ids
had their earlier cores replaced by it (`core_provenance`).
"""

from __future__ import annotations

import io
import os
import shutil
import zipfile
from pathlib import Path
from typing import Any

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
from jaxtyping import ArrayLike, Float

from ..data.fields import Normalizer
from ..errors import FormatError, InputError, bad_input
from ..io import atomic_dir
from ..run import MANIFEST, add_artifact, new_run, read_manifest, section_files, section_info
from .fit import FTMConfig, FTMFit
from .tucker import FunctionalTucker

FTM_SECTION = "ftm"
FTM_FORMAT_VERSION = 1
MODEL_FILE = "ftm.eqx"
# FTMFit.metadata in "extra"; representation_error: the fit's own error at a point (fit_ftm)
_METADATA_KEYS = ("units", "long_name", "coord_units", "simulator", "representation_error")
CORES_FILE = "cores.npz"
PROVENANCE_KEY = "cores_provenance"


def _ids_list(ids: np.ndarray) -> list[Any]:
    return [v.item() if hasattr(v, "item") else v for v in np.asarray(ids).tolist()]


def _model_skeleton(info: dict[str, Any], config: FTMConfig) -> FunctionalTucker:
    return eqx.filter_eval_shape(
        FunctionalTucker,
        tuple(info["ranks"]),
        domain_lo=tuple(info["domain_lo"]),
        domain_hi=tuple(info["domain_hi"]),
        space_dims=tuple(info["space_dims"]),
        width=config.width,
        depth=config.depth,
        omega=config.omega,
        margin=float(info["margin"]),
        key=jax.random.key(0),
    )


def save_run(
    run_dir: str | os.PathLike, fit: FTMFit, *, overwrite: bool = False, extra: dict[str, Any] | None = None
) -> Path:
    """Write a fitted FTM to a new run directory.

    **Arguments:**

    - `run_dir`: the folder to create (its parent must exist).
    - `fit`: the `FTMFit` returned by `fit_ftm`.
    - `overwrite`: replace an existing run directory (and everything in it, e.g. a prior
      trained on the old cores).
    - `extra`: optional JSON-serialisable provenance (seed, data file, fit summary) stored
      in the section info under `"extra"`, over the data's `units`, `long_name`,
      `coord_units` and `simulator` that `fit.metadata` carries from the field collection
      (a key of `extra` replaces the recorded one).

    **Returns:** the run directory's path.
    """
    if not isinstance(fit, FTMFit):
        raise bad_input("fit", "an FTMFit (from fit_ftm)", type(fit).__name__)
    if extra is not None and not isinstance(extra, dict):
        raise bad_input("extra", "None or a JSON-serialisable dict", extra)
    target = Path(run_dir)
    if target.exists() and not overwrite:
        raise bad_input("run_dir", "a path that does not exist yet (or overwrite=True / --overwrite)", str(target))
    model = fit.model
    cores = np.asarray(fit.cores, dtype=np.float32)
    ids = np.asarray(fit.trajectory_ids)
    if ids.dtype == object:
        ids = ids.astype(str)

    def write_model(path: Path) -> None:
        with open(path, "wb") as fh:
            eqx.tree_serialise_leaves(fh, model)

    def write_cores(path: Path) -> None:
        arrays = {"cores": cores, "times": np.asarray(fit.times, dtype=np.float64), "trajectory_ids": ids}
        for k, g in enumerate(fit.grids):
            arrays[f"grid_{k}"] = np.asarray(g, dtype=np.float64)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    info = {
        "ftm_format": FTM_FORMAT_VERSION,
        "config": fit.config.to_dict(),
        "ranks": list(model.ranks),
        "space_dims": list(model.space_dims),
        "domain_lo": list(model.domain_lo),
        "domain_hi": list(model.domain_hi),
        "margin": model.margin,
        "normalizer": fit.normalizer.to_dict(),
        "time_domain": [float(fit.time_domain[0]), float(fit.time_domain[1])],
        "n_trajectories": int(cores.shape[0]),
        "n_times": int(cores.shape[1]),
        "cores_shape": list(cores.shape),
        "extra": {**fit.metadata, **({} if extra is None else extra)},
    }
    info[PROVENANCE_KEY] = [{"method": "fit", "n": int(cores.shape[0]), "ids": _ids_list(ids)}]
    # the whole run is built aside and renamed into place, so a failed save changes nothing
    with new_run(target, overwrite=overwrite) as tmp:
        add_artifact(tmp, FTM_SECTION, {MODEL_FILE: write_model, CORES_FILE: write_cores}, info)
    return target


def load_run(run_dir: str | os.PathLike) -> FTMFit:
    """Load the fitted FTM of a run directory (checksums verified).

    Raises `FormatError` when the directory is not a run, has no `"ftm"` section, was written
    by an incompatible version, or a file is missing, altered or unreadable.
    """
    root = Path(run_dir)
    # versions first (an incompatible bundle is named as such), then the checksums
    info = section_info(root, FTM_SECTION, verify=False)
    found = info.get("ftm_format")
    if found != FTM_FORMAT_VERSION:
        raise FormatError(
            f"{root}: the 'ftm' section has format {found!r}; this version of sdift-prob reads "
            f"format {FTM_FORMAT_VERSION}"
        )
    info = section_info(root, FTM_SECTION, verify=True)
    files = section_files(root, FTM_SECTION, verify=False)
    for name in (MODEL_FILE, CORES_FILE):
        if name not in files:
            raise FormatError(f"{root}: the 'ftm' section does not list {name!r}")
    try:
        config = FTMConfig.from_dict(info["config"])
        normalizer = Normalizer.from_dict(info["normalizer"])
        # Before building the skeleton (Python objects per layer): the networks the manifest
        # describes must fit in ftm.eqx, so that an edited manifest cannot ask for 10^9 layers.
        n_modes = len(info["ranks"])
        at_least = n_modes * ((config.depth - 1) * config.width**2 + config.depth * config.width)
        size = files[MODEL_FILE].stat().st_size
        if 4 * at_least > size:
            raise FormatError(
                f"{files[MODEL_FILE]}: the manifest's network settings (width {config.width}, depth "
                f"{config.depth}, {n_modes} modes: at least {at_least} parameters) do not fit in the "
                f"file's {size} bytes"
            )
        skeleton = _model_skeleton(info, config)
        t0, t1 = (float(v) for v in info["time_domain"])
        extra = info.get("extra") or {}
        if not isinstance(extra, dict):
            raise TypeError(f"'extra' is a {type(extra).__name__}, not a dict")
    except (KeyError, TypeError, ValueError, InputError) as exc:
        raise FormatError(f"{root / 'manifest.json'}: the 'ftm' section is incomplete or invalid ({exc})") from exc
    try:
        with open(files[MODEL_FILE], "rb") as fh:
            model = eqx.tree_deserialise_leaves(fh, skeleton)
    except Exception as exc:  # noqa: BLE001 - equinox/numpy raise several types on a mismatch
        raise FormatError(f"{files[MODEL_FILE]}: cannot read the networks ({type(exc).__name__}: {exc})") from exc
    try:
        with open(files[CORES_FILE], "rb") as fh, np.load(io.BytesIO(fh.read()), allow_pickle=False) as npz:
            cores = np.asarray(npz["cores"])
            times = np.asarray(npz["times"])
            ids = np.asarray(npz["trajectory_ids"])
            grids = tuple(np.asarray(npz[f"grid_{k}"]) for k in range(len(model.ranks)))
    except (KeyError, ValueError, OSError, zipfile.BadZipFile) as exc:
        raise FormatError(f"{files[CORES_FILE]}: cannot read the cores ({type(exc).__name__}: {exc})") from exc
    if cores.shape[2:] != model.ranks or cores.shape[1] != times.shape[0] or ids.shape != (cores.shape[0],):
        raise FormatError(
            f"{files[CORES_FILE]}: shapes do not match the manifest (cores {cores.shape}, times {times.shape}, "
            f"ranks {model.ranks})"
        )
    return FTMFit(
        model=model,
        cores=jnp.asarray(cores),
        times=times,
        normalizer=normalizer,
        time_domain=(t0, t1),
        trajectory_ids=ids,
        config=config,
        grids=grids,
        metadata={k: extra[k] for k in _METADATA_KEYS if k in extra},
    )


def core_provenance(run_dir: str | os.PathLike) -> list[dict[str, Any]]:
    """How the run's cores were made, in their order: `[{"method": "fit" | "encode_grid", "ids":
    [...], ...}, ...]` (a run saved before this was recorded reports all its cores as `"fit"`)."""
    root = Path(run_dir)
    info = section_info(root, FTM_SECTION, verify=False)
    entries = info.get(PROVENANCE_KEY)
    if entries is None:
        with open(root / CORES_FILE, "rb") as fh, np.load(io.BytesIO(fh.read()), allow_pickle=False) as npz:
            ids = np.asarray(npz["trajectory_ids"])
        return [{"method": "fit", "n": int(ids.size), "ids": _ids_list(ids)}]
    if not isinstance(entries, list) or not all(isinstance(e, dict) and isinstance(e.get("ids"), list) for e in entries):
        raise FormatError(f"{root}: the 'ftm' section's {PROVENANCE_KEY!r} entry is not a list of records with ids")
    return entries


def _check_new_cores(fit: FTMFit, cores: object, ids: object, replace: bool) -> tuple[np.ndarray, np.ndarray]:
    c = np.asarray(cores, dtype=np.float32)
    expected = (int(fit.cores.shape[1]), *fit.model.ranks)
    if c.ndim != len(expected) + 1 or c.shape[1:] != expected or c.shape[0] < 1:
        raise bad_input("cores", f"an array of shape (n, {', '.join(map(str, expected))}) (the run's times and ranks)",
                        f"shape {c.shape}")
    if not np.all(np.isfinite(c)):
        raise bad_input("cores", "finite values", f"{int(np.sum(~np.isfinite(c)))} non-finite entries")
    new = np.asarray(ids)
    if new.shape != (c.shape[0],):
        raise bad_input("ids", f"one id per core sequence (shape ({c.shape[0]},))", f"shape {new.shape}")
    old = np.asarray(fit.trajectory_ids)
    if new.dtype.kind != old.dtype.kind and not (new.dtype.kind in "iu" and old.dtype.kind in "iu"):
        raise bad_input("ids", f"ids of the run's kind (dtype {old.dtype})", f"dtype {new.dtype}")
    if np.unique(new).size != new.size:
        raise bad_input("ids", "distinct trajectory ids", "duplicates")
    clash = sorted(set(_ids_list(new)) & set(_ids_list(old)))
    if clash and not replace:
        shown = ", ".join(map(str, clash[:10])) + (" ..." if len(clash) > 10 else "")
        raise bad_input("ids", "trajectories the run does not have yet (its cores are never replaced; skip the "
                        "ones it has, e.g. `sdift encode --skip-existing`)", f"{len(clash)} already in the run: {shown}")
    return c, new.astype(old.dtype) if new.dtype.kind in "iu" else new


def append_cores(run_dir: str | os.PathLike, cores: Float[ArrayLike, "n T *ranks"], ids: ArrayLike,
                 provenance: dict[str, Any], *, replace: bool = False) -> Path:
    """Add the cores of further trajectories (e.g. `encode_grid` through the run's fixed basis) to a
    run directory's `cores.npz`, recording how they were made.

    The whole run is rebuilt beside the old one and renamed into place, so an interrupted append
    changes nothing. Cores already in the run are replaced only with `replace=True` (their ids
    are recorded under `"replaced"`); otherwise an id the run has is an error.
    A run that already has a trained prior is refused (the prior would no longer match its cores;
    encode before `sdift train-prior`).

    **Arguments:**

    - `run_dir`: a run directory with a fitted FTM.
    - `cores`: `(n, T, R_1, ..., R_K)` in normalised field units, on the run's time stamps.
    - `ids`: `(n,)` distinct trajectory ids, none of them in the run yet.
    - `replace`: replace the cores of ids the run already has (e.g. re-encode the fitted
      trajectories so that every core comes from one encoder).
    - `provenance`: JSON-serialisable record of how they were made (`"method"`, data file, ...);
      the ids are added to it, and it is appended to the section info's `"cores_provenance"`.

    **Returns:** the run directory's path.
    """
    root = Path(run_dir)
    if not isinstance(provenance, dict) or "method" not in provenance:
        raise bad_input("provenance", "a dict with at least a 'method' entry", provenance)
    manifest = read_manifest(root, verify=True)
    others = sorted(set(manifest["sections"]) - {FTM_SECTION})
    if others:
        raise bad_input("run_dir", "a run with only a fitted FTM (cores are added before the prior is trained; a "
                        "prior trained on the old cores would no longer match)", f"{root} has sections {others}")
    fit = load_run(root)
    if not isinstance(replace, bool):
        raise bad_input("replace", "True or False", replace)
    new_cores, new_ids = _check_new_cores(fit, cores, ids, replace)
    info = section_info(root, FTM_SECTION, verify=False)
    history = core_provenance(root)
    old_ids = _ids_list(np.asarray(fit.trajectory_ids))
    where = {v: i for i, v in enumerate(old_ids)}
    all_cores = np.asarray(fit.cores, np.float32).copy()
    replaced = [i for i, v in enumerate(_ids_list(new_ids)) if v in where]
    for i in replaced:
        all_cores[where[_ids_list(new_ids)[i]]] = new_cores[i]
    added = np.asarray([i for i in range(new_ids.size) if i not in set(replaced)], dtype=np.int64)
    all_cores = np.concatenate([all_cores, new_cores[added]])
    all_ids = np.concatenate([np.asarray(fit.trajectory_ids), new_ids[added]])
    entry = {**provenance, "n": int(new_ids.size), "ids": _ids_list(new_ids),
             "replaced": [_ids_list(new_ids)[i] for i in replaced]}
    new_info = {**info, "n_trajectories": int(all_cores.shape[0]), "cores_shape": list(all_cores.shape),
                PROVENANCE_KEY: [*history, entry]}

    def write_cores(path: Path) -> None:
        arrays = {"cores": all_cores, "times": np.asarray(fit.times, dtype=np.float64), "trajectory_ids": all_ids}
        for k, g in enumerate(fit.grids):
            arrays[f"grid_{k}"] = np.asarray(g, dtype=np.float64)
        with open(path, "wb") as fh:
            np.savez(fh, **arrays)

    def copy_model(path: Path) -> None:
        shutil.copyfile(root / MODEL_FILE, path)

    with atomic_dir(root, overwrite=True, argument="run_dir") as tmp:
        # a copy of the run (add_artifact checks it whole), then the section's files are replaced
        for item in root.iterdir():
            if item.name.endswith(".lock"):
                continue  # a reservation belongs to the old folder's writer

            if item.is_dir():
                shutil.copytree(item, tmp / item.name)
            else:
                shutil.copy2(item, tmp / item.name)
        add_artifact(tmp, FTM_SECTION, {MODEL_FILE: copy_model, CORES_FILE: write_cores}, new_info, overwrite=True)
    return root
