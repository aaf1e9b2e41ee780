"""FTM fit: resumable checkpoints (SIGINT/SIGTERM, real signals in a subprocess), streamed fits of
lazily opened files, and the chunked mask/statistics that make them equal the in-memory fit."""

from __future__ import annotations

import dataclasses
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import equinox as eqx
import jax
import numpy as np
import pytest

import reliability_helpers as rh
from sdift_prob import cli
from sdift_prob.data.fields import assign_split, save_fields
from sdift_prob.errors import FormatError, InputError, NumericalError, TrainingInterrupted
from sdift_prob.ftm import load_run
from sdift_prob.ftm.fit import FIT_CHECKPOINT_NAME, _masks, _trajectory_masks, fit_ftm
from sdift_prob.gpsd.checkpoint import read_header
from sdift_prob.streaming import TrajectoryReader, is_lazy, open_fields_lazy

ROOT = Path(__file__).resolve().parents[1]


def leaves(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))]


def assert_same_fit(a, b):
    np.testing.assert_array_equal(np.asarray(a.cores), np.asarray(b.cores))
    for x, y in zip(leaves(a.model), leaves(b.model), strict=True):
        np.testing.assert_array_equal(x, y)
    assert a.normalizer == b.normalizer


@pytest.fixture(scope="module")
def ds():
    return rh.collection()


@pytest.fixture(scope="module")
def straight(ds):
    return rh.tiny_fit(ds)


def test_chunked_masks_equal_the_whole_array_masks():
    key = jax.random.key(3)
    train, hold = _masks(key, (5, 4, 3, 2), 0.6, 0.1)
    for lo, hi in ((0, 2), (2, 5), (4, 5)):
        tr, ho = _trajectory_masks(key, lo, hi, (4, 3, 2), 0.6, 0.1)
        np.testing.assert_array_equal(tr, train[lo:hi])
        np.testing.assert_array_equal(ho, hold[lo:hi])


def test_sigint_then_resume_is_bitwise_the_uninterrupted_fit(ds, straight, tmp_path):
    fit, rep = straight

    def interrupt(epoch, loss):
        if epoch == 4:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="after epoch 4") as info:
        rh.tiny_fit(ds, checkpoint_dir=tmp_path, callback=interrupt)
    assert info.value.step == 4
    header = read_header(tmp_path / FIT_CHECKPOINT_NAME)
    assert header["state"]["epoch"] == 4 and header["step"] == 4 * rep["steps_per_epoch"]
    resumed, rep2 = rh.tiny_fit(ds, checkpoint_dir=tmp_path)
    assert rep2["resumed_from"] == 4 and rep2["epochs"] == rep["epochs"]
    assert rep2["loss_curve"] == rep["loss_curve"] and rep2["holdout_curve"] == rep["holdout_curve"]
    assert_same_fit(fit, resumed)
    # a finished checkpoint gives the same fit at once; other data, settings or key are refused
    again, rep3 = rh.tiny_fit(ds, checkpoint_dir=tmp_path)
    assert rep3["resumed_from"] == rep["epochs"]
    assert_same_fit(fit, again)
    with pytest.raises(InputError, match="other fields"):
        rh.tiny_fit(rh.collection(seed=1), checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="another key"):
        rh.tiny_fit(ds, seed=7, checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="lr"):
        fit_ftm(ds, (2, 2), key=jax.random.key(0), config=dataclasses.replace(rh.FTM_CONFIG, lr=1e-2),
                progress=False, checkpoint_dir=tmp_path)
    fresh, rep4 = rh.tiny_fit(ds, seed=7, checkpoint_dir=tmp_path, resume=False)
    assert rep4["resumed_from"] is None
    # a damaged checkpoint is a FormatError, not a deserialisation traceback
    path = tmp_path / FIT_CHECKPOINT_NAME
    path.write_bytes(path.read_bytes()[:-50])
    with pytest.raises(FormatError, match="structure|checkpoint"):
        rh.tiny_fit(ds, seed=7, checkpoint_dir=tmp_path)


