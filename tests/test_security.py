"""Security and data safety (issue 13): no shell from data, atomic swaps, safe restore, verified downloads, safe
decoding, formula-free CSV cells. Each test reproduces one hole or fault with small synthetic data."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import tarfile
from pathlib import Path

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import _dlfp_test_tars as tars  # tests/_tars.py, registered by conftest.py
import numpy as np
import pytest
import webdataset as wds
import yaml
from _dlfp_test_faces import WILD  # tests/_faces.py, registered by conftest.py

from dlfp.io.atomic import write_json_atomic
from dlfp.io.hashing import file_digest
from dlfp.io.images import encode_png
from dlfp.params import parse_params
from dlfp.report import readers
from dlfp.shards import streamed as streams
from dlfp.shards.format import ShardCorruptError, ShardSetWriter, UnsafeShardPathError, json_bytes, split_records
from dlfp.shards.local import iter_samples, read_index

REPO = Path(__file__).resolve().parents[1]
PER_SHARD = 2


def _png(seed: int, size: int = 64) -> bytes:
    return encode_png(np.random.default_rng(seed).integers(0, 256, (size, size, 3), dtype=np.uint8))


def _clean_shards(root: Path, extra_test_records: list[dict] = ()) -> Path:
    """Two test shards of two random faces each (plus `extra_test_records` in the index), and an empty val split."""
    writer = ShardSetWriter(root, "test/clean-{:06d}.tar", PER_SHARD)
    for number in range(2 * PER_SHARD):
        key = f"face_{number:03d}"
        writer.write({"__key__": key, "gt.png": _png(number),
                      "json": json_bytes({"id": key, "split": "test", "source": f"{key}.png", "licence": "test"})})
    records = [record.__dict__ for record in writer.close()] + list(extra_test_records)
    write_json_atomic(root / "index.json", {"split_rule": "hash", "splits": {
        "train": {"count": 0, "shards": []}, "val": {"count": 0, "shards": []},
        "test": {"count": 2 * PER_SHARD, "shards": records}}})
    return root


def _degrade_params():
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["shard"]["samples_per_shard"] = PER_SHARD
    raw["degrade"]["workers"] = 1
    raw["degrade"]["presets"] = {"paper": raw["degrade"]["presets"]["paper"]}
    return parse_params(raw)


# ------------------------------------------------------------------------------------ 1. shard locations
def test_an_index_path_that_would_run_a_command_is_refused_naming_the_entry(tmp_path: Path) -> None:
    """The issue's recipe: a second test record whose path ends in `; touch FILE #`, read with a pipe: location."""
    planted = tmp_path / "PWNED"
    hostile = {"path": f"test/clean-000001.tar; touch {planted} #", "count": 2, "sha256": "0" * 64}
    folder = _clean_shards(tmp_path / "shards", [hostile])
    env = {**os.environ, "PYTHONPATH": str(REPO / "src")}
    command = [sys.executable, "-m", "dlfp", "degrade", "--in", f"pipe:cat {folder}/test/clean-000000.tar",
               "--out", str(tmp_path / "pairs")]
    result = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert not planted.exists()
    assert result.returncode != 0
    assert "splits.test.shards[2]" in result.stderr and "touch" in result.stderr, result.stderr
    assert not (tmp_path / "pairs").exists()


@pytest.mark.parametrize("path", ["../outside.tar", "/etc/clean.tar", "test/$(id).tar", "test/a b.tar",
                                  "test/clean-{000000..000001}.tar", "test/../../x.tar", "test/x.tar\n"])
def test_a_local_index_with_a_path_outside_or_odd_is_refused(tmp_path: Path, path: str) -> None:
    folder = _clean_shards(tmp_path / "shards", [{"path": path, "count": 1, "sha256": "0" * 64}])
    with pytest.raises(UnsafeShardPathError, match=r"splits\.test\.shards\[2\]"):
        read_index(folder)
    with pytest.raises(UnsafeShardPathError):
        list(iter_samples(folder, [{"path": path, "count": 1, "sha256": "0" * 64}]))


def test_a_pairs_index_is_checked_in_every_preset(tmp_path: Path) -> None:
    (tmp_path / "index.json").write_text(json.dumps({"splits": {"test": {"presets": {
        "paper": {"count": 1, "shards": [{"path": "test/paper/pairs-000000.tar`reboot`", "count": 1}]}}}}}))
    with pytest.raises(UnsafeShardPathError, match=r"splits\.test\.presets\.paper\.shards\[0\]"):
        read_index(tmp_path)


