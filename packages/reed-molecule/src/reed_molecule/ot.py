"""Centred Gaussian prior and equivariant optimal-transport alignment of prior to data.

Prior: ``x1 ~ N(0, sigma^2 I)`` on the real atoms, projected to zero centre of mass (the
translation-free subspace, Hoogeboom et al. 2022).

Equivariant OT (Klein et al. 2023; Song et al. 2023; SemlaFlow, Irwin et al. 2024): before
interpolating, the prior sample is matched to the molecule by minimising

    || x0 - P R x1 ||^2     over permutations P (Hungarian) and rotations R (Kabsch)

alternately. Each step solves its sub-problem exactly, so the distance never increases. Rotating
or permuting an isotropic Gaussian sample leaves its law unchanged, so the coupling keeps the
prior marginal while shortening the paths the flow must learn.
"""

from __future__ import annotations

import numpy as np
from scipy.optimize import linear_sum_assignment

OT_KINDS = ("none", "rotation", "permutation", "permutation+rotation")


def centred_gaussian(
    mask: np.ndarray, sigma: float = 1.0, rng: np.random.Generator | None = None
) -> np.ndarray:
    """``x1 [B, N, 3]``: Gaussian on real atoms (``mask [B, N]``), centred, zero on padding."""
    rng = rng or np.random.default_rng()
    x1 = rng.standard_normal((*mask.shape, 3)).astype(np.float32) * sigma
    return centre(x1, mask)


def centre(x: np.ndarray, mask: np.ndarray) -> np.ndarray:
    m = mask[..., None].astype(x.dtype)
    com = (x * m).sum(-2, keepdims=True) / np.maximum(m.sum(-2, keepdims=True), 1.0)
    return (x - com) * m


def kabsch(x1: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Rotation ``R`` (det +1) minimising ``sum_i ||x0_i - R x1_i||^2`` for centred ``[n, 3]``."""
    H = x1.T @ x0  # [3, 3]
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(Vt.T @ U.T))
    D = np.diag([1.0, 1.0, d if d != 0 else 1.0])
    return (Vt.T @ D @ U.T).astype(x1.dtype)


def hungarian(x1: np.ndarray, x0: np.ndarray) -> np.ndarray:
    """Permutation ``perm`` minimising ``sum_i ||x0_i - x1_perm[i]||^2`` (``[n, 3]`` each)."""
    cost = ((x0[:, None, :] - x1[None, :, :]) ** 2).sum(-1)  # [n, n]
    rows, cols = linear_sum_assignment(cost)
    perm = np.empty(len(x0), dtype=np.int64)
    perm[rows] = cols
    return perm


def kabsch_batched(x1: np.ndarray, x0: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """Rotate each ``x1[b]`` onto ``x0[b]`` (centred, padding zero): ``[B, N, 3] -> [B, N, 3]``."""
    m = mask[..., None].astype(x1.dtype)
    H = np.einsum("bni,bnj->bij", x1 * m, x0 * m)  # [B, 3, 3]
    U, _, Vt = np.linalg.svd(H)
    d = np.sign(np.linalg.det(np.einsum("bji,bkj->bik", Vt, U)))  # det(V U^T)
    d[d == 0] = 1.0
    D = np.zeros_like(H)
    D[:, 0, 0] = D[:, 1, 1] = 1.0
    D[:, 2, 2] = d
    R = np.einsum("bji,bjk,blk->bil", Vt, D, U)  # V D U^T
    return np.einsum("bij,bnj->bni", R, x1).astype(x1.dtype) * m


def align_prior(
    x1: np.ndarray, x0: np.ndarray, mask: np.ndarray, kind: str = "permutation+rotation", rounds: int = 1
) -> np.ndarray:
    """Return the prior sample ``x1 [B, N, 3]`` re-ordered and rotated onto ``x0`` (per molecule).

    Both inputs are centred on the real atoms, which form a prefix of each row; padding stays 0.
    """
    if kind not in OT_KINDS:
        raise ValueError(f"flow.ot: unknown {kind!r}; choose one of {OT_KINDS}")
    if kind == "none":
        return x1
    out = x1.copy()
    counts = mask.sum(-1)
    for _ in range(rounds):
        if "permutation" in kind:
            cost = ((x0[:, :, None, :] - out[:, None, :, :]) ** 2).sum(-1)  # [B, N(data), N(prior)]
            for b, n in enumerate(counts.tolist()):
                if n >= 2:  # as hungarian(), on this molecule's block of the batch's costs
                    rows, cols = linear_sum_assignment(cost[b, :n, :n])
                    perm = np.empty(n, dtype=np.int64)
                    perm[rows] = cols
                    out[b, :n] = out[b, :n][perm]
        if "rotation" in kind:
            out = kabsch_batched(out, x0, mask)
    return out


def squared_distance(x1: np.ndarray, x0: np.ndarray, mask: np.ndarray) -> np.ndarray:
    """``sum_i ||x0_i - x1_i||^2`` per molecule, ``[B]``."""
    return (((x0 - x1) ** 2).sum(-1) * mask).sum(-1)
