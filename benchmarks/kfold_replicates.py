"""Cross-validated field temperature on replicate observation sets of the shipped ocean test trajectory: out-of-fold coverage.

    python -m benchmarks.kfold_replicates --replicates 20 --draws 16 --out benchmarks/results/kfold_replicates.json

The aim of issue 18: on 20 replicate ocean datasets (ρ 1%, σ inferred), the out-of-fold 90%
coverage of the cross-validated calibration is 0.85-0.95, with the in-fold figure beside it.
Replicate r draws fresh observations of the bundle's test trajectory (`sample_observations`, key
100 + r, ρ 1%, setting 1, noise std = the bundle's 2.356 m/s), predicts every observation from
the other folds (`predict_folds_reconstruction`: 5 folds, 20% of the time stamps held out whole,
MMPS, σ inferred, key r) and fits τ (`calibrate_folds`, key 1000 + r). Per replicate: the
`KFoldCalibration.to_dict()` (coverage by stage before / in_fold / out_of_fold × subset all /
observed_frames / unobserved_frames × level 0.5 / 0.9, τ) and the wall time; the summary gives the
mean and [min, max] of each coverage, the share of replicates whose out-of-fold "all" 90%
coverage lies in [0.85, 0.95], and τ. The JSON is rewritten after every replicate; a rerun with
the same --out skips the replicates already in it.
"""

from __future__ import annotations

import argparse
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jax
import numpy as np

from inference.calibrate import calibrate_folds
from inference.reconstruct import open_run, predict_folds_reconstruction
from sdift_prob import pretrained
from sdift_prob.data import ObservationSet, load_fields, sample_observations, select_trajectory
from sdift_prob.io import write_json

STAGES = ("before", "in_fold", "out_of_fold")
SUBSETS = ("all", "observed_frames", "unobserved_frames")
AIM = (0.85, 0.95)


def _stat(values: list[float | None]) -> dict[str, Any]:
    v = np.asarray([x for x in values if x is not None], dtype=np.float64)
    if v.size == 0:
        return {"mean": None, "range": None, "n": 0}
    return {"mean": float(v.mean()), "range": [float(v.min()), float(v.max())], "n": int(v.size)}


def summarise(rows: list[dict[str, Any]]) -> dict[str, Any]:
    """Across replicates: coverage mean and [min, max] per stage × subset × level, the share in the
    aim's band, τ."""
    cov = {stage: {subset: {lv: _stat([r["calibration"]["coverage"][stage][subset][lv] for r in rows])
                            for lv in ("0.5", "0.9")} for subset in SUBSETS} for stage in STAGES}
    oof = [r["calibration"]["coverage"]["out_of_fold"]["all"]["0.9"] for r in rows]
    in_band = [x is not None and AIM[0] <= x <= AIM[1] for x in oof]
    return {
        "n_replicates": len(rows),
        "coverage": cov,
        "out_of_fold_all_90_in_band": {"band": list(AIM), "fraction": float(np.mean(in_band)),
                                       "count": int(np.sum(in_band))},
        "temperature": _stat([r["calibration"]["temperature"] for r in rows]),
        "temperature_folds": _stat([t for r in rows for t in r["calibration"]["temperature_folds"]]),
        "temperature_observed_frames": _stat(
            [r["calibration"]["temperature_by_subset"]["observed_frames"] for r in rows]),
        "temperature_unobserved_frames": _stat(
            [r["calibration"]["temperature_by_subset"]["unobserved_frames"] for r in rows]),
        "reached": int(sum(r["calibration"]["reached"] for r in rows)),
        "wall_seconds": _stat([r["wall_seconds"] for r in rows]),
        "num_draws": sorted({r["calibration"]["num_draws"] for r in rows}),
        "n_folds": sorted({r["calibration"]["n_folds"] for r in rows}),
    }


