# Wiring only. The same `dlfp` commands on the same paths as dvc.yaml; every path comes from dlfp/layout.py
# (tests/test_wiring.py checks both files against it).
import sys
from pathlib import Path

# layout.py is standard-library only: importing it from src/ needs no installed package (conda rules install it).
sys.path.insert(0, str(Path(workflow.basedir) / "src"))
from dlfp import layout  # noqa: E402


configfile: "params.yaml"


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"


# The default target: the whole chain through restore -> evaluate -> bias -> report, like `dvc repro`:
# `snakemake --cores 8 evaluate` (or no target). The `dlfp evaluate` stage itself is the rule `evaluate_metrics`.
rule evaluate:
    default_target: True
    localrule: True
    input:
        rules.report.output.pages,
        rules.evaluate_metrics.output.metrics,
        rules.bias.output.summary,
