"""dvc.yaml and the Snakefile must describe the same pipeline (names, commands, inputs, outputs, params), on the
paths dlfp/layout.py defines: the Snakemake rules import them, dvc.yaml (which cannot) repeats them literally."""

from __future__ import annotations

import ast
import importlib.util
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from dlfp import layout

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
            return {rule.name: {"cmd": _shell_command(rule), "template": rule.shellcmd,
                                "deps": sorted(map(str, rule.input)),
                                "outs": sorted(map(str, rule.output)), "log": list(map(str, rule.log)),
                                "params": dict(rule.params.items())} for rule in rules}
    finally:
        os.chdir(cwd)


def _shell_command(rule: object) -> str | None:
    """The rule's `shell:` with {input.x}, {output.x} and {log} filled in, as Snakemake runs it (no wildcards)."""
    template = rule.shellcmd  # type: ignore[attr-defined]
    if template is None:
        return None
    return template.format(input=rule.input, output=rule.output, log=rule.log)  # type: ignore[attr-defined]


@pytest.fixture(scope="module")
def both() -> tuple[dict, dict]:
    return _dvc_stages(), _snakemake_rules()


def _lookup(config: dict, dotted: str) -> object:
    value: object = config
    for part in dotted.split("."):
        value = value[part]  # type: ignore[index]
    return value


# In Snakemake `evaluate` is the default target (the chain up to the reports, as `dvc repro`), so the stage that
# runs `dlfp evaluate` is named differently there. Every other stage has the same name in both.
SNAKEMAKE_NAME = {"evaluate": "evaluate_metrics"}
TARGET = "evaluate"


def _rule(smk: dict, stage: str) -> dict:
    return smk[SNAKEMAKE_NAME.get(stage, stage)]


def test_same_stage_names(both: tuple[dict, dict]) -> None:
    dvc, smk = both
    assert {SNAKEMAKE_NAME.get(name, name) for name in dvc} == set(smk) - {TARGET}
    assert {"acquire", "align", "shard", "degrade", "train_prior", "train", "restore", "evaluate", "bias",
            "report"} == set(dvc)


def test_evaluate_target_reaches_every_report(both: tuple[dict, dict]) -> None:
    """`snakemake evaluate` must do what `dvc repro` does: its inputs are the outputs of the last stages."""
    dvc, smk = both
    target = smk[TARGET]
    assert target["cmd"] is None
    html = {out for out in dvc["report"]["outs"] if out.endswith(".html")}
    assert html <= set(target["deps"])
    assert {"reports/metrics.json", "reports/bias.json"} <= set(target["deps"])


def test_same_commands_inputs_outputs(both: tuple[dict, dict]) -> None:
    dvc, smk = both
    for name, stage in dvc.items():
        rule = _rule(smk, name)
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
        actual = sorted(json.dumps(value, sort_keys=True) for value in _rule(smk, name)["params"].values())
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


# ------------------------------------------------------------------------------------------- SLURM profile
SLURM_GPU_RULES = ("train_prior", "train", "restore", "evaluate_metrics")


def _planned_resources(output: str) -> dict[str, str]:
    """{rule: its 'resources:' line} from a Snakemake dry run's printout."""
    planned, rule = {}, None
    for line in output.splitlines():
        if line.startswith("rule ") and line.rstrip().endswith(":"):
            rule = line[len("rule "):].rstrip(":").strip()
        elif rule and line.strip().startswith("resources:"):
            planned[rule] = line.strip()
    return planned


@pytest.mark.skipif(importlib.util.find_spec("snakemake_executor_plugin_slurm") is None,
                    reason="snakemake-executor-plugin-slurm not installed")
