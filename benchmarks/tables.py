"""Markdown tables from the benchmark JSON files (so RESULTS.md quotes them, not hand-typed figures).

    python -m benchmarks.tables benchmarks/results/accuracy_full.json [benchmarks/results/speed.json]
    python -m benchmarks.tables --sweep benchmarks/results/noise_sweep/*.json
"""

from __future__ import annotations

import json
import sys

import numpy as np
from typing import Any

LABELS = {"mmps": "**MMPS (default)**", "mpdps": "MPDPS", "mpdps_fitted": "MPDPS, fitted message kernel", "dps": "DPS", "gp": "FTM + GP prior (exact)", "kriging": "kriging (GPJax)",
          "linear": "linear interpolation", "train_mean": "training-mean field"}
ORDER = ("mmps", "mpdps", "mpdps_fitted", "dps", "gp", "kriging", "linear", "train_mean")


def _pm(d: dict[str, Any] | None, key: str = "vrmse", digits: int = 3) -> str:
    if not d or key not in d:
        return "–"
    return f"{d[key]['mean']:.{digits}f} ± {d[key]['std']:.{digits}f}"


def _m(d: dict[str, Any] | None, key: str, digits: int = 2) -> str:
    if not d or key not in d:
        return "–"
    return f"{d[key]['mean']:.{digits}f}"


def accuracy_tables(res: dict[str, Any]) -> str:
    out = []
    for name, ds in res["datasets"].items():
        cells = ds["cells"]
        if cells:
            out.extend(main_table(name, cells))
        if ds.get("noise"):
            out.extend(noise_table(name, cells, ds["noise"]))
    return "\n".join(out)


def _label(m: str) -> str:
    return LABELS.get(m, f"`{m}`")  # a sampler variant (benchmarks.variants) by its name


def _present(columns: list[dict[str, Any]], among: tuple[str, ...] | None = None) -> list[str]:
    """The methods of `among` (default: all) present in any column: the named ones in `ORDER`,
    then sampler variants in the order they appear."""
    seen = [m for c in columns for m in c["methods"]]
    named = [m for m in ORDER if m in seen]
    variants = list(dict.fromkeys(m for m in seen if m not in ORDER))
    return [m for m in named + variants if among is None or m in among or m not in ORDER]


def _vrmse_rows(heads: list[str], columns: list[dict[str, Any]]) -> list[str]:
    """Header and one VRMSE row per method present in any column (a cell or a noise entry)."""
    out = ["| method | " + " | ".join(heads) + " |", "|---" * (len(columns) + 1) + "|"]
    for m in _present(columns):
        out.append(f"| {_label(m)} | " + " | ".join(_pm(c["methods"].get(m)) for c in columns) + " |")
    return out


