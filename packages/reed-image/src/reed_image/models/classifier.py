"""The evaluation network: a small CNN classifier whose penultimate features define the metrics.

It plays Inception's role in FID/IS on data where Inception weights are not reachable, and it is
deliberately NOT an alignment target (it is trained from scratch on the train split, once, by
``python -m reed_image.eval_classifier``), so the metric does not reward copying the target.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
import torch.nn as nn


@dataclass(frozen=True)
class ClassifierConfig:
    in_channels: int = 1
    resolution: int = 32
    num_classes: int = 10
    widths: tuple[int, ...] = (32, 64, 128, 256)


def _conv(c_in: int, c_out: int, stride: int) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(c_in, c_out, 3, stride=stride, padding=1, bias=False),
        nn.BatchNorm2d(c_out),
        nn.SiLU(),
    )


class Classifier(nn.Module):
    """``x [B, C, H, W]`` in [-1, 1] -> ``(features [B, widths[-1]], logits [B, num_classes])``.

    Stem at full resolution, then one stride-2 conv per further width, global average pool.
    """

    def __init__(self, cfg: ClassifierConfig):
        super().__init__()
        self.cfg = cfg
        w = cfg.widths
        layers = [_conv(cfg.in_channels, w[0], 1)]
        layers += [_conv(a, b, 2) for a, b in zip(w[:-1], w[1:])]
        self.body = nn.Sequential(*layers)
        self.head = nn.Sequential(nn.Dropout(0.2), nn.Linear(w[-1], cfg.num_classes))

    @property
    def feature_dim(self) -> int:
        return self.cfg.widths[-1]

    def features(self, x: torch.Tensor) -> torch.Tensor:
        want = (self.cfg.in_channels, self.cfg.resolution, self.cfg.resolution)
        if tuple(x.shape[1:]) != want:
            raise ValueError(
                f"classifier: expected images [B, {want[0]}, {want[1]}, {want[2]}], got {tuple(x.shape)}"
            )
        return self.body(x).mean((2, 3))  # (B, widths[-1])

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        f = self.features(x)
        return f, self.head(f)

    def checkpoint(self, **info) -> dict:
        cfg = asdict(self.cfg)
        cfg["widths"] = list(cfg["widths"])
        return {"config": cfg, "state_dict": self.state_dict(), "info": info}

    @classmethod
    def from_checkpoint(cls, ckpt: dict) -> Classifier:
        cfg = dict(ckpt["config"])
        cfg["widths"] = tuple(cfg["widths"])
        model = cls(ClassifierConfig(**cfg))
        model.load_state_dict(ckpt["state_dict"])
        return model.eval()
