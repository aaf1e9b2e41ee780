"""`sdift fit-ftm`: fit the Functional Tucker Model to a field collection, save a run directory."""

from __future__ import annotations

import argparse
import dataclasses
import shutil
import sys
from pathlib import Path
from typing import Any

import jax
import numpy as np
import xarray as xr

from ..data.fields import load_fields, space_dims, train_part
from ..errors import bad_input
from ..ftm.bundle import save_run
from ..ftm.fit import FTMConfig, fit_ftm
from ..ftm.ranks import RankSweep, rank_sweep
from ..ftm.tucker import check_ranks
from ..streaming import is_lazy, open_fields_lazy
from . import HelpFormatter, check_seed, report, reserved

ARGUMENT_NAMES = {"batch_trajectories": "--batch", "path": "DATA.nc", "ds": "DATA.nc"}
HELP = "fit the functional Tucker model (coordinate networks + cores) and save a run directory"
DEFAULT_TARGET = 0.05


def register(subparsers: Any) -> None:
    """Add the `fit-ftm` sub-command to an argparse sub-parser collection."""
    defaults = FTMConfig()
    p = subparsers.add_parser(
        "fit-ftm",
        help=HELP,
        description=(
            "Fit the functional Tucker model to the training trajectories of a field collection "
            "(netCDF from `sdift simulate`): one coordinate network per space dim shared by all "
            "trajectories, plus a free core sequence per trajectory. Writes a run directory "
            "(manifest.json, ftm.eqx, cores.npz) that later stages add to."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("data", metavar="DATA.nc", help="field collection file")
    p.add_argument("--ranks", nargs="+", required=True, metavar="R",
                   help="Tucker ranks, one per space dim in the file's order (e.g. 8 8 8 for lat lon depth), or "
                        "'auto': the smallest ranks whose best basis reaches --target-error on a few training "
                        "trajectories (HOSVD sweep, seconds; see sdift_prob.ftm.ranks)")
    p.add_argument("--target-error", type=float, default=DEFAULT_TARGET,
                   help="VRMSE the FTM should reach: --ranks auto aims at it, and a fit whose held-out error is "
                        "above it is warned about (no FTM-based reconstruction can beat that error)")
    p.add_argument("--max-rank", type=int, default=32, help="--ranks auto: the largest rank of any space dim")
    p.add_argument("--sweep-trajectories", type=int, default=16,
                   help="--ranks auto: training trajectories the sweep reads (half build bases, half check them)")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="run directory to create")
    p.add_argument("--train", default="all-train", metavar="IDS",
                   help="trajectories to fit: 'all-train' (split == train), 'all-train:N' (the first N of them, "
                        "e.g. to fit the basis on a subset and `sdift encode` the rest), 'all', or comma-separated "
                        "values of the trajectory coordinate, e.g. 0,1,2")
    length = p.add_mutually_exclusive_group()
    length.add_argument("--epochs", type=int, default=None, help=f"passes over the trajectories (default {defaults.epochs})")
    length.add_argument("--steps", type=int, default=None, help="optimiser steps (instead of --epochs)")
    p.add_argument("--train-fraction", type=float, default=defaults.train_fraction,
                   help="fraction of the entries (not held out) used for fitting; 0.1 as in the reference")
    p.add_argument("--holdout-fraction", type=float, default=defaults.holdout_fraction,
                   help="fraction of entries held out for early stopping (0 disables it)")
    p.add_argument("--batch", type=int, default=defaults.batch_trajectories, help="trajectories per minibatch")
    p.add_argument("--width", type=int, default=defaults.width, help="hidden width of the coordinate networks")
    p.add_argument("--beta-tv", type=float, default=defaults.beta_tv, help="weight of the temporal TV term")
    p.add_argument("--seed", type=int, default=0, help="random seed (masks, initialisation, batch order)")
    p.add_argument("--overwrite", action="store_true", help="replace RUN_DIR if it exists")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.add_argument("--checkpoint-dir", default=None, metavar="DIR",
                   help="checkpoint folder, written every --checkpoint-every epochs and on Ctrl-C/SIGTERM; "
                        "rerunning the same command resumes from it (default: RUN_DIR.ftm-checkpoint beside "
                        "RUN_DIR, removed once the run is saved)")
    p.add_argument("--checkpoint-every", type=int, default=10, help="epochs between checkpoints")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the checkpoint in the checkpoint folder, if any")
    p.add_argument("--lazy", action="store_true",
                   help="do not load DATA.nc into memory: read one minibatch of trajectories at a time "
                        "(for collections larger than memory)")
    p.add_argument("--devices", type=int, default=None,
                   help="devices for data-parallel training (default: all when --batch divides evenly)")
    p.set_defaults(func=run)


def _first_train(spec: str) -> int | None:
    """N of an 'all-train:N' value (None for any other value)."""
    if not spec.startswith("all-train:"):
        return None
    try:
        n = int(spec.split(":", 1)[1])
    except ValueError:
        n = 0
    if n < 1:
        raise bad_input("--train", "'all-train:N' with an integer N >= 1", spec)
    return n


def select_trajectories(ds: xr.Dataset, spec: str) -> xr.Dataset:
    """The trajectories named by a `--train` value ('all-train', 'all-train:N', 'all' or
    comma-separated ids)."""
    first = _first_train(spec)
    if first is not None:
        chosen = select_trajectories(ds, "all-train")
        if chosen.sizes["trajectory"] < first:
            raise bad_input("--train", f"at most the collection's {chosen.sizes['trajectory']} training trajectories",
                            spec)
        return chosen.isel(trajectory=slice(0, first))
    if spec == "all-train":
        if "split" not in ds.coords:
            raise bad_input("--train", "'all' or explicit ids for a collection without a train/test split", spec)
        sel = np.flatnonzero(np.asarray(ds.coords["split"].values).astype(str) == "train")
        if sel.size == 0:
            raise bad_input("--train", "a collection with at least one 'train' trajectory (or --train all / "
                            "explicit ids)", "none in the file's split")
        if is_lazy(ds["field"]):
            # train_part validates (reads) every value; a lazy collection is checked while it is read
            return ds.isel(trajectory=sel)
        return train_part(ds)
    if spec == "all":
        return ds
    try:
        wanted = [int(s) for s in spec.split(",") if s.strip()]
    except ValueError:
        raise bad_input("--train", "'all-train', 'all' or comma-separated integer trajectory ids", spec) from None
    if not wanted or len(set(wanted)) != len(wanted):
        raise bad_input("--train", "a non-empty list of distinct trajectory ids", spec)
    ids = np.asarray(ds["trajectory"].values)
    missing = sorted(set(wanted) - set(ids.tolist()))
    if missing:
        raise bad_input("--train", f"ids of the collection's trajectories ({ids.min()}..{ids.max()})", f"unknown {missing}")
    return ds.sel(trajectory=wanted)


def run(args: argparse.Namespace) -> int:
    """Load the collection, fit the FTM, write the run directory; returns 0 on success."""
    check_seed(args.seed)
    check_sweep_options(args)
    parse_ranks(list(args.ranks))
    with reserved(args.out) as out:  # a second writer of RUN_DIR is refused here, before any work
        if out.exists() and not args.overwrite:
            raise bad_input("--out", "a run directory that does not exist yet (or pass --overwrite)", str(out))
        if out.exists() and not out.is_dir():
            raise bad_input("--out", "a folder (an existing file is never replaced by a run)", str(out))
        if args.lazy:
            ds = open_fields_lazy(args.data)
        else:
            ds = load_fields(args.data)
        try:
            return _fit_and_save(args, ds, out)
        finally:
            ds.close()


def parse_ranks(values: list[str]) -> list[int] | None:
    """`--ranks`: integers, or None for 'auto'."""
    if [v.lower() for v in values] == ["auto"]:
        return None
    try:
        return [int(v) for v in values]
    except ValueError:
        raise bad_input("--ranks", "one integer per space dim, or 'auto'", " ".join(values)) from None


def check_sweep_options(args: argparse.Namespace) -> None:
    """The options of the rank check and sweep, before any work."""
    t = args.target_error
    if not (np.isfinite(t) and 0 < t < 1):
        raise bad_input("--target-error", "a number in (0, 1)", t)
    if args.max_rank < 1:
        raise bad_input("--max-rank", "an integer >= 1", args.max_rank)
    if args.sweep_trajectories < 2:
        raise bad_input("--sweep-trajectories", "an integer >= 2 (half build the bases, half check them)",
                        args.sweep_trajectories)


def choose_ranks(train: xr.Dataset, args: argparse.Namespace) -> RankSweep:
    """`--ranks auto`: the sweep on the first --sweep-trajectories training trajectories."""
    n = min(int(args.sweep_trajectories), train.sizes["trajectory"])
    if n < 2:
        raise bad_input("--ranks", "explicit ranks when fewer than 2 trajectories are fitted ('auto' needs 2 to "
                        "build and check a basis)", "auto")
    values = np.asarray(train["field"].isel(trajectory=slice(0, n)).values, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise bad_input("--ranks", "explicit ranks for a collection with missing entries ('auto' needs full grids)",
                        "auto")
    return rank_sweep(values, target=float(args.target_error), max_rank=int(args.max_rank))


def representation_warning(error: float, target: float, which: str) -> str | None:
    """The loud message of a fit whose error is above the target (None when it is not)."""
    if not error > target:
        return None
    return (f"WARNING: the FTM's {which} VRMSE is {error:.3g}, above --target-error {target:.3g}. That is the error "
            f"of the best field these ranks and networks represent: no FTM-based reconstruction of this data (any "
            f"sampler, the exact GP baseline, any observation density) can score below about {error:.3g}. Raise "
            f"--ranks (try --ranks auto) or the network --width.")


def _fit_and_save(args: argparse.Namespace, ds: xr.Dataset, out: Path) -> int:
    ranks = parse_ranks(list(args.ranks))
    dims = space_dims(ds)
    if ranks is not None:
        check_ranks(ranks, len(dims), argument=f"--ranks (space dims {dims})")
    train = select_trajectories(ds, args.train)
    sweep = None
    if ranks is None:
        sweep = choose_ranks(train, args)
        ranks = list(sweep.ranks)
        reached = "reaches" if sweep.reached else "does NOT reach (the largest tried)"
        print(f"--ranks auto: {' x '.join(map(str, ranks))} {reached} --target-error {args.target_error:g} "
              f"(best-basis error {sweep.error:.4g} on {sweep.n_check} check trajectories; tried "
              + ", ".join(f"{'x'.join(map(str, c['ranks']))}: {c['error']:.3g}" for c in sweep.candidates) + ")",
              file=sys.stderr)
    overrides: dict[str, Any] = {
        "train_fraction": args.train_fraction,
        "holdout_fraction": args.holdout_fraction,
        "batch_trajectories": args.batch,
        "width": args.width,
        "beta_tv": args.beta_tv,
    }
    if args.epochs is not None:
        overrides["epochs"] = args.epochs
    if args.steps is not None:
        overrides["steps"] = args.steps
    config = dataclasses.replace(FTMConfig(), **overrides)
    default_checkpoints = args.checkpoint_dir is None
    checkpoint_dir = out.with_name(out.name + ".ftm-checkpoint") if default_checkpoints else Path(args.checkpoint_dir)
    fit, info = fit_ftm(
        train, tuple(ranks), key=jax.random.key(args.seed), config=config, progress=not args.no_progress,
        checkpoint_dir=checkpoint_dir, resume=args.resume, checkpoint_every=args.checkpoint_every,
        devices=args.devices,
    )
    summary = {
        "run_dir": str(args.out),
        "trajectories": info["n_trajectories"],
        "epochs": info["epochs"],
        "best_epoch": info["best_epoch"],
        "train_vrmse": round(info["train_vrmse"], 5),
        "holdout_vrmse": None if info["holdout_vrmse"] is None else round(info["holdout_vrmse"], 5),
        "full_vrmse": round(info["full_vrmse"], 5),
        # normalised field units: the representation error reconstruct adds to the noise
        "train_rmse": round(info["train_rmse"], 6),
        "holdout_rmse": None if info["holdout_rmse"] is None else round(info["holdout_rmse"], 6),
        "wall_time_s": round(info["wall_time_s"], 1),
        "ranks": list(ranks),
        "target_error": float(args.target_error),
    }
    which = "held-out-entry" if info["holdout_vrmse"] is not None else "training-entry"
    achieved = info["holdout_vrmse"] if info["holdout_vrmse"] is not None else info["train_vrmse"]
    warning = representation_warning(float(achieved), float(args.target_error), which)
    if warning is not None:
        summary["warning"] = warning
    if sweep is not None:
        summary["rank_sweep"] = sweep.to_dict()
    # units, long_name, coord_units and simulator come with the fit (FTMFit.metadata)
    provenance = {"data": str(args.data), "train": args.train, "seed": args.seed, "fit": summary}
    summary["resumed_from"] = info["resumed_from"]
    summary["devices"] = info["devices"]
    save_run(args.out, fit, overwrite=args.overwrite, extra=provenance)
    if default_checkpoints:
        shutil.rmtree(checkpoint_dir, ignore_errors=True)
    holdout = "" if summary["holdout_vrmse"] is None else f", held-out {summary['holdout_vrmse']:.4g}"
    if warning is not None:
        print(warning, file=sys.stderr)
    report(args, summary,
           f"wrote {args.out}: FTM ranks {' x '.join(map(str, ranks))} on {summary['trajectories']} trajectories, "
           f"{summary['epochs']} epochs (best {summary['best_epoch']}), VRMSE train {summary['train_vrmse']:.4g}"
           f"{holdout}, all entries {summary['full_vrmse']:.4g}; {summary['wall_time_s']:.1f} s")
    return 0
