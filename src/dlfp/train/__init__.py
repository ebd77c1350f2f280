"""Training: shared loop infrastructure (loop.py), the WebDataset input (data.py) and the two stages,
`train_prior` (StyleGAN2 facial prior, prior.py) and `train` (GFP-GAN, gfpgan.py)."""
