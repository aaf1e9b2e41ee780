"""GPSD prior: the temporally augmented U-Net, training on a toy family of core sequences
(sample statistics vs the family's), sampling on irregular/longer grids, checkpoint → resume,
files and run directories, bad input."""

import dataclasses
import math
import os
import signal

import equinox as eqx
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from sdift_prob.errors import FormatError, InputError
from sdift_prob.gpsd import (
    GPSDPrior,
    PriorConfig,
    TemporalUNet,
    TrainingInterrupted,
    count_parameters,
    load_prior_file,
    save_prior_file,
    train_prior,
)
from sdift_prob.gpsd.prior import _draws
from sdift_prob.gpsd.checkpoint import load_checkpoint, read_header, save_checkpoint
from sdift_prob.gpsd.train import CHECKPOINT_NAME

# ---------------------------------------------------------------- the network


def _randomise(net, seed):
    """Every inexact leaf replaced by small random values (the zero-initialised layers too)."""
    rng = np.random.default_rng(seed)
    return jax.tree_util.tree_map(
        lambda a: jnp.asarray(0.2 * rng.normal(size=a.shape), a.dtype) if eqx.is_inexact_array(a) else a, net
    )


@pytest.mark.parametrize(
    "core, kwargs, downs",
    [
        ((8, 8, 8), {}, (True, True)),
        ((16, 16), {}, (True, True)),
        ((3, 5, 3), {"channels": 8, "channel_mult": (1, 2, 2)}, (False, False)),
        ((6, 7), {"channels": 8, "channel_mult": (1, 2, 2)}, (True, False)),
    ],
)
def test_unet_shapes_and_resolution_levels(core, kwargs, downs):
    net = eqx.filter_eval_shape(lambda: TemporalUNet(core, key=jax.random.key(0), **kwargs))
    assert net.downsample == downs  # halve only while both sides are >= 4
    if not kwargs:
        n = count_parameters(net)
        print(f"default TemporalUNet{core}: {n} parameters")
        assert 3e5 <= n <= 2e6
    for T in (1, 5):  # shapes only (no compilation): build and apply inside eval_shape
        out = eqx.filter_eval_shape(
            lambda x: TemporalUNet(core, key=jax.random.key(0), **kwargs)(x, 0.0, jnp.zeros(x.shape[0])),
            jax.ShapeDtypeStruct((T, *core), jnp.float32),
        )
        assert out.shape == (T, *core)


def test_unet_starts_at_zero_and_mixes_frames_only_through_time_convolutions():
    core = (2, 7, 5)  # odd image sides: edge-padded to 8x6 when downsampled, cropped back after
    net = TemporalUNet(core, channels=8, channel_mult=(1, 2), attention=True, key=jax.random.key(0))
    x = jax.random.normal(jax.random.key(1), (6, *core))
    t = jnp.linspace(0, 1, 6)
    f = eqx.filter_jit(lambda n, x, t: n(x, 0.2, t))
    assert float(jnp.abs(f(net, x, t)).max()) == 0.0  # zero output layer: D starts as c_skip x

    # zero-initialised time mixing: with everything else random, frames are independent
    no_mix = _randomise(net, 2)
    no_mix = eqx.tree_at(
        lambda n: [b.mix.conv_out for lvl in n.enc + n.dec for b in lvl] + [b.mix.conv_out for b in n.mid],
        no_mix,
        replace_fn=lambda c: jax.tree_util.tree_map(lambda a: jnp.zeros_like(a) if eqx.is_inexact_array(a) else a, c),
    )
    x2 = x.at[5].add(1.0)
    y, y2 = f(no_mix, x, t), f(no_mix, x2, t)
    np.testing.assert_array_equal(y[:5], y2[:5])
    assert float(jnp.abs(y[5] - y2[5]).max()) > 1e-3
    # with the time convolutions on, a change at frame 5 reaches frame 0 (receptive field ±8 frames)
    mixed = _randomise(net, 2)
    y, y2 = f(mixed, x, t), f(mixed, x2, t)
    assert float(jnp.abs(y[0] - y2[0]).max()) > 1e-4
    # the frames' own time stamps condition the output
    assert float(jnp.abs(f(mixed, x, t) - f(mixed, x, t + 0.05)).max()) > 1e-4


