"""dtype `auto`: bf16 only on GPUs that compute it in hardware; `torch.cuda.is_bf16_supported()` alone also says
yes on GPUs that emulate it (before Ampere), where bf16 is several times slower."""
import pytest
import torch

from mova_model.network import precision


@pytest.fixture
def gpu(monkeypatch):
    """A CUDA device of a given compute capability whose torch reports bf16 support (with emulation)."""
    def make(capability):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda device=None: capability)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: True)
        monkeypatch.setattr(torch.version, "hip", None)
        return torch.device("cuda", 0)
    return make


@pytest.mark.parametrize("capability, expected", [((7, 5), torch.float32), ((7, 0), torch.float32),
                                                  ((8, 0), torch.bfloat16), ((8, 9), torch.bfloat16)])
def test_auto_is_bf16_only_with_native_bf16(gpu, capability, expected, caplog):
    device = gpu(capability)
    assert precision.auto_dtype(device) == expected
    if expected == torch.float32:
        assert "no native bf16" in caplog.text and "fp16" in caplog.text


def test_the_host_judgement_wins_and_the_cpu_is_float32():
    assert precision.auto_dtype("cuda:0", native_bf16=False) == torch.float32
    assert precision.auto_dtype("cuda:0", native_bf16=True) == torch.bfloat16
    assert precision.auto_dtype("cpu") == torch.float32 and not precision.bf16_native("cpu")


def test_generate_cli_default_dtype_follows_the_hardware(gpu, tiny_checkpoint_dir):
    import argparse

    from mova_model.sampling.generate import open_pipeline

    gpu((7, 5))  # a Turing card: torch says "bf16 supported" (emulated)
    args = argparse.Namespace(device="cuda", dtype=None, checkpoint=tiny_checkpoint_dir)
    assert open_pipeline(args).dtype == torch.float32
