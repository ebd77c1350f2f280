"""reports/data.html: what the data stages (acquire, align, shard, degrade) produced, from their artifacts.

Every input may be missing or damaged; the page then says so for that part and still renders. Strings from
file names and metadata reach the HTML only through jinja2's autoescaping. Files are read through
dlfp.report.readers (tars in memory with webdataset's reader: nothing is extracted, no member path is opened).
"""

from __future__ import annotations

import json
import tarfile
from collections import Counter
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from dlfp.layout import DATA_FOLDERS, INDEX_NAME, RECEIPT_NAME
from dlfp.report import Page, PageContext, register
from dlfp.report.plots import decode_thumbnail, draw_annotations, flatten_scalars, histogram_grid, image_uri
from dlfp.report.readers import (
    StageInputs,
    Table,
    contained,
    iter_tar_samples,
    read_csv,
    read_json,
    read_jsonl,
    receipt_view,
    safe_image_path,
    split_presets,
)
from dlfp.shards.format import TEST_SPLIT, VAL_SPLIT

DATA_STAGES = ("acquire", "align", "shard", "degrade")  # the stages this page covers, in order
GRID_THUMB_PX = 128
PAIR_THUMB_PX = 160
ANNOTATED_IN_GRID = 4  # the first few grid tiles show landmarks and boxes
PAIR_CAPTION_KEYS = ("kernel", "sigma_x", "sigma_y", "scale", "noise_sigma", "jpeg_quality", "grey", "gray")


@dataclass
class RejectsView:
    stage: str
    present: bool
    by_reason: list[tuple[str, int]] = field(default_factory=list)
    table: Table | None = None
    carried: int = 0  # rows of earlier stages repeated in this stage's cumulative rejects.csv


@dataclass
class Tile:
    sample_id: str
    caption: list[str]
    uri: str | None
    annotated: bool = False
    problem: str | None = None


@dataclass
class PresetView:
    name: str
    count: int | None
    pairs: list[tuple[Tile, Tile]]
    histogram: str | None
    ranges: list[tuple[str, str]]
    logged: int
    errors: list[str] = field(default_factory=list)
    scaling: str = ""


def _stage_inputs(data_dir: Path, stage: str) -> StageInputs:
    folder = data_dir / DATA_FOLDERS[stage]
    inputs = StageInputs(stage, folder, str(folder), folder.is_dir())
    if inputs.ran:
        receipt = read_json(folder / RECEIPT_NAME, inputs.errors)
        inputs.receipt = receipt if isinstance(receipt, dict) else None
        if inputs.receipt is None and not inputs.errors:
            inputs.errors.append("receipt.json missing: the stage may not have finished")
    return inputs


# ---------------------------------------------------------------------------------------------- sections
def _rejects(inputs: StageInputs) -> RejectsView:
    table = read_csv(inputs.folder / "rejects.csv", inputs.errors) if inputs.ran else None
    if table is None:
        return RejectsView(inputs.stage, False)
    total = len(table.rows)
    if "stage" in table.header:  # align's rejects.csv is cumulative: keep this stage's rows only
        stage_column = table.header.index("stage")
        table = Table(table.header, [row for row in table.rows
                                     if stage_column >= len(row) or row[stage_column] in ("", inputs.stage)])
    column = table.header.index("reason") if "reason" in table.header else None
    reasons = Counter(row[column] if column is not None and column < len(row) else "(no reason)"
                      for row in table.rows)
    by_reason = sorted(reasons.items(), key=lambda item: (-item[1], item[0]))
    return RejectsView(inputs.stage, True, by_reason, table, carried=total - len(table.rows))


def _alignment_counts(meta: list[dict] | None) -> dict[str, int] | None:
    if meta is None:
        return None
    return dict(sorted(Counter(str(row.get("alignment", "unknown")) for row in meta).items()))


def _grid(aligned: StageInputs, meta: list[dict] | None, count: int) -> list[Tile]:
    if meta is None:
        return []
    chosen = sorted(meta, key=lambda row: str(row.get("id", "")))[:count]
    tiles = []
    for position, row in enumerate(chosen):
        sample_id = str(row.get("id", ""))
        licence = row.get("licence") or "licence unknown"
        caption = [f"{row.get('alignment', '?')} · {licence}", str(row.get("source") or "")]
        path = safe_image_path(aligned.folder / "images", sample_id)
        if path is None:
            problem = "id is not a plain file name; image not read"
            tiles.append(Tile(sample_id, caption, None, problem=problem))
            continue
        try:
            decoded = decode_thumbnail(path.read_bytes(), GRID_THUMB_PX)
        except OSError:
            decoded = None
        if decoded is None:
            tiles.append(Tile(sample_id, caption, None, problem="image missing or unreadable"))
            continue
        image, scale = decoded
        annotated = position < ANNOTATED_IN_GRID
        if annotated:
            image = draw_annotations(image, scale, row.get("landmarks"), row.get("boxes"))
        tiles.append(Tile(sample_id, caption, image_uri(image, "JPEG"), annotated=annotated))
    return tiles


