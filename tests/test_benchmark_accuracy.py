"""The accuracy suite's parallel mode: the work split into units, each worker's command line,
and a two-worker run that must equal the one-process run figure for figure."""

import dataclasses
import json
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks import accuracy

ROOT = Path(__file__).resolve().parents[1]


def test_units_cover_every_cell_and_the_noise_table_costliest_first():
    suite = dataclasses.replace(accuracy.SUITES["quick"], datasets=("ocean", "fluid2d"))
    units = accuracy.plan_units(suite, ("main", "noise"))
    cells = {(u.dataset, u.setting, u.rho) for u in units if u.table == "main"}
    assert cells == {(d, s, r) for d in ("ocean", "fluid2d") for s in (1, 2) for r in (0.01, 0.03)}
    assert [u for u in units if u.table == "noise"] == [accuracy.Unit("ocean", "noise")]  # ocean only
    costs = [u.cost(suite) for u in units]
    assert costs == sorted(costs, reverse=True) and units[0].dataset == "fluid2d"
    assert accuracy.plan_units(suite, ("noise",)) == [accuracy.Unit("ocean", "noise")]
    assert not accuracy.plan_units(dataclasses.replace(suite, noise_models=()), ("noise",))


@pytest.mark.parametrize("unit", [accuracy.Unit("fluid2d", "main", 2, 0.03), accuracy.Unit("ocean", "noise")])
def test_a_workers_command_line_reproduces_the_parent_suite(unit):
    suite = dataclasses.replace(accuracy.SUITES["full"], n_test=3, first_test=4, draws=5, n_test_noise=2,
                                noise_levels=(0.2, 0.3))
    argv = accuracy.unit_argv(unit, "full", suite, workdir="w", seed=7, methods=("dps", "linear"), out="o.json")
    assert argv[1:3] == ["-m", "benchmarks.accuracy"]
    p = accuracy.parser()
    args = p.parse_args(argv[3:])
    worker = accuracy.suite_from_args(p, args)
    expected = dataclasses.replace(suite, datasets=(unit.dataset,))
    if unit.table == "main":
        expected = dataclasses.replace(expected, settings=(unit.setting,), rho=(unit.rho,))
    assert worker == expected
    assert (args.seed, args.methods, args.tables, args.workdir) == (7, ["dps", "linear"], [unit.table], "w")


def test_bad_jobs_is_refused(tmp_path, capsys):
    with pytest.raises(SystemExit):
        accuracy.main(["--out", str(tmp_path / "x.json"), "--jobs", "0"])
    assert "--jobs: expected a positive number" in capsys.readouterr().err


def _figures(res):
    # every figure but the timings, per cell and method
    return {(c["setting"], c["rho"]): {m: {f: v["values"] for f, v in d.items() if "seconds" not in f}
                                       for m, d in c["methods"].items()}
            for c in res["datasets"]["ocean"]["cells"]}


def test_two_workers_give_the_one_process_figures(tmp_path):
    common = ["--suite", "quick", "--datasets", "ocean", "--methods", "linear", "train_mean", "--n-test", "1",
              "--settings", "1", "--rho", "0.01", "0.03", "--tables", "main", "--workdir", str(tmp_path / "work")]
    runs = {}
    for jobs in (2, 1):  # the parallel run first: it also simulates the data, before its workers start
        out = tmp_path / f"jobs{jobs}.json"
        subprocess.run([sys.executable, "-m", "benchmarks.accuracy", *common, "--jobs", str(jobs), "--out", str(out)],
                       check=True, cwd=ROOT, capture_output=True)
        runs[jobs] = json.loads(out.read_text())
    assert _figures(runs[2]) == _figures(runs[1])
    assert set(_figures(runs[1])) == {(1, 0.01), (1, 0.03)}
    assert runs[2]["jobs"] == 2 and {u["unit"] for u in runs[2]["units"]} == {"ocean-s1-rho0.01", "ocean-s1-rho0.03"}
    assert runs[2]["config"] == runs[1]["config"]
    assert "simulate_s" in runs[2]["datasets"]["ocean"]["provenance"]
    assert not list((tmp_path / "work").glob("accuracy-parts-*"))  # the workers' files are cleaned up


