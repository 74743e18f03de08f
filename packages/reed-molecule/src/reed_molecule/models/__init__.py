"""Networks only: no noise, no losses."""

from reed_molecule.models.equivariant import DenoiserConfig, EquivariantDenoiser

__all__ = ["DenoiserConfig", "EquivariantDenoiser"]
