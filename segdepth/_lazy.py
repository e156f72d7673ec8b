"""Lazy re-exports (PEP 562): a package lists its public names, a submodule is imported on first use.

This keeps ``import segdepth.physics.structures`` free of torch and ``import segdepth.learn.model``
free of abTEM, while ``segdepth.predict`` and ``segdepth.physics.simulate_exit_wave`` still work.
"""

from __future__ import annotations

import importlib


def attach(package: str, exports: dict[str, list[str]]):
    """``(__getattr__, __dir__, __all__)`` for ``package`` re-exporting ``exports``.

    ``exports`` maps a module path relative to ``package`` (``".inference"``) to the names it
    provides; the submodules named by the keys are reachable as attributes too.
    """
    where: dict[str, str] = {}
    for module, names in exports.items():
        for name in names:
            if name in where:
                raise ValueError(f"{package}: {name!r} exported by both {where[name]} and {module}")
            where[name] = module
    submodules = {m.lstrip(".").split(".")[0] for m in exports if m.startswith(".")}
    public = sorted(set(where) | submodules)

    def __getattr__(name: str):
        if name in where:
            return getattr(importlib.import_module(where[name], package), name)
        if name in submodules:
            return importlib.import_module("." + name, package)
        raise AttributeError(f"module {package!r} has no attribute {name!r}")

    def __dir__():
        return public

    return __getattr__, __dir__, public
