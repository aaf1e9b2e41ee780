"""Time axes as floats: datetime (or CF-encoded `<unit> since <date>`) values to float time in
days / hours / minutes / seconds since an origin (`to_float_time`), for the readers.
"""

from __future__ import annotations

from collections.abc import Mapping
import re
from typing import Any
import warnings

import numpy as np
import pandas as pd
import xarray as xr

from ..errors import bad_input



# Float time units a datetime axis can be expressed in, and their length in nanoseconds.
TIME_UNITS: dict[str, int] = {
    "days": 86_400 * 10**9,
    "hours": 3_600 * 10**9,
    "minutes": 60 * 10**9,
    "seconds": 10**9,
}
_UNIT_ALIASES = {"day": "days", "d": "days", "hour": "hours", "h": "hours", "hr": "hours", "minute": "minutes",
                 "min": "minutes", "second": "seconds", "s": "seconds", "sec": "seconds"}
_CF_SINCE = re.compile(r"^\s*(\w+)\s+since\s+(.+?)\s*$", re.IGNORECASE)


# -- time -----------------------------------------------------------------------------------------
def _time_unit(units: Any) -> str:
    name = units.strip().lower() if isinstance(units, str) else units
    name = _UNIT_ALIASES.get(name, name)
    if name not in TIME_UNITS:
        raise bad_input("time_units", f"one of {tuple(TIME_UNITS)}", units)
    return name


def _origin(time_origin: Any) -> np.datetime64:
    try:
        ts = pd.Timestamp(time_origin)
    except (TypeError, ValueError) as exc:
        raise bad_input("time_origin", "a date: ISO string, datetime or numpy.datetime64", time_origin) from exc
    if ts is pd.NaT:
        raise bad_input("time_origin", "a date, not NaT", time_origin)
    if ts.tzinfo is not None:
        ts = ts.tz_convert("UTC").tz_localize(None)
    return np.datetime64(ts.to_datetime64(), "ns")


def _iso(t: np.datetime64) -> str:
    return pd.Timestamp(t).isoformat()


def _as_datetime64(values: np.ndarray, attrs: Mapping[str, Any], argument: str) -> tuple[np.ndarray | None, str]:
    """`(datetime64[ns] array or None if the values are not dates, calendar)`."""
    arr = np.asarray(values)
    if arr.dtype.kind == "M":
        return arr.astype("datetime64[ns]"), "proleptic_gregorian"
    if arr.dtype.kind in "iuf":
        units = attrs.get("units")
        if isinstance(units, str) and _CF_SINCE.match(units):
            # CF-encoded numbers ("days since 1950-01-01 00:00:00 UTC"): decode with xarray.
            calendar = str(attrs.get("calendar", "standard"))
            raw = xr.Dataset({"t": ("n", arr.ravel(), {"units": units, "calendar": calendar})})
            try:
                decoded = xr.decode_cf(raw)["t"].values
            except Exception as exc:  # noqa: BLE001 - xarray raises several types
                raise bad_input(argument, "CF-encoded times xarray can decode (standard calendars; other "
                                "calendars need the cftime package)", f"units {units!r}, calendar {calendar!r}"
                                ) from exc
            if np.asarray(decoded).dtype.kind != "M":
                raise bad_input(argument, "times on a standard (Gregorian) calendar",
                                f"calendar {calendar!r} decoded to {type(decoded.ravel()[0]).__name__} objects")
            return np.asarray(decoded).astype("datetime64[ns]").reshape(arr.shape), calendar
        return None, ""
    if arr.dtype.kind in "OUS":
        flat = arr.ravel()
        if flat.size and hasattr(flat[0], "calendar") and not isinstance(flat[0], str):
            raise bad_input(argument, "times on a standard calendar (datetime64)",
                            f"cftime objects on calendar {flat[0].calendar!r}; convert them first, e.g. with "
                            "ds.convert_calendar('standard')")
        try:
            try:
                parsed = pd.to_datetime(pd.Series(flat), utc=True, format="ISO8601")
            except (TypeError, ValueError):
                with warnings.catch_warnings():  # pandas warns when it parses element by element
                    warnings.simplefilter("ignore", UserWarning)
                    parsed = pd.to_datetime(pd.Series(flat), utc=True)
        except (TypeError, ValueError, OverflowError) as exc:
            shown = flat[:3].tolist()
            raise bad_input(argument, "times as numbers, datetime64 values or date strings (ISO 8601)",
                            f"values such as {shown}") from exc
        out = parsed.dt.tz_localize(None).to_numpy().astype("datetime64[ns]")
        return out.reshape(arr.shape), "proleptic_gregorian"
    if arr.dtype.kind == "m":
        return None, ""
    raise bad_input(argument, "times as numbers, datetime64 values or date strings", f"dtype {arr.dtype}")


def to_float_time(
    values: Any,
    attrs: Mapping[str, Any] | None = None,
    *,
    time_origin: Any = None,
    time_units: str = "days",
    argument: str = "time",
) -> tuple[np.ndarray, dict[str, Any]]:
    """Times as float64 in `time_units` since `time_origin`, with NaN where a time is missing.

    **Arguments:**

    - `values`: array of `datetime64`, `timedelta64`, date strings, `pandas.Timestamp`s, or
      numbers. Numbers with a CF `units` attr of the form `"<unit> since <date>"` (in `attrs`)
      are decoded first; other numbers are taken as they are (already a float time axis).
    - `attrs`: the variable's attrs (`units`, `calendar`).
    - `time_origin`: the date that becomes 0 (ISO string, datetime, `datetime64`); default the
      earliest time. Give it explicitly to line your data up with a trained model's time axis.
      Must be None for numeric (non-date) times.
    - `time_units`: `"days" | "hours" | "minutes" | "seconds"`.
    - `argument`: name used in error messages.

    **Returns:** `(t, info)`: `t` float64 (same shape, NaN for NaT); `info` has `units` (for a
    coordinate's `units` attr), and for dates `time_origin` (ISO string), `time_units`,
    `calendar`.
    """
    attrs = dict(attrs or {})
    arr = np.asarray(values)
    dates, calendar = _as_datetime64(arr, attrs, argument)
    if dates is None:
        if arr.dtype.kind == "m":
            unit = _time_unit(time_units)
            if time_origin is not None:
                raise bad_input("time_origin", "None for durations (timedelta64 times have no date origin)",
                                time_origin)
            ns = arr.astype("timedelta64[ns]")
            t = np.where(np.isnat(ns), np.nan, ns.astype(np.int64) / TIME_UNITS[unit])
            return t.astype(np.float64), {"units": unit, "time_units": unit}
        if time_origin is not None:
            raise bad_input("time_origin", "None for numeric times (only dates have an origin; numbers are used "
                            "as they are)", time_origin)
        t = arr.astype(np.float64)
        units = attrs.get("units")
        return t, {"units": units if isinstance(units, str) and units else "unknown"}
    unit = _time_unit(time_units)
    nat = np.isnat(dates)
    if nat.all():
        raise bad_input(argument, "at least one time that is not missing (NaT)", f"all {dates.size} missing")
    origin = _origin(time_origin) if time_origin is not None else dates[~nat].min()
    delta = (dates - origin).astype("timedelta64[ns]").astype(np.int64)
    t = np.where(nat, np.nan, delta / TIME_UNITS[unit])
    iso = _iso(origin)
    return t.astype(np.float64), {"units": unit, "time_units": unit, "time_origin": iso, "calendar": calendar}