def test_every_reader_honours_the_brace_range(tmp_path: Path) -> None:
    """iter_samples (degrade, restore, evaluate, bias) reads only the shards a location names, like training."""
    folder = _clean_shards(tmp_path / "shards")
    location = f"pipe:cat {folder}/test/clean-000001.tar"
    records = split_records(read_index(location), "test")
    assert len(records) == 2  # the whole index is known...
    keys = [sample["__key__"] for sample in iter_samples(location, records)]
    assert keys == ["face_002", "face_003"]  # ...but only the named shard is read

    from dlfp.stages import degrade

    summary = degrade.run(_degrade_params(), Path(location), tmp_path / "pairs")
    assert summary["counts"]["test"] == {"paper": PER_SHARD}
    assert summary["counts"]["val"] == {"paper": 0}


def test_a_pipe_command_gets_the_shard_path_quoted() -> None:
    source = streams.StreamedShards("pipe:cat /data/", " | tee /dev/null", {})
    assert source.url("test/clean-000000.tar") == "pipe:cat /data/test/clean-000000.tar | tee /dev/null"
    assert source.url("a;b") == "pipe:cat /data/'a;b' | tee /dev/null"


CLAIMED_BYTES = 100 << 20  # what the crafted member's header says; only TAIL_BYTES of it are in the tar
TAIL_BYTES = 64 << 10
MEMBER_LIMIT = 64 << 20  # the shard member cap (dlfp.shards.format.MAX_MEMBER_BYTES)
CRAFTED = "test/clean-000001.tar"


def _member(name: str, payload: bytes = b"", claimed: int | None = None, link: str | None = None) -> bytes:
    """One raw tar member: header (claiming `claimed` bytes if given, or a symlink to `link`) and padded payload."""
    info = tarfile.TarInfo(name)
    info.size = len(payload) if claimed is None else claimed
    if link is not None:
        info.type, info.linkname, info.size = tarfile.SYMTYPE, link, 0
    return info.tobuf(format=tarfile.USTAR_FORMAT) + payload + b"\0" * (-len(payload) % tarfile.BLOCKSIZE)


def _shards_with_an_oversized_member(root: Path) -> Path:
    """_clean_shards, with its second shard replaced by a crafted one: a sample keyed with a folder and an upper-case
    extension, a webdataset meta member and a symlink out of the archive, then face_003 whose gt.png header claims
    CLAIMED_BYTES (only TAIL_BYTES follow, no end of archive). The index holds the crafted shard's sha256."""
    folder = _clean_shards(root)
    crafted = folder / CRAFTED
    crafted.write_bytes(_member("__meta__", b"{}") + _member("sub/face_002.gt.PNG", _png(2))
                        + _member("sub/face_002.json", b"{}") + _member("sub/face_002.lq.png", link="/etc/passwd")
                        + _member("face_003.json", b"{}")
                        + _member("face_003.gt.png", b"\0" * TAIL_BYTES, claimed=CLAIMED_BYTES))
    index = json.loads((folder / "index.json").read_text())
    index["splits"]["test"]["shards"][1]["sha256"] = file_digest(crafted)
    write_json_atomic(folder / "index.json", index)
    return folder


def _webdataset_samples(folder: Path) -> list[dict]:
    """What webdataset's own reader yields from the test shards before it fails on the crafted member."""
    samples: list[dict] = []
    urls = [str(folder / "test" / f"clean-{number:06d}.tar") for number in range(2)]
    with pytest.raises(tarfile.ReadError):
        samples.extend(wds.WebDataset(urls, shardshuffle=False, empty_check=False))
    return samples


def _over_the_limit(shard: str) -> str:
    return (rf"^{re.escape(shard)}: member face_003\.gt\.png claims {CLAIMED_BYTES} bytes, "
            rf"over the {MEMBER_LIMIT}-byte limit of a shard member \(not read\)$")


