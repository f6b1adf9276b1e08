"""MOVA's audio codec: the DAC autoencoder in continuous (VAE) mode, written from its description.

Mirrors `DAC` in `mova/diffusion/models/dac_vae.py` with `continuous=True`, as `MOVA.__call__` uses it:

- encoder: 7-tap conv (1 -> encoder_dim), then per rate r an `EncoderBlock` (three residual units with
  dilations 1, 3, 9 at half width, Snake, strided conv of kernel 2r doubling the channels), then Snake and
  a 3-tap conv to `latent_dim`; `quant_conv` (1x1) to 2·latent_dim = mean ‖ log-variance (clamped to [-30, 20]);
- decoder: `post_quant_conv` (1x1), 7-tap conv to decoder_dim, per rate r a `DecoderBlock` (Snake, transposed
  conv of kernel 2r and stride r halving the channels, three residual units), Snake, 7-tap conv to 1 channel, tanh.

Parameters use plain `weight` keys: exactly the official state dict with `use_weight_norm=false` (the released
checkpoints). Files that store weight-norm pairs (`weight_g`/`weight_v`) are fused with `fuse_weight_norm`
before loading. Convolutions are the operations factory's cast-at-forward layers, so the decoder computes in
the dtype of its input (the official decode runs under fp32 autocast) whatever the storage dtype.
"""

from __future__ import annotations

import math
from typing import Dict, List, Optional, Tuple

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint.configs import AudioVAEConfig
from .ops import CastMixin, Operations

LOGVAR_MIN = -30.0
LOGVAR_MAX = 20.0


class CastConvTranspose1d(CastMixin, nn.ConvTranspose1d):
    """`nn.ConvTranspose1d` that casts its weight and bias to the input's dtype/device at forward.

    Input [B, C_in, L] -> [B, C_out, (L − 1)·stride − 2·padding + kernel + output_padding].
    """

    def forward(self, x: torch.Tensor) -> torch.Tensor:  # type: ignore[override]
        weight, bias = self.cast_weight(x)
        return F.conv_transpose1d(x, weight, bias, self.stride, self.padding, self.output_padding,
                                  self.groups, self.dilation)


