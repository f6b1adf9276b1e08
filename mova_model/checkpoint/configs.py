"""Typed configurations of every MOVA component, parsed from the official `config.json` files.

Each dataclass mirrors the constructor arguments that the official classes register with
diffusers/transformers (`register_to_config`), so a field is exactly a key of the shipped file.
Keys that define the architecture (dimensions, layer counts, rates) are required: a file without one is
rejected with a `ConfigError` naming the component, the key and the file. Flags that the official classes
give a default keep that same default. Keys we do not know are kept in `extra` and logged, never dropped
silently. Keys starting with `_` (`_class_name`, `_diffusers_version`) are metadata.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, ClassVar, Dict, List, Optional, Tuple, Type, TypeVar

logger = logging.getLogger(__name__)

T = TypeVar("T", bound="ComponentConfig")

COMPONENT_NAMES: Tuple[str, ...] = (
    "scheduler",
    "tokenizer",
    "text_encoder",
    "video_vae",
    "audio_vae",
    "video_dit",
    "video_dit_2",
    "audio_dit",
    "dual_tower_bridge",
)
"""The nine sub-folders of an official MOVA checkpoint (the modules `MOVA.__init__` registers)."""


class ConfigError(ValueError):
    """A configuration file is missing, unreadable, or lacks a required key. The message names the file."""


@dataclass(kw_only=True)
class ComponentConfig:
    """Base of all component configs: parsing with required-key checks and kept unknown keys."""

    extra: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)
    source: Optional[str] = field(default=None, repr=False, compare=False)

    component: ClassVar[str] = ""
    expected_class_names: ClassVar[Tuple[str, ...]] = ()
    hands_file_to_library: ClassVar[bool] = False
    """True when the whole file goes to transformers/diffusers (`raw`): other keys are used there, not unknown."""

    @classmethod
    def from_dict(cls: Type[T], data: Dict[str, Any], source: Optional[str] = None) -> T:
        """Build the config from a parsed `config.json`; raise `ConfigError` on a missing required key."""
        where = source or f"{cls.component}/config.json"
        if not isinstance(data, dict):
            raise ConfigError(f"{cls.component}: {where} must hold a JSON object, found {type(data).__name__}")
        class_name = data.get("_class_name")
        if cls.expected_class_names and class_name is not None and class_name not in cls.expected_class_names:
            raise ConfigError(
                f"{cls.component}: {where} describes a {class_name!r}, but a MOVA {cls.component} is "
                f"{' or '.join(repr(n) for n in cls.expected_class_names)}: this folder is from another model"
            )
        known = {f.name: f for f in dataclasses.fields(cls) if f.name not in ("extra", "source")}
        kwargs: Dict[str, Any] = {}
        for name, f in known.items():
            if name in data:
                kwargs[name] = data[name]
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{cls.component}: required key {name!r} is missing from {where}")
        extra = {k: v for k, v in data.items() if k not in known and not k.startswith("_")}
        if extra and not cls.hands_file_to_library:
            logger.info("%s: keeping keys this pack does not use from %s: %s", cls.component, where, sorted(extra))
        config = cls(**kwargs)
        config.extra = extra
        config.source = where
        config.validate()
        return config

    @classmethod
    def from_file(cls: Type[T], path: Path) -> T:
        """Read and parse a JSON config file."""
        return cls.from_dict(read_json(path, cls.component), source=str(path))

    def validate(self) -> None:
        """Check value ranges; subclasses raise `ConfigError` with a readable message."""

    def to_dict(self) -> Dict[str, Any]:
        """The config as the official writer would store it (without metadata keys)."""
        out = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name not in ("extra", "source")}
        out.update(self.extra)
        return out

    def _require_positive(self, *names: str) -> None:
        for name in names:
            value = getattr(self, name)
            if not isinstance(value, (int, float)) or isinstance(value, bool) or value <= 0:
                raise ConfigError(f"{self.component}: {name} must be a positive number, found {value!r} in {self.source}")


def read_json(path: Path, component: str) -> Dict[str, Any]:
    """Read a JSON file, turning a missing or malformed file into a `ConfigError` that names it."""
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{component}: {path} is missing")
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{component}: {path} is not valid JSON ({exc})") from exc


@dataclass(kw_only=True)
class VideoDiTConfig(ComponentConfig):
    """`video_dit/config.json` and `video_dit_2/config.json` (official `WanModel`).

    dim: hidden width; in_dim: input channels (16 noisy + 4 mask + 16 condition = 36); out_dim: latent channels;
    patch_size: (t, h, w) patch; freq_dim: sinusoidal timestep features; text_dim: UMT5 width.
    """

    dim: int
    in_dim: int
    ffn_dim: int
    out_dim: int
    text_dim: int
    freq_dim: int
    eps: float
    patch_size: List[int]
    num_heads: int
    num_layers: int
    has_image_input: bool
    has_image_pos_emb: bool = False
    has_ref_conv: bool = False
    add_control_adapter: bool = False
    in_dim_control_adapter: int = 24
    seperated_timestep: bool = False
    require_vae_embedding: bool = True
    require_clip_embedding: bool = True
    fuse_vae_embedding_in_latents: bool = False

    component: ClassVar[str] = "video_dit"
    expected_class_names: ClassVar[Tuple[str, ...]] = ("WanModel",)

    @property
    def head_dim(self) -> int:
        return self.dim // self.num_heads

    def validate(self) -> None:
        self._require_positive("dim", "in_dim", "ffn_dim", "out_dim", "text_dim", "freq_dim", "num_heads", "num_layers")
        if len(self.patch_size) != 3:
            raise ConfigError(f"{self.component}: patch_size must have 3 entries (t, h, w), found {self.patch_size} in {self.source}")
        if self.dim % self.num_heads:
            raise ConfigError(f"{self.component}: dim {self.dim} is not divisible by num_heads {self.num_heads} in {self.source}")
        if self.has_image_input or self.has_ref_conv or self.add_control_adapter:
            raise ConfigError(
                f"{self.component}: has_image_input/has_ref_conv/add_control_adapter are true in {self.source}; "
                "MOVA's video experts have none of these (this looks like another Wan model)"
            )


@dataclass(kw_only=True)
class AudioDiTConfig(VideoDiTConfig):
    """`audio_dit/config.json` (official `WanAudioModel`): same fields as the video DiT plus `vae_type`."""

    vae_type: str = "oobleck"

    component: ClassVar[str] = "audio_dit"
    expected_class_names: ClassVar[Tuple[str, ...]] = ("WanAudioModel",)

    def validate(self) -> None:
        self._require_positive("dim", "in_dim", "ffn_dim", "out_dim", "text_dim", "freq_dim", "num_heads", "num_layers")
        if len(self.patch_size) != 1:
            raise ConfigError(f"{self.component}: patch_size must have 1 entry, found {self.patch_size} in {self.source}")
        if self.dim % self.num_heads:
            raise ConfigError(f"{self.component}: dim {self.dim} is not divisible by num_heads {self.num_heads} in {self.source}")
        if self.vae_type != "dac":
            raise ConfigError(
                f"{self.component}: vae_type {self.vae_type!r} in {self.source}; MOVA's audio DiT uses 'dac' "
                "(the legacy 'oobleck' RoPE is not supported)"
            )


@dataclass(kw_only=True)
class BridgeConfig(ComponentConfig):
    """`dual_tower_bridge/config.json` (official `DualTowerConditionalBridge`)."""

    visual_layers: int
    audio_layers: int
    visual_hidden_dim: int
    audio_hidden_dim: int
    audio_fps: float = 44100.0 / 2048.0
    head_dim: int = 128
    interaction_strategy: str = "shallow_focus"
    apply_cross_rope: bool = False
    apply_first_frame_bias_in_rope: bool = False
    trainable_condition_scale: bool = False
    pooled_adaln: bool = False

    component: ClassVar[str] = "dual_tower_bridge"
    expected_class_names: ClassVar[Tuple[str, ...]] = ("DualTowerConditionalBridge",)

    def validate(self) -> None:
        self._require_positive("visual_layers", "audio_layers", "visual_hidden_dim", "audio_hidden_dim", "audio_fps", "head_dim")
        if self.pooled_adaln:
            raise ConfigError(f"{self.component}: pooled_adaln=true in {self.source} is not used by any released MOVA checkpoint and is not supported")
        for dim_name in ("visual_hidden_dim", "audio_hidden_dim"):
            if getattr(self, dim_name) % self.head_dim:
                raise ConfigError(f"{self.component}: {dim_name} is not divisible by head_dim {self.head_dim} in {self.source}")


@dataclass(kw_only=True)
class AudioVAEConfig(ComponentConfig):
    """`audio_vae/config.json` (official `DAC`, continuous mode). hop_length = prod(encoder_rates) samples."""

    encoder_dim: int
    encoder_rates: List[int]
    latent_dim: Optional[int] = None
    decoder_dim: int
    decoder_rates: List[int]
    n_codebooks: int = 9
    codebook_size: int = 1024
    codebook_dim: Any = 8
    quantizer_dropout: bool = False
    sample_rate: int
    continuous: bool = False
    use_weight_norm: bool = True

    component: ClassVar[str] = "audio_vae"
    expected_class_names: ClassVar[Tuple[str, ...]] = ("DAC",)

    @property
    def hop_length(self) -> int:
        return int(math.prod(self.encoder_rates))

    @property
    def resolved_latent_dim(self) -> int:
        """The official default: encoder_dim · 2^len(encoder_rates) when latent_dim is null."""
        return self.latent_dim if self.latent_dim is not None else self.encoder_dim * (2 ** len(self.encoder_rates))

    def validate(self) -> None:
        self._require_positive("encoder_dim", "decoder_dim", "sample_rate")
        if not self.continuous:
            raise ConfigError(f"{self.component}: continuous=false in {self.source}; MOVA uses the DAC in continuous (VAE) mode")


@dataclass(kw_only=True)
class VideoVAEConfig(ComponentConfig):
    """`video_vae/config.json` (diffusers `AutoencoderKLWan`). Only the fields MOVA's pipeline reads are typed;
    the whole file is passed to diffusers unchanged (`raw`)."""

    z_dim: int
    latents_mean: List[float]
    latents_std: List[float]
    scale_factor_temporal: int = 4
    scale_factor_spatial: int = 8
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    component: ClassVar[str] = "video_vae"
    expected_class_names: ClassVar[Tuple[str, ...]] = ("AutoencoderKLWan",)
    hands_file_to_library: ClassVar[bool] = True

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: Optional[str] = None) -> "VideoVAEConfig":
        config = super().from_dict({k: v for k, v in data.items() if k != "raw"}, source)
        config.raw = dict(data)
        config.extra = {}
        return config

    def validate(self) -> None:
        self._require_positive("z_dim")
        for name in ("latents_mean", "latents_std"):
            if len(getattr(self, name)) != self.z_dim:
                raise ConfigError(f"{self.component}: {name} has {len(getattr(self, name))} entries, z_dim is {self.z_dim} in {self.source}")


@dataclass(kw_only=True)
class TextEncoderConfig(ComponentConfig):
    """`text_encoder/config.json` (transformers `UMT5EncoderModel`); the whole file goes to `UMT5Config`."""

    d_model: int
    d_ff: int
    d_kv: int
    num_heads: int
    num_layers: int
    vocab_size: int
    model_type: str = "umt5"
    raw: Dict[str, Any] = field(default_factory=dict, repr=False, compare=False)

    component: ClassVar[str] = "text_encoder"
    hands_file_to_library: ClassVar[bool] = True

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: Optional[str] = None) -> "TextEncoderConfig":
        config = super().from_dict({k: v for k, v in data.items() if k != "raw"}, source)
        config.raw = dict(data)
        config.extra = {}
        return config

    def validate(self) -> None:
        self._require_positive("d_model", "d_ff", "d_kv", "num_heads", "num_layers", "vocab_size")
        if self.model_type != "umt5":
            raise ConfigError(f"{self.component}: model_type {self.model_type!r} in {self.source}; MOVA's text encoder is UMT5 ('umt5')")


@dataclass(kw_only=True)
class SchedulerConfig(ComponentConfig):
    """`scheduler/scheduler_config.json` (official `FlowMatchPairScheduler`). `shift` and `extra_one_step`
    are read from the user's file; the defaults below are the official class defaults, used only when the
    file omits a key (as the official constructor would)."""

    num_inference_steps: int = 100
    num_train_timesteps: int = 1000
    shift: float = 3.0
    sigma_max: float = 1.0
    sigma_min: float = 0.003 / 1.002
    inverse_timesteps: bool = False
    extra_one_step: bool = False
    reverse_sigmas: bool = False
    exponential_shift: bool = False
    exponential_shift_mu: Optional[float] = None
    shift_terminal: Optional[float] = None

    component: ClassVar[str] = "scheduler"
    expected_class_names: ClassVar[Tuple[str, ...]] = ("FlowMatchPairScheduler", "FlowMatchScheduler")

    def validate(self) -> None:
        self._require_positive("num_train_timesteps", "shift")


@dataclass(kw_only=True)
class ModelIndex(ComponentConfig):
    """`model_index.json`: the pipeline class, the expert `boundary_ratio` and the component table."""

    boundary_ratio: float = 0.9
    audio_vae_type: str = "dac"
    class_name: str = ""
    components: Dict[str, Any] = field(default_factory=dict)

    component: ClassVar[str] = "model_index.json"

    @classmethod
    def from_dict(cls, data: Dict[str, Any], source: Optional[str] = None) -> "ModelIndex":
        where = source or "model_index.json"
        if not isinstance(data, dict):
            raise ConfigError(f"{where} must hold a JSON object")
        class_name = data.get("_class_name")
        if class_name not in ("MOVA", "MOVAPipeline"):
            raise ConfigError(
                f"{where}: _class_name is {class_name!r}, not 'MOVA': this folder is not a MOVA checkpoint "
                "(expected the OpenMOSS-Team/MOVA-360p or MOVA-720p folder layout)"
            )
        components = {k: v for k, v in data.items() if k in COMPONENT_NAMES}
        index = cls(
            boundary_ratio=float(data.get("boundary_ratio", 0.9)),
            audio_vae_type=str(data.get("audio_vae_type", "dac")),
            class_name=class_name,
            components=components,
        )
        index.source = where
        index.extra = {k: v for k, v in data.items() if k not in COMPONENT_NAMES and not k.startswith("_")
                       and k not in ("boundary_ratio", "audio_vae_type")}
        index.validate()
        return index

    def validate(self) -> None:
        if not 0.0 <= self.boundary_ratio <= 1.0:
            raise ConfigError(f"{self.source}: boundary_ratio must be within [0, 1], found {self.boundary_ratio}")
        if self.audio_vae_type != "dac":
            raise ConfigError(f"{self.source}: audio_vae_type {self.audio_vae_type!r}; MOVA uses 'dac'")


CONFIG_FILES: Dict[str, Tuple[str, Type[ComponentConfig]]] = {
    "scheduler": ("scheduler_config.json", SchedulerConfig),
    "text_encoder": ("config.json", TextEncoderConfig),
    "video_vae": ("config.json", VideoVAEConfig),
    "audio_vae": ("config.json", AudioVAEConfig),
    "video_dit": ("config.json", VideoDiTConfig),
    "video_dit_2": ("config.json", VideoDiTConfig),
    "audio_dit": ("config.json", AudioDiTConfig),
    "dual_tower_bridge": ("config.json", BridgeConfig),
}
"""Component folder -> (config file name, config class)."""


@dataclass(kw_only=True)
class MovaConfigs:
    """Every config of a MOVA checkpoint folder, read without touching a weight."""

    root: Path
    index: ModelIndex
    scheduler: SchedulerConfig
    text_encoder: TextEncoderConfig
    video_vae: VideoVAEConfig
    audio_vae: AudioVAEConfig
    video_dit: VideoDiTConfig
    video_dit_2: VideoDiTConfig
    audio_dit: AudioDiTConfig
    dual_tower_bridge: BridgeConfig

    @classmethod
    def from_folder(cls, root: Path) -> "MovaConfigs":
        """Read `model_index.json` and every component config; raise `ConfigError` naming what is wrong."""
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"{root} is not a folder (a MOVA checkpoint is a folder with model_index.json)")
        index_path = root / "model_index.json"
        if not index_path.is_file():
            raise ConfigError(
                f"{root} has no model_index.json: it is not a MOVA checkpoint folder "
                f"(expected sub-folders {', '.join(COMPONENT_NAMES)})"
            )
        index = ModelIndex.from_dict(read_json(index_path, "model_index.json"), source=str(index_path))
        # The tokenizer folder has no config; the checkpoint validator checks its files.
        missing = [name for name in CONFIG_FILES if not (root / name).is_dir()]
        if missing:
            raise ConfigError(f"{root}: component folder(s) missing: {', '.join(missing)} (a MOVA checkpoint has {', '.join(COMPONENT_NAMES)})")
        parsed: Dict[str, ComponentConfig] = {}
        for name, (file_name, config_cls) in CONFIG_FILES.items():
            path = root / name / file_name
            data = read_json(path, name)
            config = config_cls.from_dict(data, source=str(path))
            parsed[name] = config
        return cls(root=root, index=index, **parsed)  # type: ignore[arg-type]

    @property
    def boundary_timestep(self) -> float:
        """The expert switch timestep: boundary_ratio × num_train_timesteps (900 for the released models)."""
        return self.index.boundary_ratio * self.scheduler.num_train_timesteps