def test_a_streamed_shard_member_over_the_limit_stops_the_run_before_it_is_read(
        server, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Over HTTP: the samples before it arrive as webdataset groups them (folder key, lower-cased extension, meta
    member and symlink skipped); then the member whose header claims 100 MiB stops the run naming the shard URL,
    the member and the limit, and its data is never opened."""
    folder = _shards_with_an_oversized_member(tmp_path / "shards")
    for path in sorted(folder.rglob("*")):
        if path.is_file():
            server.serve(f"/shards/{path.relative_to(folder)}", path.read_bytes())
    location = server.url("shards/")
    expected = [{key: value for key, value in sample.items() if key != "__local_path__"}
                for sample in _webdataset_samples(folder)]
    for sample in expected:
        sample["__url__"] = location + sample["__url__"][len(f"{folder}/"):]
    extracted = tars.record_extracted_members(monkeypatch)
    samples = iter_samples(location, split_records(read_index(location), "test"))
    assert [next(samples) for _ in expected] == expected
    assert [sample["__key__"] for sample in expected] == ["face_000", "face_001", "sub/face_002"]
    assert set(expected[2]) == {"__key__", "__url__", "gt.png", "json"}
    with pytest.raises(ShardCorruptError, match=_over_the_limit(f"{location}{CRAFTED}")):
        next(samples)
    assert "face_003.json" in extracted and "face_003.gt.png" not in extracted


@pytest.mark.parametrize("reader", ["iter_samples", "training stream", "report"])
def test_a_local_shard_member_over_the_limit_is_refused_before_it_is_read(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, reader: str) -> None:
    """Every local reader of shard members (stages, training, the report's pages) refuses the member from its header,
    naming the shard; what comes before it is what webdataset's own reader gives."""
    folder = _shards_with_an_oversized_member(tmp_path / "shards")
    records = split_records(read_index(folder), "test")
    expected = _webdataset_samples(folder)
    extracted = tars.record_extracted_members(monkeypatch)
    if reader == "iter_samples":
        samples = iter_samples(folder, records)
        assert [next(samples) for _ in expected] == expected
        with pytest.raises(ShardCorruptError, match=_over_the_limit(str(folder / CRAFTED))):
            next(samples)
    elif reader == "training stream":
        from dlfp.train.data import SampleRecipe, ShardStream

        stream = ShardStream(folder, records, SampleRecipe(seed=0, out_size=64))  # shuffle buffer > 4 samples
        with pytest.raises(ShardCorruptError, match=_over_the_limit(str(folder / CRAFTED))):
            next(iter(stream))
    else:
        samples = readers.iter_tar_samples(folder / CRAFTED, lambda: True)
        assert next(samples) == ("sub/face_002", {"json": b"{}"})  # the report keeps the case: gt.PNG is no *png
        with pytest.raises(tarfile.TarError, match=_over_the_limit("clean-000001.tar")):
            next(samples)
    assert "face_003.json" in extracted and "face_003.gt.png" not in extracted


# ------------------------------------------------------------------------------ 2. swaps that survive a kill
OLD_FILES = {"a.txt": b"old a", "b/c.txt": b"old c"}
NEW_FILES = {"a.txt": b"new a", "d.txt": b"new d"}


def _contents(folder: Path) -> dict[str, bytes] | None:
    if not folder.is_dir():
        return None
    return {str(p.relative_to(folder)): p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


def _write(folder: Path, files: dict[str, bytes]) -> None:
    for name, data in files.items():
        (folder / name).parent.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(data)


def _stage(kind: str, out: Path):
    from dlfp.io.atomic import staged_output
    from dlfp.train.engine.checkpoint import run_folder

    return staged_output(out) if kind == "staged" else run_folder(out, resume=False)


def _killed_run(kind: str, out: Path, kill_at: int, half: bool) -> int:
    """Build NEW_FILES in a forked child that dies (os._exit, as a kill: no handler runs) at the `kill_at`-th file
    system step (rename, replace or rmtree) after the output was built; `half`: half-way through that rmtree."""
    import multiprocessing
    import shutil

    def child() -> None:
        calls = [0]

        def fault(real, is_rmtree: bool):
            def wrapped(*args, **kwargs):
                calls[0] += 1
                if calls[0] == kill_at:
                    if half and is_rmtree:
                        files = [p for p in Path(args[0]).rglob("*") if p.is_file()]
                        files[0].unlink()
                    os._exit(9)
                return real(*args, **kwargs)
            return wrapped

        with _stage(kind, out) as work:
            _write(work, NEW_FILES)
            os.rename, os.replace = fault(os.rename, False), fault(os.replace, False)
            shutil.rmtree = fault(shutil.rmtree, True)
        os._exit(0)

    process = multiprocessing.get_context("fork").Process(target=child)
    process.start()
    process.join()
    return process.exitcode


@pytest.mark.parametrize("kind", ["staged", "run_folder"])
def test_a_kill_at_any_step_of_the_swap_leaves_the_old_or_the_new_output_and_a_rerun_completes(
        tmp_path: Path, kind: str) -> None:
    killed = 0
    for kill_at in range(1, 6):
        for half in (False, True):
            out = tmp_path / f"{kind}-{kill_at}-{half}" / "out"
            out.mkdir(parents=True)
            _write(out, OLD_FILES)
            if _killed_run(kind, out, kill_at, half) != 9:
                continue  # the swap had fewer steps than kill_at
            killed += 1
            with pytest.raises(RuntimeError, match="failing run"), _stage(kind, out):  # starts up (recovers), fails
                raise RuntimeError("failing run")
            assert _contents(out) in (OLD_FILES, NEW_FILES), (kill_at, half, _contents(out))
            with _stage(kind, out) as work:
                _write(work, NEW_FILES)
            assert _contents(out) == NEW_FILES, (kill_at, half)
            assert sorted(p.name for p in out.parent.iterdir() if not p.name.startswith(".")) == ["out"]
    assert killed >= 4  # at least: aside, rename in, delete old (whole and half-way)


def test_checkpoints_are_fsynced_before_they_are_renamed_into_place(tmp_path: Path, monkeypatch) -> None:
    from dlfp.train.engine import checkpoint as loop
    from dlfp.train.engine.distributed import DistInfo

    events: list[tuple[str, str]] = []
    real_fsync, real_replace = os.fsync, os.replace
    synced: set[str] = set()

    def fsync(fd: int) -> None:
        synced.add(os.readlink(f"/proc/self/fd/{fd}"))
        real_fsync(fd)

    def replace(source, target) -> None:
        events.append((str(target), "synced" if os.path.realpath(source) in synced else "not synced"))
        real_replace(source, target)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    loop.save_checkpoint(tmp_path, {"weights": [1, 2, 3]}, 5, {"epoch": 0}, DistInfo())
    assert len(events) == 2 and all(state == "synced" for _, state in events), events


# ------------------------------------------------------------------------------------------ 3. dlfp restore
WILD_PHOTO = WILD / "dfdnet_test1.jpg"


@pytest.fixture(scope="module")
def tiny_weights(tmp_path_factory: pytest.TempPathFactory) -> Path:
    import torch

    from dlfp.models.checkpoints import save_official
    from dlfp.models.gfpgan import GFPGANv1Clean

    if not WILD_PHOTO.is_file():
        prereq.missing(f"{WILD_PHOTO} missing")
    torch.manual_seed(0)
    tiny = GFPGANv1Clean(out_size=64, num_style_feat=64, channel_multiplier=1, num_mlp=2, narrow=0.125)
    return save_official(tiny, tmp_path_factory.mktemp("weights") / "tiny.pth")


def _photo_folder(root: Path) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "face.jpg").write_bytes(WILD_PHOTO.read_bytes())
    return root


def test_restore_refuses_an_outdir_equal_to_an_input_folder(tiny_weights: Path, tmp_path: Path, capsys) -> None:
    from dlfp import cli

    folder = _photo_folder(tmp_path / "photos")
    code = cli.main(["--params", str(REPO / "params.yaml"), "restore", str(folder), "-o", str(folder / "."),
                     "--weights", str(tiny_weights), "--device", "cpu"])
    assert code == cli.EXIT_USAGE
    assert "is the input folder" in capsys.readouterr().err
    assert sorted(p.name for p in folder.iterdir()) == ["face.jpg"]


def test_restore_outputs_inside_an_input_folder_are_never_read_back(tiny_weights: Path, tmp_path: Path) -> None:
    from dlfp.photos import pipeline

    folder = _photo_folder(tmp_path / "photos")
    for overwrite in (False, True):
        summary = pipeline.run_photos([folder], folder / "out", weights=tiny_weights, device="cpu",
                                      overwrite=overwrite, progress=False)
        assert [row["input"] for row in summary["photos"]] == [str(folder / "face.jpg")]


def test_restore_checks_existing_outputs_under_the_lock(tiny_weights: Path, tmp_path: Path, monkeypatch) -> None:
    """A concurrent run that writes its outputs between the early check and the lock is not overwritten."""
    from dlfp.photos import inputs, pipeline
    from dlfp.photos.summary import SUMMARY_JSON

    out = tmp_path / "out"
    real_load = pipeline._load_restorer

    def load_while_another_run_finishes(*args, **kwargs):
        restorer = real_load(*args, **kwargs)
        out.mkdir()
        (out / SUMMARY_JSON).write_text("written by the other run")
        return restorer

    monkeypatch.setattr(pipeline, "_load_restorer", load_while_another_run_finishes)
    with pytest.raises(inputs.OutputExistsError):
        pipeline.run_photos([WILD_PHOTO], out, weights=tiny_weights, device="cpu", progress=False)
    assert (out / SUMMARY_JSON).read_text() == "written by the other run"


def test_a_planted_lock_symlink_never_truncates_its_target(tiny_weights: Path, tmp_path: Path) -> None:
    from dlfp.io.atomic import OutputLockedError, staged_output
    from dlfp.photos import pipeline

    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    out = tmp_path / "out"
    out.mkdir()
    (out / pipeline.LOCK_NAME).symlink_to(victim)
    with pytest.raises(OutputLockedError, match="symbolic link"):
        pipeline.run_photos([WILD_PHOTO], out, weights=tiny_weights, device="cpu", progress=False)
    (tmp_path / ".stage.lock").symlink_to(victim)
    with pytest.raises(OutputLockedError, match="symbolic link"), staged_output(tmp_path / "stage"):
        pass
    assert victim.read_text() == "keep me"


# -------------------------------------------------------------------------------------------- 4. downloads
def _confirm_page(action: str) -> bytes:
    return (b"<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head><body>"
            b"<p>Google Drive can't scan this file for viruses.</p><form id=\"download-form\" action=\""
            + action.encode() + b"\" method=\"get\"><input type=\"hidden\" name=\"confirm\" value=\"t\"></form>"
            b"</body></html>")


def test_the_official_metadata_json_is_pinned_by_default() -> None:
    ffhq = parse_params(yaml.safe_load((REPO / "params.yaml").read_text())).data.ffhq
    assert (ffhq.metadata_md5, ffhq.metadata_size) == ("425ae20f06a4da1d4dc0f46d40ba5fd6", 267_793_842)
    from dlfp.params import FFHQSource

    assert FFHQSource().metadata_md5 == "425ae20f06a4da1d4dc0f46d40ba5fd6"
    mirror = FFHQSource(metadata_url="https://mirror.example/ffhq.json", metadata_md5=None, metadata_size=None)
    assert mirror.metadata_md5 is None  # a mirror overrides the pin explicitly


def test_a_download_past_its_cap_is_aborted_and_leaves_nothing(server, tmp_path: Path) -> None:
    from dlfp.io import download as dl

    server.serve("/big.bin", b"x" * 5000)
    dest = tmp_path / "big.bin"
    with pytest.raises(dl.TooLargeError, match="4096"):
        dl.download(server.url("big.bin"), dest, max_bytes=4096, policy=dl.RetryPolicy(retries=0))
    assert not dest.exists() and not dl.part_path(dest).exists()


@pytest.mark.parametrize("file_url", ["file:///etc/hostname", "/etc/hostname", "ftp://host/x.png"])
def test_a_file_url_from_the_metadata_must_be_http(file_url: str) -> None:
    from dlfp.io.download import UntrustedURLError
    from dlfp.params import FFHQSource
    from dlfp.stages.acquire import ffhq as acquire_ffhq

    entry = {"thumbnail": {"file_path": "thumbnails128x128/00000/00007.png", "file_url": file_url}}
    with pytest.raises(UntrustedURLError, match="FFHQ metadata 7"):
        acquire_ffhq._ffhq_file(entry, 7, FFHQSource(metadata_md5=None))


def test_the_metadata_file_size_caps_each_file_download() -> None:
    from dlfp.params import FFHQSource
    from dlfp.stages.acquire import ffhq as acquire_ffhq

    spec = {"file_path": "thumbnails128x128/00000/00007.png", "file_url": "https://host/x.png", "file_size": 1234}
    assert acquire_ffhq._ffhq_file({"thumbnail": spec}, 7, FFHQSource()).max_bytes == 1234
    del spec["file_size"]
    assert acquire_ffhq._ffhq_file({"thumbnail": spec}, 7, FFHQSource(max_file_bytes=99)).max_bytes == 99


def test_a_drive_confirmation_link_to_another_host_is_not_followed(server, tmp_path: Path) -> None:
    from dlfp.io import download as dl

    server.serve("/uc", _confirm_page("http://evil.invalid/download"), content_type="text/html")
    with pytest.raises(dl.UntrustedURLError, match="evil.invalid"):
        dl.download(server.url("uc?id=abc"), tmp_path / "meta.json", policy=dl.RetryPolicy(retries=0))
    server.serve("/uc", _confirm_page("file:///tmp/download"), content_type="text/html")
    with pytest.raises(dl.UntrustedURLError, match="file:"):
        dl.download(server.url("uc?id=abc"), tmp_path / "meta.json", policy=dl.RetryPolicy(retries=0))
    assert not (tmp_path / "meta.json").exists()


# --------------------------------------------------------------------------------------------- 5. decoding
EPS = (b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 64 64\n%%EndComments\n"
       b"0 0 moveto 64 64 lineto stroke\nshowpage\n%%EOF\n")


def test_eps_never_reaches_ghostscript(monkeypatch, tmp_path: Path) -> None:
    from PIL import EpsImagePlugin

    from dlfp.io.images import ImageRejected, decode_image_bytes

    calls = []

    def ghostscript(*args, **kwargs):
        calls.append(args)
        raise OSError("Ghostscript must not run")

    monkeypatch.setattr(EpsImagePlugin, "Ghostscript", ghostscript)
    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: True)
    with pytest.raises(ImageRejected, match="PostScript/EPS"):
        decode_image_bytes(EPS, source="evil.jpg")
    from dlfp.photos import inputs

    (tmp_path / "evil.jpg").write_bytes(EPS)
    with pytest.raises(ImageRejected, match="PostScript/EPS"):  # `dlfp restore` decodes through the same door
        inputs.decode_photo(tmp_path / "evil.jpg", upscale=2, max_pixels=10**8)
    assert calls == []


def test_accepted_formats_still_decode() -> None:
    import io

    from PIL import Image

    from dlfp.io.images import decode_image_bytes

    pixels = np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8)
    for fmt in ("PNG", "JPEG", "WEBP", "TIFF", "BMP", "GIF"):
        buffer = io.BytesIO()
        Image.fromarray(pixels).save(buffer, format=fmt)
        assert decode_image_bytes(buffer.getvalue(), source=f"x.{fmt}").rgb.shape == (32, 32, 3), fmt


