"""The denoiser's config, shared by both architectures (``model.*``).

``arch`` picks the network:

    e3nn    :class:`reed_molecule.models.equivariant.EquivariantDenoiser` (the default): e3nn
            irreps ``scalars x 0e + vectors x 1o``, tensor-product messages on every atom pair,
            per-pair edge states in every layer
    semla   :class:`reed_molecule.models.semla.SemlaDenoiser`, the Semla architecture of SemlaFlow
            (Irwin et al. 2024): invariant node features and ``vectors`` coordinate sets, attention
            over all atom pairs of a molecule, edge states only in the first and last layer

Shared keys mean the same in both: ``scalars`` (invariant width per atom, what REED's taps see),
``vectors`` (equivariant channels per atom: 1o irreps for e3nn, coordinate sets for semla),
``edge_dim``, ``num_layers``, ``self_condition``. e3nn only: ``sh_lmax``, ``num_rbf``,
``rbf_max``, ``cutoff``. semla only: ``heads``, ``message_dim``, ``message_hidden``.
"""

from __future__ import annotations

from dataclasses import dataclass

from reed_molecule.chem import NUM_BOND_CLASSES

ARCHS = ("e3nn", "semla")


@dataclass(frozen=True)
class DenoiserConfig:
    arch: str = "e3nn"  # e3nn | semla
    num_atom_types: int = 5
    num_charges: int = 3
    num_bond_types: int = NUM_BOND_CLASSES
    scalars: int = 128  # S (e3nn) / d_model (semla): invariant channels per atom
    vectors: int = 32  # V (e3nn): l=1 channels per atom / number of coordinate sets (semla)
    edge_dim: int = 64
    num_layers: int = 8
    self_condition: bool = False
    # e3nn only
    sh_lmax: int = 2
    num_rbf: int = 32
    rbf_max: float = 10.0  # Angstrom
    cutoff: float | None = None  # None: fully connected; else radius graph (Angstrom)
    # semla only
    heads: int = 32  # attention heads of the node update (divides scalars)
    message_dim: int = 128  # d_message: per-atom projection that pair messages are built from
    message_hidden: int = 128  # hidden width of the pair-message MLP (middle layers)

    def __post_init__(self) -> None:
        if self.arch not in ARCHS:
            raise ValueError(f"model.arch: unknown {self.arch!r}; choose one of {ARCHS}")
        for name in ("scalars", "vectors", "edge_dim", "num_layers", "num_rbf"):
            if getattr(self, name) < 1:
                raise ValueError(f"model.{name}: must be >= 1, got {getattr(self, name)}")
        if self.sh_lmax not in (1, 2):
            raise ValueError(f"model.sh_lmax: must be 1 or 2, got {self.sh_lmax}")
        if self.cutoff is not None and self.cutoff <= 0:
            raise ValueError(f"model.cutoff: must be > 0 or None, got {self.cutoff}")
        if self.arch == "semla":
            for name in ("heads", "message_dim", "message_hidden"):
                if getattr(self, name) < 1:
                    raise ValueError(f"model.{name}: must be >= 1, got {getattr(self, name)}")
            if self.scalars % self.heads:
                raise ValueError(
                    f"model.heads: {self.heads} must divide model.scalars ({self.scalars}) for arch=semla"
                )
            if self.cutoff is not None:
                raise ValueError("model.cutoff: arch=semla attends over all atom pairs; leave cutoff unset")
