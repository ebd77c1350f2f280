# The facial prior (StyleGAN2) and GFP-GAN training. GPU jobs: one at a time locally (profiles/default).


rule train_prior:
    input:
        shards=rules.shard.output.shards,
        code=[
            "src/dlfp/stages/train_prior.py",
            "src/dlfp/train/prior.py",
            "src/dlfp/train/prior_metrics.py",
            "src/dlfp/train/engine",
            "src/dlfp/train/data.py",
            "src/dlfp/models/stylegan2.py",
        ],
    output:
        prior=directory(layout.PRIOR),
    params:
        seed=config["seed"],
        train_prior=config["train_prior"],
    resources:
        gpu=1,
    log:
        layout.log_path("train_prior"),
    conda:
        "../envs/dlfp.yaml"
    shell:
        "dlfp train_prior --in {input.shards} --out {output.prior} --log {log}"


rule train:
    input:
        shards=rules.shard.output.shards,
        pairs=rules.degrade.output.pairs,
        prior=rules.train_prior.output.prior,
        code=[
            "src/dlfp/stages/train.py",
            "src/dlfp/train/gfpgan.py",
            "src/dlfp/train/engine",
            "src/dlfp/train/data.py",
            "src/dlfp/losses",
            "src/dlfp/models/gfpgan.py",
        ],
    output:
        gfpgan=directory(layout.GFPGAN),
    params:
        seed=config["seed"],
        presets=config["degrade"]["presets"],
        train=config["train"],
    resources:
        gpu=1,
    log:
        layout.log_path("train"),
    conda:
        "../envs/dlfp.yaml"
    shell:
        f"dlfp train --in {{input.shards}} --prior {{input.prior}}/{layout.PRIOR_FILE} --pairs {{input.pairs}}"
        " --out {output.gfpgan} --log {log}"
