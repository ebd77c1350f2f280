"""Shared fixtures. tests/ is not a package (pyiqa installs a top-level `tests`), so helpers load by path."""

from __future__ import annotations

import importlib.util
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest


def _load_httpserver():
    name = "_dlfp_test_httpserver"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("_httpserver.py"))
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


@pytest.fixture
def server() -> Iterator[object]:
    """A local HTTP server on 127.0.0.1 with Range support and controllable failures (tests/_httpserver.py)."""
    with _load_httpserver().FileServer() as running:
        yield running