def _small_truth():
    import numpy as np
    import xarray as xr

    t, x, y = np.arange(3.0), np.linspace(0.0, 1.0, 8), np.linspace(0.0, 1.0, 6)
    values = np.sin(3 * x)[None, :, None] * np.cos(2 * y)[None, None, :] + 0.2 * t[:, None, None]
    return xr.DataArray(values, dims=("time", "x", "y"), coords={"time": t, "x": x, "y": y})


def test_multivariate_scores_use_the_same_points_for_every_method():
    import numpy as np

    from sdift_prob.metrics import energy_score, variogram_score

    truth = _small_truth()
    masked = truth.copy()
    masked.values[1, 0, :] = np.nan  # missing in one frame: never chosen
    pts = accuracy.multivariate_points(masked, n=10, seed=0)
    assert pts.size == 10 and not np.isin(pts, np.arange(6)).any()
    np.testing.assert_array_equal(pts, accuracy.multivariate_points(masked, n=10, seed=0))
    draws = truth.values + np.random.default_rng(0).normal(size=(4, *truth.shape))
    y, x = accuracy.on_points(truth.values, draws, pts)
    assert y.shape == (3, 10) and x.shape == (4, 3, 10)
    scores = accuracy.multivariate_scores(y, x)
    assert scores["energy_score"] == energy_score(y, x, max_points=None)
    assert scores["variogram_score"] == variogram_score(y, x, max_points=None)


def test_kriging_gets_joint_draws_scored_like_the_samplers(monkeypatch):
    import jax
    import numpy as np

    truth = _small_truth()

    def field(c, t):
        return np.sin(3 * c[:, 0]) * np.cos(2 * c[:, 1]) + 0.2 * t

    class Exact:
        """A kriging model that knows the field (fitting is tested in test_baselines.py): checks
        that the draws are asked for at the right points and times, frame by frame."""

        noise_std = 0.05

        def predict_grid(self, times, grids, return_std=False):
            return truth.values.copy(), None

        def predict(self, coords, time):
            return field(coords, time), np.full(time.size, 0.01)

        def sample(self, coords, time, *, key, n_samples):
            z = np.asarray(jax.random.normal(key, (n_samples, time.size)))
            return field(coords, time) + 1e-3 * z

    monkeypatch.setattr(accuracy, "fit_kriging", lambda obs, key: Exact())
    r = accuracy.score_kriging(jax.random.key(0), None, truth, n_unc=30, draws=5)
    assert r["n_draws"] == 5 and r["vrmse"] < 1e-6
    # Draws at the truth's own points (to 1e-3): scores near 0, every quantile interval tiny.
    assert 0 < r["energy_score"] < 0.01 and 0 <= r["variogram_score"] < 0.1
    assert 0 <= r["coverage_50_quantile"] <= r["coverage_90_quantile"] <= 1


def test_tables_print_the_multivariate_scores_and_the_draw_count():
    from benchmarks import tables

    def fig(v):
        return {"mean": v, "std": 0.0, "values": [v]}

    sampler = {"vrmse": fig(0.05), "coverage_50": fig(0.5), "coverage_90": fig(0.9), "crps": fig(0.6),
               "coverage_50_quantile": fig(0.4), "coverage_90_quantile": fig(0.75), "n_draws": fig(8),
               "energy_score": fig(12.5), "variogram_score": fig(4800.0)}
    cell = {"setting": 1, "rho": 0.01, "n_test": 1, "multivariate_points": 400,
            "methods": {"mmps": sampler, "kriging": dict(sampler), "linear": {"vrmse": fig(0.2)}}}
    text = "\n".join(tables.main_table("ocean", [cell]))
    assert "[quantile 0.40 / 0.75, 8 draws]" in text
    assert "Multivariate scores on ocean" in text and "at most 400 points per frame" in text
    assert "| **MMPS (default)** | 12.50 / 4800 [8] |" in text and "| kriging (GPJax) | 12.50 / 4800 [8] |" in text
    old = {"setting": 1, "rho": 0.01, "n_test": 1, "methods": {"mmps": {"vrmse": fig(0.05)}}}
    assert "Multivariate" not in "\n".join(tables.main_table("ocean", [old]))  # files from before: no table
