"""Decomposition weights ``alpha(tau)``, their tail mass ``A(tau)``, and the hybrid transition.

Wang et al. (2025), Sec. 3: with an auxiliary representation ``z`` of ``x0``, the decomposition
that injects ``z`` at level ``s`` trains ``-log p(z | x_s)`` at ``s``, conditions every cleaner
transition on ``z`` and leaves every noisier one unconditional. Mixing decompositions with a density
``alpha(s) >= 0``, ``int_0^1 alpha = 1``, gives

* the alignment term ``sum_s alpha(s) * (-log p(z | x_s))``  -> :meth:`AlphaSpec.weight`
* at level ``tau`` the denoising term is conditioned on ``z`` with weight
  ``A(tau) = int_tau^1 alpha(s) ds`` and unconditioned with weight ``1 - A(tau)`` -> :meth:`AlphaSpec.A`,
  and the optimal transition is ``p~ ∝ p_cond^A p_uncond^(1-A)``  -> :func:`hybrid_mean`,
  :func:`hybrid_logits`.

Convention: ``tau = 0`` clean, ``tau = 1`` prior. ``alpha = (1 - m) * alpha_c + m * delta_1`` is a
continuous family ``alpha_c`` plus a point mass ``m = mass_at_one`` at ``tau = 1`` (RCG's
"generate z first" is ``kind="rcg"``, i.e. ``m = 1``). Families of ``alpha_c`` on ``[low, high]``:

    uniform: 1 / (high - low)                          (REPA: align at every noise level)
    window:  same density as uniform, named for a sub-interval
    linear:  2 (tau - low) / (high - low)^2             (more weight on noisier levels)
    cosine:  (pi / 2) sin(pi u / 2) / (high - low),     u = (tau - low) / (high - low)

Training draws ``tau`` per sample; with ``tau ~ U[0, 1]`` the unbiased Monte-Carlo weight of the
alignment term is ``alpha_c(tau)``. A point mass is not reachable by a continuous draw, so its
surrogate weight spreads ``m`` uniformly over ``[1 - rcg_width, 1]`` (``weight`` only; ``A`` is
exact, so ``A(1) = m``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

ALPHA_KINDS = ("uniform", "rcg", "window", "linear", "cosine")


@dataclass(frozen=True)
class AlphaSpec:
    """A noise-level weighting ``alpha(tau)`` for one alignment target (see module docstring)."""

    kind: str = "uniform"
    low: float = 0.0
    high: float = 1.0
    mass_at_one: float = 0.0
    rcg_width: float = 0.05

    def __post_init__(self) -> None:
        if self.kind not in ALPHA_KINDS:
            raise ValueError(f"alpha.kind: unknown {self.kind!r}; choose one of {ALPHA_KINDS}")
        if not 0.0 <= self.low < self.high <= 1.0:
            raise ValueError(f"alpha.low/high: need 0 <= low < high <= 1, got {self.low}, {self.high}")
        if not 0.0 <= self.mass_at_one <= 1.0:
            raise ValueError(f"alpha.mass_at_one: must lie in [0, 1], got {self.mass_at_one}")
        if not 0.0 < self.rcg_width <= 1.0:
            raise ValueError(f"alpha.rcg_width: must lie in (0, 1], got {self.rcg_width}")

    @property
    def point_mass(self) -> float:
        """Mass ``m`` of ``alpha`` at ``tau = 1``."""
        return 1.0 if self.kind == "rcg" else self.mass_at_one

    def density(self, tau: torch.Tensor) -> torch.Tensor:
        """Continuous part ``(1 - m) alpha_c(tau)`` (excludes the point mass)."""
        if self.kind == "rcg":
            return torch.zeros_like(tau, dtype=torch.float32)
        tau = tau.float()
        width = self.high - self.low
        u = (tau - self.low) / width
        inside = (u >= 0) & (u <= 1)
        if self.kind in ("uniform", "window"):
            dens = torch.full_like(tau, 1.0 / width)
        elif self.kind == "linear":
            dens = 2.0 * u / width
        else:  # cosine: alpha_c ∝ sin(pi u / 2), normalised: int_0^1 (pi/2) sin(pi u/2) du = 1
            dens = (math.pi / 2) * torch.sin(math.pi * u / 2) / width
        return (1.0 - self.point_mass) * torch.where(inside, dens, torch.zeros_like(dens))

    def weight(self, tau: torch.Tensor) -> torch.Tensor:
        """Per-sample alignment weight ``alpha(tau)`` for ``tau ~ U[0, 1]``, shape of ``tau``.

        The point mass enters through its surrogate ``m / rcg_width`` on ``[1 - rcg_width, 1]``.
        """
        w = self.density(tau)
        m = self.point_mass
        if m > 0:
            near_one = (tau.float() >= 1.0 - self.rcg_width).float()
            w = w + m * near_one / self.rcg_width
        return w

    def A(self, tau: torch.Tensor) -> torch.Tensor:
        """Tail mass ``A(tau) = int_tau^1 alpha(s) ds`` (point mass at 1 included): A(0) = 1."""
        tau = tau.float()
        m = self.point_mass
        u = ((tau - self.low) / (self.high - self.low)).clamp(0.0, 1.0)
        if self.kind in ("uniform", "window"):
            tail = 1.0 - u
        elif self.kind == "linear":
            tail = 1.0 - u**2
        elif self.kind == "cosine":  # int_u^1 (pi/2) sin(pi v/2) dv = cos(pi u / 2)
            tail = torch.cos(math.pi * u / 2)
        else:  # rcg: no continuous part
            tail = torch.zeros_like(u)
        return (1.0 - m) * tail + m


def hybrid_mean(mu_cond: torch.Tensor, mu_uncond: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Mean of ``p_cond^A p_uncond^(1-A)`` for Gaussians of equal variance: ``A mu_c + (1-A) mu_u``.

    ``A`` has shape ``[B]`` and is broadcast over the trailing axes of the means.
    """
    A = A.reshape(A.shape + (1,) * (mu_cond.dim() - A.dim())).to(mu_cond.dtype)
    return A * mu_cond + (1.0 - A) * mu_uncond


def hybrid_logits(logits_cond: torch.Tensor, logits_uncond: torch.Tensor, A: torch.Tensor) -> torch.Tensor:
    """Log-probabilities of ``p_cond^A p_uncond^(1-A)`` (renormalised) over the last axis."""
    A = A.reshape(A.shape + (1,) * (logits_cond.dim() - A.dim())).to(logits_cond.dtype)
    mixed = A * logits_cond.log_softmax(-1) + (1.0 - A) * logits_uncond.log_softmax(-1)
    return mixed.log_softmax(-1)
