"""Inverse-folding metrics: sequence recovery, perplexity, and refolding through ESMFold.

* recovery: fraction of known residues where the design equals the native amino acid, per
  structure (``[N]``) and pooled over all residues (``sum matches / sum residues``);
* perplexity: ``exp`` of the per-residue negative ELBO of :mod:`reed_protein.objective`, estimated
  on a fixed grid of noise levels (an upper bound of the true perplexity);
* refolding (optional extra ``fair-esm[esmfold]``, needs ESMFold weights): CA RMSD after Kabsch
  superposition between the native backbone and ESMFold's prediction of the design, and ESMFold's
  mean pLDDT. Where ESMFold cannot be loaded, :class:`ESMFoldUnavailable` says why.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch

from reed_protein.data.batch import ProteinBatch
from reed_protein.models.mpnn import DiffusionMPNN
from reed_protein.objective import corrupt, diffusion_loss


def recovery(S_pred: torch.Tensor, S_true: torch.Tensor, known: torch.Tensor) -> torch.Tensor:
    """Per-structure recovery ``[N]`` over ``known [N, L]`` positions."""
    same = ((S_pred == S_true) & known).float().sum(1)
    return same / known.float().sum(1).clamp_min(1.0)


def pooled_recovery(S_pred: torch.Tensor, S_true: torch.Tensor, known: torch.Tensor) -> float:
    return float(((S_pred == S_true) & known).sum() / known.sum().clamp_min(1))


@torch.no_grad()
def nelbo(denoiser: DiffusionMPNN, batch: ProteinBatch, num_tau: int = 8, seed: int = 0) -> torch.Tensor:
    """Per-structure negative ELBO per residue ``[B]`` on the midpoint grid
    ``tau_j = (j + 1/2) / num_tau`` with seeded masks (deterministic)."""
    g = torch.Generator(device=batch.X.device).manual_seed(seed)
    known = batch.known
    state = denoiser.encode(batch.X, batch.mask, batch.residue_index, batch.chain_labels, batch.segment)
    total = torch.zeros(len(batch), device=batch.X.device)
    for j in range(num_tau):
        tau = torch.full((len(batch),), (j + 0.5) / num_tau, device=batch.X.device)
        x_tau, masked = corrupt(batch.S, known, tau, g)
        logits = denoiser.decode(state, x_tau, tau)
        total += diffusion_loss(logits, batch.S, masked, known, tau)
    return total / num_tau


def perplexity(nelbo_per_structure: torch.Tensor, n_residues: torch.Tensor) -> float:
    """Pooled ``exp(sum_b n_b L_b / sum_b n_b)``."""
    n = n_residues.float()
    return math.exp(float((nelbo_per_structure * n).sum() / n.sum().clamp_min(1.0)))


def kabsch_rmsd(P: np.ndarray, Q: np.ndarray) -> float:
    """RMSD between point sets ``[N, 3]`` after optimal rotation and translation of ``P`` onto ``Q``."""
    P = np.asarray(P, dtype=np.float64)
    Q = np.asarray(Q, dtype=np.float64)
    if P.shape != Q.shape or P.ndim != 2 or P.shape[1] != 3:
        raise ValueError(f"kabsch_rmsd: shapes {P.shape} and {Q.shape} must both be [N, 3]")
    P = P - P.mean(0)
    Q = Q - Q.mean(0)
    U, _, Vt = np.linalg.svd(P.T @ Q)
    d = np.sign(np.linalg.det(U @ Vt))
    R = U @ np.diag([1.0, 1.0, d]) @ Vt
    return float(np.sqrt(((P @ R - Q) ** 2).sum(1).mean()))


class ESMFoldUnavailable(RuntimeError):
    pass


@dataclass(frozen=True)
class Refold:
    rmsd: float  # CA RMSD (A) between native and predicted structure
    plddt: float  # mean pLDDT (0-100)


class ESMFold:
    """ESMFold (``esm.pretrained.esmfold_v1``) for refolding designs; loads on first use."""

    def __init__(self, device: str | torch.device = "cpu"):
        try:
            import esm

            self.model = esm.pretrained.esmfold_v1().eval().to(device)
        except Exception as err:  # ImportError (openfold missing) or download failure offline
            raise ESMFoldUnavailable(
                f"ESMFold is unavailable ({type(err).__name__}: {err}); refolding RMSD and pLDDT "
                "need `pip install 'fair-esm[esmfold]'` and the esmfold_v1 weights (downloaded "
                "by torch.hub on first use); skipped"
            ) from err

    @torch.no_grad()
    def refold(self, sequence: str, native_CA: np.ndarray) -> Refold:
        out = self.model.infer(sequence)
        ca = out["positions"][-1, 0, :, 1].float().cpu().numpy()  # [L, 3] atom14 CA
        plddt = out["plddt"][0, :, 1].float().mean().item()
        return Refold(rmsd=kabsch_rmsd(ca, native_CA), plddt=plddt)
