"""The acquire stage: folder/zip/tar sources with every kind of bad file, FFHQ metadata + mirror, parquet."""

from __future__ import annotations

import csv
import hashlib
import io
import json
import struct
import tarfile
import zipfile
import zlib
from pathlib import Path

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import numpy as np
import pytest
from _dlfp_test_faces import FACES  # tests/_faces.py, registered by conftest.py
from PIL import Image

from dlfp.cli import main
from dlfp.ffhq import ffhq_id_from_name
from dlfp.io.download import DownloadError, DriveQuotaError
from dlfp.params import load_params, parse_params
from dlfp.stages import acquire
from dlfp.stages.acquire.local import assign_ids


# ------------------------------------------------------------------------------------------- helpers
def _image(seed: int, size: tuple[int, int] = (40, 32)) -> np.ndarray:
    return np.random.default_rng(seed).integers(0, 256, (size[1], size[0], 3), dtype=np.uint8)


def _encode(pixels: np.ndarray, fmt: str = "PNG", mode: str | None = None) -> bytes:
    image = Image.fromarray(pixels)
    if mode:
        image = image.convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format=fmt)
    return buffer.getvalue()


def _huge_header_png() -> bytes:
    """A valid small PNG whose IHDR (with a correct CRC) claims 12000x12000."""
    png = _encode(_image(9))
    ihdr = struct.pack(">II", 12000, 12000) + png[24:29]
    chunk = struct.pack(">I", 13) + b"IHDR" + ihdr + struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return png[:8] + chunk + png[33:]


def _params(tmp_path: Path, **data):
    data.setdefault("cache_dir", str(tmp_path / "cache"))
    data.setdefault("max_pixels", 1_000_000)
    return parse_params({"data": data})


def _read_csv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def _tree_bytes(folder: Path) -> dict[str, bytes]:
    return {path.relative_to(folder).as_posix(): path.read_bytes() for path in sorted(folder.rglob("*"))
            if path.is_file()}


