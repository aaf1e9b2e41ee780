"""1 vs 2 (virtual) devices: wall time of sampling 64 posterior draws with MPDPS.

    python -m benchmarks.devices --out benchmarks/results/devices.json

Each device count runs in its own process (`XLA_FLAGS=--xla_force_host_platform_device_count=N`
must be set before JAX starts) on the shipped ocean bundle and its 1% observation set:
`reconstruct(..., sampler="mpdps", draws=64)`, whose `sample_posterior` splits the draws over
all devices (`jax.shard_map` on a `"draws"` mesh axis). The first call compiles; the reported
figures are the sampling wall time (`posterior.attrs["wall_time_s"]`) of the following calls.

On a CPU-only machine the virtual devices are carved out of the same cores: XLA's CPU client
runs each device's program on threads of one shared pool, so 2 devices cannot be expected to
be faster than 1 on a 2-core machine; the figure measures the sharding overhead, not a speed-up.
On a machine with several accelerators each device is real hardware.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def child(repeats: int, draws: int, steps: int) -> dict:
    import jax
    import numpy as np

    from inference.guided import GuidedConfig
    from inference.reconstruct import open_run, reconstruct
    from sdift_prob.data.observations import ObservationSet

    bundle = ROOT / "sdift_prob" / "pretrained" / "ocean"
    run = open_run(bundle / "run")
    obs = ObservationSet.load(bundle / "obs_rho1pct.nc")
    config = GuidedConfig(method="mpdps", guidance="fisher", num_steps=steps)
    times, walls = [], []
    for i in range(repeats + 1):
        t0 = time.perf_counter()
        idata = reconstruct(run, obs, key=jax.random.key(i), sampler="mpdps", draws=draws, config=config)
        walls.append(time.perf_counter() - t0)
        times.append(float(idata.posterior.attrs["wall_time_s"]))
        assert np.isfinite(idata.posterior["field"].values).all()
    return {
        "devices": len(jax.devices()),
        "first_call_sampling_s (includes compilation)": times[0],
        "sampling_s": times[1:],
        "sampling_s_median": float(np.median(times[1:])),
        "reconstruct_wall_s": walls[1:],
        "draws": draws,
        "num_steps": steps,
        "core_shape": list(run.core_shape),
        "time_grid": int(idata.posterior["cores"].sizes["time_grid"]),
        "n_observations": obs.n_points,
    }


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "devices.json"))
    p.add_argument("--devices", type=int, nargs="+", default=[1, 2])
    p.add_argument("--draws", type=int, default=64)
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.child:
        print(json.dumps(child(args.repeats, args.draws, args.steps)))
        return 0
    results = {}
    for n in args.devices:
        env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": f"--xla_force_host_platform_device_count={n}"}
        proc = subprocess.run([sys.executable, "-m", "benchmarks.devices", "--child", "--draws", str(args.draws),
                               "--steps", str(args.steps), "--repeats", str(args.repeats)], cwd=ROOT, env=env,
                              capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            sys.stderr.write(proc.stderr[-4000:])
            return 1
        results[str(n)] = json.loads(proc.stdout.strip().splitlines()[-1])
        print(f"{n} device(s): {results[str(n)]['sampling_s_median']:.2f} s for {args.draws} draws", flush=True)
    one = results.get("1", {}).get("sampling_s_median")
    report = {
        "benchmark": "sampling 64 MPDPS posterior draws (ocean bundle, rho 1%), 1 vs 2 virtual CPU devices",
        "machine": {"cpu_count": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "note": ("virtual CPU devices share the same cores (XLA_FLAGS=--xla_force_host_platform_device_count); "
                 "on this 2-core machine two devices cannot run faster than one; other jobs were running"),
        "results": results,
        "speedup_vs_1_device": {k: one / v["sampling_s_median"] for k, v in results.items()} if one else None,
        "date": time.strftime("%Y-%m-%d"),
    }
    Path(args.out).write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
