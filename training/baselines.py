"""Forecasting baselines scored on rolling origins: the yardstick the load forecaster must beat.

Every series is split at ``test_start``. Origins are ``test_start, test_start + H, ...`` while a
whole horizon of H steps fits in the series (:func:`origins`); each baseline forecasts the H values
after each origin from the values before it, and nothing else.

The fitted baselines (``autoets``, ``mstl``) are fitted once, on the values before ``test_start``;
at each later origin the fitted parameters are reused on the longer history (statsforecast's
``forward``, the same thing ``StatsForecast.cross_validation(refit=False)`` does for each window),
so the forecast from an origin depends on the values before that origin only.

statsforecast is imported inside the functions that use it: the import alone takes seconds.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Callable, Sequence
from typing import Any, Self

import numpy as np

log = logging.getLogger(__name__)

BASELINES = ("naive", "seasonal_naive", "autoets", "mstl")

# A per-series forecaster: (values, test_start, origins, horizon, season) -> (n_origins, horizon).
_Forecaster = Callable[[np.ndarray, int, np.ndarray, int, int], np.ndarray]


def origins(n: int, test_start: int, horizon: int) -> np.ndarray:
    """Forecast origins of a series of ``n`` values whose test region starts at ``test_start``.

    ``test_start, test_start + horizon, ...`` while ``origin + horizon <= n``, so the test
    region is cut into whole, non-overlapping horizons (any tail shorter than a horizon is
    not scored). Empty when the test region is shorter than one horizon.
    """
    if horizon < 1:
        raise ValueError(f"horizon must be >= 1, got {horizon}")
    if not 1 <= test_start <= n:
        raise ValueError(f"test_start must be in [1, {n}] (at least one value to learn from), got {test_start}")
    return np.arange(test_start, n - horizon + 1, horizon, dtype=np.int64)


def rolling_origin_baselines(
    histories: Sequence[np.ndarray],
    test_starts: Sequence[int],
    horizon: int,
    season: int,
    names: Sequence[str] = BASELINES,
    progress: bool = False,
) -> dict[str, list[np.ndarray]]:
    """Forecast every origin of every series with every named baseline.

    ``histories[i]`` holds all values of series i (training and test parts); its test region
    starts at ``test_starts[i]``; ``season`` is the number of steps per day. Returns, for each
    name, one ``(n_origins_i, horizon)`` array per series, row k forecasting the values at
    ``origins_i[k] + 0 .. origins_i[k] + horizon - 1``.

    A fitted baseline that fails on a series (or yields non-finite forecasts) falls back to the
    naive forecast for that series, with a logged warning.
    """
    unknown = [name for name in names if name not in _FORECASTERS]
    if unknown:
        raise ValueError(f"unknown baselines {unknown}; known: {list(BASELINES)}")
    if len(histories) != len(test_starts):
        raise ValueError(f"{len(histories)} histories but {len(test_starts)} test starts")
    if season < 1:
        raise ValueError(f"season must be >= 1, got {season}")
    series = [_checked_values(values, i) for i, values in enumerate(histories)]
    cuts = [origins(len(y), int(start), horizon) for y, start in zip(series, test_starts, strict=True)]
    if "mstl" in names:
        _warn_daily_only(test_starts, season)

    results: dict[str, list[np.ndarray]] = {name: [] for name in names}
    with _progress_bar(len(names) * len(series), enabled=progress) as bar:
        for name in names:
            for i, (y, start, cut) in enumerate(zip(series, test_starts, cuts, strict=True)):
                results[name].append(_run(name, i, y, int(start), cut, horizon, season))
                bar.update(1)
    return results


def _run(
    name: str,
    index: int,
    y: np.ndarray,
    test_start: int,
    cut: np.ndarray,
    horizon: int,
    season: int,
) -> np.ndarray:
    """One baseline on one series, falling back to naive when a fitted baseline fails."""
    if cut.size == 0:
        return np.empty((0, horizon), dtype=np.float64)
    if name == "naive":
        return _naive(y, test_start, cut, horizon, season)
    try:
        forecasts = _FORECASTERS[name](y, test_start, cut, horizon, season)
        if not np.all(np.isfinite(forecasts)):
            raise ValueError("non-finite forecasts")
    except Exception as exc:
        log.warning(
            "baseline %s failed on series %d (%s); using the naive forecast for it",
            name,
            index,
            exc,
        )
        return _naive(y, test_start, cut, horizon, season)
    return forecasts


def _naive(y: np.ndarray, test_start: int, cut: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """The last value before the origin, repeated."""
    return np.repeat(y[cut - 1][:, None], horizon, axis=1)


def _seasonal_naive(y: np.ndarray, test_start: int, cut: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """The value one season before each target step; the last season repeats past one season."""
    if test_start < season:
        raise ValueError(f"{test_start} values before the first origin, fewer than one season ({season})")
    steps = np.arange(horizon) % season
    return y[cut[:, None] - season + steps[None, :]]


def daily_profile(train: np.ndarray, season: int) -> np.ndarray:
    """Mean value per position in the day (index modulo ``season``) over ``train``.

    A position with no value in ``train`` (a training part shorter than a day) gets the mean
    of the whole training part.
    """
    position = np.arange(train.shape[0]) % season
    sums = np.bincount(position, weights=train, minlength=season)
    counts = np.bincount(position, minlength=season)
    fill = float(train.mean()) if train.size else 0.0
    profile: np.ndarray = np.divide(sums, counts, out=np.full(season, fill), where=counts > 0)
    return profile


def _autoets(y: np.ndarray, test_start: int, cut: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """AutoETS on the series minus its daily profile (from the training part), profile added back.

    A seasonal ETS with a 288-step season is impractical to fit, so the day shape is removed
    first and ETS models what is left (level and trend).
    """
    from statsforecast.models import AutoETS

    profile = daily_profile(y[:test_start], season)
    adjusted = y - profile[np.arange(y.shape[0]) % season]
    model = AutoETS(season_length=1, model="ZZN").fit(adjusted[:test_start])
    steps = np.arange(horizon)
    return np.stack(
        [model.forward(y=adjusted[:origin], h=horizon)["mean"] + profile[(origin + steps) % season] for origin in cut]
    )


def mstl_seasons(test_start: int, season: int) -> list[int]:
    """Daily and weekly seasons; daily only when the training part is under two weeks."""
    return [season, 7 * season] if test_start >= 2 * 7 * season else [season]


def _stl_speedups(season: int) -> dict[str, Any]:
    """Loess jumps for the trend and low-pass smoothers, as R's ``stl`` sets them by default.

    With a 288-step season statsmodels' STL (jump 1: a local regression at every point) takes
    about a second per decomposition, and MSTL decomposes again at every origin. Evaluating the
    smoothers every ``ceil(window / 10)`` points and interpolating between (R's defaults) is
    over 20x faster; on the realAWSCloudwatch series the forecasts move by ~0.002 MASE units
    and the mean MASE by less than 1e-4. The seasonal smoother keeps jump 1: its windows are
    short and a jump there moves the season's edges.
    Windows here are those statsmodels derives for the shortest season (the default
    ``seasonal=11`` of the first MSTL pass); a longer season gets smaller relative jumps.
    """
    seasonal = 11
    trend = _next_odd(math.ceil(1.5 * season / (1 - 1.5 / seasonal)))
    low_pass = _next_odd(season + 1)
    return {
        "trend_jump": math.ceil(trend / 10),
        "low_pass_jump": math.ceil(low_pass / 10),
    }


def _next_odd(x: int) -> int:
    return x if x % 2 else x + 1


def _mstl(y: np.ndarray, test_start: int, cut: np.ndarray, horizon: int, season: int) -> np.ndarray:
    """MSTL (daily, plus weekly when there are two weeks to learn it from), AutoETS on the trend."""
    from statsforecast.models import MSTL, AutoETS

    if test_start < 2 * season:
        # STL runs on less, but a season seen fewer than twice cannot be told from noise.
        raise ValueError(f"{test_start} values before the first origin, fewer than two seasons ({2 * season})")
    model = MSTL(
        season_length=mstl_seasons(test_start, season),
        trend_forecaster=AutoETS(model="ZZN"),
        stl_kwargs=_stl_speedups(season),
    ).fit(y[:test_start])
    return np.stack([model.forward(y=y[:origin], h=horizon)["mean"] for origin in cut])


_FORECASTERS: dict[str, _Forecaster] = {
    "naive": _naive,
    "seasonal_naive": _seasonal_naive,
    "autoets": _autoets,
    "mstl": _mstl,
}


def _checked_values(values: np.ndarray, index: int) -> np.ndarray:
    y = np.asarray(values, dtype=np.float64)
    if y.ndim != 1:
        raise ValueError(f"series {index}: expected a 1-D array, got shape {y.shape}")
    if not np.all(np.isfinite(y)):
        raise ValueError(f"series {index}: contains NaN or infinite values")
    return y


def _warn_daily_only(test_starts: Sequence[int], season: int) -> None:
    short = [i for i, start in enumerate(test_starts) if len(mstl_seasons(int(start), season)) == 1]
    if short:
        log.warning(
            "mstl: %d of %d series have under two weeks (%d steps) before the test region; "
            "they use the daily season only, no weekly season: series %s",
            len(short),
            len(test_starts),
            2 * 7 * season,
            short,
        )


class _NoBar:
    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: object) -> None:
        return None

    def update(self, n: int) -> None:
        return None


def _progress_bar(total: int, enabled: bool) -> Any:
    if not enabled:
        return _NoBar()
    from tqdm import tqdm

    return tqdm(total=total, desc="baselines", unit="series")
