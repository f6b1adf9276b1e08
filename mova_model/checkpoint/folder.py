"""Open an official MOVA checkpoint folder, validate it strictly from headers alone, and build its modules.

The folder layout is the one `MOVA.save_pretrained` ships (OpenMOSS-Team/MOVA-360p, MOVA-720p):
`model_index.json`, `scheduler/`, `tokenizer/`, `text_encoder/`, `video_vae/`, `audio_vae/`, `video_dit/`,
`video_dit_2/`, `audio_dit/`, `dual_tower_bridge/`. Weight folders hold one or several `*.safetensors`
files, with or without the sharding index.

What each component must contain is not written down anywhere: it is derived by building the component
on the `meta` device from its own `config.json` (through `COMPONENT_BUILDERS`, the one table of
constructors) and reading the module's state-dict keys and shapes. The files are then compared with that
from their safetensors headers, before a single weight is read. Accepted on disk:

- any of BF16 / F16 / F32 for every tensor (cast at build only when another dtype is asked for);
- F8_E4M3 for the `weight` of an operations-built Linear/Conv, with its per-tensor scale stored beside it
  as `<weight key>_scale` (F32 scalar); at build the scale becomes the layer's `weight_scale` buffer,
  which `mova_model.network.ops` uses to dequantize at forward;
- for `audio_vae`, each conv either as plain `weight` or in the weight-norm layout `weight_g` + `weight_v`
  (the official DAC with `use_weight_norm=true`), fused at build by `mova_model.network.audio_vae.fuse_weight_norm`;
- tied weights (the text encoder's `encoder.embed_tokens.weight` is `shared.weight`) stored under any
  non-empty subset of their names;
- instead of safetensors shards, one `.gguf` file per component folder (`gguf_store.GGUFStore`): the weight of
  an operations-built Linear/Conv in a quantized GGUF type stays quantized (the layer holds the uint8 blocks and
  dequantizes at forward, `ops.set_gguf_weight`); any other tensor stored quantized (a `modulation` table, an
  embedding) is dequantized once at build.
"""

from __future__ import annotations

import json
import logging
from dataclasses import dataclass, field
from itertools import chain
from pathlib import Path
from typing import Any, Callable, Dict, FrozenSet, List, Optional, Sequence, Tuple

import torch
from torch import nn
from torch.nn.modules.conv import _ConvNd

from .configs import (COMPONENT_NAMES, CONFIG_FILES, ComponentConfig, ConfigError, ModelIndex, MovaConfigs,
                      read_json)
from ..network.gguf_dequant import GGUF_QUANT_SIZES, dequantize
from ..network.ops import FP8_DTYPE, CastMixin, Operations, set_gguf_weight
from .config_checks import bound_problems, config_problems, config_values, skeleton_limit
from .gguf_store import open_store
from .weights import (DTYPE_NAMES, CheckpointError, Problem, SafetensorsStore, TensorInfo, format_problems,
                      format_shape)

logger = logging.getLogger(__name__)

__all__ = ["COMPONENT_BUILDERS", "WEIGHT_COMPONENTS", "CheckpointError", "ComponentLayout", "MovaCheckpoint",
           "component_layout", "checkpoint_problems"]


def _video_dit(config: Any, ops: Operations) -> nn.Module:
    from ..network.video_dit import VideoDiT
    return VideoDiT(config, ops)


def _audio_dit(config: Any, ops: Operations) -> nn.Module:
    from ..network.audio_dit import AudioDiT
    return AudioDiT(config, ops)


def _bridge(config: Any, ops: Operations) -> nn.Module:
    from ..network.bridge import DualTowerBridge
    return DualTowerBridge(config, ops)


def _audio_vae(config: Any, ops: Operations) -> nn.Module:
    from ..network.audio_vae import DacVAE
    return DacVAE(config, ops)


def _video_vae(config: Any, ops: Operations) -> nn.Module:
    from ..network.video_vae import build_video_vae_module
    return build_video_vae_module(config)


