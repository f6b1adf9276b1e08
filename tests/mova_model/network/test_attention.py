"""Attention backends: SDPA is the default and unchanged, `auto` picks SDPA off CUDA, a missing package or a
non-CUDA device gives a message naming what to do, and a flash/sage run falls back to SDPA for fp32/CPU calls."""

import importlib.util

import pytest
import torch
import torch.nn.functional as F

from mova_model.network import attention as attn
from mova_model.network.dit_block import attention as block_attention
from mova_model.sampling.speed import SpeedOptions


def _qkv(seed=0, b=2, sq=7, sk=5, heads=3, d=8):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(b, sq, heads * d, generator=g), torch.randn(b, sk, heads * d, generator=g),
            torch.randn(b, sk, heads * d, generator=g), heads)


def _reference(q, k, v, heads):
    b, sq, width = q.shape
    d = width // heads
    split = lambda t: t.view(t.shape[0], t.shape[1], heads, d).transpose(1, 2)  # noqa: E731
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, sq, width)


def test_default_backend_is_sdpa_and_bit_identical_to_plain_sdpa():
    q, k, v, heads = _qkv()
    assert attn.active_backend() == "sdpa"
    assert torch.equal(block_attention(q, k, v, heads), _reference(q, k, v, heads))


def test_auto_and_sdpa_resolve_to_sdpa_on_cpu():
    assert attn.resolve_backend("auto", "cpu") == "sdpa"
    assert attn.resolve_backend("sdpa", "cpu") == "sdpa"
    with attn.use_attention_backend("auto", "cpu") as chosen:
        assert chosen == "sdpa" and attn.active_backend() == "sdpa"


def _pretend_missing(monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name in ("flash_attn", "sageattention") else real(name, *a))


@pytest.mark.parametrize("name, package", [("flash", "flash-attn"), ("sage", "sageattention")])
def test_missing_package_names_what_to_install(monkeypatch, name, package):
    _pretend_missing(monkeypatch)
    with pytest.raises(attn.AttentionBackendError) as info:
        attn.resolve_backend(name, "cuda")
    message = str(info.value)
    assert f"pip install {package}" in message and "'sdpa'" in message
    with pytest.raises(attn.AttentionBackendError, match=package):
        SpeedOptions(attention=name).check_device("cuda")
    # auto never fails: nothing installed -> SDPA
    assert attn.resolve_backend("auto", "cuda") == "sdpa"


def test_installed_backend_on_cpu_and_unknown_names_are_rejected(monkeypatch):
    monkeypatch.setattr(attn, "installed", lambda name: True)
    with pytest.raises(attn.AttentionBackendError, match="CUDA GPUs only"):
        attn.resolve_backend("flash", "cpu")
    with pytest.raises(attn.AttentionBackendError, match="one of sdpa, flash, sage, auto"):
        attn.resolve_backend("xformers", "cuda")
    monkeypatch.setattr(attn, "installed", lambda name: name == "flash")
    assert attn.resolve_backend("auto", "cuda") == "flash"


def test_fp32_or_cpu_calls_inside_a_flash_run_use_sdpa(monkeypatch, caplog):
    calls = []
    monkeypatch.setattr(attn, "installed", lambda name: True)
    monkeypatch.setattr(attn, "_load", lambda name: lambda *a, **k: calls.append(name))
    q, k, v, heads = _qkv(1)
    with attn.use_attention_backend("flash", "cuda") as chosen:
        assert chosen == "flash" and attn.active_backend() == "flash"
        out = block_attention(q, k, v, heads)
    assert calls == []  # the kernel was never called with fp32 CPU tensors
    assert torch.equal(out, _reference(q, k, v, heads))
    assert "runs with SDPA" in caplog.text
    assert attn.active_backend() == "sdpa"  # restored after the run
