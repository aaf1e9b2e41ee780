"""The `sdift` command line as a user meets it: `--help` of every sub-command, and bad input
(missing files, files of the wrong kind, bad numbers) answered with one line on stderr, exit
status 1 (2 for argparse usage errors), no traceback unless --debug.

The cases run in one child process; none gets as far as compiling anything.
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sdift_prob import pretrained
from sdift_prob.cli import COMMANDS

ROOT = Path(__file__).resolve().parents[1]
BUNDLE = pretrained.path("ocean")
RUN, DATA, OBS = BUNDLE / "run", BUNDLE / "test_trajectory.nc", BUNDLE / "obs_rho1pct.nc"


def one_line(result: subprocess.CompletedProcess, command: str) -> str:
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith(f"sdift {command}: error:"), lines
    assert "Traceback" not in result.stderr
    return lines[0]


def test_every_sub_command_has_a_useful_help():
    """One process for all helps (importing JAX once): every option says what it does."""
    code = (
        "import contextlib, io, sys\n"
        "from sdift_prob.cli import main\n"
        "for name in sys.argv[1:]:\n"
        "    out = io.StringIO()\n"
        "    with contextlib.redirect_stdout(out):\n"
        "        try:\n"
        "            main([name, '--help'])\n"
        "        except SystemExit as e:\n"
        "            assert e.code == 0, (name, e.code)\n"
        "    print(f'=== {name}'); print(out.getvalue())\n"
    )
    names = [c.replace("_", "-") for c in COMMANDS]
    assert names == ["simulate", "observe", "fit-ftm", "encode", "train-prior", "sample", "reconstruct", "evaluate", "seal",
                     "demo"]
    result = subprocess.run([sys.executable, "-c", code, *names], capture_output=True, text=True, cwd=ROOT,
                            env={**os.environ, "JAX_PLATFORMS": "cpu"}, timeout=240)
    assert result.returncode == 0, result.stderr
    helps = dict(part.split("\n", 1) for part in result.stdout.split("=== ")[1:])
    assert list(helps) == names
    for name, text in helps.items():
        assert text.startswith(f"usage: sdift {name}"), name
        description = text.split("\n\n")[1]
        assert len(description) > 40 and description[0].isupper(), (name, description)
        assert "(default: None)" not in text and "(default: False)" not in text, name
        assert "--debug" in text, name


def test_every_option_has_a_help_text():
    from sdift_prob.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    for name, subparser in sub.choices.items():
        for action in subparser._actions:
            assert action.help and len(action.help) > 8, (name, action.dest)


CASES = [
    # (argv, exit status, a piece of the one-line message)
    (["simulate", "ocean", "--n", "0", "--out", "{tmp}/x.nc"], 1, "--n: expected an int >= 1"),
    (["simulate", "ocean", "--n", "abc", "--out", "{tmp}/x.nc"], 2, "invalid int value"),
    (["simulate", "ocean", "--n", "2", "--out", "{tmp}/missing/x.nc"], 1, "--out: expected a path in an existing"),
    (["simulate", "ocean", "--n", "2", "--seed", "-1", "--out", "{tmp}/x.nc"], 1, "--seed"),
    (["observe", "{tmp}/missing.nc", "--trajectory", "0", "--rho", "0.1", "--seed", "0", "--out", "{tmp}/o.nc"], 1,
     "DATA.nc: expected an existing file"),
    (["observe", str(OBS), "--trajectory", "0", "--rho", "0.1", "--seed", "0", "--out", "{tmp}/o.nc"], 1,
     "not an sdift field collection"),
    (["observe", str(DATA), "--trajectory", "5", "--rho", "0.1", "--seed", "0", "--out", "{tmp}/o.nc"], 1,
     "--trajectory: expected a trajectory position"),
    (["observe", str(DATA), "--trajectory", "0", "--rho", "2", "--seed", "0", "--out", "{tmp}/o.nc"], 1, "rho"),
    (["fit-ftm", "{tmp}/junk.nc", "--ranks", "2", "2", "2", "--out", "{tmp}/r"], 1, "not a readable netCDF"),
    (["fit-ftm", str(DATA), "--ranks", "2", "2", "--out", "{tmp}/r"], 1, "--ranks"),
    (["fit-ftm", str(DATA), "--ranks", "2", "2", "2", "--out", "{tmp}/r", "--train", "all", "--batch", "0"], 1,
     "--batch: expected an integer >= 1"),
    (["fit-ftm", str(DATA), "--ranks", "2", "2", "2", "--out", "{tmp}/r"], 1, "--train"),
    (["fit-ftm", str(DATA), "--ranks", "2", "2", "2", "--out", "{tmp}/missing/r", "--train", "all"], 1, "--out"),
    (["train-prior", "{tmp}/nothing"], 1, "expected an existing run directory"),
    (["train-prior", str(DATA)], 1, "expected an existing run directory"),
    (["train-prior", str(RUN), "--steps", "0"], 1, "--steps: expected an integer >= 1"),
    (["train-prior", str(RUN), "--steps", "5", "--warmup", "-1", "--overwrite"], 1, "--warmup"),
    (["sample", str(RUN), "--draws", "0", "--out", "{tmp}/s.nc"], 1, "--draws"),
    (["sample", str(RUN), "--draws", "2", "--times", "3,1", "--out", "{tmp}/s.nc"], 1, "--times"),
    (["sample", str(RUN), "--draws", "2", "--steps", "0", "--out", "{tmp}/s.nc"], 1, "--steps"),
    (["reconstruct", str(RUN), "{tmp}/missing.nc", "--out", "{tmp}/p.nc"], 1, "OBS.nc: expected an existing file"),
    (["reconstruct", str(RUN), str(DATA), "--out", "{tmp}/p.nc"], 1, "not an sdift observation set"),
    (["reconstruct", "{tmp}", str(OBS), "--out", "{tmp}/p.nc"], 1, "not a run directory"),
    (["reconstruct", str(RUN), str(OBS), "--draws", "0", "--out", "{tmp}/p.nc"], 1, "--draws"),
    (["reconstruct", str(RUN), str(OBS), "--sigma", "loud", "--out", "{tmp}/p.nc"], 1, "--sigma"),
    (["reconstruct", str(RUN), str(OBS), "--steps", "0", "--out", "{tmp}/p.nc"], 1, "--steps"),
    (["reconstruct", str(RUN), str(OBS), "--seed", "-3", "--out", "{tmp}/p.nc"], 1, "--seed"),
    (["reconstruct", str(RUN), str(OBS), "--sampler", "mpdps", "--cg-steps", "2", "--out", "{tmp}/p.nc"], 1,
     "--cg-steps: expected only with --sampler mmps"),
    (["reconstruct", str(RUN), str(OBS), "--cg-steps", "0", "--out", "{tmp}/p.nc"], 1,
     "--cg-steps: expected an integer >= 1"),
    (["reconstruct", str(RUN), str(OBS), "--lam", "0.4", "--out", "{tmp}/p.nc"], 1,
     "--lam: expected only with --sampler mpdps"),
    (["reconstruct", str(RUN), str(OBS), "--out", "{tmp}/missing/p.nc"], 1, "--out"),
    (["evaluate", "{tmp}/missing.nc", "--truth", str(DATA), "--trajectory", "0"], 1, "expected an existing posterior"),
    (["evaluate", str(DATA), "--truth", str(DATA), "--trajectory", "0"], 1, "not an sdift-prob posterior"),
    (["evaluate", "{tmp}/junk.nc", "--truth", str(DATA), "--trajectory", "0"], 1, "not a readable netCDF"),
    (["demo", "--out", "{tmp}/junk.nc"], 1, "--out: expected a folder"),
    (["demo", "--seed", "-1"], 1, "--seed"),
]


# All cases run in one child process (JAX and ArviZ imported once), each through `sdift`'s own
# `main` with stderr captured; a traceback escaping `main` is recorded, not raised.
_RUNNER = """
import contextlib, io, json, sys, traceback
from sdift_prob.cli import main
results = []
for argv in json.loads(sys.argv[1]):
    err, out = io.StringIO(), io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
        try:
            status = main(argv)
        except SystemExit as e:
            status = e.code
        except BaseException:
            traceback.print_exc()
            status = "raised"
    results.append({"status": status, "stderr": err.getvalue()})
