"""Networks only (no noise, no losses): the SiT denoiser and the evaluation classifier.

``build_sit(cfg)`` is the one way the image domain makes its denoiser: the plain ``SiT`` for
``model.kernels=none``, ``sit_fused.FusedSiT`` (reed-kernels) otherwise.
"""

from __future__ import annotations

import torch

from reed_image.models.classifier import Classifier, ClassifierConfig
from reed_image.models.sit import SiT, SiT_models, SiTConfig, count_parameters


def build_sit(cfg: SiTConfig) -> SiT:
    """``SiT(cfg)``, or ``FusedSiT(cfg)`` (the same parameters) where ``cfg.kernels`` is not none."""
    if cfg.kernels == "none":
        return SiT(cfg)
    from reed_image.models.sit_fused import FusedSiT  # imports reed-kernels

    return FusedSiT(cfg)


def install_cublaslt_plans(path: str, device: torch.device) -> int:
    """``model.cublaslt_plans`` (``sit_fused.install_cublaslt_plans``): read and check the plan
    file, install its plans on a CUDA device; how many were installed."""
    from reed_image.models.sit_fused import install_cublaslt_plans as install

    return install(path, device)


__all__ = [
    "Classifier",
    "ClassifierConfig",
    "SiT",
    "SiTConfig",
    "SiT_models",
    "build_sit",
    "count_parameters",
    "install_cublaslt_plans",
]
