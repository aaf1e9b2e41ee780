"""Run in a fresh 1-device subprocess (see tests/test_multidevice.py): fit, train and reconstruct
from fixed seeds and save the results, for a bitwise comparison with the test process.

Usage: python tests/scripts/determinism_check.py OUT.npz
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import reliability_helpers as rh  # noqa: E402


if __name__ == "__main__":
    import numpy as np

    np.savez(sys.argv[1], **rh.determinism_arrays())
