# The static HTML reports under reports/.


rule report:
    input:
        "data/raw",
        "data/aligned",
        "data/shards",
        "data/pairs",
        "src/dlfp/report",
    output:
        "reports/index.html",
        "reports/data.html",
    params:
        report=config["report"],
    log:
        "logs/report.log",
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp report --data data --out reports --log logs/report.log"
