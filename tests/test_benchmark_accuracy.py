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
