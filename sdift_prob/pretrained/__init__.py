"""Pretrained run directories shipped inside the package (package data)."""

from __future__ import annotations

from pathlib import Path

from ..errors import InputError

ROOT = Path(__file__).resolve().parent
NAMES = ("ocean", "fluid2d")


def path(name: str) -> Path:
    """Folder of the shipped bundle `name` (run directory, model card, test data)."""
    if name not in NAMES:
        raise InputError(f"name: expected one of {NAMES}, got {name!r}")
    return ROOT / name


def available(name: str) -> bool:
    """Whether the bundle `name` is shipped with this installation."""
    return (path(name) / "run" / "manifest.json").is_file()
