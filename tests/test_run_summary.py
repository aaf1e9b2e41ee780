"""The run summary (issue 16): what a reconstruction conditioned on, from its attrs; printed by
`sdift reconstruct` (stderr, JSON on stdout with --json-summary); `sdift evaluate` refuses a
posterior scored against another trajectory than the one its observations came from."""

from __future__ import annotations

import importlib
import json

import jax
import numpy as np
import pytest

import reliability_helpers as rh
from inference.reconstruct import Run, _noise_source, reconstruct
from inference.report import posterior_attrs
from inference.summary import run_summary, summary_text
from sdift_prob import cli
from sdift_prob.data.fields import assign_split, save_fields
from sdift_prob.data.observations import ObservationSet


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    from sdift_prob.ftm import save_run

    root = tmp_path_factory.mktemp("summary")
    ds = assign_split(rh.collection(), n_test=2, key=jax.random.key(0))
    data = root / "data.nc"
    save_fields(ds, data)
    fit, _ = rh.tiny_fit(rh.collection())
    run_dir = root / "run"
    save_run(run_dir, fit)
    obs_file = root / "obs.nc"
    assert cli.main(["observe", str(data), "--trajectory", "4", "--rho", "0.5", "--noise-scale", "0.1", "--seed", "0",
                     "--out", str(obs_file)]) == 0
    return {"root": root, "data": data, "run": Run(ftm=fit, prior=None), "run_dir": run_dir, "obs_file": obs_file,
            "ds": ds}


def test_summary_of_a_gp_reconstruction(tiny):
    obs = ObservationSet.load(tiny["obs_file"])
    late = np.array([0.0, 0.5, 1.0, 1.5])  # half a training span past the end
    idata = reconstruct(tiny["run"], obs, key=jax.random.key(0), sampler="gp", draws=3, sigma=0.2, times=late)
    s = run_summary(idata)
    assert (s["sampler"], s["chains"], s["draws"], s["steps"], s["conditioned"]) == ("gp", 1, 3, None, True)
    assert s["noise"]["source"] == "given" and s["noise"]["reason"] == "sigma=0.2 given (physical units)"
    assert s["noise"]["std"] == pytest.approx(0.2)  # no representation error recorded for this run
    assert s["data"]["points_used"] == obs.n_points
    # the sampler's frames: the 4 output times and the observed training times 0, .25, .5, .75, 1
    assert (s["data"]["frames"], s["data"]["frames_with_data"], s["data"]["frames_without_data"]) == (6, 5, 1)
    assert s["time_range"]["extrapolated"] and s["time_range"]["spans_outside_training"] == pytest.approx(0.5)
    assert s["observations"]["trajectory"] == 4 and s["observations"]["source"] == str(tiny["data"])
    assert s["self_checks"] == {"mode": "raise", "run": ["range", "residual", "spread"], "failed": []}
    json.dumps(s)  # JSON-ready
    text = summary_text(s)
    assert text.splitlines()[0] == "sampler gp: 1 x 3 draws, likelihood gaussian"
    assert "noise: given, 0.2 field units, sigma=0.2 given" in text
    assert "5 of 6 sampler frames with data, 1 without" in text
    assert "EXTRAPOLATION: 0.5 training spans outside" in text
    assert "observations of trajectory 4 of" in text


def test_summary_says_when_nothing_was_conditioned_on(tiny):
    obs = ObservationSet.load(tiny["obs_file"])
    idata = reconstruct(tiny["run"], obs.subset(np.zeros(obs.n_points, bool)), key=jax.random.key(0),
                        sampler="gp", draws=2, sigma=0.2)
    s = run_summary(idata)
    assert not s["conditioned"] and s["noise"]["source"] == "none"
    assert "NOT conditioned: no observations, these are prior draws" in summary_text(s)


