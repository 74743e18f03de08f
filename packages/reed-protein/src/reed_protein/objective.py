"""Absorbing-state (masking) discrete diffusion over the 20 amino acids.

Forward process at noise level ``tau`` in [0, 1] (reed-core's convention: 0 clean, 1 all masked):
each residue is replaced by the mask token independently with probability ``tau``,

    q(x_tau,i | x_0,i) = (1 - tau) [x_tau,i = x_0,i] + tau [x_tau,i = MASK].

With the denoiser predicting ``p_theta(x_0,i | x_tau)`` and carrying unmasked tokens over, the
negative ELBO (MDLM, Sahoo et al. 2024, Eq. 10, for the linear schedule ``alpha_tau = 1 - tau``)
is, per residue of a structure with ``n`` known residues,

    L_gen = E_tau [ (1 / tau) * sum_{i masked} -log p_theta(x_0,i | x_tau) ] / n,

returned per sample (``[B]``) so that reed-core can weight it. ``exp(L_gen)`` bounds the per-residue
perplexity from above. Residues of unknown type (``X``) are shown as ``X``, never masked or scored.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reed_protein.data.residues import MASK, NUM_AA

TAU_SAMPLING = ("uniform", "stratified")


@dataclass(frozen=True)
class DiffusionConfig:
    tau_min: float = 1e-3  # tau ~ U[tau_min, 1] keeps the 1/tau weight finite
    tau_sampling: str = "stratified"  # stratified: one tau per B-quantile (lower variance)

    def __post_init__(self) -> None:
        if not 0.0 < self.tau_min < 1.0:
            raise ValueError(f"diffusion.tau_min: must lie in (0, 1), got {self.tau_min}")
        if self.tau_sampling not in TAU_SAMPLING:
            raise ValueError(
                f"diffusion.tau_sampling: unknown {self.tau_sampling!r}; choose one of {TAU_SAMPLING}"
            )


def sample_tau(
    B: int, cfg: DiffusionConfig, device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``[B]`` noise levels in ``[tau_min, 1]``."""
    u = torch.rand(B, device=device, generator=generator)
    if cfg.tau_sampling == "stratified":
        u = (u + torch.arange(B, device=device)) / B
        u = u[torch.randperm(B, device=device, generator=generator)]
    return cfg.tau_min + (1.0 - cfg.tau_min) * u


def corrupt(
    S: torch.Tensor, known: torch.Tensor, tau: torch.Tensor, generator: torch.Generator | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``x_tau ~ q(. | S)``: returns ``(x_tau [B, L], masked [B, L] bool)``.

    Known residues are masked with probability ``tau [B]``; unknown residues keep their ``X``
    (padding is never seen by real residues: its edges are masked in the model).
    """
    u = torch.rand(S.shape, device=S.device, generator=generator)
    masked = known & (u < tau[:, None])
    return torch.where(masked, torch.full_like(S, MASK), S), masked


def diffusion_loss(
    logits: torch.Tensor, S: torch.Tensor, masked: torch.Tensor, known: torch.Tensor, tau: torch.Tensor
) -> torch.Tensor:
    """Per-sample negative ELBO per residue ``[B]`` (module docstring), in float32."""
    nll = F.cross_entropy(logits.float().transpose(1, 2), S.clamp(max=NUM_AA - 1), reduction="none")  # [B, L]
    total = (nll * masked.float()).sum(1)  # [B]
    n = known.float().sum(1).clamp_min(1.0)
    return total / (tau.float() * n)
