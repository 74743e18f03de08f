"""Capture hidden states ``f^(d)`` of any ``nn.Module`` at named depths, without editing it.

A model may list its alignable depths with ``tap_points() -> list[str]`` (module paths, block 1
first); an integer depth ``d`` then means ``tap_points()[d - 1]``. Otherwise depths are module
paths as printed by ``model.named_modules()``.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import torch
import torch.nn as nn


def resolve_depth(model: nn.Module, depth: int | str) -> str:
    """Module path of ``depth`` (1-based int into ``model.tap_points()``, or a path)."""
    if isinstance(depth, str):
        if depth not in dict(model.named_modules()):
            raise ValueError(f"depth: model {type(model).__name__} has no module named {depth!r}")
        return depth
    points = model.tap_points() if hasattr(model, "tap_points") else None
    if points is None:
        raise ValueError(
            f"depth: {type(model).__name__} has no tap_points(); give the depth as a module path"
        )
    if not 1 <= depth <= len(points):
        raise ValueError(
            f"depth: {depth} is beyond the model, which has {len(points)} tap points (1..{len(points)})"
        )
    return points[depth - 1]


_SLOT = "_reed_tap_outputs"  # a dict attribute of each tapped module


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _make_hook(name: str, select: Callable[[Any], torch.Tensor]):
    # The hook keeps the output in a dict attribute of the module that produced it (no closure over
    # the taps object), so a deep copy of the model (an EMA copy) captures into its own modules, and
    # torch.compile traces the dict update without a graph break.
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        getattr(module, _SLOT)[name] = select(output)

    return hook


class FeatureTaps:
    """Forward hooks that keep the outputs of named submodules.

    >>> with FeatureTaps(model, {"vision": "blocks.7"}) as taps:
    ...     model(x)
    ...     f = taps.outputs["vision"]
    """

    def __init__(
        self,
        model: nn.Module,
        paths: dict[str, str | int],
        select: Callable[[Any], torch.Tensor] = _first,
    ):
        modules = dict(model.named_modules())
        self.paths = {name: resolve_depth(model, depth) for name, depth in paths.items()}
        self._modules = {name: modules[path] for name, path in self.paths.items()}
        for m in self._modules.values():
            if not isinstance(getattr(m, _SLOT, None), dict):
                object.__setattr__(m, _SLOT, {})
        self._handles = [
            m.register_forward_hook(_make_hook(name, select)) for name, m in self._modules.items()
        ]

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        """Hidden states captured by the last forward, by target name."""
        slots = {name: getattr(m, _SLOT) for name, m in self._modules.items()}
        return {name: slot[name] for name, slot in slots.items() if name in slot}

    def pop(self) -> dict[str, torch.Tensor]:
        """The captured outputs of the last forward; the slots are emptied (no stale tensors kept)."""
        out = {}
        for name, m in self._modules.items():
            slot = getattr(m, _SLOT)
            if name in slot:
                out[name] = slot.pop(name)
        return out

    def remove(self) -> None:
        for h in self._handles:
            h.remove()
        self._handles = []
        self.pop()

    def __enter__(self) -> FeatureTaps:
        return self

    def __exit__(self, *exc: object) -> None:
        self.remove()
