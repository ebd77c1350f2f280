# The static HTML reports under reports/. index.html shows every parameter, so every section is a parameter.


rule report:
    input:
        raw=rules.acquire.output.raw,
        aligned=rules.align.output.aligned,
        shards=rules.shard.output.shards,
        pairs=rules.degrade.output.pairs,
        prior=rules.train_prior.output.prior,
        gfpgan=rules.train.output.gfpgan,
        restored=rules.restore.output.restored,
        evaluation=rules.evaluate_metrics.output.evaluation,
        bias=rules.bias.output.bias,
        metrics=rules.evaluate_metrics.output.metrics,
        bias_summary=rules.bias.output.summary,
        code=[
            "src/dlfp/report",
            "src/dlfp/stages/report.py",
        ],
    output:
        pages=list(layout.REPORT_FILES),
        assets=[directory(f"{layout.REPORTS_DIR}/{name}") for name in layout.REPORT_ASSET_FOLDERS],
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
        layout.log_path("report"),
    conda:
        "../envs/dlfp.yaml"
    shell:
        f"dlfp report --data {layout.DATA_DIR} --models {layout.MODELS_DIR} --out {layout.REPORTS_DIR} --log {{log}}"
