"""GFP-GAN losses (gfpgan-spec section 4): pixel and pyramid L1, GAN + lazy R1, perceptual and Gram style,
facial-component GAN and style, identity. Every function takes plain tensors and returns a scalar tensor."""
