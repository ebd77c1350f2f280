"""The training engine shared by train_prior and train: ema, checkpoint (save/load, exact resume, provenance),
distributed (process group, gradient averaging, rank seeds, device), logging (losses.csv, sample grids), loop
(train_loop, stop signals, lr schedule) and run (run_training: the one skeleton of a training run)."""
