"""A long VAE encode or decode can be cancelled between chunks (issue 9, item 4).

Before: `/interrupt` was only checked between sampler steps, so a large clip's VAE encode in the Conditioner (or
decode in the Decoder) ran to its end whatever the user did. Now `VideoVAE.interrupt_check` runs before each
chunk diffusers' Wan VAE processes (4 pixel frames per encoder call, one latent frame per decoder call).
"""

import pytest
import torch

from mova_model.network.video_vae import VideoVAE
from mova_model.sampling.conditioning import first_frame_condition


class Cancelled(Exception):
    pass


def _counter(stop_after: int):
    calls = []

    def check():
        calls.append(1)
        if len(calls) > stop_after:
            raise Cancelled()

    return check, calls


def _vae(tiny_pipe, check) -> VideoVAE:
    base = tiny_pipe.video_vae()
    return VideoVAE(base.module, base.config, interrupt_check=check)


def test_encode_stops_at_the_next_chunk_and_leaves_no_hook(tiny_pipe):
    check, calls = _counter(stop_after=2)
    vae = _vae(tiny_pipe, check)
    with pytest.raises(Cancelled):
        first_frame_condition(vae, torch.zeros(1, 3, 32, 32), 33)  # 9 encoder chunks: 1 + 8 x 4 frames
    assert len(calls) == 3
    assert not vae.module.encoder._forward_pre_hooks and not vae.module.decoder._forward_pre_hooks


def test_decode_stops_at_the_next_latent_frame(tiny_pipe):
    check, calls = _counter(stop_after=1)
    vae = _vae(tiny_pipe, check)
    with pytest.raises(Cancelled):
        vae.decode(torch.zeros(1, vae.z_dim, 9, 4, 4))  # 9 decoder calls
    assert len(calls) == 2
    assert not vae.module.decoder._forward_pre_hooks


def test_pipeline_passes_its_interrupt_check_to_the_conditioning_encode(tiny_pipe):
    from mova_model.sampling.pipeline import MovaPipeline

    pipe = MovaPipeline(tiny_pipe.checkpoint, device="cpu", dtype=torch.float32)
    check, calls = _counter(stop_after=0)
    pipe.interrupt_check = check
    with pytest.raises(Cancelled):
        pipe.prepare_conditioning("rain", "", None, width=32, height=32, num_frames=9, video_fps=8.0)
    assert len(calls) == 1
    pipe.interrupt_check = None
    without = pipe.prepare_conditioning("rain", "", None, width=32, height=32, num_frames=9, video_fps=8.0)
    assert torch.isfinite(without.condition).all()
