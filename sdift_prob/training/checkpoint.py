"""One-file checkpoints: a JSON header line followed by Equinox-serialised array leaves.

The header says what the file is (`sdift_kind`, `sdift_format_version`), which package
versions wrote it, and everything needed to rebuild the skeleton of the saved tree (network
hyperparameters, configs, normalisation), so that loading is
`tree_deserialise_leaves(file, eqx.filter_eval_shape(build, header))`. Typed PRNG keys are not
serialisable: store `jax.random.key_data(key)` in the tree and `jax.random.key_impl` in the
header, and rebuild with `jax.random.wrap_key_data`.

`CheckpointFile` is the resumable checkpoint of one training run (`fit_ftm`, `train_prior`);
`check_settings` / `check_matches` refuse to resume from a checkpoint of another run.
"""

from __future__ import annotations

import json
import os
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import equinox as eqx

from ..errors import FormatError, InputError, bad_input
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


class CheckpointFile:
    """The checkpoint file of one training run: `folder / name` (the folder is created), or none.

    **Arguments:**

    - `folder`: the `checkpoint_dir` argument of the training function (None: no checkpoints).
    - `name`: file name inside the folder.
    - `kind`: the `sdift_kind` written in and expected from the header.
    """

    def __init__(self, folder: str | os.PathLike | None, name: str, kind: str):
        self.kind = kind
        self.path: Path | None = None
        if folder is not None:
            folder = Path(folder)
            try:
                folder.mkdir(parents=True, exist_ok=True)
            except OSError as exc:
                raise bad_input("checkpoint_dir", "a folder that can be created", str(folder)) from exc
            self.path = folder / name

    def exists(self) -> bool:
        """Whether there is a checkpoint folder and the file is in it."""
        return self.path is not None and self.path.exists()

    def save(self, header: dict[str, Any], tree: Any) -> None:
        """Atomically replace the file (nothing happens without a checkpoint folder)."""
        if self.path is not None:
            save_checkpoint(self.path, header, tree, overwrite=True, argument="checkpoint_dir")

    def read_header(self) -> dict[str, Any]:
        return read_header(self.path, kind=self.kind)

    def load(self, like: Any) -> tuple[dict[str, Any], Any]:
        return load_checkpoint(self.path, like, kind=self.kind)


def check_settings(saved: Any, now: dict[str, Any], path: Path, *, may_change: frozenset[str] = frozenset()) -> None:
    """Refuse to resume from a checkpoint made with other settings (`may_change` excepted)."""
    old = saved if isinstance(saved, dict) else {}
    differ = sorted(k for k in set(old) | set(now) if k not in may_change and old.get(k) != now.get(k))
    if differ:
        raise InputError(
            f"{path}: the checkpoint was made with other settings ({', '.join(f'{k}={old.get(k)!r}' for k in differ)}); "
            "use the same settings, or resume=False (--no-resume) to start afresh"
        )


def check_matches(saved: dict[str, Any], expected: dict[str, Any], path: Path, message: str) -> None:
    """`InputError(f"{path}: {message}")` unless every entry of `expected` is in the header `saved`."""
    if any(saved.get(k) != v for k, v in expected.items()):
        raise InputError(f"{path}: {message}")
