"""The REED objective: a domain's generative loss plus weighted multi-latent alignment.

Wang et al. (2025), total loss (docs/design.md, section 1):

    L = w_diff(p) * mean_b L_gen[b]
        + sum_k w_align_k(p) * lambda_k * mean_b( alpha_k(tau_b) * L_align_k[b] )

Each ``alpha_k(tau_b)`` multiplies its own sample's loss (``[B] * [B]``, never broadcast). The
domain supplies the per-sample generative loss ``L_gen [B]`` and the alignment terms (from
:class:`reed_core.model.ReedModel`); this module owns the weighting. Every term is returned
detached for logging, without host synchronisation.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import torch

from reed_core.alignment import AlignmentTarget, AlignmentTerm
from reed_core.curriculum import Curriculum


@dataclass
class ObjectiveOutput:
    loss: torch.Tensor  # scalar, differentiable
    terms: dict[str, torch.Tensor | float]  # detached scalars (or host floats) for logging


def per_sample_mean(values: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """``mean_b(w_b * v_b)`` for ``[B]`` values and ``[B]`` weights; refuses to broadcast."""
    if values.dim() != 1:
        raise ValueError(f"per-sample loss must have shape [B], got {tuple(values.shape)}")
    if weights is None:
        return values.mean()
    if weights.shape != values.shape:
        raise ValueError(
            f"per-sample weights {tuple(weights.shape)} do not match losses {tuple(values.shape)}"
        )
    return (weights.to(values.dtype) * values).mean()


def _weight(w: float | torch.Tensor, like: torch.Tensor) -> float | torch.Tensor:
    """A curriculum weight in ``like``'s dtype where it is a tensor (so it does not promote the loss)."""
    return w.to(like.dtype) if isinstance(w, torch.Tensor) else w


class ReedObjective:
    """``objective(gen_loss [B], align_terms, progress) -> ObjectiveOutput``."""

    def __init__(self, curriculum: Curriculum, targets: Mapping[str, AlignmentTarget] | None = None):
        self.curriculum = curriculum
        self.targets = dict(targets or {})

    def __call__(
        self,
        gen_loss: torch.Tensor,
        align_terms: Mapping[str, AlignmentTerm] | None,
        progress: float | torch.Tensor,
    ) -> ObjectiveOutput:
        """Progress may be a 0-d tensor (the step on the device): the weights are then tensors."""
        l_gen = per_sample_mean(gen_loss.float())
        w_diff = _weight(self.curriculum.cfg.w_diff(progress), l_gen)
        loss = w_diff * l_gen
        terms: dict[str, torch.Tensor | float] = {"loss_gen": l_gen.detach(), "w_diff": w_diff}
        for name, term in (align_terms or {}).items():
            if name not in self.targets:
                raise KeyError(f"objective: alignment term {name!r} has no target spec")
            l_k = per_sample_mean(term.loss, term.alpha)
            w_k = _weight(self.curriculum.w_align_for(name, progress), l_k)
            loss = loss + w_k * self.targets[name].weight * l_k
            terms[f"align/{name}"] = l_k.detach()
            terms[f"cos/{name}"] = (1.0 - term.loss).mean().detach()
            terms[f"w_align/{name}"] = w_k
        terms["loss"] = loss.detach()
        return ObjectiveOutput(loss=loss, terms=terms)
