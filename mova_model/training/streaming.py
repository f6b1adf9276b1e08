"""Block streaming for training: the existing `BlockStreamer` through the forward **and** the backward pass.

Each DiT block and bridge conditioner runs as one `StreamedBlock` (a reentrant gradient checkpoint, the
scheme of `torch.utils.checkpoint(use_reentrant=True)` written out so the weights' residency can follow it):
- forward: the forward streamer (call order, prefetching the next blocks) makes the block's weights present,
  the block runs without recording a graph, only its inputs are kept;
- backward: the backward streamer (reverse call order, so it prefetches the blocks the backward pass meets
  next) makes the weights present again, the block is recomputed with grad, `autograd.backward` runs
  through it (the attached LoRA parameters receive their gradients), and only then is the slot freed.
Holding the slot until the block's backward is done matters: the recomputed graph saves the bound weight
views, which a freed slot would let the next prefetch overwrite.

Device memory: `(depth + 1)` slots per streamer, two streamers, plus the resident stems, the LoRA and its
optimizer state (fp32) and one block's activations at a time. The checkpoints (block inputs) are offloaded
to host memory when the blocks run on a GPU (`offload_checkpoints`, the official
`use_gradient_checkpointing_offload`), and brought back for the block's backward.
"""

from __future__ import annotations

from typing import List, Optional, Tuple

import torch
from torch import nn

from ..memory.copy_engines import CopyEngine
from ..memory.streaming import BlockStreamer, module_tags, outside_blocks
from ..network.denoiser import BridgeScales, execution_order


def _split(args: Tuple) -> Tuple[List[int], List[torch.Tensor]]:
    positions = [i for i, a in enumerate(args) if isinstance(a, torch.Tensor)]
    return positions, [args[i] for i in positions]


class StreamedBlock(torch.autograd.Function):
    """`module(*args)` with weights streamed in for the forward and again for the recompute + backward."""

    @staticmethod
    def forward(ctx, executor: "TrainingStreamer", module: nn.Module, args: Tuple, *tensors: torch.Tensor):
        ctx.executor, ctx.module, ctx.args = executor, module, args
        ctx.grad_flags = [t.requires_grad for t in tensors]
        ctx.offloaded = executor.offload_checkpoints and any(t.device.type != "cpu" for t in tensors)
        if ctx.offloaded:  # the checkpoint (block input) waits in host memory, as the official offload option
            ctx.devices = [t.device for t in tensors]
            ctx.host_copies = [t.detach().to("cpu") for t in tensors]
        else:
            ctx.save_for_backward(*tensors)
        with torch.no_grad():
            return executor.forward_streamer(module, *args)

    @staticmethod
    def backward(ctx, *grads):
        if ctx.offloaded:
            saved = [t.to(device) for t, device in zip(ctx.host_copies, ctx.devices)]
            ctx.host_copies = None
        else:
            saved = ctx.saved_tensors
        inputs = [t.detach().requires_grad_(flag) for t, flag in zip(saved, ctx.grad_flags)]
        positions, _ = _split(ctx.args)
        args = list(ctx.args)
        for pos, tensor in zip(positions, inputs):  # the trailing anchor has no position
            args[pos] = tensor
        streamer = ctx.executor.backward_streamer
        token = streamer.enter(ctx.module)
        try:
            with torch.enable_grad():
                out = ctx.module(*args)
                outs = out if isinstance(out, tuple) else (out,)
                pairs = [(o, g) for o, g in zip(outs, grads) if o.requires_grad and g is not None]
                if pairs:
                    torch.autograd.backward([o for o, _ in pairs], [g for _, g in pairs])
        finally:
            streamer.exit(ctx.module, token)
        return (None, None, None) + tuple(t.grad if t.requires_grad else None for t in inputs)


class TrainingStreamer:
    """The training executor of one expert: streamed, checkpointed blocks (see the module docstring)."""

    def __init__(self, expert: nn.Module, audio_dit: nn.Module, bridge: Optional[nn.Module], device: torch.device | str,
                 prefetch_depth: int = 1, expert_name: str = "video_dit",
                 copy_engines: Tuple[Optional[CopyEngine], Optional[CopyEngine]] = (None, None),
                 offload_checkpoints: bool = True) -> None:
        self.offload_checkpoints = offload_checkpoints
        order = execution_order(expert, audio_dit, bridge, BridgeScales())
        resident = set()
        for tower in (expert, audio_dit):
            resident.update(outside_blocks(tower, list(tower.blocks)))
        if bridge is not None:
            conditioners = list(bridge.audio_to_video_conditioners.values()) + list(bridge.video_to_audio_conditioners.values())
            resident.update(outside_blocks(bridge, conditioners))
        tags = module_tags(**{expert_name: expert, "audio_dit": audio_dit, "dual_tower_bridge": bridge})
        self.forward_streamer = BlockStreamer(order, device, prefetch_depth, resident=resident,
                                              copy_engine=copy_engines[0], tags=tags)
        self.backward_streamer = BlockStreamer(list(reversed(order)), device, prefetch_depth,
                                               copy_engine=copy_engines[1], tags=tags)

    def prepare(self) -> "TrainingStreamer":
        try:
            self.forward_streamer.prepare()
            self.backward_streamer.prepare()
        except BaseException:
            self.release()  # neither streamer keeps device buffers or a copy thread after a failed start
            raise
        return self

    def __call__(self, module: nn.Module, *args):
        if not torch.is_grad_enabled():
            return self.forward_streamer(module, *args)
        _, tensors = _split(args)
        # An input that requires grad, so the block is on the graph even when none of its activations are
        # (the first block: its LoRA parameters are inside, not inputs).
        anchor = torch.zeros((), requires_grad=True)
        return StreamedBlock.apply(self, module, args, *tensors, anchor)

    def release(self) -> None:
        self.forward_streamer.release()
        self.backward_streamer.release()


def training_streamer(models, expert: str) -> TrainingStreamer:
    """The streamer of `TrainingModels` for `expert` (`video_dit` / `video_dit_2`)."""
    return TrainingStreamer(models.module(expert), models.module("audio_dit"), models.module("dual_tower_bridge"),
                            models.device, models.prefetch_depth, expert, models.copy_engines()).prepare()
