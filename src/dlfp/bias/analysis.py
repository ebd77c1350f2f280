"""Per-group analysis of the bias stage: groupings, per-group statistics, gaps, tone-shift tests, flips, the
baseline control, and the two documents (bias.json for the page, the compact reports/bias.json summary).

Method: ../shared/docs/bias-method.md. Per preset x restorer x grouping x group: every evaluate metric and the
tone shift (dITA, dL*, CIEDE2000 dE, restored vs GT on the GT mask, measured plainly) with percentile-bootstrap
CIs; the worst-best gap and ratio with CIs that re-pick worst and best in every resample, and a permutation
p-value Holm-adjusted over the groupings (the headline picks the largest gap among them); the share lightened
with a sign test (Holm across groups); the band flip matrix (GT and restored read with the GT's correction); the
landmark detection failure rate and the colour-lost rate (Wilson CIs); and, against the `bias.baseline` control,
the paired per-face difference. GT faces without colour (b* <= 0 or low chroma: ITA undefined) and restored
faces that lost the GT's colour have no dITA: they are counted, and kept out of every dITA test and view.
Gaps (worst - best) compare only the groups a grouping is about ("not measured", "unknown" and "no colour" stay
in every table but are not compared).
Every bootstrap is seeded from derive_seed(params.seed, "bias", preset, restorer, grouping, metric).

Works on tables; may import dlfp.bias.{skin,stats,faces,labels}, dlfp.io and dlfp.params.
"""

from __future__ import annotations

import math
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from dlfp.bias import skin, stats
from dlfp.bias.faces import NOT_MEASURED, FaceTone
from dlfp.bias.labels import UNKNOWN
from dlfp.io.hashing import derive_seed
from dlfp.io.tables import frame_records, jsonable
from dlfp.layout import NOT_COMPUTED, STATUS_OK
from dlfp.params import BiasParams, Params

SEED_NAMESPACE = "bias"
ITA_BIN_EDGES = tuple(float(edge) for edge in range(-90, 91, 15))   # continuous view of dITA against GT ITA


# Groupings: name -> (column in the per-face table, whether gaps compare all its groups but these).
GROUPINGS = ("skin_tone", "lightness", "hue", "gender", "age")
NOT_COMPARED = {NOT_MEASURED, UNKNOWN, skin.NO_COLOUR}

# Metrics: name -> higher_is_better (None: signed, no worst/best; its absolute value carries the gap).
EVAL_METRICS: dict[str, bool] = {"psnr": True, "ssim": True, "lpips": False, "niqe": False,
                                 "identity_distance": False, "identity_match": True, "landmark_nme": False}
TONE_METRICS: dict[str, bool | None] = {"d_ita": None, "abs_d_ita": False, "d_l_star": None,
                                        "abs_d_l_star": False, "delta_e": False}
METRICS: dict[str, bool | None] = {**EVAL_METRICS, **TONE_METRICS}
MEDIAN_METRICS = ("d_ita", "d_l_star", "delta_e")   # skewed or signed: the median is reported beside the mean
WORST_BY = "abs_d_ita"
NO_COLOUR_RULE = (f"median b* <= 0 (ITA undefined) or chroma < {skin.NO_COLOUR_CHROMA:g}; colour lost: the GT has "
                  "colour and the restored face, on the same mask, has not")


# ------------------------------------------------------------------------------------------- helpers
def _seed(params: Params, *parts: object) -> int:
    return derive_seed(params.seed, SEED_NAMESPACE, *parts)


def metric_reason(summary: Mapping, metric: str) -> str:
    """Why a metric has no values: evaluate's own "not computed" status when it gave one."""
    status = summary.get("metrics", {}).get(metric, {}).get("status") if isinstance(summary, Mapping) else None
    if isinstance(status, str) and status.startswith(NOT_COMPUTED):
        return status
    return f"{NOT_COMPUTED}: no {metric} values in the evaluation"


def analysed_sets(frame: pd.DataFrame, options: BiasParams) -> tuple[list[str], list[str]]:
    """The presets and restorers `bias.presets` / `bias.restorers` pick from the evaluation (all when null)."""
    presets = list(dict.fromkeys(frame["preset"]))
    restorers = list(dict.fromkeys(frame["restorer"]))
    for wanted, available, what in ((options.presets, presets, "preset"), (options.restorers, restorers, "restorer")):
        unknown = sorted(set(wanted or ()) - set(available))
        if unknown:
            raise ValueError(f"bias.{what}s names {unknown}, but the evaluation has only {available}")
    return ([p for p in presets if options.presets is None or p in options.presets],
            [r for r in restorers if options.restorers is None or r in options.restorers])