class Snake1d(nn.Module):
    """Snake activation `x + sin²(α·x)/(α + 1e-9)` with a per-channel α [1, C, 1]. Input [B, C, L].

    α is cast to the input's dtype first: the official decode runs under CUDA autocast, where `reciprocal`
    and `pow` are computed in float32 whatever α's storage dtype.
    """

    def __init__(self, channels: int, ops: Operations) -> None:
        super().__init__()
        self.alpha = ops.Parameter(1, channels, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        alpha = self.alpha.to(device=x.device, dtype=x.dtype)
        shape = x.shape
        flat = x.reshape(shape[0], shape[1], -1)
        flat = flat + (alpha + 1e-9).reciprocal() * torch.sin(alpha * flat).pow(2)
        return flat.reshape(shape)


class ResidualUnit(nn.Module):
    """Snake, dilated 7-tap conv, Snake, 1x1 conv, plus the input (centre-cropped if the output is shorter)."""

    def __init__(self, dim: int, dilation: int, ops: Operations) -> None:
        super().__init__()
        self.block = nn.Sequential(
            Snake1d(dim, ops),
            ops.Conv1d(dim, dim, kernel_size=7, dilation=dilation, padding=(6 * dilation) // 2),
            Snake1d(dim, ops),
            ops.Conv1d(dim, dim, kernel_size=1),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.block(x)
        trim = (x.shape[-1] - y.shape[-1]) // 2
        if trim > 0:
            x = x[..., trim:-trim]
        return x + y


class EncoderBlock(nn.Module):
    """Three residual units at `dim // 2` channels, Snake, then a stride-`stride` conv to `dim` channels."""

    def __init__(self, dim: int, stride: int, ops: Operations) -> None:
        super().__init__()
        half = dim // 2
        self.block = nn.Sequential(
            ResidualUnit(half, 1, ops),
            ResidualUnit(half, 3, ops),
            ResidualUnit(half, 9, ops),
            Snake1d(half, ops),
            ops.Conv1d(half, dim, kernel_size=2 * stride, stride=stride, padding=math.ceil(stride / 2)),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DecoderBlock(nn.Module):
    """Snake, transposed conv (×`stride` in time, `in_dim` -> `out_dim`), three residual units."""

    def __init__(self, in_dim: int, out_dim: int, stride: int, ops: Operations) -> None:
        super().__init__()
        upsample = CastConvTranspose1d(in_dim, out_dim, kernel_size=2 * stride, stride=stride,
                                       padding=math.ceil(stride / 2), output_padding=stride % 2,
                                       device=ops.device, dtype=ops.dtype)
        self.block = nn.Sequential(
            Snake1d(in_dim, ops),
            upsample,
            ResidualUnit(out_dim, 1, ops),
            ResidualUnit(out_dim, 3, ops),
            ResidualUnit(out_dim, 9, ops),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DacEncoder(nn.Module):
    """Waveform [B, 1, S] -> features [B, latent_dim, S / prod(rates)] (state-dict prefix `encoder.`)."""

    def __init__(self, dim: int, rates: List[int], latent_dim: int, ops: Operations) -> None:
        super().__init__()
        layers: List[nn.Module] = [ops.Conv1d(1, dim, kernel_size=7, padding=3)]
        for stride in rates:
            dim *= 2
            layers.append(EncoderBlock(dim, stride, ops))
        layers += [Snake1d(dim, ops), ops.Conv1d(dim, latent_dim, kernel_size=3, padding=1)]
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class DacDecoder(nn.Module):
    """Latents [B, latent_dim, L] -> waveform [B, 1, L·prod(rates)] in (-1, 1) (state-dict prefix `decoder.`)."""

    def __init__(self, latent_dim: int, channels: int, rates: List[int], ops: Operations) -> None:
        super().__init__()
        layers: List[nn.Module] = [ops.Conv1d(latent_dim, channels, kernel_size=7, padding=3)]
        out_dim = channels
        for i, stride in enumerate(rates):
            in_dim, out_dim = channels // 2 ** i, channels // 2 ** (i + 1)
            layers.append(DecoderBlock(in_dim, out_dim, stride, ops))
        layers += [Snake1d(out_dim, ops), ops.Conv1d(out_dim, 1, kernel_size=7, padding=3), nn.Tanh()]
        self.model = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)


class DacVAE(nn.Module):
    """MOVA's DAC audio VAE (continuous mode). Sample rate `config.sample_rate` (48 kHz released),
    hop `prod(encoder_rates)` samples per latent step (960 released), `latent_dim` channels (128 released)."""

    def __init__(self, config: AudioVAEConfig, ops: Operations) -> None:
        super().__init__()
        if not config.continuous:
            raise ValueError("DacVAE implements the continuous (VAE) DAC only; the config says continuous=false")
        self.config = config
        self.sample_rate = int(config.sample_rate)
        self.hop_length = int(config.hop_length)
        self.latent_dim = int(config.resolved_latent_dim)
        self.encoder = DacEncoder(config.encoder_dim, list(config.encoder_rates), self.latent_dim, ops)
        self.quant_conv = ops.Conv1d(self.latent_dim, 2 * self.latent_dim, kernel_size=1)
        self.post_quant_conv = ops.Conv1d(self.latent_dim, self.latent_dim, kernel_size=1)
        self.decoder = DacDecoder(self.latent_dim, config.decoder_dim, list(config.decoder_rates), ops)
        self.eval()
        self.requires_grad_(False)

    def latent_length(self, num_samples: int) -> int:
        """Latent steps for `num_samples` audio samples: `(n − 1)//hop + 1` (official `prepare_audio_latents`)."""
        return (int(num_samples) - 1) // self.hop_length + 1

    def preprocess(self, wave: torch.Tensor, sample_rate: Optional[int] = None) -> torch.Tensor:
        """Right-pad [B, 1, S] with zeros to a multiple of the hop (official `DAC.preprocess`).

        sample_rate must equal the codec's (None means the codec's); resampling is the caller's job.
        """
        if sample_rate is not None and int(sample_rate) != self.sample_rate:
            raise ValueError(f"audio is at {sample_rate} Hz but the audio VAE expects {self.sample_rate} Hz; resample first")
        length = wave.shape[-1]
        pad = math.ceil(length / self.hop_length) * self.hop_length - length
        return F.pad(wave, (0, pad))

    @torch.no_grad()
    def encode(self, wave: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]:
        """Waveform [B, 1, S] (S a multiple of the hop; see `preprocess`) -> (mean, logvar), each
        [B, latent_dim, S/hop]; logvar clamped to [-30, 20] (official `DiagonalGaussianDistribution`)."""
        if wave.ndim != 3 or wave.shape[1] != 1:
            raise ValueError(f"waveform must be [B, 1, samples], got {list(wave.shape)}")
        moments = self.quant_conv(self.encoder(wave))
        mean, logvar = torch.chunk(moments, 2, dim=1)
        return mean, torch.clamp(logvar, LOGVAR_MIN, LOGVAR_MAX)

    @torch.no_grad()
    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Latents [B, latent_dim, L] -> waveform [B, 1, L·hop] in (-1, 1), computed in z's dtype.

        No latent normalization (official `DAC.decode`: `post_quant_conv` then the decoder).
        """
        if z.ndim != 3 or z.shape[1] != self.latent_dim:
            raise ValueError(f"audio latents must be [B, {self.latent_dim}, L], got {list(z.shape)}")
        return self.decoder(self.post_quant_conv(z))


def fuse_weight_norm(state_dict: Dict[str, torch.Tensor]) -> Dict[str, torch.Tensor]:
    """Return a new state dict where each `x.weight_g` / `x.weight_v` pair becomes `x.weight = g·v/‖v‖`.

    The norm is over every dim but 0, exactly `torch.nn.utils.weight_norm(module, dim=0)` (computed in float32
    and stored back in v's dtype). Other keys pass through unchanged, so a file that already has plain weights
    is returned as is. A lone `weight_g` or `weight_v`, or a pair beside a plain `weight`, raises ValueError.
    """
    out: Dict[str, torch.Tensor] = {}
    for key, value in state_dict.items():
        if key.endswith(".weight_g") or key.endswith(".weight_v"):
            continue
        out[key] = value
    for key, g in state_dict.items():
        if not key.endswith(".weight_g"):
            continue
        stem = key[: -len("_g")]
        v = state_dict.get(stem + "_v")
        if v is None:
            raise ValueError(f"audio_vae: {key} has no matching {stem}_v")
        if stem in state_dict:
            raise ValueError(f"audio_vae: {stem} is stored both plain and as weight_g/weight_v")
        if v.device.type == "meta":
            out[stem] = torch.empty(v.shape, dtype=v.dtype, device="meta")
            continue
        fused = torch._weight_norm(v.to(torch.float32), g.to(torch.float32), 0)
        out[stem] = fused.to(v.dtype)
    for key in state_dict:
        if key.endswith(".weight_v") and key[: -len("_v")] + "_g" not in state_dict:
            raise ValueError(f"audio_vae: {key} has no matching {key[:-len('_v')]}_g")
    return out

