"""MOVA Loader: a checkpoint folder from `models/mova` -> a MOVA_MODEL handle (nothing is read but headers)."""
from __future__ import annotations

import logging

import torch
from comfy_api.latest import io

from ..mova_model.memory.model_store import MEMORY_MODES, WEIGHT_MODES, MemoryOptions
from ..mova_model.sampling.pipeline import MovaPipeline
from .combos import check_combos
from .memory_host import attach_memory_host
from ..mova_model.sampling.speed import BATCH_GUIDANCE_MODES, SpeedOptions
from ..mova_model.network.attention import ATTENTION_BACKENDS
from ..mova_model.network.precision import auto_dtype
from .paths import checkpoint_folders, checkpoint_path
from .types import MovaModel, MovaModelHandle

logger = logging.getLogger(__name__)

DTYPES = {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}


def resolve_device(choice: str) -> torch.device:
    """`auto` = ComfyUI's torch device; `cpu`/`cuda` as named (cuda must exist)."""
    import comfy.model_management as mm

    if choice == "auto":
        return mm.get_torch_device()
    if choice == "cuda" and not torch.cuda.is_available():
        raise ValueError("device: 'cuda' was chosen but no CUDA GPU is available (choose 'auto' or 'cpu')")
    return torch.device(choice)


def plan_summary(pipeline: MovaPipeline, name: str) -> str:
    """The text the Loader shows: the memory plan for the model's default clip (640x352, 193 frames, text CFG)."""
    head = f"{name}: compute {str(pipeline.dtype).replace('torch.', '')} on {pipeline.device}"
    gguf = pipeline.stored_weights().describe()
    if gguf:  # which components are GGUF files, with their tensor types
        head += "\n" + gguf
    if pipeline.device.type != "cuda":
        return (head + "\nCPU: weights stay memory-mapped from the checkpoint files and every layer computes from "
                "them; each clip is planned against the host RAM available when it is conditioned.")
    return head + "\n" + pipeline.memory_plan().format()


def resolve_dtype(choice: str, device: torch.device) -> torch.dtype:
    """`auto` = bf16 on a GPU where ComfyUI would use bf16 itself (`should_use_bf16`: native bf16, not the
    emulation `torch.cuda.is_bf16_supported()` also counts), else fp32 (CPU bf16 matmuls are slow)."""
    if choice != "auto":
        return DTYPES[choice]
    native = None
    if device.type == "cuda":
        import comfy.model_management as mm

        native = bool(mm.should_use_bf16(device))
    return auto_dtype(device, native_bf16=native)


class MovaLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaLoader",
            display_name="MOVA Loader",
            category="MOVA/loaders",
            description="Opens a MOVA checkpoint folder (official OpenMOSS-Team/MOVA-360p or -720p layout) from "
                        "models/mova. Weights are memory-mapped and loaded on first use; the folder is checked "
                        "(configs and tensor headers) right away.",
            inputs=[
                io.Combo.Input("checkpoint", options=checkpoint_folders(),
                               tooltip="A folder under models/mova that contains model_index.json."),
                io.Combo.Input("dtype", options=["auto", "bf16", "fp16", "fp32"], default="auto",
                               tooltip="Compute dtype of the DiTs and text encoder. auto: bf16 on a GPU with native bf16 "
                                       "(as ComfyUI judges it), fp32 otherwise."),
                io.Combo.Input("device", options=["auto", "cuda", "cpu"], default="auto",
                               tooltip="Where the model computes. auto: ComfyUI's device."),
                io.Combo.Input("memory_mode", options=list(MEMORY_MODES), default="auto",
                               tooltip="auto: plan against the VRAM ComfyUI could give (free, or held by other "
                                       "models it can unload: only what the plan needs is asked for); budget: plan "
                                       "against vram_budget_gb; resident: everything on the GPU or a clear error. "
                                       "The plan is shown on the plan output."),
                io.Float.Input("vram_budget_gb", default=12.0, min=0.1, max=1024.0, step=0.5,
                               tooltip="VRAM to plan against in 'budget' mode (GB)."),
                io.Combo.Input("weights", options=list(WEIGHT_MODES), default="as stored",
                               tooltip="fp8: store the DiT and bridge matrices as fp8 e4m3 with a per-tensor scale "
                                       "(half the VRAM and transfer; small quality cost)."),
                io.Int.Input("prefetch_depth", default=0, min=0, max=8, optional=True,
                             tooltip="Advanced: blocks copied ahead of use when streaming (0 = the planner decides)."),
                io.Combo.Input("attention", options=list(ATTENTION_BACKENDS), default="sdpa", optional=True,
                               tooltip="Speed: sdpa (PyTorch, default), flash (flash-attn), sage (sageattention), "
                                       "auto (best installed for the device). flash/sage need a CUDA GPU."),
                io.Boolean.Input("compile_blocks", default=False, optional=True,
                                 tooltip="Speed: torch.compile the video/audio blocks and bridge layers (first "
                                         "steps slower while compiling; the compile time is logged)."),
                io.Combo.Input("batch_guidance", options=list(BATCH_GUIDANCE_MODES), default="off", optional=True,
                               tooltip="Speed: run the CFG branches of a step as one batch. auto: when the memory "
                                       "plan fits (GPU); separate passes on CPU."),
                io.Boolean.Input("fp8_matmul", default=False, optional=True,
                                 tooltip="Speed: with fp8 weights, multiply in fp8 (torch._scaled_mm) on GPUs of "
                                         "compute capability 8.9+; elsewhere the usual cast path."),
            ],
            outputs=[MovaModel.Output(display_name="model"), io.String.Output(display_name="plan")],
        )

    @classmethod
    def validate_inputs(cls, checkpoint: str) -> bool | str:
        # ComfyUI 0.3.75 does not check V3 combo values against their list, so the loader does.
        names = checkpoint_folders()
        if checkpoint not in names:
            return (f"checkpoint {checkpoint!r} is not a MOVA checkpoint folder in models/mova "
                    f"(found: {', '.join(names) or 'none'}; each needs a model_index.json)")
        return True

    @classmethod
    def execute(cls, checkpoint: str, dtype: str, device: str, memory_mode: str = "auto", vram_budget_gb: float = 12.0,
                weights: str = "as stored", prefetch_depth: int = 0, attention: str = "sdpa",
                compile_blocks: bool = False, batch_guidance: str = "off", fp8_matmul: bool = False) -> io.NodeOutput:
        check_combos(cls, checkpoint=checkpoint, dtype=dtype, device=device, memory_mode=memory_mode, weights=weights,
                     attention=attention, batch_guidance=batch_guidance)
        folder = checkpoint_path(checkpoint)
        torch_device = resolve_device(device)
        torch_dtype = resolve_dtype(dtype, torch_device)
        memory = MemoryOptions(mode=memory_mode, vram_budget_gb=float(vram_budget_gb), weights=weights,
                               prefetch_depth=int(prefetch_depth) or None)
        speed = SpeedOptions(attention=attention, compile_blocks=bool(compile_blocks), batch_guidance=batch_guidance,
                             fp8_matmul=bool(fp8_matmul))
        speed.check_device(torch_device)  # a missing attention package is reported here, naming what to install
        pipeline = MovaPipeline.from_pretrained(folder, device=torch_device, dtype=torch_dtype, memory=memory,
                                                speed=speed)
        attach_memory_host(pipeline)  # ComfyUI sees (and can take back) MOVA's modules; plans ask it for room
        import comfy.model_management as mm

        pipeline.interrupt_check = mm.throw_exception_if_processing_interrupted  # between VAE chunks
        plan = plan_summary(pipeline, checkpoint)
        logger.info("MOVA Loader: %s", plan)
        return io.NodeOutput(MovaModelHandle(pipeline=pipeline, name=checkpoint, plan_text=plan), plan)


NODES = [MovaLoader]
