"""The Wan video VAE of MOVA (diffusers `AutoencoderKLWan`) with MOVA's per-channel latent normalization.

Mirrors `MOVA.normalize_video_latents` / `denormalize_video_latents`, the encode in `MOVA.prepare_latents`
(`video_vae.encode(video).latent_dist.mode()`) and the decode in `MOVA.__call__`
(`video_vae.decode(denormalized).sample`, which diffusers clamps to [-1, 1]).
"""

from __future__ import annotations

import logging
from contextlib import contextmanager, nullcontext
from typing import Callable, Iterator, Optional

import torch
from torch import nn

from ..checkpoint.configs import VideoVAEConfig

logger = logging.getLogger(__name__)


def build_video_vae_module(config: VideoVAEConfig) -> nn.Module:
    """Build diffusers' `AutoencoderKLWan` from `video_vae/config.json` on the meta device (no allocation).

    Weights are assigned later with `load_state_dict(sd, assign=True)`; state-dict keys are diffusers' own
    (the shipped `diffusion_pytorch_model*.safetensors`). The module is in eval mode.
    """
    from diffusers import AutoencoderKLWan

    raw = dict(config.raw) if config.raw else config.to_dict()
    with torch.device("meta"):
        module = AutoencoderKLWan.from_config(raw)
    module.eval()
    module.requires_grad_(False)
    return module


def _module_dtype(module: nn.Module) -> torch.dtype:
    for param in module.parameters():
        return param.dtype
    return torch.float32


def _module_device(module: nn.Module) -> torch.device:
    for param in module.parameters():
        return param.device
    return torch.device("cpu")


