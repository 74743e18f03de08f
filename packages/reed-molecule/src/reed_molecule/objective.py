"""Joint flow matching over coordinates, atom types, charges and bonds (SemlaFlow-like).

Noise level ``tau`` in [0, 1] (reed-core convention: ``tau = 0`` data, ``tau = 1`` prior).

Coordinates (conditional flow matching, Lipman et al. 2023) with the OT-aligned centred Gaussian
prior ``x1`` (:mod:`reed_molecule.ot`):

    x_tau = (1 - tau) x0 + tau x1,       L_x = mean_i || x0_hat_i - x0_i ||^2

Discrete variables (atom types ``a``, charges ``c``, bonds ``e``): masking discrete flows
(Campbell et al. 2024): each token is replaced by the mask token with probability ``tau``
(bonds: one draw per atom pair, mirrored), and the model predicts the clean token:

    L_a = mean_i CE(a_logits_i, a_i),  likewise L_c, and L_e = mean_{i<j} CE(e_logits_ij, e_ij)

Per-sample loss (weights of MiDi, Vignac et al. 2023):

    L_gen[b] = lambda_x L_x[b] + lambda_a L_a[b] + lambda_c L_c[b] + lambda_e L_e[b]      [B]

Self-conditioning (Chen et al. 2023): with probability 1/2 the model first predicts without
gradient and sees that prediction as input.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F

from reed_molecule.data.batch import MoleculeBatch

TAU_SAMPLING = ("uniform", "beta")


@dataclass(frozen=True)
class FlowConfig:
    prior_sigma: float = 1.0  # Angstrom
    ot: str = "permutation+rotation"  # none | rotation | permutation | permutation+rotation
    tau_sampling: str = "uniform"  # uniform | beta (tau ~ Beta(1, 2): more weight near the data)
    lambda_x: float = 3.0
    lambda_a: float = 0.4
    lambda_c: float = 1.0
    lambda_e: float = 2.0

    def __post_init__(self) -> None:
        if self.tau_sampling not in TAU_SAMPLING:
            raise ValueError(
                f"flow.tau_sampling: unknown {self.tau_sampling!r}; choose one of {TAU_SAMPLING}"
            )
        if self.prior_sigma <= 0:
            raise ValueError(f"flow.prior_sigma: must be > 0, got {self.prior_sigma}")


@dataclass
class NoisyMolecule:
    """``x_tau [B,N,3]``, ``a_tau, c_tau [B,N]``, ``e_tau [B,N,N]`` (mask token = num classes)."""

    x: torch.Tensor
    a: torch.Tensor
    c: torch.Tensor
    e: torch.Tensor


@dataclass
class FlowLoss:
    per_sample: torch.Tensor  # L_gen [B]
    terms: dict[str, torch.Tensor]  # detached means of each part
    tau: torch.Tensor  # [B]


def sample_tau(B: int, kind: str, device, generator: torch.Generator | None = None) -> torch.Tensor:
    u = torch.rand(B, device=device, generator=generator)
    if kind == "uniform":
        return u
    return 1.0 - torch.sqrt(u)  # Beta(1, 2) by inversion: density 2 (1 - tau)


def symmetric_mask_draw(
    p: torch.Tensor, B: int, N: int, device, generator: torch.Generator | None = None
) -> torch.Tensor:
    """Boolean ``[B, N, N]`` with one Bernoulli(p_b) draw per unordered pair, mirrored."""
    u = torch.rand(B, N, N, device=device, generator=generator)
    u = torch.triu(u, 1)
    u = u + u.transpose(1, 2) + torch.eye(N, device=device)  # diagonal (no pair) never masked
    return u < p.view(B, 1, 1)


def corrupt(
    batch: MoleculeBatch,
    tau: torch.Tensor,
    num_classes: tuple[int, int, int],
    generator: torch.Generator | None = None,
) -> NoisyMolecule:
    """Sample ``x_tau`` from ``(x0, x1)`` and mask each discrete token with probability ``tau``."""
    if batch.x1 is None:
        raise ValueError("flow: the batch has no prior sample x1 (build it with an rng)")
    B, N = batch.a.shape
    dev = batch.x0.device
    T, C, E = num_classes
    t3 = tau.view(B, 1, 1)
    x = (1.0 - t3) * batch.x0 + t3 * batch.x1
    masked_node = torch.rand(B, N, device=dev, generator=generator) < tau.view(B, 1)
    masked_charge = torch.rand(B, N, device=dev, generator=generator) < tau.view(B, 1)
    a = torch.where(masked_node, torch.full_like(batch.a, T), batch.a)
    c = torch.where(masked_charge, torch.full_like(batch.c, C), batch.c)
    e = torch.where(symmetric_mask_draw(tau, B, N, dev, generator), torch.full_like(batch.e, E), batch.e)
    return NoisyMolecule(x=x, a=a, c=c, e=e)


def _masked_node_mean(v: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    return (v * m).sum(-1) / m.sum(-1).clamp_min(1.0)


def per_sample_losses(pred, batch: MoleculeBatch) -> dict[str, torch.Tensor]:
    """Each part of the loss per molecule, ``[B]``, in float32 over real atoms / atom pairs."""
    x0_hat, a_logits, c_logits, e_logits = pred
    m = batch.mask.float()  # [B, N]
    B, N = m.shape
    L_x = _masked_node_mean(((x0_hat.float() - batch.x0) ** 2).sum(-1), m)
    L_a = _masked_node_mean(F.cross_entropy(a_logits.float().transpose(1, 2), batch.a, reduction="none"), m)
    L_c = _masked_node_mean(F.cross_entropy(c_logits.float().transpose(1, 2), batch.c, reduction="none"), m)
    pair = (m.unsqueeze(1) * m.unsqueeze(2)) * torch.triu(torch.ones(N, N, device=m.device), 1)
    ce_e = F.cross_entropy(e_logits.float().permute(0, 3, 1, 2), batch.e, reduction="none")
    L_e = (ce_e * pair).sum((1, 2)) / pair.sum((1, 2)).clamp_min(1.0)
    return {"x": L_x, "a": L_a, "c": L_c, "e": L_e}


class MolecularFlow:
    """The generative objective: ``loss(model, batch) -> FlowLoss`` with ``L_gen [B]``."""

    def __init__(self, cfg: FlowConfig, num_classes: tuple[int, int, int]):
        self.cfg = cfg
        self.num_classes = num_classes

    def self_condition_inputs(self, pred):
        x0_hat, a_logits, c_logits, e_logits = pred
        return (
            x0_hat.detach(),
            a_logits.detach().softmax(-1),
            c_logits.detach().softmax(-1),
            e_logits.detach().softmax(-1),
        )

    def loss(
        self,
        model,
        batch: MoleculeBatch,
        tau: torch.Tensor | None = None,
        generator: torch.Generator | None = None,
        self_condition: bool = False,
    ) -> FlowLoss:
        """``self_condition``: run the no-grad first pass this step (the caller draws it with
        probability 1/2 from a step-seeded RNG, so no device-to-host sync is needed)."""
        cfg = self.cfg
        B = len(batch)
        if tau is None:
            tau = sample_tau(B, cfg.tau_sampling, batch.x0.device, generator)
        noisy = corrupt(batch, tau, self.num_classes, generator)
        self_cond = None
        if self_condition:
            with torch.no_grad():
                self_cond = self.self_condition_inputs(
                    model(noisy.x, noisy.a, noisy.c, noisy.e, batch.mask, tau)
                )
        pred = model(noisy.x, noisy.a, noisy.c, noisy.e, batch.mask, tau, self_cond)
        parts = per_sample_losses(pred, batch)
        L_gen = (
            cfg.lambda_x * parts["x"]
            + cfg.lambda_a * parts["a"]
            + cfg.lambda_c * parts["c"]
            + cfg.lambda_e * parts["e"]
        )
        return FlowLoss(
            per_sample=L_gen, terms={f"loss_{k}": v.mean().detach() for k, v in parts.items()}, tau=tau
        )
