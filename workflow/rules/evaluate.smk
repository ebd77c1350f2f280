# Restoration of the fixed test pairs, their evaluation and the bias analysis.
# The DVC stage `evaluate` is the rule `evaluate_metrics` here: in Snakemake, `evaluate` is the target that runs
# the whole chain up to the reports (Snakefile), so `snakemake --cores 8 evaluate` == `dvc repro`.


rule restore:
    input:
        "data/pairs",
        "models/gfpgan",
        "src/dlfp/stages/restore.py",
        "src/dlfp/restorers.py",
        "src/dlfp/inference.py",
    output:
        directory("data/restored"),
    params:
        samples_per_shard=config["shard"]["samples_per_shard"],
        restore=config["restore"],
    resources:
        gpu=1,
    log:
        "logs/restore.log",
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp restore --in data/pairs --out data/restored --log logs/restore.log"


rule evaluate_metrics:
    input:
        "data/pairs",
        "data/restored",
        "src/dlfp/stages/evaluate",
        "src/dlfp/metrics",
    output:
        directory("data/evaluation"),
        "reports/metrics.json",
    params:
        evaluate=config["evaluate"],
        pairs_per_preset=config["report"]["pairs_per_preset"],
    resources:
        gpu=1,
    log:
        "logs/evaluate.log",
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp evaluate --in data/pairs --restored data/restored --out data/evaluation --metrics reports/metrics.json"
        " --log logs/evaluate.log"


rule bias:
    input:
        "data/shards",
        "data/pairs",
        "data/restored",
        "data/evaluation",
        "src/dlfp/bias",
        "src/dlfp/stages/bias.py",
        "src/dlfp/io/tables.py",
    output:
        directory("data/bias"),
        "reports/bias.json",
    params:
        seed=config["seed"],
        bias=config["bias"],
    log:
        "logs/bias.log",
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp bias --shards data/shards --pairs data/pairs --restored data/restored --evaluation data/evaluation"
        " --out data/bias --summary reports/bias.json --log logs/bias.log"
