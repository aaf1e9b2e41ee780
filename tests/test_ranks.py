"""Ranks that fit the field: the HOSVD rank sweep (`--ranks auto`) and fit-ftm's loud warning."""

from __future__ import annotations

import argparse
import json

import jax
import numpy as np
import pytest

from sdift_prob.commands import fit_ftm as fit_ftm_cmd
from sdift_prob.data.fields import assign_split, make_field_dataset, save_fields
from sdift_prob.errors import InputError
from sdift_prob.ftm import load_run
from sdift_prob.ftm.ranks import rank_sweep
from sdift_prob.run import MANIFEST


def known_rank_field(ranks=(3, 2), n_traj: int = 8, n_time: int = 6, sizes=(20, 16), noise: float = 0.0, seed=0):
    """`(B, T, I, J)` values exactly of Tucker form with the given ranks (every component carries
    a good share of the energy), plus optional white noise."""
    rng = np.random.default_rng(seed)
    x, y = np.linspace(0, 1, sizes[0]), np.linspace(0, 1, sizes[1])
    fx = np.stack([np.cos(np.pi * i * x) for i in range(ranks[0])], axis=1)
    fy = np.stack([np.cos(np.pi * j * y) for j in range(ranks[1])], axis=1)
    cores = rng.normal(size=(n_traj, n_time, *ranks))
    values = 3.0 + np.einsum("btpq,ip,jq->btij", cores, fx, fy)
    return values + noise * rng.normal(size=values.shape), x, y


def test_sweep_picks_the_known_ranks():
    values, _, _ = known_rank_field((3, 2))
    sweep = rank_sweep(values, target=0.05)
    assert sweep.ranks == (3, 2) and sweep.reached and sweep.error < 1e-8
    assert sweep.n_basis == 4 and sweep.n_check == 4
    # every smaller candidate tried first missed the target
    assert all(c["error"] > 0.05 for c in sweep.candidates[:-1])
    values, _, _ = known_rank_field((4, 5), sizes=(12, 10), seed=1)
    assert rank_sweep(values, target=0.02).ranks == (4, 5)


def test_sweep_says_when_the_target_is_out_of_reach():
    values, _, _ = known_rank_field((3, 2), noise=0.5)  # white noise: full rank
    sweep = rank_sweep(values, target=0.01, max_rank=4)
    assert not sweep.reached and sweep.ranks == (4, 4) and sweep.error > 0.01
    assert sweep.to_dict()["ranks"] == [4, 4]


def test_sweep_names_bad_arguments():
    values, _, _ = known_rank_field()
    with pytest.raises(InputError, match="^target:"):
        rank_sweep(values, target=1.5)
    with pytest.raises(InputError, match="^max_rank:"):
        rank_sweep(values, max_rank=0)
    with pytest.raises(InputError, match="^fields:"):
        rank_sweep(values[:1])
    bad = values.copy()
    bad[0, 0, 0, 0] = np.nan
    with pytest.raises(InputError, match="^fields:.*non-finite"):
        rank_sweep(bad)


def _parser():
    parser = argparse.ArgumentParser()
    fit_ftm_cmd.register(parser.add_subparsers())
    return parser


@pytest.fixture(scope="module")
def data_file(tmp_path_factory):
    values, x, y = known_rank_field((3, 2), n_traj=10)
    ds = make_field_dataset(values, np.linspace(0, 1, 6), {"x": x, "y": y}, units="K", long_name="f",
                            coord_units={"time": "s", "x": "m", "y": "m"},
                            provenance={"simulator": "test", "parameters": {}, "seed": 0})
    ds = assign_split(ds, n_test=2, key=jax.random.key(0))
    return save_fields(ds, tmp_path_factory.mktemp("ranks") / "data.nc")


@pytest.mark.parametrize("extra, flag", [
    (["--ranks", "3", "x"], "--ranks"),
    (["--ranks", "auto", "--target-error", "1.5"], "--target-error"),
    (["--ranks", "auto", "--max-rank", "0"], "--max-rank"),
    (["--ranks", "auto", "--sweep-trajectories", "1"], "--sweep-trajectories"),
])
def test_fit_ftm_options_are_checked_before_any_work(data_file, tmp_path, extra, flag):
    args = _parser().parse_args(["fit-ftm", str(data_file), "--out", str(tmp_path / "r"), "--no-progress", *extra])
    with pytest.raises(InputError, match=f"^{flag}:"):
        args.func(args)
    assert not (tmp_path / "r").exists()


def test_fit_ftm_ranks_auto_and_the_loud_warning(data_file, tmp_path, capsys):
    """One barely trained fit: --ranks auto picks the field's ranks, and the fit's large held-out
    error is said loudly on stderr and recorded in the run."""
    out = tmp_path / "run"
    args = _parser().parse_args(["fit-ftm", str(data_file), "--ranks", "auto", "--out", str(out), "--epochs", "1",
                                 "--width", "16", "--no-progress"])
    args.json_summary = True  # added to every sub-command by sdift_prob.cli
    assert args.func(args) == 0
    captured = capsys.readouterr()
    assert load_run(out).model.ranks == (3, 2)
    assert "--ranks auto: 3 x 2 reaches" in captured.err
    assert "WARNING: the FTM's held-out-entry VRMSE" in captured.err and "no FTM-based reconstruction" in captured.err
    summary = json.loads(captured.out)
    assert summary["rank_sweep"]["ranks"] == [3, 2] and "warning" in summary
    fit = json.loads((out / MANIFEST).read_text())["sections"]["ftm"]["info"]["extra"]["fit"]
    assert fit["warning"].startswith("WARNING") and fit["rank_sweep"]["reached"] and fit["target_error"] == 0.05
