"""Multi-latent representation alignment.

Wang et al. (2025), Sec. 3-4: the alignment term ``-log p(z_k | x_tau)`` is a von Mises-Fisher-like
density on the cosine between a target ``z_k`` and a projection ``h_k`` of the denoiser's hidden
state ``f^(d_k)`` at depth ``d_k``. Per sample,

    L_align_k = 1 - cos( h_k(pool_k(f^(d_k)(x_tau))), z_k )      (masked mean over tokens / edges)

Several targets ``k`` (encoders, modalities, levels of abstraction) each have a depth, a projector,
a pooling, a weight ``lambda_k`` and a noise-level weighting ``alpha_k`` (:mod:`reed_core.decomposition`).
Normalisation and cosine run in float32 (half precision overflows the squared norms).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
import torch.nn as nn
import torch.nn.functional as F

from reed_core.decomposition import AlphaSpec

POOLINGS = ("token", "mean", "sum", "edge")


class Projector(nn.Module):
    """``h_phi``: an MLP with SiLU, applied on the last axis (REPA's 3-layer projector)."""

    def __init__(self, in_dim: int, out_dim: int, hidden_dim: int = 2048, num_layers: int = 3):
        super().__init__()
        if num_layers < 1:
            raise ValueError(f"projector_layers: must be >= 1, got {num_layers}")
        dims = [in_dim] + [hidden_dim] * (num_layers - 1) + [out_dim]
        layers: list[nn.Module] = []
        for i, (d_in, d_out) in enumerate(zip(dims[:-1], dims[1:])):
            layers.append(nn.Linear(d_in, d_out))
            if i < num_layers - 1:
                layers.append(nn.SiLU())
        self.net = nn.Sequential(*layers)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.net(f)


def pool(
    f: torch.Tensor, kind: str, mask: torch.Tensor | None = None
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """Pool hidden states ``f`` for alignment; returns ``(pooled, mask_of_pooled)``.

    token: ``[B, N, D] -> [B, N, D]``, mask ``[B, N]`` kept.
    mean:  ``[B, N, D] -> [B, D]`` = ``sum_n m_n f_n / sum_n m_n`` (padding ignored).
    sum:   ``[B, N, D] -> [B, D]`` = ``sum_n m_n f_n``.
    edge:  ``[B, N, K, D] -> [B, N*K, D]``, mask ``[B, N, K] -> [B, N*K]`` (one token per edge).
    """
    if kind == "token":
        return f, mask
    if kind == "edge":
        if f.dim() != 4:
            raise ValueError(f"pooling 'edge' expects hidden states [B, N, K, D], got {tuple(f.shape)}")
        B, N, K, D = f.shape
        return f.reshape(B, N * K, D), None if mask is None else mask.reshape(B, N * K)
    if kind in ("mean", "sum"):
        if f.dim() != 3:
            raise ValueError(f"pooling {kind!r} expects hidden states [B, N, D], got {tuple(f.shape)}")
        if mask is None:
            return (f.mean(1) if kind == "mean" else f.sum(1)), None
        m = mask.to(f.dtype).unsqueeze(-1)  # [B, N, 1]
        total = (f * m).sum(1)  # [B, D]
        if kind == "sum":
            return total, None
        return total / m.sum(1).clamp_min(1.0), None
    raise ValueError(f"pooling: unknown {kind!r}; choose one of {POOLINGS}")


def cosine_alignment_loss(h: torch.Tensor, z: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
    """Per-sample ``1 - cos(h, z)`` in float32.

    ``[B, D]`` inputs give ``[B]``; ``[B, N, D]`` inputs give the masked mean over tokens, ``[B]``.
    """
    if h.shape != z.shape:
        raise ValueError(f"alignment: projected hidden {tuple(h.shape)} != target {tuple(z.shape)}")
    cos = F.cosine_similarity(h.float(), z.float(), dim=-1, eps=1e-6)  # [B] or [B, N]
    loss = 1.0 - cos
    if loss.dim() == 1:
        return loss
    loss = loss.flatten(1)
    if mask is None:
        return loss.mean(1)
    m = mask.flatten(1).float()
    return (loss * m).sum(1) / m.sum(1).clamp_min(1.0)


@dataclass(frozen=True)
class AlignmentTarget:
    """One representation ``z_k`` and how the denoiser is aligned to it.

    depth: 1-based index into the model's ``tap_points()``, or a module path such as ``"blocks.7"``.
    dim: width of ``z_k``. weight: ``lambda_k``. alpha: noise-level weighting ``alpha_k(tau)``.
    """

    name: str
    depth: int | str
    dim: int
    pooling: str = "token"
    weight: float = 1.0
    alpha: AlphaSpec = field(default_factory=AlphaSpec)
    projector_hidden: int = 2048
    projector_layers: int = 3

    def __post_init__(self) -> None:
        where = f"targets[{self.name!r}]"
        if not self.name:
            raise ValueError("targets: a target needs a non-empty name")
        if self.pooling not in POOLINGS:
            raise ValueError(f"{where}.pooling: unknown {self.pooling!r}; choose one of {POOLINGS}")
        if self.weight < 0:
            raise ValueError(f"{where}.weight: must be >= 0, got {self.weight}")
        if self.dim <= 0:
            raise ValueError(f"{where}.dim: must be > 0, got {self.dim}")
        if isinstance(self.depth, int) and self.depth < 1:
            raise ValueError(f"{where}.depth: must be >= 1 (1-based block index), got {self.depth}")


@dataclass
class AlignmentTerm:
    """Per-sample unweighted loss ``L_align_k`` ``[B]`` and its noise weight ``alpha_k(tau)`` ``[B]``."""

    loss: torch.Tensor
    alpha: torch.Tensor


class MultiLatentAligner(nn.Module):
    """One projector per target; returns one :class:`AlignmentTerm` per target."""

    def __init__(
        self, targets: list[AlignmentTarget] | tuple[AlignmentTarget, ...], hidden_dims: dict[str, int]
    ):
        super().__init__()
        names = [t.name for t in targets]
        if len(set(names)) != len(names):
            raise ValueError(f"targets: names must be unique, got {names}")
        missing = [n for n in names if n not in hidden_dims]
        if missing:
            raise ValueError(f"aligner: no hidden width given for targets {missing}")
        self.targets = {t.name: t for t in targets}
        self.projectors = nn.ModuleDict(
            {
                t.name: Projector(hidden_dims[t.name], t.dim, t.projector_hidden, t.projector_layers)
                for t in targets
            }
        )

    def forward(
        self,
        hiddens: dict[str, torch.Tensor],
        z_targets: dict[str, torch.Tensor],
        tau: torch.Tensor,
        masks: dict[str, torch.Tensor] | None = None,
    ) -> dict[str, AlignmentTerm]:
        masks = masks or {}
        terms = {}
        for name, target in self.targets.items():
            if name not in hiddens:
                raise KeyError(f"aligner: no hidden state tapped for target {name!r}")
            if name not in z_targets:
                raise KeyError(f"aligner: no target representation z given for {name!r}")
            f, mask = pool(hiddens[name], target.pooling, masks.get(name))
            h = self.projectors[name](f)
            z = z_targets[name]
            if z.shape != h.shape:
                raise ValueError(
                    f"targets[{name!r}]: z has shape {tuple(z.shape)} but the projected hidden "
                    f"state (pooling {target.pooling!r}) has {tuple(h.shape)}"
                )
            terms[name] = AlignmentTerm(
                loss=cosine_alignment_loss(h, z, mask), alpha=target.alpha.weight(tau)
            )
        return terms
