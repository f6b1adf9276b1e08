"""The allowed range of every number a user sets, in one place: the nodes' widgets, the CLIs and the Python
API read their limits from here, so a value refused in one is refused in all (issue 17, item 12).

A `Bound` checks a value (`check`) and gives a node widget its `min`/`max` (`widget`). Floats must also be
finite (`inf`/`nan` are refused with the allowed range in the message). Geometry rules beyond a range
(multiples of 16, 4k+1 frames) stay with `sampling.pipeline.validate_geometry`, which uses these bounds.

Also here: `cap_text`, the one cut applied to every text before it is tokenized (prompts, captions, the
prompt enhancer's input and output), so memory does not grow with the length of a text.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass
from typing import Optional, Tuple

logger = logging.getLogger(__name__)


class BoundsError(ValueError):
    """A number outside its allowed range (or not finite); the message names it and the range."""


@dataclass(frozen=True)
class Bound:
    """`low <= value <= high` (`low < value` when `low_open`); `integer`: whole numbers only."""

    low: float
    high: float
    integer: bool = False
    low_open: bool = False

    def describe(self) -> str:
        low = f"more than {_number(self.low)}" if self.low_open else f"at least {_number(self.low)}"
        return f"{low} and at most {_number(self.high)}"

    def contains(self, value) -> bool:
        try:
            number = float(value)
        except (TypeError, ValueError, OverflowError):
            return False
        if not math.isfinite(number):
            return False
        if self.integer and (isinstance(value, bool) or int(value) != value):
            return False
        exact = int(value) if self.integer else number  # ints beyond 2**53 compare exactly
        low_ok = exact > self.low if self.low_open else exact >= self.low
        return low_ok and exact <= self.high

    def check(self, name: str, value):
        """`value` when allowed; else `BoundsError("<name> must be ... , got <value>")`."""
        if not self.contains(value):
            kind = " (a whole number)" if self.integer else ""
            raise BoundsError(f"{name} must be {self.describe()}{kind}, got {value!r}")
        return value

    def widget(self) -> dict:
        """`min`/`max` keyword arguments of a ComfyUI `io.Int.Input` / `io.Float.Input`."""
        if self.integer:
            return {"min": int(self.low), "max": int(self.high)}
        return {"min": float(self.low), "max": float(self.high)}


def _number(value: float) -> str:
    if float(value).is_integer() and abs(value) >= 1:
        return f"{int(value)}"
    return f"{value:g}"


# -- the clip -----------------------------------------------------------------------------------------------
WIDTH = Bound(16, 4096, integer=True)
"""Pixels; also a multiple of 16 (`validate_geometry`)."""
HEIGHT = Bound(16, 4096, integer=True)
FRAMES = Bound(1, 1025, integer=True)
"""Frames of one clip or segment, 4k+1 (`validate_geometry`); 1025 frames = 42.7 s at 24 fps."""
FPS = Bound(0.0, 120.0, low_open=True)

# -- sampling -----------------------------------------------------------------------------------------------
STEPS = Bound(1, 1000, integer=True)
SEED = Bound(0, 2**64 - 1, integer=True)
"""`torch.manual_seed` takes any unsigned 64-bit number."""
CFG = Bound(0.0, 30.0)
PARALLEL_TIMEOUT_S = Bound(0.0, 86400.0, low_open=True)

# -- training -----------------------------------------------------------------------------------------------
TRAIN_STEPS = Bound(1, 1_000_000, integer=True)
TRAIN_SEED = Bound(0, 2**32 - 1, integer=True)
"""Training derives further seeds from it (validation set, LoRA init, clip order), so it stays 32-bit."""
RANK = Bound(1, 256, integer=True)
ALPHA = Bound(0.01, 1024.0)
LEARNING_RATE = Bound(1e-7, 1.0)
WARMUP_STEPS = Bound(0, 1_000_000, integer=True)
ACCUMULATION = Bound(1, 1024, integer=True)
SAVE_EVERY = Bound(0, 100_000, integer=True)
VAL_EVERY = Bound(0, 100_000, integer=True)
VAL_ITEMS = Bound(1, 1024, integer=True)
LOSS_WEIGHT = Bound(0.0, 1000.0)
CAPTION_DROPOUT = Bound(0.0, 0.99)
VRAM_BUDGET_GB = Bound(0.0, 4096.0, low_open=True)
HOST_RAM_GB = Bound(0.0, 65536.0, low_open=True)
"""Host RAM a plan may use (`plan --ram`)."""
BANDWIDTH_GBPS = Bound(0.0, 10_000.0, low_open=True)
"""Host-to-device bandwidth, GB/s (`plan --pcie`)."""
TFLOPS = Bound(0.0, 100_000.0, low_open=True)
"""Sustained TFLOP/s a plan assumes (`plan --tflops`)."""
PREFETCH_DEPTH = Bound(0, 64, integer=True)
"""Blocks copied ahead of the one computing (`plan --prefetch`)."""
LORA_STRENGTH = Bound(-10.0, 10.0)
"""A LoRA's strength (the LoRA Loader's widgets, generate --lora)."""

LORA_NAME_MAX_CHARS = 120
"""Longest LoRA file stem the training node accepts (the state file and temporary files add to it; most file
systems stop at 255 bytes per name)."""

# -- text ---------------------------------------------------------------------------------------------------
MAX_TEXT_CHARS = 32_768
"""Characters of a prompt or caption that are read. The UMT5 encoder reads 512 tokens (about 2,000–3,000
characters of ordinary text), so the cut never reaches what it reads; a longer text would only cost memory
(the tokenizer holds every token of the whole text)."""


def cap_text(text: Optional[str], name: str = "text", limit: int = MAX_TEXT_CHARS) -> str:
    """`text` cut to its first `limit` characters, with a warning naming it when it was longer."""
    text, note = cap_text_note(text, name, limit)
    if note:
        logger.warning("%s", note)
    return text


def cap_text_note(text: Optional[str], name: str = "text", limit: int = MAX_TEXT_CHARS) -> Tuple[str, str]:
    """(`text` cut to `limit` characters, the warning sentence or "" when nothing was cut)."""
    text = text or ""
    if len(text) <= limit:
        return text, ""
    return text[:limit], (f"the {name} is {len(text):,} characters; only the first {limit:,} are read (the text "
                          "encoder reads 512 tokens, about 2,000-3,000 characters). Shorten it.")
