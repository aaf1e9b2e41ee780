"""Atomic writes: all or nothing, never over an existing file unless asked, ordinary permissions."""

import os
import stat

import pytest

from sdift_prob.errors import InputError
from sdift_prob.io import atomic_dir, atomic_file


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
