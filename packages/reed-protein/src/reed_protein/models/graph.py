"""Backbone kNN graph and its edge features (ProteinMPNN, Dauparas et al. 2022).

* virtual CB from N, CA, C: ``b = CA - N``, ``c = C - CA``, ``a = b x c``,
  ``CB = -0.58273431 a + 0.56802827 b - 0.54067466 c + CA``;
* ``E_idx [B, L, K]``: the K nearest residues by CA distance (padding pushed to the end);
* RBF features of the 25 atom-pair distances between {N, CA, C, O, CB} of residue i and residue j:
  ``exp(-((d - mu_r) / sigma)^2)``, 16 centres from 2 to 22 A, ``sigma = 20 / 16``;
* relative position ``clip(r_i - r_j, -32, 32)`` one-hot, in three groups that mark chain breaks:
  same segment, same chain across a break, different chain (one class).

Everything depends only on inter-atomic distances, so it is invariant to rotation and translation.
"""

from __future__ import annotations

import torch
import torch.nn as nn

# (atom of residue i, atom of residue j) in ProteinMPNN's order; 0..4 = N, CA, C, O, CB
ATOM_PAIRS = (
    (1, 1),
    (0, 0),
    (2, 2),
    (3, 3),
    (4, 4),
    (1, 0),
    (1, 2),
    (1, 3),
    (1, 4),
    (0, 2),
    (0, 3),
    (0, 4),
    (4, 2),
    (4, 3),
    (3, 2),
    (0, 1),
    (2, 1),
    (3, 1),
    (4, 1),
    (2, 0),
    (3, 0),
    (4, 0),
    (2, 4),
    (3, 4),
    (2, 3),
)


def virtual_cb(X: torch.Tensor) -> torch.Tensor:
    """``X [..., 4, 3]`` (N, CA, C, O) -> ideal CB ``[..., 3]``."""
    N, CA, C = X[..., 0, :], X[..., 1, :], X[..., 2, :]
    b = CA - N
    c = C - CA
    a = torch.cross(b, c, dim=-1)
    return -0.58273431 * a + 0.56802827 * b - 0.54067466 * c + CA


def gather_nodes(h: torch.Tensor, E_idx: torch.Tensor) -> torch.Tensor:
    """``h [B, L, ...]`` at neighbours ``E_idx [B, L, K]`` -> ``[B, L, K, ...]``."""
    B, L, K = E_idx.shape
    flat = E_idx.reshape(B, L * K)
    idx = flat.view(B, L * K, *([1] * (h.dim() - 2))).expand(B, L * K, *h.shape[2:])
    return torch.gather(h, 1, idx).view(B, L, K, *h.shape[2:])


def knn_graph(CA: torch.Tensor, mask: torch.Tensor, k: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Nearest neighbours by CA distance: ``E_idx [B, L, K]`` and edge mask ``[B, L, K]``.

    Residue pairs involving padding are ranked after every real pair, so a real residue's
    neighbour list does not depend on how much padding the batch has.
    """
    B, L, _ = CA.shape
    K = min(k, L)
    D = torch.cdist(CA.float(), CA.float())  # [B, L, L]
    pair = mask[:, :, None] * mask[:, None, :]  # [B, L, L]
    D = torch.where(pair > 0, D, torch.full_like(D, 1e6))
    _, E_idx = torch.topk(D, K, dim=-1, largest=False)  # [B, L, K]
    edge_mask = mask[:, :, None] * gather_nodes(mask, E_idx)  # [B, L, K]
    return E_idx, edge_mask


class RBF(nn.Module):
    def __init__(self, num_rbf: int = 16, d_min: float = 2.0, d_max: float = 22.0):
        super().__init__()
        self.register_buffer("mu", torch.linspace(d_min, d_max, num_rbf), persistent=False)
        self.sigma = (d_max - d_min) / num_rbf

    def forward(self, D: torch.Tensor) -> torch.Tensor:
        return torch.exp(-(((D[..., None] - self.mu) / self.sigma) ** 2))


class RelativePosition(nn.Module):
    """Embedding of ``clip(r_i - r_j)`` in groups {same segment, same chain across a break,
    other chain}: ``2 * (2 * max_offset + 1) + 1`` classes."""

    def __init__(self, dim: int, max_offset: int = 32):
        super().__init__()
        self.max_offset = max_offset
        self.num_classes = 2 * (2 * max_offset + 1) + 1
        self.embed = nn.Embedding(self.num_classes, dim)

    def forward(self, residue_index, chain_labels, segment, E_idx) -> torch.Tensor:
        w = 2 * self.max_offset + 1
        offset = residue_index[:, :, None] - gather_nodes(residue_index, E_idx)  # [B, L, K]
        offset = offset.clamp(-self.max_offset, self.max_offset) + self.max_offset
        same_chain = chain_labels[:, :, None] == gather_nodes(chain_labels, E_idx)
        same_segment = segment[:, :, None] == gather_nodes(segment, E_idx)
        cls = torch.where(same_segment, offset, offset + w)
        cls = torch.where(same_chain, cls, torch.full_like(cls, 2 * w))
        return self.embed(cls)


class BackboneGraph(nn.Module):
    """``X`` -> (edge features ``E [B, L, K, edge_dim]``, ``E_idx``, edge mask)."""

    def __init__(
        self, edge_dim: int, k: int = 30, num_rbf: int = 16, num_pos: int = 16, max_offset: int = 32
    ):
        super().__init__()
        self.k = k
        self.rbf = RBF(num_rbf)
        self.position = RelativePosition(num_pos, max_offset)
        self.embed = nn.Linear(num_pos + num_rbf * len(ATOM_PAIRS), edge_dim, bias=False)
        self.norm = nn.LayerNorm(edge_dim)
        self.register_buffer("pair_i", torch.tensor([p[0] for p in ATOM_PAIRS]), persistent=False)
        self.register_buffer("pair_j", torch.tensor([p[1] for p in ATOM_PAIRS]), persistent=False)

    def forward(self, X, mask, residue_index, chain_labels, segment, E_idx=None):
        X = X.float()
        atoms = torch.cat([X, virtual_cb(X)[:, :, None]], dim=2)  # [B, L, 5, 3]
        if E_idx is None:
            E_idx, edge_mask = knn_graph(atoms[:, :, 1], mask, self.k)
        else:
            edge_mask = mask[:, :, None] * gather_nodes(mask, E_idx)
        atoms_j = gather_nodes(atoms, E_idx)  # [B, L, K, 5, 3]
        a_i = atoms[:, :, None, self.pair_i]  # [B, L, 1, 25, 3]
        a_j = atoms_j[:, :, :, self.pair_j]  # [B, L, K, 25, 3]
        D = torch.sqrt(((a_i - a_j) ** 2).sum(-1) + 1e-6)  # [B, L, K, 25]
        rbf = self.rbf(D).flatten(-2)  # [B, L, K, 25 * num_rbf]
        pos = self.position(residue_index, chain_labels, segment, E_idx)  # [B, L, K, num_pos]
        E = self.norm(self.embed(torch.cat([pos, rbf], -1)))
        return E, E_idx, edge_mask
