"""`sdift encode`: add further trajectories' cores to a run, encoded through its fixed FTM basis.

The prior learns from core sequences, and a diffusion prior needs many of them; fitting the FTM's
networks on all of them is the expensive part, encoding is not. So: `sdift fit-ftm` on a subset,
then `sdift encode` the rest of the collection through the fitted basis (exact least squares per
frame on the full grid, `sdift_prob.ftm.encode.encode_grid`), then `sdift train-prior` on all.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np
import xarray as xr

from ..data.fields import space_dims
from ..errors import InputError, bad_input
from ..ftm.bundle import FTM_SECTION, append_cores, load_run
from ..ftm.encode import decode_grid_numpy, encode_grid
from ..ftm.fit import FTMFit
from ..run import read_manifest, section_info
from ..streaming import open_fields_lazy
from . import HelpFormatter, report, reserved

ARGUMENT_NAMES = {"run_dir": "RUN_DIR", "path": "--data", "fields": "--data", "chunk": "--chunk"}
DEFAULT_RIDGE = 1e-3
# encoded cores whose spread differs from the fitted ones' by more than this factor are warned about
SCALE_WARNING = 2.0
HELP = "encode more trajectories through a run's fitted FTM basis (least squares) and add their cores"


def register(subparsers: Any) -> None:
    """Add the `encode` sub-command to an argparse sub-parser collection."""
    p = subparsers.add_parser(
        "encode",
        help=HELP,
        description=(
            "Encode full-grid trajectories of a field collection through the fixed coordinate networks "
            "of a run made by `sdift fit-ftm` and add their cores to the run's cores.npz, so that "
            "`sdift train-prior` trains on them too. On a full grid the least-squares core of a frame is "
            "exact and cheap (one small matrix product per space dim, float64): thousands of "
            "trajectories take seconds to minutes, where fitting the networks on them would take hours. "
            "The run is rewritten atomically; cores it already has are never replaced, and the run "
            "records which trajectories were fitted and which encoded (manifest: the ftm section's "
            "'cores_provenance'). Run it before train-prior: a run with a prior is refused."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory with a fitted FTM (and no prior yet)")
    p.add_argument("--data", required=True, metavar="DATA.nc",
                   help="field collection on a full grid, with the run's time stamps and space dims")
    p.add_argument("--ids", default="all-train", metavar="IDS",
                   help="trajectories to encode: 'all-train' (split == train), 'all', or comma-separated ids "
                        "and inclusive ranges of the trajectory coordinate, e.g. 100-999 or 3,5,10-20")
    existing = p.add_mutually_exclusive_group()
    existing.add_argument("--skip-existing", action="store_true",
                          help="leave out the trajectories the run already has (e.g. the ones fit-ftm fitted); "
                               "without it (or --replace-fitted) such an id is an error")
    existing.add_argument("--replace-fitted", action="store_true",
                          help="re-encode the trajectories the run already has too and replace their cores, so "
                               "that every core the prior sees comes from the same encoder (recorded)")
    p.add_argument("--ridge", type=float, default=DEFAULT_RIDGE,
                   help="ridge weight of the least squares (as `encode`'s; 0: plain least squares, whose cores "
                        "blow up along directions a near-singular basis barely sees)")
    p.add_argument("--chunk", type=int, default=32, help="trajectories read and encoded at a time (memory)")
    p.set_defaults(func=run)


def parse_ids(spec: str, available: np.ndarray, split: np.ndarray | None, flag: str = "--ids") -> np.ndarray:
    """Positions (into `available`) of the trajectories named by `spec`: 'all-train', 'all', or
    comma-separated ids and inclusive ranges `a-b`."""
    if spec == "all":
        return np.arange(available.size)
    if spec == "all-train":
        if split is None:
            raise bad_input(flag, "'all' or explicit ids for a collection without a train/test split", spec)
        pos = np.flatnonzero(split.astype(str) == "train")
        if pos.size == 0:
            raise bad_input(flag, "a collection with at least one 'train' trajectory", "none in the file's split")
        return pos
    wanted: list[int] = []
    try:
        for part in (s.strip() for s in spec.split(",")):
            if not part:
                continue
            lo, sep, hi = part.partition("-")
            if sep and lo:
                if int(hi) < int(lo):
                    raise ValueError(part)
                wanted.extend(range(int(lo), int(hi) + 1))
            else:
                wanted.append(int(part))
    except ValueError:
        raise bad_input(flag, "'all-train', 'all' or comma-separated integer ids / ranges a-b (a <= b)", spec) from None
    if not wanted or len(set(wanted)) != len(wanted):
        raise bad_input(flag, "a non-empty list of distinct trajectory ids", spec)
    index = {int(v): i for i, v in enumerate(available.tolist())}
    missing = [w for w in wanted if w not in index]
    if missing:
        shown = ", ".join(map(str, missing[:10])) + (" ..." if len(missing) > 10 else "")
        raise bad_input(flag, f"ids of the collection's trajectories ({available.min()}..{available.max()})",
                        f"unknown {shown}")
    return np.asarray([index[w] for w in wanted])


def check_compatible(fit: FTMFit, ds: xr.Dataset, flag: str = "--data") -> tuple[np.ndarray, ...]:
    """The collection's grids, after checking its space dims and time stamps against the run's."""
    dims = space_dims(ds)
    if tuple(dims) != tuple(fit.model.space_dims):
        raise bad_input(flag, f"a collection over the run's space dims {tuple(fit.model.space_dims)}", tuple(dims))
    times = np.asarray(ds["time"].values, dtype=np.float64)
    span = max(float(np.ptp(fit.times)), 1e-300)
    if times.shape != fit.times.shape or not np.allclose(times, fit.times, rtol=0.0, atol=1e-9 * span):
        raise bad_input(flag, f"the run's {fit.times.size} time stamps (the cores are stored on one time grid)",
                        f"{times.size} time stamps {times[:3]}...")
    return tuple(np.asarray(ds[d].values, dtype=np.float64) for d in dims)


def _drop_existing(ids: np.ndarray, pos: np.ndarray, fit: FTMFit, skip: bool, replace: bool = False) -> np.ndarray:
    have = {v.item() if hasattr(v, "item") else v for v in np.asarray(fit.trajectory_ids)}
    clash = [i for i, v in zip(pos, ids[pos]) if v.item() in have]
    if replace:
        return np.asarray(pos, dtype=np.int64)
    if clash and not skip:
        shown = ", ".join(str(ids[i]) for i in clash[:10]) + (" ..." if len(clash) > 10 else "")
        raise bad_input("--ids", "trajectories the run does not have yet (or pass --skip-existing / --replace-fitted)",
                        f"{len(clash)} already in the run: {shown}")
    return np.asarray([i for i in pos if i not in set(clash)], dtype=np.int64)


def encode_collection(fit: FTMFit, ds: xr.Dataset, pos: np.ndarray, grids: tuple[np.ndarray, ...], *,
                      ridge: float, chunk: int) -> tuple[np.ndarray, np.ndarray]:
    """Cores `(n, T, *ranks)` of the trajectories at positions `pos`, read `chunk` at a time, and
    each one's VRMSE of the decoded cores against its field (physical units)."""
    cores, errors = [], []
    for start in range(0, pos.size, chunk):
        part = pos[start:start + chunk]
        values = np.asarray(ds["field"].isel(trajectory=part).values, dtype=np.float64)
        w = encode_grid(fit.model, values, grids, normalizer=fit.normalizer, ridge=ridge)
        dec = decode_grid_numpy(fit.model, w, grids, normalizer=fit.normalizer)
        flat_err = (dec - values).reshape(len(part), -1)
        flat_val = values.reshape(len(part), -1)
        errors.append(np.sqrt((flat_err**2).mean(axis=1) / (flat_val.var(axis=1) + 1e-7)))
        cores.append(w.astype(np.float32))
    return np.concatenate(cores), np.concatenate(errors)


