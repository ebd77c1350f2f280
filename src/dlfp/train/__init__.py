"""Training library: the engine shared by every network (engine/: EMA, checkpoints and exact resume, distributed,
logs, the loop and run_training), the WebDataset input (data.py), the StyleGAN2 prior (prior.py, with its face
measurement in prior_metrics.py) and GFP-GAN (gfpgan.py). The stages that run them are dlfp.stages.train_prior
and dlfp.stages.train."""
