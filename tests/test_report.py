"""The report stage on a tiny fake data folder: escaping, missing stages, offline links, a real browser."""

from __future__ import annotations

import csv
import io
import json
import re
import sys
import tarfile
from pathlib import Path

import _dlfp_test_browser as browser  # tests/_browser.py, registered by conftest.py
import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import _dlfp_test_tars as tars  # tests/_tars.py, registered by conftest.py
import pytest
from PIL import Image

import dlfp.report as report_pkg
from dlfp.params import parse_params
from dlfp.report import Page, data_page, readers
from dlfp.shards import format as shard_format
from dlfp.stages import report as report_stage

SCRIPT = "<script>alert(1)</script>"
SCRIPT_ESCAPED = "&lt;script&gt;alert(1)&lt;/script&gt;"
QUOTES = '"quotes" & ampersands'
QUOTES_ESCAPED = "&#34;quotes&#34; &amp; ampersands"
# A file name cannot hold "/", so the hostile file name carries an attribute-injection payload instead.
FILE_ID = 'face<img src=x onerror=alert(1)>"q"&'
FILE_ID_ESCAPED = "face&lt;img src=x onerror=alert(1)&gt;&#34;q&#34;&amp;"


# --------------------------------------------------------------------------------------------- fixtures
def png_bytes(colour: tuple[int, int, int], size: int = 64, noise: int = 0) -> bytes:
    image = Image.new("RGB", (size, size), colour)
    if noise:
        image = image.effect_spread(noise)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def write_csv(path: Path, header: list[str], rows: list[list[object]]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        csv.writer(handle).writerows([header, *rows])


def write_receipt(folder: Path, stage: str, counts: dict, seed: int | None = None) -> None:
    receipt = {"stage": stage, "params_hash": f"hash-{stage}", "seed": seed, "counts": counts,
               "inputs": {"from": f"data/{SCRIPT}"}, "versions": {"python": "3.11", "dlfp": "0.1.0"}}
    (folder / "receipt.json").write_text(json.dumps(receipt), encoding="utf-8")


def add_member(tar: tarfile.TarFile, name: str, payload: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(payload)
    tar.addfile(info, io.BytesIO(payload))


def landmarks() -> list[list[float]]:
    return [[10 + (i % 17) * 2.5, 20 + (i // 17) * 8.0] for i in range(68)]


def make_data(root: Path) -> Path:
    """A tiny data folder with every stage's artifacts, hostile strings included."""
    data = root / "data"
    ids = ["a000", "a001", "a002", "b003", FILE_ID, SCRIPT]
    raw = data / "raw"
    (raw / "images").mkdir(parents=True)
    header = ["id", "source", "md5", "size", "width", "height", "licence", "ffhq_id", "note"]
    write_csv(raw / "manifest.csv", header,
              [[i, f"in/{i}.png", "0" * 32, 100, 64, 64, SCRIPT if n == 0 else QUOTES, "", ""]
               for n, i in enumerate(ids)])
    write_csv(raw / "rejects.csv", ["source", "reason"],
              [[f"in/{SCRIPT}.png", "not an image"], ["in/b.png", "not an image"], ["in/c.png", QUOTES]])
    write_receipt(raw, "acquire", {"kept": len(ids), "rejected": 3}, seed=7)

    aligned = data / "aligned"
    (aligned / "images").mkdir(parents=True)
    meta = []
    for n, sample_id in enumerate(ids):
        if sample_id != SCRIPT:  # "/" cannot be in a file name: this id has metadata but no image
            (aligned / "images" / f"{sample_id}.png").write_bytes(png_bytes((40 * n, 90, 160)))
        meta.append({"id": sample_id, "source": f"in/{sample_id}.png", "licence": QUOTES if n else SCRIPT,
                     "ffhq_id": None, "alignment": "ffhq" if n % 2 else "passthrough",
                     "landmarks": landmarks(),
                     "boxes": {"left_eye": [20, 25, 6], "right_eye": [44, 25, 6], "mouth": [32, 48, 8]},
                     "face_box": [8, 8, 56, 60]})
    (aligned / "meta.jsonl").write_text("".join(json.dumps(row) + "\n" for row in meta), encoding="utf-8")
    write_csv(aligned / "rejects.csv", ["id", "source", "reason", "stage"],
              [["r1", "in/r1.png", "carried over", "acquire"],  # align's rejects.csv is cumulative
               ["z9", "in/z9.png", "no face", "align"], ["z8", "in/z8.png", SCRIPT, "align"]])
    write_receipt(aligned, "align", {"aligned": len(ids), "rejected": 2})

    shards = data / "shards"
    shards.mkdir()
    (shards / "index.json").write_text(json.dumps({
        "split_rule": "hash", "fractions": {"train": 0.65, "val": 0.05, "test": 0.3}, "ffhq_val_ids": None,
        "splits": {
            "train": {"count": 4, "shards": [{"path": "train/clean-000000.tar", "count": 4, "sha256": "x"}]},
            "val": {"count": 0, "shards": []},
            "test": {"count": 2, "shards": [{"path": "test/clean-000000.tar", "count": 2, "sha256": "y"}]}},
    }), encoding="utf-8")
    write_receipt(shards, "shard", {"train": 4, "val": 0, "test": 2})

    pairs = data / "pairs"
    (pairs / "test" / "moderate").mkdir(parents=True)
    with tarfile.open(pairs / "test" / "moderate" / "pairs-000000.tar", "w") as tar:
        for n in range(5):
            key = f"k{n:03d}"
            sample = {"id": FILE_ID if n == 0 else key, "preset": "moderate", "sample_seed": 1000 + n,
                      "licence": SCRIPT,
                      "degradation": {"kernel": "iso" if n % 2 else "aniso", "sigma_x": 1.0 + n,
                                      "sigma_y": 2.0, "scale": 2.5, "noise_sigma": 5.0 + n,
                                      "jpeg_quality": 70 + n,
                                      "color_shift": None if n % 2 else [1.0, -2.0, 0.5], "grey": n == 3,
                                      f"odd {SCRIPT} $x^2$": n}}
            add_member(tar, f"{key}.lq.png", png_bytes((120, 60, 30), noise=3))
            add_member(tar, f"{key}.gt.png", png_bytes((120, 60, 30)))
            add_member(tar, f"{key}.json", json.dumps(sample).encode())
        link = tarfile.TarInfo("k999.json")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        tar.addfile(link)
    (pairs / "index.json").write_text(json.dumps({"splits": {"test": {"presets": {
        "moderate": {"count": 5, "shards": [{"path": "test/moderate/pairs-000000.tar", "count": 5, "sha256": "z"}],
                     "params": {"blur_sigma": [1.0, 5.0], "note": SCRIPT},
                     "size_scaling": {"reference_size": 512, "data_size": 128, "scale": 0.25}},
        "escape": {"count": 1, "shards": [{"path": "../../outside.tar", "count": 1, "sha256": "z"}],
                   "params": {}},
    }}}}), encoding="utf-8")
    write_receipt(pairs, "degrade", {"moderate": 5, "escape": 1}, seed=11)
    return data


def make_params(grid: int = 4, pairs: int = 3):
    return parse_params({"data": {"folder": "faces"},
                         "report": {"samples_in_grid": grid, "pairs_per_preset": pairs}})


@pytest.fixture(scope="module")
def built(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    root = tmp_path_factory.mktemp("report")
    data = make_data(root)
    summary = report_stage.run(make_params(), data_dir=data, out_dir=root / "reports", models_dir=root / "models")
    return root / "reports", summary


# ------------------------------------------------------------------------------------------------- tests
def test_builds_index_and_data_pages(built: tuple[Path, dict]) -> None:
    out, summary = built
    assert summary["pages"] == ["data.html", "training.html", "evaluation.html", "bias.html", "model.html",
                               "index.html"]
    index = (out / "index.html").read_text(encoding="utf-8")
    for stage in report_pkg.STAGES:
        assert f"<td>{stage}</td>" in index
    assert 'href="data.html#acquire"' in index and 'href="data.html#degrade"' in index
    assert "no page yet" not in index  # the report stage links the model card it writes
    assert 'href="model.html#report"' in index and 'href="model.html#bias"' in index
    assert "20260101" in index and make_params().section_hash("degrade") in index
    assert "samples_in_grid: 4" in index  # params dump


def test_untrusted_strings_are_escaped(built: tuple[Path, dict]) -> None:
    out, _ = built
    pages = {path.name: path.read_text(encoding="utf-8") for path in out.glob("*.html")}
    assert set(pages) == {"index.html", "data.html", "training.html", "evaluation.html", "bias.html",
                          "model.html"}
    for name, html in pages.items():
        assert SCRIPT not in html, name
        assert "<img src=x" not in html, name
        assert "<script" not in html.lower(), name
    data = pages["data.html"]
    assert SCRIPT_ESCAPED in data and QUOTES_ESCAPED in data and FILE_ID_ESCAPED in data
    assert "id is not a plain file name" in data  # the id with "/" was not used as a path


def test_data_page_content(built: tuple[Path, dict]) -> None:
    html = (built[0] / "data.html").read_text(encoding="utf-8")
    images = browser.collect(html).images
    # grid: first 4 ids in order; SCRIPT sorts first and has no image (placeholder), then 3 images;
    # 3 pairs x (LQ, GT); 1 histogram figure
    assert len(images) == 3 + 6 + 1
    assert html.count('<div class="placeholder">') == 1
    assert "aligned: passthrough" in html and "aligned: ffhq" in html
    assert re.search(r"<td>not an image</td><td class=\"num\">2</td>", html)  # grouped by reason
    assert "in/b.png" in html and "no face" in html  # all reject rows
    assert "carried over" not in html and "1 earlier rejects repeated" in html
    assert re.search(r"<td>rejected at align</td>\s*<td class=\"num\">2</td>", html)
    assert "Split rule: <code>hash</code>" in html
    assert "Preset moderate (5 pairs)" in html and "All 5 pairs" not in html
    assert "Logged degradation parameters of all 5 pairs" in html
    assert "Ranges defined at 512 px, scaled by 128/512 = 0.25: blur sigma" in html
    assert "floored at 1" in html and "Size scaling: not recorded" in html  # the escape preset has none
    assert "outside the pairs folder" in html  # ../../outside.tar was refused
    assert "hash-degrade" in html and "version: python" in html


def test_scaling_statement_says_whether_ranges_were_scaled() -> None:
    unscaled = data_page.scaling_statement({"reference_size": None, "data_size": 128, "scale": None}, [])
    assert unscaled.startswith("Ranges used as given at 128 px: not scaled")
    native = data_page.scaling_statement({"reference_size": 512, "data_size": 512, "scale": 1.0},
                                         [{"size_scale": 1.0}])
    assert native == "Ranges defined at 512 px, the data's size: not scaled."
    mixed = data_page.scaling_statement({"reference_size": 512, "data_size": 128, "scale": 0.25},
                                        [{"size_scale": 0.25}, {"size_scale": 0.125}])
    assert "= 0.25" in mixed and mixed.endswith("another size): 0.125.")


def test_links_are_local_and_resolve(built: tuple[Path, dict]) -> None:
    out, _ = built
    pages = sorted(out.glob("*.html"))
    assert len(pages) == 6
    for page in pages:
        browser.assert_links_local(page)


def test_missing_stages_are_reported_not_fatal(tmp_path: Path) -> None:
    data = tmp_path / "data"
    raw = data / "raw"
    raw.mkdir(parents=True)
    # acquire ran but left no receipt and no rejects; nothing else ran
    write_csv(raw / "manifest.csv", ["id", "source", "licence"], [["a", "a.png", "cc"]])
    report_stage.run(make_params(), data_dir=data, out_dir=tmp_path / "reports", models_dir=tmp_path / "models")
    html = (tmp_path / "reports" / "data.html").read_text(encoding="utf-8")
    for stage in ("align", "shard", "degrade"):
        assert f"Stage <code>{stage}</code> not run yet" in html
    assert "Stage <code>acquire</code> not run yet" not in html
    assert "receipt.json missing" in html and "No <code>rejects.csv</code>" in html
    index = (tmp_path / "reports" / "index.html").read_text(encoding="utf-8")
    # align, shard, degrade, and the five stages after them (train_prior .. bias) have not run
    assert "incomplete (no receipt)" in index and index.count("not run yet") == 8


def test_no_data_folder_at_all(tmp_path: Path) -> None:
    summary = report_stage.run(make_params(), data_dir=tmp_path / "nothing", out_dir=tmp_path / "reports",
                        models_dir=tmp_path / "no-models")
    html = (tmp_path / "reports" / "data.html").read_text(encoding="utf-8")
    assert summary["pages"] == ["data.html", "training.html", "evaluation.html", "bias.html", "model.html",
                               "index.html"]
    assert html.count("stage not run yet") >= 4 and "not run yet" in html


def test_damaged_inputs_show_errors(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    (data / "aligned" / "meta.jsonl").write_text('{"id": "a000"}\nnot json\n', encoding="utf-8")
    (data / "shards" / "index.json").write_text("{broken", encoding="utf-8")
    (data / "pairs" / "test" / "moderate" / "pairs-000000.tar").write_bytes(b"not a tar at all" * 100)
    report_stage.run(make_params(), data_dir=data, out_dir=tmp_path / "reports", models_dir=tmp_path / "models")
    html = (tmp_path / "reports" / "data.html").read_text(encoding="utf-8")
    assert "1 line(s) are not JSON objects" in html
    assert "index.json: unreadable" in html
    assert "unreadable tar" in html


def test_rebuild_is_byte_identical(tmp_path: Path, built: tuple[Path, dict]) -> None:
    out, _ = built
    report_stage.run(make_params(), data_dir=out.parent / "data", out_dir=tmp_path / "again",
              models_dir=out.parent / "models")
    for name in ("data.html", "index.html"):
        assert (tmp_path / "again" / name).read_bytes() == (out / name).read_bytes(), name
    assert not list(out.glob(".*.tmp"))  # atomic writes leave no temporaries


def test_tar_reader_skips_links_and_keeps_images_in_memory(tmp_path: Path) -> None:
    data = make_data(tmp_path)
    tar_path = data / "pairs" / "test" / "moderate" / "pairs-000000.tar"
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    samples = list(readers.iter_tar_samples(tar_path, lambda: True))
    assert [key for key, _ in samples] == ["k000", "k001", "k002", "k003", "k004"]  # symlink k999 skipped
    assert set(samples[0][1]) == {"lq.png", "gt.png", "json"}
    assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before
    shown = []
    for key, sample in readers.iter_tar_samples(tar_path, lambda: len(shown) < 2):
        shown.append((key, set(sample)))
    assert shown[1] == ("k001", {"lq.png", "gt.png", "json"}) and shown[2] == ("k002", {"json"})
    assert readers.safe_image_path(tmp_path, "../etc") is None
    assert readers.contained(tmp_path, "/etc/passwd") is None
    assert readers.contained(tmp_path, "a/../../b.tar") is None
    assert readers.contained(tmp_path, "moderate/p.tar") == tmp_path / "moderate" / "p.tar"


def test_tar_reader_reports_damaged_tars_as_tar_errors(tmp_path: Path) -> None:
    """A truncated tar or one with a repeated member name is a tarfile error whose text names no file object."""
    truncated = tmp_path / "truncated.tar"
    with tarfile.open(truncated, "w") as tar:
        add_member(tar, "k000.json", b"{}")
        add_member(tar, "k000.lq.png", png_bytes((1, 2, 3), size=256, noise=5))
    truncated.write_bytes(truncated.read_bytes()[:2048])
    with pytest.raises(tarfile.TarError) as caught:
        list(readers.iter_tar_samples(truncated, lambda: True))
    assert str(caught.value) == "unexpected end of data"
    repeated = tmp_path / "repeated.tar"
    with tarfile.open(repeated, "w") as tar:
        add_member(tar, "k000.json", b"{}")
        add_member(tar, "k000.json", b"[]")
    with pytest.raises(tarfile.TarError, match="duplicate member"):
        list(readers.iter_tar_samples(repeated, lambda: True))


def test_tar_reader_refuses_an_oversized_member_unread(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """A member whose header claims more than the cap is an error naming it, raised before any of it is read."""
    monkeypatch.setattr(shard_format, "MAX_MEMBER_BYTES", 1024)
    extracted = tars.record_extracted_members(monkeypatch)
    oversized = tmp_path / "oversized.tar"
    with tarfile.open(oversized, "w") as tar:
        add_member(tar, "k000.json", b"{}")
        add_member(tar, "k000.gt.png", b"x" * 1024)  # at the cap: read
        add_member(tar, "k001.json", b"{}")
        add_member(tar, "k001.gt.png", b"x" * 1025)
    samples = readers.iter_tar_samples(oversized, lambda: True)
    assert next(samples) == ("k000", {"json": b"{}", "gt.png": b"x" * 1024})
    with pytest.raises(tarfile.TarError,
                       match=r"^oversized\.tar: member k001\.gt\.png claims 1025 bytes, over the 1024-byte limit"):
        list(samples)
    assert extracted == ["k000.json", "k000.gt.png", "k001.json"]


def test_registered_page_joins_index(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(report_pkg, "_REGISTRY", dict(report_pkg._REGISTRY))
    def render(ctx: report_pkg.PageContext) -> str:
        return ctx.render("base.html", current="extra.html", title="Extra <&>")

    report_pkg.register(Page(slug="extra", title="Extra <&>", filename="extra.html", stages=("report",),
                             render=render))
    summary = report_stage.run(make_params(), data_dir=tmp_path / "data", out_dir=tmp_path / "reports",
                        models_dir=tmp_path / "models")
    assert summary["pages"] == ["data.html", "training.html", "evaluation.html", "bias.html", "model.html",
                                "extra.html", "index.html"]
    index = (tmp_path / "reports" / "index.html").read_text(encoding="utf-8")
    assert 'href="extra.html#report">Extra &lt;&amp;&gt;</a>' in index
    assert 'href="extra.html">Extra &lt;&amp;&gt;</a>' in (tmp_path / "reports" / "data.html").read_text()
    with pytest.raises(ValueError, match="unknown stages"):
        Page(slug="x", title="x", filename="x.html", stages=("nope",), render=lambda ctx: "")


def test_a_page_module_registers_itself_without_edits_elsewhere(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Adding a page = one `*_page.py` module in the report package: the stage finds it, writes it, links it."""
    monkeypatch.setattr(report_pkg, "_REGISTRY", dict(report_pkg._REGISTRY))
    extra = tmp_path / "package"
    extra.mkdir()
    (extra / "zz_extra_page.py").write_text(
        "from dlfp.report import Page, register\n"
        "register(Page(slug='zz', title='Extra', filename='zz.html', stages=('report',),\n"
        "              render=lambda ctx: ctx.render('base.html', current='zz.html', title='Extra')))\n",
        encoding="utf-8")
    (extra / "zz_helpers.py").write_text("raise AssertionError('not a page module: must not be imported')\n")
    monkeypatch.setattr(report_pkg, "__path__", [*report_pkg.__path__, str(extra)])
    monkeypatch.delitem(sys.modules, "dlfp.report.zz_extra_page", raising=False)
    try:
        summary = report_stage.run(make_params(), data_dir=tmp_path / "data", out_dir=tmp_path / "reports",
                                   models_dir=tmp_path / "models")
    finally:
        sys.modules.pop("dlfp.report.zz_extra_page", None)
    assert summary["pages"][-2:] == ["zz.html", "index.html"]
    assert 'href="zz.html#report">Extra</a>' in (tmp_path / "reports" / "index.html").read_text(encoding="utf-8")


def test_cli_report(tmp_path: Path) -> None:
    from dlfp.cli import main

    params_file = tmp_path / "params.yaml"
    params_file.write_text("data: {folder: faces}\nreport: {samples_in_grid: 2, pairs_per_preset: 1}\n")
    data = make_data(tmp_path)
    code = main(["--params", str(params_file), "report", "--data", str(data), "--out", str(tmp_path / "r"),
                 "--models", str(tmp_path / "models")])
    assert code == 0
    assert (tmp_path / "r" / "index.html").is_file() and (tmp_path / "r" / "data.html").is_file()


@prereq.needs(browser.chromium() is not None,
              "chromium not installed (make setup installs it: apt-get install -y chromium)")
def test_pages_render_in_headless_chromium(built: tuple[Path, dict], tmp_path: Path) -> None:
    out, _ = built
    for page in sorted(out.glob("*.html")):
        errors = browser.load_in_chromium(page, tmp_path / f"{page.stem}.png", tmp_path / "profile")
        assert not errors, f"{page.name}: {errors}"
        browser.assert_links_local(page)
