"""MOVA's memory and ComfyUI 0.3.75's model management, in-process with ComfyUI's real `comfy.model_management`:
MOVA's modules are registered like ComfyUI's own models (so `unload_all_models()`, which "Unload models" and
`POST /free` call, releases them, and a later run rebuilds them); planning asks ComfyUI nothing; each phase
claims only its planned figure (other models are unloaded only as far as that needs). The same through the
real server: tests/host/test_interrupt_and_memory.py."""
import importlib

import pytest
import torch

CLIP = dict(width=32, height=32, num_frames=5, video_fps=8.0)


@pytest.fixture(scope="module")
def mm(node_module):
    node_module("memory_host")
    import comfy.model_management

    return comfy.model_management


@pytest.fixture(scope="module")
def tiny_folder(tmp_path_factory):
    from mova_model.checkpoint.tiny import write_tiny_checkpoint

    return write_tiny_checkpoint(tmp_path_factory.mktemp("tiny_mova") / "MOVA-tiny")


def _pipeline(node_module, folder, attach=True):
    MovaPipeline = importlib.import_module("comfyui_mova.mova_model.sampling.pipeline").MovaPipeline
    pipeline = MovaPipeline.from_pretrained(folder)
    if attach:
        node_module("memory_host").attach_memory_host(pipeline)
    return pipeline


def _entries(mm, pipeline):
    return [m for m in mm.current_loaded_models if m.model is pipeline.cache.host_handle]


def test_unload_all_models_releases_movas_modules_and_the_next_run_rebuilds_them(node_module, mm, tiny_folder):
    pipeline = _pipeline(node_module, tiny_folder)
    cond = pipeline.prepare_conditioning("a bell rings", "static", None, **CLIP)
    latents = pipeline.sample(cond, seed=1, steps=2)
    held = pipeline.cache.resident_bytes()
    assert held > 0 and "audio_dit" in pipeline.cache.modules  # (which others stay depends on the phases)
    (entry,) = _entries(mm, pipeline)  # registered once, however many phases claimed
    assert entry.model_loaded_memory() == held and entry.device == torch.device("cpu")

    mm.unload_all_models()  # what "Unload models" and POST /free {"unload_models": true} run

    assert pipeline.cache.modules == {} and pipeline.cache.resident_bytes() == 0
    assert _entries(mm, pipeline) == []
    again = pipeline.sample(cond, seed=1, steps=2)  # rebuilt from the files: same result
    assert torch.equal(again.video, latents.video) and torch.equal(again.audio, latents.audio)
    assert len(_entries(mm, pipeline)) == 1
    mm.unload_all_models()


def test_a_partial_request_releases_the_largest_modules_first(node_module, mm, tiny_folder):
    pipeline = _pipeline(node_module, tiny_folder)
    pipeline.prepare_conditioning("a bell rings", "static", None, **CLIP)
    pipeline.cache.get("audio_dit"), pipeline.cache.get("audio_vae")
    sizes = {name: pipeline.cache.module_bytes(name) for name in pipeline.cache.modules}
    largest = max(sizes, key=sizes.get)
    freed = pipeline.cache.host_handle.partially_unload(torch.device("cpu"), 1)
    assert freed == sizes[largest] and largest not in pipeline.cache.modules
    assert set(pipeline.cache.modules) == set(sizes) - {largest}
    mm.unload_all_models()


def test_plans_ask_nothing_and_phases_claim_only_their_figure(node_module, mm, tiny_folder, monkeypatch):
    """A GPU pipeline (budget mode plans a GPU on the CPU): planning sees the VRAM ComfyUI could give without
    unloading; sampling claims the plan's denoise figure, decoding the VAE decode figure."""
    gpu = torch.device("cuda", 0)
    freed, free_now = [], 6e9
    monkeypatch.setattr(mm, "get_free_memory", lambda dev=None, torch_free_too=False: free_now)
    monkeypatch.setattr(mm, "free_memory", lambda need, dev, keep_loaded=[]: freed.append((need, dev)) or [])
    host = node_module("memory_host")
    pipeline = _pipeline(node_module, tiny_folder, attach=False)
    pipeline_host = host.ComfyMemoryHost(pipeline.cache, gpu)
    # another model ComfyUI holds on the same GPU: a real ModelPatcher entry with 4 GB loaded
    import weakref

    import comfy.model_patcher

    module = torch.nn.Linear(4, 4)
    patcher = comfy.model_patcher.ModelPatcher(module, load_device=gpu, offload_device=torch.device("cpu"))
    module.model_loaded_weight_memory = 4e9
    other = mm.LoadedModel(patcher)
    other.real_model = weakref.ref(module)
    monkeypatch.setattr(mm, "current_loaded_models", [other])

    available = pipeline_host.available_vram(gpu)
    assert available == pytest.approx(6e9 + 4e9 - mm.extra_reserved_memory())
    assert freed == []  # planning unloaded nothing

    plan = pipeline.memory_plan(**CLIP, vram_bytes=available)
    claims = []
    pipeline.memory_host = type("Recording", (), {"claim": lambda self, dev, need: claims.append(need),
                                                   "available_vram": pipeline_host.available_vram})()
    pipeline.claim_vram(plan, ["denoise"])
    assert claims == [plan.vram_phases["denoise"]] and claims[0] < plan.vram_peak_bytes + 1

    pipeline_host.claim(gpu, plan.vram_phases["denoise"])  # ComfyUI frees for the figure, not the peak of all
    try:
        (need, dev), = freed[:1]
        expected = max(mm.minimum_inference_memory(), plan.vram_phases["denoise"] + mm.extra_reserved_memory())
        assert dev == gpu and need == pytest.approx(expected)
        assert any(m.model is pipeline.cache.host_handle for m in mm.current_loaded_models)
    finally:
        mm.current_loaded_models[:] = [m for m in mm.current_loaded_models if m.model is not pipeline.cache.host_handle]


def test_cpu_sampling_claims_through_the_host_on_every_phase(node_module, tiny_folder):
    """Which phases claim: conditioning, sampling, decoding (0 bytes on a CPU plan: registration only)."""
    pipeline = _pipeline(node_module, tiny_folder)
    claims = []
    pipeline.memory_host = type("Recording", (), {"claim": lambda self, dev, need: claims.append((str(dev), need)),
                                                   "available_vram": lambda self, dev: 0.0})()
    cond = pipeline.prepare_conditioning("a bell rings", "static", None, **CLIP)
    latents = pipeline.sample(cond, seed=1, steps=1)
    pipeline.decode_video(latents), pipeline.decode_audio(latents)
    assert claims == [("cpu", 0.0)] * 4


def test_the_one_figure_probe_claims_then_reports(node_module, tiny_folder):
    """`free_vram_probe` (what a caller with its own plan figure, the training node, uses): room for the figure is
    claimed from the host, then what MOVA may use is reported."""
    pipeline = _pipeline(node_module, tiny_folder, attach=False)
    assert pipeline.free_vram_probe is None
    calls = []
    pipeline.memory_host = type("Recording", (), {"claim": lambda self, dev, need: calls.append(("claim", need)),
                                                   "available_vram": lambda self, dev: calls.append("available") or 7e9})()
    assert pipeline.free_vram_probe(5e9) == 7e9 and calls == [("claim", 5e9), "available"]
