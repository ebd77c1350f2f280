# Wiring only. The same `dlfp` commands on the same paths as dvc.yaml (tests/test_wiring.py checks it).
configfile: "params.yaml"


include: "workflow/rules/data.smk"
include: "workflow/rules/train.smk"
include: "workflow/rules/evaluate.smk"
include: "workflow/rules/report.smk"
