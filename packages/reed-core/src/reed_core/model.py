"""``ReedModel``: a denoiser, taps on its hidden states and the aligner, run as one forward.

One forward call produces both the denoiser's output and every alignment term, so a DDP wrapper
sees all trainable parameters (projectors included) in the forward it prepares for, and
``torch.compile`` traces the hooks with the network. The denoiser itself stays untouched and knows
nothing of the targets.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn as nn

from reed_core.alignment import AlignmentTarget, AlignmentTerm, MultiLatentAligner
from reed_core.taps import FeatureTaps, resolve_depth


class ReedModel(nn.Module):
    """``forward(*args, tau=, z_targets=, align_masks=, **kwargs) -> (output, {name: AlignmentTerm})``.

    ``args``/``kwargs`` go to the denoiser unchanged (its own time convention); ``tau`` is the
    noise level in reed-core's convention (0 clean, 1 prior), used for ``alpha_k(tau)``. Without
    ``z_targets`` (sampling, vanilla training) no alignment is computed.
    """

    def __init__(
        self,
        denoiser: nn.Module,
        targets: list[AlignmentTarget] | tuple = (),
        hidden_dims: dict[str, int] | None = None,
    ):
        super().__init__()
        self.denoiser = denoiser
        targets = list(targets)
        paths = {t.name: resolve_depth(denoiser, t.depth) for t in targets}
        if hidden_dims is None:
            hidden_dims = {t.name: _infer_width(denoiser, paths[t.name]) for t in targets}
        self.aligner = MultiLatentAligner(targets, hidden_dims) if targets else None
        self.taps = FeatureTaps(denoiser, paths) if targets else None

    @property
    def targets(self) -> dict[str, AlignmentTarget]:
        return self.aligner.targets if self.aligner is not None else {}

    def forward(
        self,
        *args: Any,
        tau: torch.Tensor | None = None,
        z_targets: dict[str, torch.Tensor] | None = None,
        align_masks: dict[str, torch.Tensor] | None = None,
        **kwargs: Any,
    ) -> tuple[Any, dict[str, AlignmentTerm]]:
        output = self.denoiser(*args, **kwargs)
        if self.aligner is None or self.taps is None:
            return output, {}
        hiddens = self.taps.pop()
        if z_targets is None:
            return output, {}
        if tau is None:
            raise ValueError("ReedModel: pass tau (reed-core convention) to weight the alignment")
        return output, self.aligner(hiddens, z_targets, tau, align_masks)


def _infer_width(model: nn.Module, path: str) -> int:
    """Width of the hidden state at ``path``: the model's ``tap_dims()`` or the module's last Linear."""
    if hasattr(model, "tap_dims"):
        dims = model.tap_dims()
        if path in dims:
            return int(dims[path])
    module = dict(model.named_modules())[path]
    linears = [m for m in module.modules() if isinstance(m, nn.Linear)]
    if not linears:
        raise ValueError(f"cannot infer the width of {path!r}; pass hidden_dims to ReedModel")
    return linears[-1].out_features
