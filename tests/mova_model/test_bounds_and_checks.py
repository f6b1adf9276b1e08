"""The shared bounds, the up-front checks and the atomic write's file mode (issue 17, items 6, 9, 12)."""

import math
import os
import stat

import pytest

from mova_model import bounds
from mova_model.atomic_write import atomic_write
from mova_model.checks import CheckError, check_destination, check_device, next_free_path
from read_only import read_only_folder


def test_bounds_refuse_non_finite_fractional_and_out_of_range_values():
    assert bounds.SEED.contains(2**64 - 1) and not bounds.SEED.contains(2**64)  # exact beyond 2**53
    assert not bounds.FRAMES.contains(True) and not bounds.FRAMES.contains(9.5) and bounds.FRAMES.contains(9.0)
    for value in (math.inf, -math.inf, math.nan, "x", None, 10**400):
        assert not bounds.CFG.contains(value)
    assert not bounds.FPS.contains(0.0) and bounds.FPS.contains(0.001) and bounds.FPS.contains(120)
    with pytest.raises(bounds.BoundsError, match=r"--frames must be at least 1 and at most 1025 \(a whole number\), "
                                                 r"got 100001"):
        bounds.FRAMES.check("--frames", 100001)
    assert bounds.FPS.widget() == {"min": 0.0, "max": 120.0} and bounds.SEED.widget()["max"] == 2**64 - 1


def test_cap_text_cuts_long_texts_with_a_note():
    assert bounds.cap_text_note("short", "prompt") == ("short", "")
    text, note = bounds.cap_text_note("x" * (bounds.MAX_TEXT_CHARS + 5), "caption of a.mp4")
    assert len(text) == bounds.MAX_TEXT_CHARS and "caption of a.mp4 is 32,773 characters" in note


def test_devices_that_do_not_exist_are_refused():
    assert check_device("cpu").type == "cpu"
    for text, words in (("banana", "not a torch device"), ("cuda:99", "cuda:99"), ("", "not a torch device")):
        with pytest.raises(CheckError, match=words):
            check_device(text)


def test_destinations_are_checked_without_creating_anything(tmp_path):
    assert check_destination(tmp_path / "new" / "deeper" / "x.mp4", "--out") == tmp_path / "new" / "deeper" / "x.mp4"
    assert list(tmp_path.iterdir()) == []
    with pytest.raises(CheckError, match="is a folder"):
        check_destination(tmp_path, "--out")
    with pytest.raises(CheckError, match="file name .* is 300 characters"):
        check_destination(tmp_path / ("a" * 300), "--out")
    with pytest.raises(CheckError, match="with 16 for the temporary file"):
        check_destination(tmp_path / ("a" * 245), "--out")  # fits alone, not with its temporary name
    with pytest.raises(CheckError, match=r"cannot write in /proc"):
        check_destination("/proc/x.safetensors", "--out")
    assert list(tmp_path.iterdir()) == []


def test_a_read_only_destination_is_refused(tmp_path):
    with read_only_folder(tmp_path):
        with pytest.raises(CheckError, match=f"--out {tmp_path}/sub/x.mp4: cannot write in {tmp_path}"):
            check_destination(tmp_path / "sub" / "x.mp4", "--out")
        assert list(tmp_path.iterdir()) == []


def test_next_free_path_skips_names_whose_companions_exist(tmp_path):
    (tmp_path / "x.safetensors").write_bytes(b"")
    (tmp_path / "x_2.train-state").write_bytes(b"")
    companions = lambda p: [p.with_name(p.stem + ".train-state")]  # noqa: E731
    assert next_free_path(tmp_path / "x.safetensors", companions) == tmp_path / "x_3.safetensors"
    assert next_free_path(tmp_path / "y.safetensors", companions) == tmp_path / "y.safetensors"


def test_atomic_write_gives_the_mode_of_a_plain_open(tmp_path):
    from safetensors.torch import save_file
    import torch

    old = os.umask(0o022)
    try:
        path = atomic_write(tmp_path / "a.safetensors", lambda t: save_file({"x": torch.zeros(1)}, t))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o644  # save_file alone leaves 0600
        os.umask(0o077)
        path = atomic_write(tmp_path / "b.bin", lambda t: open(t, "wb").write(b"1"))
        assert stat.S_IMODE(os.stat(path).st_mode) == 0o600  # the umask is respected
    finally:
        os.umask(old)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.safetensors", "b.bin"]
