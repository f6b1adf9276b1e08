"""Parity runner for `solver_trajectory` cases: the official Wan 2.2 flow solvers (UniPC, DPM++) replayed through
our solvers (`mova_model.sampling.solvers.make_solver` over `schedules.full_schedule`, the code the joint sampler
runs), from each stream's recorded noise and velocities.

Per case: build the schedule of `args.solver` at `args.steps` and `args.shift` (with `num_train_timesteps` and any
other scheduler-config key the case gives), one solver state per stream, interleaved step by step as the joint
sampler steps video then audio; compare every sample after every step, the timesteps and the sigma table
(`steps + 1` entries, the last 0). The case context is duck-typed (`runners.CaseContext`).
"""

from __future__ import annotations

import dataclasses

import torch

from mova_model.checkpoint.configs import SchedulerConfig
from mova_model.sampling.schedules import ScheduleOptions, full_schedule
from mova_model.sampling.solvers import make_solver


def _scheduler_config(args: dict) -> SchedulerConfig:
    fields = {f.name for f in dataclasses.fields(SchedulerConfig)} - {"extra", "source"}
    values = {key: args[key] for key in fields if key in args}
    values.setdefault("shift", float(args["shift"]))
    return SchedulerConfig(**values)


def run_solver_trajectory(ctx):
    args = ctx.args
    for key in ("solver", "steps", "shift"):
        assert key in args, f"case {ctx.case['name']}: args has no {key!r}"
    steps = int(args["steps"])
    config = _scheduler_config(args)
    schedule = full_schedule(config, ScheduleOptions(solver=str(args["solver"]), shift=float(args["shift"])), steps)
    assert schedule.num_steps == steps, f"schedule has {schedule.num_steps} steps, the case {steps}"
    streams = list(args.get("streams") or ("video", "audio"))
    solvers = {s: make_solver(str(args["solver"]), schedule, config.num_train_timesteps) for s in streams}
    samples = {s: ctx.inputs[f"{s}.noise"].to(torch.float32) for s in streams}
    trajectory = {s: [] for s in streams}
    for index in range(steps):
        for stream in streams:  # one solver state per stream, stepped in turn as the joint sampler does
            velocity = ctx.inputs[f"{stream}.velocities"][index].to(torch.float32)
            samples[stream] = solvers[stream].step(velocity, samples[stream])
            trajectory[stream].append(samples[stream])
    for stream in streams:
        ctx.compare(f"{stream}.timesteps", schedule.timesteps)
        ctx.compare(f"{stream}.sigmas", schedule.sigmas)
        actual = torch.stack(trajectory[stream])
        before = len(ctx.report.failures)
        ctx.compare(f"{stream}.samples", actual)
        if len(ctx.report.failures) > before:
            tol = ctx.tolerance()
            expected = ctx.outputs[f"{stream}.samples"].to(torch.float64)
            for index in range(steps):
                if not torch.allclose(actual[index].double(), expected[index], atol=tol["atol"], rtol=tol["rtol"]):
                    diff = (actual[index].double() - expected[index]).abs().max().item()
                    ctx.report.failures.append(f"{stream}: first differing sample after step {index} (max abs {diff:.3g})")
                    break
    return ctx.report
