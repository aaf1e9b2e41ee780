"""How every trained run of this project is made: one recipe per dataset, as CLI command lines.

The shipped bundles (`scripts/build_pretrained.sh`), the benchmark suite's `full` mode
(`benchmarks/accuracy.py`) and the model cards all read these, so a model card's commands are
the commands that made it.

    python -m sdift_prob.pretrained.recipes fluid2d scratch/build-fluid2d   # prints the commands
"""

from __future__ import annotations

import shlex
import sys
from pathlib import Path

from ..errors import bad_input

__all__ = ["RECIPES", "commands"]

_PRIOR = "--steps 4000 --lr 1e-3 --warmup 200 --batch 8 --seq-len 12 --channels 16 --seed 0 --checkpoint-every 250"

RECIPES: dict[str, dict[str, str]] = {
    "ocean": {"simulate": "--n 120 --seed 0", "ranks": "8 8 8", "fit": "--seed 0", "prior": _PRIOR},
    "fluid2d": {"simulate": "--n 120 --seed 0", "ranks": "24 24", "fit": "--seed 0", "prior": _PRIOR},
    # Gray-Scott spots are localised: ranks 8^3 leave a full-field FTM error of 0.35 (measured),
    # 12^3 is the largest core the CPU prior and sampler handle comfortably.
    "field3d": {"simulate": "--n 120 --seed 0", "ranks": "12 12 12", "fit": "--seed 0", "prior": _PRIOR},
}


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
    for argv in commands(sys.argv[1], sys.argv[2]):
        print(shlex.join(argv))
