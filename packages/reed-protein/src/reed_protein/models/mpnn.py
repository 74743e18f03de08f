"""Diffusion MPNN: a ProteinMPNN-style encoder-decoder that denoises a partly masked sequence.

The encoder (message passing with edge updates) reads the backbone graph only; the decoder reads
the encoder's node and edge states, the noisy sequence ``x_tau`` (20 amino acids, ``X`` and the
absorbing mask token) and the noise level ``tau``, and predicts logits over the 20 amino acids at
every position. Unlike ProteinMPNN's autoregressive decoder, every decoder layer sees all
neighbours' current tokens (masked ones as the mask token) and also updates the edge states.

Tap points (for :class:`reed_core.taps.FeatureTaps`): ``encoder.{i}.node_out``,
``decoder.{i}.node_out`` (node states ``[B, L, H]``) and ``encoder.{i}.edge_out``,
``decoder.{i}.edge_out`` (edge states ``[B, L, K, H]`` on the kNN edges ``E_idx``).
``tap_points()`` lists the node taps, encoder first, so ``depth=d`` is the d-th layer overall.
The network knows nothing of the noise process: the objective owns it.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn

from reed_protein.data.residues import NUM_AA, VOCAB
from reed_protein.models.graph import BackboneGraph, gather_nodes


@dataclass(frozen=True)
class ModelConfig:
    hidden: int = 128
    encoder_layers: int = 3
    decoder_layers: int = 3
    k_neighbors: int = 30
    num_rbf: int = 16
    dropout: float = 0.1
    backbone_noise: float = 0.02  # A, Gaussian noise on training backbones (ProteinMPNN: 0.02)

    def __post_init__(self) -> None:
        for key in ("hidden", "encoder_layers", "decoder_layers", "k_neighbors", "num_rbf"):
            if getattr(self, key) < 1:
                raise ValueError(f"model.{key}: must be >= 1, got {getattr(self, key)}")
        if not 0.0 <= self.dropout < 1.0:
            raise ValueError(f"model.dropout: must be in [0, 1), got {self.dropout}")


class MPNNLayer(nn.Module):
    """Message passing with node and edge updates (ProteinMPNN's EncLayer).

    ``m_ij = W3 g(W2 g(W1 [h_i, e_ij, s_j, h_j]))``;
    ``h_i <- LN(h_i + sum_j mask_ij m_ij / scale)``, ``h_i <- LN(h_i + FFN(h_i))``;
    ``e_ij <- LN(e_ij + W13 g(W12 g(W11 [h_i, e_ij, s_j, h_j])))``.
    ``s_j`` (neighbour token embeddings) is present in decoder layers only.
    """

    def __init__(self, hidden: int, num_in: int, dropout: float = 0.1, scale: float = 30.0):
        super().__init__()
        self.scale = scale
        self.W1, self.W2, self.W3 = (
            nn.Linear(hidden + num_in, hidden),
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, hidden),
        )
        self.W11, self.W12, self.W13 = (
            nn.Linear(hidden + num_in, hidden),
            nn.Linear(hidden, hidden),
            nn.Linear(hidden, hidden),
        )
        self.ffn = nn.Sequential(nn.Linear(hidden, 4 * hidden), nn.GELU(), nn.Linear(4 * hidden, hidden))
        self.norm1, self.norm2, self.norm3 = (
            nn.LayerNorm(hidden),
            nn.LayerNorm(hidden),
            nn.LayerNorm(hidden),
        )
        self.dropout = nn.Dropout(dropout)
        self.act = nn.GELU()
        self.node_out = nn.Identity()  # tap points
        self.edge_out = nn.Identity()

    def _message(self, h_V, h_E, E_idx, h_S, W):
        parts = [h_E] + ([gather_nodes(h_S, E_idx)] if h_S is not None else [])
        parts.append(gather_nodes(h_V, E_idx))
        h_EV = torch.cat([h_V[:, :, None].expand(-1, -1, E_idx.shape[-1], -1)] + parts, -1)
        return W[2](self.act(W[1](self.act(W[0](h_EV)))))  # [B, L, K, H]

    def forward(self, h_V, h_E, E_idx, mask, edge_mask, h_S=None):
        m = self._message(h_V, h_E, E_idx, h_S, (self.W1, self.W2, self.W3))
        dh = (edge_mask[..., None] * m).sum(-2) / self.scale  # [B, L, H]
        h_V = self.norm1(h_V + self.dropout(dh))
        h_V = self.norm2(h_V + self.dropout(self.ffn(h_V)))
        h_V = mask[..., None] * h_V
        m = self._message(h_V, h_E, E_idx, h_S, (self.W11, self.W12, self.W13))
        h_E = self.norm3(h_E + self.dropout(m))
        return self.node_out(h_V), self.edge_out(h_E)


def timestep_embedding(tau: torch.Tensor, dim: int, max_period: float = 10000.0) -> torch.Tensor:
    """Sinusoidal features of ``1000 * tau`` ``[B] -> [B, dim]`` (DiT's TimestepEmbedder)."""
    half = dim // 2
    freqs = torch.exp(-math.log(max_period) * torch.arange(half, device=tau.device) / half)
    args = 1000.0 * tau.float()[:, None] * freqs[None]
    return torch.cat([torch.cos(args), torch.sin(args)], -1)


@dataclass
class EncoderState:
    """The structure-only part of a forward pass, reusable across sampling steps."""

    h_V: torch.Tensor  # [B, L, H]
    h_E: torch.Tensor  # [B, L, K, H]
    E_idx: torch.Tensor  # [B, L, K]
    edge_mask: torch.Tensor  # [B, L, K]
    mask: torch.Tensor  # [B, L]


class DiffusionMPNN(nn.Module):
    """``f(X, x_tau, tau) -> logits [B, L, 20]`` over the 20 amino acids."""

    def __init__(self, cfg: ModelConfig | None = None):
        super().__init__()
        self.cfg = cfg = cfg or ModelConfig()
        H = cfg.hidden
        self.graph = BackboneGraph(H, k=cfg.k_neighbors, num_rbf=cfg.num_rbf)
        self.W_e = nn.Linear(H, H)
        self.W_s = nn.Embedding(VOCAB, H)
        self.t_embed = nn.Sequential(nn.Linear(H, H), nn.SiLU(), nn.Linear(H, H))
        self.encoder = nn.ModuleList([MPNNLayer(H, 2 * H, cfg.dropout) for _ in range(cfg.encoder_layers)])
        self.decoder = nn.ModuleList([MPNNLayer(H, 3 * H, cfg.dropout) for _ in range(cfg.decoder_layers)])
        self.W_out = nn.Linear(H, NUM_AA)
        for p in self.parameters():
            if p.dim() > 1:
                nn.init.xavier_uniform_(p)

    def tap_points(self) -> list[str]:
        return [f"encoder.{i}.node_out" for i in range(len(self.encoder))] + [
            f"decoder.{i}.node_out" for i in range(len(self.decoder))
        ]

    def tap_dims(self) -> dict[str, int]:
        """Width of every tap point (node and edge taps alike are ``hidden`` wide)."""
        H = self.cfg.hidden
        return {
            f"{part}.{i}.{kind}": H
            for part, n in (("encoder", len(self.encoder)), ("decoder", len(self.decoder)))
            for i in range(n)
            for kind in ("node_out", "edge_out")
        }

    def encode(self, X, mask, residue_index, chain_labels, segment, E_idx=None) -> EncoderState:
        """Backbone ``X [B, L, 4, 3]`` -> encoder node and edge states on the kNN graph.

        ``E_idx`` (optional) fixes the neighbour lists, e.g. those of the clean backbone when
        ``X`` carries training noise, so per-edge targets stay on the same edges.
        """
        mask = mask.float()
        E, E_idx, edge_mask = self.graph(X, mask, residue_index, chain_labels, segment, E_idx)
        h_E = self.W_e(E)  # [B, L, K, H]
        h_V = torch.zeros(*mask.shape, h_E.shape[-1], device=X.device, dtype=h_E.dtype)
        for layer in self.encoder:
            h_V, h_E = layer(h_V, h_E, E_idx, mask, edge_mask)
        return EncoderState(h_V, h_E, E_idx, edge_mask, mask)

    def decode(self, state: EncoderState, x_tau: torch.Tensor, tau: torch.Tensor) -> torch.Tensor:
        """Noisy tokens ``x_tau [B, L]`` (``0..21``) at noise level ``tau [B]`` -> logits ``[B, L, 20]``."""
        h_S = self.W_s(x_tau)  # [B, L, H]
        t = self.t_embed(timestep_embedding(tau, h_S.shape[-1]))  # [B, H]
        h_V, h_E = state.h_V + h_S + t[:, None], state.h_E
        for layer in self.decoder:
            h_V, h_E = layer(h_V, h_E, state.E_idx, state.mask, state.edge_mask, h_S=h_S)
        return self.W_out(h_V)

    def forward(self, X, x_tau, tau, mask, residue_index, chain_labels, segment, E_idx=None) -> torch.Tensor:
        """X ``[B, L, 4, 3]``, x_tau ``[B, L]``, tau ``[B]``, mask ``[B, L]`` -> logits ``[B, L, 20]``."""
        state = self.encode(X, mask, residue_index, chain_labels, segment, E_idx)
        return self.decode(state, x_tau, tau)
