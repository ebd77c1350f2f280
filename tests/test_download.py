"""download(): checksums, 404, resume after a dropped connection, cached reruns, Google Drive's HTML pages."""

from __future__ import annotations

import hashlib
from pathlib import Path

import pytest

from dlfp.io.download import (
    ChecksumError,
    DownloadError,
    DriveQuotaError,
    NotFoundError,
    RetryPolicy,
    Span,
    UnreachableError,
    download,
    part_path,
    probe_size,
)

FAST = RetryPolicy(retries=3, backoff_s=0.0, timeout_s=10.0)
PAYLOAD = bytes(range(256)) * 1000  # 256 kB, not HTML, several read chunks
DRIVE_QUOTA_PAGE = b"""<!DOCTYPE html><html><head><title>Google Drive - Quota exceeded</title></head><body>
<p>Sorry, you can't view or download this file at this time.</p><p>Too many users have viewed or downloaded
this file recently. Please try accessing the file again later.</p></body></html>"""
DRIVE_CONFIRM_PAGE = b"""<!DOCTYPE html><html><head><title>Google Drive - Virus scan warning</title></head>
<body>
<p>Google Drive can't scan this file for viruses.</p>
<form id="download-form" action="/download" method="get">
<input type="submit" value="Download anyway"/><input type="hidden" name="id" value="abc">
<input type="hidden" name="export" value="download"><input type="hidden" name="confirm" value="t">
<input type="hidden" name="uuid" value="1234"></form></body></html>"""



def _md5(data: bytes) -> str:
    return hashlib.md5(data).hexdigest()


def test_download_verifies_and_places_file(server, tmp_path: Path) -> None:
    server.serve("/f.bin", PAYLOAD)
    dest = tmp_path / "cache" / "f.bin"
    result = download(server.url("f.bin"), dest, md5=_md5(PAYLOAD),
                      sha256=hashlib.sha256(PAYLOAD).hexdigest(), policy=FAST)
    assert result.downloaded and result.bytes_fetched == len(PAYLOAD)
    assert dest.read_bytes() == PAYLOAD
    assert not part_path(dest).exists()


def test_rerun_with_valid_cache_downloads_nothing(server, tmp_path: Path) -> None:
    server.serve("/f.bin", PAYLOAD)
    dest = tmp_path / "f.bin"
    download(server.url("f.bin"), dest, md5=_md5(PAYLOAD), policy=FAST)
    again = download(server.url("f.bin"), dest, md5=_md5(PAYLOAD), policy=FAST)
    assert not again.downloaded and again.bytes_fetched == 0
    assert server.count("f.bin") == 1


def test_md5_mismatch_names_file_expected_and_got(server, tmp_path: Path) -> None:
    server.serve("/f.bin", PAYLOAD)
    dest = tmp_path / "f.bin"
    wrong = "0" * 32
    with pytest.raises(ChecksumError) as caught:
        download(server.url("f.bin"), dest, md5=wrong, policy=FAST)
    message = str(caught.value)
    assert str(dest) in message and wrong in message and _md5(PAYLOAD) in message
    assert not dest.exists() and not part_path(dest).exists()
    assert (tmp_path / "f.bin.bad").read_bytes() == PAYLOAD  # quarantined, not left at the final name


def test_corrupted_cache_is_replaced(server, tmp_path: Path) -> None:
    server.serve("/f.bin", PAYLOAD)
    dest = tmp_path / "f.bin"
    dest.write_bytes(b"garbage")
    result = download(server.url("f.bin"), dest, md5=_md5(PAYLOAD), policy=FAST)
    assert result.downloaded and dest.read_bytes() == PAYLOAD


def test_404_names_the_url_and_is_not_retried(server, tmp_path: Path) -> None:
    url = server.url("missing.bin")
    with pytest.raises(NotFoundError, match="404") as caught:
        download(url, tmp_path / "missing.bin", policy=FAST)
    assert url in str(caught.value)
    assert server.count("missing.bin") == 1