def gauge_check(fit: FTMFit, cores: np.ndarray, ids: np.ndarray) -> dict[str, Any]:
    """The spread of the encoded cores beside the fitted ones' and the basis's conditioning, with
    a warning when they differ: along directions the basis barely sees, fitted cores keep whatever
    the fit left there and encoded ones the ridge's zero, so a prior trained on both mixes two
    kinds of core."""
    from ..ftm import basis_matrices

    bases = [np.asarray(b, np.float64) for b in basis_matrices(fit.model, fit.grids)]
    conditioning = []
    for b in bases:
        lam = np.linalg.eigvalsh(b.T @ b)
        conditioning.append(float(max(lam.min(), 0.0) / lam.max()))
    kept = ~np.isin(np.asarray(fit.trajectory_ids), ids)
    fitted_std = float(np.asarray(fit.cores)[kept].std()) if kept.any() else None
    encoded_std = float(np.std(cores))
    out: dict[str, Any] = {"core_std_encoded": round(encoded_std, 6),
                           "core_std_fitted": None if fitted_std is None else round(fitted_std, 6),
                           "basis_eigenvalue_ratio_min": [float(f"{c:.3g}") for c in conditioning]}
    if fitted_std is not None and not 1 / SCALE_WARNING <= encoded_std / max(fitted_std, 1e-300) <= SCALE_WARNING:
        out["warning"] = (
            f"WARNING: the encoded cores' std {encoded_std:.3g} differs from the fitted cores' {fitted_std:.3g} by more "
            f"than {SCALE_WARNING:g}x (smallest eigenvalue ratio of the basis per dim: "
            f"{', '.join(f'{c:.1e}' for c in conditioning)}): where the basis is nearly singular the fitted cores carry "
            "directions that decode to almost nothing. A prior trained on both kinds learns a mixture; pass "
            "--replace-fitted (re-encode the fitted trajectories too) so every core comes from this encoder.")
    return out


