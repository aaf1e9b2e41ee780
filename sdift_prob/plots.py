"""Figures of a reconstruction (matplotlib): fields, uncertainty, time series, calibration.

Every function takes the posterior field as an `xr.DataArray` with dims
`(chain, draw, time, *space_dims)` (``idata.posterior["field"]``), the truth (optional) as an
`xr.DataArray` `(time, *space_dims)` on the same grid, and returns the `matplotlib` Figure.
Axis labels carry the physical units from the coordinates' `units` attrs. `exceedance_map`
instead takes the probabilities of `inference.report.p_exceed` `(time, *space_dims)`.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
import xarray as xr

from .errors import bad_input
from .io import atomic_file
from .metrics import interval_coverage, pit_values


def _plt():
    import matplotlib

    if matplotlib.get_backend().lower() not in ("agg", "module://matplotlib_inline.backend_inline"):
        pass
    import matplotlib.pyplot as plt

    return plt


def _label(da: xr.DataArray, name: str) -> str:
    units = da.coords[name].attrs.get("units") if name in da.coords else None
    long = da.coords[name].attrs.get("long_name", name) if name in da.coords else name
    return f"{long} [{units}]" if units else str(long)


def _value_label(da: xr.DataArray) -> str:
    units = da.attrs.get("units")
    long = da.attrs.get("long_name", da.name or "value")
    return f"{long} [{units}]" if units else str(long)


def _check_posterior(field: Any) -> xr.DataArray:
    if not isinstance(field, xr.DataArray) or field.dims[:3] != ("chain", "draw", "time"):
        raise bad_input("field", "an xr.DataArray with dims (chain, draw, time, *space) "
                        "(idata.posterior['field'])", getattr(field, "dims", type(field).__name__))
    return field


def _slice_2d(da: xr.DataArray, fixed: dict[str, Any]) -> xr.DataArray:
    """Select nearest coordinates for every dim in `fixed` and leave a 2-D array."""
    out = da.sel({k: v for k, v in fixed.items() if k in da.dims}, method="nearest")
    if out.ndim != 2:
        raise bad_input("fixed", f"coordinates for all but two space dims of {da.dims}", fixed)
    return out


def field_panels(
    field: xr.DataArray,
    truth: xr.DataArray | None = None,
    *,
    time: float | None = None,
    fixed: dict[str, float] | None = None,
) -> Any:
    """Truth / posterior mean / posterior std / |error| at one time on a 2-D section.

    **Arguments:**

    - `field`: posterior field `(chain, draw, time, *space)`.
    - `truth`: true field `(time, *space)` on the same grid, or None.
    - `time`: physical time shown (nearest; default: the middle time stamp).
    - `fixed`: coordinates of the space dims held fixed for 3-D fields, e.g. `{"depth": 100}`
      (default: the first coordinate of the last dim).
    """
    plt = _plt()
    field = _check_posterior(field)
    space = field.dims[3:]
    t = float(field.time[len(field.time) // 2]) if time is None else float(time)
    if fixed is None:
        fixed = {space[-1]: float(field[space[-1]][0])} if len(space) == 3 else {}
    mean = field.mean(("chain", "draw")).sel(time=t, method="nearest")
    std = field.std(("chain", "draw")).sel(time=t, method="nearest")
    panels = [("posterior mean", _slice_2d(mean, fixed), "viridis"), ("posterior std", _slice_2d(std, fixed), "magma")]
    if truth is not None:
        tr = _slice_2d(truth.sel(time=t, method="nearest"), fixed)
        panels.insert(0, ("truth", tr, "viridis"))
        panels.append(("|error| of the mean", np.abs(panels[1][1] - tr), "magma"))
    fig, axes = plt.subplots(1, len(panels), figsize=(4.2 * len(panels), 3.6), constrained_layout=True)
    vmin = float(min(p[1].min() for p in panels if p[2] == "viridis"))
    vmax = float(max(p[1].max() for p in panels if p[2] == "viridis"))
    for ax, (title, arr, cmap) in zip(np.atleast_1d(axes), panels):
        ydim, xdim = arr.dims
        kw = {"vmin": vmin, "vmax": vmax} if cmap == "viridis" else {}
        m = ax.pcolormesh(arr[xdim], arr[ydim], arr.values, cmap=cmap, shading="auto", **kw)
        ax.set_xlabel(_label(arr, xdim))
        ax.set_ylabel(_label(arr, ydim))
        ax.set_title(title)
        if ydim == "depth":
            ax.invert_yaxis()
        fig.colorbar(m, ax=ax, label=_value_label(field))
    where = ", ".join(f"{k} = {v:g}" for k, v in fixed.items())
    fig.suptitle(f"time = {t:g} {field.time.attrs.get('units', '')}" + (f", {where}" if where else ""))
    return fig


def exceedance_map(
    p: xr.DataArray, *, time: float | None = None, fixed: dict[str, float] | None = None
) -> Any:
    """Map of exceedance probabilities P(field > threshold) from `inference.report.p_exceed`.

    **Arguments:**

    - `p`: `(time, *space)` probabilities in [0, 1] (`p_exceed(idata, threshold)`).
    - `time`: physical time shown (nearest; default: the middle time stamp). With one space dim
      the whole (space, time) plane is shown instead and `time` must be None.
    - `fixed`: coordinates of the space dims held fixed for 3-D fields, e.g. `{"depth": 100}`
      (default: the first coordinate of the last dim).

    The colour scale is fixed to [0, 1], diverging at 0.5 (as likely as not), so maps of
    different times or thresholds compare directly.
    """
    plt = _plt()
    if not isinstance(p, xr.DataArray) or p.ndim < 2 or p.dims[0] != "time":
        raise bad_input("p", "the (time, *space) DataArray of inference.report.p_exceed",
                        getattr(p, "dims", type(p).__name__))
    values = np.asarray(p.values, dtype=np.float64)
    if not (np.isfinite(values) & (values >= 0) & (values <= 1)).all():
        raise bad_input("p", "probabilities in [0, 1]", "values outside [0, 1] or NaN")
    space = p.dims[1:]
    if len(space) == 1:
        if time is not None:
            raise bad_input("time", "None for a field with one space dim (the whole time axis is shown)", time)
        panel, where = p.transpose(space[0], "time"), ""
    else:
        t = float(p.time[len(p.time) // 2]) if time is None else float(time)
        if fixed is None:
            fixed = {space[-1]: float(p[space[-1]][0])} if len(space) == 3 else {}
        panel = _slice_2d(p.sel(time=t, method="nearest"), fixed)
        where = ", ".join([f"time = {float(p.time.sel(time=t, method='nearest')):g}"]
                          + [f"{k} = {v:g}" for k, v in fixed.items()])
    ydim, xdim = panel.dims
    fig, ax = plt.subplots(figsize=(5.2, 4.2), constrained_layout=True)
    mesh = ax.pcolormesh(panel[xdim], panel[ydim], panel.values, vmin=0.0, vmax=1.0, cmap="RdBu_r", shading="auto")
    name = p.attrs.get("var_name", "field")
    thr = p.attrs.get("threshold")
    units = p.attrs.get("threshold_units", "")
    above = f"{thr:g} {units}".strip() if isinstance(thr, (int, float)) else "threshold"
    fig.colorbar(mesh, ax=ax, label=f"P({name} > {above})")
    ax.set_xlabel(_label(panel, xdim))
    ax.set_ylabel(_label(panel, ydim))
    if ydim == "depth":
        ax.invert_yaxis()
    n = p.attrs.get("n_draws")
    ax.set_title(f"P({name} > {above})" + (f" from {n} draws" if n else "") + (f"\n{where}" if where else ""))
    return fig


def _cell(grid: np.ndarray, value: float) -> tuple[float, float, float]:
    """The grid node nearest `value` and the bounds of its cell (halfway to each neighbour;
    half the adjacent spacing beyond an end node; unbounded for a one-node grid)."""
    order = np.sort(np.asarray(grid, dtype=np.float64))
    i = int(np.argmin(np.abs(order - value)))
    node = float(order[i])
    if order.size == 1:
        return node, -np.inf, np.inf
    below = 0.5 * (order[i] - order[i - 1]) if i > 0 else 0.5 * (order[1] - order[0])
    above = 0.5 * (order[i + 1] - order[i]) if i < order.size - 1 else 0.5 * (order[-1] - order[-2])
    return node, node - below, node + above


def _observation_tolerance(tolerance: Any, space: tuple[str, ...]) -> dict[str, float]:
    if tolerance is None:
        return {}
    if not isinstance(tolerance, Mapping):
        raise bad_input("tolerance", f"None or a dict space dim -> distance in that dim's units (dims {space}; "
                        "the dims have different units, so one number cannot fit all)", tolerance)
    unknown = sorted(set(tolerance) - set(space), key=str)
    if unknown:
        raise bad_input("tolerance", f"keys among the space dims {space}", unknown)
    out: dict[str, float] = {}
    for d, tol in tolerance.items():
        if isinstance(tol, bool) or not isinstance(tol, (int, float, np.integer, np.floating)) \
                or not np.isfinite(tol) or tol < 0:
            raise bad_input(f"tolerance[{d!r}]", "a finite distance >= 0", tol)
        out[d] = float(tol)
    return out


def time_series(
    field: xr.DataArray,
    location: dict[str, float],
    truth: xr.DataArray | None = None,
    obs: Any = None,
    *,
    levels: Sequence[float] = (0.5, 0.9),
    tolerance: Mapping[str, float] | None = None,
) -> Any:
    """Posterior mean and central credible bands over time at one location, with the truth
    and the observations near it.

    **Arguments:**

    - `field`: posterior field `(chain, draw, time, *space)`; the series is taken at the grid
      node nearest `location` (shown in the title).
    - `location`: a coordinate for each space dim.
    - `truth`: true field `(time, *space)` or None; `obs`: an `ObservationSet` or None.
    - `levels`: central credible levels of the bands.
    - `tolerance`: which observations are shown, per space dim. By default an observation is
      shown when, in every dim, the node's grid cell holds it (it lies within half the local
      grid spacing on each side, so on an uneven depth grid only the observations of that
      depth level); `{dim: distance}` instead accepts observations within that distance of the
      node in that dim (in the dim's units; dims left out keep the grid cell).
    """
    plt = _plt()
    field = _check_posterior(field)
    space = field.dims[3:]
    if not isinstance(location, Mapping) or set(location) != set(space):
        raise bad_input("location", f"a coordinate for each of {space}", location)
    tol = _observation_tolerance(tolerance, space)
    cells = {d: _cell(field[d].values, float(location[d])) for d in space}
    nodes = {d: cells[d][0] for d in space}
    at = field.sel(nodes, method="nearest")
    flat = at.stack(sample=("chain", "draw")).transpose("sample", "time").values
    t = field.time.values
    fig, ax = plt.subplots(figsize=(7, 3.6), constrained_layout=True)
    for lev, alpha in zip(sorted(levels, reverse=True), (0.2, 0.35, 0.5)):
        lo, hi = np.quantile(flat, [(1 - lev) / 2, (1 + lev) / 2], axis=0)
        ax.fill_between(t, lo, hi, alpha=alpha, color="C0", label=f"{int(lev * 100)}% credible band")
    ax.plot(t, flat.mean(axis=0), color="C0", label="posterior mean")
    if truth is not None:
        ax.plot(t, truth.sel(nodes, method="nearest").values, "k--", label="truth")
    if obs is not None and obs.n_points:
        if tuple(obs.space_dims) != tuple(space):
            raise bad_input("obs", f"observations over the space dims {space}", obs.space_dims)
        near = np.ones(obs.n_points, bool)
        for k, d in enumerate(space):
            x = obs.coords[:, k]
            node, lo, hi = cells[d]
            near &= (np.abs(x - node) <= tol[d]) if d in tol else ((x >= lo) & (x <= hi))
        if near.any():
            ax.scatter(obs.time[near], obs.value[near], color="C3", zorder=3, s=18, label="observations")
    ax.set_xlabel(_label(field, "time"))
    ax.set_ylabel(_value_label(field))
    ax.set_title(", ".join(f"{k} = {v:g}" for k, v in nodes.items()))
    ax.legend(fontsize=8)
    return fig


def observation_map(field: xr.DataArray, obs: Any, *, time: float | None = None,
                    fixed: dict[str, float] | None = None) -> Any:
    """Observation locations (all times, projected on the first two space dims) over the
    posterior mean at one time."""
    plt = _plt()
    field = _check_posterior(field)
    space = field.dims[3:]
    t = float(field.time[len(field.time) // 2]) if time is None else float(time)
    if fixed is None:
        fixed = {space[-1]: float(field[space[-1]][0])} if len(space) == 3 else {}
    mean = _slice_2d(field.mean(("chain", "draw")).sel(time=t, method="nearest"), fixed)
    ydim, xdim = mean.dims
    fig, ax = plt.subplots(figsize=(5, 4.2), constrained_layout=True)
    m = ax.pcolormesh(mean[xdim], mean[ydim], mean.values, shading="auto", cmap="viridis")
    fig.colorbar(m, ax=ax, label=_value_label(field))
    if obs is not None and obs.n_points:
        ix, iy = space.index(xdim), space.index(ydim)
        sc = ax.scatter(obs.coords[:, ix], obs.coords[:, iy], c=obs.time, s=10, cmap="Greys", edgecolors="w",
                        linewidths=0.3)
        fig.colorbar(sc, ax=ax, label=_label(field, "time"))
    ax.set_xlabel(_label(mean, xdim))
    ax.set_ylabel(_label(mean, ydim))
    ax.set_title(f"{obs.n_points if obs is not None else 0} observations over the posterior mean")
    return fig


def calibration(field: xr.DataArray, truth: xr.DataArray, *, levels: Sequence[float] | None = None,
                pit: np.ndarray | None = None) -> Any:
    """Calibration curve (nominal vs empirical central-interval coverage) and PIT histogram."""
    plt = _plt()

    field = _check_posterior(field)
    lv = tuple(np.linspace(0.1, 0.9, 9)) if levels is None else tuple(levels)
    draws = field.stack(sample=("chain", "draw")).transpose("sample", ...).values
    cov = interval_coverage(truth.values, draws, levels=lv)
    p = pit_values(truth.values, draws) if pit is None else np.asarray(pit)
    fig, (a1, a2) = plt.subplots(1, 2, figsize=(9, 3.8), constrained_layout=True)
    a1.plot([0, 1], [0, 1], "k:", label="ideal")
    a1.plot(list(cov), list(cov.values()), "o-", label="posterior")
    a1.set_xlabel("nominal central-interval level")
    a1.set_ylabel("empirical coverage")
    a1.legend()
    a2.hist(np.ravel(p), bins=20, range=(0, 1), density=True, color="C0", alpha=0.8)
    a2.axhline(1.0, color="k", ls=":")
    a2.set_xlabel("PIT value")
    a2.set_ylabel("density")
    a2.set_title("PIT histogram (flat = calibrated)")
    return fig


def animation(field: xr.DataArray, path: Any, *, fixed: dict[str, float] | None = None, fps: int = 4) -> None:
    """GIF of the posterior mean's evolution on a 2-D section (written atomically)."""
    plt = _plt()
    from matplotlib.animation import FuncAnimation, PillowWriter

    field = _check_posterior(field)
    space = field.dims[3:]
    if fixed is None:
        fixed = {space[-1]: float(field[space[-1]][0])} if len(space) == 3 else {}
    mean = field.mean(("chain", "draw"))
    frames = [_slice_2d(mean.isel(time=i), fixed) for i in range(mean.sizes["time"])]
    ydim, xdim = frames[0].dims
    vmin = float(min(f.min() for f in frames))
    vmax = float(max(f.max() for f in frames))
    fig, ax = plt.subplots(figsize=(5, 4.2), constrained_layout=True)
    mesh = ax.pcolormesh(frames[0][xdim], frames[0][ydim], frames[0].values, vmin=vmin, vmax=vmax,
                         shading="auto", cmap="viridis")
    fig.colorbar(mesh, ax=ax, label=_value_label(field))
    ax.set_xlabel(_label(frames[0], xdim))
    ax.set_ylabel(_label(frames[0], ydim))

    def update(i: int):
        mesh.set_array(frames[i].values.ravel())
        ax.set_title(f"posterior mean, time = {float(mean.time[i]):g}")
        return (mesh,)

    anim = FuncAnimation(fig, update, frames=len(frames), blit=False)
    with atomic_file(path, overwrite=True) as tmp:
        anim.save(str(tmp), writer=PillowWriter(fps=fps))
    plt.close(fig)
