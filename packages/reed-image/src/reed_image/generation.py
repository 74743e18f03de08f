"""Sampling images from a trained SiT: a batch of labels in turn, seeded per batch, decoded from
VAE latents where the model generates latents (the sampler: :mod:`reed_image.samplers`).

Used by training-time evaluation (:class:`reed_image.task.ImageTask`), ``python -m
reed_image.sample`` and ``python -m reed_image.evaluate --checkpoint``.
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn as nn

from reed_image.configs import ImageConfig
from reed_image.data.latents import decode_latents
from reed_image.interpolants import Interpolant
from reed_image.samplers import SamplerConfig, sample


@torch.no_grad()
def generate(
    denoiser: nn.Module,
    cfg: ImageConfig,
    n: int,
    sampler: SamplerConfig,
    interpolant: Interpolant,
    num_classes: int,
    batch_size: int,
    latent_scale: float | None = None,
    vae=None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Sample ``n`` images, labels ``0, 1, ..., num_classes - 1, 0, ...``; batch ``i`` uses seed
    ``sampler.seed + i``, so the result depends only on the weights, ``n`` and the seed."""
    device = next(denoiser.parameters()).device
    was_training = denoiser.training
    denoiser.eval()
    use_bf16 = device.type == "cuda"

    def v_fn(x: torch.Tensor, tau: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        with torch.autocast("cuda", torch.bfloat16, enabled=use_bf16):
            return denoiser(x, tau, y)

    m = cfg.model
    labels = torch.arange(n, device=device) % num_classes
    out = []
    for i, start in enumerate(range(0, n, batch_size)):
        y = labels[start : start + batch_size]
        shape = (len(y), m.in_channels, m.input_size, m.input_size)
        x = sample(
            v_fn, shape, y, replace(sampler, seed=sampler.seed + i), interpolant, null_label=m.num_classes
        )
        if latent_scale is not None:
            if vae is None:
                raise ValueError("samples are VAE latents: set `vae` to decode them")
            x = decode_latents(vae, x, latent_scale)
        out.append(x.float().clamp(-1, 1))
    denoiser.train(was_training)
    return torch.cat(out), labels
