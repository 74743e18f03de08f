"""Iterative unmasking: the reverse process of the absorbing-state diffusion.

Start with every designable residue masked (``tau = 1``). At step ``s`` of ``T`` the denoiser gives
``p_theta(x_0,i | x_tau)`` at every masked residue; a token is drawn at each from
``softmax(logits / temperature)`` (argmax at temperature 0), and the residues to reveal are chosen
so that ``ceil(n * (s + 1) / T)`` are revealed after the step: either at random (the exact reverse
process of the forward masking) or the most confident first (highest ``log p`` of the drawn token,
MaskGIT-style). Fixed positions keep their native token throughout and condition the rest.

The score of a design is its mean ``-log p_theta`` (temperature 1) of each token at the step it
was revealed, over designed positions (lower is better, as ProteinMPNN's score).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from reed_protein.data.batch import ProteinBatch
from reed_protein.data.residues import MASK, NUM_AA
from reed_protein.models.mpnn import DiffusionMPNN

ORDERS = ("random", "confidence")


@dataclass(frozen=True)
class SamplerConfig:
    steps: int = 50
    temperature: float = 0.1
    order: str = "random"

    def __post_init__(self) -> None:
        if self.steps < 1:
            raise ValueError(f"sample.steps: must be >= 1, got {self.steps}")
        if self.temperature < 0:
            raise ValueError(f"sample.temperature: must be >= 0, got {self.temperature}")
        if self.order not in ORDERS:
            raise ValueError(f"sample.order: unknown {self.order!r}; choose one of {ORDERS}")


@dataclass
class Designs:
    S: torch.Tensor  # [N, L] tokens; fixed positions hold the native token
    score: torch.Tensor  # [N] mean -log p of the revealed tokens over designed positions
    designed: torch.Tensor  # [N, L] bool: positions the sampler chose
    ids: list[str]  # structure of each design (N = B * num_designs, designs of one in a row)


@torch.no_grad()
def sample(
    denoiser: DiffusionMPNN,
    batch: ProteinBatch,
    cfg: SamplerConfig | None = None,
    num_designs: int = 1,
    fixed: torch.Tensor | None = None,
    generator: torch.Generator | None = None,
) -> Designs:
    """``num_designs`` sequences per structure of ``batch``; ``fixed [B, L]`` bool keeps natives."""
    cfg = cfg or SamplerConfig()
    if num_designs < 1:
        raise ValueError(f"num_designs: must be >= 1, got {num_designs}")
    device = batch.X.device
    real = batch.mask > 0  # [B, L]
    fixed = torch.zeros_like(real) if fixed is None else fixed.to(device).bool() & real
    if fixed.shape != real.shape:
        raise ValueError(f"fixed: shape {tuple(fixed.shape)} does not match the batch {tuple(real.shape)}")
    batch = batch.repeat(num_designs)
    real, fixed = real.repeat_interleave(num_designs, 0), fixed.repeat_interleave(num_designs, 0)
    design = real & ~fixed  # [N, L]
    n_design = design.sum(1)  # [N]
    n_real = real.sum(1).clamp_min(1)

    state = denoiser.encode(batch.X, batch.mask, batch.residue_index, batch.chain_labels, batch.segment)
    x = torch.where(design, torch.full_like(batch.S, MASK), batch.S)
    nll_sum = torch.zeros(len(x), device=device)
    steps = max(1, min(cfg.steps, int(n_design.max().item()) if len(x) else 1))
    for s in range(steps):
        masked = x == MASK  # only designable positions are ever masked
        if not masked.any():
            break
        tau = masked.sum(1).float() / n_real  # [N] fraction still masked
        logits = denoiser.decode(state, x, tau).float()  # [N, L, 20]
        logp = torch.log_softmax(logits, -1)
        if cfg.temperature > 0:
            u = torch.rand(logits.shape, device=device, generator=generator).clamp_(1e-10, 1.0)
            drawn = (logits / cfg.temperature - torch.log(-torch.log(u))).argmax(-1)  # Gumbel-max
        else:
            drawn = logits.argmax(-1)
        logp_drawn = logp.gather(-1, drawn[..., None])[..., 0]  # [N, L]
        if cfg.order == "confidence":
            priority = logp_drawn
        else:
            priority = torch.rand(logits.shape[:2], device=device, generator=generator)
        priority = priority.masked_fill(~masked, -math.inf)
        target = torch.ceil(n_design * (s + 1) / steps).long()  # revealed after this step
        k = target - (n_design - masked.sum(1))  # [N] to reveal now
        rank = priority.argsort(1, descending=True).argsort(1)  # [N, L] 0 = first
        reveal = masked & (rank < k[:, None])
        x = torch.where(reveal, drawn, x)
        nll_sum = nll_sum - (logp_drawn * reveal).sum(1)
    if (x == MASK).any():  # cannot happen with the schedule above; a guard for future edits
        raise RuntimeError("sampler finished with masked positions")
    x = torch.where(x >= NUM_AA, batch.S, x)  # padding
    return Designs(S=x, score=nll_sum / n_design.clamp_min(1), designed=design, ids=batch.ids)