def main_table(name: str, cells: list[dict[str, Any]]) -> list[str]:
    out = []
    ns = sorted({c["n_test"] for c in cells})
    over = f"{ns[0]} test trajectories" if len(ns) == 1 else "n test trajectories, per column"
    out.append(f"### {name} — VRMSE of the point estimate (mean ± std over {over})\n")
    heads = [f"ρ={c['rho']:.0%}, setting {c['setting']}" + ("" if len(ns) == 1 else f" (n={c['n_test']})")
             for c in cells]
    out.extend(_vrmse_rows(heads, cells))
    for variant in ("mmps", "mpdps", "mpdps_fitted"):
        gains = []
        for c in cells:
            mp, dp = c["methods"].get(variant), c["methods"].get("dps")
            if mp and dp:
                gains.append(f"{100 * (1 - mp['vrmse']['mean'] / dp['vrmse']['mean']):.0f}%")
        if gains:
            out.append(f"| {LABELS[variant].strip('*')} vs DPS (VRMSE reduction) | " + " | ".join(gains) + " |")
    best = []
    for c in cells:
        mp = min((c["methods"][v] for v in ("mpdps", "mpdps_fitted") if v in c["methods"]),
                 key=lambda d: d["vrmse"]["mean"], default=None)
        classical = [c["methods"][k]["vrmse"]["mean"] for k in ("kriging", "linear") if k in c["methods"]]
        if mp and classical:
            best.append(f"{100 * (1 - mp['vrmse']['mean'] / min(classical)):.0f}%")
    if best:
        out.append("| best MPDPS vs best classical (kriging, linear) | " + " | ".join(best) + " |")
    for other in ("kriging", "gp", "mpdps"):
        rel = [f"{100 * (1 - c['methods']['mmps']['vrmse']['mean'] / c['methods'][other]['vrmse']['mean']):.0f}%"
               if "mmps" in c["methods"] and other in c["methods"] else "–" for c in cells]
        if any(r != "–" for r in rel):
            out.append(f"| MMPS vs {LABELS[other].strip('*')} (VRMSE reduction) | " + " | ".join(rel) + " |")
    out.append("")
    out.append(f"Uncertainty on {name} (50% / 90% coverage of Student-t predictive intervals — kriging: of its "
               "Gaussian intervals —, [of equal-tailed quantile intervals of the draws, and the number of draws] "
               "where measured, CRPS in field units; `cal` = after `calibrate_reconstruction`):\n")
    out.append("| method | " + " | ".join(heads) + " |")
    out.append("|---" * (len(cells) + 1) + "|")
    for m in _present(cells, ("mmps", "mpdps", "mpdps_fitted", "dps", "gp", "kriging")):
        row = []
        for c in cells:
            d = c["methods"].get(m)
            quantile = (f" [quantile {_m(d, 'coverage_50_quantile')} / {_m(d, 'coverage_90_quantile')}"
                        + (f", {_m(d, 'n_draws', 0)} draws" if "n_draws" in d else "") + "]"
                        if d and "coverage_90_quantile" in d else "")
            row.append("–" if not d else f"{_m(d, 'coverage_50')} / {_m(d, 'coverage_90')}{quantile}, "
                       f"{_m(d, 'crps', 3)}")
        out.append(f"| {_label(m)} | " + " | ".join(row) + " |")
        if any("coverage_90_cal" in c["methods"].get(m, {}) for c in cells):
            row = []
            for c in cells:
                d = c["methods"].get(m)
                row.append("–" if not d or "coverage_90_cal" not in d else
                           f"{_m(d, 'coverage_50_cal')} / {_m(d, 'coverage_90_cal')}, {_m(d, 'crps_cal', 3)} "
                           f"(τ {_m(d, 'temperature', 1)})")
            out.append(f"| {_label(m)} cal | " + " | ".join(row) + " |")
    out.append("")
    out.extend(multivariate_table(name, cells, heads))
    secs = []
    for m in _present(cells, ("mmps", "mpdps", "mpdps_fitted", "dps", "gp", "kriging", "linear")):
        vals = [c["methods"][m]["seconds"]["mean"] for c in cells if m in c["methods"] and "seconds" in c["methods"][m]]
        if vals:
            secs.append(f"{_label(m).strip('*')} {sum(vals) / len(vals):.1f} s")
    if secs:
        out.append("Seconds per reconstruction (mean over cells, compilation included once per shape): "
                   + ", ".join(secs) + ".\n")
    return out


