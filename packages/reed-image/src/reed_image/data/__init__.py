"""Image data: typed batches, Fashion-MNIST, ImageFolder, precomputed SD-VAE latents."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F

from reed_core.cli import UserError
from reed_image.data.batch import ImageBatch, ImageSet, to_uint8, to_unit_range
from reed_image.data.fashion_mnist import load_fashion_mnist
from reed_image.data.image_folder import load_image_folder
from reed_image.data.latents import load_latents

SOURCES = ("fashion-mnist", "imagefolder", "latents")
FITS = ("pad", "resize")

__all__ = [
    "ImageBatch", "ImageSet", "load_fashion_mnist", "load_image_folder", "load_latents",
    "fit_resolution", "load_source", "to_uint8", "to_unit_range",
]  # fmt: skip


def fit_resolution(images: ImageSet, resolution: int, mode: str = "pad") -> ImageSet:
    """Bring uint8 images to ``resolution`` x ``resolution``.

    pad: centre on a black canvas (28 -> 32 for Fashion-MNIST: 2 pixels each side; pixels kept).
    resize: bilinear (antialiased) resize.
    """
    if mode not in FITS:
        raise UserError(f"data.fit: unknown {mode!r}; choose one of {FITS}")
    if images.kind != "pixel":
        raise UserError("data.fit: only pixel images can be padded or resized")
    C, H, W = images.shape
    if (H, W) == (resolution, resolution):
        return images
    x = images.images
    if mode == "pad":
        if H > resolution or W > resolution:
            raise UserError(
                f"data.resolution {resolution} is smaller than the images ({H}x{W}); use fit=resize"
            )
        top, left = (resolution - H) // 2, (resolution - W) // 2
        x = F.pad(x, (left, resolution - W - left, top, resolution - H - top), value=0)
    else:
        x = F.interpolate(
            x.float(), size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False
        )
        x = x.round().clamp(0, 255).to(torch.uint8)
    return ImageSet(x, images.labels, images.ids, images.class_names, images.kind, images.name)


def load_source(
    source: str,
    path: str | Path | None,
    split: str,
    resolution: int,
    fit: str = "pad",
    channels: int = 1,
    download: bool = False,
) -> tuple[ImageSet, float | None]:
    """Load a data source into memory; returns ``(images, latent scaling factor or None)``."""
    if source == "fashion-mnist":
        return fit_resolution(load_fashion_mnist(split, path, download), resolution, fit), None
    if source == "imagefolder":
        if path is None:
            raise UserError("data.path: an imagefolder source needs a folder")
        root = Path(path)
        if (root / split).is_dir():
            root = root / split
        return load_image_folder(root, resolution, channels), None
    if source == "latents":
        if path is None:
            raise UserError("data.path: a latents source needs an .npz from encode_latents")
        return load_latents(path)
    raise UserError(f"data.source: unknown {source!r}; choose one of {SOURCES}")
