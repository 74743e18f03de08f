"""Synthetic captions: a paired text modality for images (REED, Sec. 5.1).

The paper captions each ImageNet image with a VLM and aligns SiT's mean-pooled hidden state at a
deep block to the caption's embedding. Here a :class:`Captioner` is anything mapping uint8 images
``[B, C, H, W]`` and labels ``[B]`` to one sentence each:

* :class:`VLMCaptioner`: an image-text-to-text model through ``transformers`` (where weights are
  reachable);
* :class:`AttributeCaptioner`: offline; measures each image's brightness, extent, aspect,
  left-right symmetry and texture, bins them into words and adds the class name, e.g.
  ``"a bright, large, tall, symmetric, smooth trouser"``. Deterministic, so a data set has few
  distinct sentences and they are embedded once.
"""

from __future__ import annotations

from typing import Protocol

import numpy as np
import torch


class Captioner(Protocol):
    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> list[str]: ...


class AttributeCaptioner:
    """Caption from measured attributes (fixed bin edges, documented below) and the class name.

    On ``x`` in [0, 1] (grey, or RGB luminance) with foreground ``m = x > fg``:
      brightness  = mean of x over m           dark < 0.57 <= mid-grey < 0.72 <= bright
      extent      = |m| / (H W)                small < 0.28 <= medium-sized < 0.41 <= large
      aspect      = bbox height / bbox width   wide < 0.85 <= square < 1.3 <= tall
      symmetry    = 1 - mean|x - flip_lr(x)| / mean(x + flip_lr(x))    symmetric if >= 0.8
      texture     = mean |grad x| over m        smooth < 0.24 <= textured < 0.3 <= busy

    The edges are near the tertiles of Fashion-MNIST padded to 32x32, so each word is informative.
    """

    def __init__(self, class_names: list[str], fg: float = 0.1):
        self.class_names = list(class_names)
        self.fg = fg

    def attributes(self, images: torch.Tensor) -> dict[str, np.ndarray]:
        x = images.float() / 255.0  # (B, C, H, W)
        if x.shape[1] == 3:
            x = (0.299 * x[:, 0] + 0.587 * x[:, 1] + 0.114 * x[:, 2]).unsqueeze(1)
        x = x[:, 0]  # (B, H, W)
        B, H, W = x.shape
        m = x > self.fg
        area = m.sum((1, 2)).clamp_min(1).float()
        brightness = (x * m).sum((1, 2)) / area
        extent = m.float().mean((1, 2))
        rows, cols = m.any(2), m.any(1)  # (B, H), (B, W)
        idx_h, idx_w = torch.arange(H), torch.arange(W)
        height = torch.where(rows, idx_h, -1).amax(1) - torch.where(rows, idx_h, H).amin(1) + 1
        width = torch.where(cols, idx_w, -1).amax(1) - torch.where(cols, idx_w, W).amin(1) + 1
        aspect = height.clamp_min(1).float() / width.clamp_min(1).float()
        flipped = x.flip(-1)
        symmetry = 1 - (x - flipped).abs().mean((1, 2)) / (x + flipped).mean((1, 2)).clamp_min(1e-6)
        gy = (x[:, 1:, :] - x[:, :-1, :]).abs()[:, :, :-1]
        gx = (x[:, :, 1:] - x[:, :, :-1]).abs()[:, :-1, :]
        texture = ((gx + gy) * m[:, :-1, :-1]).sum((1, 2)) / area
        return {
            k: v.numpy()
            for k, v in dict(
                brightness=brightness, extent=extent, aspect=aspect, symmetry=symmetry, texture=texture
            ).items()
        }

    @staticmethod
    def _bin(values: np.ndarray, edges: list[float], words: list[str]) -> np.ndarray:
        return np.array(words)[np.digitize(values, edges)]

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> list[str]:
        if images.dtype != torch.uint8 or images.dim() != 4:
            raise ValueError(
                f"captioner: expects uint8 images [B, C, H, W], got {images.dtype} {tuple(images.shape)}"
            )
        a = self.attributes(images)
        words = {
            "brightness": self._bin(a["brightness"], [0.57, 0.72], ["dark", "mid-grey", "bright"]),
            "extent": self._bin(a["extent"], [0.28, 0.41], ["small", "medium-sized", "large"]),
            "aspect": self._bin(a["aspect"], [0.85, 1.3], ["wide", "square", "tall"]),
            "symmetry": self._bin(a["symmetry"], [0.8], ["asymmetric", "symmetric"]),
            "texture": self._bin(a["texture"], [0.24, 0.3], ["smooth", "textured", "busy"]),
        }
        out = []
        for i, label in enumerate(labels.tolist()):
            if not 0 <= label < len(self.class_names):
                raise ValueError(f"captioner: label {label} outside the {len(self.class_names)} classes")
            adj = ", ".join(words[k][i] for k in ("brightness", "extent", "aspect", "symmetry", "texture"))
            out.append(f"a {adj} {self.class_names[label]}")
        return out


class VLMCaptioner:
    """One sentence per image from a vision-language model (``transformers`` image-text-to-text).

    ``model`` is a hub name or local folder (the paper used a Qwen2-VL-class model).
    """

    PROMPT = "Describe this image in one sentence."

    def __init__(self, model: str, device: str = "cpu", max_new_tokens: int = 40, prompt: str = PROMPT):
        from transformers import pipeline

        try:
            self.pipe = pipeline("image-text-to-text", model=model, device=device)
        except Exception as err:  # noqa: BLE001 - hub / format errors
            raise ValueError(
                f"captioner: cannot load VLM {model!r} ({type(err).__name__}: {err}); offline, "
                "use the attribute captioner"
            ) from err
        self.max_new_tokens, self.prompt = max_new_tokens, prompt

    def __call__(self, images: torch.Tensor, labels: torch.Tensor) -> list[str]:
        from PIL import Image

        pil = []
        for img in images:
            arr = img.permute(1, 2, 0).numpy()
            pil.append(Image.fromarray(arr[..., 0] if arr.shape[-1] == 1 else arr).convert("RGB"))
        messages = [
            [
                {
                    "role": "user",
                    "content": [{"type": "image", "image": im}, {"type": "text", "text": self.prompt}],
                }
            ]
            for im in pil
        ]
        outs = self.pipe(text=messages, max_new_tokens=self.max_new_tokens, return_full_text=False)
        return [o[0]["generated_text"].strip() for o in outs]


def build_captioner(name: str, class_names: list[str], device: str = "cpu") -> Captioner:
    """``"attributes"`` (offline) or ``"vlm:<hub name or folder>"``."""
    if name == "attributes":
        return AttributeCaptioner(class_names)
    if name.startswith("vlm:"):
        return VLMCaptioner(name[4:], device=device)
    raise ValueError(f"captioner: unknown {name!r}; use 'attributes' or 'vlm:<model>'")
