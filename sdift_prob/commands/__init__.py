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
