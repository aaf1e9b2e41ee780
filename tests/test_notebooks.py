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
    nb = nbformat.read(path, as_version=4)  # an in-memory copy: the stored notebook is never written
    client = NotebookClient(nb, timeout=600, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError on the first failing cell
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    assert not errors


def test_run_notebooks_stores_outputs_and_leaves_a_failed_notebook_unchanged(tmp_path):
    """scripts/run_notebooks.py (make notebooks): an executed notebook is replaced with its
    outputs, a figure included; one that fails or runs past --timeout stays as it was."""
    import subprocess
    import sys

    root = Path(__file__).resolve().parents[1]

    def notebook(name, *sources):
        nb = nbformat.v4.new_notebook(cells=[nbformat.v4.new_code_cell(s) for s in sources])
        path = tmp_path / f"{name}.ipynb"
        nbformat.write(nb, path)
        return path, path.read_bytes()

    good, _ = notebook("good", "import os\nprint('quick', os.environ.get('SDIFT_QUICK'))",
                       "import matplotlib.pyplot as plt\nplt.plot([0, 1])\nplt.show()")
    bad, bad_bytes = notebook("bad", "print('before')", "raise ValueError('boom')")
    slow, slow_bytes = notebook("slow", "import time\ntime.sleep(60)")
    log = tmp_path / "run.log"
    env = {**{k: v for k, v in os.environ.items() if k != "SDIFT_QUICK"}, "MPLBACKEND": "Agg"}

    def run(*paths, timeout):
        return subprocess.run([sys.executable, str(root / "scripts" / "run_notebooks.py"), *map(str, paths),
                               "--timeout", str(timeout), "--log", str(log)], capture_output=True, text=True,
                              env=env, timeout=120)

    result = run(good, bad, timeout=60)
    assert result.returncode == 1, result.stdout + result.stderr
    ran = nbformat.read(good, as_version=4)
    assert ran.metadata["sdift_execution"]["mode"] == "full"
    outputs = [o for c in ran.cells for o in c.outputs]
    assert any("quick None" in o.get("text", "") for o in outputs)  # SDIFT_QUICK removed: full settings
    assert any("image/png" in o.get("data", {}) for o in outputs)  # the figure is stored (MPLBACKEND removed)
    assert bad.read_bytes() == bad_bytes
    assert run(slow, timeout=2).returncode == 1
    assert slow.read_bytes() == slow_bytes
    text = log.read_text()
    assert "good.ipynb: ok" in text and "bad.ipynb: failed" in text and "boom" in text
    assert "done: 1 of 2 notebooks" in text
    assert "slow.ipynb: timed out after 2 s" in text and "done: 0 of 1 notebooks" in text
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".")]  # no temporary or lock files left