def test_unet_bad_input():
    with pytest.raises(InputError, match="core_shape"):
        TemporalUNet((4,), key=jax.random.key(0))
    with pytest.raises(InputError, match="channel_mult"):
        TemporalUNet((4, 4), channel_mult=(), key=jax.random.key(0))
    with pytest.raises(InputError, match="attention_heads"):
        TemporalUNet((4, 4), channels=6, attention_heads=5, key=jax.random.key(0))
    def apply(x, t):
        return eqx.filter_eval_shape(
            lambda x, t: TemporalUNet((4, 4), channels=8, channel_mult=(1,), key=jax.random.key(0))(x, 0.0, t), x, t
        )

    with pytest.raises(InputError, match="x"):
        apply(jnp.zeros((3, 4, 5)), jnp.zeros(3))
    with pytest.raises(InputError, match="t"):
        apply(jnp.zeros((3, 4, 4)), jnp.zeros(4))


# ---------------------------------------------------------------- a toy family of sequences

T, B, CORE = 10, 48, (4, 4)
FREQ, NOISE = 1.0, 0.05
TOY = PriorConfig(
    channels=8, channel_mult=(1,), num_blocks=1, attention=False, time_features=8,
    batch_size=8, seq_len=T, warmup_steps=50, lr=3e-3, ema_halflife=30, steps=250, checkpoint_every=10_000,
)
SAMPLE_STEPS = 16
BATCH = 50  # draws per compiled sampler call, shared by the tests so it compiles once per grid


def toy_family(seed=0, n=B):
    """x_b(t) = sin(2π f t + φ_b) P + noise: random phase, fixed spatial pattern P."""
    rng = np.random.default_rng(seed)
    t = np.linspace(0.0, 1.0, T)
    pattern = rng.normal(size=CORE)
    phase = rng.uniform(0, 2 * np.pi, n)
    cores = np.sin(2 * np.pi * FREQ * t[None, :] + phase[:, None])[:, :, None, None] * pattern
    return (cores + NOISE * rng.normal(size=cores.shape)).astype(np.float32), t, pattern


def family_stats(pattern, dt):
    """Exact per-entry variance and lag-`dt` autocorrelation of the toy family."""
    var = 0.5 * pattern**2 + NOISE**2
    lag1 = float((0.5 * pattern**2).sum() * np.cos(2 * np.pi * FREQ * dt) / var.sum())
    return var, lag1


def sample_stats(draws):
    x = np.asarray(draws, np.float64)
    x = x - x.mean(axis=0)
    lag1 = float((x[:, 1:] * x[:, :-1]).mean(axis=(0, 1)).sum() / (x**2).mean(axis=(0, 1)).sum())
    return np.asarray(draws).mean(), x.var(axis=0).mean(axis=0), lag1


@pytest.fixture(scope="module")
def toy():
    return toy_family()


@pytest.fixture(scope="module")
def trained(toy):
    cores, t, _ = toy
    return train_prior(cores, t, TOY, key=jax.random.key(0), progress=False)


def test_training_reduces_loss_and_reports(trained):
    prior, report = trained
    losses = np.asarray(report["loss_history"])
    assert report["steps"] == TOY.steps == losses.size and report["resumed_from"] is None
    assert losses[-50:].mean() < 0.6 * losses[:20].mean()
    assert report["num_parameters"] == count_parameters(prior.net)
    assert isinstance(prior, GPSDPrior) and prior.core_shape == CORE