def multivariate_table(name: str, cells: list[dict[str, Any]], heads: list[str]) -> list[str]:
    """Energy score / variogram score per method and cell, where measured (files written before
    these scores existed have none: no table)."""
    methods = [m for m in ("mmps", "mpdps", "mpdps_fitted", "dps", "gp", "kriging")
               if any("energy_score" in c["methods"].get(m, {}) for c in cells)]
    if not methods:
        return []
    points = sorted({c["multivariate_points"] for c in cells if "multivariate_points" in c})
    where = f"at most {points[0]} points per frame" if len(points) == 1 else "a fixed subset of points per frame"
    out = [f"Multivariate scores on {name} (energy score / variogram score p = 0.5, per frame over the same "
           f"{where} for every method, mean over frames; lower is better; [number of draws]; kriging: joint "
           "draws from its Gaussian predictive):\n",
           "| method | " + " | ".join(heads) + " |", "|---" * (len(cells) + 1) + "|"]
    for m in methods:
        row = []
        for c in cells:
            d = c["methods"].get(m)
            row.append("–" if not d or "energy_score" not in d else
                       f"{_m(d, 'energy_score', 2)} / {_m(d, 'variogram_score', 0)}"
                       + (f" [{_m(d, 'n_draws', 0)}]" if "n_draws" in d else ""))
        out.append(f"| {LABELS[m]} | " + " | ".join(row) + " |")
    out.append("")
    return out


def noise_table(name: str, cells: list[dict[str, Any]], entries: list[dict[str, Any]]) -> list[str]:
    out = []
    n = max(e["n_test"] for e in entries)
    out.append(f"Noise robustness on {name} (ρ = 1%, setting 1; level = noise std / training std; "
               f"{n} test trajectories):\n")
    base = next((c for c in cells if c["setting"] == 1 and abs(c["rho"] - 0.01) < 1e-9), None)
    if base is not None:
        entries = [{"noise": "gaussian", "level": base["noise_level"], "n_test": base["n_test"],
                    "methods": base["methods"]}, *entries]
    out.extend(_vrmse_rows([f"{e['noise']} {e['level']:g}" for e in entries], entries))
    out.append("")
    return out


def speed_tables(res: dict[str, Any]) -> str:
    out = ["| measurement | figure |", "|---|---|"]
    d = res.get("draws", {})
    for r in d.get("sampler", []):
        out.append(f"| default sampler, {r['draws']} vmapped draws | {r['seconds']:.2f} s ({r['per_draw_s']:.3f} s/draw; "
                   f"compile {r['compile_s']:.0f} s) |")
    if d:
        out.append(f"| 16 draws / 1 draw | {d['ratio_16_to_1']:.2f}x |")
    for r in d.get("reconstruct", []):
        out.append(f"| `reconstruct` end to end, {r['draws']} draws | {r['seconds']:.2f} s |")
    for r in d.get("memory", []):
        out.append(f"| peak RSS, {r['draws']} draws (fresh process) | {r['peak_rss_mb']:.0f} MB |")
    g = res.get("guided_vs_unconditional")
    if g:
        out.append(f"| 16 draws: unconditional / DPS / MPDPS | {g['unconditional_s']:.2f} / {g['dps_s']:.2f} / "
                   f"{g['mpdps_s']:.2f} s (MPDPS {g['mpdps_over_unconditional']:.2f}x unconditional) |")
    c = res.get("sampler_cost")
    if c:
        out.append(f"| {c['draws']} draws, side by side (x MPDPS) | " + ", ".join(
            f"{v} {sec:.2f} s ({c['over_mpdps'][v]:.2f}x)" for v, sec in c["seconds"].items()) + " |")
    for sec, key, label in (("observations", "observations", "observed points"), ("time_stamps", "frames", "frames"),
                            ("resolution", "decoded_values", "decoded values"), ("core_size", "core_size", "core size D")):
        s = res.get(sec)
        if not s:
            continue
        pts = ", ".join(f"{r[key]:,}: {r['seconds']:.2f} s" for r in s["rows"])
        out.append(f"| {label} ({pts}) | exponent {s['exponent']:.2f} |")
    t = res.get("training")
    if t:
        out.append(f"| FTM fit throughput | {t['ftm_entries_per_s'] / 1e6:.2f} M entries/s |")
        out.append(f"| prior training (batch 8 x 12 frames) | {t['prior_steps_per_s']:.2f} steps/s |")
    return "\n".join(out)


