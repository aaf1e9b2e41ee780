"""`sdift sample`: unconditional draws from a run's GPSD prior, decoded to physical fields."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import jax
import numpy as np
import xarray as xr

from ..errors import bad_input, warn_untested_steps
from ..ftm import FTMFit, decode_grid, load_run
from ..gp import validate_times
from ..gpsd.prior import load_prior
from ..io import NETCDF_ENGINE, atomic_file
from ..run import section_info
from . import HelpFormatter, check_out_file, check_seed, report, reserved

ARGUMENT_NAMES = {"num_steps": "--steps", "run_dir": "RUN_DIR"}

HELP = "draw unconditional field sequences from the trained prior"


def register(subparsers: Any) -> None:
    """Add the `sample` sub-command to an argparse sub-parser collection."""
    p = subparsers.add_parser(
        "sample",
        help=HELP,
        description=(
            "Draw core sequences from the run's GPSD prior with the EDM Heun sampler at any time "
            "stamps (irregular, or more than in training), decode them through the FTM on the "
            "training grid and write them in physical units to a netCDF file with dims "
            "(draw, time, *space dims)."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory with a fitted FTM and a trained prior")
    p.add_argument("--draws", type=int, required=True, help="number of draws")
    when = p.add_mutually_exclusive_group()
    when.add_argument("--times", default=None, metavar="T1,T2,...",
                      help="physical time stamps, comma-separated, strictly increasing (default: the training times)")
    when.add_argument("--n-times", type=int, default=None, metavar="M",
                      help="M evenly spaced time stamps over the training time range")
    p.add_argument("--seed", type=int, default=0, help="random seed")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default: the prior's, 20; fewer than 8 are untested and warned about)")
    p.add_argument("--batch-size", type=int, default=None, help="draws per vmapped batch (default: all)")
    p.add_argument("--out", required=True, metavar="SAMPLES.nc", help="netCDF file to write")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def parse_times(args: argparse.Namespace, fit: FTMFit) -> np.ndarray:
    """Physical time stamps from `--times` / `--n-times` (default: the training times)."""
    if args.times is not None:
        try:
            values = [float(s) for s in args.times.split(",") if s.strip()]
        except ValueError:
            raise bad_input("--times", "comma-separated numbers, e.g. 0,0.5,1.25", args.times) from None
        return validate_times(np.asarray(values), "--times")
    if args.n_times is not None:
        if args.n_times < 1:
            raise bad_input("--n-times", "an integer >= 1", args.n_times)
        t0, t1 = fit.time_domain
        return np.linspace(t0, t1, args.n_times) if args.n_times > 1 else np.asarray([t0], np.float64)
    return np.asarray(fit.times, np.float64)


def _source_attrs(run_dir: Path) -> tuple[dict[str, Any], dict[str, dict[str, Any]]]:
    """Field and coordinate attrs of the data the FTM was fitted on: the units and names the run
    recorded (`save_run`), else those of the data file when it is still there."""
    extra = section_info(run_dir, "ftm", verify=False).get("extra", {})
    if extra.get("units") or extra.get("coord_units"):
        field = {k: extra[k] for k in ("units", "long_name") if isinstance(extra.get(k), str) and extra[k]}
        coords = {str(d): {"units": u} for d, u in (extra.get("coord_units") or {}).items() if isinstance(u, str) and u}
        return field, coords
    data = extra.get("data")
    if not data or not Path(data).is_file():
        return {}, {}
    try:
        with xr.open_dataset(data, engine=NETCDF_ENGINE) as ds:
            field = {k: ds["field"].attrs[k] for k in ("units", "long_name") if k in ds["field"].attrs}
            for k in ("units", "long_name"):
                if k not in field and k in ds.attrs:
                    field[k] = ds.attrs[k]
            coords = {str(c): dict(ds[c].attrs) for c in ds.coords if c in ds.dims}
    except (OSError, ValueError, KeyError):
        return {}, {}
    return field, coords


def samples_dataset(fit: FTMFit, fields: np.ndarray, times: np.ndarray, *, seed: int, steps: int,
                    field_attrs: dict[str, Any], coord_attrs: dict[str, dict[str, Any]]) -> xr.Dataset:
    """Decoded draws `(draw, time, *space)` (physical units) as an xarray Dataset."""
    dims = tuple(fit.model.space_dims)
    coords: dict[str, Any] = {"draw": np.arange(fields.shape[0]), "time": np.asarray(times, np.float64)}
    for d, g in zip(dims, fit.grids):
        coords[d] = np.asarray(g, np.float64)
    ds = xr.Dataset({"field": (("draw", "time", *dims), fields)}, coords=coords)
    ds["field"].attrs.update(field_attrs)
    for name, attrs in coord_attrs.items():
        if name in ds.coords:
            ds[name].attrs.update(attrs)
    ds.attrs.update({
        "sdift_kind": "prior_samples",
        "sdift_format_version": 1,
        "seed": int(seed),
        "sampler": "edm_heun",
        "num_steps": int(steps),
        **{k: v for k, v in field_attrs.items() if isinstance(v, str)},
    })
    return ds


def run(args: argparse.Namespace) -> int:
    """Sample, decode and write the draws; returns 0 on success."""
    if args.draws < 1:
        raise bad_input("--draws", "an integer >= 1", args.draws)
    check_seed(args.seed)
    warn_untested_steps(args.steps, "--steps")
    with reserved(args.out) as out:  # a second writer of --out is refused here, before any work
        check_out_file(out, args.overwrite, example="samples.nc")
        root = Path(args.run_dir)
        fit = load_run(root)
        prior = load_prior(root)
        times = parse_times(args, fit)
        t0, t1 = fit.time_domain
        times_norm = (times - t0) / ((t1 - t0) if t1 != t0 else 1.0)
        steps = prior.config.num_steps if args.steps is None else args.steps
        cores = prior.sample(jax.random.key(args.seed), times_norm, args.draws, steps, batch_size=args.batch_size,
                             progress=not args.no_progress)
        fields = np.asarray(fit.normalizer.inverse(np.asarray(decode_grid(fit.model, cores, fit.grids))), np.float32)
        field_attrs, coord_attrs = _source_attrs(root)
        ds = samples_dataset(fit, fields, times, seed=args.seed, steps=steps,
                             field_attrs=field_attrs, coord_attrs=coord_attrs)
        with atomic_file(out, overwrite=args.overwrite) as tmp:
            ds.to_netcdf(tmp, engine=NETCDF_ENGINE)
    summary = {"out": str(out), "draws": int(args.draws), "times": int(times.size), "shape": list(fields.shape),
               "steps": int(steps)}
    report(args, summary, f"wrote {out}: {args.draws} prior draws at {times.size} times "
                          f"({' x '.join(map(str, fields.shape))}, {steps} sampler steps)")
    return 0
