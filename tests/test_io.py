"""Atomic writes: all or nothing, never over an existing file unless asked, ordinary permissions;
one writer per path at a time (reservations)."""

import json
import os
import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from sdift_prob.errors import InputError, StaleReservationWarning
from sdift_prob.io import atomic_dir, atomic_file, reservation_path, reserve, write_json


@pytest.fixture
def umask_022():
    old = os.umask(0o022)
    yield
    os.umask(old)


def test_atomic_file_has_the_permissions_of_a_plain_open(tmp_path, umask_022):
    target = tmp_path / "out.nc"
    with atomic_file(target) as tmp:
        tmp.write_text("data")
    assert target.read_text() == "data"
    assert stat.S_IMODE(target.stat().st_mode) == 0o644  # not mkstemp's private 0600
    assert list(tmp_path.iterdir()) == [target]


def test_atomic_dir_has_the_permissions_of_a_plain_mkdir(tmp_path, umask_022):
    target = tmp_path / "run"
    with atomic_dir(target) as tmp:
        (tmp / "manifest.json").write_text("{}")
    assert stat.S_IMODE(target.stat().st_mode) == 0o755
    assert (target / "manifest.json").read_text() == "{}"


def test_a_failed_write_leaves_the_old_file_and_no_temporary(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(RuntimeError):
        with atomic_file(target, overwrite=True) as tmp:
            tmp.write_text("half")
            raise RuntimeError("interrupted")
    assert target.read_text() == "old"
    assert list(tmp_path.iterdir()) == [target]


def test_an_existing_file_is_not_overwritten_unless_asked(tmp_path):
    target = tmp_path / "out.json"
    target.write_text("old")
    with pytest.raises(InputError, match="out.json"):
        with atomic_file(target) as tmp:
            tmp.write_text("new")
    assert target.read_text() == "old"
    with atomic_file(target, overwrite=True) as tmp:
        tmp.write_text("new")
    assert target.read_text() == "new"


# -- reservations (issue 16: the loser of two writers learned it only after sampling) ----------------


def test_a_path_another_process_is_writing_is_refused_at_once_naming_the_holder(tmp_path, held_elsewhere):
    target = tmp_path / "post.nc"
    holder = held_elsewhere(target)
    lock = reservation_path(target)
    assert json.loads(lock.read_text())["pid"] == holder.pid
    with pytest.raises(InputError, match=rf"^path: {target} is being written by another process \(PID {holder.pid} "):
        write_json(target, {})
    with pytest.raises(InputError, match=r"^out: .* is being written by another process"):
        with reserve(target, argument="out"):
            pass
    with pytest.raises(InputError, match=r"^run_dir: .* is being written"):
        with atomic_dir(target, argument="run_dir"):
            pass
    assert not target.exists() and lock.exists()
    holder.release()
    assert not lock.exists()  # removed by its holder on the way out
    write_json(target, {"a": 1})
    assert json.loads(target.read_text()) == {"a": 1} and sorted(os.listdir(tmp_path)) == ["post.nc"]


def test_a_reservation_is_reentrant_and_removed_on_errors_and_interrupts(tmp_path):
    target = tmp_path / "out.json"
    with reserve(target) as lock:
        assert lock.exists()
        write_json(target, [1])  # the writer inside finds the path held by this process
        assert lock.exists()
    assert not lock.exists()
    for exc in (RuntimeError, KeyboardInterrupt):
        with pytest.raises(exc):
            with reserve(target):
                raise exc()
        assert not reservation_path(target).exists()
    assert sorted(os.listdir(tmp_path)) == ["out.json"]


def test_a_stale_reservation_of_a_dead_process_is_taken_over_with_a_warning(tmp_path):
    target = tmp_path / "post.nc"
    lock = reservation_path(target)
    lock.write_text(json.dumps({"pid": 4242, "host": "elsewhere", "started": "yesterday", "command": "sdift x"}))
    with pytest.warns(StaleReservationWarning, match=r"^--out: took over a stale reservation .*PID 4242 on elsewhere"):
        with reserve(target, argument="--out"):
            assert json.loads(lock.read_text())["pid"] == os.getpid()
    assert not lock.exists()


def test_sigterm_removes_the_reservation_of_a_command(tmp_path):
    """A command's reservation (`sdift_prob.commands.reserved`) is removed on SIGTERM as on Ctrl-C."""
    target = tmp_path / "post.nc"
    code = ("import sys, time\nfrom sdift_prob.commands import reserved\n"
            "try:\n    with reserved(sys.argv[1]):\n        print('held', flush=True); time.sleep(60)\n"
            "except KeyboardInterrupt:\n    sys.exit(130)\n")
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.Popen([sys.executable, "-c", code, str(target)], cwd=root, text=True, stdout=subprocess.PIPE,
                            env={**os.environ, "PYTHONPATH": str(root)})
    try:
        assert proc.stdout.readline().strip() == "held" and reservation_path(target).exists()
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(timeout=30) == 130
    finally:
        if proc.poll() is None:
            proc.kill()
    assert not reservation_path(target).exists()
