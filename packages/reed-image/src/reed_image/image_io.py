"""Writing samples: PNG grids and ADM-layout ``.npz`` files (``arr_0``: uint8 ``[N, H, W, 3]``)."""

from __future__ import annotations

import math
import os
from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reed_image.data.batch import to_uint8


def make_grid(x: torch.Tensor, nrow: int | None = None, pad: int = 2) -> np.ndarray:
    """Images ``[N, C, H, W]`` in [-1, 1] -> one uint8 ``[rows*(H+pad)+pad, ..., 3]`` mosaic."""
    if x.dim() != 4 or x.shape[1] not in (1, 3):
        raise ValueError(f"make_grid: expected [N, 1|3, H, W], got {tuple(x.shape)}")
    u8 = to_uint8(x).cpu()
    if u8.shape[1] == 1:
        u8 = u8.expand(-1, 3, -1, -1)
    N, _, H, W = u8.shape
    nrow = nrow or math.ceil(math.sqrt(N))
    rows = math.ceil(N / nrow)
    grid = np.full((rows * (H + pad) + pad, nrow * (W + pad) + pad, 3), 255, dtype=np.uint8)
    for i in range(N):
        r, c = divmod(i, nrow)
        top, left = pad + r * (H + pad), pad + c * (W + pad)
        grid[top : top + H, left : left + W] = u8[i].permute(1, 2, 0).numpy()
    return grid


def save_grid(x: torch.Tensor, path: str | Path, nrow: int | None = None, scale: int = 1) -> Path:
    """Write a PNG mosaic of ``x`` (optionally enlarged ``scale`` times, nearest-neighbour)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    img = Image.fromarray(make_grid(x, nrow))
    if scale > 1:
        img = img.resize((img.width * scale, img.height * scale), Image.NEAREST)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}.png")
    img.save(tmp)
    os.replace(tmp, path)
    return path


def save_npz(x: torch.Tensor, path: str | Path, labels: torch.Tensor | None = None) -> Path:
    """ADM evaluation layout: ``arr_0`` uint8 ``[N, H, W, 3]`` (grey repeated), ``arr_1`` labels."""
    u8 = to_uint8(x).cpu()
    if u8.shape[1] == 1:
        u8 = u8.expand(-1, 3, -1, -1)
    arrays = {"arr_0": u8.permute(0, 2, 3, 1).contiguous().numpy()}
    if labels is not None:
        arrays["arr_1"] = labels.cpu().numpy().astype(np.int64)
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.stem}.tmp{os.getpid()}.npz")
    np.savez(tmp, **arrays)
    os.replace(tmp, path)
    return path


def load_npz_images(path: str | Path) -> torch.Tensor:
    """``arr_0`` of an ADM-layout file back to float ``[N, C, H, W]`` in [-1, 1]."""
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"samples file {path} does not exist")
    try:
        with np.load(path) as f:
            arr = f["arr_0"]
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"samples file {path}: not an ADM-layout .npz with arr_0 ({err})") from err
    if arr.ndim != 4 or arr.dtype != np.uint8:
        raise ValueError(
            f"samples file {path}: arr_0 must be uint8 [N, H, W, C], got {arr.dtype} {arr.shape}"
        )
    return torch.from_numpy(arr).permute(0, 3, 1, 2).float() / 127.5 - 1.0