# ------------------------------------------------------------------------------------------ statistics
def merge_groups(faces: Mapping[str, FaceTone], test_ids: list[str], options: BiasParams
                 ) -> tuple[dict[str, dict[str, str]], dict[str, dict]]:
    """Per grouping: {id: merged group} over the test faces, and {group: {n, merged, too_small, members}}."""
    raw = {"skin_tone": [faces[i].band for i in test_ids], "lightness": [faces[i].lightness for i in test_ids],
           "hue": [faces[i].hue for i in test_ids], "gender": [faces[i].gender for i in test_ids],
           "age": [faces[i].age_group for i in test_ids]}
    orders: dict[str, tuple[str, ...]] = {"skin_tone": skin.BAND_ORDER, "age": tuple(options.age_bins)}
    assigned: dict[str, dict[str, str]] = {}
    info: dict[str, dict] = {}
    for grouping, labels in raw.items():
        grouping_result = stats.merge_small_groups(labels, orders.get(grouping, ()), options.min_group_size)
        merged = grouping_result.labels.tolist()
        assigned[grouping] = dict(zip(test_ids, merged, strict=True))
        sizes = Counter(merged)
        order = _group_order(grouping, list(sizes), options)
        info[grouping] = {group: {"group": group, "n": sizes[group], "merged": grouping_result.merged.get(group, False),
                                  "too_small": grouping_result.too_small.get(group, False),
                                  "members": sorted(band for band, to in grouping_result.mapping.items()
                                                    if to == group),
                                  "compared": group not in NOT_COMPARED}
                          for group in order}
    return assigned, info


def _group_order(grouping: str, groups: list[str], options: BiasParams) -> list[str]:
    """Light to dark, youngest to oldest; non-groups ("unknown", "not measured") last."""
    reference = {"skin_tone": skin.BAND_ORDER, "age": tuple(options.age_bins),
                 "lightness": ("light", "dark"), "hue": ("yellow", "red")}.get(grouping, ())

    def rank(group: str) -> tuple[int, int, str]:
        first = group.split(stats.MERGE_JOIN)[0]
        if group in NOT_COMPARED:
            return 2, 0, group
        return (0, reference.index(first), group) if first in reference else (1, 0, group)

    return sorted(groups, key=rank)


@dataclass
class Analysis:
    groups: list[dict] = field(default_factory=list)
    gaps: list[dict] = field(default_factory=list)
    tone: list[dict] = field(default_factory=list)
    failures: list[dict] = field(default_factory=list)
    colour_lost: list[dict] = field(default_factory=list)
    baseline: list[dict] = field(default_factory=list)
    flips: list[dict] = field(default_factory=list)
    binned: list[dict] = field(default_factory=list)


