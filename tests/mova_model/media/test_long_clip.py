"""Long clips: chunked video decode equals the whole decode; the streaming mp4 writer; atomic on failure."""

import numpy as np
import pytest
import torch

from mova_model.media.av_io import MediaError, Mp4Writer, probe_media, read_video_frames, write_mp4
from mova_model.media.long_clip import decode_clip_audio, decode_frames, write_clip_mp4
from mova_model.sampling.pipeline import JointLatents


@pytest.fixture(scope="module")
def latents(tiny_pipe):
    video_shape, audio_shape = tiny_pipe.latent_shapes(32, 32, 25, 8.0)
    g = torch.Generator().manual_seed(0)
    return JointLatents(video=torch.randn(video_shape, generator=g), audio=torch.randn(audio_shape, generator=g),
                        width=32, height=32, num_frames=25, video_fps=8.0, sample_rate=tiny_pipe.sample_rate)


@pytest.mark.parametrize("chunk", [1, 2, 4, 7])
def test_chunked_decode_equals_the_whole_decode(tiny_pipe, latents, chunk):
    """Bit-equal: the same per-latent-frame decoder calls with the same carried cache (by construction)."""
    whole = tiny_pipe.decode_video(latents)
    assert torch.equal(decode_frames(tiny_pipe, latents, chunk), whole)


def test_clip_audio_is_trimmed_to_the_clip(tiny_pipe, latents):
    waveform, rate = decode_clip_audio(tiny_pipe, latents)
    assert waveform.shape == (1, 1, int(rate * 25 / 8.0))


def test_write_clip_mp4_streams_every_frame(tiny_pipe, latents, tmp_path):
    path = write_clip_mp4(tiny_pipe, latents, tmp_path / "long.mp4", chunk_latent_frames=2)
    info = probe_media(path)
    assert info.frames == 25 and info.audio_rate == 16000
    frames, _ = read_video_frames(path)
    whole = (decode_frames(tiny_pipe, latents) * 255).round().to(torch.uint8).numpy()
    waveform, rate = decode_clip_audio(tiny_pipe, latents)
    reference = write_mp4(tmp_path / "whole.mp4", whole, 8.0, waveform[0], rate)  # the one-shot writer
    assert np.array_equal(frames, read_video_frames(reference)[0])


def test_writer_failure_leaves_no_file(tmp_path):
    with pytest.raises(RuntimeError, match="boom"):
        with Mp4Writer(tmp_path / "x.mp4", 32, 32, 8.0) as writer:
            writer.add_frames(np.zeros((3, 32, 32, 3), np.uint8))
            raise RuntimeError("boom")
    with pytest.raises(MediaError, match="no frames"):
        with Mp4Writer(tmp_path / "y.mp4", 32, 32, 8.0):
            pass
    with pytest.raises(MediaError, match="32x32"):
        with Mp4Writer(tmp_path / "z.mp4", 32, 32, 8.0) as writer:
            writer.add_frames(np.zeros((1, 16, 16, 3), np.uint8))
    assert list(tmp_path.iterdir()) == []


def test_chunks_are_bounded(tiny_pipe, latents):
    """Peak decode memory is one chunk: each yielded piece is at most 4·chunk pixel frames (latent 0 gives 1)."""
    from mova_model.media.long_clip import decoded_frame_chunks

    sizes = [c.shape[0] for c in decoded_frame_chunks(tiny_pipe, latents, 2)]
    assert sizes == [5, 8, 8, 4] and sum(sizes) == 25
