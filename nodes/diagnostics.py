"""Diagnostic nodes: what is installed, for bug reports and for checking the install."""
import platform

import torch
from comfy_api.latest import io

PACK_VERSION = "0.1.0"


def version_report() -> str:
    """One line per fact: pack version, torch version (+ CUDA/ROCm build), Python version."""
    accel = torch.version.cuda and f"CUDA {torch.version.cuda}"
    accel = accel or (getattr(torch.version, "hip", None) and f"ROCm {torch.version.hip}") or "CPU build"
    return "\n".join(
        [
            f"ComfyUI-MOVA {PACK_VERSION}",
            f"torch {torch.__version__} ({accel})",
            f"Python {platform.python_version()}",
        ]
    )


class MovaVersion(io.ComfyNode):
    """Reports the pack version and the torch build it runs on, as a STRING."""

    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaVersion",
            display_name="MOVA Version",
            category="MOVA/utils",
            description="The ComfyUI-MOVA version and the torch build it runs on (paste it into bug reports).",
            inputs=[],
            outputs=[io.String.Output(display_name="versions")],
        )

    @classmethod
    def execute(cls) -> io.NodeOutput:
        return io.NodeOutput(version_report())


NODES = [MovaVersion]
