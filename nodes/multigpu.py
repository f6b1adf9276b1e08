"""MOVA Multi-GPU: MOVA_MODEL -> MOVA_MODEL whose sampling runs on persistent worker processes, one per device.

The server stays one process; the workers (a torch.distributed group among themselves: NCCL on GPUs, gloo on
CPU) split each step CFG-parallel, Ulysses sequence-parallel or both (`mova_model.parallel`). Progress,
preview and cancel work as with one device, for every node that samples with this model (Joint Sampler,
Extend); workers stop when this model is dropped or the server exits.
"""
from __future__ import annotations

import copy
import dataclasses

from comfy_api.latest import io

from ..mova_model.parallel.layout import SPLITS, ParallelError, ParallelLayout, check_layout
from ..mova_model.parallel.workers import WorkerPool, WorkerSpec
from .types import MovaModel, handle_of
from .combos import check_combos


def parse_devices(text: str) -> tuple:
    """"cuda:0, cuda:1" -> ("cuda:0", "cuda:1"); "cuda x4" style shorthands are not accepted."""
    return tuple(part.strip() for part in str(text).replace(";", ",").split(",") if part.strip())


class MovaMultiGPU(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaMultiGPU",
            display_name="MOVA Multi-GPU",
            category="MOVA/loaders",
            description="Runs the sampler on one worker process per device. cfg: the guidance passes of a step on "
                        "different devices (same result as one device); ulysses: video and audio tokens split "
                        "across devices (degrees 2 or 4 for MOVA); cfg+ulysses: both (4 devices = 2 x 2).",
            inputs=[
                MovaModel.Input("model"),
                io.String.Input("devices", default="cuda:0,cuda:1",
                                tooltip="Comma-separated torch devices, one worker each (cuda:0,cuda:1 or cpu,cpu)."),
                io.Combo.Input("split", options=list(SPLITS), default="cfg",
                               tooltip="cfg: 2 devices for text CFG (3 for dual CFG); ulysses: 2 or 4 devices; "
                                       "cfg+ulysses: 4 or 8 devices."),
                io.Float.Input("timeout_s", default=600.0, min=5.0, max=7200.0, step=5.0, optional=True,
                               tooltip="Seconds a worker may wait for the others before the run stops with an error."),
            ],
            outputs=[MovaModel.Output(display_name="model")],
        )

    @classmethod
    def execute(cls, model, devices: str, split: str, timeout_s: float = 600.0) -> io.NodeOutput:
        check_combos(cls, split=split)
        handle = handle_of(model)
        try:
            spec = WorkerSpec(devices=parse_devices(devices), split=split, timeout_s=float(timeout_s))
            spec.validate()
            layout = spec.layout()
            # the head counts are known now; the guidance passes only when the sampler runs
            check_layout(ParallelLayout(cfg=1, ulysses=layout.ulysses), handle.pipeline.configs, ())
            pool = WorkerPool(spec)
        except ParallelError as exc:
            raise ValueError(f"MOVA Multi-GPU: {exc}") from None
        pipeline = copy.copy(handle.pipeline)  # a view sharing the modules; the input model is untouched
        pipeline.remote = pool
        return io.NodeOutput(dataclasses.replace(handle, pipeline=pipeline))


NODES = [MovaMultiGPU]
