"""Copy a trained run into the package as a shipped bundle, with test data and a model card.

    python -m sdift_prob.pretrained.package ocean scratch/build-ocean

Expects `WORKDIR/data.nc` (the simulated collection) and `WORKDIR/run` (fit-ftm + train-prior).
Writes `sdift_prob/pretrained/NAME/`: `run/` (manifest, FTM, prior; no checkpoints),
`test_trajectory.nc` (the first test trajectory), observation sets, `MODEL_CARD.md`.
"""

from __future__ import annotations

import argparse
import json
import shlex
import shutil
from pathlib import Path

import jax
import numpy as np

from ..data.fields import load_fields, save_fields
from ..data.observations import sample_observations, select_trajectory
from ..io import atomic_dir
from ..run import read_manifest
from . import ROOT


def package(name: str, work: Path, obs_args: str) -> Path:
    data = load_fields(work / "data.nc")
    manifest = read_manifest(work / "run", verify=True)
    test_index = int(np.where(data.split.values == "test")[0][0])
    one = data.isel(trajectory=[test_index])
    std = float(np.std(data["field"].values[data.split.values == "train"]))
    opts = shlex.split(obs_args)
    rho = float(opts[opts.index("--rho") + 1]) if "--rho" in opts else 0.01
    target = ROOT / name
    with atomic_dir(target, overwrite=True) as tmp:
        run_dir = tmp / "run"
        run_dir.mkdir()
        for section in manifest["sections"].values():
            for fname in section["files"]:
                shutil.copy2(work / "run" / fname, run_dir / fname)
        shutil.copy2(work / "run" / "manifest.json", run_dir / "manifest.json")
        save_fields(one, tmp / "test_trajectory.nc")
        truth = select_trajectory(one, 0)
        noise = 0.1 * std
        obs = sample_observations(jax.random.key(1), truth, rho=rho, setting=1, noise="gaussian", noise_scale=noise)
        obs.save(tmp / f"obs_rho{round(100 * rho)}pct.nc")
        if name == "ocean":
            prof = sample_observations(jax.random.key(2), truth, rho=None, n_profiles=4, pattern="profiles",
                                       setting=2, noise="gaussian", noise_scale=noise)
            prof.save(tmp / "obs_profiles.nc")
        card = model_card(name, manifest, data, test_index, rho, noise)
        (tmp / "MODEL_CARD.md").write_text(card)
    return target


def model_card(name: str, manifest: dict, data, test_index: int, rho: float, noise: float) -> str:
    ftm = manifest["sections"]["ftm"]["info"]
    prior = manifest["sections"].get("prior", {}).get("info", {})
    lines = [
        f"# Pretrained bundle `{name}`",
        "",
        "Trained on this project's CPU machines (2 cores) with the project's own commands, by",
        f"`scripts/build_pretrained.sh {name}` (see that script for the exact command lines):",
        "",
        f"- data: `sdift simulate {name} --n 120 --seed 0` — parameters: `{data.attrs.get('parameters', '')}`",
        f"- FTM: `sdift fit-ftm ... --ranks {' '.join(map(str, ftm['ranks']))} --seed 0`",
        f"  fit summary: `{json.dumps(ftm.get('extra', {}).get('fit', {}))}`",
        f"- prior: `sdift train-prior` with config `{json.dumps(prior.get('config', prior))[:2000]}`",
        f"  training report: `{json.dumps({k: prior[k] for k in prior if k not in ('config', 'loss_history')})[:2000]}`",
        f"- test data: trajectory {test_index} of the collection (split `test`, never seen in training);",
        f"  `obs_rho{round(100 * rho)}pct.nc`: {100 * rho:g}% of the grid per time stamp, Gaussian noise std "
        f"{noise:.4g} ({data['field'].attrs.get('units', '')}, 0.1 x the training std), key 1.",
        "",
        "Package versions at training time: "
        f"`{json.dumps(manifest.get('versions', manifest.get('package_versions', {})))}`",
    ]
    return "\n".join(lines) + "\n"


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("name", choices=("ocean", "fluid2d"))
    p.add_argument("work", type=Path)
    p.add_argument("--obs-args", default="--rho 0.01")
    args = p.parse_args(argv)
    target = package(args.name, args.work, args.obs_args)
    size = sum(f.stat().st_size for f in target.rglob("*") if f.is_file())
    print(f"wrote {target} ({size / 1e6:.2f} MB)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
