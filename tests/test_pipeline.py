"""End to end on real faces: `dvc repro degrade` and `snakemake degrade` build byte-identical shards and pairs.

Runs the real commands in a scratch copy of the wiring (src/ is linked, so the installed package is used).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from _dlfp_test_faces import FACES  # tests/_faces.py, registered by conftest.py

from dlfp.io.hashing import file_digest

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent
IMAGE_COUNT = 24
WIRING = ("dvc.yaml", "Snakefile", "workflow", "profiles", "src")


def _scratch_project(root: Path, image_count: int) -> Path:
    root.mkdir()
    for name in WIRING:
        (root / name).symlink_to(REPO / name)
    raw = yaml.safe_load((REPO / "params.yaml").read_text())
    raw["data"].update(folder=str(FACES), count=image_count)
    (root / "params.yaml").write_text(yaml.safe_dump(raw, sort_keys=False))
    return root


def _env() -> dict[str, str]:
    return {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}", "DVC_NO_ANALYTICS": "1"}


def _run(args: list[str], cwd: Path) -> str:
    result = subprocess.run(args, cwd=cwd, env=_env(), capture_output=True, text=True)
    assert result.returncode == 0, f"{args}\n{result.stdout}\n{result.stderr}"
    return result.stdout + result.stderr


def _artifact_hashes(project: Path) -> dict[str, str]:
    tars = sorted((project / "data").glob("shards/**/*.tar")) + sorted((project / "data").glob("pairs/**/*.tar"))
    return {str(path.relative_to(project)): file_digest(path) for path in tars}


@pytest.fixture(scope="module")
def dvc_project(tmp_path_factory: pytest.TempPathFactory) -> Path:
    project = _scratch_project(tmp_path_factory.mktemp("dvc") / "project", IMAGE_COUNT)
    _run(["git", "init", "-q"], project)
    _run([str(BIN / "dvc"), "init", "-q"], project)
    _run([str(BIN / "dvc"), "repro", "degrade"], project)
    return project


def test_dvc_builds_shards_and_pairs_for_every_preset(dvc_project: Path) -> None:
    hashes = _artifact_hashes(dvc_project)
    assert any(name.startswith("data/shards/test/clean-") for name in hashes)
    presets = yaml.safe_load((REPO / "params.yaml").read_text())["degrade"]["presets"]
    for preset in presets:
        assert any(name.startswith(f"data/pairs/test/{preset}/pairs-") for name in hashes), preset
    assert (dvc_project / "data" / "raw" / "manifest.csv").exists()


def test_second_dvc_repro_does_nothing(dvc_project: Path) -> None:
    output = _run([str(BIN / "dvc"), "repro", "degrade"], dvc_project)
    assert "Running stage" not in output
    status = _run([str(BIN / "dvc"), "status", "degrade"], dvc_project)
    assert "changed" not in status


def test_rebuild_from_scratch_is_byte_identical(dvc_project: Path, tmp_path: Path) -> None:
    before = _artifact_hashes(dvc_project)
    copy = _scratch_project(tmp_path / "again", IMAGE_COUNT)
    _run(["git", "init", "-q"], copy)
    _run([str(BIN / "dvc"), "init", "-q"], copy)
    _run([str(BIN / "dvc"), "repro", "--no-run-cache", "degrade"], copy)
    assert _artifact_hashes(copy) == before


def test_snakemake_builds_the_same_files(dvc_project: Path, tmp_path: Path) -> None:
    project = _scratch_project(tmp_path / "smk", IMAGE_COUNT)
    _run([str(BIN / "snakemake"), "--cores", "2", "degrade"], project)
    assert _artifact_hashes(project) == _artifact_hashes(dvc_project)
    shutil.rmtree(project / ".snakemake", ignore_errors=True)
