"""`sdift seal`: add its own checksum to the manifest of a run written before manifests were sealed."""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from ..errors import bad_input
from ..run import seal_run
from . import HelpFormatter, report, reserved

ARGUMENT_NAMES = {"run_dir": "RUN_DIR"}
HELP = "seal the manifest of an older run directory with its own checksum (manifest_sha256)"


def register(subparsers: Any) -> None:
    p = subparsers.add_parser(
        "seal", help=HELP,
        description=(
            "Add manifest_sha256 (the SHA-256 of the manifest's own JSON) to a run directory written "
            "before manifests were sealed; runs without it are refused. The files the manifest lists "
            "are verified first, and a manifest that was edited after sealing is refused, not re-sealed. "
            "Seal only runs you trust: the checksum detects later edits, not earlier ones."
        ),
        formatter_class=HelpFormatter,
    )
    p.add_argument("run_dir", metavar="RUN_DIR", help="run directory whose manifest to seal")
    p.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if not Path(args.run_dir).is_dir():
        raise bad_input("RUN_DIR", "an existing run directory", str(args.run_dir))
    with reserved(args.run_dir, "RUN_DIR"):  # the manifest is rewritten: no other writer of RUN_DIR meanwhile
        digest = seal_run(args.run_dir)
    report(args, {"run_dir": str(args.run_dir), "manifest_sha256": digest},
           f"sealed {args.run_dir} (manifest_sha256 {digest})")
    return 0
