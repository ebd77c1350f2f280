"""`dlfp` argument parsing: the restore forms, renamed parameters, and a --help that stays light."""

from __future__ import annotations

import importlib
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dlfp import cli

REPO = Path(__file__).resolve().parents[1]
PARAMS = ["--params", str(REPO / "params.yaml")]


@pytest.fixture
def stage_calls(monkeypatch: pytest.MonkeyPatch) -> list[tuple[Path, Path, str]]:
    """Replaces the pair restore stage with a recorder of its (pairs_dir, out_dir, split)."""
    from dlfp.stages import restore as restore_stage

    calls: list[tuple[Path, Path, str]] = []
    monkeypatch.setattr(restore_stage, "run",
                        lambda params, pairs_dir, out_dir, split: calls.append((pairs_dir, out_dir, split)))
    return calls


def test_bare_restore_prints_usage_and_exits_2(stage_calls: list, capsys: pytest.CaptureFixture) -> None:
    assert cli.main([*PARAMS, "restore"]) == cli.EXIT_USAGE
    err = capsys.readouterr().err
    assert err.startswith("usage: dlfp restore --in PAIRS --out RESTORED")
    assert "dlfp restore INPUT [INPUT ...] -o OUTDIR" in err and "needs both --in PAIRS and --out RESTORED" in err
    assert stage_calls == []  # nothing ran on data/pairs


@pytest.mark.parametrize("given", [["--in", "data/pairs"], ["--out", "data/restored"]])
def test_restore_stage_form_needs_both_paths(given: list[str], stage_calls: list,
                                            capsys: pytest.CaptureFixture) -> None:
    assert cli.main([*PARAMS, "restore", *given]) == cli.EXIT_USAGE
    assert "needs both --in PAIRS and --out RESTORED" in capsys.readouterr().err
    assert stage_calls == []


@pytest.mark.parametrize("stage", ["restore", "evaluate"])
def test_split_reaches_the_stage_and_without_it_the_stage_default_applies(stage: str,
                                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    """No --split: the stage's own default (the test split, see test_splits.py); --split val: val."""
    module = importlib.import_module(f"dlfp.stages.{stage}")
    calls: list[dict] = []
    monkeypatch.setattr(module, "run", lambda params, **arguments: calls.append(arguments))
    paths = ["--in", "p", "--out", "o"]
    assert cli.main([*PARAMS, stage, *paths]) == cli.EXIT_OK
    assert cli.main([*PARAMS, stage, "--split", "val", *paths]) == cli.EXIT_OK
    assert "split" not in calls[0] and calls[1]["split"] == "val"
    assert calls[0]["pairs_dir"] == calls[1]["pairs_dir"] == Path("p")


@pytest.mark.parametrize("stage", ["restore", "evaluate"])
def test_split_without_fixed_pairs_stops_before_reading(stage: str, tmp_path: Path,
                                                       capsys: pytest.CaptureFixture) -> None:
    code = cli.main([*PARAMS, stage, "--split", "train", "--in", str(tmp_path / "none"), "--out",
                     str(tmp_path / "out")])
    assert code == cli.EXIT_FAILED
    assert "split 'train' has no fixed pairs; choose one of: val, test" in capsys.readouterr().err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("split", ["val", "test"])
def test_photos_form_refuses_split(split: str, stage_calls: list, tmp_path: Path,
                                   capsys: pytest.CaptureFixture) -> None:
    code = cli.main(["restore", str(tmp_path / "photo.jpg"), "-o", str(tmp_path / "out"), "--split", split])
    assert code == cli.EXIT_USAGE
    assert "--in/--out/--split belong to the pair stage form" in capsys.readouterr().err
    assert stage_calls == [] and not (tmp_path / "out").exists()


def test_old_identity_restorer_name_is_a_clear_params_error(tmp_path: Path) -> None:
    """The no-op restorer is now `lq`: an old params file that lists `identity` says so, with exit code 2."""
    raw = yaml.safe_load((REPO / "params.yaml").read_text(encoding="utf-8"))
    raw["restore"]["restorers"] = ["identity", "bicubic"]
    old = tmp_path / "params.yaml"
    old.write_text(yaml.safe_dump(raw), encoding="utf-8")
    result = subprocess.run([sys.executable, "-m", "dlfp", "--params", str(old), "restore", "--in", "p", "--out",
                             "r"], capture_output=True, text=True, cwd=tmp_path)
    assert result.returncode == cli.EXIT_USAGE
    assert str(old) in result.stderr and "restore.restorers" in result.stderr
    assert "`identity` is now called `lq`" in result.stderr
    assert not (tmp_path / "r").exists()


def test_help_and_parsing_do_not_import_heavy_libraries() -> None:
    """`dlfp --help` stays fast: building the parser (layout and the photo defaults included) imports neither
    torch nor OpenCV nor dlib; stage modules load only when their subcommand runs."""
    code = ("import sys; from dlfp import cli; cli.build_parser().parse_args(['restore', 'x.jpg', '-o', 'o']); "
            "print(sorted(name for name in ('torch', 'cv2', 'dlib', 'dlfp.stages') if name in sys.modules))")
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert result.stdout.strip() == "[]"
