# Restoration of the fixed test pairs and their evaluation. `snakemake --cores 8 evaluate` runs up to here.


rule restore:
    input:
        "data/pairs",
        "models/gfpgan/gfpgan.pth",
        "src/dlfp/restore/testset.py",
        "src/dlfp/restore/restorers.py",
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


rule evaluate:
    input:
        "data/pairs",
        "data/restored",
        "src/dlfp/evaluate/stage.py",
        "src/dlfp/evaluate/metrics.py",
    output:
        directory("data/evaluation"),
        "reports/metrics.json",
    params:
        evaluate=config["evaluate"],
    resources:
        gpu=1,
    log:
        "logs/evaluate.log",
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp evaluate --in data/pairs --restored data/restored --out data/evaluation --metrics reports/metrics.json"
        " --log logs/evaluate.log"
