"""Combine accuracy-suite JSON files that cover different cells or test trajectories.

    python -m benchmarks.merge A.json B.json [...] --out MERGED.json

A long table is often measured in pieces (`--rho`/`--settings` for other cells, `--first-test`
for more test trajectories of a cell already measured, `--methods` for a method added later on
the same trajectories: pieces with the same trajectories and disjoint methods are joined). Every trajectory's observations and
keys depend only on the seed and its index, so pieces of one cell concatenate into exactly
the cell one run would have written. The pieces must share the seed, draws, noise level,
dataset and run; the trajectory ranges of one cell must not overlap. Summaries (mean ± std)
are recomputed from the per-trajectory values; the merged file lists its sources.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

import numpy as np

from sdift_prob.io import write_json
from sdift_prob.metrics import summarise

_SHARED_CONFIG = ("draws", "noise_scale", "source")


def _cell_key(cell: dict[str, Any]) -> tuple[Any, ...]:
    return (cell["setting"], cell["rho"], cell["noise"], cell["noise_level"])


def _noise_key(entry: dict[str, Any]) -> tuple[Any, ...]:
    return (entry["noise"], entry["level"], entry["rho"], entry["setting"])




def _join_methods(pieces: list[dict[str, Any]], what: str) -> list[dict[str, Any]]:
    """Pieces that scored the same test trajectories with different methods (e.g. a new sampler
    run later on the committed protocol) become one piece holding all their methods."""
    by_range: dict[tuple[Any, ...], dict[str, Any]] = {}
    for c in pieces:
        # the position in the test split; older files do not list the dataset indices
        key = (c.get("first_test", 0), c["n_test"])
        if key not in by_range:
            by_range[key] = {**c, "methods": dict(c["methods"])}
            continue
        ids = [x.get("test_trajectories") for x in (by_range[key], c)]
        if None not in ids and ids[0] != ids[1]:
            raise SystemExit(f"{what}: two files hold different trajectories at the same positions")
        by_range[key].setdefault("test_trajectories", c.get("test_trajectories"))
        both = set(by_range[key]["methods"]) & set(c["methods"])
        if both:
            raise SystemExit(f"{what}: two files scored {sorted(both)} on the same test trajectories")
        by_range[key]["methods"].update(c["methods"])
    return list(by_range.values())


def _merge_pieces(pieces: list[dict[str, Any]], what: str) -> dict[str, Any]:
    """One cell from pieces covering disjoint test-trajectory ranges (ordered by first index);
    pieces on the same trajectories with disjoint methods are joined first."""
    pieces = sorted(_join_methods(pieces, what), key=lambda c: c.get("first_test", 0))
    end = pieces[0].get("first_test", 0)
    for c in pieces:
        start = c.get("first_test", 0)
        if start < end:
            raise SystemExit(f"{what}: test trajectories {start}..{start + c['n_test'] - 1} overlap an earlier file")
        if start > end:  # first_test + n_test must keep describing which trajectories the cell holds
            raise SystemExit(f"{what}: test trajectories {end}..{start - 1} are in none of the files")
        end = start + c["n_test"]
    methods = [set(c["methods"]) for c in pieces]
    if any(m != methods[0] for m in methods):
        raise SystemExit(f"{what}: the files scored different methods ({[sorted(m) for m in methods]})")
    for m in methods[0]:
        figures = [sorted(c["methods"][m]) for c in pieces]
        if any(f != figures[0] for f in figures):
            raise SystemExit(f"{what}: the files hold different figures for {m} ({figures})")
    merged = {k: v for k, v in pieces[0].items() if k not in ("methods", "n_test", "test_trajectories")}
    merged["first_test"] = pieces[0].get("first_test", 0)
    merged["n_test"] = sum(c["n_test"] for c in pieces)
    if all("test_trajectories" in c for c in pieces):
        merged["test_trajectories"] = [i for c in pieces for i in c["test_trajectories"]]
    merged["methods"] = {}
    for m in pieces[0]["methods"]:
        merged["methods"][m] = {}
        for fig in pieces[0]["methods"][m]:
            values = [v for c in pieces for v in c["methods"][m][fig]["values"]]
            mean, std = summarise(np.asarray(values))
            merged["methods"][m][fig] = {"mean": mean, "std": std, "values": values}
    return merged


def merge(results: list[dict[str, Any]], sources: list[str]) -> dict[str, Any]:
    first = results[0]
    for r, src in zip(results[1:], sources[1:]):
        if r["seed"] != first["seed"]:
            raise SystemExit(f"{src}: seed {r['seed']} differs from {sources[0]}'s {first['seed']}")
        for k in _SHARED_CONFIG:
            if r["config"].get(k) != first["config"].get(k):
                raise SystemExit(f"{src}: config {k} = {r['config'].get(k)!r} differs from "
                                 f"{sources[0]}'s {first['config'].get(k)!r}")
    out: dict[str, Any] = {
        # Only the settings every piece shares; each piece's own config is kept in merged_from.
        "suite": first["suite"], "config": {k: first["config"].get(k) for k in _SHARED_CONFIG},
        "seed": first["seed"],
        "methods": sorted({m for r in results for m in r["methods"]}), "machine": first["machine"],
        "datasets": {}, "merged_from": [
            {"file": s, "command": r.get("command"), "config": r["config"], "wall_time_s": r.get("wall_time_s")}
            for r, s in zip(results, sources)],
        "wall_time_s": float(sum(r.get("wall_time_s", 0.0) for r in results)),
    }
    names = [n for r in results for n in r["datasets"]]
    for name in dict.fromkeys(names):
        parts = [(r["datasets"][name], s) for r, s in zip(results, sources) if name in r["datasets"]]
        ds0 = parts[0][0]
        for ds, s in parts[1:]:
            if ds["run"] != ds0["run"] or ds["training_std"] != ds0["training_std"]:
                raise SystemExit(f"{s}: {name} was scored with another run ({ds['run']} vs {ds0['run']})")
        groups: dict[str, dict[tuple[Any, ...], list[dict[str, Any]]]] = {"cells": {}, "noise": {}}
        for ds, _ in parts:
            for c in ds.get("cells", []):
                groups["cells"].setdefault(_cell_key(c), []).append(c)
            for e in ds.get("noise", []):
                groups["noise"].setdefault(_noise_key(e), []).append(e)
        merged = {k: v for k, v in ds0.items() if k not in ("cells", "noise", "wall_time_s")}
        # Table order: setting, then rho (as one run writes them).
        merged["cells"] = [_merge_pieces(groups["cells"][k], f"{name} setting {k[0]} rho {k[1]}")
                           for k in sorted(groups["cells"], key=lambda k: (k[0], k[1]))]
        merged["noise"] = [_merge_pieces(v, f"{name} noise {k[0]} {k[1]}") for k, v in groups["noise"].items()]
        merged["wall_time_s"] = float(sum(ds.get("wall_time_s", 0.0) for ds, _ in parts))
        out["datasets"][name] = merged
    return out


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("files", nargs="+", help="accuracy-suite JSON files (benchmarks.accuracy --out)")
    p.add_argument("--out", required=True, help="merged JSON (written atomically; may be one of the inputs)")
    args = p.parse_args(argv)
    results = []
    for f in args.files:
        res = json.loads(Path(f).read_text())
        if "datasets" not in res:
            raise SystemExit(f"{f}: not an accuracy-suite file (no 'datasets')")
        results.append(res)
    merged = merge(results, args.files)
    merged["command"] = " ".join(["python -m benchmarks.merge", *(argv if argv is not None else sys.argv[1:])])
    write_json(args.out, merged)
    print(f"merged {len(args.files)} files into {args.out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