def _text_encoder(config: Any, ops: Operations) -> nn.Module:
    from ..network.text_encoder import build_text_encoder_module
    return build_text_encoder_module(config, ops)


COMPONENT_BUILDERS: Dict[str, Callable[[Any, Operations], nn.Module]] = {
    "text_encoder": _text_encoder,
    "video_vae": _video_vae,
    "audio_vae": _audio_vae,
    "video_dit": _video_dit,
    "video_dit_2": _video_dit,
    "audio_dit": _audio_dit,
    "dual_tower_bridge": _bridge,
}
"""Weight component -> callable(config, ops) returning the module on the meta device (imports are lazy)."""

WEIGHT_COMPONENTS: Tuple[str, ...] = tuple(c for c in COMPONENT_NAMES if c in COMPONENT_BUILDERS)
"""Components stored as safetensors, in checkpoint order."""

WEIGHT_NORM_COMPONENTS: FrozenSet[str] = frozenset({"audio_vae"})
"""Components whose `<m>.weight` may be stored as `<m>.weight_g` + `<m>.weight_v` (official DAC weight norm)."""

INDEX_CLASSES: Dict[str, Tuple[str, ...]] = {
    "scheduler": ("FlowMatchPairScheduler",),
    "tokenizer": ("T5TokenizerFast", "T5Tokenizer"),
    "text_encoder": ("UMT5EncoderModel",),
    "video_vae": ("AutoencoderKLWan",),
    "audio_vae": ("DAC",),
    "video_dit": ("WanModel",),
    "video_dit_2": ("WanModel",),
    "audio_dit": ("WanAudioModel",),
    "dual_tower_bridge": ("DualTowerConditionalBridge",),
}
"""Class each `model_index.json` entry names in the official checkpoints (`[library, class]`)."""

FLOAT_DTYPES: FrozenSet[str] = frozenset({"BF16", "F16", "F32"})
FP8_NAME = DTYPE_NAMES[FP8_DTYPE]
SCALE_SUFFIX = "_scale"
TOKENIZER_FILES: Tuple[str, ...] = ("tokenizer.json", "spiece.model")


@dataclass
class ComponentLayout:
    """The tensors a component's module expects, derived from its config on the meta device.

    tensors: state-dict key -> (shape, dtype the module is built with), in module order.
    aliases: for each tied key, every key of its tie group (e.g. `shared.weight` and
             `encoder.embed_tokens.weight`); untied keys are absent.
    scalable: keys that may be stored as F8_E4M3 with a `<key>_scale` (weights of operations-built Linear and
              Conv layers, the layers whose forward dequantizes with `weight_scale`).
    """

    component: str
    tensors: Dict[str, Tuple[Tuple[int, ...], torch.dtype]]
    aliases: Dict[str, Tuple[str, ...]] = field(default_factory=dict)
    scalable: FrozenSet[str] = frozenset()

    @property
    def params(self) -> int:
        """Elements counting each tie group once."""
        seen, total = set(), 0
        for key, (shape, _) in self.tensors.items():
            group = self.aliases.get(key, (key,))
            if group[0] in seen:
                continue
            seen.add(group[0])
            total += _numel(shape)
        return total

    @property
    def sd_elements(self) -> int:
        """Elements over all state-dict keys (tied weights counted once per key)."""
        return sum(_numel(shape) for shape, _ in self.tensors.values())


def _numel(shape: Tuple[int, ...]) -> int:
    out = 1
    for s in shape:
        out *= int(s)
    return out


def build_meta_module(component: str, config: ComponentConfig) -> nn.Module:
    """The component's module on the meta device (no allocation, no initialisation)."""
    if component not in COMPONENT_BUILDERS:
        raise KeyError(f"{component!r} has no weights; weight components are {', '.join(WEIGHT_COMPONENTS)}")
    return COMPONENT_BUILDERS[component](config, Operations(device="meta"))