def test_samples_match_the_training_family(trained, toy):
    # tolerances: mean within 0.15 std, total variance within 25%, lag-1 autocorrelation within
    # 0.12 (a 250-step tiny net; the slow test below asks for more)
    prior, _ = trained
    _, t, pattern = toy
    var, lag1 = family_stats(pattern, t[1] - t[0])
    draws = prior.sample(jax.random.key(1), t, 3 * BATCH, SAMPLE_STEPS, batch_size=BATCH)
    assert draws.shape == (3 * BATCH, T, *CORE) and bool(jnp.isfinite(draws).all())
    mean, svar, slag1 = sample_stats(draws)
    print(f"toy family: mean {mean:.3f}, variance ratio {svar.sum() / var.sum():.3f}, lag-1 {slag1:.3f} vs {lag1:.3f}")
    assert abs(mean) < 0.15 * math.sqrt(var.mean())
    assert svar.sum() / var.sum() == pytest.approx(1.0, abs=0.25)
    assert abs(slag1 - lag1) < 0.12


def test_sampler_runs_on_irregular_and_longer_grids(trained, toy):
    prior, _ = trained
    _, _, pattern = toy
    var, _ = family_stats(pattern, 0.1)
    irregular = np.sort(np.random.default_rng(3).uniform(0, 1, T))
    longer = np.linspace(0.0, 2.0, 2 * T + 1)  # twice the training range, more frames than trained
    for times in (irregular, longer):
        draws = prior.sample(jax.random.key(2), times, BATCH, SAMPLE_STEPS, batch_size=BATCH)
        assert draws.shape == (BATCH, times.size, *CORE) and bool(jnp.isfinite(draws).all())
        _, svar, _ = sample_stats(draws)
        assert 0.5 < svar.sum() / var.sum() < 2.0


def test_draws_do_not_depend_on_batch_size(trained, toy):
    # draw i comes from split(key, num_draws)[i] whatever batch (or padding) it is computed in;
    # the shapes here reuse the compiled sampler of the statistics test
    prior, _ = trained
    _, t, _ = toy
    key = jax.random.key(5)
    n = BATCH + 10
    draws = prior.sample(key, t, n, SAMPLE_STEPS, batch_size=BATCH)  # second batch: 10 + 40 padding
    keys = jax.random.split(key, n)
    t_j = jnp.asarray(t, jnp.float32)
    alone = prior.denormalise(_draws(prior, keys[10:], t_j, prior.noise_cholesky(t), SAMPLE_STEPS))
    np.testing.assert_allclose(draws[10:], alone, rtol=1e-5, atol=1e-5)


def test_sample_bad_times(trained):
    prior, _ = trained
    with pytest.raises(InputError, match="finite"):
        prior.sample(jax.random.key(0), [0.0, np.nan, 1.0], 2)
    with pytest.raises(InputError, match="increasing"):
        prior.sample(jax.random.key(0), [0.0, 0.5, 0.2], 2)
    with pytest.raises(InputError, match="duplicate"):
        prior.sample(jax.random.key(0), [0.0, 0.5, 0.5], 2)
    with pytest.raises(InputError, match="num_draws"):
        prior.sample(jax.random.key(0), [0.0, 0.5], 0)
    # near-duplicate time stamps are legal: the jittered kernel matrix still factorises
    assert bool(jnp.isfinite(prior.noise_cholesky([0.0, 1e-9, 0.5])).all())


# ---------------------------------------------------------------- checkpoints and resume


def _leaves(tree):
    return [np.asarray(a) for a in jax.tree_util.tree_leaves(eqx.filter(tree, eqx.is_array))]


