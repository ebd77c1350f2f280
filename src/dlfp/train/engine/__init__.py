"""The training engine shared by train_prior and train: EMA, checkpoints and exact resume, distributed, logs, loop."""
