"""Parity runner for `keyframe_condition` cases: the official `prepare_latents` condition with and without
`last_image` (first frame only = I2V; first + last = `[first, zeros × (F−2), last]`, mask on both ends).

The case context is duck-typed (`runners.CaseContext`): `build`, `checkpoint`, `inputs`, `args`, `compare`.
"""

from __future__ import annotations

import torch

from mova_model.network.video_vae import VideoVAE
from mova_model.sampling.conditioning import keyframe_condition


def run_keyframe_condition(ctx):
    vae = VideoVAE(ctx.build("video_vae"), ctx.checkpoint.configs.video_vae)
    frames = int(ctx.args["num_frames"])
    height, width = int(ctx.args["height"]), int(ctx.args["width"])
    first = ctx.inputs["first_image"].to(torch.float32)
    assert tuple(first.shape[-2:]) == (height, width), f"first_image is {list(first.shape)}, args say {height}x{width}"
    with torch.no_grad():
        if "condition_first" in ctx.outputs:
            ctx.compare("condition_first", keyframe_condition(vae, {0: first}, frames))
        if "condition_first_last" in ctx.outputs:
            last = ctx.inputs["last_image"].to(torch.float32)
            ctx.compare("condition_first_last", keyframe_condition(vae, {0: first, frames - 1: last}, frames))
    assert ctx.report.errors, f"case {ctx.case['name']}: no known output to compare in {sorted(ctx.outputs)}"
    return ctx.report
