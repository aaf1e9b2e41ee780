"""`sdift simulate`: generate a field collection (ocean, fluid2d or field3d) and write it to netCDF."""

from __future__ import annotations

import argparse
from pathlib import Path

from ..data.fields import save_fields
from ..errors import bad_input
from . import HelpFormatter, check_out_file, check_seed, report, reserved

ARGUMENT_NAMES = {"n_trajectories": "--n"}

# Size options and the simulators they apply to (argument name -> simulator keyword).
_SIZE_OPTIONS = {
    "ocean": {"nlat": "nlat", "nlon": "nlon", "ndepth": "ndepth", "nt": "nt", "dt_days": "dt_days"},
    "fluid2d": {"grid": "grid", "nt": "nt", "batch_size": "batch_size"},
    "field3d": {"grid": "grid", "nt": "nt", "batch_size": "batch_size"},
}


def register(subparsers: argparse._SubParsersAction) -> None:
    """Add the `simulate` sub-command."""
    parser = subparsers.add_parser(
        "simulate",
        help="simulate trajectories of a physical field and save them as a field collection",
        description=(
            "Simulate N trajectories of a physical field, deterministically from --seed, split them "
            "into train/test and write a field collection (netCDF, written atomically). "
            "ocean: 3D sound speed (lat x lon x depth, m/s) from TEOS-10 over a thermocline with "
            "drifting eddies and internal waves, every 2 days (default 24x24x16, 20 times). "
            "fluid2d: 2D Kolmogorov-flow vorticity (exponax, default 64x64, 20 times). "
            "field3d: 3D Gray-Scott reaction-diffusion spreading from seeds (exponax, default "
            "32^3, 16 times)."
        ),
        formatter_class=HelpFormatter,
    )
    parser.add_argument("simulator", choices=tuple(_SIZE_OPTIONS), help="which physics to simulate")
    parser.add_argument("--n", type=int, required=True, help="number of trajectories")
    parser.add_argument("--seed", type=int, default=0, help="random seed, 0 <= S < 2**32 (default 0); trajectory i depends only on S and i")
    parser.add_argument("--out", type=Path, required=True, help="output netCDF file (e.g. DATA.nc)")
    parser.add_argument("--n-test", type=int, default=None, help="number of test trajectories, 0 <= M < N (default N // 6)")
    sizes = parser.add_argument_group("size options (defaults: the simulator's own)")
    sizes.add_argument("--nt", type=int, default=None, help="number of saved time stamps (all simulators)")
    sizes.add_argument("--nlat", type=int, default=None, help="ocean: number of latitudes")
    sizes.add_argument("--nlon", type=int, default=None, help="ocean: number of longitudes")
    sizes.add_argument("--ndepth", type=int, default=None, help="ocean: number of depth levels (0-1000 m, stretched)")
    sizes.add_argument("--dt-days", type=float, default=None, help="ocean: days between time stamps")
    sizes.add_argument("--grid", type=int, default=None, help="fluid2d/field3d: grid points per side")
    sizes.add_argument("--batch-size", type=int, default=None,
                       help="fluid2d/field3d: trajectories integrated at once (memory vs speed)")
    parser.add_argument("--overwrite", action="store_true", help="replace --out if it exists")
    parser.add_argument("--no-progress", action="store_true", help="hide the progress bar")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Simulate, split and save; print one summary line. Returns 0 on success."""
    from ..data.simulate import SIMULATORS  # deferred: the simulators load exponax and gsw

    name = args.simulator
    if name not in SIMULATORS:
        raise bad_input("simulator", f"one of {tuple(SIMULATORS)}", name)
    applicable = _SIZE_OPTIONS[name]
    every_size = {key for options in _SIZE_OPTIONS.values() for key in options}
    kwargs = {}
    for option in sorted(every_size):
        value = getattr(args, option, None)
        if value is None:
            continue
        if option not in applicable:
            users = [s for s, options in _SIZE_OPTIONS.items() if option in options]
            raise bad_input(f"--{option.replace('_', '-')}", f"an option of {'/'.join(users)} only, not {name}",
                            value)
        kwargs[applicable[option]] = value
    check_seed(args.seed)
    # Reserve and check the target before spending minutes on the simulation.
    with reserved(args.out) as out:
        check_out_file(out, args.overwrite, example="data.nc")
        ds = SIMULATORS[name](args.n, seed=args.seed, n_test=args.n_test, progress=not args.no_progress, **kwargs)
        save_fields(ds, out, overwrite=args.overwrite)
    split = ds.coords["split"].values.astype(str)
    n_train, n_test = int((split == "train").sum()), int((split == "test").sum())
    sizes = {str(d): int(ds.sizes[d]) for d in ds["field"].dims[1:]}
    shape = ", ".join(f"{d} {n}" for d, n in sizes.items())
    report(args, {"out": str(out), "simulator": name, "trajectories": int(ds.sizes["trajectory"]), "train": n_train,
                  "test": n_test, "sizes": sizes, "units": str(ds.attrs["units"]), "seed": int(args.seed)},
           f"wrote {ds.sizes['trajectory']} {name} trajectories ({n_train} train, {n_test} test; {shape}; "
           f"{ds.attrs['units']}) to {out}")
    return 0
