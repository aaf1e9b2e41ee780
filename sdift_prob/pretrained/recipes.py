"""How every trained run of this project is made: one recipe per dataset, as CLI command lines.

The shipped bundles (`scripts/build_pretrained.sh`), the benchmark suite's `full` mode
(`benchmarks/accuracy.py`) and the model cards all read these, so a model card's commands are
the commands that made it.

    python -m sdift_prob.pretrained.recipes fluid2d scratch/build-fluid2d   # prints the commands
    python -m sdift_prob.pretrained.recipes ocean-more scratch/ocean-more   # the "more data" path
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..errors import bad_input

__all__ = ["CPU_PRIOR", "MORE_DATA", "RECIPES", "commands", "more_data_commands"]

# The tested CPU recipe of the prior (what the shipped bundles use), and the defaults of
# `sdift train-prior` (sdift_prob.commands.train_prior reads them from here).
_PRIOR = "--steps 4000 --lr 1e-3 --warmup 200 --batch 8 --seq-len 12 --channels 16 --seed 0 --checkpoint-every 250"


def _options(line: str) -> dict[str, int | float]:
    """`--name value` pairs of a command line as {"name": number} (dashes to underscores)."""
    words = shlex.split(line)
    out: dict[str, int | float] = {}
    for flag, value in zip(words[::2], words[1::2]):
        out[flag.lstrip("-").replace("-", "_")] = float(value) if any(c in value for c in ".e") else int(value)
    return out


CPU_PRIOR: dict[str, int | float] = _options(_PRIOR)

RECIPES: dict[str, dict[str, str]] = {
    "ocean": {"simulate": "--n 120 --seed 0", "ranks": "8 8 8", "fit": "--seed 0", "prior": _PRIOR},
    "fluid2d": {"simulate": "--n 120 --seed 0", "ranks": "24 24", "fit": "--seed 0", "prior": _PRIOR},
    # Gray-Scott spots are localised: ranks 8^3 leave a full-field FTM error of 0.35 (measured),
    # 12^3 is the largest core the CPU prior and sampler handle comfortably.
    "field3d": {"simulate": "--n 120 --seed 0", "ranks": "12 12 12", "fit": "--seed 0", "prior": _PRIOR},
}


# "Train your own with more data" (issue 17): simulate many trajectories (cheap), fit the FTM's
# networks on a subset (the expensive part), encode all other training trajectories through the
# fixed basis (`sdift encode`: exact least squares on the full grid, seconds per hundred), then
# train the prior on every core sequence. Not yet run end to end on the CPU machines: the
# figures (cost, prior quality, accuracy) are issue 17's to measure before a bundle ships from it.
MORE_DATA: dict[str, dict[str, str]] = {
    "ocean-more": {"dataset": "ocean", "simulate": "--n 1200 --n-test 200 --seed 0", "ranks": "8 8 8",
                   "fit": "--seed 0 --train all-train:100 --lazy", "encode": "--ids all-train --replace-fitted",
                   "prior": _PRIOR},
}


def more_data_commands(name: str, workdir: str | Path, sdift: str = "sdift") -> list[list[str]]:
    """The command lines of a `MORE_DATA` recipe in `workdir` (`data.nc`, `run/`): simulate, fit-ftm
    on a subset, encode the rest, train-prior."""
    if name not in MORE_DATA:
        raise bad_input("name", f"one of {sorted(MORE_DATA)}", name)
    r = MORE_DATA[name]
    w = Path(workdir)
    return [
        [sdift, "simulate", r["dataset"], *shlex.split(r["simulate"]), "--out", str(w / "data.nc")],
        [sdift, "fit-ftm", str(w / "data.nc"), "--ranks", *r["ranks"].split(), "--out", str(w / "run"),
         *shlex.split(r["fit"])],
        [sdift, "encode", str(w / "run"), "--data", str(w / "data.nc"), *shlex.split(r["encode"])],
        [sdift, "train-prior", str(w / "run"), *shlex.split(r["prior"])],
    ]


def commands(name: str, workdir: str | Path, sdift: str = "sdift") -> list[list[str]]:
    """The command lines (argv lists) that simulate the data, fit the FTM and train the prior of
    dataset `name` in `workdir` (`data.nc`, `run/`)."""
    if name not in RECIPES:
        raise bad_input("name", f"one of {sorted(RECIPES)}", name)
    r = RECIPES[name]
    w = Path(workdir)
    return [
        [sdift, "simulate", name, *shlex.split(r["simulate"]), "--out", str(w / "data.nc")],
        [sdift, "fit-ftm", str(w / "data.nc"), "--ranks", *r["ranks"].split(), "--out", str(w / "run"),
         *shlex.split(r["fit"])],
        [sdift, "train-prior", str(w / "run"), *shlex.split(r["prior"])],
    ]


if __name__ == "__main__":
    if len(sys.argv) != 3:
        print("usage: python -m sdift_prob.pretrained.recipes NAME WORKDIR", file=sys.stderr)
        raise SystemExit(2)
    make = more_data_commands if sys.argv[1] in MORE_DATA else commands
    for argv in make(sys.argv[1], sys.argv[2]):
        print(shlex.join(argv))
