"""One check for a value picked from a fixed list (a ComfyUI combo, a Python API option).

ComfyUI 0.3.75 does not check that a V3 combo's value is one of its options (a workflow typed by hand, an old
workflow or an API client can send anything), so every consumer checks, with the allowed values in the message.
"""
from __future__ import annotations

from typing import Any, Sequence


class ChoiceError(ValueError):
    """A value that is not one of the allowed ones; the message lists them."""


def check_choice(name: str, value: Any, allowed: Sequence[Any], where: str = "", hint: str = "") -> Any:
    """Return ``value`` when it is in ``allowed``; else raise :class:`ChoiceError` naming ``name``, the value and
    every allowed value (``where`` prefixes the message, e.g. the node's name; ``hint`` follows it)."""
    if value in allowed:
        return value
    if allowed:
        message = f"{where}{name} = {value!r} is not allowed; choose one of: {', '.join(repr(a) for a in allowed)}."
    else:
        message = f"{where}{name} = {value!r} is not allowed: there is nothing to choose from yet."
    raise ChoiceError(f"{message} {hint}".strip())