def test_slurm_profile_plans_every_rule_with_its_resources(tmp_path: Path) -> None:
    """`snakemake --profile profiles/slurm -n evaluate` plans every stage with the profile's gpu/mem/runtime from
    an empty folder (the target alone pulls in training: the models are directory() outputs); lint is clean."""
    for name in ("dvc.yaml", "Snakefile", "workflow", "profiles", "src", "params.yaml"):
        (tmp_path / name).symlink_to(REPO / name)
    env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ['PATH']}"}
    rules = sorted(SNAKEMAKE_NAME.get(name, name) for name in _dvc_stages())
    profile = yaml.safe_load((REPO / "profiles" / "slurm" / "config.yaml").read_text())
    for stacked in ([], ["--workflow-profile", "none"]):  # profiles/default is stacked on top unless turned off
        dry = subprocess.run([str(BIN / "snakemake"), "--profile", "profiles/slurm", *stacked, "-n", "--forceall",
                              TARGET], cwd=tmp_path, env=env,
                             capture_output=True, text=True)
        assert dry.returncode == 0, dry.stdout + dry.stderr
        planned = _planned_resources(dry.stdout + dry.stderr)
        assert planned.pop(TARGET, None) is not None  # the target itself: a local rule, no job script
        assert sorted(planned) == rules
        for rule in rules:
            wanted = {**profile["default-resources"], **profile["set-resources"][rule]}
            for key, value in wanted.items():
                assert f"{key}={value}" in planned[rule], (rule, key, planned[rule])
        for rule in SLURM_GPU_RULES:
            assert "gpu=1" in planned[rule] and "slurm_partition=gpu" in planned[rule], rule
    lint = subprocess.run([str(BIN / "snakemake"), "--profile", "profiles/slurm", "--workflow-profile", "none",
                           "--lint"], cwd=tmp_path, env=env, capture_output=True, text=True)
    assert lint.returncode == 0 and "Lints for rule" not in lint.stdout + lint.stderr, lint.stdout + lint.stderr


# ------------------------------------------------------------------------------------- against dlfp/layout.py
def _expected_paths(stage: str) -> tuple[dict[str, str], set[str]]:
    """The stage's command options and outputs as layout.py defines them."""
    options = {"--out": layout.STAGE_OUT[stage], "--log": layout.log_path(stage)}
    if stage in layout.STAGE_IN:
        options["--in"] = layout.STAGE_IN[stage]
    outs = {layout.STAGE_OUT[stage]}
    if stage == "train":
        options.update({"--prior": layout.PRIOR_CHECKPOINT, "--pairs": layout.PAIRS})
    elif stage == "evaluate":
        options.update({"--restored": layout.RESTORED, "--metrics": layout.METRICS_SUMMARY})
        outs.add(layout.METRICS_SUMMARY)
    elif stage == "bias":
        options.update({"--shards": layout.SHARDS, "--pairs": layout.PAIRS, "--restored": layout.RESTORED,
                        "--evaluation": layout.EVALUATION, "--summary": layout.BIAS_SUMMARY})
        outs.add(layout.BIAS_SUMMARY)
    elif stage == "report":
        options.update({"--data": layout.DATA_DIR, "--models": layout.MODELS_DIR})
        outs = {*layout.REPORT_FILES, *(f"{layout.REPORTS_DIR}/{name}" for name in layout.REPORT_ASSET_FOLDERS)}
    return options, outs


def _options(cmd: str) -> dict[str, str]:
    words = cmd.split()
    return {flag: value for flag, value in zip(words[2::2], words[3::2], strict=True)}


def test_both_wire_the_stages_on_the_layout_paths(both: tuple[dict, dict]) -> None:
    dvc, smk = both
    assert tuple(dvc) == layout.STAGES
    for stage in layout.STAGES:
        options, outs = _expected_paths(stage)
        for where, entry in (("dvc.yaml", dvc[stage]), ("Snakemake", _rule(smk, stage))):
            assert entry["cmd"].split()[:2] == ["dlfp", stage], (where, stage)
            assert _options(entry["cmd"]) == options, (where, stage)
            assert set(entry["outs"]) == outs, (where, stage)
        assert _rule(smk, stage)["log"] == [layout.log_path(stage)]


def test_cli_defaults_are_the_layout_paths() -> None:
    """A stage run without path options uses what dvc.yaml and Snakemake pass (restore has no defaults)."""
    from dlfp.cli import build_parser

    parser = build_parser()
    dests = {"--in": "inp", "--out": "out", "--log": "log"}
    for stage in layout.STAGES:
        options, _ = _expected_paths(stage)
        args = vars(parser.parse_args([stage] if stage != "restore" else [stage, "--in", "p", "--out", "o"]))
        for flag, path in options.items():
            if flag == "--log" or (stage == "restore" and flag in ("--in", "--out")):
                continue
            assert args[dests.get(flag, flag.lstrip("-"))] == Path(path), (stage, flag)


