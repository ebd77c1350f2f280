# The static HTML reports under reports/. index.html shows every parameter, so every section is a parameter.


rule report:
    input:
        "data/raw",
        "data/aligned",
        "data/shards",
        "data/pairs",
        "models/prior",
        "models/gfpgan",
        "data/restored",
        "data/evaluation",
        "data/bias",
        "reports/metrics.json",
        "reports/bias.json",
        "src/dlfp/report",
        "src/dlfp/stages/report.py",
    output:
        "reports/index.html",
        "reports/data.html",
        "reports/training.html",
        "reports/evaluation.html",
        "reports/bias.html",
        "reports/model.html",
        "reports/MODEL_CARD.md",
        directory("reports/training"),
        directory("reports/evaluation"),
    params:
        seed=config["seed"],
        data=config["data"],
        align=config["align"],
        shard=config["shard"],
        degrade=config["degrade"],
        train_prior=config["train_prior"],
        train=config["train"],
        restore=config["restore"],
        evaluate=config["evaluate"],
        bias=config["bias"],
        report=config["report"],
    log:
        "logs/report.log",
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp report --data data --models models --out reports --log logs/report.log"
