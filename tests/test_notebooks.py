"""Every notebook runs from top to bottom in quick mode (SDIFT_QUICK=1); an error fails the test."""

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

NOTEBOOKS = sorted((Path(__file__).resolve().parents[1] / "notebooks").glob("*.ipynb"))


@pytest.mark.parametrize("path", NOTEBOOKS, ids=[p.stem for p in NOTEBOOKS])
def test_notebook_executes(path, tmp_path, monkeypatch):
    monkeypatch.setenv("SDIFT_QUICK", "1")
    monkeypatch.setenv("MPLBACKEND", "Agg")
    # The kernels share the suite's persistent JAX compilation cache (tests/conftest.py).
    from conftest import JAX_CACHE_ENV

    for name, value in JAX_CACHE_ENV.items():
        monkeypatch.setenv(name, os.environ.get(name, value))
    nb = nbformat.read(path, as_version=4)
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors
