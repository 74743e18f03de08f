"""The Semla denoiser of SemlaFlow (Irwin et al. 2024, "Efficient 3D molecular generation with
flow matching and scale optimal transport", section 3 and appendix A): E(3)-equivariant, with
invariant node features and a few sets of equivariant coordinates, attention over all atom pairs
of each molecule, and edge (bond) states only where they are read and written.

Notation: ``B`` molecules padded to ``N`` atoms (``m_i = 1`` for real atoms), ``D`` invariant
channels per atom (``cfg.scalars``), ``S`` coordinate sets (``cfg.vectors``), ``H`` attention heads,
``P`` the message projection (``cfg.message_dim``), ``D_e`` edge channels (``cfg.edge_dim``).
Coordinate sets are stored channel-last, ``X [B, N, 3, S]``, so a linear map over sets is an
``nn.Linear`` without bias (an equivariant operation: it mixes vectors, never their components).

Input. With ``x_bar`` the centre of mass of ``x_tau`` over real atoms:

    X^s_i   = sum_k W^in_{sk} y^k_i,   y^1 = x_tau - x_bar,  y^2 = x_sc - mean(x_sc)   (self-cond.)
    h_i     = MLP([onehot(a_i), onehot(c_i), tau, E_size[n], p^a_sc_i, p^c_sc_i])
    e_ij    = MLP([onehot(e_ij), p^e_sc_ij])

Coordinate norm (``CoordNorm``, per set; "length" in the paper)

    X^s_i  <-  gamma_s (X^s_i - mean_j X^s_j) / (mean_j |X^s_j - mean_k X^s_k| + eps)

Each of the ``L`` layers (``SemlaLayer``) applies, with pre-norms ``LN`` (invariant) and ``CN``:

1. node feed-forward (``NodeFeedForward``), with ``X^ = CN(X)``, ``h^ = LN(h)``:

       h_i   <- h_i + MLP([h^_i, |X^1_i|, ..., |X^S_i|])                       (invariant, 4D hidden)
       X^s_i <- X^s_i + sum_p U^out_{sp} g_ip sum_s' U^in_{ps'} X^^s'_i,   g_i = MLP(h^_i)   (equivariant)

2. pair messages (``PairMessages``), with ``X~`` the centred, ``gamma``-scaled sets:

       m_ij = MLP([W h^_i, W h^_j, <X~^1_i, X~^1_j>, ..., <X~^S_i, X~^S_j>, LN(e_ij)])
            = [m^node_ij (H), m^coord_ij (S), m^edge_ij (D_e, last layer only)]

3. node attention (``NodeAttention``), ``a^k_ij = softmax_{j != i, m_j = 1} m^node,k_ij``:

       h_i <- h_i + W^o concat_k( sqrt(sum_j (a^k_ij)^2) sum_j a^k_ij V^k h^_j )

   The factor ``sqrt(sum_j a^2)`` is the paper's variance-preserving aggregation (after GNN-VPA,
   Schneckenreiter et al. 2024), written as SemlaFlow's code applies it: a product. (Dividing by
   it instead, which keeps the variance of a sum of independent values, learned atom types more
   slowly on a small CPU test.)

4. coordinate attention (``CoordAttention``), ``b^p_ij = softmax_j m^coord,p_ij``, ``Y = Q CN(X)``:

       u^p_i   = sqrt(sum_j (b^p_ij)^2) sum_j b^p_ij (Y^p_i - Y^p_j) / (|Y^p_i - Y^p_j| + eps)
       X^s_i  <- X^s_i + sum_p O_{sp} u^p_i

5. edges: the first layer reads ``e_ij``; the last writes ``e_ij <- e_ij + m^edge_ij``; the layers
   between carry no edge state (what makes the architecture cheap: no per-pair state through depth).

Output. A last node feed-forward, then

    x0_hat_i = x_tau,i + C( sum_s w_s X^s )_i        (C: centre over real atoms; w = 0 at init)
    e_ij    <- MLP([W h^_i, W h^_j, |x^_i - x^_j|^2, <x^_i, x^_j>, LN(e_ij)]),  x^ = x0_hat - x_bar
    logits: MLP(LN(h_i)) -> atom types, charges;  MLP(LN(e_ij) + LN(e_ji)) -> bond orders

Where this differs from the paper: the coordinate head reads the coordinate sets as they are
(the paper reads ``CN(X)``, which discards the molecule's scale) and is a residual on ``x_tau``
with ``w`` initialised to zero, so the network starts from ``x0_hat = x_tau``, the right answer
near the data, instead of from a random coordinate map whose error dominates the early loss.

Equivariance: every update of ``X`` is a combination of (centred) coordinate vectors with
invariant coefficients, and every invariant sees coordinates only through norms and inner
products, so rotations and reflections of ``x_tau`` (and of ``x_sc``) rotate ``x0_hat`` and leave
the logits unchanged; centring makes ``x0_hat`` move with translations. Padding never reaches a
real atom (attention, norms and means are masked). Layer ``l`` (1-based) is tap point
``layers.{l-1}.tap``: the invariant node features ``h [B, N, D]`` after that layer, for REED.

Precision: coordinate sets, their norms and inner products and the coordinate head run in
float32 even under a bf16 autocast (a bf16 coordinate carries ~0.01 A of rounding at 3 A, the
scale of the bond-length differences the model must resolve); the invariant MLPs and attention
follow the ambient autocast; softmaxes run in float32.
"""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F

