"""Networks only: no noise, no losses. ``build_network(cfg)`` picks the one ``cfg.arch`` names."""

from __future__ import annotations

import torch.nn as nn

from reed_molecule.models.config import ARCHS, DenoiserConfig
from reed_molecule.models.equivariant import EquivariantDenoiser
from reed_molecule.models.semla import SemlaDenoiser

NETWORKS: dict[str, type[nn.Module]] = {"e3nn": EquivariantDenoiser, "semla": SemlaDenoiser}


def build_network(cfg: DenoiserConfig) -> nn.Module:
    """The denoiser of ``cfg.arch`` (one of :data:`ARCHS`)."""
    return NETWORKS[cfg.arch](cfg)


__all__ = ["ARCHS", "DenoiserConfig", "EquivariantDenoiser", "NETWORKS", "SemlaDenoiser", "build_network"]
