"""One joint denoiser evaluation: video tower + audio tower + bridge (official `MOVA.inference_single_step`
and `MOVA.forward_dual_tower_dit`).

`joint_forward` returns the flow-velocity predictions of both streams for one context (one CFG branch);
classifier-free guidance and the scheduler step are the sampler's. Precision follows the official step:
the time embeddings run in float32 and are cast to the compute dtype (that of the video expert's weights,
bf16 for the released checkpoints); the context, latents and all blocks run in the compute dtype; the
predictions come back as float32.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from typing import Callable, List, Optional, Protocol, Tuple

import torch
from torch import nn

from .audio_dit import AudioDiT
from .bridge import DualTowerBridge
from .dit_block import compute_dtype_of
from .video_dit import VideoDiT

logger = logging.getLogger(__name__)

Executor = Callable[..., torch.Tensor]


@dataclass(frozen=True)
class BridgeScales:
    """How strongly the bridge adds its cross-modal terms (official `forward_dual_tower_dit` arguments).

    condition: the `condition_scale` for both directions (official pipeline: 1.0; None = the bridge's own
    default, its learned `condition_scale` if it has one, else 1.0). a2v / v2a: per-direction scales that
    override `condition` when not None (`a2v_condition_scale`, `v2a_condition_scale`). condition 0 or
    `enabled=False` switches the bridge off (nothing is added in any layer; the conditioners are not run).
    """

    condition: Optional[float] = 1.0
    a2v: Optional[float] = None
    v2a: Optional[float] = None
    enabled: bool = True

    def resolve(self, bridge: Optional[DualTowerBridge] = None) -> Tuple[float, float]:
        """The effective (a2v, v2a) multipliers."""
        if not self.enabled:
            return 0.0, 0.0
        fallback = self.condition
        if fallback is None:
            fallback = bridge.default_scale() if bridge is not None else 1.0
        a2v = self.a2v if self.a2v is not None else fallback
        v2a = self.v2a if self.v2a is not None else fallback
        return float(a2v), float(v2a)

    @property
    def is_off(self) -> bool:
        """True when neither direction adds anything."""
        return self.resolve() == (0.0, 0.0)


class SequenceSplit(Protocol):
    """Sequence parallelism seen from `joint_forward` (implemented by `mova_model.parallel.ulysses`).

    split: full token streams and their RoPE tables -> this rank's shards (same order as the arguments);
    executor: wraps the block executor so attention inside each block works on the shards;
    gather: the head outputs of the shards -> the full streams [B, Nv, Cv], [B, Na, Ca].
    """

    def split(self, video_x, audio_x, video_freqs, audio_freqs, video_rope, audio_rope) -> tuple: ...

    def executor(self, run: Executor, video_dit: nn.Module, audio_dit: nn.Module,
                 bridge: Optional[nn.Module]) -> Executor: ...

    def gather(self, video_x: torch.Tensor, audio_x: torch.Tensor) -> Tuple[torch.Tensor, torch.Tensor]: ...


def _call(module: nn.Module, *args) -> torch.Tensor:
    return module(*args)


def _match_batch(t: torch.Tensor, batch: int) -> torch.Tensor:
    if t.shape[0] == batch:
        return t
    if t.shape[0] != 1:
        raise ValueError(f"joint_forward: batch mismatch, got a tensor with batch {t.shape[0]} for batch {batch}")
    return t.expand(batch, *t.shape[1:])


@torch.no_grad()
def joint_forward(*args, **kwargs) -> Tuple[torch.Tensor, torch.Tensor]:
    """`joint_forward_with_grad` under `torch.no_grad()` (sampling); same arguments and results."""
    return joint_forward_with_grad(*args, **kwargs)


def joint_forward_with_grad(video_dit: VideoDiT, audio_dit: AudioDiT, bridge: Optional[DualTowerBridge],
                  video_input: torch.Tensor, audio_latents: torch.Tensor, context: torch.Tensor,
                  video_timestep: torch.Tensor, audio_timestep: Optional[torch.Tensor], video_fps: float,
                  scales: BridgeScales = BridgeScales(), executor: Optional[Executor] = None,
                  dtype: Optional[torch.dtype] = None,
                  sequence: Optional[SequenceSplit] = None) -> Tuple[torch.Tensor, torch.Tensor]:
    """Velocity predictions of both towers for one context, as `MOVA.inference_single_step`.

    video_input: [B, 36, T, H, W] = noisy latent (16) + first-frame mask (4) + condition latent (16);
    audio_latents: [B, 128, L]; context: [B or 1, 512, text_dim] text-encoder states (zeroed past the prompt);
    video_timestep, audio_timestep: [B] or [1] on the 0..1000 scale (audio None = the video timestep);
    video_fps: pixel frame rate, used for the bridge's time alignment; scales: `BridgeScales`;
    executor(module, *args): runs every DiT block and every bridge conditioner (default: a plain call);
    dtype: compute dtype (default: the video expert's weight dtype, bf16 when it is stored in fp8);
    sequence: sequence parallelism (`SequenceSplit`): the blocks run on this rank's token shards, the heads on
    the gathered streams (None: one process holds every token).

    Returns (video_pred [B, 16, T, H, W], audio_pred [B, 128, L]), float32. Autograd is left as the caller
    has it (training runs this with LoRA parameters that require grad; `joint_forward` is the no-grad form).
    Order per layer i < min(#video blocks, #audio blocks): bridge (if layer i interacts), video block i, audio
    block i; then the remaining video blocks; then both heads.
    """
    run = executor or _call
    dtype = dtype or compute_dtype_of(video_dit)
    batch = video_input.shape[0]
    if audio_latents.shape[0] != batch:
        raise ValueError(f"joint_forward: video batch {batch} and audio batch {audio_latents.shape[0]} differ")
    if audio_timestep is None:
        audio_timestep = video_timestep

    # 1. time embeddings (float32, then the compute dtype)
    video_e, video_t_mod = video_dit.embed_time(video_timestep, dtype)
    audio_e, audio_t_mod = audio_dit.embed_time(audio_timestep, dtype)
    video_e, video_t_mod = _match_batch(video_e, batch), _match_batch(video_t_mod, batch)
    audio_e, audio_t_mod = _match_batch(audio_e, batch), _match_batch(audio_t_mod, batch)

    # 2. text context, one embedding per tower
    context = _match_batch(context.to(dtype), batch)
    video_context = video_dit.embed_text(context)
    audio_context = audio_dit.embed_text(context)

    # 3. patch embeddings and self-attention RoPE
    video_x, grid = video_dit.patchify(video_input.to(dtype))
    audio_x, audio_grid = audio_dit.patchify(audio_latents.to(dtype))
    video_freqs = video_dit.rope(grid, video_x.device)
    audio_freqs = audio_dit.rope(audio_grid, audio_x.device)

    # 4. bridge RoPE (once per call) and scales
    a2v_scale, v2a_scale = scales.resolve(bridge)
    bridge_on = bridge is not None and (a2v_scale != 0 or v2a_scale != 0)
    video_rope = audio_rope = None
    if bridge_on and bridge.apply_cross_rope:
        video_rope, audio_rope = bridge.aligned_rope(video_fps, grid, audio_x.shape[1], video_x.device, dtype)

    if sequence is not None:
        video_x, audio_x, video_freqs, audio_freqs, video_rope, audio_rope = sequence.split(
            video_x, audio_x, video_freqs, audio_freqs, video_rope, audio_rope)
        run = sequence.executor(run, video_dit, audio_dit, bridge)

    # 5. shared layers with the bridge, then the video-only layers
    shared = min(len(video_dit.blocks), len(audio_dit.blocks))
    for i in range(shared):
        if bridge_on and bridge.interacts(i):
            video_x, audio_x = bridge(i, video_x, audio_x, video_rope, audio_rope, a2v_scale, v2a_scale, executor=run)
        video_x = run(video_dit.blocks[i], video_x, video_context, video_t_mod, video_freqs)
        audio_x = run(audio_dit.blocks[i], audio_x, audio_context, audio_t_mod, audio_freqs)
    for i in range(shared, len(video_dit.blocks)):
        video_x = run(video_dit.blocks[i], video_x, video_context, video_t_mod, video_freqs)

    # 6. heads and unpatchify, predictions as float32 (sharded: the per-token heads run on the shards and the
    # narrow head outputs are gathered)
    if sequence is None:
        video_pred = video_dit.head_out(video_x, video_e, grid)
        audio_pred = audio_dit.head_out(audio_x, audio_e, audio_grid)
    else:
        video_out, audio_out = sequence.gather(video_dit.head(video_x, video_e), audio_dit.head(audio_x, audio_e))
        video_pred = video_dit.unpatchify(video_out, grid)
        audio_pred = audio_dit.unpatchify(audio_out, audio_grid)
    return video_pred.float(), audio_pred.float()


def execution_order(video_dit: VideoDiT, audio_dit: AudioDiT, bridge: Optional[DualTowerBridge],
                    scales: BridgeScales = BridgeScales()) -> List[nn.Module]:
    """The modules `joint_forward` passes to its executor, in call order (for prefetching).

    Per shared layer i: [audio->video conditioner, video->audio conditioner] when layer i interacts and that
    direction's scale is non-zero, then video block i, audio block i; then the remaining video blocks.
    """
    order: List[nn.Module] = []
    a2v_scale, v2a_scale = scales.resolve(bridge)
    shared = min(len(video_dit.blocks), len(audio_dit.blocks))
    for i in range(shared):
        if bridge is not None and bridge.interacts(i):
            a2v, v2a = bridge.conditioners(i)
            if a2v_scale != 0:
                order.append(a2v)
            if v2a_scale != 0:
                order.append(v2a)
        order.append(video_dit.blocks[i])
        order.append(audio_dit.blocks[i])
    order.extend(video_dit.blocks[shared:])
    return order
