"""The suite's own guards: missing prerequisites fail under CI, a per-test timeout, a private DLFP_CACHE."""

from __future__ import annotations

import os
from pathlib import Path
from types import SimpleNamespace

import _dlfp_test_prereq as prereq  # tests/_prereq.py, registered by conftest.py
import pytest

from dlfp.models import weights_cache as idm


@pytest.mark.parametrize("value", ["true", "1", "True", "yes"])
def test_a_missing_prerequisite_fails_under_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path, value: str) -> None:
    faces = tmp_path / "shared" / "faces"  # as on a runner without the shared faces
    monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.fail.Exception, match="shared faces not present.*fails the run"):
        prereq.require(faces.is_dir(), "shared faces not present")
    marker = prereq.needs(faces.is_dir(), "chromium not installed").mark
    with pytest.raises(pytest.fail.Exception, match="chromium not installed"):
        prereq.check_markers([marker])


@pytest.mark.parametrize("value", [None, "", "0", "false", "no"])
def test_a_missing_prerequisite_skips_outside_ci(monkeypatch: pytest.MonkeyPatch, tmp_path: Path,
                                                 value: str | None) -> None:
    if value is None:
        monkeypatch.delenv("CI", raising=False)
    else:
        monkeypatch.setenv("CI", value)
    with pytest.raises(pytest.skip.Exception, match="shared faces not present"):
        prereq.require((tmp_path / "faces").is_dir(), "shared faces not present")
    with pytest.raises(pytest.skip.Exception):
        prereq.check_markers([prereq.needs(False, "chromium not installed").mark])


def test_a_present_prerequisite_neither_skips_nor_fails(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.setenv("CI", "true")
    prereq.require(tmp_path.is_dir(), "unused")
    prereq.check_markers([prereq.needs(True, "unused").mark])


def test_prerequisite_markers_are_checked_at_setup(monkeypatch: pytest.MonkeyPatch,
                                                   request: pytest.FixtureRequest) -> None:
    """conftest.py's setup hook reads the markers that `needs` puts on a test."""
    conftest = Path(__file__).with_name("conftest.py")
    [plugin] = [p for p in request.config.pluginmanager.get_plugins() if getattr(p, "__file__", None) == str(conftest)]
    pytest_runtest_setup = plugin.pytest_runtest_setup
    marker = prereq.needs(False, "chromium not installed").mark
    item = SimpleNamespace(iter_markers=lambda name: [marker] if name == prereq.MARKER else [])
    monkeypatch.setenv("CI", "true")
    with pytest.raises(pytest.fail.Exception, match="chromium not installed"):
        pytest_runtest_setup(item)


def test_every_test_has_a_timeout(request: pytest.FixtureRequest) -> None:
    assert float(request.config.getini("timeout")) >= 300


def test_the_dlfp_cache_is_a_private_temp_folder(tmp_path_factory: pytest.TempPathFactory) -> None:
    cache = Path(os.environ[idm.CACHE_ENV])
    assert idm.cache_dir() == cache
    assert cache.is_relative_to(tmp_path_factory.getbasetemp())