def run(args: argparse.Namespace) -> int:
    """Encode the chosen trajectories and add their cores to the run; returns 0 on success."""
    if args.chunk < 1:
        raise bad_input("--chunk", "an integer >= 1", args.chunk)
    if not (np.isfinite(args.ridge) and args.ridge >= 0):
        raise bad_input("--ridge", "a finite number >= 0", args.ridge)
    if not Path(args.run_dir).is_dir():
        raise bad_input("RUN_DIR", "an existing run directory", str(args.run_dir))
    with reserved(args.run_dir, "RUN_DIR") as root:
        others = sorted(set(read_manifest(root, verify=False)["sections"]) - {FTM_SECTION})
        if others:
            raise InputError(f"RUN_DIR: {root} already has {others}; encode before `sdift train-prior` (a prior "
                             "trained on the current cores would no longer match them)")
        fit = load_run(root)
        ds = open_fields_lazy(args.data)
        try:
            grids = check_compatible(fit, ds)
            ids = np.asarray(ds["trajectory"].values)
            split = np.asarray(ds.coords["split"].values) if "split" in ds.coords else None
            pos = _drop_existing(ids, parse_ids(args.ids, ids, split), fit, args.skip_existing, args.replace_fitted)
            if pos.size == 0:
                report(args, {"run_dir": str(root), "encoded": 0},
                       f"nothing to encode: the run already has every trajectory of --ids {args.ids}")
                return 0
            t0 = time.perf_counter()
            cores, errors = encode_collection(fit, ds, pos, grids, ridge=args.ridge, chunk=args.chunk)
            seconds = time.perf_counter() - t0
        finally:
            ds.close()
        provenance = {
            "method": "encode_grid", "data": str(args.data), "ridge": float(args.ridge),
            "description": "least-squares cores on the full grid through the fixed coordinate networks",
            "vrmse_mean": round(float(errors.mean()), 6), "vrmse_max": round(float(errors.max()), 6),
            "wall_time_s": round(seconds, 2),
            **gauge_check(fit, cores, ids[pos]),
        }
        append_cores(root, cores, ids[pos], provenance, replace=args.replace_fitted)
    fitted = section_info(root, FTM_SECTION, verify=False).get("extra", {}).get("fit", {}).get("full_vrmse")
    summary = {"run_dir": str(root), "encoded": int(pos.size), "n_trajectories": int(fit.cores.shape[0] + pos.size),
               "vrmse_mean": float(errors.mean()), "vrmse_max": float(errors.max()),
               "fitted_full_vrmse": fitted, "wall_time_s": round(seconds, 2)}
    summary["core_std_encoded"], summary["core_std_fitted"] = provenance["core_std_encoded"], provenance["core_std_fitted"]
    if provenance.get("warning"):
        summary["warning"] = provenance["warning"]
        print(provenance["warning"], file=sys.stderr)
    beside = "" if fitted is None else f" (the fitted trajectories: {fitted:.4g})"
    report(args, summary,
           f"encoded {pos.size} trajectories into {root} in {seconds:.1f} s: {summary['n_trajectories']} core "
           f"sequences now; VRMSE of the encoded fields {errors.mean():.4g} mean, {errors.max():.4g} max{beside}")
    return 0
