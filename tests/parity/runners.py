"""One runner per parity case kind. Each loads the case's checkpoint through `MovaCheckpoint.open`, runs our
implementation on the recorded inputs and compares every recorded output at the case's tolerance."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional

import numpy as np
import torch
from safetensors.torch import load_file

from mova_model.checkpoint.folder import MovaCheckpoint
from mova_model.network.denoiser import BridgeScales, joint_forward
from mova_model.sampling.guidance import BOTH_OFF, FULL, TEXT_OFF, combine
from mova_model.media.image_preprocess import crop_and_resize, to_model_range
from mova_model.network.lora import LoraPatch, LoraPatchSet, clear as clear_lora, load_lora
from mova_model.sampling.pipeline import MovaPipeline
from mova_model.sampling.scheduler import FlowMatchPairScheduler
from mova_model.sampling.conditioning import first_frame_condition
from mova_model.network.text_encoder import TextEncoder
from mova_model.network.video_vae import VideoVAE

from .runners_keyframes import run_keyframe_condition
from .runners_solvers import run_solver_trajectory


@dataclass
class Report:
    """Errors per compared output and the failures collected while comparing."""

    errors: Dict[str, Dict[str, float]] = field(default_factory=dict)
    failures: List[str] = field(default_factory=list)

    def raise_failures(self) -> None:
        if self.failures:
            raise AssertionError("parity mismatch:\n  " + "\n  ".join(self.failures))


@dataclass
class CaseContext:
    root: Path
    index: dict
    case: dict
    inputs: Dict[str, torch.Tensor]
    outputs: Dict[str, torch.Tensor]
    checkpoint_dir: Optional[Path]
    report: Report = field(default_factory=Report)
    _checkpoint: Optional[MovaCheckpoint] = None

    @classmethod
    def load(cls, root: Path, index: dict, case: dict) -> "CaseContext":
        for key in ("name", "kind", "checkpoint", "outputs", "tolerance"):
            assert key in case, f"case {case.get('name')!r} has no {key!r} entry"
        inputs_path = root / case["inputs"] if case.get("inputs") else None
        outputs_path = root / case["outputs"]
        assert outputs_path.is_file(), f"case {case['name']}: outputs file {outputs_path} is missing"
        inputs = {}
        if inputs_path is not None:
            assert inputs_path.is_file(), f"case {case['name']}: inputs file {inputs_path} is missing"
            inputs = load_file(str(inputs_path))
        checkpoint_dir = None  # `"checkpoint": null`: the case needs no model (e.g. solver trajectories)
        if case["checkpoint"] is not None:
            checkpoint_dir = (root / case["checkpoint"]).resolve()
            assert checkpoint_dir.is_dir(), f"case {case['name']}: checkpoint folder {checkpoint_dir} is missing"
        return cls(root=root, index=index, case=case, inputs=inputs, outputs=load_file(str(outputs_path)),
                   checkpoint_dir=checkpoint_dir)

    @property
    def args(self) -> dict:
        return self.case.get("args") or {}

    @property
    def checkpoint(self) -> MovaCheckpoint:
        assert self.checkpoint_dir is not None, f"case {self.case['name']} has no checkpoint (\"checkpoint\": null)"
        if self._checkpoint is None:
            self._checkpoint = MovaCheckpoint.open(self.checkpoint_dir)
            self._checkpoint.validate()
        return self._checkpoint

    def build(self, component: str):
        module = self.checkpoint.build(component)
        module.eval()
        return module

    def tolerance(self, group: Optional[str] = None) -> dict:
        tol = self.case["tolerance"]
        if group is not None and isinstance(tol.get(group), dict):
            return tol[group]
        if "atol" in tol:
            return tol
        for value in tol.values():  # the first numeric group, e.g. {"embeds": {...}}
            if isinstance(value, dict) and "atol" in value:
                return value
        raise AssertionError(f"case {self.case['name']}: no usable tolerance in {tol}")

    def compare(self, key: str, actual: torch.Tensor, group: Optional[str] = None, exact: bool = False) -> None:
        assert key in self.outputs, f"case {self.case['name']}: recorded output {key!r} is missing"
        expected = self.outputs[key]
        actual = torch.as_tensor(actual).detach().cpu()
        if tuple(actual.shape) != tuple(expected.shape):
            self.report.failures.append(f"{key}: shape {list(actual.shape)} != expected {list(expected.shape)}")
            return
        if exact or expected.dtype in (torch.int64, torch.int32, torch.uint8, torch.bool):
            if expected.dtype == torch.uint8 and not exact:
                diff = (actual.to(torch.int16) - expected.to(torch.int16)).abs().max().item() if expected.numel() else 0
                self.report.errors[key] = {"max_abs": float(diff)}
                tol = self.case["tolerance"]
                limit = (tol.get(group) if isinstance(tol.get(group), dict) else tol).get("max_abs_diff", 0)
                if diff > limit:
                    self.report.failures.append(f"{key}: max abs diff {diff} > {limit}")
                return
            equal = torch.equal(actual.to(expected.dtype), expected)
            self.report.errors[key] = {"exact": float(equal)}
            if not equal:
                self.report.failures.append(f"{key}: not identical")
            return
        tol = self.tolerance(group)
        actual = actual.to(torch.float64)
        expected = expected.to(torch.float64)
        diff = (actual - expected).abs()
        max_abs = diff.max().item() if diff.numel() else 0.0
        rel = (diff / expected.abs().clamp_min(1e-12))
        max_rel = rel.max().item() if rel.numel() else 0.0
        self.report.errors[key] = {"max_abs": max_abs, "max_rel": max_rel}
        if not torch.allclose(actual, expected, atol=tol["atol"], rtol=tol["rtol"]):
            self.report.failures.append(f"{key}: max abs {max_abs:.3g}, max rel {max_rel:.3g} beyond atol {tol['atol']} rtol {tol['rtol']}")


def run_text_encoding(ctx: CaseContext) -> Report:
    module = ctx.build("text_encoder")
    encoder = TextEncoder(ctx.checkpoint_dir / "tokenizer", module)
    for prefix, arg in (("prompt", "prompt"), ("negative", "negative_prompt"), ("empty", "empty_prompt")):
        if arg not in ctx.args:
            continue
        with torch.no_grad():
            result = encoder.encode([ctx.args[arg]], max_length=int(ctx.args.get("max_sequence_length", 512)))
        ctx.compare(f"{prefix}_input_ids", result.input_ids, exact=True)
        ctx.compare(f"{prefix}_attention_mask", result.attention_mask, exact=True)
        if f"{prefix}_last_hidden_state_raw" in ctx.outputs:
            ctx.compare(f"{prefix}_last_hidden_state_raw", result.last_hidden_state, group="embeds")
        ctx.compare(f"{prefix}_prompt_embeds" if prefix != "prompt" else "prompt_embeds", result.embeds, group="embeds")
    return ctx.report


def run_dit_forward(ctx: CaseContext) -> Report:
    component = ctx.args.get("component") or ("audio_dit" if ctx.case["kind"] == "audio_dit_forward" else "video_dit")
    module = ctx.build(component)
    with torch.no_grad():
        out = module(ctx.inputs["x"], ctx.inputs["timestep"], ctx.inputs["context"])
    ctx.compare("out", out)
    return ctx.report


def run_bridge_forward(ctx: CaseContext) -> Report:
    bridge = ctx.build("dual_tower_bridge")
    grid = tuple(int(g) for g in ctx.args["grid_size"])
    steps = int(ctx.args["audio_steps"])
    visual, audio = ctx.inputs["visual_hidden"], ctx.inputs["audio_hidden"]
    with torch.no_grad():
        (cos_v, sin_v), (cos_a, sin_a) = bridge.aligned_rope(float(ctx.args["video_fps"]), grid, steps,
                                                             device=visual.device, dtype=visual.dtype)
        for key, value in (("cos_v", cos_v), ("sin_v", sin_v), ("cos_a", cos_a), ("sin_a", sin_a)):
            ctx.compare(key, value)
        scale = float(ctx.args.get("condition_scale", 1.0))
        for layer in ctx.args["interacting_layers"]:
            assert bridge.interacts(int(layer)), f"layer {layer} should interact"
            v_out, a_out = bridge(int(layer), visual, audio, (cos_v, sin_v), (cos_a, sin_a), a2v_scale=scale, v2a_scale=scale)
            ctx.compare(f"layer{layer}_visual_out", v_out)
            ctx.compare(f"layer{layer}_audio_out", a_out)
    return ctx.report


def run_scheduler(ctx: CaseContext) -> Report:
    configs = ctx.checkpoint.configs
    scheduler = FlowMatchPairScheduler(configs.scheduler)
    n = int(ctx.args["num_inference_steps"])
    pairs = scheduler.timesteps_for(n)
    ctx.compare("timesteps", pairs[:, 0])
    ctx.compare("pair_timesteps", pairs)
    ctx.compare("sigmas", scheduler.sigmas_for(n)[:, 0])
    ctx.compare("pair_sigmas", scheduler.sigmas_for(n))
    ctx.compare("train_timesteps", scheduler.train_timesteps)
    ctx.compare("train_sigmas", scheduler.train_sigmas)
    switch = scheduler.expert_switch_index(pairs[:, 0], configs.boundary_timestep)
    ctx.compare("switch_index", torch.tensor([switch]), exact=True)
    for i in range(n):
        if f"step{i}_sample" not in ctx.inputs:
            continue
        t_from = pairs[i, 0].reshape(1)
        t_to = pairs[i + 1, 0].reshape(1) if i + 1 < n else None
        out = scheduler.step_from_to(ctx.inputs[f"step{i}_model_output"], t_from, t_to, ctx.inputs[f"step{i}_sample"])
        ctx.compare(f"step{i}_prev_sample", out)
        ctx.compare(f"step{i}_sigma_from", scheduler.sigma_of(t_from).reshape(1))
        ctx.compare(f"step{i}_sigma_to", (scheduler.sigma_of(t_to) if t_to is not None else torch.zeros(1)).reshape(1))
    if "long_num_inference_steps" in ctx.args:
        n_long = int(ctx.args["long_num_inference_steps"])
        long_t = scheduler.timesteps_for(n_long)[:, 0]
        ctx.compare("long_timesteps", long_t)
        ctx.compare("long_sigmas", scheduler.sigmas_for(n_long)[:, 0])
        ctx.compare("long_step_sigmas", torch.stack([scheduler.sigma_of(t) for t in long_t]))
    if "dual_sigma_shift_kwargs" in ctx.args:
        kw = ctx.args["dual_sigma_shift_kwargs"]
        dual = scheduler.timesteps_for(n, video_shift=kw["visual_shift"], audio_shift=kw["audio_shift"])
        ctx.compare("dual_sigma_shift_pair_timesteps", dual)
        ctx.compare("dual_sigma_shift_pair_sigmas", dual / scheduler.config.num_train_timesteps)
    return ctx.report


def run_video_vae(ctx: CaseContext) -> Report:
    vae = VideoVAE(ctx.build("video_vae"), ctx.checkpoint.configs.video_vae)
    image = to_model_range(ctx.inputs["image_uint8"].numpy())
    ctx.compare("image_preprocessed", image)
    frames = int(ctx.args["num_frames"])
    video = torch.cat([image.unsqueeze(2), image.new_zeros(1, 3, frames - 1, *image.shape[-2:])], dim=2)
    ctx.compare("video_condition", video)
    with torch.no_grad():
        mode = vae.encode_mode(video)
        ctx.compare("encoded_latent_mode", mode)
        ctx.compare("encoded_latent_normalized", vae.normalize(mode))
        ctx.compare("condition", first_frame_condition(vae, image, frames))
        ctx.compare("decode_denormalized_input", vae.denormalize(ctx.inputs["normalized_latents_for_decode"]))
        ctx.compare("decoded_video", vae.decode(ctx.inputs["normalized_latents_for_decode"]))
    return ctx.report


def run_audio_vae(ctx: CaseContext) -> Report:
    dac = ctx.build("audio_vae")
    with torch.no_grad():
        padded = dac.preprocess(ctx.inputs["waveform"], int(ctx.args.get("sample_rate", dac.config.sample_rate)))
        ctx.compare("waveform_padded", padded)
        mean, logvar = dac.encode(padded)
        ctx.compare("posterior_mean", mean)
        ctx.compare("posterior_logvar", logvar)
        ctx.compare("posterior_std", torch.exp(0.5 * logvar))
        ctx.compare("decoded_waveform", dac.decode(ctx.inputs["latents_for_decode"]))
    return ctx.report


def _denoiser_modules(ctx: CaseContext):
    return ctx.build(ctx.args["expert"]), ctx.build("audio_dit"), ctx.build("dual_tower_bridge")


def _pass(ctx: CaseContext, modules, context: torch.Tensor, scales: BridgeScales, timestep=None, audio_timestep=None):
    expert, audio_dit, bridge = modules
    video_input = torch.cat([ctx.inputs["latents"], ctx.inputs["condition"]], dim=1)
    with torch.no_grad():
        v, a = joint_forward(expert, audio_dit, bridge, video_input, ctx.inputs["audio_latents"], context,
                             ctx.inputs["timestep"] if timestep is None else timestep,
                             ctx.inputs["audio_timestep"] if audio_timestep is None else audio_timestep,
                             float(ctx.args["video_fps"]), scales=scales)
    return v.float(), a.float()


def run_joint_denoiser(ctx: CaseContext) -> Report:
    modules = _denoiser_modules(ctx)
    cond = _pass(ctx, modules, ctx.inputs["prompt_embeds"], BridgeScales())
    uncond = _pass(ctx, modules, ctx.inputs["negative_prompt_embeds"], BridgeScales())
    ctx.compare("video_pred_cond", cond[0])
    ctx.compare("audio_pred_cond", cond[1])
    ctx.compare("video_pred_uncond", uncond[0])
    ctx.compare("audio_pred_uncond", uncond[1])
    s = float(ctx.args["cfg_scale"])
    video_cfg = combine({FULL: cond[0], TEXT_OFF: uncond[0]}, s, 1.0)
    audio_cfg = combine({FULL: cond[1], TEXT_OFF: uncond[1]}, s, 1.0)
    ctx.compare("video_pred_cfg", video_cfg)
    ctx.compare("audio_pred_cfg", audio_cfg)
    scheduler = FlowMatchPairScheduler(ctx.checkpoint.configs.scheduler)
    t_next = ctx.args.get("next_timestep")
    t_next = None if t_next is None else torch.tensor([float(t_next)])
    ctx.compare("latents_next", scheduler.step_from_to(video_cfg, ctx.inputs["timestep"], t_next, ctx.inputs["latents"]))
    ctx.compare("audio_latents_next", scheduler.step_from_to(audio_cfg, ctx.inputs["audio_timestep"], t_next, ctx.inputs["audio_latents"]))
    return ctx.report


def run_dual_cfg(ctx: CaseContext) -> Report:
    modules = _denoiser_modules(ctx)
    preds = {
        FULL: _pass(ctx, modules, ctx.inputs["prompt_embeds"], BridgeScales()),
        TEXT_OFF: _pass(ctx, modules, ctx.inputs["negative_prompt_embeds"], BridgeScales()),
        BOTH_OFF: _pass(ctx, modules, ctx.inputs["negative_prompt_embeds"], BridgeScales(condition=0.0)),
    }
    bridge_off = _pass(ctx, modules, ctx.inputs["prompt_embeds"], BridgeScales(condition=0.0))
    for branch, (v, a) in list(preds.items()) + [("bridge_off", bridge_off)]:
        name = branch if isinstance(branch, str) else branch.name
        ctx.compare(f"video_pred_{name}", v)
        ctx.compare(f"audio_pred_{name}", a)
    for setting in ctx.args["settings"]:
        s_t, s_b, key = float(setting["s_T"]), float(setting["s_B"]), setting["key"]
        ctx.compare(f"video_pred_dual_{key}", combine({b: p[0] for b, p in preds.items()}, s_t, s_b))
        ctx.compare(f"audio_pred_dual_{key}", combine({b: p[1] for b, p in preds.items()}, s_t, s_b))
    return ctx.report


def run_bridge_scales(ctx: CaseContext) -> Report:
    modules = _denoiser_modules(ctx)
    context = ctx.inputs[ctx.args.get("context", "prompt_embeds")]
    scales = BridgeScales(condition=float(ctx.args.get("condition_scale", 1.0)),
                          a2v=float(ctx.args["a2v_condition_scale"]), v2a=float(ctx.args["v2a_condition_scale"]))
    v, a = _pass(ctx, modules, context, scales)
    ctx.compare("video_pred", v)
    ctx.compare("audio_pred", a)
    return ctx.report


def run_split_timestep(ctx: CaseContext) -> Report:
    modules = _denoiser_modules(ctx)
    v, a = _pass(ctx, modules, ctx.inputs["prompt_embeds"], BridgeScales())
    ctx.compare("video_pred", v)
    ctx.compare("audio_pred", a)
    return ctx.report


def run_lora(ctx: CaseContext) -> Report:
    lora_dir = ctx.root / ctx.index.get("lora", "lora") if not ctx.args.get("lora_path") else ctx.root / ctx.args["lora_path"]
    weights = load_lora(lora_dir)
    assert weights.num_tensors() == int(ctx.args.get("num_lora_tensors", weights.num_tensors()))
    if ctx.args.get("lora_alpha_override") is not None:
        weights.alpha = float(ctx.args["lora_alpha_override"])
    modules = dict(zip(("expert", "audio_dit", "dual_tower_bridge"), _denoiser_modules(ctx)))
    names = {"expert": ctx.args.get("expert", "video_dit_2"), "audio_dit": "audio_dit", "dual_tower_bridge": "dual_tower_bridge"}

    def run(strength: Optional[float]):
        for key, module in modules.items():
            clear_lora(module)
            if strength is not None:
                LoraPatchSet((LoraPatch(weights, strength),)).apply(names[key], module)
        try:
            return _pass(ctx, tuple(modules.values()), ctx.inputs["prompt_embeds"], BridgeScales())
        finally:
            for module in modules.values():
                clear_lora(module)

    for suffix, strength in (("base", None), ("lora_loaded", 1.0), ("lora", float(ctx.args["lora_scale"]))):
        v, a = run(strength)
        ctx.compare(f"video_pred_cond_{suffix}", v)
        ctx.compare(f"audio_pred_cond_{suffix}", a)
    return ctx.report


def run_image_preprocess(ctx: CaseContext) -> Report:
    h, w = int(ctx.args["height"]), int(ctx.args["width"])
    for key, image in ctx.inputs.items():
        name = key.replace("image_", "resized_")
        ctx.compare(name, torch.from_numpy(crop_and_resize(image.numpy(), h, w)))
    return ctx.report


def run_e2e_i2va(ctx: CaseContext) -> Report:
    from mova_model.sampling.guidance import GuidanceConfig

    pipe = MovaPipeline(ctx.checkpoint, device="cpu", dtype=torch.float32)
    a = ctx.args
    width, height, frames, fps = int(a["width"]), int(a["height"]), int(a["num_frames"]), float(a["video_fps"])
    image = ctx.inputs["image_uint8"].numpy()
    if image.shape[:2] != (height, width):
        # MOVA.__call__ given an image of another size resizes it (no crop) in VideoProcessor.preprocess, with
        # diffusers' default resample; the pipeline's own crop-and-resize (the official script's) is then identity.
        from diffusers.image_processor import VaeImageProcessor
        from PIL import Image

        image = np.asarray(VaeImageProcessor(vae_scale_factor=8).resize(Image.fromarray(image), height, width))
    cond = pipe.prepare_conditioning(a["prompt"], a["negative_prompt"], image,
                                     width=width, height=height, num_frames=frames, video_fps=fps)
    tol = "latents"
    ctx.compare("prompt_embeds", cond.prompt_embeds, group=tol)
    ctx.compare("negative_prompt_embeds", cond.negative_prompt_embeds, group=tol)
    ctx.compare("condition", cond.condition, group=tol)
    from mova_model.sampling.sampler import seeded_noise
    video_shape, audio_shape = pipe.latent_shapes(width, height, frames, fps)
    video_noise, audio_noise = seeded_noise(int(a["seed"]), video_shape, audio_shape)
    ctx.compare("initial_video_noise", video_noise, group=tol)
    ctx.compare("initial_audio_noise", audio_noise, group=tol)

    def on_step(info):
        if f"step{info.index}_video_latents_after" in ctx.outputs:
            ctx.compare(f"step{info.index}_video_latents_after", info.video_latents, group=tol)
            ctx.compare(f"step{info.index}_audio_latents_after", info.audio_latents, group=tol)

    guidance = GuidanceConfig(text_scale=float(a["cfg_scale"]))
    latents = pipe.sample(cond, seed=int(a["seed"]), steps=int(a["num_inference_steps"]), guidance=guidance, callback=on_step)
    if "experts_per_step" in a:
        assert pipe.last_stats.experts == list(a["experts_per_step"]), (pipe.last_stats.experts, a["experts_per_step"])
    ctx.compare("final_video_latents", latents.video, group=tol)
    ctx.compare("final_audio_latents", latents.audio, group=tol)
    vae = pipe.video_vae()
    ctx.compare("final_video_latents_denormalized", vae.denormalize(latents.video), group=tol)
    decoded = pipe.decode_video_raw(latents)
    ctx.compare("decoded_video", decoded, group=tol)
    frames_uint8 = (pipe.decode_video(latents) * 255).round().to(torch.uint8)
    ctx.compare("frames_uint8", frames_uint8, group="frames_uint8")
    wave, _ = pipe.decode_audio(latents)
    ctx.compare("audio_waveform", wave, group="audio")
    return ctx.report


RUNNERS: Dict[str, Callable[[CaseContext], Report]] = {
    "text_encoding": run_text_encoding,
    "video_dit_forward": run_dit_forward,
    "audio_dit_forward": run_dit_forward,
    "bridge_forward": run_bridge_forward,
    "scheduler": run_scheduler,
    "video_vae": run_video_vae,
    "audio_vae": run_audio_vae,
    "joint_denoiser": run_joint_denoiser,
    "lora": run_lora,
    "e2e_i2va": run_e2e_i2va,
    "image_preprocess": run_image_preprocess,
    "dual_cfg_denoiser": run_dual_cfg,
    "bridge_direction_scales": run_bridge_scales,
    "split_timestep_denoiser": run_split_timestep,
    "keyframe_condition": run_keyframe_condition,
    "solver_trajectory": run_solver_trajectory,
}
from .runners_training import RUNNERS_TRAINING; RUNNERS.update(RUNNERS_TRAINING)  # noqa: E402,E702  (training kinds)
