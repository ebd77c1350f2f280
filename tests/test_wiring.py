"""dvc.yaml and the Snakefile must describe the same pipeline: names, commands, inputs, outputs, params."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

REPO = Path(__file__).resolve().parents[1]
BIN = Path(sys.executable).parent


def _dvc_stages() -> dict[str, dict]:
    from dvc.repo import Repo

    repo = Repo(str(REPO))
    stages = {}
    for stage in repo.index.stages:
        params = [key for dep in stage.params for key in dep.params]
        deps = [str(dep.def_path) for dep in stage.deps if dep not in stage.params]
        outs = sorted(str(out.def_path) for out in stage.outs)
        stages[stage.name] = {"cmd": stage.cmd, "deps": sorted(deps), "outs": outs, "params": params}
    return stages


def _snakemake_rules() -> dict[str, dict]:
    from snakemake.api import SnakemakeApi
    from snakemake.settings.types import OutputSettings, ResourceSettings

    cwd = os.getcwd()
    os.chdir(REPO)
    try:
        with SnakemakeApi(OutputSettings(quiet=True)) as api:
            workflow = api.workflow(resource_settings=ResourceSettings(), snakefile=REPO / "Snakefile", workdir=REPO)
            # The public API offers no rule listing; the loaded workflow object is the authoritative source.
            rules = workflow._workflow.rules
            return {rule.name: {"cmd": rule.shellcmd, "deps": sorted(map(str, rule.input)),
                                "outs": sorted(map(str, rule.output)), "log": list(map(str, rule.log)),
                                "params": dict(rule.params.items())} for rule in rules}
    finally:
        os.chdir(cwd)


@pytest.fixture(scope="module")
def both() -> tuple[dict, dict]:
    return _dvc_stages(), _snakemake_rules()


def _lookup(config: dict, dotted: str) -> object:
    value: object = config
    for part in dotted.split("."):
        value = value[part]  # type: ignore[index]
    return value


def test_same_stage_names(both: tuple[dict, dict]) -> None:
    dvc, smk = both
    assert set(dvc) == set(smk)
    assert {"acquire", "align", "shard", "degrade", "report"} <= set(dvc)


def test_same_commands_inputs_outputs(both: tuple[dict, dict]) -> None:
    dvc, smk = both
    for name, stage in dvc.items():
        rule = smk[name]
        assert " ".join(stage["cmd"].split()) == " ".join(rule["cmd"].split()), name
        assert stage["cmd"].startswith(f"dlfp {name} "), name
        assert stage["deps"] == rule["deps"], name
        assert stage["outs"] == rule["outs"], name
        assert rule["log"] == [f"logs/{name}.log"] and f"--log logs/{name}.log" in stage["cmd"], name


def test_same_parameters_trigger_reruns(both: tuple[dict, dict]) -> None:
    """Each DVC params key must reach the Snakemake rule as a `params:` value, so both rerun on the same edits."""
    dvc, smk = both
    config = yaml.safe_load((REPO / "params.yaml").read_text())
    for name, stage in dvc.items():
        expected = sorted(json.dumps(_lookup(config, key), sort_keys=True) for key in stage["params"])
        actual = sorted(json.dumps(value, sort_keys=True) for value in smk[name]["params"].values())
        assert expected == actual, name


def test_every_stage_command_exists() -> None:
    from dlfp.cli import build_parser

    parser = build_parser()
    for name, stage in _dvc_stages().items():
        args = parser.parse_args(stage["cmd"].split()[1:])
        assert args.stage == name


def test_snakemake_dry_run_and_lint_are_clean() -> None:
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    lint = subprocess.run([str(BIN / "snakemake"), "--lint"], cwd=REPO, env=env, capture_output=True, text=True)
    assert lint.returncode == 0, lint.stdout + lint.stderr
    assert "Lints for rule" not in lint.stdout + lint.stderr
    dry = subprocess.run([str(BIN / "snakemake"), "-n", "--forceall", "report"], cwd=REPO, env=env,
                         capture_output=True, text=True)
    assert dry.returncode == 0, dry.stdout + dry.stderr
    for rule in ("acquire", "align", "shard", "degrade", "report"):
        assert f"rule {rule}:" in dry.stdout + dry.stderr
