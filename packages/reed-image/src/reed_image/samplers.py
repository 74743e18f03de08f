"""Samplers for a velocity model ``v_theta(x, tau, y)``: Euler/Heun ODE, Euler-Maruyama SDE, CFG.

Integration runs from ``tau = 1`` (noise) to ``tau = 0`` (data).

ODE (probability flow):  dx = v dtau.  Euler, or Heun (2nd order; the last step to 0 is Euler).

SDE (SiT, Ma et al. 2024, Sec. 3.3): for any ``w(tau) >= 0`` the reverse-time SDE

    dx = [v - w(tau) score(x, tau)] dtau + sqrt(2 w(tau)) dW,        dtau < 0,

has the same marginals; the score follows from ``v`` (:mod:`reed_image.interpolants`). SiT's
default ``w = sigma(tau)`` ("sigma" form, norm 1) is REPA's diffusion coefficient ``2t`` on the
linear path. As in SiT/REPA the grid is ``linspace(1, last_step, steps)`` followed by one
noiseless Euler step to 0.

Classifier-free guidance (Ho & Salimans, 2022) with a guidance interval (Kynkaanniemi et al.,
2024): ``v = v_null + s (v_y - v_null)`` only where ``low <= tau <= high``, plain ``v_y`` elsewhere.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass

import torch

from reed_image.interpolants import Interpolant

METHODS = ("euler", "heun", "sde")
DIFFUSION_FORMS = ("sigma", "constant")

VelocityFn = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass(frozen=True)
class SamplerConfig:
    method: str = "sde"
    steps: int = 50
    cfg_scale: float = 1.0
    guidance_low: float = 0.0
    guidance_high: float = 1.0
    diffusion_form: str = "sigma"
    diffusion_norm: float = 1.0
    last_step: float = 0.04
    seed: int = 0

    def __post_init__(self) -> None:
        if self.method not in METHODS:
            raise ValueError(f"sample.method: unknown {self.method!r}; choose one of {METHODS}")
        if self.steps < 1:
            raise ValueError(f"sample.steps: must be >= 1, got {self.steps}")
        if self.cfg_scale < 1.0:
            raise ValueError(f"sample.cfg_scale: must be >= 1 (1 = no guidance), got {self.cfg_scale}")
        if not 0.0 <= self.guidance_low <= self.guidance_high <= 1.0:
            raise ValueError(
                f"sample.guidance_low/high: need 0 <= low <= high <= 1, got "
                f"{self.guidance_low}, {self.guidance_high}"
            )
        if self.diffusion_form not in DIFFUSION_FORMS:
            raise ValueError(
                f"sample.diffusion_form: unknown {self.diffusion_form!r}; choose {DIFFUSION_FORMS}"
            )
        if self.method == "sde" and not 0.0 < self.last_step < 1.0:
            raise ValueError(f"sample.last_step: must lie in (0, 1), got {self.last_step}")


def guided_velocity(
    model: VelocityFn,
    x: torch.Tensor,
    tau: float,
    y: torch.Tensor,
    cfg: SamplerConfig,
    null_label: int,
) -> torch.Tensor:
    """``v(x, tau, y)`` with CFG inside ``[guidance_low, guidance_high]`` (one batched call)."""
    B = x.shape[0]
    if cfg.cfg_scale > 1.0 and cfg.guidance_low <= tau <= cfg.guidance_high:
        x_in = torch.cat([x, x])
        y_in = torch.cat([y, torch.full_like(y, null_label)])
        tau_in = torch.full((2 * B,), tau, device=x.device, dtype=torch.float32)
        v_y, v_null = model(x_in, tau_in, y_in).float().chunk(2)
        return v_null + cfg.cfg_scale * (v_y - v_null)
    return model(x, torch.full((B,), tau, device=x.device, dtype=torch.float32), y).float()


def diffusion_coefficient(cfg: SamplerConfig, interpolant: Interpolant, tau: float) -> float:
    """``w(tau)``: ``norm * sigma(tau)`` ("sigma") or ``norm`` ("constant")."""
    if cfg.diffusion_form == "constant":
        return cfg.diffusion_norm
    return cfg.diffusion_norm * float(interpolant.sigma(torch.tensor(tau)))


@torch.no_grad()
def sample(
    model: VelocityFn,
    shape: tuple[int, ...],
    y: torch.Tensor,
    cfg: SamplerConfig,
    interpolant: Interpolant | None = None,
    null_label: int = 0,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Draw ``x0`` of ``shape = (B, C, H, W)`` for labels ``y [B]``; seeded by ``cfg.seed``.

    ``interpolant`` (default linear) turns ``v`` into the score for the SDE. With the same seed,
    labels and weights the output is bit-for-bit repeatable on one device.
    """
    device = y.device
    interpolant = interpolant or Interpolant()
    if generator is None:
        generator = torch.Generator(device=device).manual_seed(cfg.seed)
    x = torch.randn(shape, device=device, generator=generator)  # x_1 ~ N(0, I)

    def v_at(x_: torch.Tensor, tau: float) -> torch.Tensor:
        return guided_velocity(model, x_, tau, y, cfg, null_label)

    if cfg.method in ("euler", "heun"):
        taus = torch.linspace(1.0, 0.0, cfg.steps + 1).tolist()
        for tau, tau_next in zip(taus[:-1], taus[1:]):
            dt = tau_next - tau
            d = v_at(x, tau)
            x_next = x + dt * d
            if cfg.method == "heun" and tau_next > 0:
                x_next = x + dt * 0.5 * (d + v_at(x_next, tau_next))
            x = x_next
        return x

    # Euler-Maruyama on linspace(1, last_step, steps), then a noiseless step to 0
    taus = torch.linspace(1.0, cfg.last_step, cfg.steps).tolist() + [0.0]
    for i, (tau, tau_next) in enumerate(zip(taus[:-1], taus[1:])):
        dt = tau_next - tau  # < 0
        v = v_at(x, tau)
        w = diffusion_coefficient(cfg, interpolant, tau)
        score = interpolant.score_from_velocity(v, x, torch.tensor(tau, device=device))
        drift = v - w * score
        x = x + dt * drift
        if i < len(taus) - 2:
            n = torch.randn(x.shape, device=device, generator=generator)
            x = x + (2.0 * w * abs(dt)) ** 0.5 * n
    return x
