"""Sizes, FLOPs and memory estimates of MOVA's components, derived from the checkpoint's configs alone.

`Architecture` holds what the planner needs of a checkpoint (tower widths, layer counts, bridge layers, text
encoder shape); its parameter counts reproduce `shared/spec/manifests/summary.json` exactly for the released
models. `execution_modules` lists the modules `denoiser.execution_order` yields, with their bytes on the device
(bf16 or fp8, with the streamer's 256-byte alignment) and FLOPs per pass; `activation_bytes` and `vae_bytes`
are the activation and VAE working-set estimates (constants stated with their derivation below).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

GB = 1e9
ALIGN = 256  # per-tensor alignment inside a streaming slot (streaming.ALIGN_BYTES)
TEXT_TOKENS = 512  # the pipeline always pads the prompt to 512 tokens
DEFAULT_TFLOPS = 615.0
"""Sustained bf16 TFLOP/s of the compute device. 615 reproduces the ~4.5 s of H100 compute per 360p dual-tower
pass quoted for the official pipeline (2.77 PFLOP per pass by `execution_modules`: 2.57 video blocks, 0.19
bridge, 0.001 audio blocks)."""
ACT_SLACK = 1.2
"""Allocator slack on top of the activation estimate (fragmentation of the caching allocator)."""
ROPE_CHUNK_BYTES = 0.5 * GB
"""float64 RoPE temporaries (rope.apply_complex_rope processes heads in 256 MB groups: input + product); a
sequence smaller than one group needs only `16 · tokens · dim` bytes (`activation_bytes`)."""
FP8_QUANT_CHUNK_BYTES = 64 * 2 ** 20
"""fp8 matmul: the float32 piece of the activation quantized at a time (`network/fp8_matmul.py`)."""
DAC_LIVE_TENSORS = 5
"""DAC decode: tensors alive at once at a decoder stage (a residual unit's input, Snake output, dilated conv,
Snake, 1x1 conv; the residual sum reuses one), each [channels of the stage, samples at the stage's rate]."""
TEXT_BATCH = 2
"""Prompts encoded together (the prompt and the negative prompt)."""
VAE_BYTES_PER_PIXEL = 9216.0
"""Wan VAE decode working set per output pixel of one latent-frame chunk: ~12 live tensors of 4 frames ×
96 channels × 2 bytes at full resolution (the widest stage). An estimate, to be calibrated on a GPU."""
VAE_TILE = 256 + 64
"""Tiled decode: 256-pixel tiles plus their blending overlap."""
VAE_LIVE_TENSORS = 12
VAE_CHUNK_FRAMES = 4
"""The Wan VAE works on chunks of 4 pixel frames (encode: 4 input frames per call, decode: one latent frame ->
4 output frames); at the widest full-resolution stage about `VAE_LIVE_TENSORS` tensors of
`VAE_CHUNK_FRAMES × base_dim` channels are alive at once. 12 × 4 × 96 × 2 bytes = `VAE_BYTES_PER_PIXEL`.
Measured on CPU (float32, tiny checkpoint, base_dim 8, `/proc/self` VmHWM): encode 256x256x33 +412 MB and
512x512x9 +732 MB over the idle process, i.e. ~1,630 bytes per pixel (12 × 4 × 8 × 4 = 1,536) plus a fixed
~0.3 GB; decode 256x256x33 +508 MB, 512x512x9 +555 MB."""
VAE_CPU_FIXED_BYTES = 0.5 * GB
"""Size-independent host memory of a VAE call on CPU (oneDNN convolution workspaces and primitive caches,
allocator slack): ~0.3-0.45 GB measured (see above), rounded up."""
RUNTIME_HOST_BYTES = 3.0 * GB
"""Host RAM of the process itself (Python, torch, CUDA host state, latents, tokenizer)."""
HOST_COPY_GBPS = 10.0
"""Single-thread memcpy from the page cache into a pinned staging buffer (ring mode)."""


# --------------------------------------------------------------------------------------------------------------
# architecture


@dataclass(frozen=True)
class TowerShape:
    """What the planner needs of a DiT tower (`VideoDiTConfig` / `AudioDiTConfig`)."""

    dim: int
    ffn_dim: int
    num_layers: int
    in_dim: int
    out_dim: int
    patch_volume: int
    text_dim: int
    freq_dim: int
    head_dim: int

    @classmethod
    def from_config(cls, config) -> "TowerShape":
        return cls(config.dim, config.ffn_dim, config.num_layers, config.in_dim, config.out_dim,
                   math.prod(config.patch_size), config.text_dim, config.freq_dim, config.dim // config.num_heads)

    def block_params(self) -> Tuple[int, int, int]:
        """(matrix params, vector params, matrix count) of one `DiTBlock`."""
        d, f = self.dim, self.ffn_dim
        return 8 * d * d + 2 * d * f, 21 * d + f, 10

    def stem_params(self) -> int:
        """Embeddings, time MLPs and head (everything but the blocks)."""
        d, p = self.dim, self.patch_volume
        patch = d * self.in_dim * p + d
        text = self.text_dim * d + d + d * d + d
        time = self.freq_dim * d + d + d * d + d + d * 6 * d + 6 * d
        head = 2 * d + d * self.out_dim * p + self.out_dim * p
        return patch + text + time + head


@dataclass(frozen=True)
class Architecture:
    """Sizes of a MOVA checkpoint, derived from its configs (or `released()` for the published models)."""

    video: TowerShape
    audio: TowerShape
    bridge_layers: Tuple[int, ...]
    te_d_model: int
    te_d_ff: int
    te_inner: int
    te_layers: int
    te_vocab: int
    te_heads: int
    audio_hop: int
    audio_sample_rate: int
    vae_params: int = 126_892_531
    audio_vae_params: int = 371_539_137
    vae_base_dim: int = 96
    audio_decoder_dim: int = 2048
    audio_decoder_rates: Tuple[int, ...] = (8, 5, 4, 3, 2)

    @classmethod
    def from_configs(cls, configs) -> "Architecture":
        """From `mova_model.checkpoint.configs.MovaConfigs` (reads no weight)."""
        b = configs.dual_tower_bridge
        shared = min(b.visual_layers, b.audio_layers)
        layers = tuple(interaction_layers(b.interaction_strategy, shared))
        te = configs.text_encoder
        vae_raw = getattr(configs.video_vae, "raw", None) or {}
        arch = cls(TowerShape.from_config(configs.video_dit), TowerShape.from_config(configs.audio_dit), layers,
                   te.d_model, te.d_ff, te.num_heads * te.d_kv, te.num_layers, te.vocab_size, te.num_heads,
                   configs.audio_vae.hop_length, configs.audio_vae.sample_rate,
                   vae_base_dim=int(vae_raw.get("decoder_base_dim") or vae_raw.get("base_dim") or 96),
                   audio_decoder_dim=int(configs.audio_vae.decoder_dim),
                   audio_decoder_rates=tuple(int(r) for r in configs.audio_vae.decoder_rates))
        if arch == replace(cls.released(), vae_params=arch.vae_params, audio_vae_params=arch.audio_vae_params):
            return arch
        # not the released architecture: count the VAEs' parameters from the safetensors headers (no weight is
        # read), or, for a folder of configs only, on the meta device

        def count(name: str) -> int:
            from ..checkpoint.weights import SafetensorsStore

            store = SafetensorsStore(Path(configs.root) / name, name)
            if store.tensors and not store.problems:
                return sum(info.numel for info in store.tensors.values())
            from ..checkpoint.folder import component_layout
            return component_layout(name, getattr(configs, name)).params  # refuses configs out of bounds
        return replace(arch, vae_params=count("video_vae"), audio_vae_params=count("audio_vae"))

    @classmethod
    def released(cls) -> "Architecture":
        """MOVA-360p / MOVA-720p (identical architecture; checkpoint-layout.md §3)."""
        video = TowerShape(5120, 13824, 40, 36, 16, 4, 4096, 256, 128)
        audio = TowerShape(1536, 8960, 30, 128, 128, 1, 4096, 256, 128)
        return cls(video, audio, tuple(range(30)), 4096, 10240, 4096, 24, 256384, 64, 960, 48000)

    def bridge_params(self) -> Dict[str, Tuple[int, int, int]]:
        """(matrix, vector, matrix count) params of one audio->video and one video->audio conditioner."""
        dv, da = self.video.dim, self.audio.dim
        return {"a2v": (2 * dv * dv + 2 * dv * da, 6 * dv + 2 * da, 4),
                "v2a": (2 * da * da + 2 * da * dv, 6 * da + 2 * dv, 4)}

    def text_encoder_params(self) -> Tuple[int, int]:
        """(params of one encoder layer, params outside the layers) of the UMT5 encoder."""
        layer = 4 * self.te_d_model * self.te_inner + 3 * self.te_d_model * self.te_d_ff + 2 * self.te_d_model
        layer += 32 * self.te_heads  # relative attention bias table, in every UMT5 layer
        return layer, self.te_vocab * self.te_d_model + self.te_d_model


def interaction_layers(strategy: str, shared: int) -> List[int]:
    """Interacting layer indices of the bridge (mirrors `ConditionalBridgeController.get_interaction_layers`)."""
    if strategy == "full":
        return list(range(shared))
    if strategy == "shallow_focus":
        return list(range(min(10, shared // 3)))
    if strategy == "distributed":
        return list(range(0, shared, 3))
    if strategy == "progressive":
        return list(range(min(8, shared))) + (list(range(8, shared, 3)) if shared > 8 else [])
    if strategy == "custom":
        return [i for i in (0, 2, 4, 6, 8, 12, 16, 20) if i < shared]
    raise ValueError(f"unknown bridge interaction_strategy {strategy!r}")


# --------------------------------------------------------------------------------------------------------------
# inputs and modules


@dataclass(frozen=True)
class PlanInputs:
    """Everything a plan depends on. Sizes in bytes, speeds in GB/s and TFLOP/s."""

    vram_bytes: float
    ram_bytes: float
    width: int = 640
    height: int = 352
    frames: int = 193
    fps: float = 24.0
    cfg_passes: int = 2
    weights: str = "bf16"  # storage on the device: "bf16", "fp8" or "gguf:<TYPE>" (e.g. "gguf:Q4_K")
    stored: str = "bf16"  # storage on disk: "bf16", "fp8" (pre-quantized folder) or "gguf"
    mode: str = "auto"  # "auto" (free VRAM), "budget" (user VRAM budget), "resident" (all resident or fail)
    prefetch_depth: Optional[int] = None  # None: chosen by the planner
    pcie_gbps: float = 25.0
    tflops: float = DEFAULT_TFLOPS
    hbm_gbps: float = 3000.0
    disk_gbps: float = 3.0
    steps: int = 50
    variant: str = ""
    device: str = "cuda"  # "cuda": plan VRAM (and host RAM for streaming); "cpu": everything in host RAM
    compute_bytes: int = 2  # element size of the compute dtype (2: bf16/fp16, 4: float32)
    guidance_batch: int = 1  # guidance branches run together in one batched pass (sampling/branch_runner.py)
    bytes_per_param: Tuple[Tuple[str, float], ...] = ()
    """Measured stored bytes per parameter of the streamed modules, per kind ("video", "audio", "a2v", "v2a"),
    for components read from GGUF files (`memory.stored_sizes`); other kinds follow `weights`."""
    stem_bytes: Optional[float] = None
    """Measured bytes of the towers' embeddings, time MLPs and heads (None: 2 bytes per parameter, or 4 for
    `gguf:` weights, whose community files keep them in F32)."""
    vae_element_bytes: int = 2  # element size of the video VAE on the device (float32 on the CPU)

    @property
    def gguf_type(self) -> Optional[str]:
        """The GGUF type of `weights` ("Q4_K" for "gguf:Q4_K"), or None for bf16/fp8."""
        return self.weights[len("gguf:"):] if self.weights.startswith("gguf:") else None

    def validate(self) -> None:
        from ..network.gguf_dequant import GGUF_QUANT_SIZES

        gguf = self.gguf_type
        if gguf is not None and gguf not in GGUF_QUANT_SIZES and not dict(self.bytes_per_param).get("video"):
            raise ValueError(f"weights gguf:{gguf}: the GGUF type must be one of {', '.join(GGUF_QUANT_SIZES)}")
        if (self.weights not in ("bf16", "fp8") and gguf is None) or self.stored not in ("bf16", "fp8", "gguf"):
            raise ValueError("weights must be 'bf16', 'fp8' or 'gguf:<TYPE>' (e.g. gguf:Q4_K) and stored 'bf16', "
                             "'fp8' or 'gguf'")
        if self.mode not in ("auto", "budget", "resident"):
            raise ValueError(f"mode must be auto, budget or resident, got {self.mode!r}")
        if self.width % 16 or self.height % 16 or (self.frames - 1) % 4:
            raise ValueError(f"{self.width}x{self.height}x{self.frames}: width/height must be multiples of 16 and "
                             "frames 4k+1 (e.g. 193)")
        if self.device not in ("cuda", "cpu") or self.compute_bytes not in (1, 2, 4, 8):
            raise ValueError(f"device must be 'cuda' or 'cpu' and compute_bytes 1, 2, 4 or 8, got {self.device!r}, "
                             f"{self.compute_bytes}")
        if not (self.vram_bytes > 0 and self.ram_bytes > 0) or self.cfg_passes < 1:  # `not >`: nan is refused too
            raise ValueError(f"VRAM, RAM and cfg passes must be positive, got {self.vram_bytes / GB:g} GB, "
                             f"{self.ram_bytes / GB:g} GB, {self.cfg_passes}")

    @property
    def video_tokens(self) -> int:
        """Tokens after patchify: ((F-1)/4+1) × H/16 × W/16 (43,120 at 352×640×193)."""
        return ((self.frames - 1) // 4 + 1) * (self.height // 16) * (self.width // 16)

    def audio_tokens(self, arch: Architecture) -> int:
        samples = int(arch.audio_sample_rate * self.frames / self.fps)
        return (samples - 1) // arch.audio_hop + 1


@dataclass
class ModulePlan:
    """One executor-called module: name (as `module_tags` spells it), kind, bytes on the device, FLOPs per pass,
    parameters."""

    name: str
    kind: str
    nbytes: int
    flops: float
    resident: bool = False
    params: int = 0


def _bytes(matrix: int, vector: int, matrices: int, tensors: int, fp8: bool) -> int:
    if fp8:
        return matrix + 2 * vector + 4 * matrices + ALIGN * (tensors + matrices)
    return 2 * (matrix + vector) + ALIGN * tensors


GGUF_VECTOR_BYTES = 4
"""Bytes per parameter of the vectors (norms, biases, modulation) in a GGUF file: the community keeps them F32."""


def module_bytes(kind: str, matrix: int, vector: int, matrices: int, tensors: int, inputs: PlanInputs) -> int:
    """Device bytes of one streamed module of `kind` under `inputs.weights` (measured GGUF sizes first)."""
    measured = dict(inputs.bytes_per_param).get(kind)
    if measured:
        return int(math.ceil((matrix + vector) * measured)) + ALIGN * tensors
    if inputs.gguf_type is not None:
        from ..network.gguf_dequant import bytes_per_weight

        return int(math.ceil(matrix * bytes_per_weight(inputs.gguf_type))) + GGUF_VECTOR_BYTES * vector + ALIGN * tensors
    return _bytes(matrix, vector, matrices, tensors, inputs.weights == "fp8")


def execution_modules(arch: Architecture, inputs: PlanInputs) -> List[ModulePlan]:
    """The modules `denoiser.execution_order` yields, in call order, with device bytes and FLOPs per pass."""
    n, na, txt = inputs.video_tokens, inputs.audio_tokens(arch), TEXT_TOKENS
    out: List[ModulePlan] = []

    def block(tower: TowerShape, tokens: int, kind: str) -> Tuple[int, float, int]:
        m, v, k = tower.block_params()
        d, f = tower.dim, tower.ffn_dim
        flops = 2 * tokens * (6 * d * d + 2 * d * f) + 2 * txt * 2 * d * d + 4 * tokens * tokens * d + 4 * tokens * txt * d
        return module_bytes(kind, m, v, k, 27, inputs), flops, m + v

    vb, vf, vp = block(arch.video, n, "video")
    ab, af, ap = block(arch.audio, na, "audio")
    cond = arch.bridge_params()
    dv, da = arch.video.dim, arch.audio.dim
    a2v_b = module_bytes("a2v", *cond["a2v"], 12, inputs)
    v2a_b = module_bytes("v2a", *cond["v2a"], 12, inputs)
    a2v_p, v2a_p = cond["a2v"][0] + cond["a2v"][1], cond["v2a"][0] + cond["v2a"][1]
    a2v_f = 2 * n * 2 * dv * dv + 2 * na * 2 * dv * da + 4 * n * na * dv
    v2a_f = 2 * na * 2 * da * da + 2 * n * 2 * da * dv + 4 * na * n * da
    shared = min(arch.video.num_layers, arch.audio.num_layers)
    layers = set(arch.bridge_layers)
    for i in range(shared):
        if i in layers:
            out.append(ModulePlan(f"dual_tower_bridge.audio_to_video_conditioners.{i}", "a2v", a2v_b, a2v_f, params=a2v_p))
            out.append(ModulePlan(f"dual_tower_bridge.video_to_audio_conditioners.{i}", "v2a", v2a_b, v2a_f, params=v2a_p))
        out.append(ModulePlan(f"video_dit.blocks.{i}", "video", vb, vf, params=vp))
        out.append(ModulePlan(f"audio_dit.blocks.{i}", "audio", ab, af, params=ap))
    for i in range(shared, arch.video.num_layers):
        out.append(ModulePlan(f"video_dit.blocks.{i}", "video", vb, vf, params=vp))
    return out


def activation_bytes(arch: Architecture, inputs: PlanInputs) -> float:
    """Peak activation memory of one dual-tower pass (bytes), B = `inputs.guidance_batch`, bf16 activations, or
    the float32 copy of the time projection's weight when that is larger (a small model on a short clip).

    Self-attention holds x, the modulated input, q, k, v, roped q/k and the attention output (~8 copies of
    [N, D] bf16 = 16·N·D bytes) plus the float64 RoPE groups; the FFN holds x, the modulated input and two
    [N, ffn] tensors (8·N·D + 4·N·ffn). The larger of the two, the complex128 RoPE table and the slack.
    """
    n, d, f = inputs.video_tokens, arch.video.dim, arch.video.ffn_dim
    attn = 16.0 * n * d + min(ROPE_CHUNK_BYTES, 16.0 * n * d)
    ffn = 8.0 * n * d + 4.0 * n * f
    if inputs.weights == "fp8":  # fp8 matmul: the e4m3 copy of the FFN's [N, ffn] input and one float32 piece
        ffn += n * f + min(FP8_QUANT_CHUNK_BYTES, 4.0 * n * f)
    freqs = n * (arch.video.head_dim // 2) * 16.0
    audio = 20.0 * inputs.audio_tokens(arch) * arch.audio.ffn_dim
    blocks = (max(attn, ffn) + freqs + audio) * max(1, inputs.guidance_batch)
    # the time MLPs run in float32 whatever the weights (`dit_block.time_embeddings`): the [6·dim, dim]
    # projection's float32 copy exists once per pass, before the blocks (0.63 GB for the released model)
    time_cast = 4.0 * 6 * d * d
    return max(blocks, time_cast) * ACT_SLACK


def latent_bytes(arch: Architecture, inputs: PlanInputs) -> float:
    """The sampling loop's float32 state on the device (bytes): per video latent position the condition and the
    model input (`in_dim` channels each), the noise, the state, the combined velocity, a held copy and one
    prediction per guidance pass (`out_dim` each); the same for the audio latents; the prompt and negative
    prompt embeddings `[1, 512, text_dim]`."""
    positions = inputs.video_tokens * arch.video.patch_volume
    per_pass = inputs.cfg_passes
    video = positions * (2 * arch.video.in_dim + (4 + per_pass) * arch.video.out_dim)
    audio = inputs.audio_tokens(arch) * arch.audio.in_dim * (6 + per_pass)
    text = 2 * TEXT_TOKENS * arch.video.text_dim
    return 4.0 * (video + audio + text)


def vae_bytes_per_pixel(arch: Architecture, element_bytes: int = 2) -> float:
    """Working set of a Wan VAE chunk per output pixel: `VAE_LIVE_TENSORS` tensors of `VAE_CHUNK_FRAMES ×
    base_dim` channels (9,216 bytes for the released VAE in bf16, `VAE_BYTES_PER_PIXEL`)."""
    return float(VAE_LIVE_TENSORS * VAE_CHUNK_FRAMES * arch.vae_base_dim * element_bytes)


def vae_bytes(arch: Architecture, inputs: PlanInputs, tiled: bool) -> float:
    """Peak VRAM of the Wan VAE encode/decode (bytes): weights + working set + the decoded video (fp32, cat)."""
    pixels = inputs.width * inputs.height
    element = inputs.vae_element_bytes
    work = vae_bytes_per_pixel(arch, element) * (min(pixels, VAE_TILE * VAE_TILE) if tiled else pixels)
    output = 3.0 * inputs.frames * pixels * 4 * 2
    return element * arch.vae_params + work + output


def audio_decode_bytes(arch: Architecture, inputs: PlanInputs) -> float:
    """Peak device memory of the DAC decode (bytes): float32 weights (`pipeline.decode_audio`), the largest
    decoder stage's working set (`DAC_LIVE_TENSORS` × channels × samples at that stage, float32) and the
    waveform. Stage i has `decoder_dim / 2^(i+1)` channels at `latents × prod(rates[:i+1])` samples."""
    samples = int(arch.audio_sample_rate * inputs.frames / inputs.fps)
    latents = (samples - 1) // arch.audio_hop + 1
    widest = float(arch.audio_decoder_dim * latents)
    length = latents
    for i, rate in enumerate(arch.audio_decoder_rates):
        length *= rate
        widest = max(widest, float(arch.audio_decoder_dim // 2 ** (i + 1)) * length)
    return 4.0 * arch.audio_vae_params + DAC_LIVE_TENSORS * widest * 4.0 + 4.0 * length


def text_encoder_activation_bytes(arch: Architecture, element_bytes: int = 2) -> float:
    """Activations of the UMT5 encoder on the prompt and the negative prompt (bytes): per layer the hidden states
    and attention projections (~8 × [B, 512, d_model]), the gated FFN (3 × [B, 512, d_ff]) in the compute
    dtype, and the float32 attention scores with their position bias and softmax (3 × [B, heads, 512, 512])."""
    tokens = TEXT_BATCH * TEXT_TOKENS
    hidden = tokens * (8.0 * arch.te_d_model + 3.0 * arch.te_d_ff) * element_bytes
    scores = 3.0 * TEXT_BATCH * arch.te_heads * TEXT_TOKENS * TEXT_TOKENS * 4
    return (hidden + scores) * ACT_SLACK


def margin_bytes(vram: float) -> float:
    """Reserve for allocator fragmentation and kernels' workspaces: 0.5 GB + 5 % of the budget."""
    return 0.5 * GB + 0.05 * vram


def host_vae_bytes(arch: Architecture, inputs: PlanInputs, phase: str, element_bytes: int = 4) -> float:
    """Host RAM of a VAE call on the CPU (bytes), weights included; `phase` "VAE encode" or "VAE decode".

    encode: the whole pixel clip `[1, 3, F, H, W]` (float32, `conditioning.first_frame_condition`) plus the
    chunk working set; decode: the decoded clip twice (diffusers concatenates the per-frame outputs; the IMAGE
    conversion makes the `[F, H, W, 3]` copy) plus the working set. Weights are float32 on the CPU.
    """
    pixels = inputs.width * inputs.height
    clip = 3.0 * inputs.frames * pixels * element_bytes
    work = VAE_LIVE_TENSORS * VAE_CHUNK_FRAMES * arch.vae_base_dim * element_bytes * pixels
    weights = 4.0 * arch.vae_params
    if phase == "VAE encode":
        return weights + clip + work + VAE_CPU_FIXED_BYTES
    return weights + 2.0 * clip + work + VAE_CPU_FIXED_BYTES