def exactness_tables(res: dict[str, Any]) -> str:
    """One table per cell of `benchmarks.exactness`: mean over replicates [min – max]."""
    cfg = res["config"]
    out = [f"Exactness bench: {cfg['frames']} frames, D = {cfg['D']}, {cfg['points']} points per observed frame "
           f"({cfg['design']} design rows), {cfg['replicates']} replicates x {cfg['draws']} draws.\n"]
    for cell, methods in res["cells"].items():
        out.append(f"#### {cell}\n")
        sigma = any("sigma_mean" in v for v in methods.values())
        head = "| sampler | mean error | sd ratio | 50% cov. | 90% cov. | E[z²] | SBC χ²/dof |"
        out += [head + (" σ / true | σ / exact post. | σ 90% covers |" if sigma else ""),
                "|---" * (7 + 3 * sigma) + "|"]
        for name, v in methods.items():
            if "mean_error" not in v:
                out.append(f"| {name} | diverged in every replicate (NumericalError) |" + " |" * (5 + 3 * sigma))
                continue
            row = f"| {name} | " + " | ".join(
                f"{v[k][0]:.3g} [{v[k][1]:.3g}–{v[k][2]:.3g}]" if k == "mean_error" else f"{v[k][0]:.3f}"
                for k in ("mean_error", "sd_ratio", "cover50", "cover90", "z2")) + f" | {v['sbc_chi2_per_dof']:.1f} |"
            if sigma:
                def fig(k: str, v: dict[str, Any] = v) -> str:
                    return f"{v[k][0]:.2f}" if k in v else "–"

                row += (f" {fig('sigma_mean')} | {fig('sigma_over_exact')} | {fig('sigma_cover90')} "
                        f"(exact {fig('exact_sigma_cover90')}) |" if "sigma_mean" in v else " – | – | – |")
            n_bad = len(v.get("diverged", []))
            out.append(row + (f" ({n_bad} replicates diverged)" if n_bad else ""))
        out.append("")
    return "\n".join(out)


def sweep_table(results: list[dict[str, Any]]) -> str:
    """VRMSE by noise level (columns) for each setting and method, from accuracy files that differ
    only in `--noise-scale` (`benchmarks/results/noise_sweep/`); a diverged run counts as such."""
    cols: dict[tuple[int, float], dict[str, Any]] = {}
    for res in results:
        for ds in res["datasets"].values():
            for c in ds["cells"]:
                cols[(c["setting"], c["noise_level"])] = c
    out = []
    for setting in sorted({k[0] for k in cols}):
        keys = sorted(k for k in cols if k[0] == setting)
        out.append(f"Setting {setting} (ρ = {cols[keys[0]]['rho']:.0%}, {cols[keys[0]]['n_test']} test trajectories), "
                   "VRMSE by noise std / training std:\n")
        out.append("| method | " + " | ".join(f"{k[1]:g}" for k in keys) + " |")
        out.append("|---" * (len(keys) + 1) + "|")
        methods = dict.fromkeys(m for k in keys for m in cols[k]["methods"])
        for m in methods:
            row = []
            for k in keys:
                d = cols[k]["methods"].get(m)
                bad = int(np.nansum(d["diverged"]["values"])) if d and "diverged" in d else 0
                row.append("–" if not d else (f"{d['vrmse']['mean']:.3f}" if np.isfinite(d["vrmse"]["mean"]) else "")
                           + (f" ({bad} diverged)" if bad else ""))
            out.append(f"| {LABELS.get(m, m).strip('*')} | " + " | ".join(row) + " |")
        out.append("")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    args = list(argv if argv is not None else sys.argv[1:])
    if args and args[0] == "--sweep":
        print(sweep_table([json.loads(open(p).read()) for p in args[1:]]))
        return 0
    for path in args:
        res = json.loads(open(path).read())
        print(f"<!-- from {path} -->")
        if "datasets" in res:
            print(accuracy_tables(res))
        elif "cells" in res:
            print(exactness_tables(res))
        else:
            print(speed_tables(res))
        print()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
