"""Sampling: scheduler, guidance, the denoising loop, conditioning, A2V/V2A drivers and the public MovaPipeline."""
