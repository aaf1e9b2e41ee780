"""The `sdift` command line: one sub-command per stage, errors as one clear line."""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from .errors import SdiftError, TrainingInterrupted

# Each module in sdift_prob/commands/ adds one sub-command (`register`) and runs it (`run`).
COMMANDS = (
    "simulate",
    "observe",
    "fit_ftm",
    "train_prior",
    "sample",
    "reconstruct",
    "evaluate",
    "demo",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sdift",
        description=(
            "Full-field evolution of physical fields from sparse, irregular, noisy observations "
            "(SDIFT: functional Tucker latent space + GP-based sequential diffusion + MPDPS)."
        ),
    )
    parser.add_argument("--debug", action="store_true", help="show the full traceback on errors")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        importlib.import_module(f"sdift_prob.commands.{name}").register(sub)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except TrainingInterrupted as err:
        if args.debug:
            raise
        print(f"sdift {args.command}: {err}", file=sys.stderr)
        return 130
    except (SdiftError, FileNotFoundError, PermissionError, IsADirectoryError) as err:
        if args.debug:
            raise
        print(f"sdift {args.command}: error: {err}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"sdift {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
