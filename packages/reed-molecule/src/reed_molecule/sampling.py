"""Sampler: integrate the joint flow from the prior (``tau = 1``) to data (``tau = 0``).

Atom counts ``n ~ p_data(n)`` (the training split's histogram). Then, for a grid
``1 = tau_0 > tau_1 > ... > tau_K = 0``, with the denoiser's prediction ``(x0_hat, p_a, p_c, p_e)``:

    coordinates (Euler on the conditional-OT velocity  dx/dtau = (x_tau - x0) / tau):
        x_{tau'} = x_tau + (tau' - tau) (x_tau - x0_hat) / tau
    discrete tokens (masking CTMC, Campbell et al. 2024): a masked token is revealed with
    probability (tau - tau') / tau to a draw from p(. | x_tau); revealed tokens stay.

At ``tau' = 0`` every token is revealed and ``x = x0_hat``. Bonds are drawn once per atom pair.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

from reed_molecule.ot import centre


class AtomCountDistribution:
    """Categorical ``p(n)`` over atom counts, from a data set's molecules."""

    def __init__(self, num_atoms: np.ndarray):
        num_atoms = np.asarray(num_atoms, dtype=np.int64)
        if len(num_atoms) == 0 or num_atoms.min() < 1:
            raise ValueError("atom counts: need at least one molecule with >= 1 atom")
        self.counts = np.bincount(num_atoms)
        self.p = self.counts / self.counts.sum()
        self.n_max = len(self.counts) - 1

    def sample(self, k: int, rng: np.random.Generator) -> np.ndarray:
        return rng.choice(len(self.p), size=k, p=self.p)

    def check(self, num_atoms: np.ndarray, flag: str = "--num-atoms") -> np.ndarray:
        """Refuse counts the model cannot make: < 1, or larger than any training molecule."""
        num_atoms = np.asarray(num_atoms, dtype=np.int64)
        bad = num_atoms[(num_atoms < 1) | (num_atoms > self.n_max)]
        if len(bad):
            raise ValueError(
                f"{flag}: impossible atom count {int(bad[0])}; the training data "
                f"has molecules of 1..{self.n_max} atoms"
            )
        return num_atoms

    def state_dict(self) -> dict:
        return {"counts": self.counts.tolist()}

    @classmethod
    def from_state_dict(cls, state: dict) -> AtomCountDistribution:
        counts = np.asarray(state["counts"], dtype=np.int64)
        return cls(np.repeat(np.arange(len(counts)), counts))


@dataclass
class GeneratedMolecules:
    """Dense arrays of ``B`` molecules: x [B,N,3], a/c [B,N], e [B,N,N], mask [B,N]."""

    x: np.ndarray
    a: np.ndarray
    c: np.ndarray
    e: np.ndarray
    mask: np.ndarray

    def __len__(self) -> int:
        return len(self.x)

    def molecule(self, i: int):
        n = int(self.mask[i].sum())
        return self.x[i, :n], self.a[i, :n], self.c[i, :n], self.e[i, :n, :n]

    def __iter__(self):
        return (self.molecule(i) for i in range(len(self)))


def _reveal(
    tokens: torch.Tensor, logits: torch.Tensor, mask_id: int, p_reveal: float, generator: torch.Generator
) -> torch.Tensor:
    probs = logits.float().softmax(-1)
    draw = torch.multinomial(probs.reshape(-1, probs.shape[-1]), 1, generator=generator)
    draw = draw.view(tokens.shape)
    reveal = (tokens == mask_id) & (
        torch.rand(tokens.shape, device=tokens.device, generator=generator) < p_reveal
    )
    return torch.where(reveal, draw, tokens)


