"""Precomputed SD-VAE latents (Rombach et al., 2022), as SiT/REPA train on ImageNet 256.

``encode_latents`` runs a diffusers ``AutoencoderKL`` (hub name such as
``stabilityai/sd-vae-ft-ema``, or a local folder) once over an image set and keeps the posterior
moments ``(mean, std)``; training draws ``z = scaling_factor * (mean + std * n)`` per step
(REPA's ``sample_posterior``). The file is an ``.npz`` with ``moments [N, 2C, h, w]`` float16,
``labels [N]``, ``ids [N]``, ``class_names``, ``scaling_factor``, ``vae``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from reed_core.cli import UserError, UserFileError
from reed_image.data.batch import ImageSet, to_unit_range

SD_VAE = "stabilityai/sd-vae-ft-ema"


def load_vae(name_or_path: str = SD_VAE, device: str | torch.device = "cpu"):
    """A diffusers ``AutoencoderKL`` by hub name or local folder, in eval mode."""
    from diffusers import AutoencoderKL

    try:
        vae = AutoencoderKL.from_pretrained(name_or_path)
    except (OSError, ValueError) as err:
        raise ValueError(
            f"vae: cannot load AutoencoderKL {name_or_path!r} ({type(err).__name__}: {err}); "
            "give a hub name reachable from this machine or a local folder saved with "
            "save_pretrained"
        ) from err
    return vae.to(device).eval().requires_grad_(False)


@torch.no_grad()
def encode_latents(vae, images: ImageSet, out: str | Path, batch_size: int = 64, name: str = "") -> Path:
    """Encode uint8 RGB ``images`` into posterior moments and write the ``.npz`` file ``out``."""
    if images.kind != "pixel" or images.shape[0] != 3:
        raise ValueError(f"encode_latents: needs RGB pixel images [N, 3, H, W], got {images.shape}")
    device = next(vae.parameters()).device
    moments = []
    for start in range(0, len(images), batch_size):
        x = to_unit_range(images.images[start : start + batch_size]).to(device)
        dist = vae.encode(x).latent_dist
        moments.append(torch.cat([dist.mean, dist.std], dim=1).half().cpu())
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_name(out.name + ".tmp.npz")
    np.savez(
        tmp,
        moments=torch.cat(moments).numpy(),
        labels=images.labels.numpy(),
        ids=np.array(images.ids),
        class_names=np.array(images.class_names),
        scaling_factor=np.float32(vae.config.scaling_factor),
        vae=np.array(name),
    )
    tmp.replace(out)
    return out


def load_latents(path: str | Path) -> tuple[ImageSet, float]:
    """``(ImageSet of moments [N, 2C, h, w] float16, scaling_factor)`` from :func:`encode_latents`."""
    path = Path(path)
    if not path.exists():
        raise UserFileError(f"data.path: latent file {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            moments = torch.from_numpy(f["moments"])
            labels = torch.from_numpy(f["labels"].astype(np.int64))
            ids = [str(i) for i in f["ids"]]
            class_names = [str(c) for c in f["class_names"]]
            scaling = float(f["scaling_factor"])
    except (KeyError, ValueError, OSError) as err:
        raise UserError(f"data.path: {path} is not a latent file from encode_latents ({err})") from err
    if moments.dim() != 4 or moments.shape[1] % 2:
        raise UserError(f"data.path: {path} moments have shape {tuple(moments.shape)}")
    images = ImageSet(moments, labels, ids, class_names, kind="latent", name=f"latents/{path.stem}")
    return images, scaling


def sample_posterior(
    moments: torch.Tensor, scaling_factor: float, generator: torch.Generator | None = None
) -> torch.Tensor:
    """``z = scaling_factor * (mean + std * n)`` from moments ``[B, 2C, h, w]`` -> ``[B, C, h, w]``."""
    mean, std = moments.float().chunk(2, dim=1)
    n = torch.randn(mean.shape, generator=generator, device=mean.device)
    return scaling_factor * (mean + std * n)


@torch.no_grad()
def decode_latents(vae, z: torch.Tensor, scaling_factor: float) -> torch.Tensor:
    """Scaled latents ``[B, C, h, w]`` -> pixels ``[B, 3, H, W]`` in [-1, 1]."""
    param = next(vae.parameters())
    return vae.decode(z.to(param.device, param.dtype) / scaling_factor).sample.float().clamp(-1, 1)
