"""Atomic file writes: everything this project writes goes to a temporary name and is renamed."""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

from .errors import InputError

NETCDF_ENGINE = "h5netcdf"


def _check_target(path: Path, overwrite: bool) -> None:
    if path.exists() and not overwrite:
        raise InputError(f"{path}: already exists; pass overwrite=True (or --overwrite) to replace it")
    if not path.parent.exists():
        raise InputError(f"{path}: the folder {path.parent} does not exist")


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    An exception inside the block removes the temporary file and leaves `path` untouched.
    """
    target = Path(path)
    _check_target(target, overwrite)
    # Keep the extension: some writers (Pillow, netCDF engines) choose the format from it.
    fd, tmp_name = tempfile.mkstemp(prefix=f".{target.name}.", suffix=f".tmp{target.suffix}", dir=target.parent)
    os.close(fd)
    tmp = Path(tmp_name)
    try:
        yield tmp
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename.

    With `overwrite=True` an existing folder is moved aside first and removed only after the
    new one is in place, so an interrupted save never leaves a half-written run directory.
    """
    target = Path(path)
    _check_target(target, overwrite)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.", suffix=".tmp", dir=target.parent))
    try:
        yield tmp
        old = None
        if target.exists():
            old = target.with_name(f".{target.name}.old-{os.getpid()}")
            os.replace(target, old)
        os.replace(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)


def read_netcdf(path: str | os.PathLike):
    """Read a whole netCDF file into memory as an `xr.Dataset`.

    Raises `InputError` if the file does not exist and `FormatError` if it is not a readable
    netCDF file (h5py/h5netcdf raise many exception types on truncated or foreign files).
    """
    import xarray as xr

    from .errors import FormatError

    p = Path(path)
    if not p.is_file():
        raise InputError(f"path: expected an existing file, got {str(p)!r}")
    try:
        with xr.open_dataset(p, engine=NETCDF_ENGINE) as opened:
            return opened.load()
    except Exception as exc:  # noqa: BLE001
        raise FormatError(f"{p}: not a readable netCDF file ({type(exc).__name__}: {exc})") from exc
