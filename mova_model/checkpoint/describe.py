"""`python -m mova_model describe FOLDER [--check]`: every tensor a MOVA checkpoint holds, from its configs.

Each weight component is built on the meta device from its `config.json` (nothing is allocated), and one
line per state-dict key is written as `component<TAB>key<TAB>shape<TAB>dtype`, e.g.
`video_dit<TAB>patch_embedding.weight<TAB>[5120, 36, 1, 2, 2]<TAB>BF16` — the format of the reference
manifests. Without `--check` the dtype column is BF16 (the dtype the released checkpoints store); with
`--check` it is the dtype in the safetensors header, and every problem of the folder (missing, unexpected or
misshapen tensors, corrupt files, wrong configs) is listed; only headers are read.

Parameter counts follow, per component and in total:

- `params` counts tied weights once (the text encoder's `shared` / `encoder.embed_tokens`), `sd_elements`
  once per state-dict key.
- **backbone** = `video_dit` + `video_dit_2` + `audio_dit` + `dual_tower_bridge`: the diffusion model whose
  size the MOVA paper quotes as "32B total".
- **active** = the parameters one denoising step runs: one video expert (the two experts are switched at
  `boundary_ratio`, never run together) + `audio_dit` + `dual_tower_bridge`: the paper's "18B active".
- **all components** = backbone + text encoder + both VAEs.
"""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

from ..cli_args import CliParser, refuse
from .folder import (WEIGHT_COMPONENTS, ComponentLayout, MovaCheckpoint, component_layout,
                         preflight_problems)
from .configs import ConfigError, MovaConfigs
from .weights import Problem, format_shape

logger = logging.getLogger(__name__)

BACKBONE: Tuple[str, ...] = ("video_dit", "video_dit_2", "audio_dit", "dual_tower_bridge")
ACTIVE: Tuple[str, ...] = ("video_dit", "audio_dit", "dual_tower_bridge")
DEFAULT_DTYPE = "BF16"


def _stored_dtype(layout: ComponentLayout, key: str, checkpoint: MovaCheckpoint) -> str:
    """The header dtype of `key` (through its tie group or weight-norm `weight_v`), or `absent`."""
    tensors = checkpoint.store(layout.component).tensors
    for candidate in layout.aliases.get(key, (key,)) + (key + "_v",):
        if candidate in tensors:
            return tensors[candidate].dtype
    return "absent"


def count_lines(layouts: Dict[str, ComponentLayout]) -> List[str]:
    """The parameter-count summary: one line per component, then all / backbone / active totals."""
    lines = ["# component\ttensors\tparams\tsd_elements"]
    for name, layout in layouts.items():
        lines.append(f"# {name}\t{len(layout.tensors)}\t{layout.params}\t{layout.sd_elements}")

    def total(names: Sequence[str]) -> int:
        return sum(layouts[n].params for n in names if n in layouts)

    everything = total(list(layouts))
    lines.append(f"# all components\t{everything}\t({everything / 1e9:.2f}B)")
    if all(n in layouts for n in BACKBONE):
        backbone, active = total(BACKBONE), total(ACTIVE)
        lines.append(f"# backbone total (video_dit + video_dit_2 + audio_dit + dual_tower_bridge)\t{backbone}\t({backbone / 1e9:.2f}B)")
        lines.append(f"# active per step (one video expert + audio_dit + dual_tower_bridge)\t{active}\t({active / 1e9:.2f}B)")
    return lines


def describe(folder: Path | str, check: bool = False) -> Tuple[List[str], List[Problem]]:
    """Describe the checkpoint (or config-only) folder `folder`.

    Returns (lines, problems): the tensor lines `component\\tkey\\tshape\\tdtype` in module order, followed by
    `#`-prefixed count lines; and the problems found (config problems always, weight problems with `check`).
    Never raises for a bad folder: its problems are returned instead.
    """
    folder = Path(folder)
    problems: List[Problem] = preflight_problems(folder) if check else []
    try:
        configs = MovaConfigs.from_folder(folder)
    except ConfigError as exc:
        return [], problems or preflight_problems(folder) or [Problem("checkpoint", str(exc), file=str(folder))]
    checkpoint = MovaCheckpoint(folder, configs) if check else None
    if checkpoint is not None:
        problems += checkpoint.problems()
    layouts: Dict[str, ComponentLayout] = {}
    lines: List[str] = []
    for name in WEIGHT_COMPONENTS:
        if checkpoint is not None and checkpoint.component_problems(name) and checkpoint.cheap_problems(name):
            continue  # its config does not match its tensors (listed in problems): no skeleton is built
        try:
            layout = checkpoint.layout(name) if checkpoint else component_layout(name, getattr(configs, name))
        except (ConfigError, ValueError) as exc:  # a config out of bounds, a skeleton larger than the files
            problems.append(Problem(name, f"cannot build the module its config.json describes ({exc})"))
            continue
        layouts[name] = layout
        for key, (shape, _) in layout.tensors.items():
            dtype = _stored_dtype(layout, key, checkpoint) if checkpoint else DEFAULT_DTYPE
            lines.append(f"{name}\t{key}\t{format_shape(shape)}\t{dtype}")
    return lines + count_lines(layouts), problems


def main_describe(argv: Optional[Sequence[str]] = None) -> int:
    """CLI entry: print the description to stdout and problems to stderr; exit 1 if any problem, 2 (one `error:`
    line) when the argument is not a folder."""
    parser = CliParser(prog="python -m mova_model describe",
                       description="List every tensor of a MOVA checkpoint from its configs.")
    parser.add_argument("folder", type=Path, help="checkpoint folder (or a folder with only the config files)")
    parser.add_argument("--check", action="store_true",
                        help="also read the safetensors headers (no weights) and list every problem")
    parser.add_argument("--summary", action="store_true", help="print only the parameter counts")
    args = parser.parse_or_status(argv)
    if isinstance(args, int):  # --help, or the parser's one `error:` line
        return args
    if not args.folder.is_dir():
        what = "a file" if args.folder.exists() else "nothing there"
        return refuse(f"{args.folder} is not a folder ({what}); give a MOVA checkpoint folder (the one holding "
                      "model_index.json)")
    lines, problems = describe(args.folder, check=args.check)
    out = [line for line in lines if line.startswith("#")] if args.summary else lines
    sys.stdout.write("".join(line + "\n" for line in out))
    for problem in problems:
        sys.stderr.write(f"PROBLEM {problem}\n")
    if problems:
        sys.stderr.write(f"{len(problems)} problem(s) in {args.folder}\n")
        return 1
    if args.check:
        sys.stderr.write(f"{args.folder}: no problem found\n")
    return 0
