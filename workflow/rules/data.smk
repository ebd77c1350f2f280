# Data stages: acquire -> align -> shard -> degrade. Parameters enter through `params:` so that changing
# them reruns the rule (params.yaml itself is deliberately not an input).


rule acquire:
    input:
        "src/dlfp/stages/acquire",
        "src/dlfp/ffhq.py",
        "src/dlfp/io/download.py",
        "src/dlfp/io/images.py",
    output:
        directory("data/raw"),
    params:
        source=config["data"]["source"],
        folder=config["data"]["folder"],
        image_count=config["data"]["count"],
        max_pixels=config["data"]["max_pixels"],
        ffhq=config["data"]["ffhq"],
        fallback=config["data"]["fallback"],
    log:
        "logs/acquire.log",
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp acquire --out data/raw --log logs/acquire.log"


rule align:
    input:
        "data/raw",
        "src/dlfp/stages/align.py",
        "src/dlfp/faces/alignment.py",
        "src/dlfp/faces/landmarks.py",
    output:
        directory("data/aligned"),
    params:
        size=config["data"]["size"],
        align=config["align"],
    log:
        "logs/align.log",
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp align --in data/raw --out data/aligned --log logs/align.log"


rule shard:
    input:
        "data/aligned",
        "src/dlfp/stages/shard.py",
        "src/dlfp/shards/format.py",
    output:
        directory("data/shards"),
    params:
        source=config["data"]["source"],
        shard=config["shard"],
    log:
        "logs/shard.log",
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp shard --in data/aligned --out data/shards --log logs/shard.log"


rule degrade:
    input:
        "data/shards",
        "src/dlfp/stages/degrade.py",
        "src/dlfp/degradation.py",
        "src/dlfp/shards",
    output:
        directory("data/pairs"),
    params:
        seed=config["seed"],
        degrade=config["degrade"],
        samples_per_shard=config["shard"]["samples_per_shard"],
    log:
        "logs/degrade.log",
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp degrade --in data/shards --out data/pairs --log logs/degrade.log"
