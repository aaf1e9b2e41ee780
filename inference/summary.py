"""What a reconstruction did, in one short block (issue 16): `run_summary(idata)` (a JSON-ready
dict) and `summary_text(summary)` (a few lines for people; `sdift reconstruct` prints it on
stderr, and the dict as JSON with `--json-summary`).

Everything comes from the attrs `reconstruct` writes (`sampler`, `settings`, `noise`, `data`,
`time_range`, `representation_error`, `self_checks`, ...) and the posterior's shape; posteriors
written before those attrs existed give `None` for what they do not record.
"""

from __future__ import annotations

from typing import Any

from .report import posterior_attrs


def run_summary(idata: Any) -> dict[str, Any]:
    """The run's settings and what it conditioned on, from the InferenceData attrs:

    `sampler`, `chains`, `draws`, `steps` (None for `gp`), `conditioned`, `likelihood`, `noise`
    (`source`: given / per point / inferred / poisson / none, `reason`, `std` in physical units
    — the posterior mean for an inferred one, the median for per-point ones), `representation_error`,
    `data` (points used, points dropped before the file was written, sampler frames with and
    without data), `time_range` (output, observations and training ranges, `extrapolated`),
    `observations` (the observation set's provenance), `self_checks` (mode, and the failed
    checks' messages), `units`, `wall_time_s`, `wall_time_per_draw_s` (the sampling cost per
    draw) and `constraints` (the physical constraints used, `inference.constraints`; empty: none).
    """
    attrs = posterior_attrs(idata)
    post = idata.posterior
    guided = (attrs.get("settings") or {}).get("guided") or {}
    checks = attrs.get("self_checks") or {}
    results = checks.get("results") or []
    return {
        "sampler": attrs.get("sampler"),
        "chains": int(post.sizes["chain"]),
        "draws": int(post.sizes["draw"]),
        "steps": guided.get("num_steps"),
        "conditioned": bool(attrs.get("conditioned", 0)),
        "likelihood": attrs.get("likelihood"),
        "noise": attrs.get("noise"),
        "representation_error": attrs.get("representation_error"),
        "data": attrs.get("data"),
        "time_range": attrs.get("time_range"),
        "observations": attrs.get("observations") or {},
        "self_checks": {"mode": checks.get("mode"), "run": [r["check"] for r in results],
                        "failed": [r for r in results if not r["passed"]]},
        "units": attrs["units"].get("field") if isinstance(attrs.get("units"), dict) else attrs.get("units"),
        "wall_time_s": attrs.get("wall_time_s"),
        "wall_time_per_draw_s": attrs.get("wall_time_per_draw_s"),
        "constraints": (attrs.get("constraints") or {}).get("terms") or [],
    }


def _range(r: Any) -> str:
    return "none" if not r else f"{r[0]:.4g} .. {r[1]:.4g}"


def summary_text(summary: dict[str, Any]) -> str:
    """`run_summary`'s dict as a few lines of text (no trailing newline)."""
    s = summary
    units = s.get("units") or "field units"
    steps = "" if s.get("steps") is None else f", {s['steps']} steps"
    lines = [f"sampler {s['sampler']}: {s['chains']} x {s['draws']} draws{steps}, likelihood {s['likelihood']}"]
    if not s["conditioned"]:
        lines.append("NOT conditioned: no observations, these are prior draws")
    noise = s.get("noise")
    if noise and s["conditioned"]:
        level = ""
        if noise.get("std") is not None:
            level = f"{'median ' if noise['source'] == 'per point' else ''}{noise['std']:.4g} {units}"
            if noise.get("std_min") is not None and noise["std_min"] != noise["std_max"]:
                level += f" (range {noise['std_min']:.4g} .. {noise['std_max']:.4g})"
            if noise.get("interval90") is not None:  # σ drawn before sampling (inference.sigma_marginal)
                lo, hi = noise["interval90"]
                used = "" if noise["points_used"] == noise["points"] else \
                    f", from {noise['points_used']} of {noise['points']} points"
                level += f" (90% interval {lo:.4g} .. {hi:.4g}{used})"
            level += ", "
        rep = s.get("representation_error") or {}
        rep_text = f"; FTM representation error {rep['std']:.3g} {units} {rep.get('applied', '')}" if rep else ""
        lines.append(f"noise: {noise['source']}, {level}{noise['reason']}{rep_text}")
    data = s.get("data")
    if data:
        dropped = f", {data['points_dropped_before']} dropped before (obs.attrs)" if data["points_dropped_before"] \
            else ""
        lines.append(f"data: {data['points_used']} points used{dropped}; {data['frames_with_data']} of "
                     f"{data['frames']} sampler frames with data, {data['frames_without_data']} without")
    tr = s.get("time_range")
    if tr:
        flag = (f"  EXTRAPOLATION: {tr['spans_outside_training']:.3g} training spans outside"
                if tr["extrapolated"] else "")
        lines.append(f"times: output {_range(tr['output'])}, observations {_range(tr['observations'])}, "
                     f"training {_range(tr['training'])}{flag}")
    prov = s.get("observations") or {}
    if "trajectory" in prov:
        lines.append(f"observations of trajectory {prov['trajectory']} of {prov.get('source', '?')}")
    terms = s.get("constraints") or []
    if terms:
        parts = []
        for t in terms:
            extra = ""
            if t.get("solver_steps_per_gap"):
                steps = t["solver_steps_per_gap"]
                extra = f", {min(steps)}..{max(steps)} solver steps of dt {t['dt']:g} per gap"
            parts.append(f"{t['name']} (scale {t['scale']:g} {units}, weight {t['weight']:g}{extra})")
        cost = s.get("wall_time_per_draw_s")
        lines.append("constraints: " + "; ".join(parts)
                     + (f"; {cost:.3g} s per draw (sampling, with compilation)" if cost is not None else ""))
    checks = s.get("self_checks") or {}
    if checks.get("failed"):
        for r in checks["failed"]:
            lines.append(f"SELF-CHECK FAILED ({r['check']}): {r['message']} (limit {r['limit']:g})")
    elif checks.get("run"):
        lines.append(f"self-checks passed: {', '.join(checks['run'])}")
    return "\n".join(lines)
