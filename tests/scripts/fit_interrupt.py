"""Fit the tiny FTM with checkpoints, announcing each epoch on stdout and pausing briefly so that
the test can send a real SIGINT/SIGTERM (see tests/test_ftm_resume.py).

Usage: python tests/scripts/fit_interrupt.py CHECKPOINT_DIR
Exit codes: 0 finished, 3 interrupted (TrainingInterrupted; the epoch is printed).
"""

from __future__ import annotations

import os
import sys
import time
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import reliability_helpers as rh  # noqa: E402
from sdift_prob.errors import TrainingInterrupted  # noqa: E402


def announce(epoch: int, loss: float) -> None:
    print(f"epoch {epoch}", flush=True)
    time.sleep(0.3)  # room for the signal to arrive while the next epoch runs


if __name__ == "__main__":
    try:
        rh.tiny_fit(checkpoint_dir=sys.argv[1], checkpoint_every=100, callback=announce)
    except TrainingInterrupted as exc:
        print(f"interrupted {exc.step}", flush=True)
        sys.exit(3)
    print("finished", flush=True)