from reed_molecule.models.config import DenoiserConfig

MAX_ATOMS = 256  # size embedding E_size[n] covers molecules of up to MAX_ATOMS - 1 atoms
SIZE_EMB = 64
EPS = 1e-6


def mlp(d_in: int, d_hidden: int, d_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(d_in, d_hidden), nn.SiLU(), nn.Linear(d_hidden, d_out))


def float32(x: torch.Tensor):
    """A region computed in float32 whatever the ambient autocast (the equivariant path)."""
    return torch.autocast(x.device.type, enabled=False)


def centre(X: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """Subtract the centre of mass over real atoms: ``X [B, N, 3, ...]``, ``m [B, N]`` -> same shape,
    zero on padding."""
    w = m.view(*m.shape, *([1] * (X.dim() - 2)))  # [B, N, 1, ...]
    com = (X * w).sum(1, keepdim=True) / w.sum(1, keepdim=True).clamp_min(1.0)
    return (X - com) * w


def pair_softmax(logits: torch.Tensor, adj: torch.Tensor) -> torch.Tensor:
    """``softmax_j`` of ``logits [B, N, N, K]`` over the neighbours ``adj [B, N, N]`` of each atom,
    in float32; an atom without neighbours (padding, a one-atom molecule) gets all zeros."""
    logits = logits.float().masked_fill(~adj.unsqueeze(-1), torch.finfo(torch.float32).min)
    return logits.softmax(dim=2) * adj.unsqueeze(-1)


class CoordNorm(nn.Module):
    """``X^s <- gamma_s C(X^s) / (mean_i |C(X^s)_i| + eps)`` ("length"), or ``gamma_s C(X^s)``
    ("none"); ``C`` centres over real atoms. ``X [B, N, 3, S]``, ``m [B, N]``."""

    def __init__(self, S: int, norm: str = "length"):
        super().__init__()
        if norm not in ("length", "none"):
            raise ValueError(f"CoordNorm: unknown norm {norm!r}")
        self.norm = norm
        self.gamma = nn.Parameter(torch.ones(S))

    def forward(self, X: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
        X = centre(X, m)
        if self.norm == "length":
            n = m.sum(1).clamp_min(1.0).view(-1, 1, 1, 1)  # [B, 1, 1, 1]
            mean_len = X.norm(dim=2, keepdim=True).sum(1, keepdim=True) / n  # [B, 1, 1, S]
            X = X / (mean_len + EPS)
        return X * self.gamma


class NodeFeedForward(nn.Module):
    """Step 1 of a layer: returns the updates ``(dh [B, N, D], dX [B, N, 3, S])``."""

    def __init__(self, D: int, S: int, P: int):
        super().__init__()
        self.node_norm = nn.LayerNorm(D)
        self.coord_norm = CoordNorm(S, "length")
        self.invariant_mlp = mlp(D + S, 4 * D, D)
        self.gate_mlp = mlp(D, P, P)  # g_i
        self.U_in = nn.Linear(S, P, bias=False)
        self.U_out = nn.Linear(P, S, bias=False)

    def forward(self, h, X, m):
        h_hat = self.node_norm(h)
        with float32(X):
            X_hat = self.coord_norm(X, m)  # [B, N, 3, S]
            lengths = X_hat.norm(dim=2)  # [B, N, S]
        dh = self.invariant_mlp(torch.cat([h_hat, lengths.to(h_hat.dtype)], -1))
        g = self.gate_mlp(h_hat)  # [B, N, P]
        with float32(X):
            dX = self.U_out(g.float().unsqueeze(2) * self.U_in(X_hat))  # [B, N, 3, S]
        return dh, dX


class PairMessages(nn.Module):
    """Step 2: ``m_ij [B, N, N, H + S (+ D_e)]`` from both atoms' features, the inner products of
    their coordinate sets and (first layer) the edge state."""

    def __init__(self, D: int, S: int, P: int, d_hidden: int, d_out: int, d_edge_in: int = 0):
        super().__init__()
        self.node_norm = nn.LayerNorm(D)
        self.coord_norm = CoordNorm(S, "none")
        self.edge_norm = nn.LayerNorm(d_edge_in) if d_edge_in else None
        self.W = nn.Linear(D, P)
        self.mlp = mlp(2 * P + S + d_edge_in, d_hidden, d_out)

    def forward(self, h, X, m, e=None):
        B, N, _ = h.shape
        w = self.W(self.node_norm(h))  # [B, N, P]
        with float32(X):
            X_t = self.coord_norm(X, m)
            dots = torch.einsum("bids,bjds->bijs", X_t, X_t)  # <X~^s_i, X~^s_j>  [B, N, N, S]
        parts = [
            w.unsqueeze(2).expand(B, N, N, -1),
            w.unsqueeze(1).expand(B, N, N, -1),
            dots.to(w.dtype),
        ]
        if self.edge_norm is not None:
            parts.append(self.edge_norm(e))
        return self.mlp(torch.cat(parts, -1))


class NodeAttention(nn.Module):
    """Step 3: ``dh_i = W^o concat_k( sqrt(sum_j a^2) sum_j a^k_ij V^k LN(h)_j )``."""

    def __init__(self, D: int, H: int):
        super().__init__()
        self.H = H
        self.norm = nn.LayerNorm(D)
        self.V = nn.Linear(D, D)
        self.W_o = nn.Linear(D, D)

    def forward(self, h, logits, adj):
        B, N, D = h.shape
        a = pair_softmax(logits, adj)  # [B, N(i), N(j), H]
        v = self.V(self.norm(h)).view(B, N, self.H, D // self.H)  # [B, N(j), H, D/H]
        out = torch.einsum("bijk,bjkd->bikd", a.to(v.dtype), v)  # [B, N, H, D/H]
        vpa = a.pow(2).sum(2).sqrt()  # [B, N, H]
        out = out * vpa.unsqueeze(-1).to(out.dtype)
        return self.W_o(out.reshape(B, N, D))


class CoordAttention(nn.Module):
    """Step 4: ``dX^s_i = sum_p O_sp sqrt(sum_j b^2) sum_j b^p_ij (Y^p_i - Y^p_j) / (|.| + eps)``."""

    def __init__(self, S: int):
        super().__init__()
        self.coord_norm = CoordNorm(S, "length")
        self.Q = nn.Linear(S, S, bias=False)
        self.O = nn.Linear(S, S, bias=False)

    def forward(self, X, logits, m, adj):
        b = pair_softmax(logits, adj)  # [B, N(i), N(j), S]
        with float32(X):
            Y = self.Q(self.coord_norm(X, m))  # [B, N, 3, S]
            diff = Y.unsqueeze(2) - Y.unsqueeze(1)  # Y_i - Y_j  [B, N, N, 3, S]
            unit = diff / (diff.norm(dim=3, keepdim=True) + EPS)
            u = (b.unsqueeze(3) * unit).sum(2)  # [B, N, 3, S]
            u = u * b.pow(2).sum(2).sqrt().unsqueeze(2)  # variance-preserving weight
            return self.O(u)


class SemlaLayer(nn.Module):
    """One Semla layer: steps 1-5 of the module docstring. ``(h, X, e) -> (h, X, e)``; ``h`` first,
    and ``tap`` (an identity) sees the new ``h [B, N, D]``."""

    def __init__(self, cfg: DenoiserConfig, edge_in: bool, edge_out: bool):
        super().__init__()
        D, S, P, H, De = cfg.scalars, cfg.vectors, cfg.message_dim, cfg.heads, cfg.edge_dim
        self.H, self.S, self.edge_out = H, S, edge_out
        d_out = H + S + (De if edge_out else 0)
        # the paper's edge layers use their output width as the message MLP's hidden width
        d_hidden = d_out if (edge_in or edge_out) else cfg.message_hidden
        self.node_ff = NodeFeedForward(D, S, P)
        self.messages = PairMessages(D, S, P, d_hidden, d_out, De if edge_in else 0)
        self.node_attn = NodeAttention(D, H)
        self.coord_attn = CoordAttention(S)
        self.tap = nn.Identity()  # tap point: the invariant node features h [B, N, D]

    def forward(self, h, X, e, m, adj):
        # h [B,N,D]  X [B,N,3,S] float32  e [B,N,N,De] or None  m [B,N] float  adj [B,N,N] bool
        dh, dX = self.node_ff(h, X, m)
        h, X = h + dh, X + dX
        msg = self.messages(h, X, m, e)  # [B, N, N, H + S (+ De)]
        h = h + self.node_attn(h, msg[..., : self.H], adj)
        X = X + self.coord_attn(X, msg[..., self.H : self.H + self.S], m, adj)
        if self.edge_out:
            e = e + msg[..., self.H + self.S :]
        h = self.tap(h * m.unsqueeze(-1).to(h.dtype))
        return h, X * m.view(*m.shape, 1, 1), e


class BondRefine(nn.Module):
    """``e_ij <- MLP([W h^_i, W h^_j, |x^_i - x^_j|^2, <x^_i, x^_j>, LN(e_ij)])`` on the predicted,
    centred coordinates ``x^`` (the paper's bond refinement; replaces ``e``)."""

    def __init__(self, D: int, P: int, De: int):
        super().__init__()
        self.node_norm = nn.LayerNorm(D)
        self.edge_norm = nn.LayerNorm(De)
        self.W = nn.Linear(D, P)
        self.mlp = mlp(2 * P + 2 + De, P, De)

    def forward(self, x_hat, h, e):
        B, N, _ = h.shape
        w = self.W(self.node_norm(h))  # [B, N, P]
        with float32(x_hat):
            d2 = (x_hat.unsqueeze(2) - x_hat.unsqueeze(1)).pow(2).sum(-1, keepdim=True)  # [B, N, N, 1]
            dot = torch.einsum("bid,bjd->bij", x_hat, x_hat).unsqueeze(-1)  # [B, N, N, 1]
        parts = [
            w.unsqueeze(2).expand(B, N, N, -1),
            w.unsqueeze(1).expand(B, N, N, -1),
            d2.to(w.dtype),
            dot.to(w.dtype),
            self.edge_norm(e),
        ]
        return self.mlp(torch.cat(parts, -1))


class SemlaDenoiser(nn.Module):
    """``(x_tau, a_tau, c_tau, e_tau, mask, tau[, self_cond]) -> (x0_hat, a_logits, c_logits,
    e_logits)``, the same contract as :class:`reed_molecule.models.equivariant.EquivariantDenoiser`.
    Discrete inputs carry one extra class, the mask token (index = number of classes);
    ``self_cond = (x0_hat, p_a, p_c, p_e)`` is the previous prediction (``cfg.self_condition``)."""

    def __init__(self, cfg: DenoiserConfig):
        super().__init__()
        self.cfg = cfg
        D, S, P, De = cfg.scalars, cfg.vectors, cfg.message_dim, cfg.edge_dim
        T, C, E = cfg.num_atom_types, cfg.num_charges, cfg.num_bond_types
        sc = cfg.self_condition
        self.W_in = nn.Linear(2 if sc else 1, S, bias=False)  # coordinate sets from x (and x_sc)
        self.size_emb = nn.Embedding(MAX_ATOMS, SIZE_EMB)
        node_in = (T + 1) + (C + 1) + 1 + SIZE_EMB + ((T + C) if sc else 0)
        self.node_in = mlp(node_in, D, D)
        self.edge_in = mlp((E + 1) + (E if sc else 0), De, De)
        L = cfg.num_layers
        self.layers = nn.ModuleList(
            SemlaLayer(cfg, edge_in=(i == 0), edge_out=(i == L - 1)) for i in range(L)
        )
        self.final_ff = NodeFeedForward(D, S, P)
        self.coord_head = nn.Linear(S, 1, bias=False)  # w_s
        nn.init.zeros_(self.coord_head.weight)  # x0_hat = x_tau at initialisation
        self.bond_refine = BondRefine(D, P, De)
        self.node_norm = nn.LayerNorm(D)
        self.edge_norm = nn.LayerNorm(De)
        self.atom_head = mlp(D, D, T)
        self.charge_head = mlp(D, D, C)
        self.bond_head = mlp(De, De, E)

    def tap_points(self) -> list[str]:
        """Layer ``l`` (1-based) -> ``layers.{l-1}.tap``: invariant node features ``[B, N, D]``."""
        return [f"layers.{i}.tap" for i in range(len(self.layers))]

    def tap_dims(self) -> dict[str, int]:
        return {p: self.cfg.scalars for p in self.tap_points()}

    @property
    def hidden_dim(self) -> int:
        """Width of every tap point (what alignment sees)."""
        return self.cfg.scalars

    def forward(self, x, a, c, e, mask, tau, self_cond=None):
        # x [B,N,3]  a,c [B,N] long  e [B,N,N] long  mask [B,N] bool  tau [B]
        cfg = self.cfg
        B, N = a.shape
        if N >= MAX_ATOMS:
            raise ValueError(f"SemlaDenoiser: molecules of up to {MAX_ATOMS - 1} atoms, got {N} slots")
        T, C, E = cfg.num_atom_types, cfg.num_charges, cfg.num_bond_types
        m = mask.float()  # [B, N]
        eye = torch.eye(N, dtype=torch.bool, device=x.device)
        adj = mask.unsqueeze(1) & mask.unsqueeze(2) & ~eye  # [B, N, N]
        if cfg.self_condition and self_cond is None:  # first pass: no previous prediction
            self_cond = (
                torch.zeros_like(x, dtype=torch.float32),
                m.new_zeros(B, N, T),
                m.new_zeros(B, N, C),
                m.new_zeros(B, N, N, E),
            )

        with float32(x):
            x = x.float()
            x_bar = (x * m.unsqueeze(-1)).sum(1, keepdim=True) / m.sum(1).clamp_min(1.0).view(B, 1, 1)
            y = [(x - x_bar) * m.unsqueeze(-1)]  # [B, N, 3]
            if cfg.self_condition:
                y.append(centre(self_cond[0].float(), m))
            X = self.W_in(torch.stack(y, -1))  # [B, N, 3, S]

        n_atoms = mask.sum(1)  # [B]
        node = [
            F.one_hot(a, T + 1).float(),
            F.one_hot(c, C + 1).float(),
            tau.float().view(B, 1, 1).expand(B, N, 1),
            self.size_emb(n_atoms).unsqueeze(1).expand(B, N, SIZE_EMB),
        ]
        edge = [F.one_hot(e, E + 1).float()]
        if cfg.self_condition:
            node += [self_cond[1].float(), self_cond[2].float()]
            edge.append(self_cond[3].float())
        h = self.node_in(torch.cat(node, -1)) * m.unsqueeze(-1)  # [B, N, D]
        ef = self.edge_in(torch.cat(edge, -1))  # [B, N, N, De]

        for layer in self.layers:
            h, X, ef = layer(h, X, ef, m, adj)
        dh, dX = self.final_ff(h, X, m)
        h, X = h + dh, X + dX

        with float32(X):
            x_hat = y[0] + centre(self.coord_head(X).squeeze(-1), m)  # [B, N, 3], centred
            x0_hat = (x_bar + x_hat) * m.unsqueeze(-1)
        ef = self.bond_refine(x_hat, h, ef)
        h = self.node_norm(h)
        ef = self.edge_norm(ef)
        e_sym = ef + ef.transpose(1, 2)  # symmetric in (i, j)
        return x0_hat, self.atom_head(h), self.charge_head(h), self.bond_head(e_sym)
