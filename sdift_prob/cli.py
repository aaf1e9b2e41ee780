"""The `sdift` command line: one sub-command per stage, errors as one clear line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence
from typing import Any, NoReturn

from .commands import JSON_SUMMARY_HELP
from .errors import InputError, SdiftError, TrainingInterrupted, bad_input

# Each module in sdift_prob/commands/ adds one sub-command (`register`) and runs it (`run`).
COMMANDS = (
    "simulate",
    "observe",
    "fit_ftm",
    "encode",
    "train_prior",
    "sample",
    "reconstruct",
    "evaluate",
    "seal",
    "demo",
)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with usage errors as one line (the sub-commands inherit it)."""

    def error(self, message: str) -> NoReturn:
        self.exit(2, f"{self.prog}: error: {message} (see `{self.prog} --help`)\n")


def _flag_names(subparser: argparse.ArgumentParser, module: Any) -> dict[str, str]:
    """Library argument name -> the option a user types (see `sdift_prob.commands`)."""
    names = {}
    for action in subparser._actions:
        longs = [o for o in action.option_strings if o.startswith("--")]
        if longs and action.dest not in ("help",):
            names[action.dest] = longs[0]
    names.update(getattr(module, "ARGUMENT_NAMES", {}))
    return names


def _message(err: BaseException, names: dict[str, str]) -> str:
    """The error's message, with a leading library argument name replaced by its option."""
    text = " ".join(str(err).split("\n"))  # one line, whatever the message
    if isinstance(err, InputError):
        head, sep, rest = text.partition(": ")
        if sep and head in names:
            text = f"{names[head]}: {rest}"
    return text


def build_parser() -> argparse.ArgumentParser:
    parser = ArgumentParser(
        prog="sdift",
        description=(
            "Full-field evolution of physical fields from sparse, irregular, noisy observations "
            "(SDIFT: functional Tucker latent space + GP-based sequential diffusion + MPDPS)."
        ),
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    dist = parser.add_argument_group(
        "multi-host", "run one process per host with the same command; see docs/SCALING.md")
    dist.add_argument("--coordinator", default=None, metavar="HOST:PORT",
                      help="address of process 0 (calls jax.distributed.initialize before the command)")
    dist.add_argument("--num-processes", type=int, default=None, help="number of processes (hosts)")
    dist.add_argument("--process-id", type=int, default=None, help="this process's index, 0 .. N-1")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"sdift_prob.commands.{name}")
        module.register(sub)
        subparser = sub.choices[name.replace("_", "-")]
        subparser.add_argument("--debug", action="store_true", default=argparse.SUPPRESS,
                               help="show the full traceback on errors")
        # one output convention (sdift_prob.commands.report): summary on stderr, JSON on request
        subparser.add_argument("--json-summary", action="store_true", help=JSON_SUMMARY_HELP)
        subparser.set_defaults(_argument_names=_flag_names(subparser, module))
    return parser


def init_distributed(coordinator: str | None, num_processes: int | None, process_id: int | None) -> None:
    """`jax.distributed.initialize` for multi-host runs (CPU hosts use gloo collectives).

    After it, `jax.devices()` lists the devices of every process, and the automatic `devices`
    choice of sampling and training spans them all.
    """
    import jax

    if coordinator is None or num_processes is None or process_id is None:
        raise bad_input("--coordinator/--num-processes/--process-id", "all three together",
                        {"coordinator": coordinator, "num_processes": num_processes, "process_id": process_id})
    if num_processes < 1 or not 0 <= process_id < num_processes:
        raise bad_input("--process-id", f"an index in [0, {num_processes - 1}] (with --num-processes >= 1)", process_id)
    jax.config.update("jax_cpu_collectives_implementation", "gloo")
    try:
        jax.distributed.initialize(coordinator_address=coordinator, num_processes=num_processes,
                                   process_id=process_id)
    except (RuntimeError, ValueError) as exc:
        raise InputError(f"--coordinator: jax.distributed.initialize failed ({exc})") from exc


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        if args.coordinator is not None or args.num_processes is not None or args.process_id is not None:
            init_distributed(args.coordinator, args.num_processes, args.process_id)
        return int(args.func(args) or 0)
    except TrainingInterrupted as err:
        if args.debug:
            raise
        print(f"sdift {args.command}: {err}", file=sys.stderr)
        return 130
    except (SdiftError, OSError) as err:  # OSError: files and folders (missing, not writable, ..)
        if args.debug:
            raise
        print(f"sdift {args.command}: error: {_message(err, getattr(args, '_argument_names', {}))}", file=sys.stderr)
        return 1
    except Exception as err:  # noqa: BLE001 - a bug or an unforeseen input: still one line without --debug
        if args.debug:
            raise
        print(f"sdift {args.command}: error: {type(err).__name__}: {_message(err, {})} (unexpected; rerun with "
              "--debug for the traceback, and please report it)", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sdift {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
