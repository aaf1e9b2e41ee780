"""One-file checkpoints: a JSON header line followed by Equinox-serialised array leaves.

The header says what the file is (`sdift_kind`, `sdift_format_version`), which package
versions wrote it, and everything needed to rebuild the skeleton of the saved tree (network
hyperparameters, configs, normalisation), so that loading is
`tree_deserialise_leaves(file, eqx.filter_eval_shape(build, header))`. Typed PRNG keys are not
serialisable: store `jax.random.key_data(key)` in the tree and `jax.random.key_impl` in the
header, and rebuild with `jax.random.wrap_key_data`.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import equinox as eqx

from ..errors import FormatError, bad_input
from ..io import atomic_file

FORMAT_VERSION = 1
_MAGIC = "SDIFT-EQX"


def package_versions() -> dict[str, str]:
    """Versions of the packages whose behaviour a saved file depends on."""
    out = {}
    for name in ("sdift-prob", "jax", "equinox", "optax"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = "unknown"
    return out


def write_tree_file(path: str | os.PathLike, header: dict[str, Any], tree: Any) -> None:
    """Write `header` (JSON) and the array leaves of `tree` to `path` directly (not atomic).

    Use `save_checkpoint` for an atomic write; this is for writers handed a temporary path.
    """
    if not isinstance(header, dict) or "sdift_kind" not in header:
        raise bad_input("header", "a dict with an 'sdift_kind' entry", header)
    full = {"magic": _MAGIC, "sdift_format_version": FORMAT_VERSION, "versions": package_versions(), **header}
    line = json.dumps(full, sort_keys=True, allow_nan=False)
    with open(path, "wb") as fh:
        fh.write(line.encode("utf-8") + b"\n")
        eqx.tree_serialise_leaves(fh, tree)


def save_checkpoint(path: str | os.PathLike, header: dict[str, Any], tree: Any, *, overwrite: bool = False,
                    argument: str = "path") -> Path:
    """Atomically write a checkpoint file (JSON header line + serialised leaves of `tree`).

    **Arguments:**

    - `path`: target file; its folder must exist.
    - `header`: JSON-serialisable dict with at least `sdift_kind`.
    - `tree`: a PyTree of arrays / Equinox modules (no typed PRNG keys).
    - `overwrite`: replace an existing file.
    - `argument`: the name errors give `path` (e.g. a reservation held by another process).

    **Returns:** the path written.
    """
    target = Path(path)
    with atomic_file(target, overwrite=overwrite, argument=argument) as tmp:
        write_tree_file(tmp, header, tree)
    return target


def read_header(path: str | os.PathLike, *, kind: str | None = None) -> dict[str, Any]:
    """The JSON header of a checkpoint file, checked to be ours (and of `kind`, if given)."""
    path = Path(path)
    if not path.is_file():
        raise bad_input("path", "an existing checkpoint file", str(path))
    with open(path, "rb") as fh:
        return _read_header(fh, path, kind)


def _read_header(fh, path: Path, kind: str | None) -> dict[str, Any]:
    line = fh.readline(10_000_000)
    try:
        header = json.loads(line.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise FormatError(f"{path}: not an sdift checkpoint (no JSON header line)") from exc
    if not isinstance(header, dict) or header.get("magic") != _MAGIC:
        raise FormatError(f"{path}: not an sdift checkpoint (missing '{_MAGIC}' marker)")
    if header.get("sdift_format_version") != FORMAT_VERSION:
        raise FormatError(
            f"{path}: checkpoint format version {header.get('sdift_format_version')!r}, "
            f"this version of sdift-prob reads version {FORMAT_VERSION}"
        )
    if kind is not None and header.get("sdift_kind") != kind:
        raise FormatError(f"{path}: holds a {header.get('sdift_kind')!r}, expected a {kind!r}")
    return header


def load_checkpoint(path: str | os.PathLike, like: Any, *, kind: str | None = None) -> tuple[dict[str, Any], Any]:
    """Read a checkpoint written by `save_checkpoint`.

    **Arguments:**

    - `path`: the file.
    - `like`: a tree of the saved structure (e.g. from `eqx.filter_eval_shape`), whose leaves
      give the shapes and dtypes to read.
    - `kind`: the expected `sdift_kind` (checked when given).

    **Returns:** `(header, tree)`.
    """
    path = Path(path)
    if not path.is_file():
        raise bad_input("path", "an existing checkpoint file", str(path))
    with open(path, "rb") as fh:
        header = _read_header(fh, path, kind)
        try:
            tree = eqx.tree_deserialise_leaves(fh, like)
        except Exception as exc:  # shape/dtype mismatch or truncated file
            raise FormatError(f"{path}: the saved arrays do not match the expected structure ({exc})") from exc
        if fh.read(1):
            raise FormatError(f"{path}: trailing data after the saved arrays (structure mismatch)")
    return header, tree