# A quoted stage path ("data/pairs", "reports", ...); config["data"], a params.yaml section, is not one.
PATH_LITERAL = re.compile(r"""(?<!\[)["'](?:data|models|reports|logs)(?:/[^"']*)?["']""")


def test_snakemake_rules_take_paths_from_layout_and_upstream_rules() -> None:
    """No stage path is written in the rules: outputs and logs come from dlfp.layout, inputs from upstream
    `rules.<stage>.output`, and every shell command uses {input.x}/{output.x}/{log}."""
    files = [REPO / "Snakefile", *sorted((REPO / "workflow" / "rules").glob("*.smk"))]
    for path in files:
        assert not PATH_LITERAL.findall(path.read_text(encoding="utf-8")), path
    assert "from dlfp import layout" in (REPO / "Snakefile").read_text(encoding="utf-8")
    smk = _snakemake_rules()
    for stage in layout.STAGES:
        rule = _rule(smk, stage)
        assert "{log}" in rule["template"], stage
        assert stage == "report" or "{output." in rule["template"], stage
        assert stage == "acquire" or stage == "report" or "{input." in rule["template"], stage


# Names whose one definition is dlfp/layout.py, and the values that must not be redefined under another name.
LAYOUT_NAMES = ("STAGES", "INDEX_NAME", "RECEIPT_NAME", "MANIFEST_NAME", "REJECTS_NAME", "META_NAME",
                "PER_IMAGE_NAME", "SUMMARY_NAME", "TIMINGS_NAME", "PRIOR_FILE", "GFPGAN_FILE", "METRICS_JSON",
                "BIAS_JSON", "CARD_NAME", "STATUS_OK", "STATUS_NOT_RUN", "NOT_COMPUTED", "LQ_RESTORER",
                "DATA_FOLDERS", "MODEL_FOLDERS")
LAYOUT_VALUES = {getattr(layout, name) for name in ("INDEX_NAME", "RECEIPT_NAME", "PER_IMAGE_NAME", "TIMINGS_NAME",
                                                     "METRICS_JSON", "BIAS_JSON", "CARD_NAME", "STATUS_OK",
                                                     "STATUS_NOT_RUN", "NOT_COMPUTED", "LQ_RESTORER")}


def _module_constants(path: Path) -> list[tuple[str, object]]:
    """(name, value) of every module-level assignment; value is the literal, or None when not a constant."""
    found = []
    for node in ast.parse(path.read_text(encoding="utf-8")).body:
        targets = node.targets if isinstance(node, ast.Assign) else [node.target] if isinstance(node, ast.AnnAssign) \
            else []
        value = node.value.value if isinstance(getattr(node, "value", None), ast.Constant) else None
        for target in targets:
            for name in target.elts if isinstance(target, ast.Tuple) else [target]:
                if isinstance(name, ast.Name):
                    found.append((name.id, value))
    return found


def test_layout_names_are_defined_once() -> None:
    """Artifact names, status words and the LQ restorer name live in layout.py; other modules import them."""
    own_stages = {REPO / "src/dlfp/report/training_page.py"}  # its STAGES: the two training stages' page specs
    for path in sorted((REPO / "src" / "dlfp").rglob("*.py")):
        if path.name == "layout.py":
            continue
        for name, value in _module_constants(path):
            assert not (name in LAYOUT_NAMES and not (name == "STAGES" and path in own_stages)), (path, name)
            assert value not in LAYOUT_VALUES, (path, name, value)


def test_report_outputs_are_the_registered_pages() -> None:
    """The report's wired outputs (layout.py) are the files its pages write: every registered page and asset folder."""
    from dlfp.report import evaluation_page, load_pages, training_page

    assert {page.filename for page in load_pages()} == set(layout.REPORT_PAGES)
    assert {evaluation_page.ASSETS_DIR, training_page.ASSETS_DIR} == set(layout.REPORT_ASSET_FOLDERS)
