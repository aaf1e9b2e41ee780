"""Exceptions raised on bad input, with messages that name the argument at fault."""

from __future__ import annotations

from typing import Any


class SdiftError(Exception):
    """Base class of every error this library raises on purpose."""


class InputError(SdiftError, ValueError):
    """An argument handed to a public function is not what was expected."""


class FormatError(SdiftError, ValueError):
    """A file is not one of ours, is corrupted, or comes from an incompatible version."""


class NumericalError(SdiftError, FloatingPointError):
    """A computation produced non-finite values or an ill-posed linear system."""


def bad_input(argument: str, expected: str, got: Any) -> InputError:
    """Build an `InputError` saying which argument was wrong, what was expected and what came."""
    shown = repr(got)
    if len(shown) > 200:
        shown = shown[:200] + "..."
    return InputError(f"{argument}: expected {expected}, got {shown}")


def as_float64(x: Any, argument: str) -> Any:
    """`x` as a float64 NumPy array, or an `InputError` naming `argument` when it is not numeric."""
    import numpy as np

    try:
        arr = np.asarray(x)
    except Exception as exc:  # noqa: BLE001 - anything that is not array-like
        raise bad_input(argument, "an array of numbers", type(x).__name__) from exc
    if arr.dtype.kind not in "iuf":
        raise bad_input(argument, "a numeric array", f"dtype {arr.dtype}")
    return arr.astype(np.float64)


# Fewest sampler steps (`num_steps`, `--steps`) whose results were checked; `--steps 2` gave
# fields of +-2e4 m/s (VRMSE 86) on the ocean bundle, and still exited 0 (issue 16).
MIN_TESTED_STEPS = 8


class UntestedSettingWarning(UserWarning):
    """A setting outside the range in which the library's results were tested."""


def warn_untested_steps(steps: Any, argument: str, *, stacklevel: int = 2) -> None:
    """Warn (`UntestedSettingWarning`, naming `argument` as the caller's user typed it) when
    `steps` sampler steps are fewer than `MIN_TESTED_STEPS`. Values < 1 are left to the
    argument's own check, which refuses them."""
    import numbers
    import warnings

    if isinstance(steps, numbers.Integral) and not isinstance(steps, bool) and 1 <= steps < MIN_TESTED_STEPS:
        warnings.warn(
            f"{argument}: {int(steps)} sampler steps is below the tested minimum of {MIN_TESTED_STEPS}; results "
            f"below {MIN_TESTED_STEPS} steps are untested and can be far off (diverged fields, exit 0); "
            f"use {MIN_TESTED_STEPS} or more",
            UntestedSettingWarning,
            stacklevel=stacklevel + 1,
        )


class SelfCheckWarning(UserWarning):
    """A finished reconstruction failed one of its own output checks (`inference.self_checks`)
    and was kept because the caller asked for it (`checks="warn"`)."""


class StaleReservationWarning(UserWarning):
    """An output's reservation (`sdift_prob.io.reserve`) was left by a process that ended without
    finishing (killed, crashed); it was taken over."""


class TrainingInterrupted(SdiftError):
    """Training stopped on SIGINT/SIGTERM; `step` steps (or epochs) are done and saved in
    `checkpoint` (None when no checkpoint folder was given)."""

    def __init__(self, message: str, step: int, checkpoint: Any = None):
        super().__init__(message)
        self.step, self.checkpoint = step, checkpoint
