"""The recipes: train-prior's defaults are the tested CPU recipe; the "more data" path's commands parse."""

from __future__ import annotations

import argparse
import shlex

import pytest

from sdift_prob.cli import build_parser
from sdift_prob.commands import train_prior as train_prior_cmd
from sdift_prob.errors import InputError
from sdift_prob.pretrained.recipes import CPU_PRIOR, MORE_DATA, RECIPES, commands, more_data_commands


def _config(argv):
    parser = argparse.ArgumentParser()
    train_prior_cmd.register(parser.add_subparsers())
    args = parser.parse_args(["train-prior", "run", *argv])
    return train_prior_cmd.config_from_args(args, num_frames=20)


def test_train_prior_defaults_are_the_shipped_cpu_recipe():
    for name in RECIPES:
        assert _config([]) == _config(shlex.split(RECIPES[name]["prior"]))
    cfg = _config([])
    assert (cfg.steps, cfg.lr, cfg.warmup_steps, cfg.batch_size, cfg.seq_len, cfg.channels, cfg.checkpoint_every) == (
        CPU_PRIOR["steps"], CPU_PRIOR["lr"], CPU_PRIOR["warmup"], CPU_PRIOR["batch"], CPU_PRIOR["seq_len"],
        CPU_PRIOR["channels"], CPU_PRIOR["checkpoint_every"])


def test_recipe_strings_are_unchanged_for_the_shipped_bundles():
    # the model cards quote these command lines
    assert RECIPES["ocean"]["prior"] == ("--steps 4000 --lr 1e-3 --warmup 200 --batch 8 --seq-len 12 --channels 16 "
                                         "--seed 0 --checkpoint-every 250")


@pytest.mark.parametrize("name", sorted(MORE_DATA))
def test_more_data_commands_parse(name, tmp_path):
    cmds = more_data_commands(name, tmp_path)
    assert [c[1] for c in cmds] == ["simulate", "fit-ftm", "encode", "train-prior"]
    parser = build_parser()
    for argv in cmds:
        parser.parse_args(argv[1:])  # every option exists (argparse exits on an unknown one)
    assert len(commands("ocean", tmp_path)) == 3
    with pytest.raises(InputError, match="^name:"):
        more_data_commands("ocean", tmp_path)


def test_fit_ftm_train_first_n_of_the_training_split():
    import jax
    import numpy as np

    from sdift_prob.commands.fit_ftm import select_trajectories
    from sdift_prob.data.fields import assign_split, make_field_dataset

    ds = make_field_dataset(np.random.default_rng(0).normal(size=(6, 3, 4, 5)), np.arange(3.0),
                            {"x": np.arange(4.0), "y": np.arange(5.0)}, units="K", long_name="f",
                            coord_units={"time": "s", "x": "m", "y": "m"},
                            provenance={"simulator": "t", "parameters": {}, "seed": 0})
    ds = assign_split(ds, n_test=2, key=jax.random.key(0))
    train_ids = ds["trajectory"].values[ds["split"].values == "train"]
    np.testing.assert_array_equal(select_trajectories(ds, "all-train:3")["trajectory"].values, train_ids[:3])
    for bad in ("all-train:0", "all-train:x", "all-train:5"):
        with pytest.raises(InputError, match="^--train:"):
            select_trajectories(ds, bad)