def test_interrupt_and_resume_is_bitwise_identical(toy, tmp_path):
    cores, t, _ = toy
    cfg = dataclasses.replace(TOY, steps=6, checkpoint_every=2)
    key = jax.random.key(7)
    straight, rep = train_prior(cores, t, cfg, key=key, progress=False)

    def interrupt(step, loss):
        if step == 3:
            os.kill(os.getpid(), signal.SIGINT)

    with pytest.raises(TrainingInterrupted, match="after step 3") as info:
        train_prior(cores, t, cfg, key=key, progress=False, checkpoint_dir=tmp_path, callback=interrupt)
    assert info.value.step == 3 and read_header(tmp_path / CHECKPOINT_NAME)["step"] == 3
    resumed, rep2 = train_prior(cores, t, cfg, key=key, progress=False, checkpoint_dir=tmp_path)
    assert rep2["resumed_from"] == 3 and rep2["steps_run"] == 3
    assert rep2["loss_history"] == rep["loss_history"]
    for a, b in zip(_leaves(straight), _leaves(resumed), strict=True):
        np.testing.assert_array_equal(a, b)

    # a finished run is returned as it is; other settings / data / key are refused
    again, rep3 = train_prior(cores, t, cfg, key=key, progress=False, checkpoint_dir=tmp_path)
    assert rep3["steps_run"] == 0
    with pytest.raises(InputError, match="lr"):
        train_prior(cores, t, dataclasses.replace(cfg, lr=1e-3), key=key, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="other cores"):
        train_prior(cores * 2, t, cfg, key=key, progress=False, checkpoint_dir=tmp_path)
    with pytest.raises(InputError, match="key"):
        train_prior(cores, t, cfg, key=jax.random.key(8), progress=False, checkpoint_dir=tmp_path)


def test_checkpoint_file_round_trip_and_corruption(tmp_path):
    tree = {"a": jnp.arange(3.0), "b": (jnp.ones((2, 2), jnp.int32), jax.random.key_data(jax.random.key(3)))}
    path = save_checkpoint(tmp_path / "c.eqx", {"sdift_kind": "demo", "x": 1}, tree)
    like = jax.tree_util.tree_map(lambda a: jax.ShapeDtypeStruct(a.shape, a.dtype), tree)
    header, back = load_checkpoint(path, like, kind="demo")
    assert header["x"] == 1 and header["versions"]["jax"] == jax.__version__
    for a, b in zip(jax.tree_util.tree_leaves(tree), jax.tree_util.tree_leaves(back)):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="exists"):
        save_checkpoint(path, {"sdift_kind": "demo"}, tree)
    with pytest.raises(FormatError, match="holds a 'demo'"):
        load_checkpoint(path, like, kind="other")
    bad_like = {"a": jax.ShapeDtypeStruct((4,), jnp.float32), "b": like["b"]}
    with pytest.raises(FormatError, match="structure"):
        load_checkpoint(path, bad_like)
    (tmp_path / "junk.eqx").write_bytes(b"not a checkpoint\n\x00\x01")
    with pytest.raises(FormatError, match="not an sdift checkpoint"):
        read_header(tmp_path / "junk.eqx")


def test_prior_file_round_trip(trained, tmp_path):
    prior, _ = trained
    path = save_prior_file(tmp_path / "p.eqx", prior)
    back = load_prior_file(path)
    assert (back.config, back.kernel, back.core_mean, back.core_std) == (prior.config, prior.kernel, prior.core_mean, prior.core_std)
    for a, b in zip(_leaves(prior.net), _leaves(back.net), strict=True):
        np.testing.assert_array_equal(a, b)
    x = jnp.ones((3, *CORE))
    np.testing.assert_array_equal(back.normalise(prior.denormalise(x)), prior.normalise(prior.denormalise(x)))
    np.testing.assert_allclose(prior.normalise(prior.denormalise(x)), x, rtol=1e-6)


def test_training_bad_input(toy):
    cores, t, _ = toy
    with pytest.raises(InputError, match="cores"):
        train_prior(cores[:, :, 0], t, TOY, progress=False)  # (B, T, R) is not a core sequence
    with pytest.raises(InputError, match="times_norm"):
        train_prior(cores, t[:-1], TOY, progress=False)
    with pytest.raises(InputError, match="times_norm"):
        train_prior(cores, t[::-1], TOY, progress=False)
    with pytest.raises(InputError, match="cores"):
        train_prior(np.where(np.arange(T)[None, :, None, None] == 2, np.nan, cores), t, TOY, progress=False)
    with pytest.raises(InputError, match="seq_len"):
        train_prior(cores, t, dataclasses.replace(TOY, seq_len=T + 1), progress=False)
    with pytest.raises(InputError, match="p_irregular"):
        PriorConfig(p_irregular=1.5)
    with pytest.raises(InputError, match="batch_size"):
        PriorConfig(batch_size=0)
    assert PriorConfig.from_dict(TOY.to_dict()) == TOY


