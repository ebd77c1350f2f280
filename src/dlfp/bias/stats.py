"""Per-group statistics for the bias report: bootstrap CIs, worst-best gaps, tone-shift tests, flips, merging.

Conventions:
- Per-group confidence intervals are percentile bootstrap intervals (resampled within a group, seeded), 95% by
  default; every interval comes from scipy.stats.bootstrap.
- gap = statistic(worst group) - statistic(best group); ratio = worst / best, worst and best by the metric's
  direction (higher_is_better). The interval includes the choice: worst and best are picked again inside every
  bootstrap resample (each group resampled on its own). A re-picked gap is biased away from 0 (the spread of
  resampled means exceeds the spread of the means), so the interval is the basic (reverse-percentile) one,
  which reflects that bias back. Simulated with 5 equal groups of 40 (true gap 0, 150 samples): percentile
  re-picked covered 0%, worst and best fixed 71%, basic re-picked 83%; tests/test_bias.py checks the basic
  one under ties (8 groups). The ratio's interval is taken on the log scale (positive metrics only).
- Whether a gap is real is a permutation test of the same re-picked statistic (group labels shuffled), so the
  choice of worst and best is part of the null distribution. A headline that then picks the largest gap
  among several groupings adjusts these p-values with Holm over every gap it picks from.
- "No shift" is claimed only by equivalence: the (1 - 2 alpha) bootstrap CI of the median dITA lies inside
  +-tolerance (TOST at level alpha), never from a non-significant test.
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd
from scipy import stats as st

from dlfp.bias.skin import ALL_GROUPS, BAND_ORDER

DEFAULT_RESAMPLES = 2000
CONFIDENCE = 0.95
ALPHA = 0.05
EQUIVALENCE_TOLERANCE_DEG = 2.0   # |median dITA| below this counts as "no shift" (when the CI shows it)
MIN_GROUP_SIZE = 30               # smaller bands are merged with their neighbours
MERGE_JOIN = "+"

Statistic = Callable[[np.ndarray], np.ndarray]
STATISTICS: dict[str, Statistic] = {   # along the last axis: vectorised over bootstrap resamples
    "mean": lambda x, axis=-1: np.mean(x, axis=axis),
    "median": lambda x, axis=-1: np.median(x, axis=axis),
}


# ----------------------------------------------------------------------------------------- bootstrap
@dataclass(frozen=True)
class Interval:
    """An estimate with its bootstrap confidence interval (NaN bounds when n < 2)."""

    estimate: float
    low: float
    high: float
    n: int

    def covers(self, value: float) -> bool:
        return bool(self.low <= value <= self.high)


def _clean(values: Sequence[float] | np.ndarray) -> np.ndarray:
    values = np.asarray(values, dtype=np.float64).ravel()
    return values[np.isfinite(values)]


def bootstrap_ci(values: Sequence[float] | np.ndarray, statistic: str = "mean",
                 n_resamples: int = DEFAULT_RESAMPLES, confidence: float = CONFIDENCE,
                 seed: int = 0) -> Interval:
    """Percentile bootstrap CI of the mean or median (scipy.stats.bootstrap); NaNs are dropped."""
    values = _clean(values)
    if len(values) == 0:
        return Interval(np.nan, np.nan, np.nan, 0)
    estimate = float(STATISTICS[statistic](values))
    if len(values) < 2 or np.ptp(values) == 0:
        bound = estimate if len(values) >= 2 else np.nan
        return Interval(estimate, bound, bound, len(values))
    result = st.bootstrap((values,), STATISTICS[statistic], n_resamples=n_resamples,
                          confidence_level=confidence, method="percentile", vectorized=True,
                          rng=np.random.default_rng(seed))
    ci = result.confidence_interval
    return Interval(estimate, float(ci.low), float(ci.high), len(values))


def _by_group(values: Sequence[float] | np.ndarray, groups: Sequence[Hashable]) -> dict[Hashable, np.ndarray]:
    frame = pd.DataFrame({"value": np.asarray(values, dtype=np.float64), "group": list(groups)})
    return {g: _clean(v.to_numpy()) for g, v in frame.groupby("group", sort=False)["value"]}


def _ordered(by_group: dict[Hashable, np.ndarray],
             order: Sequence[Hashable] | None) -> list[tuple[Hashable, np.ndarray]]:
    if order is None:
        return list(by_group.items())
    known = [(g, by_group[g]) for g in order if g in by_group]
    return known + [(g, x) for g, x in by_group.items() if g not in order]


@dataclass(frozen=True)
class Gap:
    """worst - best and worst / best for one metric, with bootstrap CIs that re-pick worst and best per resample.

    p_value: permutation test of |worst - best| (re-picked in every permutation) against equal groups.
    """

    worst: Hashable
    best: Hashable
    gap: float
    gap_low: float
    gap_high: float
    ratio: float
    ratio_low: float
    ratio_high: float
    statistic: str
    higher_is_better: bool
    p_value: float
    n_groups: int


def _worst_and_best(estimates: np.ndarray, higher_is_better: bool) -> tuple[np.ndarray, np.ndarray]:
    """Worst and best of the group estimates along axis 0 (vectorised over resamples)."""
    low, high = np.min(estimates, axis=0), np.max(estimates, axis=0)
    return (low, high) if higher_is_better else (high, low)


def group_gap(values: Sequence[float] | np.ndarray, groups: Sequence[Hashable], higher_is_better: bool,
              statistic: str = "mean", n_resamples: int = DEFAULT_RESAMPLES, confidence: float = CONFIDENCE,
              seed: int = 0, min_n: int = 2) -> Gap:
    """Gap between the worst and the best group (groups with fewer than min_n values are left out).

    Both the bootstrap interval (scipy.stats.bootstrap, every group resampled on its own) and the
    permutation p-value (scipy.stats.permutation_test, labels shuffled) re-pick worst and best each time.
    """
    by_group = {g: x for g, x in _by_group(values, groups).items() if len(x) >= min_n}
    if len(by_group) < 2:
        raise ValueError(f"need at least two groups with >= {min_n} values, got {len(by_group)}")
    samples = tuple(by_group.values())
    reduce = STATISTICS[statistic]

    estimates = {g: float(reduce(x)) for g, x in by_group.items()}
    positive = min(estimates.values()) > 0          # a ratio (and its interval) only for positive estimates

    def gap_and_log_ratio(*resampled: np.ndarray, axis: int = -1) -> np.ndarray:
        """The ratio's interval is taken on the log scale (and mapped back), so it stays positive."""
        worst, best = _worst_and_best(np.stack([reduce(x, axis=axis) for x in resampled]), higher_is_better)
        if not positive:
            return (worst - best)[np.newaxis]
        with np.errstate(divide="ignore", invalid="ignore"):
            return np.stack([worst - best, np.log(worst / best)])

    def spread(*shuffled: np.ndarray, axis: int = -1) -> np.ndarray:
        return np.abs(gap_and_log_ratio(*shuffled, axis=axis)[0])

    ranked = sorted(estimates, key=estimates.get, reverse=higher_is_better)   # best first
    best, worst = ranked[0], ranked[-1]
    worst_estimate, best_estimate = estimates[worst], estimates[best]
    ratio = worst_estimate / best_estimate if positive else np.nan
    rng = np.random.default_rng(seed)
    with np.errstate(divide="ignore", invalid="ignore"):
        interval = st.bootstrap(samples, gap_and_log_ratio, n_resamples=n_resamples, confidence_level=confidence,
                                method="basic", vectorized=True, rng=rng).confidence_interval
        p_value = st.permutation_test(samples, spread, permutation_type="independent", vectorized=True,
                                      n_resamples=n_resamples, alternative="greater", rng=rng).pvalue
    ratio_low, ratio_high = (np.exp(interval.low[1]), np.exp(interval.high[1])) if positive else (np.nan, np.nan)
    return Gap(worst, best, worst_estimate - best_estimate, float(interval.low[0]), float(interval.high[0]),
               float(ratio), float(ratio_low), float(ratio_high), statistic, higher_is_better, float(p_value),
               len(samples))


