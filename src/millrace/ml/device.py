"""Device-level detection: a device's sensors at one time scored together, as one vector.

A row is one device at one time (one row of a wide file; in the stream, one device's readings at one event
time). Sensor values are standardised with the training rows' mean and standard deviation, so no unit and no
sensor type is assumed. The detectors (the statistics from scikit-learn's estimators):

- ``pca``: PCA with Hotelling's T² (inside the model plane) and SPE/Q (off it), combined as
  T²/T²₉₉ + SPE/SPE₉₉ (each over its 99th percentile on the training rows), the number of components by
  parallel analysis (components whose variance beats that of as many independent noise columns);
- ``dpca``: the same on lagged vectors [x_t, x_t-1, ..., x_t-L] (dynamic PCA: autocorrelated processes);
- ``mcd``: the squared robust Mahalanobis distance from scikit-learn's Minimum Covariance Determinant;
- ``iforest``: scikit-learn's IsolationForest depth score;
- ``univariate`` (one sensor): the largest of a robust rolling baseline's z, a forecast (autoregression)
  residual's z and a two-sided CUSUM of that residual, each over its training 99th percentile.

Every statistic can be smoothed by a trailing moving mean over ``smooth`` rows (small persistent faults add
up; a single noisy row does not), and is calibrated (:mod:`millrace.ml.calibration`) on out-of-fold rows:
the training rows are cut into contiguous folds, each fold is scored by the detector fitted on the others, and
the threshold for the target false-alarm rate comes from those scores. The kept model is then fitted on
every training row.

Per-sensor contributions say which sensors moved: for the quadratic statistics (PCA, DPCA, MCD) the
statistic is xᵀMx and sensor j contributes x_j·(Mx)_j (lags of a sensor summed), which add up to the
statistic exactly; the isolation forest has no such decomposition and reports squared standardised
deviations instead. Ranges learned from the training rows (with a margin) are data-quality checks, reported
apart from the anomaly flag.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from millrace.ml.calibration import Calibration, calibrate

DETECTORS = ("pca", "dpca", "mcd", "iforest", "univariate")
DEFAULT_TARGET_FAR = 0.01
DEFAULT_LAGS = 2  # dynamic PCA: x_t, x_t-1, x_t-2
FOLDS = 5
RANGE_MARGIN = 0.5  # learned ranges: [min - m*span, max + m*span] of the training rows
UNIVARIATE_WINDOW = 30  # rows in the rolling baseline and the CUSUM
AR_ORDER = 5  # autoregression order of the univariate forecast
CUSUM_SLACK = 0.5  # residual z the CUSUM forgives per row (the classic k = δ/2 for a 1σ shift)
MIN_ROWS = 40
MCD_ROWS_PER_SENSOR = 5
AUTO_WINDOWS = (1, 3, 10)


@dataclass
class Core:
    """A fitted statistic (before smoothing and calibration)."""

    name: str
    center: np.ndarray  # per sensor
    scale: np.ndarray
    lags: int = 0
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def history(self) -> int:
        """Past rows the statistic of a row needs."""
        if self.name == "univariate":
            return 2 * UNIVARIATE_WINDOW + AR_ORDER  # a rolling MAD of distances from a rolling median
        return self.lags

    def statistic(self, Z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:  # noqa: N803 - a matrix
        """(statistic per row, per-sensor contributions) for standardised rows Z (time order, no NaN). The
        first ``history`` rows lack their past (it is padded with the first row)."""
        if self.name == "univariate":
            stat = _univariate_stat(Z[:, 0], self.params)
            return stat, stat[:, None]
        X = lagged(Z, self.lags)
        p = self.params
        if self.name in ("pca", "dpca"):
            P, lam = p["components"], p["variances"]
            X = X - p["mean"]
            t = X @ P
            resid = X - t @ P.T
            Mx = (t / lam) @ P.T / p["t2_99"] + resid / p["spe_99"]
            contrib = X * Mx
        elif self.name == "mcd":
            d = X - p["location"]
            contrib = d * (d @ p["precision"])
        elif self.name == "iforest":
            stat = -p["forest"].score_samples(X)
            return stat, Z**2
        else:
            raise ValueError(f"unknown detector {self.name!r}")
        width = Z.shape[1]
        folded = contrib.reshape(len(X), self.lags + 1, width).sum(axis=1)
        return contrib.sum(axis=1), folded


@dataclass
class DeviceModel:
    """A calibrated device-level detector over the sensors ``sensors`` (columns, in this order)."""

    core: Core
    sensors: tuple[str, ...]
    windows: tuple[int, ...]  # moving-mean windows of the statistic; 1 = the row's own
    stages: tuple[Calibration, ...]  # one per window: each smoothed statistic on the common scale
    calibration: Calibration  # of the largest of those scores: the model's threshold
    low: np.ndarray  # learned ranges per sensor (data-quality checks)
    high: np.ndarray
    why: str = ""
    metrics: dict[str, Any] = field(default_factory=dict)

    level = "device"  # the Scorer scores a device-level model through score_readings

    @property
    def name(self) -> str:
        return self.core.name

    def score_readings(self, readings: Any, history: dict[str, list[list[float]]]) -> Any:
        """The Scorer's columns for readings (see :func:`millrace.ml.device_readings.score_readings`)."""
        from millrace.ml.device_readings import score_readings

        return score_readings(self, readings, history)

    @property
    def history(self) -> int:
        """Past rows a row's score needs: the statistic's history plus the smoothing window."""
        return self.core.history + max(self.windows) - 1

    @property
    def threshold(self) -> float:
        return self.calibration.threshold

    def score(self, V: np.ndarray, history: np.ndarray | None = None) -> DeviceScores:  # noqa: N803
        """Scores of the rows of V (n × sensors, raw values in time order, NaN = not measured). ``history``:
        the rows just before V (at most ``self.history`` are used); without it the first rows are scored with
        what they have. A missing value takes the sensor's previous value, else its training mean."""
        V = np.asarray(V, dtype=float)
        h = 0 if history is None else min(len(history), self.history)
        full = V if h == 0 else np.vstack([np.asarray(history, dtype=float)[-h:], V])
        Z = standardize(full, self.core.center, self.core.scale)
        stat, contrib = self.core.statistic(Z)
        stat, best = self._combined(stat)
        contrib = (
            np.choose(best[:, None], [moving_mean(contrib, w) for w in self.windows])
            if len(self.windows) > 1
            else moving_mean(contrib, self.windows[0])
        )
        stat, contrib = stat[h:], contrib[h:]
        with np.errstate(invalid="ignore"):
            out_of_range = np.less(V, self.low) | np.greater(V, self.high)
        return DeviceScores(
            raw=stat,
            score=self.calibration.score(stat),
            tail=self.calibration.tail(stat),
            flag=stat >= self.calibration.threshold,
            contributions=contrib,
            out_of_range=out_of_range,
        )

    def _combined(self, stat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The largest over windows of the smoothed statistic's calibrated score, and which window gave it."""
        return combine_windows(stat, self.windows, self.stages)

    def top_sensors(self, contributions: np.ndarray, k: int = 3) -> list[list[str]]:
        """Per row, the (up to) k sensors that contribute most (positive contributions only)."""
        k = min(k, len(self.sensors))
        order = np.argsort(-contributions, axis=1)[:, :k]
        names = np.asarray(self.sensors, dtype=object)
        return [[names[j] for j in row if contributions[i, j] > 0] for i, row in enumerate(order)]

    def summary(self) -> dict[str, Any]:
        """What model.json and ``ml evaluate`` say about the detector."""
        info: dict[str, Any] = {
            "detector": self.name,
            "sensors": list(self.sensors),
            "windows": list(self.windows),
            "lags": self.core.lags,
            "target_far": self.calibration.target_far,
            "threshold": self.calibration.threshold,
            "held_back_rows": self.calibration.held_back,
            "why": self.why,
        }
        if "components" in self.core.params:
            info["components"] = int(self.core.params["components"].shape[1])
        return {**info, **self.metrics}


@dataclass
class DeviceScores:
    raw: np.ndarray  # the detector's statistic (smoothed)
    score: np.ndarray  # on the common scale: 1.0 = threshold
    tail: np.ndarray  # P(statistic >= raw) on normal data
    flag: np.ndarray
    contributions: np.ndarray  # rows × sensors
    out_of_range: np.ndarray  # rows × sensors, learned ranges (data quality, not anomalies)


# ---------------------------------------------------------------------------------------------- fitting
def fit_device_model(
    V: np.ndarray,
    sensors: Sequence[str],
    *,
    detector: str = "auto",
    target_far: float = DEFAULT_TARGET_FAR,
    windows: Sequence[int] | None = None,
    lags: int = DEFAULT_LAGS,
    seed: int = 0,
) -> DeviceModel:
    """Fit ``detector`` on normal training rows V (n × sensors, time order) and calibrate it to
    ``target_far`` on out-of-fold rows. ``windows``: moving-mean windows of the statistic (default: the
    row alone); several are combined as the largest of their calibrated scores, calibrated again. ``auto``
    chooses the detector and windows from the rows alone (see :func:`choose`)."""
    V = np.asarray(V, dtype=float)
    if V.ndim != 2 or V.shape[1] != len(sensors):
        raise ValueError(f"training rows are {V.shape}, for {len(sensors)} sensors")
    if len(V) < MIN_ROWS:
        raise ValueError(f"{len(V)} training rows are too few (need {MIN_ROWS})")
    why = ""
    if detector == "auto":
        detector, auto_windows, why = choose(V)
        windows = auto_windows if windows is None else windows
    if detector not in DETECTORS:
        raise ValueError(f"unknown detector {detector!r}; one of auto, {', '.join(DETECTORS)}")
    if detector == "univariate" and V.shape[1] != 1:
        raise ValueError(f"the univariate detector scores one sensor; these rows have {V.shape[1]}")
    windows = tuple(sorted({max(int(w), 1) for w in windows})) if windows else (1,)
    lags = lags if detector == "dpca" else 0
    oof = _out_of_fold(V, detector, lags, seed)
    stages = tuple(calibrate(moving_mean(oof, w), target_far) for w in windows)
    calibration = calibrate(combine_windows(oof, windows, stages)[0], target_far)
    core = fit_core(V, detector, lags=lags, seed=seed)
    span = np.nanmax(V, axis=0) - np.nanmin(V, axis=0)
    low, high = np.nanmin(V, axis=0) - RANGE_MARGIN * span, np.nanmax(V, axis=0) + RANGE_MARGIN * span
    return DeviceModel(core, tuple(sensors), windows, stages, calibration, low, high, why or f"{detector} as asked")


def fit_core(V: np.ndarray, name: str, *, lags: int = 0, seed: int = 0, rows: np.ndarray | None = None) -> Core:  # noqa: N803
    """The statistic ``name`` fitted on the rows ``rows`` of V (default all); lagged vectors take their past
    from V itself, so a fold left out in the middle does not break the lags of the rows after it."""
    fit_rows = np.arange(len(V)) if rows is None else rows
    center = np.nanmean(V[fit_rows], axis=0)
    scale = np.nanstd(V[fit_rows], axis=0)
    scale = np.where(np.isfinite(scale) & (scale > 1e-12), scale, 1.0)  # a constant sensor: deviations in units
    center = np.where(np.isfinite(center), center, 0.0)
    core = Core(name, center, scale, lags)
    Z = standardize(V, center, scale)
    if name == "univariate":
        core.params = _fit_univariate(Z[fit_rows, 0])
        return core
    X = lagged(Z, lags)[fit_rows]
    if name in ("pca", "dpca"):
        from sklearn.decomposition import PCA

        k = parallel_analysis(X, seed=seed)
        pca = PCA(n_components=k, random_state=seed).fit(X)
        P = pca.components_.T
        lam = np.maximum(pca.explained_variance_, 1e-12)
        core.params = {"components": P, "variances": lam, "t2_99": 1.0, "spe_99": 1.0, "mean": pca.mean_}
        X = X - pca.mean_
        t = X @ P
        t2 = ((t**2) / lam).sum(axis=1)
        spe = ((X - t @ P.T) ** 2).sum(axis=1)
        core.params["t2_99"] = max(float(np.quantile(t2, 0.99)), 1e-9)
        core.params["spe_99"] = max(float(np.quantile(spe, 0.99)), 1e-9)
    elif name == "mcd":
        from sklearn.covariance import MinCovDet

        mcd = MinCovDet(random_state=seed).fit(X)
        core.params = {"location": mcd.location_, "precision": mcd.get_precision()}
    elif name == "iforest":
        from sklearn.ensemble import IsolationForest

        forest = IsolationForest(n_estimators=200, max_samples=min(256, len(X)), random_state=seed, n_jobs=1)
        core.params = {"forest": forest.fit(X)}
    else:
        raise ValueError(f"unknown detector {name!r}")
    return core


def _out_of_fold(V: np.ndarray, name: str, lags: int, seed: int) -> np.ndarray:  # noqa: N803
    """The statistic of every training row from the detector fitted on the other folds (time order)."""
    n = len(V)
    bounds = np.linspace(0, n, FOLDS + 1).astype(int)
    out = np.empty(n)
    for a, b in zip(bounds[:-1], bounds[1:], strict=True):
        rest = np.r_[0:a, b:n]
        core = fit_core(V, name, lags=lags, seed=seed, rows=rest)
        # The fold's rows with their real past (the rows before the fold), as in scoring.
        start = max(0, a - core.history)
        stat, _ = core.statistic(standardize(V[start:b], core.center, core.scale))
        out[a:b] = stat[a - start :]
    return out


def choose(V: np.ndarray) -> tuple[str, tuple[int, ...], str]:  # noqa: N803
    """(detector, smoothing windows, why) from normal training rows alone - no labels.

    Several sensors: the robust covariance (MCD) when there are enough rows to estimate one (5 per sensor),
    else PCA, which copes with fewer rows than sensors. Either way three windows - the row alone for
    sudden faults, moving means over 3 and 10 rows for small persistent ones. On the Tennessee Eastman
    development data (docs/benchmarks/detection-tep.md) MCD kept its false-alarm rate on the normal test set
    nearest the target, and the windows raised detection of the slow faults most.
    """
    n, p = V.shape
    if p == 1:
        return "univariate", (1,), "one sensor: rolling baseline, forecast residual and CUSUM"
    if n >= MCD_ROWS_PER_SENSOR * p:
        return (
            "mcd",
            AUTO_WINDOWS,
            (
                f"{p} sensors and {n} training rows (>= {MCD_ROWS_PER_SENSOR} per sensor): robust covariance (MCD) "
                f"over the row alone and moving means of {AUTO_WINDOWS[1]} and {AUTO_WINDOWS[2]} rows"
            ),
        )
    return (
        "pca",
        AUTO_WINDOWS,
        (
            f"{p} sensors but only {n} training rows (< {MCD_ROWS_PER_SENSOR} per sensor): PCA (T² + SPE) over the "
            f"row alone and moving means of {AUTO_WINDOWS[1]} and {AUTO_WINDOWS[2]} rows"
        ),
    )


# ---------------------------------------------------------------------------------------------- helpers
def combine_windows(
    stat: np.ndarray, windows: Sequence[int], stages: Sequence[Calibration]
) -> tuple[np.ndarray, np.ndarray]:
    """Per row, the largest calibrated score of the statistic smoothed over each window, and its index."""
    if len(windows) == 1:
        return (moving_mean(stat, windows[0]), np.zeros(len(stat), dtype=np.intp))
    scores = np.column_stack([cal.score(moving_mean(stat, w)) for w, cal in zip(windows, stages, strict=True)])
    best = scores.argmax(axis=1)
    return scores[np.arange(len(stat)), best], best


def fill_missing(V: np.ndarray, center: np.ndarray) -> np.ndarray:  # noqa: N803
    """V with each missing value replaced by its sensor's previous one, else by ``center`` (the training mean)."""
    V = np.array(V, dtype=float)  # noqa: N806
    missing = ~np.isfinite(V)
    if missing.any():
        idx = np.where(~missing, np.arange(len(V))[:, None], 0)
        np.maximum.accumulate(idx, axis=0, out=idx)
        V = V[idx, np.arange(V.shape[1])]  # noqa: N806
        V = np.where(np.isfinite(V), V, np.broadcast_to(center, V.shape))  # noqa: N806
    return V


def standardize(V: np.ndarray, center: np.ndarray, scale: np.ndarray) -> np.ndarray:  # noqa: N803
    """(V - center) / scale, missing values filled first (:func:`fill_missing`)."""
    return (fill_missing(V, center) - center) / scale


def lagged(Z: np.ndarray, lags: int) -> np.ndarray:  # noqa: N803
    """[z_t, z_t-1, ..., z_t-lags] per row; rows before the first repeat the first."""
    if lags == 0:
        return Z
    pad = np.vstack([np.repeat(Z[:1], lags, axis=0), Z])
    n = len(Z)
    return np.hstack([pad[lags - k : lags - k + n] for k in range(lags + 1)])


def moving_mean(x: np.ndarray, window: int) -> np.ndarray:
    """Trailing mean over ``window`` rows (fewer at the start), along axis 0."""
    if window <= 1:
        return x
    c = np.cumsum(np.concatenate([np.zeros((1, *x.shape[1:])), x]), axis=0)
    idx = np.arange(1, len(x) + 1)
    lo = np.maximum(idx - window, 0)
    width = (idx - lo).reshape(-1, *([1] * (x.ndim - 1)))
    return (c[idx] - c[lo]) / width


def parallel_analysis(X: np.ndarray, *, seed: int = 0, draws: int = 5) -> int:  # noqa: N803
    """Components whose variance beats the same rank's variance of independent noise of X's shape (Horn's
    parallel analysis on the correlation scale); at least 1."""
    n, p = X.shape
    std = X.std(axis=0)
    Xs = (X - X.mean(axis=0)) / np.where(std > 0, std, 1.0)
    eig = np.sort(np.linalg.eigvalsh(np.cov(Xs, rowvar=False)))[::-1]
    rng = np.random.default_rng(seed)
    noise = np.mean(
        [np.sort(np.linalg.eigvalsh(np.cov(rng.standard_normal((n, p)), rowvar=False)))[::-1] for _ in range(draws)],
        axis=0,
    )
    return int(max(1, min(np.sum(eig > noise), p - 1, n - 1)))


# ---------------------------------------------------------------------------------------------- univariate
def _univariate_parts(x: np.ndarray, coef: np.ndarray, resid_sd: float) -> np.ndarray:
    """Rows × 3: |robust rolling z|, |forecast residual z|, two-sided windowed CUSUM of the residual z."""
    import pandas as pd

    s = pd.Series(x)
    past = s.shift(1)
    med = past.rolling(UNIVARIATE_WINDOW, min_periods=3).median()
    mad = (past - med).abs().rolling(UNIVARIATE_WINDOW, min_periods=3).median() * 1.4826
    # A flat stretch has MAD 0: floor the spread at a tenth of the training standard deviation (x is
    # standardised, so 0.1).
    rz = ((s - med) / np.maximum(mad.to_numpy(), 0.1)).fillna(0.0).to_numpy()
    lags = np.column_stack([np.r_[np.repeat(x[0], k), x[:-k]] for k in range(1, AR_ORDER + 1)])
    forecast = lags @ coef[1:] + coef[0]
    fz = (x - forecast) / resid_sd
    cusum = np.maximum(_windowed_cusum(fz), _windowed_cusum(-fz))
    return np.column_stack([np.abs(rz), np.abs(fz), cusum])


def _windowed_cusum(z: np.ndarray) -> np.ndarray:
    """max over the last UNIVARIATE_WINDOW start points j of sum_{i=j..t} (z_i - k), floored at 0: the CUSUM
    restarted at most a window ago, so a row's value depends on a bounded past (replay gives the same)."""
    import pandas as pd

    c = np.concatenate([[0.0], np.cumsum(z - CUSUM_SLACK)])
    prior_min = pd.Series(c).rolling(UNIVARIATE_WINDOW, min_periods=1).min().shift(1).to_numpy()[1:]
    return np.maximum(c[1:] - prior_min, 0.0)


def _fit_univariate(x: np.ndarray) -> dict[str, Any]:
    from sklearn.linear_model import Ridge

    lags = np.column_stack([np.r_[np.repeat(x[0], k), x[:-k]] for k in range(1, AR_ORDER + 1)])
    model = Ridge(alpha=1.0).fit(lags[AR_ORDER:], x[AR_ORDER:])
    coef = np.r_[model.intercept_, model.coef_]
    resid_sd = max(float(np.std(x[AR_ORDER:] - model.predict(lags[AR_ORDER:]))), 1e-6)
    parts = _univariate_parts(x, coef, resid_sd)[UNIVARIATE_WINDOW:]
    norms = np.maximum(np.quantile(parts, 0.99, axis=0), 1e-9) if len(parts) else np.ones(3)
    return {"coef": coef, "resid_sd": resid_sd, "norms": norms}


def _univariate_stat(x: np.ndarray, params: dict[str, Any]) -> np.ndarray:
    parts = _univariate_parts(x, params["coef"], params["resid_sd"])
    return (parts / params["norms"]).max(axis=1)
