"""The run summary (issue 16): what a reconstruction conditioned on, from its attrs; printed by
`sdift reconstruct` (stderr, JSON on stdout with --json-summary); `sdift evaluate` refuses a
posterior scored against another trajectory than the one its observations came from. Every
sub-command follows the same output convention (human summary on stderr, one JSON object on
stdout with --json-summary, nothing on stdout otherwise)."""

from __future__ import annotations

import importlib
import json

import jax
import numpy as np
import pytest

import reliability_helpers as rh
from inference.reconstruct import Run, _noise_source, reconstruct
from inference.report import posterior_attrs
from models.likelihoods import Gaussian, PoissonExcess
from models.noise_models import as_noise
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
    def source(sigma, o=obs, likelihood=Gaussian()):
        return _noise_source(as_noise(sigma, o), likelihood, True)

    assert source(None)["source"] == "per point"
    assert source("metadata")["reason"].startswith("sigma='metadata'")
    assert source("infer") == {"source": "inferred", "reason": "sigma='infer'"}
    unknown = ObservationSet(value=obs.value, time=obs.time, coords=obs.coords, space_dims=obs.space_dims,
                             noise_scale=np.full(obs.n_points, np.nan), noise_model=obs.noise_model, attrs=obs.attrs)
    assert source(None, unknown)["reason"] == "sigma not given and obs.noise_scale unknown (NaN) for every point"
    assert source(0.3)["source"] == "given"
    assert source(None, likelihood=PoissonExcess(0.0, 1.0))["source"] == "poisson"


def test_cli_prints_the_summary_on_stderr_and_json_on_request(tiny, capsys):
    root = tiny["root"]
    base = ["reconstruct", str(tiny["run_dir"]), str(tiny["obs_file"]), "--sampler", "gp", "--draws", "2",
            "--sigma", "0.2"]
    assert cli.main([*base, "--out", str(root / "a.nc")]) == 0
    out, err = capsys.readouterr()
    assert out == "" and err.startswith(f"wrote {root / 'a.nc'} (gp, 1 x 2 draws")
    assert "sampler gp: 1 x 2 draws" in err and "noise: given" in err and "self-checks passed" in err
    assert cli.main([*base, "--json-summary", "--out", str(root / "b.nc")]) == 0
    out, err = capsys.readouterr()
    summary = json.loads(out)  # stdout is the JSON alone
    assert summary["sampler"] == "gp" and summary["noise"]["source"] == "given"
    assert summary["out"] == str(root / "b.nc") and summary["wall_time_s"] >= 0
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
    assert cli.main(["evaluate", str(post), "--truth", str(tiny["data"]), "--trajectory", "4", "--json-summary"]) == 0
    out, err = capsys.readouterr()
    scores = json.loads(out)  # one JSON object on stdout, the same scores as a table on stderr
    assert 0 <= scores["coverage_90"] <= 1 and scores["n_draws"] == 2
    assert err.startswith(f"scores of {post} against trajectory 4 of") and "\n  coverage_90 " in err
    # another collection (other seed) under the same trajectory number is refused too
    other = root / "other.nc"
    save_fields(assign_split(rh.collection(seed=7), n_test=2, key=jax.random.key(0))
                .assign_attrs(seed=7), other)
    assert cli.main(["evaluate", str(post), "--truth", str(other), "--trajectory", "4"]) == 1
    assert "--truth: the posterior's observations come from" in capsys.readouterr().err


def _one_json_object(argv, capsys) -> dict:
    """Run `argv` with and without --json-summary (each to a fresh output where it writes one):
    stdout is one JSON object with the flag and empty without it; stderr has the human summary."""
    results = []
    for flag in ([], ["--json-summary"]):
        args = [a.replace("{n}", str(len(flag))) for a in argv] + flag
        assert cli.main(args) == 0, args
        out, err = capsys.readouterr()
        assert err.strip() and not err.lstrip().startswith("{"), err
        results.append(out)
    assert results[0] == ""
    return json.loads(results[1])


def test_every_sub_command_prints_a_summary_on_stderr_and_one_json_object_on_request(tiny, capsys, monkeypatch):
    """The output convention of every sub-command that does not appear elsewhere (reconstruct,
    evaluate: above; fit-ftm: tests/test_ftm_resume.py; seal: tests/test_run.py); the costly parts of
    simulate, train-prior, sample and demo are replaced by stand-ins."""
    import types

    from sdift_prob import pretrained
    from sdift_prob.commands import sample as sample_cmd
    from sdift_prob.commands import train_prior as train_prior_cmd
    from sdift_prob.data import simulate as simulators

    root, data = tiny["root"], str(tiny["data"])
    obs = _one_json_object(["observe", data, "--trajectory", "4", "--rho", "0.5", "--seed", "1",
                            "--out", str(root / "o{n}.nc")], capsys)
    assert obs["points"] == ObservationSet.load(root / "o1.nc").n_points and obs["trajectory"] == 4

    monkeypatch.setitem(simulators.SIMULATORS, "ocean", lambda n, **kw: tiny["ds"])
    sim = _one_json_object(["simulate", "ocean", "--n", "6", "--out", str(root / "s{n}.nc")], capsys)
    assert (sim["trajectories"], sim["train"], sim["test"], sim["units"]) == (6, 4, 2, "K")

    fit = tiny["run"].ftm
    fake_prior = types.SimpleNamespace(
        config=types.SimpleNamespace(num_steps=8),
        sample=lambda key, t, n, steps, **kw: np.zeros((n, len(t), *fit.cores.shape[2:]), np.float32))
    monkeypatch.setattr(sample_cmd, "load_prior", lambda root: fake_prior)
    drawn = _one_json_object(["sample", str(tiny["run_dir"]), "--draws", "2", "--n-times", "3",
                              "--out", str(root / "d{n}.nc")], capsys)
    assert drawn["shape"] == [2, 3, *(len(g) for g in fit.grids)] and drawn["steps"] == 8

    info = {"steps": 4, "resumed_from": None, "final_loss": 0.5, "num_parameters": 10, "steps_per_s": 1.0,
            "kernel": "rbf"}
    monkeypatch.setattr(train_prior_cmd, "train_prior", lambda *a, **k: (None, info))
    monkeypatch.setattr(train_prior_cmd, "save_prior", lambda *a, **k: None)
    trained = _one_json_object(["train-prior", str(tiny["run_dir"]), "--steps", "4"], capsys)
    assert trained["steps"] == 4 and trained["run_dir"] == str(tiny["run_dir"])

    demo = importlib.import_module("sdift_prob.demo")
    monkeypatch.setattr(pretrained, "available", lambda name: True)
    monkeypatch.setattr(demo, "run_demo", lambda **kw: ({"vrmse_posterior_mean": float("nan")}, "demo text"))
    shown = _one_json_object(["demo", "--out", str(root / "demo")], capsys)
    assert shown == {"available": True, "vrmse_posterior_mean": None}  # strict JSON: NaN is null
