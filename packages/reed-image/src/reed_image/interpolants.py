"""Stochastic interpolants and noise-level sampling (SiT, Ma et al. 2024; REPA, Yu et al. 2025).

With clean data ``x0``, Gaussian noise ``eps`` and level ``tau`` in [0, 1] (``tau = 0`` clean,
``tau = 1`` noise, the reed-core convention):

    x_tau = a(tau) x0 + s(tau) eps,        v(x_tau, tau) = a'(tau) x0 + s'(tau) eps

    linear:  a = 1 - tau,          s = tau            (v = eps - x0)
    cosine:  a = cos(pi tau / 2),  s = sin(pi tau / 2)   (SiT's "GVP" path)

The network regresses ``v``. Sampling needs the score, which follows from the velocity because
``E[x0 | x]`` and ``E[eps | x]`` are both linear in ``(x, v)``:

    E[eps | x] = (a' x - a v) / (a' s - a s'),      score(x) = -E[eps | x] / s
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

INTERPOLANTS = ("linear", "cosine")
TIME_SAMPLINGS = ("uniform", "lognormal")


@dataclass(frozen=True)
class Interpolant:
    kind: str = "linear"

    def __post_init__(self) -> None:
        if self.kind not in INTERPOLANTS:
            raise ValueError(f"objective.interpolant: unknown {self.kind!r}; choose {INTERPOLANTS}")

    def coefficients(
        self, tau: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]:
        """``(a, s, a', s')`` at ``tau`` (same shape as ``tau``)."""
        if self.kind == "linear":
            return 1.0 - tau, tau, -torch.ones_like(tau), torch.ones_like(tau)
        half_pi = math.pi / 2
        a, s = torch.cos(half_pi * tau), torch.sin(half_pi * tau)
        return a, s, -half_pi * s, half_pi * a

    @staticmethod
    def _expand(c: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
        return c.reshape(c.shape + (1,) * (like.dim() - c.dim())).to(like.dtype)

    def interpolate(
        self, x0: torch.Tensor, eps: torch.Tensor, tau: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``(x_tau, v)`` for ``x0, eps [B, ...]`` and ``tau [B]``."""
        a, s, da, ds = (self._expand(c, x0) for c in self.coefficients(tau))
        return a * x0 + s * eps, da * x0 + ds * eps

    def eps_from_velocity(self, v: torch.Tensor, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``E[eps | x] = (a' x - a v) / (a' s - a s')`` for ``tau`` a scalar tensor or ``[B]``."""
        a, s, da, ds = (self._expand(c, x) for c in self.coefficients(tau))
        return (da * x - a * v) / (da * s - a * ds)

    def score_from_velocity(self, v: torch.Tensor, x: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """``grad log p_tau(x) = -E[eps | x] / s(tau)`` (undefined at ``tau = 0``)."""
        s = self._expand(self.coefficients(tau)[1], x)
        return -self.eps_from_velocity(v, x, tau) / s

    def sigma(self, tau: torch.Tensor) -> torch.Tensor:
        return self.coefficients(tau)[1]


@dataclass(frozen=True)
class TimeSampler:
    """Draws ``tau [B]``. uniform: ``U[0, 1]``. lognormal (EDM/REPA): ``sigma = exp(P_mean +
    P_std n)``, ``n ~ N(0, 1)``, ``tau = sigma / (1 + sigma)``."""

    kind: str = "uniform"
    P_mean: float = 0.0
    P_std: float = 1.0

    def __post_init__(self) -> None:
        if self.kind not in TIME_SAMPLINGS:
            raise ValueError(f"objective.time_sampling: unknown {self.kind!r}; choose {TIME_SAMPLINGS}")
        if self.P_std <= 0:
            raise ValueError(f"objective.P_std: must be > 0, got {self.P_std}")

    def __call__(
        self, batch_size: int, device: torch.device | str = "cpu", generator: torch.Generator | None = None
    ) -> torch.Tensor:
        if self.kind == "uniform":
            return torch.rand(batch_size, device=device, generator=generator)
        n = torch.randn(batch_size, device=device, generator=generator)
        sigma = (n * self.P_std + self.P_mean).exp()
        return sigma / (1 + sigma)


def velocity_loss(v_pred: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
    """Per-sample ``mean_{c,h,w} (v_theta - v)^2`` in float32: ``[B, ...] -> [B]``."""
    return (v_pred.float() - v.float()).square().flatten(1).mean(1)