def analyse_set(frame: pd.DataFrame, preset: str, restorer: str, group_info: Mapping[str, dict],
                params: Params, reasons: Mapping[str, str], result: Analysis) -> None:
    """Every per-group number of one (preset, restorer) set, appended to `result`."""
    options = params.bias
    for grouping in GROUPINGS:
        info = group_info[grouping]
        order = list(info)
        groups = frame[f"group_{grouping}"]
        for metric, higher in METRICS.items():
            values = frame[metric].to_numpy(dtype=np.float64)
            seed = _seed(params, preset, restorer, grouping, metric)
            statistics = ("mean", "median") if metric in MEDIAN_METRICS else ("mean",)
            if not np.isfinite(values).any():
                result.gaps.append({"preset": preset, "restorer": restorer, "grouping": grouping, "metric": metric,
                                    "status": reasons.get(metric, f"{NOT_COMPUTED}: no values")})
                continue
            for group in order:
                member = values[(groups == group).to_numpy()]
                for statistic in statistics:
                    ci = stats.bootstrap_ci(member, statistic, options.resamples, options.confidence, seed)
                    result.groups.append({"preset": preset, "restorer": restorer, "grouping": grouping,
                                          "group": group, "metric": metric, "statistic": statistic, "n": ci.n,
                                          "estimate": ci.estimate, "ci_low": ci.low, "ci_high": ci.high,
                                          **{k: info[group][k] for k in ("merged", "too_small", "compared")}})
            if higher is None:
                continue
            compared = [g for g in order if info[g]["compared"]]
            mask = groups.isin(compared).to_numpy()
            entry = {"preset": preset, "restorer": restorer, "grouping": grouping, "metric": metric}
            try:
                gap = stats.group_gap(values[mask], groups[mask].tolist(), higher, "mean", options.resamples,
                                      options.confidence, seed)
            except ValueError as error:
                result.gaps.append({**entry, "status": f"{NOT_COMPUTED}: {error}"})
                continue
            result.gaps.append({**entry, "status": STATUS_OK, "worst": gap.worst, "best": gap.best,
                                "gap": gap.gap, "gap_low": gap.gap_low, "gap_high": gap.gap_high,
                                "ratio": gap.ratio, "ratio_low": gap.ratio_low, "ratio_high": gap.ratio_high,
                                "higher_is_better": higher, "n_groups": gap.n_groups, "p": gap.p_value})
        # dITA exists only where GT and restored both have colour: colour lost and "no colour" stay out.
        measured = frame["d_ita"].notna().to_numpy()
        if measured.any():
            tests = stats.tone_shift_tests(frame.loc[measured, "d_ita"].to_numpy(), groups[measured].tolist(),
                                           options.equivalence_deg, 1 - options.confidence, options.resamples,
                                           _seed(params, preset, restorer, grouping, "tone"), order)
            for group, row in tests.iterrows():
                result.tone.append({"preset": preset, "restorer": restorer, "grouping": grouping, "group": group,
                                    **row.to_dict()})
        evaluated = frame["landmarks_detected"].notna().to_numpy()
        if evaluated.any():
            failed = frame.loc[evaluated, "landmarks_detected"].to_numpy() == 0
            rates = stats.failure_rates(failed, groups[evaluated].tolist(), options.confidence, order)
            for group, row in rates.iterrows():
                result.failures.append({"preset": preset, "restorer": restorer, "grouping": grouping,
                                        "group": group, **row.to_dict()})
        coloured = (frame["colour_lost"].notna() & (frame["band_gt"] != skin.NO_COLOUR)).to_numpy()
        if coloured.any():
            lost = frame.loc[coloured, "colour_lost"].astype(bool).to_numpy()
            rates = stats.failure_rates(lost, groups[coloured].tolist(), options.confidence, order)
            for group, row in rates.iterrows():
                result.colour_lost.append({"preset": preset, "restorer": restorer, "grouping": grouping,
                                           "group": group, "n": int(row["n"]),
                                           "n_colour_lost": int(row["n_failed"]),
                                           "rate": row["rate"], "rate_low": row["rate_low"],
                                           "rate_high": row["rate_high"]})
    adjust_gap_p(result.gaps, preset, restorer)
    measured = frame[frame["band_restored"].notna() & (frame["band_restored"] != NOT_MEASURED)]
    flips = stats.flip_matrix(measured["band_gt"].tolist(), measured["band_restored"].tolist())
    for gt_band, row in flips.iterrows():
        for restored_band, count in row.items():
            result.flips.append({"preset": preset, "restorer": restorer, "gt_band": gt_band,
                                 "restored_band": restored_band, "count": int(count)})
    coloured = frame[frame["d_ita"].notna()]          # the continuous view: no "no colour", no colour lost
    if len(coloured):
        binned = stats.binned_means(coloured["ita_gt"], coloured["d_ita"], ITA_BIN_EDGES)
        result.binned += [{"preset": preset, "restorer": restorer, **row} for row in binned.to_dict("records")]


def adjust_gap_p(gaps: list[dict], preset: str, restorer: str) -> None:
    """Holm over the groupings, per metric: the headline picks the largest gap among them (p_holm, in place)."""
    for metric in METRICS:
        family = [g for g in gaps if g["preset"] == preset and g["restorer"] == restorer and g["metric"] == metric
                  and g["status"] == STATUS_OK]
        for gap, adjusted in zip(family, stats.holm([g["p"] for g in family]), strict=True):
            gap["p_holm"] = float(adjusted)
            gap["family_size"] = len(family)


def baseline_differences(table: pd.DataFrame, preset: str, restorer: str, group_info: Mapping[str, dict],
                         params: Params, result: Analysis) -> None:
    """Model minus baseline per face (same preset, same face), then per group: separates model from metric bias."""
    options = params.bias
    mine = table[(table["preset"] == preset) & (table["restorer"] == restorer)].set_index("id")
    control = table[(table["preset"] == preset) & (table["restorer"] == options.baseline)].set_index("id")
    common = mine.index.intersection(control.index)
    for grouping in GROUPINGS:
        groups = mine.loc[common, f"group_{grouping}"]
        for metric in METRICS:
            difference = (mine.loc[common, metric] - control.loc[common, metric]).to_numpy(dtype=np.float64)
            if not np.isfinite(difference).any():
                continue
            seed = _seed(params, preset, restorer, grouping, metric, "baseline")
            for group in group_info[grouping]:
                ci = stats.bootstrap_ci(difference[(groups == group).to_numpy()], "mean", options.resamples,
                                        options.confidence, seed)
                result.baseline.append({"preset": preset, "restorer": restorer, "baseline": options.baseline,
                                        "grouping": grouping, "group": group, "metric": metric, "n": ci.n,
                                        "estimate": ci.estimate, "ci_low": ci.low, "ci_high": ci.high})


