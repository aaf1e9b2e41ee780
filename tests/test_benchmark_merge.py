"""benchmarks.merge: pieces of an accuracy table combine into the table one run would write."""

import json

import numpy as np
import pytest

from benchmarks import merge, tables


def _cell(setting, rho, first, values):
    n = len(values)
    return {"setting": setting, "rho": rho, "n_test": n, "first_test": first,
            "test_trajectories": list(range(first, first + n)), "noise": "gaussian", "noise_level": 0.1,
            "methods": {m: {"vrmse": {"mean": float(np.mean(v)), "std": float(np.std(v)), "values": list(v)}}
                        for m, v in (("mpdps", values), ("dps", [x + 0.1 for x in values]))}}


def _result(cells, seed=0, run="run", command="cmd"):
    return {"suite": "quick", "config": {"draws": 8, "noise_scale": 0.1, "source": "bundle"}, "seed": seed,
            "methods": ["mpdps", "dps"], "machine": {}, "command": command, "wall_time_s": 10.0,
            "datasets": {"fluid2d": {"run": run, "training_std": 1.5, "cells": cells, "noise": [],
                                     "wall_time_s": 10.0}}}


def test_pieces_concatenate_in_trajectory_order_and_cells_are_sorted(tmp_path):
    later = _result([_cell(1, 0.01, 3, [0.4, 0.5]), _cell(2, 0.01, 0, [0.9])], command="second")
    earlier = _result([_cell(1, 0.01, 0, [0.1, 0.2, 0.3])], command="first")
    paths = []
    for name, res in (("b.json", later), ("a.json", earlier)):
        paths.append(str(tmp_path / name))
        (tmp_path / name).write_text(json.dumps(res))
    out = tmp_path / "merged.json"
    assert merge.main([*paths, "--out", str(out)]) == 0
    merged = json.loads(out.read_text())
    cells = merged["datasets"]["fluid2d"]["cells"]
    assert [(c["setting"], c["n_test"]) for c in cells] == [(1, 5), (2, 1)]
    v = cells[0]["methods"]["mpdps"]["vrmse"]
    assert v["values"] == [0.1, 0.2, 0.3, 0.4, 0.5]
    assert v["mean"] == pytest.approx(0.3) and v["std"] == pytest.approx(np.std([0.1, 0.2, 0.3, 0.4, 0.5]))
    assert cells[0]["test_trajectories"] == [0, 1, 2, 3, 4]
    assert [s["command"] for s in merged["merged_from"]] == ["second", "first"]
    assert merged["config"] == {"draws": 8, "noise_scale": 0.1, "source": "bundle"}
    md = tables.accuracy_tables(merged)
    assert "n test trajectories, per column" in md and "ρ=1%, setting 1 (n=5)" in md


def test_overlapping_or_incompatible_pieces_are_refused():
    a = _result([_cell(1, 0.01, 0, [0.1, 0.2])])
    with pytest.raises(SystemExit, match=r"test trajectories 1\.\.1 overlap"):
        merge.merge([a, _result([_cell(1, 0.01, 1, [0.3])])], ["a", "b"])
    with pytest.raises(SystemExit, match="seed 1 differs"):
        merge.merge([a, _result([_cell(1, 0.01, 2, [0.3])], seed=1)], ["a", "b"])
    with pytest.raises(SystemExit, match="another run"):
        merge.merge([a, _result([_cell(1, 0.01, 2, [0.3])], run="other")], ["a", "b"])
    with pytest.raises(SystemExit, match=r"test trajectories 2\.\.2 are in none of the files"):
        merge.merge([a, _result([_cell(1, 0.01, 3, [0.3])])], ["a", "b"])
    other = _result([_cell(1, 0.01, 2, [0.3])])
    other["datasets"]["fluid2d"]["cells"][0]["methods"]["dps"]["crps"] = {"mean": 1.0, "std": 0.0, "values": [1.0]}
    with pytest.raises(SystemExit, match="different figures for dps"):
        merge.merge([a, other], ["a", "b"])
