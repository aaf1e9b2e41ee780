"""The sub-commands of `sdift`, one module each (`register(subparsers)`, `run(args) -> int`).

`HelpFormatter` is the help layout every sub-command uses. A module may define
`ARGUMENT_NAMES = {library argument name: command-line name}`: errors raised by the library
(`InputError` messages start with the argument's name, e.g. `batch_size: expected ...`) are then
shown with the option the user typed (`--batch: expected ...`); options whose dest equals the
library's name (`train_fraction` -> `--train-fraction`) are mapped without it.
"""

from __future__ import annotations

import argparse
from typing import Any


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """Shows `(default: X)` only where it says something: not for None / False defaults,
    required options, or help texts that already give their default."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.default is None or action.default is False or action.default == argparse.SUPPRESS
                or action.required
                or "default" in text.lower() or not action.option_strings):
            return text
        return super()._get_help_string(action)


def check_seed(seed: Any, flag: str = "--seed") -> None:
    """Seeds are integers in [0, 2**32) on the command line (what `jax.random.key` takes as is)."""
    from ..errors import bad_input

    if not 0 <= seed < 2**32:
        raise bad_input(flag, "an int in [0, 2**32)", seed)


def check_out_folder(path: Any, flag: str = "--out") -> None:
    """Before any long work: the output's folder must exist (nothing is created by a typo)."""
    from pathlib import Path

    from ..errors import bad_input

    parent = Path(path).expanduser().parent
    if not parent.is_dir():
        raise bad_input(flag, "a path in an existing folder", str(path))


def check_out_file(path: Any, overwrite: bool, flag: str = "--out", example: str = "out.nc") -> None:
    """Before any long work: `path` must be a file this process can write: not a directory, not
    an existing file unless `overwrite`, in an existing folder where it can create files (tried
    with a temporary file, removed at once; permission bits alone do not say it for root or
    read-only file systems)."""
    import tempfile
    from pathlib import Path

    from ..errors import InputError, bad_input

    out = Path(path)
    if out.is_dir():
        raise InputError(f"{flag}: {path} is a directory; expected the path of a file to write "
                         f"(a name inside it, e.g. {out / example})")
    if out.exists() and not overwrite:
        raise bad_input(flag, "a path that does not exist yet (or pass --overwrite)", str(path))
    check_out_folder(path, flag)
    try:
        with tempfile.NamedTemporaryFile(dir=out.parent, prefix=f".{out.name}.", suffix=".probe"):
            pass
    except OSError as exc:
        raise InputError(f"{flag}: cannot write a file in the folder {out.parent} "
                         f"({exc.strerror or type(exc).__name__})") from None