def _pair_tiles(key: str, sample: Mapping[str, bytes], meta: Mapping) -> tuple[Tile, Tile]:
    degradation = flatten_scalars(meta.get("degradation", {}))
    details = [f"{name}={degradation[name]:.3g}" if isinstance(degradation[name], float) else
               f"{name}={degradation[name]}" for name in PAIR_CAPTION_KEYS if name in degradation]
    sample_id = str(meta.get("id", key))
    tiles = []
    for extension, label in (("lq.png", "LQ"), ("gt.png", "GT")):
        decoded = decode_thumbnail(sample[extension], PAIR_THUMB_PX) if extension in sample else None
        caption = [label, f"seed {meta.get('sample_seed', '?')}"] + (details if label == "LQ" else [])
        uri = image_uri(decoded[0], "PNG") if decoded else None
        tiles.append(Tile(sample_id, caption, uri, problem=None if uri else "image missing or unreadable"))
    return tiles[0], tiles[1]


def _preset(pairs: StageInputs, name: str, entry: Mapping, per_preset: int) -> PresetView:
    errors: list[str] = []
    logged: list[dict] = []
    shown: list[tuple[Tile, Tile]] = []
    for record in entry.get("shards", []) if isinstance(entry.get("shards"), list) else []:
        path = contained(pairs.folder, str(record.get("path", ""))) if isinstance(record, Mapping) else None
        if path is None or not path.is_file():
            errors.append(f"shard {record.get('path') if isinstance(record, Mapping) else record!r} "
                          "is missing or lies outside the pairs folder")
            continue
        try:
            for key, sample in iter_tar_samples(path, lambda: len(shown) < per_preset):
                try:
                    meta = json.loads(sample.get("json", b"{}"))
                except (json.JSONDecodeError, UnicodeDecodeError):
                    errors.append(f"{key}: json member unreadable")
                    continue
                meta = meta if isinstance(meta, dict) else {}
                logged.append(flatten_scalars(meta.get("degradation", {})))
                if len(shown) < per_preset:
                    shown.append(_pair_tiles(key, sample, meta))
        except (tarfile.TarError, OSError) as error:
            errors.append(f"{record.get('path')}: unreadable tar ({error})")
    params = entry.get("params") if isinstance(entry.get("params"), Mapping) else {}
    ranges = [(key, json.dumps(value)) for key, value in sorted(params.items())]
    count = entry.get("count") if isinstance(entry.get("count"), int) else None
    histogram = histogram_grid(logged, f"preset {name}: logged degradation parameters") if logged else None
    return PresetView(name, count, shown, histogram, ranges, len(logged), errors,
                      scaling_statement(entry.get("size_scaling"), logged))


def scaling_statement(scaling: object, logged: list[dict]) -> str:
    """Whether the preset's ranges were scaled to the data's face size (index.json's size_scaling), and how."""
    if not isinstance(scaling, Mapping):
        return "Size scaling: not recorded in the pairs index."
    reference, size, scale = scaling.get("reference_size"), scaling.get("data_size"), scaling.get("scale")
    if not isinstance(scale, int | float) or isinstance(scale, bool):
        text = f"Ranges used as given at {size} px: not scaled (the preset names no reference size)."
    elif scale == 1:
        text = f"Ranges defined at {reference} px, the data's size: not scaled."
    else:
        text = (f"Ranges defined at {reference} px, scaled by {size}/{reference} = {scale:g}: blur sigma and "
                f"blur kernel radius times {scale:g}, downscale factor times {scale:g}"
                f"{' (floored at 1)' if scale < 1 else ''}; noise sigma, JPEG quality and the colour steps are "
                "not scaled (they act per pixel on intensities). The logged values below are the applied ones.")
    other = sorted({str(entry.get("size_scale")) for entry in logged if "size_scale" in entry
                    and entry.get("size_scale") != scale})
    if other:
        text += f" Some pairs logged another scale (a GT of another size): {', '.join(other)}."
    return text


def _presets(pairs: StageInputs, index: object, per_preset: int) -> list[PresetView]:
    """The test pairs are shown (the reported figures come from them); the val pairs are counted."""
    presets = split_presets(index, TEST_SPLIT)
    if presets is None:
        if pairs.ran:
            pairs.errors.append("index.json missing or has no 'test' presets")
        return []
    return [_preset(pairs, str(name), entry if isinstance(entry, Mapping) else {}, per_preset)
            for name, entry in presets.items()]


def _splits(shards: StageInputs, index: object) -> list[tuple[str, int | None, int]] | None:
    splits = index.get("splits") if isinstance(index, Mapping) else None
    if not isinstance(splits, Mapping):
        if shards.ran:
            shards.errors.append("index.json missing or has no 'splits'")
        return None
    rows = []
    for split, entry in splits.items():
        entry = entry if isinstance(entry, Mapping) else {}
        count = entry.get("count") if isinstance(entry.get("count"), int) else None
        rows.append((str(split), count, len(entry.get("shards", []) or [])))
    return rows


