"""The network's pieces: the ops factory, RoPE, DiT blocks and towers, bridge, joint denoiser, text encoder, VAEs, LoRA adapters."""
