# Wiring only. The same `dlfp` commands on the same paths as dvc.yaml (tests/test_wiring.py checks it).
configfile: "params.yaml"


# The default target: the whole chain through restore -> evaluate -> bias -> report, like `dvc repro`:
# `snakemake --cores 8 evaluate` (or no target). The `dlfp evaluate` stage itself is the rule `evaluate_metrics`.
rule evaluate:
    localrule: True
    input:
        "reports/index.html",
        "reports/data.html",
        "reports/training.html",
        "reports/evaluation.html",
        "reports/bias.html",
        "reports/model.html",
        "reports/MODEL_CARD.md",
        "reports/metrics.json",
        "reports/bias.json",


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
