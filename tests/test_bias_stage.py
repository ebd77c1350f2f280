"""The bias stage and bias.html: known answers on synthetic tints, bootstrap coverage, and a small real run.

The end-to-end fixture runs the real shard, degrade and restore stages on real faces from ../shared/faces and
adds a restorer that lightens every face by a known L*; per_image.csv is written in the evaluate stage's format
with known values (the real evaluate stage runs in the slow test).
"""

from __future__ import annotations

import base64
import csv
import importlib.util
import io
import json
import math
import shutil
import sys
from html.parser import HTMLParser
from pathlib import Path

import _dlfp_test_browser as browser  # tests/_browser.py, registered by conftest.py
import _dlfp_test_faces as faces  # tests/_faces.py, registered by conftest.py
import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import cv2
import numpy as np
import pytest
from PIL import Image
from skimage.color import lab2rgb, rgb2lab

from dlfp.bias import faces as bias_faces
from dlfp.bias import labels as bias_labels
from dlfp.bias import skin, stats
from dlfp.io.atomic import write_csv_atomic, write_json_atomic
from dlfp.io.images import decode_png_bytes, encode_png
from dlfp.report import PageContext, make_env
from dlfp.shards import format as shard_format
from dlfp.shards.format import ShardSetWriter, json_bytes, pair_presets
from dlfp.shards.local import iter_samples, read_index
from dlfp.stages import bias as bias_stage
from dlfp.stages import report as report_stage
from dlfp.stages.evaluate.scoring import COLUMNS

SIZE = 128
FACE_COUNT = 12
PRESET = "mild"
LIGHTEN_L = 5.0                      # the "lighter" restorer adds this much L* to every pixel
HOSTILE_ID = "face_<script>alert(1)<"
HOSTILE_GENDER = "<script>alert(2)</script>"
MISSED_ID_INDEX = 3                  # the "lighter" restorer's landmarks are "not found" on this face
GREY_ID = "face_grey"                # a test face stored in greyscale: its GT has no colour
COLOUR_LOST_ID = "face_colour_lost"  # the "lighter" restorer returns this test face in grey: colour lost


