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
from ..data.sampling import sample_observations, select_trajectory
from ..io import atomic_dir
from ..run import read_manifest
from . import ROOT
from .recipes import commands


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
    """A readable record of how the bundle was made: commands, data, fit and training figures."""
    ftm = manifest["sections"]["ftm"]["info"]
    prior = manifest["sections"].get("prior", {}).get("info", {})
    training = prior.get("training", {})
    fit = ftm.get("extra", {}).get("fit", {})
    cmds = "\n".join(shlex.join(c) for c in commands(name, f"scratch/build-{name}"))
    trace = training.get("loss_trace", {})
    values, stride = trace.get("values", []), trace.get("stride", 1)
    every = max(1, 500 // max(stride, 1))
    trace_rows = ", ".join(f"{i * stride}: {v:.3f}" for i, v in enumerate(values) if i % every == 0)
    units = data["field"].attrs.get("units", "")
    lines = [
        f"# Pretrained bundle `{name}`",
        "",
        "Made on this project's CPU machines (2 cores, no GPU) with the project's own commands",
        f"(`scripts/build_pretrained.sh {name}`, recipe in `sdift_prob/pretrained/recipes.py`):",
        "",
        "```bash",
        cmds,
        f"python -m sdift_prob.pretrained.package {name} scratch/build-{name}",
        "```",
        "",
        "## Data",
        f"- simulator `{data.attrs.get('simulator', name)}`, seed {data.attrs.get('seed', 0)}, "
        f"{data.sizes['trajectory']} trajectories ({int((data.split.values == 'train').sum())} train, "
        f"{int((data.split.values == 'test').sum())} test), grid "
        + ", ".join(f"{d} {data.sizes[d]}" for d in data["field"].dims[1:]) + f", units `{units}`",
        f"- parameters: `{data.attrs.get('parameters', '')}`",
        "",
        "## Functional Tucker model",
        f"- ranks {' x '.join(map(str, ftm['ranks']))}, coordinate nets width {ftm['config'].get('width')} depth "
        f"{ftm['config'].get('depth')} (SIREN, omega {ftm['config'].get('omega')}), all training entries, "
        f"{100 * ftm['config'].get('holdout_fraction', 0):g}% held out for early stopping",
        f"- full-field VRMSE on the training trajectories {fit.get('full_vrmse', float('nan')):.4f}, held-out entries "
        f"{fit.get('holdout_vrmse', float('nan')):.4f}; best epoch {fit.get('best_epoch')} of {fit.get('epochs')}; "
        f"{fit.get('wall_time_s', float('nan')):.0f} s",
        "",
        "## GPSD prior",
        f"- temporal U-Net `{json.dumps(prior.get('net', {}))}`, {training.get('num_parameters', 0):,} parameters",
        f"- EDM `{json.dumps(prior.get('edm', {}))}`; noise kernel `{json.dumps(prior.get('kernel', {}))}`",
        f"- {training.get('steps')} steps, {training.get('steps_per_s', float('nan')):.2f} steps/s, "
        f"{training.get('wall_time_s', float('nan')) / 60:.0f} min; final loss {training.get('final_loss', float('nan')):.3f}",
        f"- loss by step: {trace_rows}",
        "",
        "## Shipped test data",
        f"- `test_trajectory.nc`: trajectory {test_index} of the collection (split `test`, never seen in training)",
        f"- `obs_rho{round(100 * rho)}pct.nc`: {100 * rho:g}% of the grid per time stamp, Gaussian noise std "
        f"{noise:.4g} {units} (0.1 x the training std), key 1",
        "",
        f"Package versions at training time: `{json.dumps(manifest.get('versions', {}))}`",
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
