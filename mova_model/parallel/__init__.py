"""Several processes, one clip: CFG-parallel and Ulysses sequence-parallel MOVA on torch.distributed.

- `layout`: rank arithmetic, allowed degrees, `ParallelError`;
- `comm`: timed, counted collectives; `ulysses`: the sequence split of `joint_forward`;
- `context`: `ParallelContext` (pass it to `MovaPipeline.sample(parallel=...)`), `init_parallel`, `init_from_env`;
- `workers`: persistent spawned worker processes for a single-process host (ComfyUI).
"""

from .comm import CommStats
from .context import DEFAULT_TIMEOUT_S, ParallelContext, init_from_env, init_parallel
from .layout import SPLITS, ParallelError, ParallelLayout, allowed_ulysses_degrees, layout_for

__all__ = ["CommStats", "DEFAULT_TIMEOUT_S", "ParallelContext", "ParallelError", "ParallelLayout", "SPLITS",
           "allowed_ulysses_degrees", "init_from_env", "init_parallel", "layout_for"]
