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


_SLOT = "_reed_tap_output"


def _first(output: Any) -> torch.Tensor:
    return output[0] if isinstance(output, (tuple, list)) else output


def _make_hook(select: Callable[[Any], torch.Tensor]):
    # The hook keeps the output on the module that produced it (no closure over the taps object),
    # so a deep copy of the model (an EMA copy) captures into its own modules.
    def hook(module: nn.Module, args: Any, output: Any) -> None:
        module.__dict__[_SLOT] = select(output)

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
        self._handles = [m.register_forward_hook(_make_hook(select)) for m in self._modules.values()]

    @property
    def outputs(self) -> dict[str, torch.Tensor]:
        """Hidden states captured by the last forward, by target name."""
        return {name: m.__dict__[_SLOT] for name, m in self._modules.items() if _SLOT in m.__dict__}

    def pop(self) -> dict[str, torch.Tensor]:
        """The captured outputs of the last forward; the slots are emptied (no stale tensors kept)."""
        out = self.outputs
        for m in self._modules.values():
            m.__dict__.pop(_SLOT, None)
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