@pytest.mark.parametrize("sig", [signal.SIGTERM])
def test_real_signal_in_a_subprocess_then_resume(ds, straight, tmp_path, sig):
    """A separate process is stopped by a real signal mid-fit; resuming here loses and repeats no
    epoch (the result is bitwise the uninterrupted fit)."""
    proc = subprocess.Popen([sys.executable, str(ROOT / "tests" / "scripts" / "fit_interrupt.py"), str(tmp_path)],
                            cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu"}, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    lines = []
    try:
        for line in proc.stdout:
            lines.append(line.strip())
            if line.startswith("epoch 3"):
                proc.send_signal(sig)
        proc.wait(timeout=300)
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == 3, (lines, proc.stderr.read()[-2000:])
    stopped = int(lines[-1].split()[1])
    assert 3 <= stopped < rh.FTM_CONFIG.epochs
    assert read_header(tmp_path / FIT_CHECKPOINT_NAME)["state"]["epoch"] == stopped
    resumed, rep = rh.tiny_fit(ds, checkpoint_dir=tmp_path)
    assert rep["resumed_from"] == stopped
    assert rep["loss_curve"] == straight[1]["loss_curve"]
    assert_same_fit(straight[0], resumed)


def test_lazy_file_fit_equals_in_memory_fit(ds, straight, tmp_path):
    path = tmp_path / "fields.nc"
    save_fields(assign_split(ds, n_test=1, key=jax.random.key(0)), path)
    whole = ds  # the same values in memory
    streamed_mem, rep_mem = rh.tiny_fit(whole, stream=True, chunk_trajectories=4)
    with open_fields_lazy(path) as lazy:
        assert is_lazy(lazy["field"])
        streamed_file, rep_file = rh.tiny_fit(lazy, chunk_trajectories=4)
        assert is_lazy(lazy["field"])  # the fit never loaded the whole field
    assert rep_file["streamed"] and rep_mem["streamed"]
    assert_same_fit(streamed_mem, streamed_file)
    assert rep_mem["loss_curve"] == rep_file["loss_curve"]
    # the streamed fit is the in-memory (one lax.scan per epoch) fit up to float32 rounding
    np.testing.assert_allclose(np.asarray(streamed_file.cores), np.asarray(straight[0].cores), atol=1e-5)
    assert abs(rep_file["full_vrmse"] - straight[1]["full_vrmse"]) < 1e-5


def test_lazy_reader_reads_any_order_and_names_bad_values(ds, tmp_path):
    path = tmp_path / "fields.nc"
    save_fields(assign_split(ds, n_test=1, key=jax.random.key(0)), path)
    with open_fields_lazy(path) as lazy:
        reader = TrajectoryReader(lazy["field"])
        np.testing.assert_array_equal(reader.read([3, 0, 3]), ds["field"].values[[3, 0, 3]])
        with pytest.raises(InputError, match="idx"):
            reader.read([6])
    bad = ds.copy(deep=True)
    bad["field"].values[2, 1, 0, 0] = np.inf
    reader = TrajectoryReader(bad["field"])
    with pytest.raises(InputError, match="trajectory position 2"):
        reader.read([0, 2])
    (tmp_path / "junk.nc").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)
    with pytest.raises(FormatError, match="not a readable netCDF"):
        open_fields_lazy(tmp_path / "junk.nc")
    with pytest.raises(InputError, match="existing file"):
        open_fields_lazy(tmp_path / "missing.nc")


def test_nonfinite_loss_names_the_epoch(ds):
    cfg = dataclasses.replace(rh.FTM_CONFIG, lr=1e30, lr_cores=1e30, warmup=0)
    with pytest.raises(NumericalError, match=r"at epoch \d+"):
        fit_ftm(ds, (2, 2), key=jax.random.key(0), config=cfg, progress=False)


def test_cli_fit_ftm_lazy_with_checkpoints(ds, tmp_path, capsys):
    path = tmp_path / "fields.nc"
    save_fields(assign_split(ds, n_test=1, key=jax.random.key(0)), path)
    out = tmp_path / "run"
    args = ["fit-ftm", str(path), "--ranks", "2", "2", "--epochs", "3", "--width", "8", "--batch", "2",
            "--out", str(out), "--lazy", "--no-progress"]
    assert cli.main([*args, "--json-summary"]) == 0
    stdout, stderr = capsys.readouterr()
    summary = json.loads(stdout)  # one JSON object, nothing else on stdout; the summary for people on stderr
    assert summary["run_dir"] == str(out) and summary["epochs"] == 3 and f"wrote {out}: FTM ranks 2 x 2" in stderr
    assert load_run(out).cores.shape[0] == 5
    assert not (tmp_path / "run.ftm-checkpoint").exists()  # the default checkpoint folder is tidied up
    assert cli.main([*args, "--checkpoint-dir", str(tmp_path / "ck")]) == 1  # --out exists
    assert "--out" in capsys.readouterr().err
