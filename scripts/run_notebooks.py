"""Execute the notebooks in place, so that they are stored with their outputs (figures included).

    .venv/bin/python scripts/run_notebooks.py                      # every notebooks/*.ipynb, full settings
    .venv/bin/python scripts/run_notebooks.py notebooks/01_quickstart.ipynb --timeout 1800
    make notebooks                                                 # the same as the first line

Each notebook runs in its own process (and Jupyter kernel) with the environment of this command,
at full settings (`SDIFT_QUICK` removed) unless `--quick` is given or `SDIFT_QUICK=1` is set (a
smoke test of this script, said in the log and the notebook's metadata; do not commit its
outputs), and without `MPLBACKEND` (the kernel's inline backend is what stores the figures). The
working directory of the kernel is a fresh temporary folder, so files a notebook writes do not land
in the repository.

A notebook is replaced only when every cell ran without error and within `--timeout` seconds
(for the whole notebook): the executed copy is written to a temporary file beside it and renamed
onto it (`sdift_prob.io.atomic_file`). On an error or a timeout the stored notebook is left as it
was, the process group (kernel included) is ended, and the run goes on with the next notebook;
the exit status is 1 if any notebook failed. Every notebook's start, end, status and wall time
(and on failure, the end of its output) are appended to `--log` and printed. The executed
notebook records how it was run in its metadata (`sdift_execution`: mode, seconds, date, package
version).

`make test` (tests/test_notebooks.py) executes the notebooks in quick mode from an in-memory copy
and never writes them; stored outputs are cleared cell by cell as it executes.
"""

from __future__ import annotations

import argparse
import datetime
import os
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
NOTEBOOKS = ROOT / "notebooks"
DEFAULT_TIMEOUT_S = 3600
DEFAULT_LOG = ROOT / "scratch" / "run_notebooks.log"


def execute_one(path: Path, quick: bool) -> None:
    """Execute `path` in a kernel (working directory: a temporary folder) and, if every cell
    succeeded, write it back atomically with its outputs."""
    import nbformat
    from nbclient import NotebookClient

    from sdift_prob import __version__
    from sdift_prob.io import atomic_file

    nb = nbformat.read(path, as_version=4)
    started = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="nb-run-") as work:
        # No per-cell limit here: the parent enforces the per-notebook timeout.
        NotebookClient(nb, timeout=None, kernel_name="python3", resources={"metadata": {"path": work}}).execute()
    errors = [o for c in nb.cells if c.cell_type == "code" for o in c.get("outputs", []) if o.output_type == "error"]
    if errors:
        raise RuntimeError(f"{path.name}: {len(errors)} cell(s) ended with an error")
    nb.metadata["sdift_execution"] = {
        "mode": "quick (SDIFT_QUICK=1)" if quick else "full",
        "seconds": round(time.perf_counter() - started, 1),
        "date": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "sdift_prob_version": __version__,
    }
    with atomic_file(path, overwrite=True, argument="notebook") as tmp:
        nbformat.write(nb, tmp)


def _child_env(quick: bool) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("SDIFT_QUICK", "MPLBACKEND")}
    if quick:
        env["SDIFT_QUICK"] = "1"
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def run_one(path: Path, *, quick: bool, timeout: float, log: Path) -> bool:
    """Run `path` in a child process (its own process group) within `timeout` seconds; log it.
    Returns whether the notebook was executed and replaced."""
    mode = "quick" if quick else "full"
    _log(log, f"{path.name}: started ({mode} settings, timeout {timeout:g} s)")
    t0 = time.perf_counter()
    argv = [sys.executable, str(Path(__file__).resolve()), "--one", str(path)] + (["--quick"] if quick else [])
    proc = subprocess.Popen(argv, cwd=ROOT, env=_child_env(quick), stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                            start_new_session=True, text=True)
    try:
        output, _ = proc.communicate(timeout=timeout)
        status = "ok" if proc.returncode == 0 else f"failed (exit {proc.returncode})"
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)  # the child and its kernel: a session of their own
        output, _ = proc.communicate()
        status = f"timed out after {timeout:g} s"
    secs = time.perf_counter() - t0
    ok = status == "ok"
    tail = "" if ok else "\n" + "\n".join("    " + line for line in (output or "").strip().splitlines()[-30:])
    _log(log, f"{path.name}: {status} in {secs:.0f} s" + ("" if ok else "; the stored notebook is unchanged") + tail)
    return ok


def _log(log: Path, message: str) -> None:
    line = f"[{datetime.datetime.now().isoformat(timespec='seconds')}] {message}"
    print(line, flush=True)
    log.parent.mkdir(parents=True, exist_ok=True)
    with open(log, "a") as fh:
        fh.write(line + "\n")


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("notebooks", nargs="*", type=Path, help="notebooks to run (default: every notebooks/*.ipynb)")
    p.add_argument("--timeout", type=float, default=DEFAULT_TIMEOUT_S,
                   help=f"seconds per notebook, whole notebook (default {DEFAULT_TIMEOUT_S})")
    p.add_argument("--log", type=Path, default=DEFAULT_LOG, help="file the progress is appended to "
                   "(default scratch/run_notebooks.log)")
    p.add_argument("--quick", action="store_true",
                   help="quick settings (SDIFT_QUICK=1, also when set in the environment): a smoke test of "
                        "this script; do not commit its outputs")
    p.add_argument("--one", type=Path, help=argparse.SUPPRESS)  # internal: the child process
    return p


def main(argv: list[str] | None = None) -> int:
    p = parser()
    args = p.parse_args(argv)
    if args.one is not None:
        execute_one(args.one, args.quick)
        return 0
    quick = args.quick or os.environ.get("SDIFT_QUICK") == "1"
    if not args.timeout > 0:
        p.error(f"--timeout: expected a positive number of seconds, got {args.timeout:g}")
    paths = args.notebooks or sorted(NOTEBOOKS.glob("*.ipynb"))
    for path in paths:
        if path.suffix != ".ipynb" or not path.is_file():
            p.error(f"notebooks: expected existing .ipynb files, got {str(path)!r}")
    if not paths:
        p.error(f"notebooks: none found in {NOTEBOOKS}")
    failed = [path.name for path in paths if not run_one(path.resolve(), quick=quick, timeout=args.timeout,
                                                          log=args.log)]
    _log(args.log, f"done: {len(paths) - len(failed)} of {len(paths)} notebooks executed and stored"
         + (f"; failed: {', '.join(failed)}" if failed else ""))
    return 1 if failed else 0


if __name__ == "__main__":
    raise SystemExit(main())