def per_face_table(shift: pd.DataFrame, evaluation: pd.DataFrame, faces: Mapping[str, FaceTone],
                    assigned: Mapping[str, Mapping[str, str]]) -> pd.DataFrame:
    table = evaluation.merge(shift, on=["preset", "restorer", "id"], how="left", validate="one_to_one")
    missing = table["band_restored"].isna()
    if missing.any():
        first = table.loc[missing].iloc[0]
        raise ValueError(f"evaluation row {first['preset']}/{first['restorer']}/{first['id']} has no restored "
                         "pair; rerun `dlfp evaluate` on the current restored images")
    for column, attribute in (("ffhq_id", "ffhq_id"), ("band_gt", "band"), ("band_gt_plain", "band_plain"),
                              ("gender", "gender"), ("age", "age")):
        table[column] = [getattr(faces[i], attribute) for i in table["id"]]
    for column, attribute in (("ita_gt", "ita_deg"), ("l_star_gt", "l_star"), ("hue_gt", "hue_deg"),
                              ("chroma_gt", "chroma")):
        table[column] = [getattr(faces[i].measured, attribute) if faces[i].measured else math.nan
                         for i in table["id"]]
    table["correction_applied"] = [faces[i].measured.correction if faces[i].measured else "" for i in table["id"]]
    table["measure_problem"] = [faces[i].problem for i in table["id"]]
    for grouping in GROUPINGS:
        table[f"group_{grouping}"] = [assigned[grouping][i] for i in table["id"]]
    # ITA is undefined for a GT without colour (also when only the corrected reading lacks it): no dITA.
    table.loc[table["band_gt"] == skin.NO_COLOUR, "d_ita"] = math.nan
    table["abs_d_ita"] = table["d_ita"].abs()
    table["abs_d_l_star"] = table["d_l_star"].abs()
    return table


SHIFT_COLUMNS = ("preset", "restorer", "id", "ita_restored", "band_restored", "d_ita", "d_l_star", "d_a_star",
                 "d_b_star", "delta_e", "ita_gt_uncorrected", "colour_lost")
PER_FACE_COLUMNS = ("preset", "restorer", "id", "ffhq_id", "ita_gt", "l_star_gt", "hue_gt", "chroma_gt",
                    "correction_applied", "band_gt", "band_gt_plain", "ita_gt_uncorrected", "ita_restored",
                    "band_restored", "colour_lost", *(f"group_{g}" for g in GROUPINGS), "gender", "age", "d_ita",
                    "abs_d_ita", "d_l_star", "abs_d_l_star", "d_a_star", "d_b_star", "delta_e", *EVAL_METRICS,
                    "landmarks_detected", "measure_problem")