def layout_of_module(component: str, module: nn.Module) -> ComponentLayout:
    """Read the expected keys, shapes, tie groups and fp8-capable weights off a (meta) module."""
    state = module.state_dict(keep_vars=True)
    tensors: Dict[str, Tuple[Tuple[int, ...], torch.dtype]] = {}
    groups: Dict[int, List[str]] = {}
    scalable = set()
    for key, tensor in state.items():
        tensors[key] = (tuple(int(s) for s in tensor.shape), tensor.dtype)
        groups.setdefault(id(tensor), []).append(key)
        owner_path, _, leaf = key.rpartition(".")
        owner = module.get_submodule(owner_path)
        if leaf == "weight" and isinstance(owner, CastMixin) and isinstance(owner, (nn.Linear, _ConvNd)):
            scalable.add(key)
    aliases = {key: tuple(keys) for keys in groups.values() if len(keys) > 1 for key in keys}
    return ComponentLayout(component, tensors, aliases, frozenset(scalable))


_LAYOUT_CACHE: Dict[Tuple[str, str], ComponentLayout] = {}
_LAYOUT_CACHE_SIZE = 32


def component_layout(component: str, config: ComponentConfig, store: Optional[SafetensorsStore] = None) -> ComponentLayout:
    """`ComponentLayout` of `component` built from `config` (meta device; cached by config content, so
    reopening a checkpoint does not rebuild the modules). Treat the result as read-only.

    With `store`, the build stops (`config_checks.SkeletonTooLarge`) as soon as the module outgrows what the
    stored tensors could fill; without it, the config's numbers must be within `ARCHITECTURE_BOUNDS`."""
    cache_key = (component, json.dumps(config.to_dict(), sort_keys=True, default=str))
    layout = _LAYOUT_CACHE.get(cache_key)
    if layout is None:
        if store is None:
            bad = bound_problems(component, config_values(config), config.source)
            if bad:
                raise ConfigError(format_problems(f"{component}: config.json describes no MOVA architecture", bad))
            layout = layout_of_module(component, build_meta_module(component, config))
        else:
            with skeleton_limit(component, store, config.source):
                layout = layout_of_module(component, build_meta_module(component, config))
        if len(_LAYOUT_CACHE) >= _LAYOUT_CACHE_SIZE:
            _LAYOUT_CACHE.pop(next(iter(_LAYOUT_CACHE)))
        _LAYOUT_CACHE[cache_key] = layout
    return layout


def _problem(component: str, message: str, key: Optional[str] = None, expected: Any = None, found: Any = None,
             file: Any = None) -> Problem:
    return Problem(component, message, key=key, expected=None if expected is None else str(expected),
                   found=None if found is None else str(found), file=None if file is None else str(file))


def _described(info: TensorInfo) -> str:
    return f"{format_shape(info.shape)} {info.dtype}"


