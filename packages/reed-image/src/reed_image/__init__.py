"""REED for images: SiT aligned to vision-encoder tokens and caption embeddings (reed-core)."""

__version__ = "0.1.0"
