"""MOVA Sigmas: a MOVA schedule (or a typed list) as core SIGMAS, for core's sigma nodes (SplitSigmas, FlipSigmas,
SetFirstSigma, ...) and the Joint Sampler's / Extend's `sigmas` input. All logic is `mova_model.sampling.schedules`."""
from __future__ import annotations

from comfy_api.latest import io

from ..mova_model.sampling.schedules import SOLVERS, ScheduleError, ScheduleOptions, denoised_schedule, parse_sigmas
from .combos import check_combos
from .sampler import SHIFT_TOOLTIP, SOLVER_TOOLTIP
from .types import MovaModel, handle_of


class MovaSigmas(io.ComfyNode):
    @classmethod
    def define_schema(cls) -> io.Schema:
        return io.Schema(
            node_id="MovaSigmas",
            display_name="MOVA Sigmas",
            category="MOVA/sampling",
            description="The sigmas of a MOVA schedule (the solver's official table at this shift, steps and denoise), "
                        "or a typed list such as a few-step schedule, as core SIGMAS. Connect to the Joint Sampler's "
                        "sigmas (with the same solver) or edit them with core sigma nodes first.",
            inputs=[
                MovaModel.Input("model", tooltip="Gives the checkpoint's scheduler config (its shift)."),
                io.Combo.Input("solver", options=list(SOLVERS), default="euler", tooltip=SOLVER_TOOLTIP),
                io.Int.Input("steps", default=50, min=1, max=1000),
                io.Float.Input("shift", default=0.0, min=0.0, max=100.0, step=0.01, tooltip=SHIFT_TOOLTIP),
                io.Float.Input("denoise", default=1.0, min=0.01, max=1.0, step=0.01,
                               tooltip="Below 1: the last part of the longer schedule (as the Joint Sampler's denoise)."),
                io.String.Input("sigmas_text", default="", optional=True,
                                tooltip="A typed list instead, e.g. 1, 0.9375, 0.8333, 0.625, 0 (decreasing, ending at 0)."),
            ],
            outputs=[io.Sigmas.Output(display_name="sigmas"), io.String.Output(display_name="text")],
        )

    @classmethod
    def execute(cls, model, solver: str, steps: int, shift: float, denoise: float, sigmas_text: str = "") -> io.NodeOutput:
        import torch

        check_combos(cls, solver=solver)
        pipe = handle_of(model).pipeline
        try:
            if (sigmas_text or "").strip():
                sigmas = torch.tensor(parse_sigmas(sigmas_text), dtype=torch.float32)
            else:
                options = ScheduleOptions(solver, float(shift) if shift and shift > 0 else None)
                sigmas = denoised_schedule(pipe.configs.scheduler, options, int(steps), float(denoise)).sigmas
        except ScheduleError as exc:
            raise ValueError(f"MOVA Sigmas: {exc}") from None
        return io.NodeOutput(sigmas, ", ".join(f"{v:.6g}" for v in sigmas.tolist()))


NODES = [MovaSigmas]