def _print_summary(s: dict[str, Any]) -> None:
    print(f"summary over {s['n_replicates']} replicates (draws {s['num_draws']}, folds {s['n_folds']})")
    for lv in ("0.9", "0.5"):
        print(f"  {lv} coverage   " + "  ".join(f"{st:>22s}" for st in STAGES))
        for subset in SUBSETS:
            cells = []
            for st in STAGES:
                c = s["coverage"][st][subset][lv]
                cells.append("n/a" if c["mean"] is None else
                             f"{c['mean']:.3f} [{c['range'][0]:.3f},{c['range'][1]:.3f}]")
            print(f"  {subset:17s} " + "  ".join(f"{c:>22s}" for c in cells))
    b = s["out_of_fold_all_90_in_band"]
    t = s["temperature"]
    print(f"  out-of-fold all 90% in {b['band']}: {b['count']}/{s['n_replicates']} = {b['fraction']:.2f}")
    print(f"  tau mean {t['mean']:.3f} range {t['range']}  wall/replicate {s['wall_seconds']['mean']:.1f} s",
          flush=True)


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--replicates", type=int, default=20)
    p.add_argument("--draws", type=int, default=16)
    p.add_argument("--folds", type=int, default=5)
    p.add_argument("--frame-fraction", type=float, default=0.2)
    p.add_argument("--rho", type=float, default=0.01)
    p.add_argument("--sampler", default="mmps")
    args = p.parse_args(argv)

    bundle = pretrained.path("ocean")
    run = open_run(bundle / "run")
    truth = select_trajectory(load_fields(bundle / "test_trajectory.nc"), 0)
    noise = float(ObservationSet.load(bundle / "obs_rho1pct.nc").attrs["noise_scale"])
    config = {"replicates": args.replicates, "draws": args.draws, "n_folds": args.folds,
              "frame_fraction": args.frame_fraction, "rho": args.rho, "setting": 1, "sampler": args.sampler,
              "sigma": "infer", "noise_scale": noise, "obs_key": "100 + r", "fold_key": "r",
              "calibrate_key": "1000 + r"}
    command = "python -m benchmarks.kfold_replicates " + " ".join(argv if argv is not None else sys.argv[1:])

    rows: list[dict[str, Any]] = []
    if Path(args.out).exists():
        import json

        old = json.loads(Path(args.out).read_text())
        same = {k: v for k, v in old.get("config", {}).items() if k != "replicates"} == \
            {k: v for k, v in config.items() if k != "replicates"}
        if not same:
            raise SystemExit(f"{args.out} holds a run with another configuration: {old.get('config')}")
        rows = [r for r in old.get("replicates", []) if r["replicate"] < args.replicates]
        print(f"resuming: {len(rows)} replicate(s) already in {args.out}", flush=True)
    done = {r["replicate"] for r in rows}

    for r in range(args.replicates):
        if r in done:
            continue
        obs = sample_observations(jax.random.key(100 + r), truth, rho=args.rho, setting=1, noise_scale=noise)
        started = time.perf_counter()
        preds = predict_folds_reconstruction(run, obs, key=jax.random.key(r), n_folds=args.folds,
                                             frame_fraction=args.frame_fraction, sampler=args.sampler,
                                             draws=args.draws, sigma="infer")
        cal = calibrate_folds(jax.random.key(1000 + r), preds)
        wall = time.perf_counter() - started
        d = cal.to_dict()
        rows.append({"replicate": r, "n_obs": int(obs.n_points), "wall_seconds": wall, "calibration": d})
        rows.sort(key=lambda x: x["replicate"])
        c = d["coverage"]
        print(f"replicate {r}: tau {d['temperature']:.3f}  90% all before/in/out "
              f"{c['before']['all']['0.9']:.3f}/{c['in_fold']['all']['0.9']:.3f}/{c['out_of_fold']['all']['0.9']:.3f}"
              f"  unobserved out {c['out_of_fold']['unobserved_frames']['0.9']}"
              f"  50% all out {c['out_of_fold']['all']['0.5']:.3f}  {wall:.0f} s", flush=True)
        write_json(args.out, {"command": command, "config": config, "summary": summarise(rows), "replicates": rows})

    s = summarise(rows)
    write_json(args.out, {"command": command, "config": config, "summary": s, "replicates": rows})
    _print_summary(s)


if __name__ == "__main__":
    main()
