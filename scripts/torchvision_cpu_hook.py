"""Import hook that lets PyPI's CUDA-linked torchvision import on a CPU-only torch.

Installed by ``scripts/install_host.sh`` into the host venv's site-packages (as
``mova_torchvision_cpu_hook.py`` plus a one-line ``.pth`` that calls :func:`register`).

The problem: the Linux torchvision wheels on PyPI link their C++ extension against CUDA
torch. On a ``+cpu`` torch the extension cannot be loaded, torchvision then reports
``_has_ops() == False`` and skips most operator registrations, except that
``torchvision/_meta_registrations.py`` still calls ``torch.library.register_fake`` for
``torchvision::nms`` and ``torchvision::qnms`` unconditionally. Those operators were never
defined, so ``import torchvision`` raises and ComfyUI (which imports torchvision at start
for its transforms) cannot start.

The fix here: while (and only while) ``torchvision._meta_registrations`` executes, and only
when torchvision's extension failed to load, ``torch.library.register_fake`` leaves
``torchvision::*`` operators alone (the decorated function is returned unregistered). Every
pure-Python part of torchvision then works; calling a C++ op such as ``torchvision.ops.nms``
still fails at call time, exactly as it would without the extension. When the extension
loads (a matching torch build) the hook does nothing.
"""
import importlib.abc
import importlib.util
import sys

_TARGET = "torchvision._meta_registrations"


def _extension_missing() -> bool:
    """True when torchvision's C++ ops did not load (``torchvision.extension._has_ops()`` is False)."""
    extension = sys.modules.get("torchvision.extension")
    return extension is not None and not extension._has_ops()


class _TolerantLoader(importlib.abc.Loader):
    """Runs the wrapped loader with ``torch.library.register_fake`` skipping torchvision ops."""

    def __init__(self, inner):
        self._inner = inner

    def create_module(self, spec):
        return self._inner.create_module(spec)

    def exec_module(self, module):
        if not _extension_missing():
            self._inner.exec_module(module)
            return
        import torch.library

        original = torch.library.register_fake

        def register_fake(op, *args, **kwargs):
            name = op if isinstance(op, str) else getattr(op, "_name", "")
            if isinstance(name, str) and name.startswith("torchvision::"):
                return lambda fn=None, *a, **k: fn
            return original(op, *args, **kwargs)

        torch.library.register_fake = register_fake
        try:
            self._inner.exec_module(module)
        finally:
            torch.library.register_fake = original


class _Finder(importlib.abc.MetaPathFinder):
    """Meta path finder that only ever answers for ``torchvision._meta_registrations``."""

    def find_spec(self, fullname, path=None, target=None):
        if fullname != _TARGET:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None and spec.loader is not None:
                spec.loader = _TolerantLoader(spec.loader)
                return spec
        return None


def register() -> None:
    """Put the finder first on ``sys.meta_path`` (idempotent)."""
    if not any(isinstance(f, _Finder) for f in sys.meta_path):
        sys.meta_path.insert(0, _Finder())
