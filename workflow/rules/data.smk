# Data stages: acquire -> align -> shard -> degrade. Parameters enter through `params:` so that changing
# them reruns the rule (params.yaml itself is deliberately not an input). Paths: dlfp/layout.py (Snakefile).


rule acquire:
    input:
        code=[
            "src/dlfp/stages/acquire",
            "src/dlfp/ffhq.py",
            "src/dlfp/io/download.py",
            "src/dlfp/io/images.py",
        ],
    output:
        raw=directory(layout.RAW),
    params:
        source=config["data"]["source"],
        folder=config["data"]["folder"],
        image_count=config["data"]["count"],
        max_pixels=config["data"]["max_pixels"],
        ffhq=config["data"]["ffhq"],
        fallback=config["data"]["fallback"],
    log:
        layout.log_path("acquire"),
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp acquire --out {output.raw} --log {log}"


rule align:
    input:
        raw=rules.acquire.output.raw,
        code=[
            "src/dlfp/stages/align.py",
            "src/dlfp/faces/alignment.py",
            "src/dlfp/faces/landmarks.py",
        ],
    output:
        aligned=directory(layout.ALIGNED),
    params:
        size=config["data"]["size"],
        align=config["align"],
    log:
        layout.log_path("align"),
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp align --in {input.raw} --out {output.aligned} --log {log}"


rule shard:
    input:
        aligned=rules.align.output.aligned,
        code=[
            "src/dlfp/stages/shard.py",
            "src/dlfp/shards/format.py",
        ],
    output:
        shards=directory(layout.SHARDS),
    params:
        source=config["data"]["source"],
        shard=config["shard"],
    log:
        layout.log_path("shard"),
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp shard --in {input.aligned} --out {output.shards} --log {log}"


rule degrade:
    input:
        shards=rules.shard.output.shards,
        code=[
            "src/dlfp/stages/degrade.py",
            "src/dlfp/degradation.py",
            "src/dlfp/shards",
        ],
    output:
        pairs=directory(layout.PAIRS),
    params:
        seed=config["seed"],
        degrade=config["degrade"],
        samples_per_shard=config["shard"]["samples_per_shard"],
    log:
        layout.log_path("degrade"),
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp degrade --in {input.shards} --out {output.pairs} --log {log}"