def test_pending_archive_members_are_bounded_in_bytes_not_only_in_count(monkeypatch) -> None:
    from dlfp.stages import acquire

    member_bytes = 1000
    monkeypatch.setattr(acquire, "MAX_PENDING_BYTES", 2 * member_bytes, raising=False)
    pulled = []

    def items():
        for number in range(12):
            pulled.append(number)
            yield (acquire.Candidate(id=f"{number:05d}", source="a.zip", licence=""), b"x" * member_bytes)

    results = acquire._map_bounded(len, items(), workers=2)  # len(item) == 2: any picklable task will do
    assert next(results) == 2
    assert len(pulled) <= 3  # at most MAX_PENDING_BYTES held, plus the member just pulled
    assert list(results) == [2] * 11


# ---------------------------------------------------------------------------------------- 6. CSV formulas
def test_csv_cells_that_would_be_formulas_are_neutralised_and_numbers_stay_numbers(tmp_path: Path) -> None:
    import csv

    from dlfp.io.atomic import write_csv_atomic

    hostile = ["=HYPERLINK(\"http://x\")", "+cmd|' /C calc'!A0", "-2+3+cmd|' /C calc'!A0", "@SUM(1+1)", "\t=1+1"]
    kept = [-0.5, 3, "-0.5", "+1e-3", "-inf", "-face_01", "plain name.png", ""]
    write_csv_atomic(tmp_path / "t.csv", ["cell"], [[cell] for cell in hostile + kept])
    with open(tmp_path / "t.csv", newline="", encoding="utf-8") as handle:
        cells = [row[0] for row in csv.reader(handle)][1:]
    assert cells[:len(hostile)] == ["'" + cell for cell in hostile]
    assert cells[len(hostile):] == [str(cell) for cell in kept]


def test_a_hostile_file_name_and_licence_reach_the_manifest_neutralised(tmp_path: Path) -> None:
    import csv

    from dlfp.stages import acquire

    folder = tmp_path / "in"
    folder.mkdir()
    name = "=HYPERLINK(1)+x.png"
    (folder / name).write_bytes(_png(1))
    (folder / "manifest.csv").write_text(f"file,licence\n\"{name}\",@SUM(1)\n")
    params = parse_params({"data": {"source": "folder", "folder": str(folder), "cache_dir": str(tmp_path / "c")}})
    acquire.run(params, out_dir=tmp_path / "raw")
    with open(tmp_path / "raw" / "manifest.csv", newline="", encoding="utf-8") as handle:
        row = next(csv.DictReader(handle))
    assert row["source"] == "'" + name and row["licence"] == "'@SUM(1)"
    assert (tmp_path / "raw" / "images" / f"{row['id']}.png").is_file()  # ids are untouched