def _counts(raw_manifest: Table | None, rejects: dict[str, RejectsView], alignment: dict[str, int] | None,
            splits: list | None, presets: list[PresetView], val_presets: Mapping | None,
            stages: dict[str, StageInputs]) -> list[tuple]:
    """(stage, what, value or None when the stage has not run) in pipeline order."""
    def rows_or_none(view: RejectsView) -> int | None:
        return len(view.table.rows) if view.table is not None else (0 if stages[view.stage].ran else None)

    rows: list[tuple] = [("acquire", "images acquired", len(raw_manifest.rows) if raw_manifest else None),
                         ("acquire", "rejected at acquire", rows_or_none(rejects["acquire"])),
                         ("align", "aligned", sum(alignment.values()) if alignment is not None else None)]
    for kind, number in (alignment or {}).items():
        rows.append(("align", f"aligned: {kind}", number))
    rows.append(("align", "rejected at align", rows_or_none(rejects["align"])))
    if splits is None:
        rows.append(("shard", "per split", None))
    rows.extend(("shard", f"split {split}", count) for split, count, _ in splits or [])
    if not presets:
        rows.append(("degrade", "pairs per preset", None))
    rows.extend(("degrade", f"test pairs: {preset.name}", preset.count) for preset in presets)
    rows.extend(("degrade", f"val pairs: {name}", entry.get("count") if isinstance(entry, Mapping) else None)
                for name, entry in (val_presets or {}).items())
    return rows


@dataclass
class Provenance:
    """Which way the faces came (a local folder or a download), from the acquire receipt's inputs."""

    way: str
    details: list[tuple[str, str]] = field(default_factory=list)


def _provenance(raw: StageInputs) -> Provenance | None:
    inputs = (raw.receipt or {}).get("inputs")
    if not isinstance(inputs, Mapping):
        return None
    source = str(inputs.get("source", ""))
    details = [("chosen by", str(inputs["chosen_by"]))] if inputs.get("chosen_by") else []
    if source == "folder":
        details.insert(0, (str(inputs.get("kind", "folder")), str(inputs.get("path", ""))))
        return Provenance("local folder", details)
    if source == "ffhq-parquet-row-groups":
        files = inputs.get("files") if isinstance(inputs.get("files"), Mapping) else {}
        details.append(("mirror", str(inputs.get("url_template", ""))))
        details.extend((f"file {url}", f"{(info or {}).get('size')} bytes, footer sha256 "
                        f"{(info or {}).get('footer_sha256')}") for url, info in files.items()
                       if isinstance(info, Mapping))
        groups = inputs.get("row_groups") if isinstance(inputs.get("row_groups"), list) else []
        details.extend((f"row group {group.get('row_group')} of {group.get('url')}", f"sha256 {group.get('sha256')}")
                       for group in groups if isinstance(group, Mapping))
        return Provenance("downloaded: FFHQ parquet mirror, only the row groups holding the requested ids", details)
    details.extend((str(key), json.dumps(value)) for key, value in inputs.items()
                   if key in ("variant", "url_template", "metadata_md5", "shards"))
    return Provenance(f"downloaded: {source or 'unknown source'}", details)


def render(ctx: PageContext) -> str:
    """Gather every data stage's artifacts and render data.html."""
    stages = {stage: _stage_inputs(ctx.data_dir, stage) for stage in DATA_STAGES}
    raw, aligned, shards, pairs = (stages[name] for name in DATA_STAGES)
    manifest = read_csv(raw.folder / "manifest.csv", raw.errors) if raw.ran else None
    rejects = {name: _rejects(stages[name]) for name in ("acquire", "align")}
    meta = read_jsonl(aligned.folder / "meta.jsonl", aligned.errors) if aligned.ran else None
    shard_index = read_json(shards.folder / INDEX_NAME, shards.errors) if shards.ran else None
    pairs_index = read_json(pairs.folder / INDEX_NAME, pairs.errors) if pairs.ran else None
    alignment = _alignment_counts(meta)
    splits = _splits(shards, shard_index)
    presets = _presets(pairs, pairs_index, ctx.params.report.pairs_per_preset)
    return ctx.render(
        "data.html", current=PAGE.filename, title=PAGE.title,
        stages=list(stages.values()),
        ran={name: inputs.ran for name, inputs in stages.items()},
        labels={name: inputs.label for name, inputs in stages.items()},
        counts=_counts(manifest, rejects, alignment, splits, presets, split_presets(pairs_index, VAL_SPLIT), stages),
        rejects=list(rejects.values()),
        grid=_grid(aligned, meta, ctx.params.report.samples_in_grid),
        annotated_in_grid=ANNOTATED_IN_GRID,
        split_rule=shard_index.get("split_rule") if isinstance(shard_index, Mapping) else None,
        splits=splits, presets=presets,
        receipts={name: receipt_view(inputs.receipt) for name, inputs in stages.items()},
        provenance=_provenance(raw),
    )


PAGE = register(Page(slug="data", title="Data", filename="data.html",
                     stages=("acquire", "align", "shard", "degrade"), render=render))
