"""PyAV IO: mp4 writing (streams, durations, atomic writes), resampling, probing, reading back."""

import math
import types

import av
import numpy as np
import pytest
import torch

from mova_model.media import av_io
from mova_model.media.av_io import MediaError, frames_to_uint8, probe_media, read_video_frames, resample_audio, write_mp4

FPS = 8.0
FRAMES = 9


def _frames(count=FRAMES, height=32, width=32):
    frames = np.zeros((count, height, width, 3), dtype=np.uint8)
    for i in range(count):
        frames[i, :, :, 0] = 20 * i
        frames[i, :, : width // 2, 1] = 200
    return frames


def _tone(rate, seconds, channels=1, freq=440.0):
    t = torch.arange(int(rate * seconds), dtype=torch.float64) / rate
    return (0.3 * torch.sin(2 * math.pi * freq * t)).float().unsqueeze(0).repeat(channels, 1)


@pytest.mark.parametrize("rate, channels", [(16000, 1), (48000, 2)])
def test_write_mp4_streams_and_durations(tmp_path, rate, channels):
    audio = _tone(rate, FRAMES / FPS, channels)
    path = write_mp4(tmp_path / "clip.mp4", _frames(), FPS, audio, rate)
    info = probe_media(path)
    assert (info.frames, info.width, info.height) == (FRAMES, 32, 32)
    assert info.fps == pytest.approx(FPS)
    assert info.video_codec == "h264" and info.audio_codec == "aac"
    assert info.audio_rate == rate and info.audio_channels == channels
    assert info.video_seconds == pytest.approx(FRAMES / FPS)
    assert abs(info.audio_seconds - info.video_seconds) <= 1 / FPS
    assert sorted(p.name for p in tmp_path.iterdir()) == ["clip.mp4"]


def test_write_mp4_resamples_rates_aac_cannot_take(tmp_path):
    audio = _tone(16001, FRAMES / FPS)
    info = probe_media(write_mp4(tmp_path / "odd_rate.mp4", _frames(), FPS, audio, 16001))
    assert info.audio_rate == 48000
    assert abs(info.audio_seconds - info.video_seconds) <= 1 / FPS


def test_write_mp4_without_audio_and_read_back(tmp_path):
    frames = _frames()
    path = write_mp4(tmp_path / "sub" / "video.mp4", frames, FPS)
    info = probe_media(path)
    assert info.audio_codec is None and info.audio_seconds is None and info.frames == FRAMES
    decoded, fps = read_video_frames(path)
    assert decoded.shape == frames.shape and decoded.dtype == np.uint8
    assert fps == pytest.approx(FPS)
    assert np.abs(decoded.astype(int) - frames.astype(int)).mean() < 6  # lossy h264 at crf 18


@pytest.mark.parametrize("height, width", [(31, 32), (32, 33)])
def test_odd_sizes_are_refused(tmp_path, height, width):
    with pytest.raises(MediaError, match="even"):
        write_mp4(tmp_path / "odd.mp4", _frames(height=height, width=width), FPS)
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("kwargs, message", [
    (dict(audio=torch.zeros(1, 1, 100), sample_rate=16000), r"\[channels, samples\]"),
    (dict(audio=torch.zeros(1, 100), sample_rate=None), "sample rate"),
    (dict(fps=0.0), "fps"),
])
def test_bad_arguments_leave_no_file(tmp_path, kwargs, message):
    args = dict(fps=FPS)
    args.update(kwargs)
    with pytest.raises(MediaError, match=message):
        write_mp4(tmp_path / "bad.mp4", _frames(), **args)
    assert list(tmp_path.iterdir()) == []


def test_bad_frames_are_refused(tmp_path):
    with pytest.raises(MediaError, match="uint8"):
        write_mp4(tmp_path / "f.mp4", _frames().astype(np.float32), FPS)
    with pytest.raises(MediaError, match="no frames"):
        write_mp4(tmp_path / "f.mp4", _frames(count=0), FPS)
    assert list(tmp_path.iterdir()) == []


class _DyingFrames:
    """Stands in for `av.VideoFrame` inside av_io: real frames until the third, then the error given."""

    def __init__(self, error):
        self.error = error
        self.calls = 0

    def from_ndarray(self, array, format):
        self.calls += 1
        if self.calls == 3:
            raise self.error
        return av.VideoFrame.from_ndarray(array, format=format)


@pytest.mark.parametrize("error", [RuntimeError("encoder died"), KeyboardInterrupt()])
def test_a_write_failing_midway_leaves_no_partial_or_temp_file(tmp_path, monkeypatch, error):
    dying = _DyingFrames(error)
    proxy = types.SimpleNamespace(open=av.open, VideoFrame=dying, AudioFrame=av.AudioFrame,
                                  AudioResampler=av.AudioResampler)
    monkeypatch.setattr(av_io, "av", proxy)
    with pytest.raises(type(error)):
        write_mp4(tmp_path / "clip.mp4", _frames(), FPS, _tone(16000, 1.0), 16000)
    assert dying.calls == 3
    assert list(tmp_path.iterdir()) == []


def test_a_failing_write_keeps_the_previous_file(tmp_path, monkeypatch):
    target = write_mp4(tmp_path / "clip.mp4", _frames(), FPS)
    before = target.read_bytes()
    proxy = types.SimpleNamespace(open=av.open, VideoFrame=_DyingFrames(RuntimeError("boom")),
                                  AudioFrame=av.AudioFrame, AudioResampler=av.AudioResampler)
    monkeypatch.setattr(av_io, "av", proxy)
    with pytest.raises(RuntimeError, match="boom"):
        write_mp4(target, _frames(count=5), FPS)
    assert [p.name for p in tmp_path.iterdir()] == ["clip.mp4"]
    assert target.read_bytes() == before


# -- resampling -------------------------------------------------------------------------------------------
@pytest.mark.parametrize("rate, target, channels, target_channels", [
    (44100, 16000, 2, 1), (8000, 16000, 1, 1), (48000, 24000, 1, 2), (22050, 48000, 2, 2),
])
def test_resample_audio_shapes(rate, target, channels, target_channels):
    out = resample_audio(_tone(rate, 0.5, channels), rate, target, target_channels)
    assert out.dtype == torch.float32 and out.dim() == 2 and out.shape[0] == target_channels
    assert abs(out.shape[1] - target // 2) <= 64  # 0.5 s, within the resampler's filter delay


def test_resample_audio_keeps_the_tone():
    out = resample_audio(_tone(44100, 0.5, 2, freq=1000.0), 44100, 16000, 1)[0]
    spectrum = torch.fft.rfft(out[1000:7000])
    peak_hz = int(spectrum.abs().argmax()) * 16000 / 6000
    assert peak_hz == pytest.approx(1000.0, abs=3)
    assert 0.25 < out[1000:7000].abs().max() < 0.35


def test_resample_audio_same_rate_mixes_or_copies():
    stereo = torch.stack([torch.linspace(-1, 1, 100), torch.zeros(100)])
    assert torch.equal(resample_audio(stereo, 16000, 16000, 1), stereo.mean(0, keepdim=True))
    mono = torch.linspace(-1, 1, 100).unsqueeze(0)
    assert torch.equal(resample_audio(mono, 16000, 16000, 2), mono.expand(2, -1))


@pytest.mark.parametrize("wave, rate", [(torch.zeros(100), 16000), (torch.zeros(1, 0), 16000), (torch.zeros(1, 10), 0)])
def test_resample_audio_refuses_bad_input(wave, rate):
    with pytest.raises(MediaError):
        resample_audio(wave, rate, 16000)


def test_frames_to_uint8():
    frames = torch.tensor([0.0, 0.5, 1.0, 1.5, -0.2, 0.999]).reshape(1, 1, 2, 3)
    assert frames_to_uint8(frames).tolist() == [[[[0, 128, 255], [255, 0, 255]]]]
    with pytest.raises(MediaError):
        frames_to_uint8(torch.zeros(2, 4, 4))


def _audio_peak(path):
    with av.open(str(path)) as container:
        stream = container.streams.audio[0]
        return max(float(np.abs(frame.to_ndarray()).max()) for frame in container.decode(stream))


@pytest.mark.parametrize("rate", [16000, 16001])
def test_more_than_two_audio_channels_are_mixed_down_or_refused(tmp_path, rate):
    """A 4-channel waveform (a quad / 5.1 ComfyUI AUDIO) is either mixed into the stereo track or refused with
    MediaError; its sound must not be lost silently (here only the rear channels carry the tone)."""
    audio = torch.zeros(4, rate)
    audio[2:] = _tone(rate, 1.0)[0]
    try:
        path = write_mp4(tmp_path / "quad.mp4", _frames(), FPS, audio, rate)
    except MediaError:
        assert list(tmp_path.iterdir()) == []
        return
    assert probe_media(path).audio_channels == 2
    assert _audio_peak(path) > 0.05


# --- issue 9, item 6: files left by a killed write, file mode, names, a wrong Mux fps --------------


def _plain_file_mode(folder) -> int:
    probe = folder / "plain.txt"
    probe.write_text("x")  # created the way ComfyUI's own savers create files
    mode = probe.stat().st_mode & 0o777
    probe.unlink()
    return mode


def test_written_mp4_has_the_mode_of_a_plain_file(tmp_path):
    """Saved mp4s were 0600 (mkstemp); ComfyUI's outputs get 0666 minus the umask (0644 usually)."""
    path = write_mp4(tmp_path / "clip.mp4", _frames(), FPS)
    assert path.stat().st_mode & 0o777 == _plain_file_mode(tmp_path)


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_partial_files_of_killed_writers_are_removed_on_the_next_write(tmp_path):
    import os
    import time

    own = tmp_path / f".clip.mova-{os.getpid()}-00aa{av_io.PARTIAL_SUFFIX}"  # a write of this process
    dead = tmp_path / f".clip.mova-{_dead_pid()}-00bb{av_io.PARTIAL_SUFFIX}"  # its writer was killed
    live = tmp_path / f".clip.mova-{os.getppid()}-00cc{av_io.PARTIAL_SUFFIX}"  # another live process, writing now
    reused = tmp_path / f".clip.mova-{os.getppid()}-00dd{av_io.PARTIAL_SUFFIX}"  # live pid but untouched for hours
    foreign = tmp_path / ".clip.abc123.partial.mp4"  # not named by us: never touched
    for p in (own, dead, live, reused, foreign):
        p.write_bytes(b"\0" * 100)
    old = time.time() - av_io.STALE_PARTIAL_AGE_S - 60
    os.utime(reused, (old, old))

    write_mp4(tmp_path / "next.mp4", _frames(), FPS)

    left = sorted(p.name for p in tmp_path.iterdir())
    assert left == sorted([own.name, live.name, foreign.name, "next.mp4"])


def test_safe_filename_prefix():
    assert av_io.safe_filename_prefix("mova/MOVA") == ("mova/MOVA", None)
    for given, used in [("", "MOVA"), ("  ", "MOVA"), (".", "MOVA"), ("mova/", "mova/MOVA"), ("mova/.", "mova/MOVA"),
                        (".hidden", "hidden"), ("mova/..x", "mova/x")]:
        fixed, note = av_io.safe_filename_prefix(given)
        assert fixed == used, given
        assert note and repr(given) in note and repr(used) in note


def test_fit_audio_to_video_says_when_the_fps_does_not_match():
    rate = 48000
    clip = torch.zeros(1, int(rate * 49 / 24))  # 49 frames at 24 fps: 2.042 s
    fitted, note = av_io.fit_audio_to_video(clip, rate, 49, 24.0)
    assert fitted.shape == (1, 98000) and note is None
    fitted, note = av_io.fit_audio_to_video(clip, rate, 49, 120.0)  # the case: 0.408 s kept
    assert fitted.shape == (1, 19600)
    assert note == ("the audio lasts 2.042 s but 49 frames at 120 fps last 0.408 s, so the audio was cut to "
                    "0.408 s; if this is a MOVA clip, set fps to the clip's fps (49 frames / 2.042 s = 24 fps)")
    fitted, note = av_io.fit_audio_to_video(clip, rate, 49, 12.0)
    assert fitted.shape == (1, 196000) and "padded with 2.042 s of silence" in note
    # Within one frame's worth (rounding between the decoder and the Mux) is not worth a message.
    assert av_io.fit_audio_to_video(clip[:, :-1000], rate, 49, 24.0)[1] is None
