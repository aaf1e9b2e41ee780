"""Cost of one draw, variants timed interleaved in one process (A B C D, A B C D, ...).

    taskset -c 0 python -m benchmarks.cost_interleaved --out benchmarks/results/speed_cost_interleaved.json

On a shared machine a variant timed in one block can meet a busy spell the next one misses;
interleaving the rounds spreads that over all variants. Inputs: `benchmarks.speed`'s default
(the shipped ocean run, 1% synthetic points at every time stamp, 20 sampler steps); each
variant (`benchmarks.variants` names) compiled once, then `--rounds` rounds, minimum reported.
"""

from __future__ import annotations

import argparse
import os
import platform
import time
from collections.abc import Sequence

import jax
import numpy as np

from benchmarks.speed import guided, sampler_inputs, synthetic_obs
from inference.reconstruct import open_run
from sdift_prob import pretrained
from sdift_prob.io import write_json

DEFAULT_VARIANTS = ("mmps_cg3_a4", "mmps_cg3", "mpdps", "mmps_cg2_a4")


def main(argv: Sequence[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--out", required=True)
    p.add_argument("--draws", type=int, default=16)
    p.add_argument("--rounds", type=int, default=3)
    p.add_argument("--variants", nargs="+", default=list(DEFAULT_VARIANTS))
    args = p.parse_args(argv)

    run = open_run(pretrained.path("ocean") / "run", require_prior=True)
    times = np.asarray(run.ftm.times)
    n = round(0.01 * np.prod([len(g) for g in run.ftm.grids])) * times.size
    inputs = sampler_inputs(run, synthetic_obs(run, jax.random.key(1), int(n), times), times)
    calls = {v: guided(run, run.prior, inputs, jax.random.key(0), args.draws, method=v) for v in args.variants}
    for call in calls.values():
        jax.block_until_ready(call())  # compile
    seconds: dict[str, list[float]] = {v: [] for v in args.variants}
    for _ in range(args.rounds):
        for v, call in calls.items():
            t0 = time.perf_counter()
            jax.block_until_ready(call())
            seconds[v].append(time.perf_counter() - t0)
    best = {v: min(t) for v, t in seconds.items()}
    ref = best.get("mpdps")
    result = {"draws": args.draws, "points": int(n), "rounds": args.rounds, "seconds_min": best, "all": seconds,
              "over_mpdps": {v: b / ref for v, b in best.items()} if ref else None,
              "machine": {"platform": platform.platform(), "cpu_count": os.cpu_count(), "jax": jax.__version__}}
    print(result, flush=True)
    write_json(args.out, result)


if __name__ == "__main__":
    main()