# ----------------------------------------------------------------------------------- tone-shift tests
def holm(p_values: Sequence[float] | np.ndarray) -> np.ndarray:
    """Holm-Bonferroni adjusted p-values (step-down, monotone, capped at 1); NaNs stay NaN and don't count."""
    p = np.asarray(p_values, dtype=np.float64)
    adjusted = np.full_like(p, np.nan)
    finite = np.flatnonzero(np.isfinite(p))
    m = len(finite)
    order = finite[np.argsort(p[finite], kind="stable")]
    running = 0.0
    for rank, index in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[index]))
        adjusted[index] = running
    return adjusted


def sign_test(shifts: np.ndarray) -> tuple[int, int, float]:
    """(n lightened, n darkened, two-sided binomial p vs 0.5); exact zeros are ties and are left out."""
    lightened, darkened = int(np.sum(shifts > 0)), int(np.sum(shifts < 0))
    if lightened + darkened == 0:
        return 0, 0, np.nan
    return lightened, darkened, float(st.binomtest(lightened, lightened + darkened, 0.5).pvalue)


def wilcoxon_p(shifts: np.ndarray) -> float:
    """Two-sided Wilcoxon signed-rank p against a zero median; NaN when every shift is zero."""
    if np.count_nonzero(shifts) == 0:
        return np.nan
    return float(st.wilcoxon(shifts).pvalue)