class VideoVAE:
    """Wraps the Wan VAE module with MOVA's latent statistics.

    Latent layout: `[B, z_dim, T', H/8, W/8]` with `T' = (F − 1)/4 + 1`. "Normalized" latents are what the
    DiTs see: `(z − mean)·(1/std)` per channel.
    """

    def __init__(self, module: nn.Module, config: VideoVAEConfig,
                 interrupt_check: Optional[Callable[[], None]] = None) -> None:
        self.module = module
        self.config = config
        self.interrupt_check = interrupt_check
        """Called before each chunk the encoder or decoder processes (diffusers calls them once per 4 pixel
        frames / per latent frame, tiles included); raises to cancel a long encode or decode."""

    @contextmanager
    def _interruptible(self) -> Iterator[None]:
        """Hooks `interrupt_check` onto the encoder and decoder for one call (the module is shared: no hook
        stays behind)."""
        if self.interrupt_check is None:
            yield
            return
        check = self.interrupt_check
        hooks = [part.register_forward_pre_hook(lambda module, args: check())
                 for part in (getattr(self.module, "encoder", None), getattr(self.module, "decoder", None))
                 if part is not None]
        try:
            yield
        finally:
            for hook in hooks:
                hook.remove()

    @property
    def z_dim(self) -> int:
        return int(self.config.z_dim)

    @property
    def dtype(self) -> torch.dtype:
        return _module_dtype(self.module)

    @property
    def device(self) -> torch.device:
        return _module_device(self.module)

    def _stats(self, like: torch.Tensor):
        shape = (1, self.z_dim, 1, 1, 1)
        mean = torch.tensor(self.config.latents_mean, device=like.device, dtype=like.dtype).view(shape)
        std = torch.tensor(self.config.latents_std, device=like.device, dtype=like.dtype).view(shape)
        return mean, std

    def normalize(self, z: torch.Tensor) -> torch.Tensor:
        """Raw VAE latents -> normalized: `(z − mean) · (1/std)`, the reciprocal taken in z's dtype
        (official `normalize_video_latents`). z: [B, z_dim, T', h, w]."""
        mean, std = self._stats(z)
        return (z - mean) * (1.0 / std)

    def denormalize(self, z: torch.Tensor) -> torch.Tensor:
        """Normalized latents -> raw VAE latents: `z·std + mean` (official `denormalize_video_latents`)."""
        mean, std = self._stats(z)
        return z * std + mean

    def set_tiling(self, enabled: bool, **kwargs) -> None:
        """Switch diffusers' tiled encode/decode on or off (kwargs: tile sizes/strides of `enable_tiling`).

        Tiling lowers peak memory; its outputs differ slightly from untiled ones at tile seams.
        """
        if enabled:
            self.module.enable_tiling(**kwargs)
        else:
            self.module.disable_tiling()
        logger.debug("video_vae: tiling %s %s", "on" if enabled else "off", kwargs or "")

    @torch.no_grad()
    def encode_mode(self, video: torch.Tensor) -> torch.Tensor:
        """Pixel video [B, 3, F, H, W] in [-1, 1] -> posterior mode (mean) [B, z_dim, T', H/8, W/8], float32.

        The input is cast to the VAE's weight dtype as the official `prepare_latents` does; no sampling.
        """
        if video.ndim != 5 or video.shape[1] != 3:
            raise ValueError(f"video must be [B, 3, F, H, W], got {list(video.shape)}")
        video = video.to(device=self.device, dtype=self.dtype)
        with self._interruptible():
            mode = self.module.encode(video).latent_dist.mode()
        return mode.to(torch.float32)

    @torch.no_grad()
    def encode_condition_video(self, video: torch.Tensor) -> torch.Tensor:
        """Pixel video [1, 3, F, H, W] in [-1, 1] -> normalized latent mode [1, z_dim, T', H/8, W/8], float32."""
        return self.normalize(self.encode_mode(video))

    @torch.no_grad()
    def decode(self, latents_normalized: torch.Tensor, autocast_dtype: Optional[torch.dtype] = torch.bfloat16) -> torch.Tensor:
        """Normalized latents [B, z_dim, T', h, w] -> video [B, 3, F, 8h, 8w] in [-1, 1], float32.

        Denormalizes in the latents' dtype, then runs the VAE decoder. On CUDA the official pipeline decodes
        under `torch.autocast("cuda", bfloat16)`; `autocast_dtype` reproduces that there (None: no autocast).
        Elsewhere the input is cast to the VAE's weight dtype.
        """
        if latents_normalized.ndim != 5 or latents_normalized.shape[1] != self.z_dim:
            raise ValueError(f"latents must be [B, {self.z_dim}, T', h, w], got {list(latents_normalized.shape)}")
        z = self.denormalize(latents_normalized)
        device = self.device
        use_autocast = device.type == "cuda" and autocast_dtype is not None
        if use_autocast:
            z = z.to(device=device)
            context = torch.autocast("cuda", dtype=autocast_dtype)
        else:
            z = z.to(device=device, dtype=self.dtype)
            context = nullcontext()
        with context, self._interruptible():
            video = self.module.decode(z).sample
        return video.to(torch.float32)

    @torch.no_grad()
    def decode_chunks(self, latents_normalized: torch.Tensor, chunk_latent_frames: int = 4,
                      autocast_dtype: Optional[torch.dtype] = torch.bfloat16) -> Iterator[torch.Tensor]:
        """Decode `[1, z_dim, T', h, w]` a few latent frames at a time; yields `[1, 3, n, 8h, 8w]` in [-1, 1].

        The same computation as `decode` (diffusers `AutoencoderKLWan._decode`: the decoder runs one latent frame
        at a time and carries a causal feature cache), only each chunk's frames are handed out instead of
        concatenated, so peak memory is the cache plus one chunk. The cache carries across chunks, so the
        frames equal a whole decode. Falls back to `decode` when the module is tiled or patchified.
        """
        if latents_normalized.ndim != 5 or latents_normalized.shape[1] != self.z_dim:
            raise ValueError(f"latents must be [B, {self.z_dim}, T', h, w], got {list(latents_normalized.shape)}")
        module = self.module
        if chunk_latent_frames < 1:
            raise ValueError(f"chunk_latent_frames must be at least 1, got {chunk_latent_frames}")
        # `_feat_map` exists only once `clear_cache()` has run: a freshly built module has none yet
        if getattr(module, "use_tiling", False) or getattr(module.config, "patch_size", None) is not None \
                or not hasattr(module, "clear_cache"):
            yield self.decode(latents_normalized, autocast_dtype)
            return
        device = self.device
        use_autocast = device.type == "cuda" and autocast_dtype is not None
        context = torch.autocast("cuda", dtype=autocast_dtype) if use_autocast else nullcontext()
        count = latents_normalized.shape[2]
        module.clear_cache()
        try:
            for start in range(0, count, chunk_latent_frames):
                z = self.denormalize(latents_normalized[:, :, start:start + chunk_latent_frames])
                z = z.to(device=device) if use_autocast else z.to(device=device, dtype=self.dtype)
                outputs = []
                with context, self._interruptible():
                    x = module.post_quant_conv(z)
                    for i in range(x.shape[2]):
                        module._conv_idx = [0]
                        outputs.append(module.decoder(x[:, :, i:i + 1], feat_cache=module._feat_map,
                                                      feat_idx=module._conv_idx, first_chunk=start + i == 0))
                yield torch.clamp(torch.cat(outputs, 2), min=-1.0, max=1.0).to(torch.float32)
        finally:
            module.clear_cache()