def compare_with_layout(layout: ComponentLayout, store: SafetensorsStore, config_source: Optional[str] = None) -> List[Problem]:
    """Every difference between the stored headers and the expected layout (missing, unexpected, shape, dtype).

    A stored tensor is matched to an expected key directly, through its tie group, through the weight-norm
    pair (`weight_g`/`weight_v`, `WEIGHT_NORM_COMPONENTS` only) or as the fp8 scale of an F8_E4M3 weight.
    """
    c = layout.component
    found = store.tensors
    used: set = set()
    problems: List[Problem] = []
    n_shape = n_missing = 0
    done_groups: set = set()

    def check_one(key: str, shape: Tuple[int, ...]) -> None:
        nonlocal n_shape
        info = found[key]
        used.add(key)
        if info.shape != shape:
            n_shape += 1
            problems.append(_problem(c, "wrong shape", key, format_shape(shape), format_shape(info.shape), info.file))
        if info.dtype in FLOAT_DTYPES or info.dtype in GGUF_QUANT_SIZES:
            return  # GGUF: quantized layer weights stay quantized, other quantized tensors are expanded at build
        if info.dtype == FP8_NAME and key in layout.scalable:
            scale = found.get(key + SCALE_SUFFIX)
            if scale is None:
                problems.append(_problem(c, f"F8_E4M3 weight without its scale tensor {key + SCALE_SUFFIX!r}", key,
                                         "an F32 scalar", "absent", info.file))
                return
            used.add(scale.key)
            if scale.dtype not in FLOAT_DTYPES or scale.numel != 1:
                problems.append(_problem(c, "bad fp8 scale", scale.key, "an F32 scalar", _described(scale), scale.file))
            return
        allowed = "BF16, F16 or F32" + (" (or F8_E4M3 + scale)" if key in layout.scalable else "")
        problems.append(_problem(c, "unsupported dtype", key, allowed, info.dtype, info.file))

    for key, (shape, _) in layout.tensors.items():
        group = layout.aliases.get(key, (key,))
        if group[0] in done_groups:
            continue
        done_groups.add(group[0])
        present = [k for k in group if k in found]
        if present:
            for k in present:
                check_one(k, shape)
            continue
        g_key, v_key = key + "_g", key + "_v"
        if c in WEIGHT_NORM_COMPONENTS and key.endswith(".weight") and (g_key in found or v_key in found):
            for part, want in ((v_key, shape), (g_key, (shape[0],) + (1,) * (len(shape) - 1))):
                if part in found:
                    check_one(part, want)
                else:
                    n_missing += 1
                    problems.append(_problem(c, "weight-norm pair is incomplete: missing tensor", part,
                                             format_shape(want), "absent", store.folder))
            continue
        n_missing += 1
        names = " or ".join(repr(k) for k in group)
        problems.append(_problem(c, "missing tensor" + (f" (tied: {names})" if len(group) > 1 else ""), key,
                                 format_shape(shape), "absent", store.folder))
    unexpected = [info for key, info in found.items() if key not in used]
    for info in unexpected:
        problems.append(_problem(c, "unexpected tensor (not in the module built from config.json)", info.key,
                                 "absent", _described(info), info.file))
    hints: List[Problem] = []
    expected_n = len(layout.tensors)
    if found and n_missing + n_shape >= max(3, expected_n // 2):
        hints.append(_problem(
            c, f"{n_missing} of {expected_n} expected tensors are missing and {n_shape} have other shapes: these "
               "weights belong to another model (or to another config.json)", expected=f"{expected_n} tensors",
            found=f"{len(found)} stored, {len(unexpected)} unexpected", file=config_source))
    return hints + problems


def preflight_problems(root: Path) -> List[Problem]:
    """Folder-level checks, no weights touched: MOVA `model_index.json`, the nine folders, every config file,
    the tokenizer files. An empty list means `MovaConfigs.from_folder(root)` will succeed."""
    root = Path(root)
    if not root.is_dir():
        return [_problem("checkpoint", "not a folder", expected="a MOVA checkpoint folder", found="nothing", file=root)]
    index_path = root / "model_index.json"
    if not index_path.is_file():
        hint = ("; it has a config.json, so it looks like one component folder: pick the checkpoint's top folder"
                if (root / "config.json").is_file() else "")
        return [_problem("model_index.json", "missing: this folder is not a MOVA checkpoint" + hint,
                         expected="model_index.json with _class_name 'MOVA' and folders " + ", ".join(COMPONENT_NAMES),
                         found=", ".join(sorted(p.name for p in root.iterdir())[:12]) or "an empty folder", file=index_path)]
    try:
        data = read_json(index_path, "model_index.json")
        ModelIndex.from_dict(data, source=str(index_path))
    except ConfigError as exc:
        return [_problem("model_index.json", str(exc), file=index_path)]
    problems: List[Problem] = []
    for name in COMPONENT_NAMES:
        entry = data.get(name)
        found_class = entry[1] if isinstance(entry, list) and len(entry) == 2 else entry
        if entry is None:
            problems.append(_problem(name, "model_index.json has no entry for this component", None,
                                     f"[library, {INDEX_CLASSES[name][0]!r}]", "none", index_path))
        elif found_class not in INDEX_CLASSES[name]:
            problems.append(_problem(name, "model_index.json entry names another class", None,
                                     " or ".join(INDEX_CLASSES[name]), found_class, index_path))
        if not (root / name).is_dir():
            problems.append(_problem(name, "component folder is missing", expected=f"folder {name}/", found="nothing",
                                     file=root / name))
    for name, (file_name, config_cls) in CONFIG_FILES.items():
        path = root / name / file_name
        if (root / name).is_dir():
            try:
                config_cls.from_file(path)
            except ConfigError as exc:
                problems.append(_problem(name, str(exc), file=path))
    tokenizer = root / "tokenizer"
    if tokenizer.is_dir() and not any((tokenizer / f).is_file() for f in TOKENIZER_FILES):
        problems.append(_problem("tokenizer", "no tokenizer file", expected=" or ".join(TOKENIZER_FILES),
                                 found=", ".join(sorted(p.name for p in tokenizer.iterdir())) or "an empty folder",
                                 file=tokenizer))
    return problems


class MovaCheckpoint:
    """A MOVA checkpoint folder: configs parsed, stores opened lazily, modules built on demand.

    `open(folder)` checks the folder and every config (raising one `CheckpointError`); `validate()` compares
    every weight file's headers with the modules its configs describe; `build(component)` validates that
    component and returns its module with memory-mapped weights. No step before `build` reads a weight.
    """

    def __init__(self, root: Path, configs: MovaConfigs) -> None:
        self.root = Path(root)
        self.configs = configs
        self._stores: Dict[str, SafetensorsStore] = {}
        self._layouts: Dict[str, ComponentLayout] = {}
        self._problems: Dict[str, List[Problem]] = {}
        self._changed_broken: set = set()

    @classmethod
    def open(cls, folder: Path | str, validate: bool = False) -> "MovaCheckpoint":
        """Open `folder`; raise one `CheckpointError` listing every folder/config problem. With `validate=True`
        the same error also lists every weight-header problem (see `validate`)."""
        root = Path(folder)
        problems = preflight_problems(root)
        try:
            checkpoint = cls(root, MovaConfigs.from_folder(root))
        except ConfigError as exc:
            problems = problems or [_problem("checkpoint", str(exc), file=root)]
            raise CheckpointError.from_problems(f"{root} is not a usable MOVA checkpoint", problems) from exc
        if validate:
            problems += checkpoint.problems()
        if problems:
            raise CheckpointError.from_problems(f"{root} is not a usable MOVA checkpoint", problems)
        return checkpoint

    @property
    def tokenizer_dir(self) -> Path:
        return self.root / "tokenizer"

    def config(self, component: str) -> ComponentConfig:
        return getattr(self.configs, component)

    def store(self, component: str) -> SafetensorsStore:
        """The component's `SafetensorsStore`, or its `GGUFStore` when the folder holds a `.gguf` file (headers
        read once, on first use)."""
        if component not in COMPONENT_BUILDERS:
            raise KeyError(f"{component!r} has no weights; weight components are {', '.join(WEIGHT_COMPONENTS)}")
        if component not in self._stores:
            self._stores[component] = open_store(self.root / component, component)
        return self._stores[component]

    def layout(self, component: str) -> ComponentLayout:
        """What the component's module expects (built once on the meta device from its config, never larger
        than the component's stored tensors could fill)."""
        if component not in self._layouts:
            store = self._stores.get(component)  # the files checked so far, if any (a layout needs no file)
            usable = store if store is not None and store.tensors and not store.problems else None
            self._layouts[component] = component_layout(component, self.config(component), usable)
        return self._layouts[component]

    def expected_tensors(self, component: str) -> Dict[str, Tuple[Tuple[int, ...], torch.dtype]]:
        """Key -> (shape, dtype the module is built with) for every state-dict key of `component`.
        Stored tensors may be BF16/F16/F32 whatever the dtype here (see the module docstring)."""
        return dict(self.layout(component).tensors)

    def cheap_problems(self, component: str) -> List[Problem]:
        """Problems found without building anything: the files' headers, then the config's numbers against
        what the headers show and against sane bounds (`config_checks`). Milliseconds, whatever the config."""
        store = self.store(component)
        if store.problems:
            return list(store.problems)
        config = self.config(component)
        return config_problems(component, config_values(config), store, config.source)

    def component_problems(self, component: str) -> List[Problem]:
        """Problems of one weight component, from headers only (cached). The module's meta skeleton is built
        only when the cheap checks pass, and never larger than the stored tensors could fill."""
        if component not in self._problems:
            problems = self.cheap_problems(component)
            if not problems:
                config = self.config(component)
                try:
                    layout = self.layout(component)
                except (ConfigError, ValueError, TypeError) as exc:
                    problems = [_problem(component, f"cannot build the module its config.json describes ({exc})",
                                         file=config.source)]
                else:
                    problems = compare_with_layout(layout, self.store(component), config.source)
            self._problems[component] = problems
        return self._problems[component]

    def problems(self) -> List[Problem]:
        """Every problem of every weight component (reads only safetensors headers). When a cheap check fails
        anywhere, those problems are reported without building any module skeleton."""
        cheap = [p for c in WEIGHT_COMPONENTS if c not in self._problems for p in self.cheap_problems(c)]
        if cheap:
            return [p for c in WEIGHT_COMPONENTS for p in (self._problems.get(c) or self.cheap_problems(c))]
        return [p for c in WEIGHT_COMPONENTS for p in self.component_problems(c)]

    def validate(self) -> "MovaCheckpoint":
        """Raise one `CheckpointError` listing every problem of the checkpoint; return self when it is sound."""
        problems = self.problems()
        if problems:
            raise CheckpointError.from_problems(f"{self.root} is not a usable MOVA checkpoint", problems)
        return self

    def changed_components(self, components: Optional[Sequence[str]] = None) -> List[str]:
        """Components (of `components`, default all) whose weight files were checked and have changed on disk
        since (size, mtime, inode or header: `SafetensorsStore.changed_files`). Reads headers only."""
        names = WEIGHT_COMPONENTS if components is None else components
        return [c for c in names if c in self._stores and self._stores[c].is_stale()]

    def recheck(self, components: Optional[Sequence[str]] = None) -> List[str]:
        """Re-open and re-validate every component whose files changed since they were checked; -> the changed
        components. Raises the `CheckpointError` of a load when a changed file is no longer usable.

        Memory-mapped weights of a changed file must not be touched again (a truncated file kills the
        process with SIGBUS): callers drop the modules built from the changed components first.
        """
        changed = self.changed_components(components)
        for component in changed:
            files = self._stores[component].changed_files()
            logger.warning("%s: %s changed on disk since the checkpoint was checked; checking again", component,
                           ", ".join(files))
            del self._stores[component]
            self._problems.pop(component, None)
            if self.component_problems(component):
                self._changed_broken.add(component)
            else:
                self._changed_broken.discard(component)
        # a component whose files broke after loading stays refused until its files change again
        names = WEIGHT_COMPONENTS if components is None else components
        broken = [c for c in names if c in self._changed_broken]
        if broken:
            raise CheckpointError.from_problems(
                f"{self.root} is not a usable MOVA checkpoint (weight files of {', '.join(broken)} changed on disk "
                "since it was loaded)", [p for c in broken for p in self._problems[c]])
        return changed

    def build(self, component: str, dtype: Optional[torch.dtype] = None, device: torch.device | str = "cpu") -> nn.Module:
        """The component's module with its weights assigned (`load_state_dict(assign=True, strict=True)`).

        Weights are memory-mapped from the safetensors (or GGUF) files and kept in their stored dtype unless
        `dtype` differs (then each floating tensor is cast, one at a time). fp8 weights and their scales, and GGUF
        quantized layer weights, are kept as stored (the layers dequantize at forward); other GGUF quantized
        tensors are dequantized here to `dtype` (float32 when None). On `device` other than CPU each tensor is
        copied there.
        The module is returned in eval mode with `requires_grad=False`.
        """
        self.recheck([component])
        problems = self.component_problems(component)
        if problems:
            raise CheckpointError.from_problems(f"{self.root}: cannot load {component}", problems)
        layout = self.layout(component)
        store = self.store(component)
        module = build_meta_module(component, self.config(component))
        raw = store.load()
        if component in WEIGHT_NORM_COMPONENTS and any(k.endswith(("weight_g", "weight_v")) for k in raw):
            from ..network.audio_vae import fuse_weight_norm
            raw = dict(fuse_weight_norm(raw))
        device = torch.device(device)
        converted: Dict[int, torch.Tensor] = {}

        def convert(tensor: torch.Tensor, keep_dtype: bool = False) -> torch.Tensor:
            if id(tensor) not in converted:
                out = tensor
                if (dtype is not None and not keep_dtype and out.is_floating_point() and out.dtype != FP8_DTYPE
                        and out.dtype != dtype):
                    out = out.to(dtype)
                if device.type != "cpu":
                    out = out.to(device)
                converted[id(tensor)] = out
            return converted[id(tensor)]

        quantized = {k: info.dtype for k, info in store.tensors.items() if k in raw and info.dtype in GGUF_QUANT_SIZES}
        expanded: Dict[str, torch.Tensor] = {}
        state: Dict[str, torch.Tensor] = {}
        for key in layout.tensors:
            source = next(k for k in layout.aliases.get(key, (key,)) if k in raw)
            if source in quantized and key in layout.scalable and key not in layout.aliases:
                owner = module.get_submodule(key.rpartition(".")[0])
                blocks = raw[source]
                set_gguf_weight(owner, quantized[source], store.info(source).shape,
                                torch.empty(blocks.shape, dtype=torch.uint8, device="meta"))
                state[key] = convert(blocks)
                continue
            if source in quantized:
                if source not in expanded:
                    expanded[source] = dequantize(raw[source], quantized[source], store.info(source).shape,
                                                  dtype or torch.float32)
                state[key] = convert(expanded[source])
                continue
            state[key] = convert(raw[source])
            if state[key].dtype == FP8_DTYPE:
                scale = convert(raw[key + SCALE_SUFFIX], keep_dtype=True)
                owner = module.get_submodule(key.rpartition(".")[0])
                owner.register_buffer("weight_scale", torch.empty(scale.shape, dtype=scale.dtype, device="meta"))
                state[key + SCALE_SUFFIX] = scale
        del raw, converted
        module.load_state_dict(state, strict=True, assign=True)
        left = [n for n, t in chain(module.named_parameters(), module.named_buffers()) if t.is_meta]
        if left:
            raise RuntimeError(f"{component}: the module builder left tensors on the meta device that no checkpoint "
                               f"key fills: {', '.join(left[:10])}; non-persistent buffers must be created on a real device")
        module.requires_grad_(False)
        module.eval()
        types = getattr(store, "types", None)
        logger.info("built %s from %s (%d tensors, %.2f GiB stored%s)", component, store.folder, len(state),
                    store.nbytes / 2 ** 30, "; GGUF " + ", ".join(f"{t} x{n}" for t, n in sorted(types().items()))
                    if types else "")
        return module


def checkpoint_problems(folder: Path | str) -> List[Problem]:
    """Every problem of a checkpoint folder (folder, configs, weight headers), never raising for a bad folder.
    Weight headers are checked whenever the configs can be parsed, even if other problems exist."""
    root = Path(folder)
    problems = preflight_problems(root)
    try:
        checkpoint = MovaCheckpoint(root, MovaConfigs.from_folder(root))
    except ConfigError as exc:
        return problems or [_problem("checkpoint", str(exc), file=root)]
    return problems + checkpoint.problems()
