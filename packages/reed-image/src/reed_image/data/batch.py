"""Typed batches and the in-memory image set every source loads into."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import torch


@dataclass
class ImageBatch:
    """One training batch.

    x: ``[B, C, H, W]`` float, model space (pixels in [-1, 1] or scaled VAE latents).
    y: ``[B]`` long class labels. index: ``[B]`` long row of each example in its data set.
    z: alignment targets by name, as stored (``[B, L, D]``; token targets on the encoder grid).
    """

    x: torch.Tensor
    y: torch.Tensor
    index: torch.Tensor
    z: dict[str, torch.Tensor] = field(default_factory=dict)

    def to(self, device: torch.device | str, non_blocking: bool = True) -> ImageBatch:
        return ImageBatch(
            x=self.x.to(device, non_blocking=non_blocking),
            y=self.y.to(device, non_blocking=non_blocking),
            index=self.index.to(device, non_blocking=non_blocking),
            z={k: v.to(device, non_blocking=non_blocking) for k, v in self.z.items()},
        )

    def __len__(self) -> int:
        return self.x.shape[0]


@dataclass
class ImageSet:
    """A labelled image set held in memory.

    images: ``[N, C, H, W]`` uint8 pixels (or float latents when ``kind == "latent"``).
    labels: ``[N]`` int64. ids: one string per example, the feature-store key.
    """

    images: torch.Tensor
    labels: torch.Tensor
    ids: list[str]
    class_names: list[str]
    kind: str = "pixel"  # pixel | latent
    name: str = ""

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.labels.shape != (n,) or len(self.ids) != n:
            raise ValueError(
                f"data set {self.name!r}: {n} images but labels {tuple(self.labels.shape)} and "
                f"{len(self.ids)} ids"
            )
        if self.kind == "pixel" and self.images.dtype != torch.uint8:
            raise ValueError(f"data set {self.name!r}: pixel images must be uint8")

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    def subset(self, n: int | None, seed: int = 0) -> ImageSet:
        """First-``n`` rows of a fixed seeded permutation (the whole set when ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        keep = np.sort(np.random.default_rng(seed).permutation(len(self))[:n])
        t = torch.from_numpy(keep)
        return ImageSet(
            self.images[t],
            self.labels[t],
            [self.ids[i] for i in keep],
            self.class_names,
            self.kind,
            self.name,
        )


def to_unit_range(images_u8: torch.Tensor) -> torch.Tensor:
    """uint8 ``[0, 255]`` -> float ``[-1, 1]``."""
    return images_u8.float() / 127.5 - 1.0


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """float ``[-1, 1]`` -> uint8 ``[0, 255]`` (clamped, rounded)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)
