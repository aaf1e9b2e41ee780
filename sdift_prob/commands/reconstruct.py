"""`sdift reconstruct`: posterior of the full-field evolution of one trajectory from observations."""

from __future__ import annotations

import argparse
from typing import Any

from ..data.fields import load_fields
from ..data.observations import ObservationSet
from ..errors import SelfCheckWarning, UntestedSettingWarning, bad_input, warn_untested_steps
from . import HelpFormatter, check_out_file, check_seed, report, reserved

ARGUMENT_NAMES = {"num_steps": "--steps", "path": "OBS.nc", "run_dir": "RUN_DIR", "chunk_size": "--chunk-size",
                  "max_abs_zscore": "--max-zscore", "max_memory_gb": "--max-memory-gb"}
HELP = "reconstruct the full field from an observation set (posterior draws -> netCDF)"


def parse_float_list(text: str | None, argument: str) -> list[float] | None:
    """`"0,1.5,3"` -> `[0.0, 1.5, 3.0]`; None stays None."""
    if text is None:
        return None
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise bad_input(argument, "comma-separated numbers, e.g. 0,2,4.5", text) from None
    if not values:
        raise bad_input(argument, "at least one number", text)
    return values


def _chunk_size(args: argparse.Namespace) -> int | None:
    """--chunk-size, or by default four chunks from 8 draws on (a progress bar in quarters; the
    sampler is compiled once for the chunk shape either way)."""
    if args.chunk_size is not None:
        if args.chunk_size < 1:
            raise bad_input("--chunk-size", "an integer >= 1", args.chunk_size)
        return int(args.chunk_size)
    total = int(args.draws) * int(args.chains)
    return -(-total // 4) if total >= 8 else None


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "reconstruct", help=HELP,
        description=(
            "Sample the posterior of the full-field evolution of one trajectory given a sparse, noisy "
            "observation set, with moment-matching posterior sampling (mmps, default), the paper's MPDPS or DPS, "
            "or the exact FTM + GP-prior posterior (gp). "
            "Writes an ArviZ InferenceData netCDF (posterior field/cores/sigma, posterior predictive, "
            "log-likelihood)."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory (sdift fit-ftm + sdift train-prior)")
    p.add_argument("obs", metavar="OBS.nc", help="observation set (sdift observe)")
    p.add_argument("--sampler", choices=("mmps", "mpdps", "dps", "gp"), default="mmps",
                   help="mmps: guided diffusion with the Tweedie covariance of the whole sequence (conjugate-"
                        "gradient solves; frames without data move through the prior's coupling); mpdps: the "
                        "paper's guided diffusion with GP messages between time stamps; dps: without them; "
                        "gp: exact posterior under the FTM + GP temporal prior (no trained prior needed)")
    p.add_argument("--cg-steps", type=int, default=None,
                   help="mmps: conjugate-gradient iterations per guided estimate (default "
                        f"{_default_cg_steps()}, each solve started from the previous one's solution; each "
                        "iteration costs about one denoiser evaluation)")
    p.add_argument("--draws", type=int, default=_default_draws(),
                   help="posterior draws per chain (default %(default)s: the 90%% quantile interval of a "
                        "calibrated posterior's draws then covers about 85%%, against 72%% at 8 draws; cost is "
                        "linear, about 1.3 s per draw for the shipped ocean example on one core)")
    p.add_argument("--chains", type=int, default=1, help="independent chains")
    p.add_argument("--seed", type=int, default=0, help="random seed of the draws")
    p.add_argument("--times", default=None, help="comma-separated physical output times (default: training times)")
    p.add_argument("--resolution", type=int, default=1, help="spatial refinement factor per axis")
    p.add_argument("--likelihood", choices=("gaussian", "laplace", "student_t", "poisson"), default="gaussian",
                   help="observation noise model")
    p.add_argument("--sigma", default=None,
                   help="noise std in physical units, 'metadata' or 'infer' (default: metadata if known, else infer)")
    p.add_argument("--steps", type=int, default=None,
                   help="sampler steps (default 20; fewer than 8 are untested and warned about)")
    p.add_argument("--zeta", type=float, default=None, help="guidance strength (default 1: conjugate update)")
    p.add_argument("--lam", type=float, default=None, help="MPDPS message weight (default 0.4)")
    p.add_argument("--message-kernel", choices=("reference", "fitted"), default="reference",
                   help="MPDPS message kernel: the public code's exp(-dt^2), or a Matern-1/2 fitted to the "
                        "training cores (better when frames decorrelate between time stamps)")
    p.add_argument("--chunk-size", type=int, default=None,
                   help="draws per compiled sampler call (default: a quarter of all draws from 8 draws on, so "
                        "that a progress bar shows; fewer draws in one call); the draws do not depend on it "
                        "beyond float32 rounding")
    p.add_argument("--checks", choices=("raise", "warn"), default="raise",
                   help="output self-checks (field far outside the training range, misfit far above the noise, "
                        "spread far above the prior's): raise fails the command, warn keeps the result and "
                        "prints the failed checks (also stored in the posterior's attrs)")
    p.add_argument("--max-zscore", type=float, default=20.0,
                   help="refuse observation values further than this many training stds from the training mean "
                        "(a units mistake); raise it if such values are real")
    p.add_argument("--max-memory-gb", type=float, default=8.0,
                   help="refuse, before sampling, a run whose field draws and observations need more memory")
    p.add_argument("--dynamics", choices=("fluid2d",), default=None,
                   help="add the known dynamics as a weak constraint on every sampler frame: fluid2d: the "
                        "simulator's Kolmogorov-flow stepper with the trajectory's recorded viscosity, drag and "
                        "forcing (frame(t+gap) ~ solver(frame(t)), issue 19); costly: gap/dt solver steps per "
                        "gap, twice per CG iteration")
    p.add_argument("--dynamics-source", default=None, metavar="FIELDS.nc",
                   help="field collection recording the simulator's parameters (default: the observation set's "
                        "source, as `sdift observe` records it)")
    p.add_argument("--dynamics-trajectory", type=int, default=None,
                   help="trajectory position in --dynamics-source (default: the observation set's trajectory "
                        "when the source is its own, else 0)")
    p.add_argument("--dynamics-scale", type=float, default=None,
                   help="model error std of the dynamics residual, field units (default: the run's FTM "
                        "representation error, the residual's size at the true trajectory's projection)")
    p.add_argument("--dynamics-dt", type=float, default=None,
                   help="solver step of the constraint (default: the simulator's)")
    p.add_argument("--out", required=True, metavar="POSTERIOR.nc", help="posterior file to write (netCDF)")
    p.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    p.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    import dataclasses
    import warnings

    import jax

    from inference.reconstruct import open_run, reconstruct, sampler_config
    from inference.report import save_posterior
    from inference.summary import run_summary, summary_text

    check_seed(args.seed)
    if args.sampler != "gp":  # gp takes no steps
        warn_untested_steps(args.steps, "--steps")
    sigma: Any = args.sigma
    if sigma is not None and sigma not in ("metadata", "infer"):
        try:
            sigma = float(sigma)
        except ValueError:
            raise bad_input("--sigma", "a number, 'metadata' or 'infer'", sigma) from None
    config = None
    if args.sampler != "gp":
        if args.cg_steps is not None and args.sampler != "mmps":
            raise bad_input("--cg-steps", "only with --sampler mmps", args.cg_steps)
        if args.lam is not None and args.sampler != "mpdps":
            raise bad_input("--lam", "only with --sampler mpdps (the message weight)", args.lam)
        config = sampler_config(args.sampler)
        changes = {k: v for k, v in (("num_steps", args.steps), ("zeta", args.zeta), ("lam", args.lam)) if v is not None}
        if args.cg_steps is not None:
            if args.cg_steps < 1:
                raise bad_input("--cg-steps", "an integer >= 1", args.cg_steps)
            changes["guidance"] = dataclasses.replace(config.guidance, cg_steps=args.cg_steps)
        if changes:
            config = dataclasses.replace(config, **changes)
    with reserved(args.out) as out:  # a second writer of --out is refused here, before any work
        check_out_file(out, args.overwrite, example="posterior.nc")
        run_ = open_run(args.run_dir, require_prior=args.sampler != "gp")
        obs = ObservationSet.load(args.obs)
        constraints = _dynamics(args, run_, obs)
        with warnings.catch_warnings():
            # already said above, as --steps; a failed self-check with --checks warn is in the summary below
            warnings.filterwarnings("ignore", message="num_steps:", category=UntestedSettingWarning)
            warnings.filterwarnings("ignore", category=SelfCheckWarning)
            idata = reconstruct(
                run_, obs, key=jax.random.key(args.seed), sampler=args.sampler, draws=args.draws,
                chains=args.chains, times=parse_float_list(args.times, "--times"), resolution=args.resolution,
                likelihood=args.likelihood, sigma=sigma, config=config, chunk_size=_chunk_size(args),
                progress=not args.no_progress, message_kernel=args.message_kernel, checks=args.checks,
                max_abs_zscore=args.max_zscore, max_memory_gb=args.max_memory_gb, constraints=constraints,
            )
        save_posterior(idata, out, overwrite=args.overwrite)
    summary = run_summary(idata)
    wall = float(idata.posterior.attrs.get("wall_time_s", 0.0))
    report(args, {"out": str(out), "wall_time_s": round(wall, 2), **summary},
           f"wrote {out} ({args.sampler}, {args.chains} x {args.draws} draws, {wall:.1f} s sampling)\n"
           + summary_text(summary))
    return 0


def _default_draws() -> int:
    from inference.reconstruct import DEFAULT_DRAWS

    return DEFAULT_DRAWS


def _dynamics(args: argparse.Namespace, run_: Any, obs: Any) -> list[Any] | None:
    """The `--dynamics` constraint, with the simulator's parameters read from the field collection
    (`--dynamics-source`, else the observation set's recorded source); None without `--dynamics`."""
    extras = {"--dynamics-source": args.dynamics_source, "--dynamics-trajectory": args.dynamics_trajectory,
              "--dynamics-scale": args.dynamics_scale, "--dynamics-dt": args.dynamics_dt}
    if args.dynamics is None:
        given = [k for k, v in extras.items() if v is not None]
        if given:
            raise bad_input(given[0], "only with --dynamics", extras[given[0]])
        return None
    if args.sampler == "gp":
        raise bad_input("--dynamics", "a guided sampler (--sampler mmps, dps or mpdps); gp is the conjugate GP "
                        "posterior", args.dynamics)
    from ..data.simulate.fluid2d import fluid2d_dynamics  # deferred: the simulator loads exponax

    source, trajectory = args.dynamics_source, args.dynamics_trajectory
    if source is None:
        source = obs.attrs.get("source")
        if source is None:
            raise bad_input("--dynamics-source", "the field collection that records the simulator's parameters (the "
                            "observation set records no source: it was not made by `sdift observe`)", None)
        if trajectory is None:
            trajectory = obs.attrs.get("trajectory")
    if trajectory is None:
        trajectory = 0
    scale = args.dynamics_scale
    if scale is None:
        rep_std, rep_source = run_.representation_error
        if rep_std <= 0:
            raise bad_input("--dynamics-scale", f"a model error std (the run records no representation error: "
                            f"{rep_source})", None)
        scale = rep_std * float(run_.ftm.normalizer.std)
    try:
        ds = load_fields(source)
    except (OSError, ValueError) as exc:
        raise bad_input("--dynamics-source", "a readable fluid2d field collection", f"{source}: {exc}") from exc
    if ds.attrs.get("simulator") != args.dynamics:
        raise bad_input("--dynamics-source", f"a field collection of the {args.dynamics!r} simulator",
                        f"{source} (simulator {ds.attrs.get('simulator')!r})")
    return [fluid2d_dynamics(ds, int(trajectory), scale=scale, dt=args.dynamics_dt)]


def _default_cg_steps() -> int:
    from inference.guidance import MomentMatching

    return MomentMatching().cg_steps
