"""Shared fixtures. tests/ is not a package (pyiqa installs a top-level `tests`), so helpers load by path."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def load_helper(filename: str):
    """Load a sibling helper module by path once, as `_dlfp_test_<stem>`, and return it."""
    name = "_dlfp_test_" + Path(filename).stem.lstrip("_")
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name(filename))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


# Registered before any test module is imported, so tests can `import _dlfp_test_browser as browser`.
load_helper("_browser.py")
load_helper("_tars.py")
prereq = load_helper("_prereq.py")
faces = load_helper("_faces.py")  # after _prereq.py, which it imports

CACHE_ENV = "DLFP_CACHE"  # dlfp.models.weights_cache.CACHE_ENV (not imported here: conftest stays light)


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item: pytest.Item) -> None:
    """Check `prerequisite` markers before any fixture builds (skip, or fail under CI)."""
    prereq.check_markers(item.iter_markers(prereq.MARKER))


@pytest.fixture(scope="session", autouse=True)
def private_dlfp_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """$DLFP_CACHE (converted identity weights, user-provided ArcFace weights) in a session temp folder, for this
    process and the stage subprocesses it starts: tests neither read nor fill the user's ~/.cache/dlfp."""
    folder = tmp_path_factory.mktemp("dlfp_cache")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv(CACHE_ENV, str(folder))
        yield folder


@pytest.fixture(scope="session")
def mini_project(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    """tests/_faces.py's shared mini project (aligned, shards, pairs, restored), built once per session.

    Shared by every test that asks for it, so it must stay as built: a test copies what it changes. Checked at the
    end of the session (a changed file fails the run's teardown).
    """
    root = faces.build_mini_project(tmp_path_factory.mktemp("mini_project"))
    built = faces.snapshot(root)
    yield root
    assert faces.snapshot(root) == built, f"a test changed the shared mini project {root}: copy what you change"


@pytest.fixture
def server() -> Iterator[object]:
    """A local HTTP server on 127.0.0.1 with Range support and controllable failures (tests/_httpserver.py)."""
    with load_helper("_httpserver.py").FileServer() as running:
        yield running