def _load_test_bias():
    """tests/ is not a package: the synthetic face of test_bias.py is loaded by path."""
    name = "_dlfp_test_bias_helpers"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("test_bias.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def lighten(image: np.ndarray, delta_l: float) -> np.ndarray:
    """Add delta_l to L* of every pixel (a uniform lightening with a known size), back to sRGB uint8."""
    lab = rgb2lab(image.astype(np.float64) / 255.0)
    lab[..., 0] = np.clip(lab[..., 0] + delta_l, 0, 100)
    return np.round(np.clip(lab2rgb(lab), 0, 1) * 255).astype(np.uint8)


def _roles(paths: list[Path]) -> dict[int, str]:
    """Sample ids by face number: the hostile, grey and colour-lost faces are the first three that land in TEST.

    The split is asked from the shard stage's own rule (by FFHQ id), so the roles stay in test whatever the hash.
    """
    params = _params()
    rule = shard_format.resolve_split_rule(params.shard.split, params.data.source)
    fractions = params.shard.fractions.model_dump()
    in_test = [number for number, path in enumerate(paths)
               if shard_format.assign_split({"id": path.stem, "ffhq_id": int(path.stem.split("_")[1])}, rule, fractions,
                                      params.shard.ffhq_val_ids) == "test"]
    assert len(in_test) >= 5, f"only {len(in_test)} of the {len(paths)} faces land in test"
    roles = dict(zip(in_test, (HOSTILE_ID, GREY_ID, COLOUR_LOST_ID), strict=False))
    return {number: roles.get(number, f"face_{number:03d}") for number in range(len(paths))}


def _params(**bias: object):
    return faces.stage_params(
        (PRESET,), {"train": 0.3, "val": 0.0, "test": 0.7}, 4,
        restore=dict(restorers=["lq", "bicubic"], device="cpu", threads=1),
        evaluate=dict(device="cpu", threads=1, batch_size=8, headline_preset=PRESET, headline_restorer="bicubic"),
        bias={"min_group_size": 4, "resamples": 200, "worst_cases": 20, "examples": 20, **bias})


# --------------------------------------------------------------------------------- known answers
def test_lighter_tint_gives_the_expected_d_ita_sign_and_size() -> None:
    """A uniform face lightened by +5 L*: dITA equals the analytic ITA change of the painted colours."""
    helpers = _load_test_bias()
    skin_rgb = helpers.lab_colour(helpers.SKIN_LAB)
    gt, landmarks = helpers.synthetic_face(skin_rgb)
    tinted_rgb = helpers.lab_colour((helpers.SKIN_LAB[0] + LIGHTEN_L, *helpers.SKIN_LAB[1:]))
    restored, _ = helpers.synthetic_face(tinted_rgb)
    face = bias_faces.measure_gt("synthetic", {"landmarks": landmarks.tolist()}, gt, "test", _params().bias, {})
    assert face.measured is not None and face.band == skin.ita_band(face.measured.ita_deg)
    shift = skin.tone_shift(gt, restored, face.mask)
    expected = helpers.analytic_ita(helpers.painted_lab(tinted_rgb)) - helpers.analytic_ita(
        helpers.painted_lab(skin_rgb))
    assert expected > 8   # ~ +9.7 deg for (62, 12, 18) -> (67, 12, 18)
    assert shift.d_ita == pytest.approx(expected, abs=0.2)
    assert shift.d_l_star == pytest.approx(LIGHTEN_L, abs=0.3)
    darker, _ = helpers.synthetic_face(helpers.lab_colour((helpers.SKIN_LAB[0] - LIGHTEN_L, *helpers.SKIN_LAB[1:])))
    assert skin.tone_shift(gt, darker, face.mask).d_ita < -8


def test_band_flips_read_gt_and_restored_with_the_same_correction() -> None:
    """A restorer that only blurs the eyes (no eye whites left) must not flip the band of unchanged skin.

    Under a warm cast the GT's band comes from a sclera white balance. Correcting the restored face on its own
    finds no eye whites, skips the balance and reads "tan" for the "intermediate" GT skin (a flip the restorer did
    not cause); the GT's own correction (same gains, same pixels) reads the same band.
    """
    helpers = _load_test_bias()
    face_rgb, landmarks = helpers.synthetic_face(helpers.lab_colour(helpers.SKIN_LAB), noise=2.0)
    gt = helpers.relight(face_rgb, (1.15, 1.0, 0.75), 1.0, 0)
    face = bias_faces.measure_gt("warm", {"landmarks": landmarks.tolist()}, gt, "test", _params().bias, {})
    assert face.measured.correction == "sclera+brightest" and face.band == "intermediate"
    restored = gt.copy()
    restored[face.eyes] = (20, 15, 10)
    assert skin.measure_tone(restored, face.mask, "both", eyes=face.eyes).band == "tan"   # corrected on its own
    columns, shift = bias_faces.face_shift(gt, restored, face)
    assert columns["band_restored"] == face.band and shift.d_ita == 0 and not columns["colour_lost"]
    # A real change of the skin still moves the band: +8 L* on the skin reads lighter with the same correction.
    lighter = np.where(face.mask[..., None], lighten(restored, 8.0), restored)
    assert skin.BAND_ORDER.index(bias_faces.face_shift(gt, lighter, face)[0]["band_restored"]) < \
        skin.BAND_ORDER.index(face.band)


def test_bootstrap_intervals_cover_the_true_mean() -> None:
    """200 simulated groups: the 95% percentile-bootstrap CI of the mean covers the true mean ~95% of the time."""
    rng = np.random.default_rng(20260101)
    true_mean, simulations, n = 3.0, 200, 60
    covered = sum(stats.bootstrap_ci(rng.normal(true_mean, 2.0, n), "mean", 1000, 0.95, seed=i).covers(true_mean)
                  for i in range(simulations))
    assert 0.92 <= covered / simulations <= 0.98, covered


def test_age_bins_labels_and_bad_params(tmp_path: Path) -> None:
    bins = _params().bias.age_bins
    assert [bias_labels.age_group(a, bins) for a in (0.0, 19.9, 20, 59.5, 75, None)] == \
        ["0-19", "0-19", "20-39", "40-59", "60+", "unknown"]
    labels_path = tmp_path / "labels.csv"
    labels_path.write_text("file,ffhq_id,gender,age\na.png,00007,female,31.0\nb.png,,male,\nc.png,00008,,\n")
    labels, note = bias_labels.read_labels(labels_path)
    assert labels == {7: {"gender": "female", "age": 31.0}, 8: {"gender": "unknown", "age": None}}
    assert "2 FFHQ ids" in note
    assert bias_labels.read_labels(tmp_path / "absent.csv")[0] == {}
    (tmp_path / "bad.csv").write_text("file,id\nx,1\n")
    with pytest.raises(ValueError, match="bad.csv.*lacks the column"):
        bias_labels.read_labels(tmp_path / "bad.csv")
    with pytest.raises(Exception, match="age bin"):
        _params(age_bins={"old": [60, 100], "young": [0, 20]})
    with pytest.raises(Exception, match="bias.correktion"):
        _params(correktion="both")


# ------------------------------------------------------------------------------------- end to end
def grey(image: np.ndarray) -> np.ndarray:
    """The image without colour (every channel set to the luma): chroma 0, ITA undefined."""
    return np.repeat(cv2.cvtColor(image, cv2.COLOR_RGB2GRAY)[..., None], 3, axis=2)


def _fake_restored(pairs_dir: Path, restored_dir: Path) -> None:
    """Add the restorer "lighter" (GT + 5 L*; COLOUR_LOST_ID also greyed) to the restore stage's folder."""
    index = read_index(restored_dir)
    pairs_index = read_index(pairs_dir)
    per_preset = {}
    for preset, entry in pair_presets(pairs_index, "test").items():
        writer = ShardSetWriter(restored_dir, f"lighter/{preset}/restored-{{:06d}}.tar", 4)
        for sample in iter_samples(pairs_dir, entry["shards"]):
            image = lighten(decode_png_bytes(sample["gt.png"]), LIGHTEN_L)
            if sample["__key__"] == COLOUR_LOST_ID:
                image = grey(image)
            writer.write({"__key__": sample["__key__"], "restored.png": encode_png(image),
                          "json": json_bytes({"id": sample["__key__"], "preset": preset, "restorer": "lighter"})})
        records = [record.__dict__ for record in writer.close()]
        per_preset[preset] = {"count": sum(r["count"] for r in records), "shards": records}
    index["restorers"]["lighter"] = {"restorer": "lighter", "status": "ok", "presets": per_preset}
    write_json_atomic(restored_dir / "index.json", index)


def _evaluation(root: Path) -> list[str]:
    """per_image.csv in the evaluate stage's columns: real PSNR, SSIM not computed, known identity distances."""
    pairs_index = read_index(root / "pairs")
    restored_index = read_index(root / "restored")
    rows, ids = [], []
    for restorer in ("lq", "bicubic", "lighter"):
        entry = restored_index["restorers"][restorer]["presets"][PRESET]
        restored = {s["__key__"]: s for s in iter_samples(root / "restored", entry["shards"])}
        test_pairs = pair_presets(pairs_index, "test")[PRESET]["shards"]
        for number, pair in enumerate(iter_samples(root / "pairs", test_pairs)):
            key = pair["__key__"]
            gt = decode_png_bytes(pair["gt.png"]).astype(np.float64) / 255
            image = decode_png_bytes(restored[key]["restored.png"]).astype(np.float64) / 255
            psnr = 10 * math.log10(1 / max(float(np.mean((gt - image) ** 2)), 1e-10))
            detected = not (restorer == "lighter" and number == MISSED_ID_INDEX)
            values = {"preset": PRESET, "restorer": restorer, "id": key, "psnr": round(psnr, 6), "ssim": "",
                      "lpips": "", "niqe": "", "identity_distance": 0.1 * (number % 3), "identity_angle_deg": "",
                      "identity_match": "true", "landmarks_detected": "true" if detected else "false",
                      "landmark_nme": 0.05 if detected else "", "landmark_error_px": "", "rank1_correct": "true"}
            rows.append([values[column] for column in COLUMNS])
            ids.append(key)
    write_csv_atomic(root / "evaluation" / "per_image.csv", COLUMNS, rows)
    write_json_atomic(root / "evaluation" / "summary.json",
                      {"metrics": {"ssim": {"status": "not computed: skipped in this test"}}})
    return ids


@pytest.fixture(scope="module")
def project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Real faces at 128 px through the real shard, degrade and restore stages.

    Three test faces have roles (_roles): one id holds <script>, one GT is greyscale (no colour), and the
    "lighter" restorer greys one (colour lost).
    """
    paths = faces.face_paths(FACE_COUNT)
    root = tmp_path_factory.mktemp("bias_stage")
    roles = _roles(paths)
    ids = [roles[number] for number in range(len(paths))]
    ffhq_ids = [int(path.stem.split("_")[1]) for path in paths]
    label_rows = []
    for number, (path, sample_id, ffhq_id) in enumerate(zip(paths, ids, ffhq_ids, strict=True)):
        gender = HOSTILE_GENDER if sample_id == HOSTILE_ID else ("female" if number % 2 else "male")
        label_rows.append([path.name, f"{ffhq_id:05d}", gender, str(10.0 + 5 * number)])
    write_csv_atomic(root / "labels.csv", ["file", "ffhq_id", "gender", "age"], label_rows)
    faces.build(root, _params(), paths, SIZE, restore=True, ids=ids, landmarks=True,
                extra_meta=[{"ffhq_id": ffhq_id} for ffhq_id in ffhq_ids],
                edit=lambda sample_id, image: grey(image) if sample_id == GREY_ID else image)
    _fake_restored(root / "pairs", root / "restored")
    _evaluation(root)
    return root


def _run_bias(root: Path, out: Path, **bias: object) -> dict:
    return bias_stage.run(_params(**bias), shards_dir=root / "shards", pairs_dir=root / "pairs",
                          restored_dir=root / "restored", evaluation_dir=root / "evaluation", out_dir=out,
                          summary_path=out.parent / "reports" / "bias.json", labels_path=root / "labels.csv")


@pytest.fixture(scope="module")
def result(project: Path) -> Path:
    _run_bias(project, project / "bias")
    return project / "bias"


def _csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_stage_outputs_per_face_rows_and_known_shifts(project: Path, result: Path) -> None:
    per_face = _csv(result / "per_face.csv")
    test_ids = {s["__key__"] for s in iter_samples(project / "pairs", pair_presets(read_index(project / "pairs"),
                                                                                   "test")[PRESET]["shards"])}
    assert len(per_face) == 3 * len(test_ids) and {r["restorer"] for r in per_face} == {"lq", "bicubic",
                                                                                         "lighter"}
    # The hostile id lands in test (chosen so by _roles): its row is there, its label read as data.
    hostile = [r for r in per_face if r["id"] == HOSTILE_ID]
    assert len(hostile) == 3 and all(r["gender"] == HOSTILE_GENDER for r in hostile)
    # The greyscale GT: "no colour", in no band, no dITA for any restorer.
    grey_rows = [r for r in per_face if r["id"] == GREY_ID]
    assert len(grey_rows) == 3
    assert all(r["band_gt"] == r["group_skin_tone"] == skin.NO_COLOUR and r["d_ita"] == "" for r in grey_rows)
    coloured = [r for r in per_face if r["id"] != GREY_ID]
    lighter = [r for r in coloured if r["restorer"] == "lighter"]
    lost = [r for r in lighter if r["id"] == COLOUR_LOST_ID]
    assert len(lost) == 1 and lost[0]["colour_lost"] == "true" and lost[0]["d_ita"] == ""
    assert lost[0]["band_restored"] == skin.NO_COLOUR
    assert all(r["colour_lost"] == "false" for r in coloured if r["id"] != COLOUR_LOST_ID)
    lighter = [r for r in lighter if r["id"] != COLOUR_LOST_ID]
    assert all(float(r["d_ita"]) > 0 for r in lighter)                        # every face lightened
    assert all(abs(float(r["d_l_star"]) - LIGHTEN_L) < 0.6 for r in lighter)   # by the known amount
    bicubic = [r for r in coloured if r["restorer"] == "bicubic"]
    assert np.median([abs(float(r["d_ita"])) for r in bicubic]) < np.median([float(r["d_ita"]) for r in lighter])
    for row in coloured:   # the GT groups do not depend on the restorer
        assert row["band_gt"] in skin.BAND_ORDER and row["group_skin_tone"].split("+")[0] in skin.BAND_ORDER
        assert row["correction_applied"] in ("brightest", "sclera+brightest")

    document = json.loads((result / "bias.json").read_text())
    tone = [t for t in document["tone_shift"] if t["restorer"] == "lighter" and t["grouping"] == "skin_tone"]
    assert tone and all(t["share_lightened"] == 1.0 and t["verdict"] in ("lightened", "inconclusive") for t in tone)
    # dITA tests see neither the no-colour GT nor the colour-lost face (a greyed face is no "lightening")
    assert sum(t["n"] for t in tone) == len(test_ids) - 2
    assert skin.NO_COLOUR not in {t["group"] for t in tone}
    assert document["colour"]["no_colour_test"] == 1 and document["colour"]["no_colour"]["test"] == 1
    lost_rows = [c for c in document["colour_lost"] if c["grouping"] == "skin_tone"]
    assert {(c["restorer"], c["n_colour_lost"]) for c in lost_rows if c["n_colour_lost"]} == {("lighter", 1)}
    assert sum(c["n"] for c in lost_rows if c["restorer"] == "lighter") == len(test_ids) - 1
    # the continuous dITA-vs-ITA view has neither the no-colour GT nor the colour-lost face
    assert {r: len(points) for r, points in document["scatter"][PRESET].items()} == {
        "lq": len(test_ids) - 1, "bicubic": len(test_ids) - 1, "lighter": len(test_ids) - 2}
    assert sum(b["n"] for b in document["binned"] if b["restorer"] == "lighter") == len(test_ids) - 2
    summary_lost = json.loads((project / "reports" / "bias.json").read_text())["results"][PRESET]["lighter"]
    assert sum(g["n_colour_lost"] for g in summary_lost["colour_lost_by_skin_tone"].values()) == 1

    # every group is reported, merged groups flagged, nothing dropped
    for grouping, groups in document["group_info"].items():
        assert sum(g["n"] for g in groups) == len(test_ids), grouping
        for g in groups:
            assert g["merged"] == ("+" in g["group"] and len(g["members"]) > 1)

    # the missed landmark detection is one failure in the lighter set
    failures = [f for f in document["failures"] if f["restorer"] == "lighter" and f["grouping"] == "skin_tone"]
    assert sum(f["n_failed"] for f in failures) == 1
    assert all(f["n_failed"] == 0 for f in document["failures"] if f["restorer"] != "lighter")

    # gaps: PSNR computed with a CI around the estimate; SSIM says why not
    gaps = {(g["restorer"], g["grouping"], g["metric"]): g for g in document["gaps"]}
    psnr = gaps[("bicubic", "skin_tone", "psnr")]
    assert psnr["status"] == "ok" and psnr["gap_low"] <= psnr["gap"] <= psnr["gap_high"] and psnr["gap"] <= 0
    # every gap has a permutation p, Holm-adjusted over the groupings the headline picks from
    family = [g for g in document["gaps"] if g["restorer"] == "bicubic" and g["metric"] == "psnr"
              and g["status"] == "ok"]
    assert len(family) >= 2 and all(g["family_size"] == len(family) for g in family)
    assert [g["p_holm"] for g in family] == pytest.approx(list(stats.holm([g["p"] for g in family])))
    assert all(0 < g["p"] <= g["p_holm"] <= 1 for g in family)
    assert gaps[("bicubic", "skin_tone", "ssim")]["status"] == "not computed: skipped in this test"
    assert document["not_computed"]["ssim"] == "not computed: skipped in this test"

    # flips: every measured face counted once per restorer (the greyed one as "no colour"); the +5 L* restorer
    # never moves a band darker
    flips = [f for f in document["flips"] if f["restorer"] == "lighter"]
    assert sum(f["count"] for f in flips) == len(test_ids)
    assert sum(f["count"] for f in flips if f["restored_band"] == skin.NO_COLOUR != f["gt_band"]) == 1
    order = list(skin.BAND_ORDER)
    assert all(order.index(f["restored_band"]) <= order.index(f["gt_band"]) for f in flips if f["count"]
               and f["gt_band"] in order and f["restored_band"] in order)

    # baseline control: lighter minus bicubic on dITA is positive in every skin-tone band ("no colour": no dITA)
    control = {b["group"]: b for b in document["baseline"] if b["restorer"] == "lighter" and b["metric"] == "d_ita"
               and b["grouping"] == "skin_tone"}
    assert control.pop(skin.NO_COLOUR)["n"] == 0
    assert control and all(b["estimate"] > 0 and b["baseline"] == "bicubic" for b in control.values())

    # composition covers the train and test splits; images are named by number, not by id
    splits = {row["split"] for row in _csv(result / "composition.csv")}
    assert "test" in splits
    assert all(Path(w["file"]).name[:4].isdigit() and (result / w["file"]).is_file() for w in document["worst"])
    summary = json.loads((project / "reports" / "bias.json").read_text())
    assert summary["correction"] == "both" and set(summary["results"][PRESET]) == {"lq", "bicubic", "lighter"}
    assert summary["results"][PRESET]["lighter"]["largest_gap"]["ssim"]["status"].startswith("not computed")
    assert json.loads((result / "receipt.json").read_text())["stage"] == "bias"


def test_rerun_is_identical_and_correction_is_a_parameter(project: Path, result: Path, tmp_path: Path) -> None:
    _run_bias(project, tmp_path / "again")
    for name in ("per_face.csv", "groups.csv", "gaps.csv", "tone_shift.csv", "flips.csv", "composition.csv"):
        assert (tmp_path / "again" / name).read_bytes() == (result / name).read_bytes(), name
    _run_bias(project, tmp_path / "plain", correction="none", worst_cases=0, examples=0)
    plain = _csv(tmp_path / "plain" / "per_face.csv")
    assert all(r["correction_applied"] == "none" and r["band_gt"] == r["band_gt_plain"] for r in plain)
    assert json.loads((tmp_path / "plain" / "bias.json").read_text())["worst"] == []


def test_evaluation_from_other_shards_is_refused(project: Path, tmp_path: Path) -> None:
    evaluation = tmp_path / "evaluation"
    shutil.copytree(project / "evaluation", evaluation)
    rows = (evaluation / "per_image.csv").read_text().splitlines()
    rows.append(rows[1].replace(rows[1].split(",")[2], "stranger", 1))
    (evaluation / "per_image.csv").write_text("\n".join(rows) + "\n")
    with pytest.raises(ValueError, match="'stranger' is not in"):
        bias_stage.run(_params(), shards_dir=project / "shards", pairs_dir=project / "pairs",
                       restored_dir=project / "restored", evaluation_dir=evaluation, out_dir=tmp_path / "out",
                       summary_path=tmp_path / "s.json", labels_path=None)
    assert not (tmp_path / "out").exists()


# ------------------------------------------------------------------------------------------- page
class _Images(HTMLParser):
    def __init__(self) -> None:
        super().__init__()
        self.sources: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        if tag == "img":
            self.sources += [value for name, value in attrs if name == "src" and value]


def _images(html: str) -> list[str]:
    parser = _Images()
    parser.feed(html)
    return parser.sources


@pytest.fixture(scope="module")
def pages(project: Path, result: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """data.html, bias.html and index.html built from the project folder (aligned, shards, pairs, bias)."""
    out = tmp_path_factory.mktemp("bias_reports")
    summary = report_stage.run(_params(), data_dir=project, out_dir=out, models_dir=project / "models")
    assert {"data.html", "bias.html", "index.html"} <= set(summary["pages"])
    return out


def test_page_shows_every_section_and_escapes_metadata(pages: Path) -> None:
    html = (pages / "bias.html").read_text(encoding="utf-8")
    for anchor in ("method", "composition", "examples", "gaps", "tone", "groups", "forest", "flips", "failures",
                   "baseline", "worst"):
        assert f'id="{anchor}"' in html, anchor
    assert "correction used for the grouping: <code>both</code>" in html
    # no-colour and colour-lost counts, gap CIs that include the selection, each with what it can claim
    assert "Test faces without colour in their GT: <b>1</b>" in html and 'id="colour"' in html
    assert "<th>colour lost</th>" in html and "<td>lighter</td>" in html
    assert "gap worst - best [CI, worst/best re-picked]" in html and "p (Holm over groupings)" in html
    assert html.count("<b>What this can claim:</b>") == 1 and html.count("<b>What these counts can claim:</b>") == 1
    assert "face_&lt;script&gt;alert(1)&lt;" in html and "&lt;script&gt;alert(2)&lt;/script&gt;" in html
    for page in pages.glob("*.html"):
        text = page.read_text(encoding="utf-8")
        assert "<script" not in text.lower(), page.name
    assert "face_&lt;script&gt;alert(1)&lt;" in (pages / "data.html").read_text(encoding="utf-8")
    sources = _images(html)
    assert len(sources) >= 8   # composition, dITA plot, forests, flips, examples, worst cases
    for src in sources:
        header, _, payload = src.partition(",")
        assert header in ("data:image/png;base64", "data:image/jpeg;base64"), header[:40]
        with Image.open(io.BytesIO(base64.b64decode(payload, validate=True))) as image:
            image.load()
            assert image.width > 0
    assert 'href="bias.html#bias"' in (pages / "index.html").read_text(encoding="utf-8")


def test_page_before_the_stage_ran(tmp_path: Path) -> None:
    from dlfp.report import bias_page

    ctx = PageContext(params=_params(), data_dir=tmp_path, out_dir=tmp_path, env=make_env())
    html = bias_page.render(ctx)
    assert "Stage <code>bias</code> not run yet" in html
    (tmp_path / "bias").mkdir()
    (tmp_path / "bias" / "bias.json").write_text("{broken")
    assert "bias.json: unreadable" in bias_page.render(ctx)


@prereq.needs(browser.chromium() is not None, "chromium not installed (apt-get install -y chromium)")
def test_pages_render_in_headless_chromium(pages: Path, tmp_path: Path) -> None:
    page = pages / "bias.html"
    errors = browser.load_in_chromium(page, tmp_path / "bias.png", tmp_path / "profile")
    assert not errors, errors


# ------------------------------------------------------------------------------------------- slow
@pytest.mark.slow
def test_on_the_real_evaluate_stage(project: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The bias stage reads what the real evaluate stage writes (dlib identity and landmarks, pyiqa PSNR/SSIM)."""
    from dlfp.stages import evaluate as evaluate_stage

    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch_home"))   # no pyiqa weights: LPIPS etc. not computed
    evaluation = tmp_path / "evaluation"
    evaluate_stage.run(_params(), project / "pairs", project / "restored", evaluation, tmp_path / "metrics.json")
    root = tmp_path / "project"
    root.mkdir()
    for name in ("shards", "pairs", "restored"):
        (root / name).symlink_to(project / name)
    (root / "evaluation").symlink_to(evaluation)
    shutil.copy(project / "labels.csv", root / "labels.csv")
    _run_bias(root, tmp_path / "bias")
    document = json.loads((tmp_path / "bias" / "bias.json").read_text())
    assert document["not_computed"]["lpips"].startswith("not computed: LPIPS")
    ssim = [g for g in document["groups"] if g["metric"] == "ssim" and g["restorer"] == "lighter"]
    assert ssim and all(0.5 < g["estimate"] <= 1 for g in ssim)
    identity = [g for g in document["gaps"] if g["metric"] == "identity_distance" and g["grouping"] == "skin_tone"]
    assert identity and all(g["status"] == "ok" for g in identity)