# ------------------------------------------------------------------------------------------ summary
def compact_summary(analysis: Analysis, composition_rows: pd.DataFrame, correction: str,
                    presets: list[str], restorers: list[str]) -> dict:
    """reports/bias.json: per preset x restorer the largest gap per metric (any grouping) and the tone shift."""
    results: dict[str, dict] = {}
    for preset in presets:
        for restorer in restorers:
            gaps = [g for g in analysis.gaps if g["preset"] == preset and g["restorer"] == restorer]
            largest: dict[str, dict] = {}
            for metric in (m for m, higher in METRICS.items() if higher is not None):
                computed = [g for g in gaps if g["metric"] == metric and g["status"] == STATUS_OK]
                if not computed:
                    reasons = [g["status"] for g in gaps if g["metric"] == metric]
                    largest[metric] = {"status": reasons[0] if reasons else f"{NOT_COMPUTED}: no groups"}
                    continue
                top = max(computed, key=lambda g: abs(g["gap"]))
                largest[metric] = {key: top[key] for key in ("grouping", "worst", "best", "gap", "gap_low",
                                                             "gap_high", "ratio", "ratio_low", "ratio_high", "p",
                                                             "p_holm", "family_size")}
            tone = {row["group"]: {"n": row["n"], "median_d_ita": row["median_d_ita"], "ci": [row["ci_low"],
                    row["ci_high"]], "share_lightened": row["share_lightened"], "sign_p_holm": row["sign_p_holm"],
                    "verdict": row["verdict"], "flagged": row["flagged"]}
                    for row in analysis.tone if row["preset"] == preset and row["restorer"] == restorer
                    and row["grouping"] == "skin_tone"}
            lost = {row["group"]: {"n": row["n"], "n_colour_lost": row["n_colour_lost"]}
                    for row in analysis.colour_lost if row["preset"] == preset and row["restorer"] == restorer
                    and row["grouping"] == "skin_tone"}
            results.setdefault(preset, {})[restorer] = {"largest_gap": largest, "tone_shift_by_skin_tone": tone,
                                                        "colour_lost_by_skin_tone": lost}
    composition_summary: dict[str, dict[str, int]] = {}
    for row in composition_rows[composition_rows["grouping"] == "skin_tone"].itertuples(index=False):
        composition_summary.setdefault(row.split, {})[row.group] = int(row.count)
    return jsonable({"correction": correction, "composition_skin_tone": composition_summary,
                      "results": results})  # type: ignore[return-value]



def bias_document(params: Params, *, presets: list[str], restorers: list[str], faces: Mapping[str, FaceTone],
                  test_ids: list[str], table: pd.DataFrame, group_info: Mapping[str, dict],
                  composition_rows: pd.DataFrame, analysis: Analysis, reasons: Mapping[str, str],
                  labels_note: str, worst_entries: list[dict], example_entries: list[dict]) -> dict:
    """data/bias/bias.json: the method, every table and what bias.html draws (scatter, binned, strips)."""
    options = params.bias
    scatter = {preset: {restorer: table.loc[(table["preset"] == preset) & (table["restorer"] == restorer)
                                            & table["d_ita"].notna(), ["ita_gt", "d_ita"]].round(3)
                        .values.tolist() for restorer in restorers} for preset in presets}
    not_measured = {face.sample_id: face.problem for face in faces.values() if face.problem}
    raised = [face.measured.ita_deg - face.ita_plain for face in faces.values()
              if face.measured is not None and not face.measured.no_colour]
    return {
        "method": {"correction": options.correction, "min_group_size": options.min_group_size,
                   "resamples": options.resamples, "confidence": options.confidence,
                   "equivalence_deg": options.equivalence_deg, "baseline": options.baseline,
                   "age_bins": [[name, *bounds] for name, bounds in options.age_bins.items()],
                   "seed": params.seed,
                   "seed_rule": "derive_seed(seed, 'bias', preset, restorer, grouping, metric)",
                   "correction_median_raise_deg": float(np.median(raised)) if raised else None,
                   "correction_faces": len(raised), "labels": labels_note, "worst_by": WORST_BY,
                   "ita_bin_edges": list(ITA_BIN_EDGES),
                   "metrics": [{"metric": name, "higher_is_better": higher}
                               for name, higher in METRICS.items()]},
        "presets": presets, "restorers": restorers, "groupings": list(GROUPINGS),
        "group_info": {grouping: list(groups.values()) for grouping, groups in group_info.items()},
        "composition": frame_records(composition_rows),
        "groups": frame_records(pd.DataFrame(analysis.groups)), "gaps": jsonable(analysis.gaps),
        "tone_shift": frame_records(pd.DataFrame(analysis.tone)),
        "failures": frame_records(pd.DataFrame(analysis.failures)),
        "colour": {"no_colour_rule": NO_COLOUR_RULE,
                   "no_colour": {split: sum(1 for face in faces.values() if face.split == split
                                            and face.band == skin.NO_COLOUR)
                                 for split in dict.fromkeys(face.split for face in faces.values())},
                   "no_colour_test": sum(1 for i in test_ids if faces[i].band == skin.NO_COLOUR)},
        "colour_lost": frame_records(pd.DataFrame(analysis.colour_lost)),
        "baseline": frame_records(pd.DataFrame(analysis.baseline)), "flips": analysis.flips,
        "binned": frame_records(pd.DataFrame(analysis.binned)), "scatter": scatter,
        "worst": jsonable(worst_entries), "examples": jsonable(example_entries), "not_measured": not_measured,
        "not_computed": {metric: reason for metric, reason in reasons.items()
                         if not np.isfinite(table[metric].to_numpy(dtype=np.float64)).any()},
    }
