"""params.yaml is validated once; a wrong key or value gets a message naming the key and the reason."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dlfp.params import ParamsError, load_params, parse_params

REPO = Path(__file__).resolve().parents[1]


def _raw() -> dict:
    return yaml.safe_load((REPO / "params.yaml").read_text())


def test_repository_params_are_valid() -> None:
    params = load_params(REPO / "params.yaml")
    assert set(params.degrade.presets) == {"paper", "mild", "moderate", "severe"}
    assert params.degrade.presets["paper"].downscale == (0.8, 8.0)
    assert params.degrade.presets["moderate"].kernel_size == 41  # defaults fill keys a preset leaves out


@pytest.mark.parametrize(
    ("mutate", "expected"),
    [
        (lambda raw: raw["data"].update(sise=512), "data.sise: unknown key"),
        (lambda raw: raw["data"].update(size=300), "power of two"),
        (lambda raw: raw["data"].update(source="s3"), "data.source"),
        (lambda raw: raw["shard"]["fractions"].update(test=0.5), "must be 1"),
        (lambda raw: raw["degrade"]["presets"]["mild"].update(downscale=[4, 2]), "low 4.0 is above high 2.0"),
        (lambda raw: raw["degrade"]["presets"]["mild"].update(jpeg_quality=[50, 120]), "1..100"),
        (lambda raw: raw["degrade"].update(workers=0), "degrade.workers"),
        (lambda raw: raw.pop("data"), "data: required key is missing"),
        (lambda raw: raw["data"].update(source="folder", folder=None), "data.folder must be set"),
    ],
)
def test_bad_values_name_the_key(mutate, expected: str) -> None:
    raw = _raw()
    mutate(raw)
    with pytest.raises(ParamsError) as caught:
        parse_params(raw, Path("params.yaml"))
    assert expected in str(caught.value)
    assert str(caught.value).startswith("params.yaml: ")


def test_missing_and_broken_files(tmp_path: Path) -> None:
    with pytest.raises(ParamsError, match="not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(ParamsError, match="not valid YAML"):
        load_params(broken)


def test_cli_reports_bad_params_with_exit_code_2(tmp_path: Path) -> None:
    raw = _raw()
    raw["align"]["detectr"] = "hog"
    bad = tmp_path / "params.yaml"
    bad.write_text(yaml.safe_dump(raw))
    result = subprocess.run([sys.executable, "-m", "dlfp", "--params", str(bad), "shard"], capture_output=True,
                            text=True)
    assert result.returncode == 2
    assert "align.detectr: unknown key" in result.stderr


def test_section_hash_changes_only_with_its_section() -> None:
    raw = _raw()
    base = parse_params(raw)
    raw["report"]["samples_in_grid"] = 3
    changed = parse_params(raw)
    assert base.section_hash("data", "shard") == changed.section_hash("data", "shard")
    assert base.section_hash("report") != changed.section_hash("report")
