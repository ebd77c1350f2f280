# Restoration of the fixed test pairs, their evaluation and the bias analysis.
# The DVC stage `evaluate` is the rule `evaluate_metrics` here: in Snakemake, `evaluate` is the target that runs
# the whole chain up to the reports (Snakefile), so `snakemake --cores 8 evaluate` == `dvc repro`.


rule restore:
    input:
        pairs=rules.degrade.output.pairs,
        gfpgan=rules.train.output.gfpgan,
        code=[
            "src/dlfp/stages/restore.py",
            "src/dlfp/restorers.py",
            "src/dlfp/inference.py",
        ],
    output:
        restored=directory(layout.RESTORED),
    params:
        samples_per_shard=config["shard"]["samples_per_shard"],
        restore=config["restore"],
    resources:
        gpu=1,
    log:
        layout.log_path("restore"),
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp restore --in {input.pairs} --out {output.restored} --log {log}"


rule evaluate_metrics:
    input:
        pairs=rules.degrade.output.pairs,
        restored=rules.restore.output.restored,
        code=[
            "src/dlfp/stages/evaluate",
            "src/dlfp/metrics",
        ],
    output:
        evaluation=directory(layout.EVALUATION),
        metrics=layout.METRICS_SUMMARY,
    params:
        evaluate=config["evaluate"],
        pairs_per_preset=config["report"]["pairs_per_preset"],
    resources:
        gpu=1,
    log:
        layout.log_path("evaluate"),
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp evaluate --in {input.pairs} --restored {input.restored} --out {output.evaluation}"
        " --metrics {output.metrics} --log {log}"


rule bias:
    input:
        shards=rules.shard.output.shards,
        pairs=rules.degrade.output.pairs,
        restored=rules.restore.output.restored,
        evaluation=rules.evaluate_metrics.output.evaluation,
        code=[
            "src/dlfp/bias",
            "src/dlfp/stages/bias.py",
            "src/dlfp/io/tables.py",
        ],
    output:
        bias=directory(layout.BIAS),
        summary=layout.BIAS_SUMMARY,
    params:
        seed=config["seed"],
        bias=config["bias"],
    log:
        layout.log_path("bias"),
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp bias --shards {input.shards} --pairs {input.pairs} --restored {input.restored}"
        " --evaluation {input.evaluation} --out {output.bias} --summary {output.summary} --log {log}"