def shift_verdict(significant: bool, equivalent: bool, median: float) -> str:
    """One word for the report: a shift needs significance, "no shift" needs equivalence."""
    if significant and not equivalent:
        return "lightened" if median > 0 else "darkened"
    if equivalent:
        return "no shift (equivalent)" if not significant else "negligible shift"
    return "inconclusive"


def tone_shift_tests(d_ita: Sequence[float] | np.ndarray, groups: Sequence[Hashable],
                     tolerance: float = EQUIVALENCE_TOLERANCE_DEG, alpha: float = ALPHA,
                     n_resamples: int = DEFAULT_RESAMPLES, seed: int = 0,
                     order: Sequence[Hashable] | None = None) -> pd.DataFrame:
    """Per group: median dITA + 95% CI, sign test, Wilcoxon, Holm across groups, TOST equivalence, verdict.

    flagged: a shift the report calls real, significant after Holm AND a CI of the median that excludes 0.

    Significance uses the Holm-adjusted sign-test p (robust, matches "share lightened"); the Wilcoxon p is
    reported beside it. Equivalence: the (1 - 2 alpha) bootstrap CI of the median lies inside +-tolerance.
    """
    rows = []
    for group, x in _ordered(_by_group(d_ita, groups), order):
        median = bootstrap_ci(x, "median", n_resamples, CONFIDENCE, seed)
        tost = bootstrap_ci(x, "median", n_resamples, 1 - 2 * alpha, seed)
        lightened, darkened, p_sign = sign_test(x)
        decided = lightened + darkened
        rows.append({"group": group, "n": len(x), "median_d_ita": median.estimate, "ci_low": median.low,
                     "ci_high": median.high, "n_lightened": lightened, "n_darkened": darkened,
                     "share_lightened": lightened / decided if decided else np.nan,
                     "sign_p": p_sign, "wilcoxon_p": wilcoxon_p(x),
                     "tost_low": tost.low, "tost_high": tost.high,
                     "equivalent": bool(-tolerance < tost.low and tost.high < tolerance)})
    table = pd.DataFrame(rows).set_index("group")
    table["sign_p_holm"] = holm(table["sign_p"].to_numpy())
    table["wilcoxon_p_holm"] = holm(table["wilcoxon_p"].to_numpy())
    table["significant"] = table["sign_p_holm"] < alpha
    table["flagged"] = table["significant"] & ((table["ci_low"] > 0) | (table["ci_high"] < 0))
    table["tolerance"] = tolerance
    table["verdict"] = [shift_verdict(s, e, m) for s, e, m in
                        zip(table["significant"], table["equivalent"], table["median_d_ita"], strict=True)]
    return table


# ------------------------------------------------------------------------------ flips and grouping
def flip_matrix(gt_bands: Sequence[str], restored_bands: Sequence[str],
                categories: Sequence[str] = ALL_GROUPS) -> pd.DataFrame:
    """Counts of GT band (rows) vs restored band (columns), every band present and in order."""
    gt = pd.Categorical(list(gt_bands), categories=list(categories), ordered=True)
    restored = pd.Categorical(list(restored_bands), categories=list(categories), ordered=True)
    table = pd.crosstab(gt, restored, dropna=False, rownames=["gt"], colnames=["restored"])
    return table.reindex(index=list(categories), columns=list(categories), fill_value=0)


