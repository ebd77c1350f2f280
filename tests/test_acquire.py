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
from PIL import Image

from dlfp.cli import main
from dlfp.data import acquire
from dlfp.data.download import DriveQuotaError
from dlfp.params import load_params, parse_params

FACES = Path(__file__).resolve().parents[2] / "shared" / "faces"



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
    ids = acquire.assign_ids(paths)
    assert ids == acquire.assign_ids(list(reversed(paths)))
    assert ids["a.jpg"] == ("a", "")  # first by relative path keeps the plain id
    assert ids["a.png"][0].startswith("a_") and ids["b/a.png"][0].startswith("a_")
    assert ids["a.png"][0] != ids["b/a.png"][0] and "collided with a.jpg" in ids["a.png"][1]
    assert ids["my photo.v2.png"][0] == "my_photo_v2"
    assert all("." not in identifier for identifier, _ in ids.values())
    ffhq = {path: acquire.ffhq_id_from_name(ids[path][0]) for path in paths[4:]}
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


# ------------------------------------------------------------------------------------------ real data
def _linked_faces(tmp_path: Path, number: int) -> Path:
    folder = tmp_path / "faces"
    folder.mkdir()
    names = sorted(path.name for path in (FACES / "aligned_hq").iterdir())
    small_non_ffhq = [name for name in names if name.startswith("celeb256_")][:2]  # 256 px PNGs, not FFHQ
    picks = small_non_ffhq + [name for name in names if name.startswith("ffhq256_")][: number - 2]
    for name in picks:
        (folder / name).symlink_to(FACES / "aligned_hq" / name)
    return folder


@prereq.needs((FACES / "aligned_hq").is_dir(), "shared faces not present")
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