@pytest.mark.slow
def test_samples_match_the_training_family_strict():
    cores, t, pattern = toy_family(seed=1, n=96)
    cfg = dataclasses.replace(TOY, channels=16, steps=3000, batch_size=16, lr=2e-3, ema_halflife=200)
    prior, _ = train_prior(cores, t, cfg, key=jax.random.key(0), progress=False)
    var, lag1 = family_stats(pattern, t[1] - t[0])
    mean, svar, slag1 = sample_stats(prior.sample(jax.random.key(1), t, 500, 32))
    assert abs(mean) < 0.05 * math.sqrt(var.mean())
    assert svar.sum() / var.sum() == pytest.approx(1.0, abs=0.1)
    assert abs(slag1 - lag1) < 0.05


# ---------------------------------------------------------------- run directories and the CLI


def _ftm_run(tmp_path, cores, t, name="run"):
    """A run directory holding an (untrained) FTM with the ranks of `cores` and those cores."""
    from sdift_prob.data.fields import Normalizer
    from sdift_prob.ftm import FTMConfig, FTMFit, FunctionalTucker, save_run

    ranks = tuple(cores.shape[2:])
    model = FunctionalTucker(ranks, domain_lo=(0.0, -1.0), domain_hi=(5.0, 1.0), space_dims=("x", "y"),
                             width=8, depth=1, key=jax.random.key(0))
    grids = (np.linspace(0.0, 5.0, 6), np.linspace(-1.0, 1.0, 3))
    fit = FTMFit(model=model, cores=jnp.asarray(cores), times=100.0 + 50.0 * t, normalizer=Normalizer(10.0, 2.0),
                 time_domain=(100.0, 150.0), trajectory_ids=np.arange(cores.shape[0]),
                 config=FTMConfig(ranks=ranks, width=8, depth=1), grids=grids)
    return save_run(tmp_path / name, fit), fit


def _cli(module, argv):
    import argparse

    parser = argparse.ArgumentParser()
    sub = parser.add_subparsers()
    module.register(sub)
    args = parser.parse_args(argv)
    return args.func(args)


