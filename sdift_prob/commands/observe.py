"""`sdift observe`: draw sparse noisy observations of one trajectory of a field collection."""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

import jax

from ..data.fields import Normalizer, load_fields
from ..data.sampling import PATTERNS, sample_observations, select_trajectory
from . import HelpFormatter, check_out_file, check_seed, report, reserved

ARGUMENT_NAMES = {"index": "--trajectory", "path": "DATA.nc"}
HELP = "draw sparse, noisy observations of one trajectory of a field collection"


def register(subparsers: Any) -> None:
    """Add the `observe` sub-command to an argparse sub-parser collection."""
    p = subparsers.add_parser(
        "observe",
        help=HELP,
        description=(
            "Draw sparse, noisy observations of one trajectory of a field collection (netCDF "
            "from `sdift simulate`) and write them as an observation set (netCDF). "
            "Setting 1 observes every time stamp, setting 2 every other one (0, 2, 4, ..). "
            "Patterns: random (a fraction RHO of the grid per observed time stamp), profiles "
            "(full columns over the last space dim, like CTD/Argo casts), forecast (random, "
            "nothing after --forecast-after)."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("data", metavar="DATA.nc", help="field collection file")
    p.add_argument("--trajectory", type=int, required=True, metavar="I",
                   help="position of the trajectory in the collection (0-based)")
    p.add_argument("--rho", type=float, default=None,
                   help="observed fraction in (0, 1] of the grid (random/forecast) or of the horizontal "
                        "positions (profiles, unless --n-profiles); required except with --n-profiles")
    p.add_argument("--setting", type=int, choices=(1, 2), default=1,
                   help="1: every time stamp observed; 2: every other time stamp")
    p.add_argument("--pattern", choices=PATTERNS, default="random", help="where points are placed")
    p.add_argument("--n-profiles", type=int, default=None, help="number of columns per time stamp (profiles)")
    p.add_argument("--forecast-after", type=float, default=None,
                   help="no observations after this physical time (forecast)")
    p.add_argument("--jitter", type=float, default=0.0,
                   help="move points off the grid by up to this many grid spacings (values interpolated)")
    p.add_argument("--noise", choices=("gaussian", "laplace", "poisson", "none"), default="gaussian",
                   help="observation noise model")
    p.add_argument("--noise-scale", type=float, default=0.0,
                   help="noise scale, in the field's physical units (see --noise-scale-normalised)")
    p.add_argument("--noise-scale-normalised", action="store_true",
                   help="read --noise-scale as a multiple of the std of the training fields")
    p.add_argument("--seed", type=int, required=True, help="random seed of the draw")
    p.add_argument("--out", required=True, metavar="OBS.nc", help="output observation set file")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Load the collection, sample the observations, write them; returns 0 on success."""
    check_seed(args.seed)
    with reserved(args.out):  # a second writer of --out is refused here, before any work
        check_out_file(args.out, args.overwrite, example="obs.nc")
        return _observe(args)


def _observe(args: argparse.Namespace) -> int:
    ds = load_fields(args.data)
    trajectory = select_trajectory(ds, args.trajectory)
    scale = args.noise_scale
    if args.noise_scale_normalised:
        scale = scale * Normalizer.from_fields(ds).std
    obs = sample_observations(
        jax.random.key(args.seed),
        trajectory,
        rho=args.rho,
        setting=args.setting,
        pattern=args.pattern,
        n_profiles=args.n_profiles,
        forecast_after=args.forecast_after,
        jitter=args.jitter,
        noise=args.noise,
        noise_scale=scale,
    )
    split = str(ds.coords["split"].values[args.trajectory])
    attrs = {
        **obs.attrs,
        "source": str(args.data),
        "trajectory": int(args.trajectory),
        "trajectory_split": split,
        "seed": int(args.seed),
        "source_simulator": ds.attrs["simulator"],
        "source_seed": int(ds.attrs["seed"]),
    }
    if args.noise_scale_normalised:
        attrs["noise_scale_normalised"] = float(args.noise_scale)
    obs = dataclasses.replace(obs, attrs=attrs)
    obs.save(args.out, overwrite=args.overwrite)
    m, n_times = int(obs.time_stamps().size), int(trajectory.sizes["time"])
    text = (f"wrote {args.out}: {obs.n_points} points at {m} of {n_times} time stamps "
            f"(trajectory {args.trajectory}, split {split!r}, noise {obs.noise_model}, scale {scale:.4g})")
    if split == "train":
        text += f"\nnote: trajectory {args.trajectory} is a training trajectory"
    report(args, {"out": str(args.out), "points": int(obs.n_points), "observed_times": m, "times": n_times,
                  "trajectory": int(args.trajectory), "split": split, "noise": obs.noise_model,
                  "noise_scale": float(scale)}, text)
    return 0