print(json.dumps(results))
"""


@pytest.fixture(scope="module")
def bad_input_results(tmp_path_factory):
    import json

    tmp = tmp_path_factory.mktemp("cli")
    (tmp / "junk.nc").write_text("not netcdf")
    argvs = [[a.replace("{tmp}", str(tmp)) for a in argv] for argv, _, _ in CASES]
    result = subprocess.run([sys.executable, "-c", _RUNNER, json.dumps(argvs)], capture_output=True, text=True,
                            cwd=ROOT, env={**os.environ, "JAX_PLATFORMS": "cpu", "MPLBACKEND": "Agg"}, timeout=600)
    assert result.returncode == 0, result.stderr
    written = sorted(p.name for p in tmp.iterdir() if p.name != "junk.nc")
    return json.loads(result.stdout.strip().splitlines()[-1]), written


@pytest.mark.parametrize("index", range(len(CASES)), ids=[" ".join(c[0][:1] + [c[2][:24]]) for c in CASES])
def test_bad_input_is_one_clear_line(bad_input_results, index):
    results, written = bad_input_results
    argv, status, message = CASES[index]
    got = results[index]
    assert got["status"] == status, got
    line = one_line(subprocess.CompletedProcess(argv, got["status"], "", got["stderr"]), argv[0])
    assert message in line, line
    assert not written  # no case left a file behind


def test_the_console_script_answers_one_line_and_debug_shows_the_traceback(tmp_path):
    """The installed `sdift` entry point itself (a real process): one line, or the traceback with --debug
    (given before or after the sub-command)."""
    exe = Path(sys.executable).with_name("sdift")
    argv = ["observe", str(tmp_path / "missing.nc"), "--trajectory", "0", "--rho", "0.1", "--seed", "0",
            "--out", str(tmp_path / "o.nc")]
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    plain = subprocess.run([str(exe), *argv], capture_output=True, text=True, env=env, timeout=240)
    assert plain.returncode == 1
    one_line(plain, "observe")
    debug = subprocess.run([str(exe), *argv, "--debug"], capture_output=True, text=True, env=env, timeout=240)
    assert debug.returncode == 1 and "Traceback" in debug.stderr and "InputError" in debug.stderr


# --- checks before any work (issue 16) -------------------------------------------------------------


@pytest.fixture
def stop_before_loading(monkeypatch):
    """Loading the run (the first costly step of `reconstruct` and `sample`) raises a marker
    error instead: a message without the marker came from a check made before it."""
    import importlib

    from sdift_prob.commands import sample as sample_cmd
    from sdift_prob.errors import InputError

    def stop(*args, **kwargs):
        raise InputError("MARKER: reached the run")

    rec = importlib.import_module("inference.reconstruct")  # the package exports a function of that name
    monkeypatch.setattr(rec, "open_run", stop)
    monkeypatch.setattr(sample_cmd, "load_run", stop)


def _unwritable_folder(tmp_path: Path) -> Path:
    """A folder this process cannot create files in (as root, permission bits do not stop it)."""
    if os.geteuid() != 0:
        folder = tmp_path / "read-only"
        folder.mkdir()
        folder.chmod(0o500)
        return folder
    if not Path("/proc").is_dir():
        pytest.skip("running as root without /proc: no unwritable folder to try")
    return Path("/proc")


@pytest.mark.parametrize("command", ["reconstruct", "sample"])
def test_out_is_checked_before_any_work(command, tmp_path, stop_before_loading, capsys):
    from sdift_prob import cli

    head = ["reconstruct", str(RUN), str(OBS)] if command == "reconstruct" else ["sample", str(RUN), "--draws", "2"]
    folder = tmp_path / "folder"
    folder.mkdir()
    unwritable = _unwritable_folder(tmp_path)
    cases = [
        (["--out", str(folder)], f"--out: {folder} is a directory; expected the path of a file to write"),
        (["--out", str(folder), "--overwrite"], f"--out: {folder} is a directory"),
        (["--out", str(unwritable / "x.nc")], f"--out: cannot write a file in the folder {unwritable} ("),
        (["--out", str(tmp_path / "missing" / "x.nc")], "--out: expected a path in an existing folder"),
    ]
    for tail, message in cases:
        assert cli.main(head + tail) == 1, tail
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and message in err, (tail, err)
    # a good --out gets as far as loading the run
    assert cli.main(head + ["--out", str(tmp_path / "x.nc")]) == 1
    assert "MARKER" in capsys.readouterr().err
    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith("read-only")) == ["folder"]
    assert list(folder.iterdir()) == []  # the write probe left nothing behind


@pytest.mark.parametrize("command", ["reconstruct", "sample"])
def test_few_steps_warn_as_typed_before_any_work(command, tmp_path, stop_before_loading, capsys):
    from sdift_prob import cli
    from sdift_prob.errors import UntestedSettingWarning

    head = ["reconstruct", str(RUN), str(OBS)] if command == "reconstruct" else ["sample", str(RUN), "--draws", "2"]
    with pytest.warns(UntestedSettingWarning, match=r"^--steps: 3 sampler steps .*below 8 steps are untested"):
        assert cli.main(head + ["--steps", "3", "--out", str(tmp_path / "x.nc")]) == 1
    assert "MARKER" in capsys.readouterr().err
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", UntestedSettingWarning)
        assert cli.main(head + ["--steps", "8", "--out", str(tmp_path / "x.nc")]) == 1
        if command == "reconstruct":  # the gp sampler takes no steps
            assert cli.main(head + ["--sampler", "gp", "--steps", "3", "--out", str(tmp_path / "x.nc")]) == 1
    assert capsys.readouterr().err.count("MARKER") == (2 if command == "reconstruct" else 1)


def test_reconstruct_warns_about_steps_once(tmp_path, monkeypatch, recwarn, capsys):
    """The library's own num_steps warning is not repeated after the command's --steps one."""
    import importlib

    from sdift_prob import cli
    from sdift_prob.errors import InputError, UntestedSettingWarning, warn_untested_steps

    def fake_reconstruct(run, obs, *, config, **kwargs):
        warn_untested_steps(config.num_steps, "num_steps")  # what the library says
        raise InputError("MARKER: reached the sampler")

    rec = importlib.import_module("inference.reconstruct")
    monkeypatch.setattr(rec, "open_run", lambda *a, **k: None)
    monkeypatch.setattr(rec, "reconstruct", fake_reconstruct)
    assert cli.main(["reconstruct", str(RUN), str(OBS), "--steps", "2", "--out", str(tmp_path / "p.nc")]) == 1
    assert "MARKER" in capsys.readouterr().err
    said = [str(w.message) for w in recwarn if issubclass(w.category, UntestedSettingWarning)]
    assert len(said) == 1 and said[0].startswith("--steps: 2"), said


def test_a_second_writer_is_refused_before_any_work_naming_the_argument(tmp_path, held_elsewhere,
                                                                        stop_before_loading, capsys):
    """Every sub-command that writes holds its output's reservation from the start: while another
    process writes the same path, it stops at once with one line naming the argument as typed."""
    from sdift_prob import cli

    out, run_out, run_dir, demo = tmp_path / "x.nc", tmp_path / "new-run", tmp_path / "run", tmp_path / "demo"
    run_dir.mkdir()
    holder = held_elsewhere(out, run_out, run_dir, demo)
    cases = [
        (["simulate", "ocean", "--n", "2", "--out", str(out)], "--out", out),
        (["observe", str(DATA), "--trajectory", "0", "--rho", "0.1", "--seed", "0", "--out", str(out)], "--out", out),
        (["fit-ftm", str(DATA), "--ranks", "2", "2", "2", "--out", str(run_out)], "--out", run_out),
        (["train-prior", str(run_dir)], "RUN_DIR", run_dir),
        (["sample", str(RUN), "--draws", "1", "--out", str(out)], "--out", out),
        (["reconstruct", str(RUN), str(OBS), "--out", str(out)], "--out", out),
        (["reconstruct", str(RUN), str(OBS), "--out", str(out), "--overwrite"], "--out", out),
        (["seal", str(run_dir)], "RUN_DIR", run_dir),
        (["demo", "--out", str(demo)], "--out", demo),
    ]
    for argv, flag, path in cases:
        assert cli.main(argv) == 1, argv
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and "MARKER" not in err, err
        assert err.startswith(f"sdift {argv[0]}: error: {flag}: {path} is being written by another process "
                              f"(PID {holder.pid} "), err
    holder.release()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["run"] and not any(run_dir.iterdir())
    # once it is gone, the same command gets past the reservation (to loading the run here)
    assert cli.main(["reconstruct", str(RUN), str(OBS), "--out", str(out)]) == 1
    assert "MARKER" in capsys.readouterr().err
