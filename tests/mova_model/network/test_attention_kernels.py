"""Fused-kernel eligibility of every attention call: what a GPU's SDPA / flash / sage kernels would refuse, seen
on the CPU.

Every path into attention is run with strict layout checking (`MOVA_STRICT_ATTENTION_LAYOUT`, as the whole suite
runs) and every SDPA call recorded with the kernel PyTorch's dispatcher picks for it (`torch._fused_sdp_choice`;
on the CPU it refuses a non-unit last-dim stride exactly as CUDA's flash/efficient kernels do). Paths: one
process (video and audio self-attention, text cross-attention, both bridge directions), batched guidance,
Ulysses on a single rank (packed q/k/v and q + packed k/v exchanges) and its masked path for padded keys; each
with the SDPA, flash and sage backends (flash/sage: a stand-in kernel that checks their input contract and
computes with SDPA, since their packages need CUDA). Multi-rank Ulysses runs the same gate in
tests/mova_model/parallel (the ranks inherit strict mode).
"""

import pytest
import torch
import torch.nn.functional as F

from mova_model.network import attention as attn
from mova_model.network.denoiser import BridgeScales, joint_forward
from mova_model.parallel.comm import RankGroup
from mova_model.parallel.ulysses import UlyssesSequence
from mova_model.sampling.branch_runner import JointModels, StepInputs, run_branches
from mova_model.sampling.guidance import BOTH_OFF, FULL, TEXT_OFF


@pytest.fixture
def strict():
    previous = attn.set_strict_layout(True)
    yield
    attn.set_strict_layout(previous)


@pytest.fixture
def sdpa_calls(monkeypatch):
    """Every `F.scaled_dot_product_attention` call: (kernel PyTorch picks, q/k/v last-dim strides, shapes)."""
    calls = []
    real = F.scaled_dot_product_attention

    def recording(q, k, v, attn_mask=None, **kwargs):
        calls.append((attn.fused_sdpa_choice(q, k, v, attn_mask), [t.stride(-1) for t in (q, k, v)],
                      tuple(q.shape), tuple(k.shape)))
        return real(q, k, v, attn_mask=attn_mask, **kwargs)

    monkeypatch.setattr(F, "scaled_dot_product_attention", recording)
    return calls


def _standin(name, calls):
    """A flash/sage kernel's contract ([B, S, H, D] tensors, unit last-dim stride, same dtype), computed by SDPA."""
    def kernel(q, k, v, **kwargs):
        assert all(t.stride(-1) == 1 for t in (q, k, v)), f"{name}: last dim of q/k/v must be contiguous"
        assert q.dtype == k.dtype == v.dtype and q.shape[-1] == k.shape[-1]
        calls.append((name, [t.stride(-1) for t in (q, k, v)], tuple(q.shape), tuple(k.shape)))
        out = F.scaled_dot_product_attention(*(t.transpose(1, 2) for t in (q, k, v)))
        return out.transpose(1, 2)
    return kernel


@pytest.fixture(params=["sdpa", "flash", "sage"])
def backend(request, monkeypatch):
    """The attention backend of the test, with flash/sage stand-ins that run on the CPU in fp32."""
    calls = []
    if request.param != "sdpa":
        monkeypatch.setattr(attn, "installed", lambda name: True)
        monkeypatch.setattr(attn, "_load", lambda name: _standin(name, calls))
        monkeypatch.setattr(attn, "_runs_fused_backend", lambda q: True)
    with attn.use_attention_backend(request.param, "cuda"):
        yield request.param, calls


def _models(pipe):
    return (pipe.cache.get("video_dit"), pipe.cache.get("audio_dit"), pipe.cache.get("dual_tower_bridge"))


def _inputs(pipe, cond, clip, seed=3):
    video_shape, audio_shape = pipe.latent_shapes(**clip)
    g = torch.Generator().manual_seed(seed)
    video_input = torch.cat([torch.randn(video_shape, generator=g), cond.condition], dim=1)
    return video_input, torch.randn(audio_shape, generator=g), torch.tensor([700.0])


def _assert_fused(sdpa_calls, backend_calls, backend_name):
    assert sdpa_calls or backend_calls, "no attention call was recorded"
    refused = [c for c in sdpa_calls if c[0] == "math"]
    assert not refused, f"SDPA would run its math kernel for {len(refused)} calls, e.g. {refused[0]}"
    assert all(strides == [1, 1, 1] for _, strides, _, _ in sdpa_calls + backend_calls)
    if backend_name != "sdpa":
        assert backend_calls, f"the {backend_name} kernel was never called"


