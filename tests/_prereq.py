"""Prerequisites from outside the repository (../shared/faces, Chromium): a skip on a developer's machine, a failure
under CI, where a missing prerequisite would otherwise turn a red run green by skipping the tests that need it.

CI is on when the CI environment variable holds a true value (CI services set CI=true). Loaded by path from
conftest.py (tests/ is not a package) as `_dlfp_test_prereq`.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from typing import NoReturn

import pytest

CI_ENV = "CI"
FALSE_VALUES = ("", "0", "false", "no", "off")
MARKER = "prerequisite"


def in_ci() -> bool:
    return os.environ.get(CI_ENV, "").strip().lower() not in FALSE_VALUES


def missing(reason: str) -> NoReturn:
    """Skip the test, or fail it under CI."""
    if in_ci():
        pytest.fail(f"{reason} ({CI_ENV}={os.environ[CI_ENV]!r}: a missing prerequisite fails the run)", pytrace=False)
    pytest.skip(reason)


def require(available: bool, reason: str) -> None:
    """In a test or fixture: go on when `available`, else `missing(reason)`."""
    if not available:
        missing(reason)


def needs(available: bool, reason: str) -> pytest.MarkDecorator:
    """Mark a test (or a module, as `pytestmark`) that needs a prerequisite; checked by conftest.py at setup."""
    return getattr(pytest.mark, MARKER)(available, reason)


def check_markers(markers: Iterable[pytest.Mark]) -> None:
    """The setup check behind `needs`: every prerequisite marker of a test must be available."""
    for mark in markers:
        available, reason = mark.args
        require(available, reason)
