"""The sub-commands of `sdift`, one module each (`register(subparsers)`, `run(args) -> int`).

`HelpFormatter` is the help layout every sub-command uses. A module may define
`ARGUMENT_NAMES = {library argument name: command-line name}`: errors raised by the library
(`InputError` messages start with the argument's name, e.g. `batch_size: expected ...`) are then
shown with the option the user typed (`--batch: expected ...`); options whose dest equals the
library's name (`train_fraction` -> `--train-fraction`) are mapped without it.

Output convention, the same for every sub-command (`report`): a short human summary on stderr;
with `--json-summary` (added to every sub-command by `sdift_prob.cli`) one JSON object on stdout
and nothing else there. A command that writes a file or folder holds its reservation
(`reserved`) from before its first expensive step to its end, so a second writer of the same
path is refused at once.
"""

from __future__ import annotations

import argparse
import contextlib
import tempfile
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

from ..errors import InputError, bad_input
from ..io import reserve

JSON_SUMMARY_HELP = ("print the result as one JSON object on stdout (nothing else goes to stdout); the human "
                     "summary goes to stderr either way")


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
    if not 0 <= seed < 2**32:
        raise bad_input(flag, "an int in [0, 2**32)", seed)


def check_out_folder(path: Any, flag: str = "--out") -> None:
    """Before any long work: the output's folder must exist (nothing is created by a typo)."""
    parent = Path(path).expanduser().parent
    if not parent.is_dir():
        raise bad_input(flag, "a path in an existing folder", str(path))


def check_out_file(path: Any, overwrite: bool, flag: str = "--out", example: str = "out.nc") -> None:
    """Before any long work: `path` must be a file this process can write: not a directory, not
    an existing file unless `overwrite`, in an existing folder where it can create files (tried
    with a temporary file, removed at once; permission bits alone do not say it for root or
    read-only file systems)."""
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


def _json_ready(value: Any) -> Any:
    """`value` with NumPy scalars as Python numbers and NaN/inf as None (strict JSON)."""
    import math

    if isinstance(value, Mapping):
        return {str(k): _json_ready(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_json_ready(v) for v in value]
    if hasattr(value, "item") and callable(value.item) and getattr(value, "ndim", 1) == 0:
        value = value.item()
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def report(args: argparse.Namespace, summary: Mapping[str, Any], text: str) -> None:
    """The output convention of every sub-command: `text` (a few lines for people) on stderr;
    with `--json-summary`, `summary` as one JSON object on stdout (NaN/inf as null)."""
    import json
    import sys

    if text:
        print(text, file=sys.stderr)
    if getattr(args, "json_summary", False):
        print(json.dumps(_json_ready(summary), indent=2, allow_nan=False))
        sys.stdout.flush()


@contextlib.contextmanager
def _sigterm_interrupts() -> Iterator[None]:
    """SIGTERM raises KeyboardInterrupt meanwhile (main thread, default handler only), so the
    cleanup of a reservation runs on `kill` as on Ctrl-C."""
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread() or \
            signal.getsignal(signal.SIGTERM) is not signal.SIG_DFL:
        yield
        return

    def interrupt(signum: int, frame: Any) -> None:
        raise KeyboardInterrupt

    signal.signal(signal.SIGTERM, interrupt)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, signal.SIG_DFL)


@contextlib.contextmanager
def reserved(path: Any, flag: str = "--out") -> Iterator[Path]:
    """Hold the reservation of the output `path` (`sdift_prob.io.reserve`) for the block: its
    folder must exist, and a path another process is writing is refused at once, named `flag`.
    Check whether `path` may be written (exists, --overwrite) inside the block, so that the
    check and the write see the same state. The reservation goes when the block ends (also on
    Ctrl-C and SIGTERM)."""
    check_out_folder(path, flag)
    with reserve(path, argument=flag), _sigterm_interrupts():
        yield Path(path)
