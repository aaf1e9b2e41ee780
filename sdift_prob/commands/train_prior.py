"""`sdift train-prior`: train the GPSD diffusion prior on a run's FTM cores, add it to the run."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path
from typing import Any

import jax

from ..errors import InputError, bad_input
from ..ftm import load_run
from ..gpsd.prior import PRIOR_SECTION, save_prior
from ..gpsd.train import PriorConfig, train_prior
from ..pretrained.recipes import CPU_PRIOR
from ..run import read_manifest
from . import HelpFormatter, check_seed, report, reserved

ARGUMENT_NAMES = {"batch_size": "--batch", "warmup_steps": "--warmup", "run_dir": "RUN_DIR"}
HELP = "train the GP-based sequential diffusion prior on a run's FTM cores"
CHECKPOINT_SUBDIR = ".prior-checkpoints"
_CONFIG_NAMES = {"batch": "batch_size", "warmup": "warmup_steps"}  # option -> PriorConfig field


def register(subparsers: Any) -> None:
    """Add the `train-prior` sub-command to an argparse sub-parser collection.

    Defaults: the tested CPU recipe of the shipped bundles (`sdift_prob.pretrained.recipes.CPU_PRIOR`)
    where it sets a value, else `PriorConfig`'s."""
    d = dataclasses.replace(PriorConfig(), **{_CONFIG_NAMES.get(k, k): v for k, v in CPU_PRIOR.items()})
    p = subparsers.add_parser(
        "train-prior",
        help=HELP,
        description=(
            "Train the GPSD prior (temporally augmented U-Net, EDM with noise that is a GP in time) "
            "on the core sequences of a run directory made by `sdift fit-ftm`, and add it to the run "
            "(section 'prior', file prior.eqx). Checkpoints are written every --checkpoint-every steps "
            "and on Ctrl-C/SIGTERM; rerunning the same command resumes from the last one (raise "
            "--steps to train longer). The defaults are the tested CPU recipe of the shipped bundles "
            "(sdift_prob/pretrained/recipes.py: ~0.29M parameters, ~15 min on one core for 8x8x8 cores)."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory with a fitted FTM")
    p.add_argument("--steps", type=int, default=d.steps, help="total optimiser steps")
    p.add_argument("--batch", type=int, default=d.batch_size, help="sequences per minibatch")
    p.add_argument("--seed", type=int, default=d.seed, help="random seed (initialisation, minibatches, noise)")
    p.add_argument("--lr", type=float, default=d.lr, help="peak Adam learning rate (after linear warm-up)")
    p.add_argument("--warmup", type=int, default=d.warmup_steps, help="warm-up steps of the learning rate")
    p.add_argument("--seq-len", type=int, default=d.seq_len,
                   help="frames per training sub-sequence (capped at the number of time stamps)")
    p.add_argument("--p-irregular", type=float, default=d.p_irregular,
                   help="probability that a sub-sequence is an irregular subset of a longer window")
    p.add_argument("--channels", type=int, default=d.channels, help="U-Net width of the first level")
    p.add_argument("--channel-mult", type=int, nargs="+", default=list(d.channel_mult), metavar="M",
                   help="U-Net width multiplier per level")
    p.add_argument("--num-blocks", type=int, default=d.num_blocks, help="residual blocks per U-Net level")
    p.add_argument("--no-attention", action="store_true", help="no self-attention at the U-Net bottleneck")
    p.add_argument("--kernel", default=d.kernel, choices=("rbf", "matern12", "matern32", "matern52"),
                   help="kernel of the diffusion noise over normalised time")
    ls = p.add_mutually_exclusive_group()
    ls.add_argument("--lengthscale", type=float, default=d.lengthscale,
                    help="kernel lengthscale on normalised time (0.1 = the reference exp(-50 dt^2))")
    ls.add_argument("--fit-lengthscale", action="store_true",
                    help="fit the lengthscale to the cores by GP marginal likelihood instead")
    p.add_argument("--ema-halflife", type=float, default=d.ema_halflife, help="EMA half-life in steps")
    p.add_argument("--checkpoint-every", type=int, default=d.checkpoint_every, help="steps between checkpoints")
    p.add_argument("--checkpoint-dir", default=None,
                   help=f"checkpoint folder (default RUN_DIR/{CHECKPOINT_SUBDIR})")
    p.add_argument("--resume", action=argparse.BooleanOptionalAction, default=True,
                   help="continue from the checkpoint in the checkpoint folder, if any")
    p.add_argument("--overwrite", action="store_true", help="replace a prior the run already has")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def config_from_args(args: argparse.Namespace, num_frames: int) -> PriorConfig:
    """The `PriorConfig` of the command-line options (sub-sequence length capped at `num_frames`)."""
    seq_len = None if args.seq_len is None else min(int(args.seq_len), num_frames)
    return dataclasses.replace(
        PriorConfig(),
        steps=args.steps, batch_size=args.batch, seed=args.seed, lr=args.lr, warmup_steps=args.warmup,
        seq_len=seq_len, p_irregular=args.p_irregular, channels=args.channels,
        channel_mult=tuple(args.channel_mult), num_blocks=args.num_blocks, attention=not args.no_attention,
        kernel=args.kernel, lengthscale=args.lengthscale, fit_lengthscale=args.fit_lengthscale,
        ema_halflife=args.ema_halflife, checkpoint_every=args.checkpoint_every,
    )


def run(args: argparse.Namespace) -> int:
    """Train the prior on the run's cores and save it into the run; returns 0 on success."""
    check_seed(args.seed)
    if args.steps < 1:  # PriorConfig allows 0 (an untrained network); saving one is never meant
        raise bad_input("--steps", "an integer >= 1", args.steps)
    if not Path(args.run_dir).is_dir():
        raise bad_input("RUN_DIR", "an existing run directory", str(args.run_dir))
    # the prior goes into RUN_DIR: a second writer of it (train-prior, fit-ftm --out, seal) is refused here
    with reserved(args.run_dir, "RUN_DIR") as root:
        fit = load_run(root)
        config = config_from_args(args, int(fit.cores.shape[1]))  # settings checked before the run's state
        if PRIOR_SECTION in read_manifest(root, verify=False)["sections"] and not args.overwrite:
            raise InputError(f"RUN_DIR: {root} already has a trained prior; pass --overwrite to replace it")
        checkpoint_dir = Path(args.checkpoint_dir) if args.checkpoint_dir else root / CHECKPOINT_SUBDIR
        prior, info = train_prior(
            fit.cores, fit.normalised_times(), config, key=jax.random.key(args.seed),
            checkpoint_dir=checkpoint_dir, resume=args.resume, progress=not args.no_progress,
        )
        save_prior(root, prior, info, overwrite=args.overwrite)
    summary = {
        "run_dir": str(root),
        "steps": info["steps"],
        "resumed_from": info["resumed_from"],
        "final_loss": None if info["final_loss"] is None else round(info["final_loss"], 5),
        "num_parameters": info["num_parameters"],
        "steps_per_s": None if info["steps_per_s"] is None else round(info["steps_per_s"], 2),
        "kernel": info["kernel"],
        "checkpoint_dir": str(checkpoint_dir),
    }
    resumed = "" if not summary["resumed_from"] else f" (resumed from step {summary['resumed_from']})"
    report(args, summary,
           f"added a trained prior to {root}: {summary['steps']} steps{resumed}, final loss {summary['final_loss']}, "
           f"{summary['num_parameters']} parameters, {summary['kernel']} kernel")
    return 0