def test_prior_in_a_run_directory(trained, toy, tmp_path):
    from sdift_prob.gpsd import load_prior, save_prior
    from sdift_prob.run import create_run, read_manifest

    prior, report = trained
    cores, t, _ = toy
    run_dir, _ = _ftm_run(tmp_path, cores, t)
    with pytest.raises(InputError, match="no trained prior"):
        load_prior(run_dir)
    save_prior(run_dir, prior, report)
    info = read_manifest(run_dir)["sections"]["prior"]["info"]
    assert info["core_shape"] == list(CORE) and info["training"]["steps"] == TOY.steps
    back = load_prior(run_dir)
    for a, b in zip(_leaves(prior.net), _leaves(back.net), strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(InputError, match="section"):
        save_prior(run_dir, prior, report)  # already there, no overwrite
    empty = create_run(tmp_path / "empty")
    with pytest.raises(InputError, match="no fitted FTM"):
        save_prior(empty, prior, report)
    other, _ = _ftm_run(tmp_path, np.zeros((2, T, 4, 3), np.float32) + cores[:2, :, :, :3], t, name="other")
    with pytest.raises(InputError, match="does not match the FTM ranks"):
        save_prior(other, prior, report)


def test_train_prior_and_sample_commands(trained, toy, tmp_path):
    import xarray as xr

    from sdift_prob.commands import sample as sample_cmd
    from sdift_prob.commands import train_prior as train_cmd
    from sdift_prob.gpsd import load_prior, save_prior

    prior, report = trained
    cores, t, _ = toy
    run_dir, fit = _ftm_run(tmp_path, cores, t)
    # --steps 0 would save an untrained network: refused before anything is loaded
    argv = ["train-prior", str(run_dir), "--steps", "0", "--channels", "8", "--channel-mult", "1",
            "--no-attention", "--seq-len", "50", "--no-progress"]
    with pytest.raises(InputError, match="--steps"):
        _cli(train_cmd, argv)
    # one step: the whole command path (load, configure, train, save) on a tiny network
    argv[3] = "1"
    argv += ["--batch", "2", "--seq-len", "4"]
    assert _cli(train_cmd, argv) == 0
    saved = load_prior(run_dir)
    assert saved.core_shape == CORE and saved.net.channel_mult == (1,) and not saved.net.attention
    assert (run_dir / ".prior-checkpoints" / CHECKPOINT_NAME).is_file()
    with pytest.raises(InputError, match="already has a trained prior"):
        _cli(train_cmd, argv)

    save_prior(run_dir, prior, report, overwrite=True)
    out = tmp_path / "samples.nc"
    argv = ["sample", str(run_dir), "--draws", str(BATCH), "--batch-size", str(BATCH), "--steps", str(SAMPLE_STEPS),
            "--seed", "3", "--out", str(out)]
    assert _cli(sample_cmd, argv) == 0
    with xr.open_dataset(out, engine="h5netcdf") as ds:
        assert ds["field"].dims == ("draw", "time", "x", "y") and ds["field"].shape == (BATCH, T, 6, 3)
        np.testing.assert_allclose(ds["time"].values, fit.times)
        np.testing.assert_allclose(ds["x"].values, fit.grids[0])
        assert ds.attrs["sdift_kind"] == "prior_samples" and ds.attrs["seed"] == 3
        field = ds["field"].values
    # physical units: the FTM decoding of the same draws, through the inverse normaliser
    from sdift_prob.ftm import decode_grid

    draws = prior.sample(jax.random.key(3), t, BATCH, SAMPLE_STEPS, batch_size=BATCH)
    want = fit.normalizer.inverse(np.asarray(decode_grid(fit.model, draws, fit.grids)))
    np.testing.assert_allclose(field, want, rtol=1e-5, atol=1e-4)

    with pytest.raises(InputError, match="--out"):
        _cli(sample_cmd, argv)
    with pytest.raises(InputError, match="increasing"):
        _cli(sample_cmd, ["sample", str(run_dir), "--draws", "2", "--times", "100,120,110",
                          "--out", str(tmp_path / "x.nc")])
    with pytest.raises(InputError, match="--times"):
        _cli(sample_cmd, ["sample", str(run_dir), "--draws", "2", "--times", "1,a", "--out", str(tmp_path / "x.nc")])


@pytest.mark.parametrize("dims, kw", [
    (1, dict(kernel_size=3, padding="SAME")),
    (2, dict(kernel_size=3, padding=1)),
    (2, dict(kernel_size=1)),
    (2, dict(kernel_size=3, stride=2, padding=1, dilation=1, groups=2)),
    (3, dict(kernel_size=3, padding=1, use_bias=False)),
])
def test_channels_last_convolution_equals_equinox(dims, kw):
    # The U-Net computes its convolutions channels-last (fast inside the samplers' scan on the
    # CPU); it must be the same function of the same parameters as Equinox's own call.
    from sdift_prob.gpsd.unet import _conv

    layer = eqx.nn.Conv(dims, 4, 6, key=jax.random.key(0), **kw)
    x = jax.random.normal(jax.random.key(1), (4, *([7] * dims)))
    np.testing.assert_allclose(np.asarray(_conv(layer, x)), np.asarray(layer(x)), rtol=1e-5, atol=1e-5)
