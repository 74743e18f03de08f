"""E(3)-equivariant denoiser for joint 3-D molecule generation, built with e3nn.

Node states are e3nn irreps ``h_i = S x 0e + V x 1o`` (invariant scalars and vectors); edges carry
invariant features ``e_ij``. Every layer (NequIP-style interaction, Batzner et al. 2022) is

    Y_ij   = SH_{l<=2}( (x_j - x_i) / |x_j - x_i| )                      spherical harmonics
    w_ij   = MLP( e_ij, RBF(|x_j - x_i|), s_i, s_j )                       per-edge TP weights
    m_i    = sum_{j != i} mask_j * TP_uvu(h_j, Y_ij; w_ij) / sqrt(deg)     tensor-product messages
    h_i   <- h_i + Gate( Linear(m_i) + Linear(h_i) )                       gated nonlinearity
    e_ij  <- e_ij + MLP( e_ij, s_i + s_j, s_i * s_j, RBF(|x_j - x_i|) )     symmetric edge update

over the fully connected graph of real atoms (padding masked), or a radius graph
(``cutoff``). Heads: ``x0_hat = x_tau + P Linear(h -> 1x1o)`` (equivariant; ``P`` removes the
update's centre of mass, so a centred ``x_tau`` gives a centred ``x0_hat``), atom-type and charge
logits from the scalars ``s_i``, bond logits from the symmetric ``e_ij``. The network knows
nothing of noise schedules or losses (those live in :mod:`reed_molecule.objective`); ``tau``
enters as a feature. Layer ``l`` (1-based) is tap point ``layers.{l-1}.tap``, an identity that
sees the layer's invariant scalars ``s [B, N, S]``.
"""

from __future__ import annotations

import torch
import torch.nn as nn
from e3nn import o3
from e3nn.nn import Gate

from reed_molecule.models.config import DenoiserConfig


def rbf(d: torch.Tensor, num: int, d_max: float) -> torch.Tensor:
    """Gaussian radial basis ``exp(-(d - mu_k)^2 / (2 sigma^2))``, ``[...] -> [..., num]``."""
    mu = torch.linspace(0.0, d_max, num, device=d.device, dtype=d.dtype)
    sigma = d_max / num
    return torch.exp(-0.5 * ((d.unsqueeze(-1) - mu) / sigma) ** 2)


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


class EquivariantNorm(nn.Module):
    """LayerNorm on the scalars; vectors divided by their RMS norm (rotation-invariant scale)."""

    def __init__(self, S: int, V: int, eps: float = 1e-5):
        super().__init__()
        self.S, self.V, self.eps = S, V, eps
        self.ln = nn.LayerNorm(S)
        self.v_scale = nn.Parameter(torch.ones(V))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        s, v = h[..., : self.S], h[..., self.S :].unflatten(-1, (self.V, 3))  # [..., V, 3]
        rms = v.pow(2).sum(-1).mean(-1, keepdim=True).add(self.eps).sqrt()  # [..., 1]
        v = v / rms.unsqueeze(-1) * self.v_scale.unsqueeze(-1)
        return torch.cat([self.ln(s), v.flatten(-2)], -1)