@torch.no_grad()
def sample_molecules(
    model,
    num_atoms: np.ndarray,
    steps: int,
    num_classes: tuple[int, int, int],
    prior_sigma: float = 1.0,
    seed: int = 0,
    device="cpu",
    batch_size: int = 512,
) -> GeneratedMolecules:
    """Generate ``len(num_atoms)`` molecules with ``steps`` Euler steps."""
    if steps < 1:
        raise ValueError(f"--steps: must be >= 1, got {steps}")
    num_atoms = np.asarray(num_atoms, dtype=np.int64)
    T, C, E = num_classes
    n_max = int(num_atoms.max())
    out = {k: [] for k in ("x", "a", "c", "e", "mask")}
    gen = torch.Generator(device=device).manual_seed(seed)
    rng = np.random.default_rng(seed)
    model.eval()
    for start in range(0, len(num_atoms), batch_size):
        counts = num_atoms[start : start + batch_size]
        B = len(counts)
        mask_np = np.arange(n_max)[None, :] < counts[:, None]
        x1 = centre(rng.standard_normal((B, n_max, 3)).astype(np.float32) * prior_sigma, mask_np)
        mask = torch.from_numpy(mask_np).to(device)
        x = torch.from_numpy(x1).to(device)
        a = torch.full((B, n_max), T, dtype=torch.long, device=device)
        c = torch.full((B, n_max), C, dtype=torch.long, device=device)
        e = torch.full((B, n_max, n_max), E, dtype=torch.long, device=device)
        e.diagonal(dim1=1, dim2=2).zero_()
        taus = torch.linspace(1.0, 0.0, steps + 1).tolist()
        self_cond = None
        sc = getattr(getattr(model, "cfg", None), "self_condition", False)
        m3 = mask.unsqueeze(-1).float()
        triu = torch.triu(torch.ones(n_max, n_max, dtype=torch.bool, device=device), 1)
        for tau, tau_next in zip(taus[:-1], taus[1:]):
            tau_b = torch.full((B,), tau, device=device)
            pred = model(x, a, c, e, mask, tau_b, self_cond)
            x0_hat, a_logits, c_logits, e_logits = pred
            if sc:
                self_cond = (x0_hat, a_logits.softmax(-1), c_logits.softmax(-1), e_logits.softmax(-1))
            x = (x + (tau_next - tau) * (x - x0_hat.float()) / tau) * m3
            p_reveal = (tau - tau_next) / tau
            a = _reveal(a, a_logits, T, p_reveal, gen)
            c = _reveal(c, c_logits, C, p_reveal, gen)
            e_new = _reveal(e, e_logits, E, p_reveal, gen)
            e_up = torch.where(triu, e_new, torch.zeros_like(e_new))
            e = e_up + e_up.transpose(1, 2)  # symmetric; diagonal 0
        pair = mask.unsqueeze(1) & mask.unsqueeze(2)
        e = torch.where(pair, e, torch.zeros_like(e))
        for k, v in (("x", x), ("a", a), ("c", c), ("e", e), ("mask", mask)):
            out[k].append(v.cpu().numpy())
    return GeneratedMolecules(**{k: np.concatenate(v) for k, v in out.items()})


def as_generated(molecules) -> GeneratedMolecules:
    """Dense :class:`GeneratedMolecules` of ``molecules`` (already dense, or ``(x, a, c, e)`` tuples)."""
    if isinstance(molecules, GeneratedMolecules):
        return molecules
    molecules = list(molecules)
    n_max = max(len(a) for _, a, _, _ in molecules)
    M = len(molecules)
    out = GeneratedMolecules(
        x=np.zeros((M, n_max, 3), np.float32),
        a=np.zeros((M, n_max), np.int64),
        c=np.zeros((M, n_max), np.int64),
        e=np.zeros((M, n_max, n_max), np.int64),
        mask=np.zeros((M, n_max), bool),
    )
    for i, (x, a, c, e) in enumerate(molecules):
        n = len(a)
        out.x[i, :n], out.a[i, :n], out.c[i, :n], out.e[i, :n, :n], out.mask[i, :n] = x, a, c, e, True
    return out


def save_npz(molecules, vocab, path) -> int:
    """Write generated molecules as dense arrays (no RDKit needed): ``x, a, c, e, mask, vocab``.
    ``python -m reed_molecule.evaluate --npz FILE`` scores them where RDKit is installed."""
    g = as_generated(molecules)
    np.savez_compressed(
        path,
        x=g.x,
        a=g.a.astype(np.int8),
        c=g.c.astype(np.int8),
        e=g.e.astype(np.int8),
        mask=g.mask,
        vocab=np.array(vocab.name),
    )
    return len(g)


def load_npz(path) -> tuple[GeneratedMolecules, str]:
    """``(molecules, vocabulary name)`` of a file written by :func:`save_npz`."""
    with np.load(path) as f:
        g = GeneratedMolecules(
            x=f["x"],
            a=f["a"].astype(np.int64),
            c=f["c"].astype(np.int64),
            e=f["e"].astype(np.int64),
            mask=f["mask"],
        )
        return g, str(f["vocab"])


def write_sdf(molecules: GeneratedMolecules, vocab, path) -> int:
    """Write every generated molecule (sanitizable or not) to an SDF; returns the count."""
    from rdkit import Chem

    from reed_molecule.chem import arrays_to_mol, smiles_of

    writer = Chem.SDWriter(str(path))
    writer.SetKekulize(False)
    for i, arrays in enumerate(molecules):
        mol = arrays_to_mol(*arrays, vocab)
        mol.SetProp("_Name", f"generated_{i}")
        smi = smiles_of(mol)
        mol.SetProp("valid", "1" if smi is not None else "0")
        if smi is not None:
            mol.SetProp("smiles", smi)
        mol.UpdatePropertyCache(strict=False)
        writer.write(mol)
    writer.close()
    return len(molecules)
