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


def _umask_mode(base: int) -> int:
    """`base` less the process umask: the mode a plain `open`/`mkdir` would have given
    (`mkstemp`/`mkdtemp` create private 0600/0700 entries)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


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
        os.chmod(tmp, _umask_mode(0o666))
        os.replace(tmp, target)
    finally:
        if tmp.exists():
            tmp.unlink()


def write_json(path: str | os.PathLike, obj: object, *, overwrite: bool = True) -> Path:
    """`obj` as indented JSON, written atomically (`atomic_file`); returns the path."""
    import json

    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))
    return Path(path)


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
        os.chmod(tmp, _umask_mode(0o777))
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


# A corrupted HDF5 file can make the HDF5 library loop forever (seen here: a zeroed global
# heap under a DIMENSION_LIST attribute) or crash, inside C code that holds the GIL, so no
# in-process timeout can help. `probe_hdf5` therefore reads the file's metadata in a short-lived
# child process first.
_PROBE = """
import sys
import h5py
def visit(name, obj):
    for k in obj.attrs:
        obj.attrs[k]
    if isinstance(obj, h5py.Dataset):
        [len(d) for d in obj.dims]
with h5py.File(sys.argv[1], "r") as f:
    for k in f.attrs:
        f.attrs[k]
    f.visititems(visit)
"""
PROBE_TIMEOUT_S = 30.0


def probe_hdf5(path: str | os.PathLike, timeout: float | None = None) -> None:
    """Raise `FormatError` if reading the metadata of the HDF5/netCDF file `path` hangs or crashes.

    The metadata (every attribute and dimension scale) is read by `h5py` in a child process,
    killed after `timeout` seconds (default `PROBE_TIMEOUT_S`, or the environment variable
    `SDIFT_PROBE_TIMEOUT`; `0` disables the probe). Other read errors are left to the caller's
    reader, which names them. Costs about 0.2 s per file.
    """
    import subprocess
    import sys

    from .errors import FormatError

    if timeout is None:
        timeout = float(os.environ.get("SDIFT_PROBE_TIMEOUT", PROBE_TIMEOUT_S))
    if timeout <= 0:
        return
    p = Path(path)
    try:
        with open(p, "rb") as fh:
            if fh.read(8) != b"\x89HDF\r\n\x1a\n":
                return  # not HDF5: the reader reports it
    except OSError:
        return
    try:
        proc = subprocess.run([sys.executable, "-c", _PROBE, str(p)], capture_output=True, timeout=timeout,
                              env={**os.environ, "PYTHONWARNINGS": "ignore"})
    except subprocess.TimeoutExpired:
        raise FormatError(
            f"{p}: corrupt file: reading its HDF5 metadata did not finish within {timeout:g} s "
            "(the HDF5 library loops on it)"
        ) from None
    except OSError:
        return  # cannot start a child process here: read without the probe
    if proc.returncode < 0:
        raise FormatError(f"{p}: corrupt file: reading its HDF5 metadata crashed the HDF5 library "
                          f"(signal {-proc.returncode})")


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
    probe_hdf5(p)
    try:
        with xr.open_dataset(p, engine=NETCDF_ENGINE) as opened:
            return opened.load()
    except Exception as exc:  # noqa: BLE001
        raise FormatError(f"{p}: not a readable netCDF file ({type(exc).__name__}: {exc})") from exc