def test_dropped_connection_resumes_with_range(server, tmp_path: Path) -> None:
    server.serve("/big.bin", PAYLOAD, drop_after=100_000, drops_left=1)
    dest = tmp_path / "big.bin"
    result = download(server.url("big.bin"), dest, md5=_md5(PAYLOAD), policy=FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [seen.range for seen in server.requests] == [None, "bytes=100000-"]
    assert result.bytes_fetched == len(PAYLOAD)


def test_partial_file_from_an_earlier_run_is_continued(server, tmp_path: Path) -> None:
    server.serve("/big.bin", PAYLOAD)
    dest = tmp_path / "big.bin"
    part_path(dest).write_bytes(PAYLOAD[:5000])
    result = download(server.url("big.bin"), dest, md5=_md5(PAYLOAD), policy=FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.requests[0].range == "bytes=5000-"
    assert result.bytes_fetched == len(PAYLOAD) - 5000


def test_server_ignoring_range_restarts_from_zero(server, tmp_path: Path) -> None:
    server.serve("/big.bin", PAYLOAD, honour_range=False)
    dest = tmp_path / "big.bin"
    part_path(dest).write_bytes(PAYLOAD[:5000])
    download(server.url("big.bin"), dest, md5=_md5(PAYLOAD), policy=FAST)
    assert dest.read_bytes() == PAYLOAD  # not 5000 duplicated bytes in front


def test_stale_partial_file_with_wrong_bytes_is_redownloaded(server, tmp_path: Path) -> None:
    server.serve("/big.bin", PAYLOAD)
    dest = tmp_path / "big.bin"
    part_path(dest).write_bytes(b"\xff" * 5000)  # from an older version of the file
    download(server.url("big.bin"), dest, md5=_md5(PAYLOAD), policy=FAST)
    assert dest.read_bytes() == PAYLOAD
    assert [seen.range for seen in server.requests] == ["bytes=5000-", None]


def test_server_errors_are_retried(server, tmp_path: Path) -> None:
    server.serve("/f.bin", PAYLOAD, statuses=[503, 500])
    dest = tmp_path / "f.bin"
    download(server.url("f.bin"), dest, md5=_md5(PAYLOAD), policy=FAST)
    assert dest.read_bytes() == PAYLOAD
    assert server.count("f.bin") == 3


def test_persistent_server_errors_give_up_with_the_url(server, tmp_path: Path) -> None:
    server.serve("/f.bin", PAYLOAD, statuses=[503] * 10)
    with pytest.raises(DownloadError, match="giving up after 2 failed attempts") as caught:
        download(server.url("f.bin"), tmp_path / "f.bin", policy=RetryPolicy(retries=1, backoff_s=0.0))
    assert server.url("f.bin") in str(caught.value) and "503" in str(caught.value)


@pytest.mark.parametrize("status", [200, 403])
def test_drive_quota_page_is_detected(server, tmp_path: Path, status: int) -> None:
    server.serve("/uc", DRIVE_QUOTA_PAGE, content_type="text/html; charset=utf-8", status=status)
    dest = tmp_path / "ffhq-dataset-v2.json"
    with pytest.raises(DriveQuotaError) as caught:
        download(server.url("uc?id=16N0RV4f"), dest, policy=FAST)
    message = str(caught.value)
    assert "quota" in message and "data.ffhq.url_template" in message and "data.ffhq.parquet" in message
    assert not dest.exists()


def test_drive_virus_scan_page_is_confirmed(server, tmp_path: Path) -> None:
    server.serve("/uc", DRIVE_CONFIRM_PAGE, content_type="text/html")
    server.serve("/download", PAYLOAD)
    dest = tmp_path / "big.json"
    download(server.url("uc?id=abc"), dest, md5=_md5(PAYLOAD), policy=FAST)
    assert dest.read_bytes() == PAYLOAD
    confirm = [seen.path for seen in server.requests if seen.path.startswith("/download")]
    assert confirm and "confirm=t" in confirm[0] and "uuid=1234" in confirm[0]


def test_other_html_instead_of_a_file_is_an_error(server, tmp_path: Path) -> None:
    server.serve("/login", b"<html><head><title>Sign in</title></head></html>", content_type="text/html")
    with pytest.raises(DownloadError, match="got an HTML page titled 'Sign in'"):
        download(server.url("login"), tmp_path / "x.png", policy=FAST)


def test_local_path_is_verified_in_place(tmp_path: Path) -> None:
    source = tmp_path / "meta.json"
    source.write_bytes(b"{}")
    result = download(str(source), tmp_path / "cache" / "meta.json", md5=_md5(b"{}"))
    assert result.path == source and not result.downloaded
    with pytest.raises(ChecksumError, match="meta.json"):
        download(str(source), tmp_path / "cache" / "meta.json", md5="1" * 32)


# ------------------------------------------------------------------------------------------ byte ranges
def test_span_download_fetches_only_its_bytes_and_resumes(server, tmp_path: Path) -> None:
    route = server.serve("/f.bin", PAYLOAD, drop_after=5000, drops_left=1)
    dest = tmp_path / "piece.bin"
    span = Span(100_000, 150_000, len(PAYLOAD))
    result = download(server.url("f.bin"), dest, span=span, policy=FAST,
                      sha256=hashlib.sha256(PAYLOAD[100_000:150_000]).hexdigest())
    assert dest.read_bytes() == PAYLOAD[100_000:150_000] and result.bytes_fetched == 50_000
    assert [seen.range for seen in server.requests] == ["bytes=100000-149999", "bytes=105000-149999"]
    assert route.drops_left == 0


def test_span_of_a_file_that_changed_size_is_refused(server, tmp_path: Path) -> None:
    server.serve("/f.bin", PAYLOAD)
    with pytest.raises(DownloadError, match=f"now {len(PAYLOAD)} bytes, not the {len(PAYLOAD) + 7} bytes"):
        download(server.url("f.bin"), tmp_path / "piece.bin", span=Span(0, 10, len(PAYLOAD) + 7), policy=FAST)


def test_span_from_a_server_without_range_support_is_an_error(server, tmp_path: Path) -> None:
    server.serve("/f.bin", PAYLOAD, honour_range=False)
    with pytest.raises(DownloadError, match="ignored a Range request.*fetch: shards"):
        download(server.url("f.bin"), tmp_path / "piece.bin", span=Span(0, 10, len(PAYLOAD)), policy=FAST)
    assert server.count("f.bin") == 1  # not retried


def test_probe_size_reads_one_byte_and_fails_at_once_when_refused(server) -> None:
    server.serve("/f.bin", PAYLOAD)
    assert probe_size(server.url("f.bin"), timeout_s=5) == len(PAYLOAD)
    assert [seen.range for seen in server.requests] == ["bytes=0-0"]
    with pytest.raises(NotFoundError):
        probe_size(server.url("missing.bin"), timeout_s=5)
    closed = server.url("f.bin")
    server.__exit__()  # nothing listens on the port any more
    with pytest.raises(UnreachableError, match="connection failed"):
        probe_size(closed, timeout_s=5)