def test_single_process_paths_reach_a_fused_kernel(strict, sdpa_calls, backend, tiny_pipe, tiny_cond, clip):
    name, calls = backend
    video_dit, audio_dit, bridge = _models(tiny_pipe)
    video_input, audio, t = _inputs(tiny_pipe, tiny_cond, clip)
    with torch.no_grad():
        joint_forward(video_dit, audio_dit, bridge, video_input, audio, tiny_cond.prompt_embeds, t, t,
                      clip["video_fps"], BridgeScales())
    recorded = sdpa_calls + calls
    # self-attention per block of both towers, text cross-attention per block, both bridge directions per layer
    blocks = len(video_dit.blocks) + len(audio_dit.blocks)
    assert len(recorded) >= 2 * blocks + 2 * len(bridge.layers)
    _assert_fused(sdpa_calls, calls, name)


def test_batched_guidance_reaches_a_fused_kernel(strict, sdpa_calls, backend, tiny_pipe, tiny_cond, clip):
    name, calls = backend
    video_input, audio, t = _inputs(tiny_pipe, tiny_cond, clip)
    step = StepInputs(video_input=video_input, audio=audio,
                      contexts={True: tiny_cond.prompt_embeds, False: tiny_cond.negative_prompt_embeds},
                      video_timestep=t, audio_timestep=t, video_fps=clip["video_fps"],
                      bridge_on=BridgeScales(condition=1.0), bridge_off=BridgeScales(condition=0.0))
    with torch.no_grad():
        run_branches(JointModels(*_models(tiny_pipe)), step, (FULL, TEXT_OFF, BOTH_OFF), batch=True)
    assert any(shape[0] == 3 for _, _, shape, _ in sdpa_calls + calls)  # one batch of the three branches
    _assert_fused(sdpa_calls, calls, name)


def _single_rank_sequence():
    return UlyssesSequence(RankGroup("sequence-parallel", None, [0], 0, timeout_s=10.0))


def test_ulysses_single_rank_reaches_a_fused_kernel(strict, sdpa_calls, backend, tiny_pipe, tiny_cond, clip):
    """The packed q/k/v exchange of a sequence group (here of one rank) hands the kernel unit-stride tensors.
    Before the fix q/k/v came out of the pack with a last-dim stride of 3 (SDPA: math kernel; sage: assert)."""
    name, calls = backend
    video_dit, audio_dit, bridge = _models(tiny_pipe)
    video_input, audio, t = _inputs(tiny_pipe, tiny_cond, clip)
    with torch.no_grad():
        reference = joint_forward(video_dit, audio_dit, bridge, video_input, audio, tiny_cond.prompt_embeds, t, t,
                                  clip["video_fps"], BridgeScales())
        sdpa_calls.clear(), calls.clear()
        sharded = joint_forward(video_dit, audio_dit, bridge, video_input, audio, tiny_cond.prompt_embeds, t, t,
                                clip["video_fps"], BridgeScales(), sequence=_single_rank_sequence())
    _assert_fused(sdpa_calls, calls, name)
    for got, want in zip(sharded, reference):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("self_attention", [True, False], ids=["qkv", "q+kv"])
def test_ulysses_masked_path_reaches_a_fused_kernel(strict, sdpa_calls, self_attention):
    """Padded keys take the masked SDPA; its inputs come from the same exchange and must be fused-eligible too."""
    gen = torch.Generator().manual_seed(0)
    heads, d = 4, 8
    q = torch.randn(1, 9, heads * d, generator=gen)
    k = q.clone() if self_attention else torch.randn(1, 12, heads * d, generator=gen)
    v = torch.randn(k.shape, generator=gen)
    key_len = k.shape[1] - 2
    out = _single_rank_sequence().attend(q, k, v, heads, q.shape[1], key_len, "test")
    assert [c[0] for c in sdpa_calls] and all(c[0] != "math" for c in sdpa_calls), sdpa_calls
    torch.testing.assert_close(out, attn.sdpa_attention(q, k[:, :key_len], v[:, :key_len], heads),
                               rtol=1e-5, atol=1e-6)


def test_a_strided_input_is_copied_or_refused_in_strict_mode(sdpa_calls, caplog, monkeypatch):
    """The gate itself: an interleaved q/k/v pack (stride 3) is what the math kernel gets without it."""
    monkeypatch.setattr(attn._Layout, "warned", False)
    packed = torch.randn(1, 16, 4 * 8, 3)
    q, k, v = packed.unbind(-1)
    views = [t.view(1, 16, 4, 8).transpose(1, 2) for t in (q, k, v)]
    assert attn.fused_sdpa_choice(*views) == "math"
    assert attn.fused_sdpa_choice(*(t.contiguous() for t in views)) != "math"
    previous = attn.set_strict_layout(True)
    try:
        with pytest.raises(attn.AttentionLayoutError, match="last-dim strides"):
            attn.sdpa_attention(q, k, v, 4)
        attn.set_strict_layout(False)
        out = attn.sdpa_attention(q, k, v, 4)
    finally:
        attn.set_strict_layout(previous)
    assert sdpa_calls[-1][0] != "math" and "copied so a fused kernel runs" in caplog.text
    torch.testing.assert_close(out, attn.sdpa_attention(q.contiguous(), k.contiguous(), v.contiguous(), 4))