class InteractionLayer(nn.Module):
    """One equivariant message-passing layer; returns ``(h, e)`` (``h`` first, for taps)."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        S, V = cfg.scalars, cfg.vectors
        self.S = S
        self.irreps_h = o3.Irreps(f"{S}x0e + {V}x1o")
        self.irreps_sh = o3.Irreps.spherical_harmonics(cfg.sh_lmax)
        # 'uvu' tensor product: each input channel u meets Y_ij, output keeps channel u.
        out_irreps, instructions = [], []
        for i, (mul, ir_in) in enumerate(self.irreps_h):
            for j, (_, ir_sh) in enumerate(self.irreps_sh):
                for ir_out in ir_in * ir_sh:
                    if ir_out in (o3.Irrep("0e"), o3.Irrep("1o")):
                        instructions.append((i, j, len(out_irreps), "uvu", True))
                        out_irreps.append((mul, ir_out))
        irreps_mid = o3.Irreps(out_irreps)
        self.tp = o3.TensorProduct(
            self.irreps_h,
            self.irreps_sh,
            irreps_mid,
            instructions,
            shared_weights=False,
            internal_weights=False,
        )
        edge_in = cfg.edge_dim + cfg.num_rbf + 2 * S
        self.weight_mlp = mlp(edge_in, cfg.edge_dim, self.tp.weight_numel)
        # gate: S scalars (SiLU) + V gates (sigmoid) for V vectors
        irreps_gate_in = o3.Irreps(f"{S}x0e + {V}x0e + {V}x1o")
        self.lin_msg = o3.Linear(irreps_mid, irreps_gate_in)
        self.lin_self = o3.Linear(self.irreps_h, irreps_gate_in)
        self.gate = Gate(f"{S}x0e", [nn.functional.silu], f"{V}x0e", [torch.sigmoid], f"{V}x1o")
        self.lin_out = o3.Linear(self.irreps_h, self.irreps_h)
        self.norm = EquivariantNorm(S, V)
        self.edge_mlp = mlp(cfg.edge_dim + 2 * S + cfg.num_rbf, cfg.edge_dim, cfg.edge_dim)
        self.edge_norm = nn.LayerNorm(cfg.edge_dim)
        self.tap = nn.Identity()  # tap point: sees the invariant scalars s [B, N, S]

    def forward(self, h, e, Y, r, adj, deg):
        # h [B,N,Dh]  e [B,N,N,De]  Y [B,N,N,Dsh]  r [B,N,N,R]  adj [B,N,N]  deg [B,N,1]
        B, N, _ = h.shape
        s = h[..., : self.S]  # [B, N, S]
        s_i = s.unsqueeze(2).expand(B, N, N, self.S)
        s_j = s.unsqueeze(1).expand(B, N, N, self.S)
        w = self.weight_mlp(torch.cat([e, r, s_i, s_j], -1))  # [B, N, N, W]
        h_j = h.unsqueeze(1).expand(B, N, N, h.shape[-1])
        msg = self.tp(h_j, Y, w) * adj.unsqueeze(-1)  # [B, N, N, Dmid]
        m = msg.sum(2) / deg  # [B, N, Dmid]
        h = h + self.lin_out(self.gate(self.lin_msg(m) + self.lin_self(h)))
        h = self.norm(h)
        s = self.tap(h[..., : self.S])
        e_in = torch.cat([e, (s.unsqueeze(2) + s.unsqueeze(1)), s.unsqueeze(2) * s.unsqueeze(1), r], -1)
        e = self.edge_norm(e + self.edge_mlp(e_in))
        return h, e


class EquivariantDenoiser(nn.Module):
    """``(x_tau, a_tau, c_tau, e_tau, mask, tau[, self-cond]) -> (x0_hat, a_logits, c_logits,
    e_logits)``. Discrete inputs carry one extra class, the mask token (index = num classes)."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.cfg = cfg
        S, V, De = cfg.scalars, cfg.vectors, cfg.edge_dim
        T, C, E = cfg.num_atom_types, cfg.num_charges, cfg.num_bond_types
        self.atom_emb = nn.Embedding(T + 1, S)
        self.charge_emb = nn.Embedding(C + 1, S)
        self.bond_emb = nn.Embedding(E + 1, De)
        self.time_mlp = mlp(1, S, S)
        self.edge_in = nn.Linear(De + cfg.num_rbf, De)
        if cfg.self_condition:
            self.sc_node = nn.Linear(T + C, S)
            self.sc_edge = nn.Linear(E + cfg.num_rbf, De)
            self.sc_vec = o3.Linear("1x1o", f"{V}x1o")
        self.layers = nn.ModuleList(InteractionLayer(cfg) for _ in range(cfg.num_layers))
        self.coord_head = o3.Linear(f"{S}x0e + {V}x1o", "1x1o")
        self.atom_head = mlp(S, S, T)
        self.charge_head = mlp(S, S, C)
        self.bond_head = mlp(De + S, De, E)
        self.sh_irreps = o3.Irreps.spherical_harmonics(cfg.sh_lmax)

    def tap_points(self) -> list[str]:
        """Layer ``l`` (1-based) -> ``layers.{l-1}.tap``: invariant node scalars ``[B, N, S]``
        (pooled vectors would not be rotation invariant, so alignment sees scalars only)."""
        return [f"layers.{i}.tap" for i in range(len(self.layers))]

    def tap_dims(self) -> dict[str, int]:
        return {p: self.cfg.scalars for p in self.tap_points()}

    @property
    def hidden_dim(self) -> int:
        """Width of the invariant part of every tap point (what alignment sees)."""
        return self.cfg.scalars

    def forward(self, x, a, c, e, mask, tau, self_cond=None):
        # e3nn's fx-generated kernels cannot mix dtypes, so the network runs in float32 even
        # under a bf16 autocast (TF32 matmuls on GPU keep it fast).
        with torch.autocast(x.device.type, enabled=False):
            if self_cond is not None:
                self_cond = tuple(t.float() for t in self_cond)
            return self._forward(x.float(), a, c, e, mask, tau.float(), self_cond)

    def _forward(self, x, a, c, e, mask, tau, self_cond):
        # x [B,N,3]  a,c [B,N] long  e [B,N,N] long  mask [B,N] bool  tau [B]
        cfg = self.cfg
        B, N, _ = x.shape
        m = mask.to(x.dtype)
        rel = x.unsqueeze(1) - x.unsqueeze(2)  # [B, N(i), N(j), 3] = x_j - x_i
        d = rel.norm(dim=-1)  # [B, N, N]
        eye = torch.eye(N, dtype=torch.bool, device=x.device)
        adj = mask.unsqueeze(1) & mask.unsqueeze(2) & ~eye  # [B, N, N]
        if cfg.cutoff is not None:
            adj = adj & (d < cfg.cutoff)
        adj_f = adj.to(x.dtype)
        deg = adj_f.sum(-1, keepdim=True).clamp_min(1.0).sqrt()  # [B, N, 1]
        Y = o3.spherical_harmonics(
            self.sh_irreps, rel, normalize=True, normalization="component"
        )  # [B, N, N, Dsh]
        r = rbf(d, cfg.num_rbf, cfg.rbf_max)  # [B, N, N, R]

        s = self.atom_emb(a) + self.charge_emb(c) + self.time_mlp(tau.view(B, 1, 1).to(x.dtype))
        ef = self.edge_in(torch.cat([self.bond_emb(e), r], -1))  # [B, N, N, De]
        v = x.new_zeros(B, N, cfg.vectors * 3)
        if cfg.self_condition:
            x_sc, a_sc, c_sc, e_sc = (
                self_cond
                if self_cond is not None
                else (
                    x,
                    x.new_zeros(B, N, cfg.num_atom_types),
                    x.new_zeros(B, N, cfg.num_charges),
                    x.new_zeros(B, N, N, cfg.num_bond_types),
                )
            )
            s = s + self.sc_node(torch.cat([a_sc, c_sc], -1))
            d_sc = (x_sc.unsqueeze(1) - x_sc.unsqueeze(2)).norm(dim=-1)
            ef = ef + self.sc_edge(torch.cat([e_sc, rbf(d_sc, cfg.num_rbf, cfg.rbf_max)], -1))
            v = v + self.sc_vec(x_sc - x)  # relative vector: translation invariant
        h = torch.cat([s, v], -1) * m.unsqueeze(-1)  # [B, N, S + 3V]
        for layer in self.layers:
            h, ef = layer(h, ef, Y, r, adj_f, deg)
            h = h * m.unsqueeze(-1)
        s = h[..., : cfg.scalars]
        dx = self.coord_head(h) * m.unsqueeze(-1)  # [B, N, 3]
        x0 = x + (dx - _masked_mean(dx, m)) * m.unsqueeze(-1)  # update moves no centre of mass
        e_sym = 0.5 * (ef + ef.transpose(1, 2))
        pair = torch.cat([e_sym, s.unsqueeze(2) * s.unsqueeze(1)], -1)
        return x0, self.atom_head(s), self.charge_head(s), self.bond_head(pair)


def _masked_mean(x: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Centre of mass over real atoms: ``[B, N, 3], [B, N] -> [B, 1, 3]``."""
    total = (x * m.unsqueeze(-1)).sum(1, keepdim=True)  # [B, 1, 3]
    return total / m.sum(1).clamp_min(1.0).view(-1, 1, 1)


def num_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())
