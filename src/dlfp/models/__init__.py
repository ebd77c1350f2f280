"""Networks: dlib model files, the identity network, StyleGAN2 and GFP-GAN."""