def test_noise_source_says_where_the_level_came_from(tiny):
    obs = ObservationSet.load(tiny["obs_file"])
    assert _noise_source(obs, None, "gaussian", True, False)["source"] == "per point"
    assert _noise_source(obs, "metadata", "gaussian", True, False)["reason"].startswith("sigma='metadata'")
    assert _noise_source(obs, "infer", "gaussian", True, True) == {"source": "inferred", "reason": "sigma='infer'"}
    unknown = _noise_source(obs.subset(np.ones(obs.n_points, bool)), None, "gaussian", True, True)
    assert unknown["reason"] == "sigma not given and obs.noise_scale unknown (NaN) for every point"
    assert _noise_source(obs, 0.3, "gaussian", True, False)["source"] == "given"
    assert _noise_source(obs, None, "poisson", True, False)["source"] == "poisson"


def test_cli_prints_the_summary_on_stderr_and_json_on_request(tiny, capsys):
    root = tiny["root"]
    base = ["reconstruct", str(tiny["run_dir"]), str(tiny["obs_file"]), "--sampler", "gp", "--draws", "2",
            "--sigma", "0.2"]
    assert cli.main([*base, "--out", str(root / "a.nc")]) == 0
    out, err = capsys.readouterr()
    assert out.startswith("wrote ")
    assert "sampler gp: 1 x 2 draws" in err and "noise: given" in err and "self-checks passed" in err
    assert cli.main([*base, "--json-summary", "--out", str(root / "b.nc")]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)  # stdout is the JSON alone
    assert summary["sampler"] == "gp" and summary["noise"]["source"] == "given"
    assert "wrote " in err and "sampler gp" in err


def test_cli_prints_failed_self_checks_with_checks_warn(tiny, capsys, monkeypatch):
    """--checks warn reaches reconstruct, and a failed check kept that way is printed."""
    obs = ObservationSet.load(tiny["obs_file"])
    kept = reconstruct(tiny["run"], obs, key=jax.random.key(0), sampler="gp", draws=2, sigma=0.2)
    attrs = dict(kept.posterior.attrs)
    checks = json.loads(attrs["self_checks"])
    checks["mode"] = "warn"
    checks["results"][0].update(passed=False, message="made up for the test")
    for group in kept.groups():
        kept[group].attrs["self_checks"] = json.dumps(checks)
    seen = {}

    def fake(run, obs, **kwargs):
        seen.update(kwargs)
        return kept

    monkeypatch.setattr(importlib.import_module("inference.reconstruct"), "reconstruct", fake)
    args = ["reconstruct", str(tiny["run_dir"]), str(tiny["obs_file"]), "--sampler", "gp", "--checks", "warn",
            "--out", str(tiny["root"] / "c.nc")]
    assert cli.main(args) == 0
    assert seen["checks"] == "warn" and seen["max_abs_zscore"] == 20.0 and seen["max_memory_gb"] == 8.0
    assert "SELF-CHECK FAILED (range): made up for the test (limit 10)" in capsys.readouterr().err


def test_evaluate_refuses_another_trajectory_than_the_observed_one(tiny, capsys):
    root = tiny["root"]
    post = root / "eval.nc"
    assert cli.main(["reconstruct", str(tiny["run_dir"]), str(tiny["obs_file"]), "--sampler", "gp", "--draws", "2",
                     "--sigma", "0.2", "--out", str(post)]) == 0
    capsys.readouterr()
    assert posterior_attrs(__import__("inference.report", fromlist=["x"]).load_posterior(post))["observations"][
        "trajectory"] == 4
    assert cli.main(["evaluate", str(post), "--truth", str(tiny["data"]), "--trajectory", "3"]) == 1
    err = capsys.readouterr().err
    assert "--trajectory: the posterior was reconstructed from observations of trajectory 4" in err
    assert "pass --trajectory 4" in err
    assert cli.main(["evaluate", str(post), "--truth", str(tiny["data"]), "--trajectory", "4"]) == 0
    assert "vrmse" in json.loads(capsys.readouterr().out)
    # another collection (other seed) under the same trajectory number is refused too
    other = root / "other.nc"
    save_fields(assign_split(rh.collection(seed=7), n_test=2, key=jax.random.key(0))
                .assign_attrs(seed=7), other)
    assert cli.main(["evaluate", str(post), "--truth", str(other), "--trajectory", "4"]) == 1
    assert "--truth: the posterior's observations come from" in capsys.readouterr().err