@dataclass(frozen=True)
class Grouping:
    """Merged group per sample, which band went where, and which groups are merged or still too small."""

    labels: pd.Series                 # merged label per sample, same index as the input
    mapping: dict[str, str]           # original band -> merged label
    merged: dict[str, bool]           # merged label -> made of several bands
    too_small: dict[str, bool]        # merged label -> still under min_count (e.g. "no colour", or all bands)


def _runs(counts: pd.Series, min_count: int) -> list[list[str]]:
    """Adjacent non-empty bands joined in order until each run has min_count; a short tail joins the last."""
    runs: list[list[str]] = []
    current: list[str] = []
    total = 0
    for band, count in counts.items():
        if count == 0:
            continue
        current.append(band)
        total += count
        if total >= min_count:
            runs.append(current)
            current, total = [], 0
    if current:
        if runs:
            runs[-1].extend(current)
        else:
            runs.append(current)
    return runs


def merge_small_groups(labels: Sequence[str], order: Sequence[str] = BAND_ORDER,
                       min_count: int = MIN_GROUP_SIZE) -> Grouping:
    """Merge adjacent bands (in `order`) holding fewer than min_count samples, e.g. "brown+dark"; never drop.

    Labels outside `order` (such as "no colour" or "no face") are not adjacent to any band: they keep their
    own group and are flagged too_small when under min_count.
    """
    series = pd.Series(list(labels)) if not isinstance(labels, pd.Series) else labels
    counts = series.value_counts()
    band_counts = pd.Series({band: int(counts.get(band, 0)) for band in order})
    mapping: dict[str, str] = {}
    for run in _runs(band_counts, min_count):
        for band in run:
            mapping[band] = MERGE_JOIN.join(run)
    for other in counts.index:
        mapping.setdefault(other, other)
    merged_labels = series.map(mapping)
    sizes = merged_labels.value_counts()
    names = list(dict.fromkeys(mapping.values()))
    return Grouping(labels=merged_labels, mapping=mapping,
                    merged={name: MERGE_JOIN in name and name not in counts.index for name in names},
                    too_small={name: int(sizes.get(name, 0)) < min_count for name in names})


def failure_rates(failed: Sequence[bool] | np.ndarray, groups: Sequence[Hashable],
                  confidence: float = CONFIDENCE, order: Sequence[Hashable] | None = None) -> pd.DataFrame:
    """Per group: n, failures and the failure rate with a Wilson CI; a failure is a result, never dropped."""
    frame = pd.DataFrame({"failed": np.asarray(failed, dtype=bool), "group": list(groups)})
    rows = []
    by_group = {g: f.to_numpy() for g, f in frame.groupby("group", sort=False)["failed"]}
    for group, f in _ordered(by_group, order):
        n, k = len(f), int(f.sum())
        ci = st.binomtest(k, n).proportion_ci(confidence, method="wilson")
        rows.append({"group": group, "n": n, "n_failed": k, "rate": k / n,
                     "rate_low": ci.low, "rate_high": ci.high})
    return pd.DataFrame(rows).set_index("group")


def binned_means(x: Sequence[float] | np.ndarray, y: Sequence[float] | np.ndarray,
                 edges: Sequence[float]) -> pd.DataFrame:
    """Mean, n and 95% bootstrap CI of y in bins of x (dITA against GT ITA, for the continuous view)."""
    x, y = np.asarray(x, dtype=np.float64), np.asarray(y, dtype=np.float64)
    bins = pd.cut(x, np.asarray(edges, dtype=np.float64))
    rows = []
    for interval in bins.categories:
        ci = bootstrap_ci(y[np.asarray(bins == interval)], "mean")
        rows.append({"bin": str(interval), "centre": interval.mid, "n": ci.n, "mean": ci.estimate,
                     "low": ci.low, "high": ci.high})
    return pd.DataFrame(rows)
