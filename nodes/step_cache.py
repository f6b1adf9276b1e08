"""MOVA Step Cache: a joint step cache for the MOVA Joint Sampler (skips passes whose output barely changes)."""
from __future__ import annotations

from comfy_api.latest import io

from ..mova_model.sampling.step_cache import DEFAULT_THRESHOLD, StepCacheConfig

MovaStepCache = io.Custom("MOVA_STEP_CACHE")


class MovaStepCacheNode(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaStepCache",
            display_name="MOVA Step Cache",
            category="MOVA/sampling",
            description="Skips a step's transformer pass when its predicted change is below the threshold and reuses "
                        "that guidance branch's last video and audio velocities (EasyCache-style). Decided from the "
                        "video tower, one cache per guidance branch, reset at the expert switch, first and last step "
                        "always computed. Threshold 0 = no cache. The default was chosen on a tiny test model and "
                        "is not verified on the released weights.",
            inputs=[
                io.Float.Input("threshold", default=DEFAULT_THRESHOLD, min=0.0, max=1.0, step=0.005,
                               tooltip="Largest predicted relative change of a skipped pass. Higher = more skips, "
                                       "more error. 0 = off."),
                io.Float.Input("start_percent", default=0.15, min=0.0, max=1.0, step=0.01,
                               tooltip="Fraction of the steps always computed before any skip."),
            ],
            outputs=[MovaStepCache.Output(display_name="step_cache")],
        )

    @classmethod
    def execute(cls, threshold: float, start_percent: float = 0.15) -> io.NodeOutput:
        config = StepCacheConfig(threshold=float(threshold), start_percent=float(start_percent))
        config.validate()
        return io.NodeOutput(config)


NODES = [MovaStepCacheNode]