def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def _bad_files() -> dict[str, bytes]:
    """Every kind of file the stage must reject, by name."""
    truncated = _encode(_image(5, (128, 128)), "JPEG")
    corrupt = bytearray(_encode(_image(6)))
    corrupt[corrupt.index(b"IDAT") + 10] ^= 0xFF
    return {
        "empty.png": b"",
        "notes.txt": b"just some text\n",
        "fake.jpg": b"<html><body>not a jpeg</body></html>",
        "truncated.jpg": truncated[: len(truncated) // 2],
        "corrupt.png": bytes(corrupt),
        "tiny.png": _encode(_image(7, (8, 8))),
        "huge.png": _huge_header_png(),
    }


@pytest.fixture
def messy_folder(tmp_path: Path) -> Path:
    folder = tmp_path / "in"
    (folder / "sub").mkdir(parents=True)
    (folder / "good_rgb.png").write_bytes(_encode(_image(1)))
    (folder / "sub" / "grey photo.v2.png").write_bytes(_encode(_image(2), mode="L"))
    (folder / "cmyk.jpg").write_bytes(_encode(_image(3), "JPEG", mode="CMYK"))
    (folder / "ffhq256_00042.png").write_bytes(_encode(_image(4)))
    for name, data in _bad_files().items():
        (folder / name).write_bytes(data)
    (folder / "dangling.png").symlink_to(folder / "does-not-exist.png")
    (folder / "manifest.csv").write_text("file,licence\ngood_rgb.png,CC BY 2.0\ncmyk.jpg,CC0\n")
    return folder


# ------------------------------------------------------------------------------------- folder source
def test_folder_source_writes_good_images_and_names_every_reject(tmp_path: Path, messy_folder: Path) -> None:
    out = tmp_path / "raw"
    summary = acquire.run(_params(tmp_path, folder=str(messy_folder)), out_dir=out)

    manifest = {row["id"]: row for row in _read_csv(out / "manifest.csv")}
    assert list(manifest) == ["cmyk", "ffhq256_00042", "good_rgb", "grey_photo_v2"]
    assert manifest["good_rgb"]["licence"] == "CC BY 2.0" and manifest["cmyk"]["licence"] == "CC0"
    assert manifest["grey_photo_v2"]["source"] == "sub/grey photo.v2.png"
    assert manifest["ffhq256_00042"]["ffhq_id"] == "42" and manifest["good_rgb"]["ffhq_id"] == ""
    assert "CMYK" in manifest["cmyk"]["note"] and "greyscale" in manifest["grey_photo_v2"]["note"]
    source_bytes = (messy_folder / "good_rgb.png").read_bytes()
    assert manifest["good_rgb"]["md5"] == _md5(source_bytes)
    assert manifest["good_rgb"]["size"] == str(len(source_bytes))
    assert (manifest["good_rgb"]["width"], manifest["good_rgb"]["height"]) == ("40", "32")

    images = sorted(path.name for path in (out / "images").iterdir())
    assert images == [f"{identifier}.png" for identifier in manifest]
    written = np.asarray(Image.open(out / "images" / "good_rgb.png"))
    np.testing.assert_array_equal(written, _image(1))

    rejects = {row["source"]: row for row in _read_csv(out / "rejects.csv")}
    expected = {
        "empty.png": "empty file", "notes.txt": "not an image", "fake.jpg": "not an image",
        "truncated.jpg": "truncated or corrupt", "corrupt.png": "truncated or corrupt",
        "tiny.png": "too small", "huge.png": "too large", "dangling.png": "broken symlink",
    }
    assert {source: row["reason"] for source, row in rejects.items()} == expected
    assert all(row["stage"] == "acquire" and row["detail"] for row in rejects.values())
    assert "limit 1000000" in rejects["huge.png"]["detail"]
    assert "HTML" in rejects["fake.jpg"]["detail"]

    receipt = json.loads((out / "receipt.json").read_text())
    assert receipt["stage"] == "acquire"
    assert receipt["counts"]["written"] == 4 and receipt["counts"]["rejected"] == 8
    assert summary["written"] == 4 and summary["rejected"] == 8 and summary["found"] == 12
    assert not (tmp_path / "raw.partial").exists()


def test_same_input_gives_byte_identical_output(tmp_path: Path, messy_folder: Path) -> None:
    params = _params(tmp_path, folder=str(messy_folder))
    acquire.run(params, out_dir=tmp_path / "first")
    acquire.run(params, out_dir=tmp_path / "second")
    assert _tree_bytes(tmp_path / "first") == _tree_bytes(tmp_path / "second")


def test_ids_are_sanitised_and_collisions_resolved_deterministically() -> None:
    paths = ["a.png", "a.jpg", "b/a.png", "my photo.v2.png", "ffhq1024_00007.png", "00012.jpg",
             "celeb1024_ilvr_00000.png", "ffhq256_99999.png"]
    ids = assign_ids(paths)
    assert ids == assign_ids(list(reversed(paths)))
    assert ids["a.jpg"] == ("a", "")  # first by relative path keeps the plain id
    assert ids["a.png"][0].startswith("a_") and ids["b/a.png"][0].startswith("a_")
    assert ids["a.png"][0] != ids["b/a.png"][0] and "collided with a.jpg" in ids["a.png"][1]
    assert ids["my photo.v2.png"][0] == "my_photo_v2"
    assert all("." not in identifier for identifier, _ in ids.values())
    ffhq = {path: ffhq_id_from_name(ids[path][0]) for path in paths[4:]}
    assert ffhq == {"ffhq1024_00007.png": 7, "00012.jpg": 12, "celeb1024_ilvr_00000.png": None,
                    "ffhq256_99999.png": None}


def test_count_keeps_the_first_n_in_id_order(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    for name in ["e", "c", "a", "d", "b"]:
        (folder / f"{name}.png").write_bytes(_encode(_image(ord(name))))
    out = tmp_path / "raw"
    acquire.run(_params(tmp_path, folder=str(folder), count=2), out_dir=out)
    assert [row["id"] for row in _read_csv(out / "manifest.csv")] == ["a", "b"]


def _archive_members() -> dict[str, bytes]:
    return {"faces/one.png": _encode(_image(11)), "faces/two.jpg": _encode(_image(12), "JPEG"),
            "../evil.png": _encode(_image(13)), "/abs.png": _encode(_image(14)),
            "faces/../../escape.png": _encode(_image(15)), "faces/broken.png": b"\x89PNG\r\n"}


def _check_archive_output(tmp_path: Path, out: Path, archive_name: str, extra: dict[str, str]) -> None:
    manifest = _read_csv(out / "manifest.csv")
    assert [row["id"] for row in manifest] == ["one", "two"]
    assert manifest[0]["source"] == "faces/one.png"
    rejects = {row["source"]: row["reason"] for row in _read_csv(out / "rejects.csv")}
    assert rejects == {
        f"{archive_name}:../evil.png": "unsafe archive path",
        f"{archive_name}:/abs.png": "unsafe archive path",
        f"{archive_name}:faces/../../escape.png": "unsafe archive path",
        "faces/broken.png": "truncated or corrupt",
        **extra,
    }
    assert sorted(path.name for path in (out / "images").iterdir()) == ["one.png", "two.png"]
    for escaped in ("evil.png", "abs.png", "escape.png"):
        assert not list(tmp_path.rglob(escaped)), f"{escaped} was written"
    assert not Path("/abs.png").exists()


def test_zip_source_rejects_unsafe_members(tmp_path: Path) -> None:
    archive = tmp_path / "faces.zip"
    with zipfile.ZipFile(archive, "w") as handle:
        for name, data in _archive_members().items():
            handle.writestr(zipfile.ZipInfo(name), data)  # ZipInfo keeps '..' and '/' as given
        link = zipfile.ZipInfo("faces/link.png")
        link.external_attr = (0o120777 << 16)
        handle.writestr(link, "/etc/passwd")
    out = tmp_path / "raw"
    acquire.run(_params(tmp_path, folder=str(archive)), out_dir=out)
    _check_archive_output(tmp_path, out, "faces.zip", {"faces.zip:faces/link.png": "link member"})


def test_tar_source_rejects_unsafe_members_links_and_devices(tmp_path: Path) -> None:
    archive = tmp_path / "faces.tar.gz"
    with tarfile.open(archive, "w:gz") as handle:
        for name, data in _archive_members().items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            handle.addfile(info, io.BytesIO(data))
        link = tarfile.TarInfo("faces/link.png")
        link.type, link.linkname = tarfile.SYMTYPE, "/etc/passwd"
        handle.addfile(link)
        device = tarfile.TarInfo("faces/dev.png")
        device.type = tarfile.CHRTYPE
        handle.addfile(device)
    out = tmp_path / "raw"
    acquire.run(_params(tmp_path, folder=str(archive)), out_dir=out)
    _check_archive_output(tmp_path, out, "faces.tar.gz", {"faces.tar.gz:faces/link.png": "link member",
                                                          "faces.tar.gz:faces/dev.png": "special member"})


def test_nothing_usable_is_an_error_naming_the_reasons(tmp_path: Path) -> None:
    folder = tmp_path / "in"
    folder.mkdir()
    (folder / "a.png").write_bytes(b"")
    with pytest.raises(RuntimeError, match="no usable image.*empty file"):
        acquire.run(_params(tmp_path, folder=str(folder)), out_dir=tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


def test_missing_folder_is_named(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError, match="nowhere"):
        acquire.run(_params(tmp_path, folder=str(tmp_path / "nowhere")), out_dir=tmp_path / "raw")


# --------------------------------------------------------------------------------------- FFHQ source
def _serve_ffhq(server, ids: list[int], bad_md5: int | None = None) -> dict:
    """Metadata JSON in FFHQ's layout plus one thumbnail PNG per id, served from the local server."""
    metadata = {}
    for ffhq_id in ids:
        pixels = _image(100 + ffhq_id, (128, 128))
        png = _encode(pixels)
        path = f"thumbnails128x128/{ffhq_id // 1000 * 1000:05d}/{ffhq_id:05d}.png"
        server.serve(f"/{path}", png, content_type="image/png")
        server.serve(f"/mirror/thumbs/{ffhq_id:05d}.png", png, content_type="image/png")
        spec = {"file_url": server.url(path), "file_path": path, "file_size": len(png),
                "file_md5": "0" * 32 if ffhq_id == bad_md5 else _md5(png), "pixel_size": [128, 128],
                "pixel_md5": _md5(pixels.tobytes())}
        metadata[str(ffhq_id)] = {
            "category": "training",
            "metadata": {"photo_url": f"https://www.flickr.com/photos/x/{ffhq_id}/", "photo_title": "t",
                         "author": "a", "country": "", "license": f"Licence {ffhq_id}",
                         "license_url": "https://creativecommons.org/licenses/by/2.0/",
                         "date_uploaded": "2010-01-01", "date_crawled": "2018-10-10"},
            "image": {**spec, "file_url": "https://drive.invalid/unused"},
            "thumbnail": spec,
        }
    blob = json.dumps(metadata).encode()
    server.serve("/ffhq-dataset-v2.json", blob, content_type="application/json")
    return {"metadata_url": server.url("ffhq-dataset-v2.json"), "metadata_md5": _md5(blob),
            "retries": 1, "backoff_s": 0.0, "timeout_s": 10}


def test_ffhq_source_end_to_end(server, tmp_path: Path) -> None:
    ffhq = _serve_ffhq(server, [0, 1, 2, 3, 7], bad_md5=2)
    out = tmp_path / "raw"
    params = _params(tmp_path, source="ffhq", count=4, ffhq=ffhq)
    summary = acquire.run(params, out_dir=out)

    manifest = _read_csv(out / "manifest.csv")
    assert [row["id"] for row in manifest] == ["00000", "00001", "00003"]
    assert [row["ffhq_id"] for row in manifest] == ["0", "1", "3"]
    assert [row["licence"] for row in manifest] == ["Licence 0", "Licence 1", "Licence 3"]
    first = manifest[0]
    served = server.routes["/thumbnails128x128/00000/00000.png"].body
    assert first["source"] == server.url("thumbnails128x128/00000/00000.png")
    assert first["md5"] == _md5(served) and (first["width"], first["height"]) == ("128", "128")
    written = np.asarray(Image.open(out / "images" / "00000.png"))
    np.testing.assert_array_equal(written, _image(100, (128, 128)))
    rejects = _read_csv(out / "rejects.csv")
    assert [(row["id"], row["reason"]) for row in rejects] == [("00002", "checksum mismatch")]
    assert "expected 00000000000000000000000000000000" in rejects[0]["detail"]
    assert server.count("thumbnails128x128/07000/07000.png") == 0  # beyond data.count: never fetched
    assert summary["written"] == 3

    requests_before = len(server.requests)
    acquire.run(params, out_dir=tmp_path / "again")
    new = [seen.path for seen in server.requests[requests_before:]]
    assert new == ["/thumbnails128x128/00000/00002.png"]  # only the file that failed its checksum
    assert _tree_bytes(out) == _tree_bytes(tmp_path / "again")


def test_ffhq_mirror_template_and_id_range(server, tmp_path: Path) -> None:
    ffhq = _serve_ffhq(server, [0, 1, 2, 3])
    ffhq.update(url_template=server.url("mirror/{variant}/{id:05d}.png"), id_range=[1, 3])
    out = tmp_path / "raw"
    acquire.run(_params(tmp_path, source="ffhq", ffhq=ffhq), out_dir=out)
    manifest = _read_csv(out / "manifest.csv")
    assert [row["source"] for row in manifest] == [server.url("mirror/thumbs/00001.png"),
                                                    server.url("mirror/thumbs/00002.png")]
    assert not any("thumbnails128x128" in seen.path for seen in server.requests)


def test_ffhq_drive_quota_stops_the_stage_with_advice(server, tmp_path: Path) -> None:
    page = b"<html><body>Too many users have viewed or downloaded this file recently.</body></html>"
    server.serve("/uc", page, content_type="text/html")
    params = _params(tmp_path, source="ffhq", ffhq={"metadata_url": server.url("uc?id=x"), "retries": 0})
    with pytest.raises(DriveQuotaError, match="url_template"):
        acquire.run(params, out_dir=tmp_path / "raw")
    assert not (tmp_path / "raw").exists()


# ------------------------------------------------------------------------------------ parquet mirror
def _write_shards(tmp_path: Path, server, rows_per_shard: int, shards: int, with_ids: bool) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    for index in range(shards):
        ids = list(range(index * rows_per_shard, (index + 1) * rows_per_shard))
        images = [{"bytes": _encode(_image(200 + i)), "path": f"{i:05d}.png"} for i in ids]
        columns = {"image": images} if not with_ids else {"image": [item["bytes"] for item in images],
                                                          "ffhq_id": [f"{i:05d}" for i in ids]}
        path = tmp_path / f"train-{index:05d}.parquet"
        pq.write_table(pa.table(columns), path)
        server.serve(f"/pq/train-{index:05d}.parquet", path.read_bytes())


def test_parquet_mirror_fetches_only_the_needed_shard(server, tmp_path: Path) -> None:
    _write_shards(tmp_path, server, rows_per_shard=3, shards=2, with_ids=False)
    mirror = {"url_template": server.url("pq/train-{index:05d}.parquet"), "num_shards": 2,
              "rows_per_shard": 3}
    ffhq = {"parquet": mirror, "id_range": [3, 5], "retries": 0}
    out = tmp_path / "raw"
    acquire.run(_params(tmp_path, source="ffhq", ffhq=ffhq), out_dir=out)
    assert server.count("pq/train-00000.parquet") == 0 and server.count("pq/train-00001.parquet") == 1
    manifest = _read_csv(out / "manifest.csv")
    assert [(row["id"], row["ffhq_id"]) for row in manifest] == [("00003", "3"), ("00004", "4")]
    assert manifest[0]["source"].endswith("train-00001.parquet#row=0")
    np.testing.assert_array_equal(np.asarray(Image.open(out / "images" / "00004.png")), _image(204))


def test_parquet_mirror_with_id_column_and_count(server, tmp_path: Path) -> None:
    _write_shards(tmp_path, server, rows_per_shard=3, shards=2, with_ids=True)
    mirror = {"url_template": server.url("pq/train-{index:05d}.parquet"), "num_shards": 2,
              "id_column": "ffhq_id"}
    out = tmp_path / "raw"
    params = _params(tmp_path, source="ffhq", count=2, ffhq={"parquet": mirror, "retries": 0})
    acquire.run(params, out_dir=out)
    assert [row["id"] for row in _read_csv(out / "manifest.csv")] == ["00000", "00001"]
    assert server.count("pq/train-00001.parquet") == 0  # all wanted ids were in the first shard


def test_parquet_rows_of_a_declared_variant_are_checked_against_the_metadata_pixel_md5(server, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    pixels = {ffhq_id: _image(300 + ffhq_id, (128, 128)) for ffhq_id in range(3)}
    images = [{"bytes": _encode(pixels[i]), "path": f"{i:05d}.png"} for i in range(3)]
    pq.write_table(pa.table({"image": images}), tmp_path / "train-00000.parquet")
    server.serve("/pq/train-00000.parquet", (tmp_path / "train-00000.parquet").read_bytes())
    metadata = {str(i): {"thumbnail": {"file_path": f"t/{i:05d}.png", "pixel_md5": _md5(pixels[i].tobytes())
                                       if i != 1 else "0" * 32}} for i in range(3)}
    blob = json.dumps(metadata).encode()
    server.serve("/meta.json", blob, content_type="application/json")
    mirror = {"url_template": server.url("pq/train-{index:05d}.parquet"), "num_shards": 1, "variant": "thumbs"}
    ffhq = {"parquet": mirror, "retries": 0, "metadata_url": server.url("meta.json"), "metadata_md5": _md5(blob),
            "metadata_size": len(blob)}
    out = tmp_path / "raw"
    acquire.run(_params(tmp_path, source="ffhq", ffhq=ffhq), out_dir=out)
    assert [row["id"] for row in _read_csv(out / "manifest.csv")] == ["00000", "00002"]
    assert [(row["id"], row["reason"]) for row in _read_csv(out / "rejects.csv")] == [("00001", "pixel md5 mismatch")]


# ------------------------------------------------------------------------------------------ real data
def _linked_faces(tmp_path: Path, number: int) -> Path:
    folder = tmp_path / "faces"
    folder.mkdir()
    names = sorted(path.name for path in FACES.iterdir())
    small_non_ffhq = [name for name in names if name.startswith("celeb256_")][:2]  # 256 px PNGs, not FFHQ
    picks = small_non_ffhq + [name for name in names if name.startswith("ffhq256_")][: number - 2]
    for name in picks:
        (folder / name).symlink_to(FACES / name)
    return folder


@prereq.needs(FACES.is_dir(), "shared faces not present")
def test_real_faces_via_cli_and_workers_do_not_change_bytes(tmp_path: Path) -> None:
    folder = _linked_faces(tmp_path, 20)
    params_file = tmp_path / "params.yaml"
    params_file.write_text(f"data:\n  folder: {folder}\n  cache_dir: {tmp_path / 'cache'}\n")
    assert main(["--params", str(params_file), "acquire", "--out", str(tmp_path / "raw")]) == 0
    manifest = _read_csv(tmp_path / "raw" / "manifest.csv")
    assert len(manifest) == 20 and not _read_csv(tmp_path / "raw" / "rejects.csv")
    ffhq_rows = [row for row in manifest if row["id"].startswith("ffhq256_")]
    assert ffhq_rows and all(row["ffhq_id"] == str(int(row["id"][-5:])) for row in ffhq_rows)
    assert all((row["width"], row["height"]) == ("256", "256") for row in ffhq_rows)
    celeb = [row for row in manifest if row["id"].startswith("celeb")]
    assert len(celeb) == 2 and all(row["ffhq_id"] == "" for row in celeb)

    acquire.run(load_params(params_file), out_dir=tmp_path / "pooled", workers=2)
    assert _tree_bytes(tmp_path / "raw") == _tree_bytes(tmp_path / "pooled")


# ---------------------------------------------------------------------------------------- source auto
FACE_ROWS = 8  # per mirror shard
ROWS_PER_GROUP = 2


def _real_faces(number: int) -> list[tuple[int, bytes]]:
    """(FFHQ id, original JPEG bytes) of the first real FFHQ faces in ../shared/faces."""
    files = sorted(FACES.glob("ffhq256_0*.jpg"))[:number]
    return [(int(path.stem[-5:]), path.read_bytes()) for path in files]


def _serve_mirror(server, tmp_path: Path, shards: int = 2) -> list[bytes]:
    """Parquet shards in the mirror's layout (an `image` struct of bytes + file name, rows in id order, small
    row groups), built from real faces and served at /pq/NNNN.parquet; returns each shard's bytes."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    faces = _real_faces(FACE_ROWS * shards)
    served = []
    for index in range(shards):
        rows = faces[index * FACE_ROWS:(index + 1) * FACE_ROWS]
        table = pa.table({"image": [{"bytes": data, "path": f"{ffhq_id:05d}.jpg"} for ffhq_id, data in rows]})
        path = tmp_path / f"{index:04d}.parquet"
        pq.write_table(table, path, row_group_size=ROWS_PER_GROUP, write_page_checksum=True)
        served.append(path.read_bytes())
        server.serve(f"/pq/{index:04d}.parquet", served[-1])
    return served


def _auto_params_file(tmp_path: Path, url_template: str, count: int | None = 3, **ffhq) -> Path:
    import yaml

    data = {"source": "auto", "folder": str(tmp_path / "nowhere"), "count": count,
            "cache_dir": str(tmp_path / "cache"), "max_pixels": 1_000_000,
            "ffhq": {"retries": 1, "backoff_s": 0.0, "timeout_s": 10, **ffhq},
            "fallback": {"parquet": {"url_template": url_template, "num_shards": 2, "rows_per_shard": FACE_ROWS,
                                     "fetch": "row_groups"}, "probe_timeout_s": 5}}
    path = tmp_path / "params.yaml"
    path.write_text(yaml.safe_dump({"data": data}), encoding="utf-8")
    return path


def _row_group_spans(shard: bytes) -> list[tuple[int, int]]:
    import pyarrow.parquet as pq

    metadata = pq.ParquetFile(io.BytesIO(shard)).metadata
    spans = []
    for group in range(metadata.num_row_groups):
        chunks = [metadata.row_group(group).column(column) for column in range(metadata.num_columns)]
        starts = [min(c.data_page_offset, c.dictionary_page_offset or c.data_page_offset) for c in chunks]
        spans.append((min(starts), max(s + c.total_compressed_size for s, c in zip(starts, chunks, strict=True))))
    return spans


def _asked_bytes(server, path: str, size: int) -> list[tuple[int, int]]:
    """[start, stop) of every Range request made for `path`."""
    spans = []
    for seen in server.requests:
        if seen.path == path and seen.range:
            start, _, end = seen.range.removeprefix("bytes=").partition("-")
            spans.append((int(start), int(end) + 1 if end else size))
    return spans


needs_faces = pytest.mark.skipif(not FACES.is_dir(), reason="shared faces not present")


@needs_faces
def test_auto_without_folder_downloads_only_the_needed_row_groups(server, tmp_path: Path, capsys) -> None:
    shards = _serve_mirror(server, tmp_path)
    url = server.url("pq/0000.parquet")
    params_file = _auto_params_file(tmp_path, server.url("pq/{index:04d}.parquet"))
    out = tmp_path / "data" / "raw"
    assert main(["--params", str(params_file), "acquire", "--out", str(out)]) == 0

    announced = [line for line in capsys.readouterr().out.splitlines() if "downloading" in line]
    assert len(announced) == 1
    line = announced[0]
    assert f"data.folder {tmp_path / 'nowhere'} does not exist" in line
    megabytes = sum(stop - start for start, stop in _row_group_spans(shards[0])[:2]) / 1e6
    assert f"3 FFHQ faces (2 parquet row groups, about {megabytes:.1f} MB)" in line and url in line
    assert "to use local faces instead" in line and "set data.folder" in line

    faces = dict(_real_faces(3))
    manifest = _read_csv(out / "manifest.csv")
    assert [(row["id"], row["ffhq_id"]) for row in manifest] == [("00000", "0"), ("00001", "1"), ("00002", "2")]
    assert [row["source"] for row in manifest] == [f"{url}#row={row}" for row in range(3)]
    assert [row["md5"] for row in manifest] == [_md5(faces[i]) for i in range(3)]  # the original JPEG bytes
    for ffhq_id, data in faces.items():
        written = np.asarray(Image.open(out / "images" / f"{ffhq_id:05d}.png"))
        np.testing.assert_array_equal(written, np.asarray(Image.open(io.BytesIO(data)).convert("RGB")))
    # the ids 0..2 live in row groups 0 and 1 of shard 0: nothing of row groups 2, 3 or of shard 1 is fetched
    spans = _row_group_spans(shards[0])
    asked = _asked_bytes(server, "/pq/0000.parquet", len(shards[0]))
    assert asked[0] == (0, 1)  # the size probe
    assert asked[1][1] == len(shards[0])  # the footer (the file's last 64 KiB, as pyarrow reads it)
    assert asked[2:] == [spans[0], spans[1]]  # then exactly the two row groups, each once
    assert server.count("pq/0001.parquet") == 0

    inputs = json.loads((out / "receipt.json").read_text())["inputs"]
    assert inputs["source"] == "ffhq-parquet-row-groups" and "does not exist" in inputs["chosen_by"]
    assert inputs["files"][url]["size"] == len(shards[0])
    assert [(group["row_group"], group["sha256"]) for group in inputs["row_groups"]] == [
        (group, hashlib.sha256(shards[0][start:stop]).hexdigest()) for group, (start, stop) in enumerate(spans[:2])]

    requests_before = len(server.requests)
    assert main(["--params", str(params_file), "acquire", "--out", str(tmp_path / "again")]) == 0
    assert len(server.requests) == requests_before  # every piece came from data.cache_dir
    assert _tree_bytes(out / "images") == _tree_bytes(tmp_path / "again" / "images")
    assert (out / "manifest.csv").read_bytes() == (tmp_path / "again" / "manifest.csv").read_bytes()

    from dlfp.stages import report as report_stage

    report_stage.run(load_params(params_file), data_dir=out.parent, out_dir=tmp_path / "reports",
              models_dir=tmp_path / "models")
    page = (tmp_path / "reports" / "data.html").read_text(encoding="utf-8")
    assert "Where the faces came from" in page and "FFHQ parquet mirror" in page
    assert url in page and inputs["row_groups"][1]["sha256"] in page


@needs_faces
def test_auto_download_resumes_a_dropped_row_group(server, tmp_path: Path) -> None:
    shards = _serve_mirror(server, tmp_path)
    spans = _row_group_spans(shards[0])
    url_template = server.url("pq/{index:04d}.parquet")
    acquire.run(load_params(_auto_params_file(tmp_path, url_template, count=1)), out_dir=tmp_path / "one")
    before = len(server.requests)
    route = server.routes["/pq/0000.parquet"]
    route.drop_after, route.drops_left = 1000, 1  # the next request, for row group 1, breaks after 1000 bytes
    acquire.run(load_params(_auto_params_file(tmp_path, url_template, count=3)), out_dir=tmp_path / "raw")
    asked = [seen.range for seen in server.requests[before:]]
    assert asked == [f"bytes={spans[1][0]}-{spans[1][1] - 1}", f"bytes={spans[1][0] + 1000}-{spans[1][1] - 1}"]
    faces = dict(_real_faces(3))
    assert [row["md5"] for row in _read_csv(tmp_path / "raw" / "manifest.csv")] == [_md5(faces[i]) for i in range(3)]


def _closed_port_url() -> str:
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    return f"http://127.0.0.1:{port}/pq/{{index:04d}}.parquet"  # nothing listens there any more


def test_auto_without_folder_or_network_fails_at_once_naming_both_ways(tmp_path: Path, capsys,
                                                                      monkeypatch) -> None:
    from dlfp.io import download as download_module

    waits: list[float] = []
    monkeypatch.setattr(download_module.time, "sleep", waits.append)
    url_template = _closed_port_url()
    params_file = _auto_params_file(tmp_path, url_template, count=None, retries=5, backoff_s=30.0)
    assert main(["--params", str(params_file), "acquire", "--out", str(tmp_path / "raw")]) == 1
    errors = [line for line in capsys.readouterr().err.splitlines() if "error" in line]
    assert len(errors) == 1
    message = errors[0]
    assert f"data.folder {tmp_path / 'nowhere'} does not exist" in message
    assert f"put face images (a folder, .zip or .tar) at {tmp_path / 'nowhere'}" in message
    assert f"cannot be used: {url_template.format(index=0)}: connection failed" in message
    assert f"allow network access to {url_template.split('/')[2]} (the mirror in data.fallback.parquet)" in message
    assert "1200 faces" in message
    assert waits == []  # no retry loop: a refused connection is final
    assert not (tmp_path / "raw").exists()
    with pytest.raises(acquire.SourceUnavailableError, match="data.folder"):
        acquire.run(load_params(params_file), out_dir=tmp_path / "raw")


@needs_faces
def test_auto_with_the_folder_is_exactly_source_folder(server, tmp_path: Path) -> None:
    folder = _linked_faces(tmp_path, 6)
    common = {"folder": str(folder), "fallback": {"parquet": {"url_template": server.url("pq/{index}.parquet"),
                                                              "num_shards": 1}}}
    acquire.run(_params(tmp_path, source="folder", **common), out_dir=tmp_path / "as-folder")
    acquire.run(_params(tmp_path, source="auto", **common), out_dir=tmp_path / "as-auto")
    as_folder, as_auto = _tree_bytes(tmp_path / "as-folder"), _tree_bytes(tmp_path / "as-auto")
    receipts = [json.loads(tree.pop("receipt.json")) for tree in (as_folder, as_auto)]
    assert as_folder == as_auto and len(as_auto) == 6 + 2  # images, manifest.csv, rejects.csv
    assert receipts[1]["inputs"].pop("chosen_by") == "source auto: data.folder exists"
    assert receipts[0]["inputs"] == receipts[1]["inputs"]
    assert server.requests == []  # the mirror is never contacted when the folder exists


@needs_faces
def test_a_corrupted_row_group_fails_its_page_checksum_and_is_fetched_again(server, tmp_path: Path) -> None:
    shards = _serve_mirror(server, tmp_path)
    start, stop = _row_group_spans(shards[0])[0]
    damaged = bytearray(shards[0])
    damaged[(start + stop) // 2] ^= 0xFF  # inside the first face's page data
    server.serve("/pq/0000.parquet", bytes(damaged))
    params = load_params(_auto_params_file(tmp_path, server.url("pq/{index:04d}.parquet"), count=1))
    with pytest.raises(DownloadError, match="row group 0: the downloaded bytes are unreadable.*CRC"):
        acquire.run(params, out_dir=tmp_path / "raw")
    assert not (tmp_path / "raw").exists()
    server.serve("/pq/0000.parquet", shards[0])  # the mirror is repaired
    acquire.run(params, out_dir=tmp_path / "raw")
    assert [row["md5"] for row in _read_csv(tmp_path / "raw" / "manifest.csv")] == [_md5(_real_faces(1)[0][1])]


def test_ffhq_row_groups_are_chosen_by_the_id_column_statistics(server, tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    order = [5, 4, 0, 1, 3, 2]  # not in id order: positions say nothing, the statistics do
    table = pa.table({"image": [_encode(_image(300 + i)) for i in order], "ffhq_id": [f"{i:05d}" for i in order]})
    pq.write_table(table, tmp_path / "shard.parquet", row_group_size=2)
    shard = (tmp_path / "shard.parquet").read_bytes()
    server.serve("/pq/0.parquet", shard)
    mirror = {"url_template": server.url("pq/{index}.parquet"), "num_shards": 1, "id_column": "ffhq_id",
              "fetch": "row_groups"}
    acquire.run(_params(tmp_path, source="ffhq", count=2, ffhq={"parquet": mirror, "retries": 0}),
                out_dir=tmp_path / "raw")
    assert [row["id"] for row in _read_csv(tmp_path / "raw" / "manifest.csv")] == ["00000", "00001"]
    np.testing.assert_array_equal(np.asarray(Image.open(tmp_path / "raw" / "images" / "00001.png")), _image(301))
    groups = _row_group_spans(shard)
    asked = _asked_bytes(server, "/pq/0.parquet", len(shard))
    assert asked[2:] == [groups[1]]  # after the size probe and the footer: only the row group holding ids 0, 1
