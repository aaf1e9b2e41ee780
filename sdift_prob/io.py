"""Atomic file writes: everything this project writes goes to a temporary name and is renamed,
while holding a reservation of the target (`reserve`) that refuses a second writer at once."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from .errors import FormatError, InputError, StaleReservationWarning

NETCDF_ENGINE = "h5netcdf"

try:  # POSIX; elsewhere reservations are not enforced (the final write still refuses an existing file)
    import fcntl
except ImportError:  # pragma: no cover - not on the platforms this project runs on
    fcntl = None  # type: ignore[assignment]


# -- reservations: one writer per output path ----------------------------------------------------
# A reservation is a lock file `.NAME.lock` beside the output, holding an exclusive `flock` and a
# one-line JSON record of its holder (PID, host, start time, command). The kernel drops the lock
# when its process ends, however it ends, so a reservation left behind by a killed process is
# recognised as stale (its file is there, its lock is not) and taken over with a warning; PID
# reuse cannot make it look alive. Reservations are re-entrant within a process: a command
# reserves its output up front and the library's atomic writers find it already held.
_HELD: dict[str, list[Any]] = {}  # lock path -> [fd, depth]
_HELD_LOCK = threading.Lock()


def reservation_path(path: str | os.PathLike) -> Path:
    """The lock file that reserves writing `path`: `.NAME.lock` in the same folder."""
    target = Path(path)
    return target.with_name(f".{target.name}.lock")


def _holder_text(record: str) -> str:
    try:
        info = json.loads(record)
        return (f"PID {int(info['pid'])} on {info.get('host', '?')}, started {info.get('started', '?')}"
                + (f": {info['command']}" if info.get("command") else ""))
    except (ValueError, KeyError, TypeError):
        return "holder unknown"


def _read(fd: int) -> str:
    os.lseek(fd, 0, os.SEEK_SET)
    return os.read(fd, 4096).decode("utf-8", "replace").strip()


def _acquire(lock: Path, target: Path, argument: str) -> int:
    """Open and lock `lock`; refuse if another process holds it (see `reserve`)."""
    if not target.parent.is_dir():
        raise InputError(f"{argument}: the folder {target.parent} of {target} does not exist")
    while True:
        try:
            fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise InputError(f"{argument}: cannot write a file in the folder {target.parent} "
                             f"({exc.strerror or type(exc).__name__})") from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder_text(_read(fd))
            os.close(fd)
            raise InputError(
                f"{argument}: {target} is being written by another process ({holder}); wait until it "
                f"finishes or write elsewhere (its reservation is {lock})") from None
        except OSError:  # a file system without locks: go on unreserved, as before reservations
            empty = os.fstat(fd).st_size == 0
            os.close(fd)
            if empty:  # just created here: leave nothing behind
                with contextlib.suppress(OSError):
                    os.unlink(lock)
            return -1
        try:  # the holder may have finished (and removed the file) between our open and lock
            if os.path.samestat(os.fstat(fd), os.stat(lock)):
                break
        except FileNotFoundError:
            pass
        os.close(fd)
    stale = _read(fd)
    if stale:
        import warnings

        warnings.warn(
            f"{argument}: took over a stale reservation of {target} left by a process that ended without "
            f"finishing ({_holder_text(stale)}); any temporary files .{target.name}.*.tmp* beside it are its "
            "leftovers", StaleReservationWarning, stacklevel=4)
    record = {"pid": os.getpid(), "host": socket.gethostname(), "started": time.strftime("%Y-%m-%d %H:%M:%S"),
              "command": " ".join(Path(sys.argv[0]).name.split() + sys.argv[1:])[:300] if sys.argv else ""}
    os.ftruncate(fd, 0)
    os.lseek(fd, 0, os.SEEK_SET)
    os.write(fd, (json.dumps(record) + "\n").encode())
    return fd


@contextlib.contextmanager
def reserve(path: str | os.PathLike, *, argument: str = "path") -> Iterator[Path]:
    """Reserve `path` for writing by this process for the duration of the block.

    A second process reserving the same path meanwhile gets an `InputError` at once, naming
    `argument` (as its caller's user typed it: `--out`, `path`, ...) and the holder (PID, host,
    start time, command). Commands reserve their output before any expensive work; `atomic_file`
    and `atomic_dir` reserve theirs too (re-entrant: a path this process holds is not refused).
    The lock file is removed when the block ends, by success, error or interrupt; one left by a
    killed process is taken over with a `StaleReservationWarning`. Yields the lock file's path.
    """
    target = Path(path)
    lock = reservation_path(target)
    if fcntl is None:
        yield lock
        return
    try:
        key = str(lock.parent.resolve() / lock.name)
    except OSError:
        key = os.path.abspath(lock)
    with _HELD_LOCK:
        held = _HELD.get(key)
        if held is not None:
            held[1] += 1
        else:
            fd = _acquire(lock, target, argument)
            _HELD[key] = held = [fd, 1]
    try:
        yield lock
    finally:
        with _HELD_LOCK:
            held[1] -= 1
            if held[1] == 0:
                del _HELD[key]
                if held[0] >= 0:
                    with contextlib.suppress(OSError):
                        os.unlink(lock)  # while still locked: a waiting opener then sees another file
                    os.close(held[0])


def _check_target(path: Path, overwrite: bool, argument: str = "path") -> None:
    if not path.parent.exists():
        raise InputError(f"{argument}: the folder {path.parent} of {path} does not exist")
    if path.exists() and not overwrite:
        raise InputError(f"{argument}: {path} already exists; pass overwrite=True (or --overwrite) to replace it")


def _umask_mode(base: int) -> int:
    """`base` less the process umask: the mode a plain `open`/`mkdir` would have given
    (`mkstemp`/`mkdtemp` create private 0600/0700 entries)."""
    mask = os.umask(0)
    os.umask(mask)
    return base & ~mask


@contextlib.contextmanager
def atomic_file(path: str | os.PathLike, *, overwrite: bool = False, argument: str = "path") -> Iterator[Path]:
    """Yield a temporary path beside `path`; on success it is fsynced and renamed onto `path`.

    `path` is reserved meanwhile (`reserve`; errors name `argument`). An exception inside the
    block removes the temporary file and leaves `path` untouched.
    """
    target = Path(path)
    with reserve(target, argument=argument):
        _check_target(target, overwrite, argument)
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
    with atomic_file(path, overwrite=overwrite) as tmp:
        tmp.write_text(json.dumps(obj, indent=1))
    return Path(path)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, *, overwrite: bool = False, argument: str = "path") -> Iterator[Path]:
    """Yield a temporary folder beside `path`; on success it replaces `path` in one rename.

    `path` is reserved meanwhile (`reserve`; errors name `argument`). With `overwrite=True` an
    existing folder is moved aside first and removed only after the new one is in place, so an
    interrupted save never leaves a half-written run directory.
    """
    target = Path(path)
    with reserve(target, argument=argument):
        _check_target(target, overwrite, argument)
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

    p = Path(path)
    if not p.is_file():
        raise InputError(f"path: expected an existing file, got {str(p)!r}")
    probe_hdf5(p)
    try:
        with xr.open_dataset(p, engine=NETCDF_ENGINE) as opened:
            return opened.load()
    except Exception as exc:  # noqa: BLE001
        raise FormatError(f"{p}: not a readable netCDF file ({type(exc).__name__}: {exc})") from exc
