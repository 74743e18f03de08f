"""Any ImageFolder (``root/<class>/<image>``), centre-cropped and resized as in ADM/DiT."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image

from reed_core.cli import UserError, UserFileError
from reed_image.data.batch import ImageSet

EXTENSIONS = {".png", ".jpg", ".jpeg", ".bmp", ".webp", ".gif", ".tif", ".tiff"}


def center_crop_arr(image: Image.Image, size: int) -> np.ndarray:
    """ADM's crop: halve with BOX while large, resize the short side with BICUBIC, crop the centre."""
    while min(*image.size) >= 2 * size:
        image = image.resize(tuple(x // 2 for x in image.size), resample=Image.BOX)
    scale = size / min(*image.size)
    image = image.resize(tuple(round(x * scale) for x in image.size), resample=Image.BICUBIC)
    arr = np.array(image)
    top, left = (arr.shape[0] - size) // 2, (arr.shape[1] - size) // 2
    return arr[top : top + size, left : left + size]


def load_image_folder(root: str | Path, resolution: int, channels: int = 3) -> ImageSet:
    """All images under ``root/<class>/``: uint8 ``[N, channels, resolution, resolution]``."""
    root = Path(root)
    if not root.is_dir():
        raise UserFileError(f"data.path: image folder {root} does not exist")
    classes = sorted(p.name for p in root.iterdir() if p.is_dir())
    if not classes:
        raise UserError(f"data.path: {root} has no class sub-folders (expected root/<class>/<img>)")
    mode = {1: "L", 3: "RGB"}.get(channels)
    if mode is None:
        raise UserError(f"data.channels: must be 1 or 3 for an image folder, got {channels}")
    arrays, labels, ids = [], [], []
    for label, cls in enumerate(classes):
        for path in sorted((root / cls).rglob("*")):
            if path.suffix.lower() not in EXTENSIONS:
                continue
            try:
                with Image.open(path) as im:
                    arr = center_crop_arr(im.convert(mode), resolution)
            except OSError as err:
                raise UserError(f"data.path: cannot read image {path} ({err})") from err
            arrays.append(arr.reshape(resolution, resolution, channels).transpose(2, 0, 1))
            labels.append(label)
            ids.append(str(path.relative_to(root)))
    if not arrays:
        raise UserError(f"data.path: no images with extensions {sorted(EXTENSIONS)} under {root}")
    return ImageSet(
        images=torch.from_numpy(np.stack(arrays)),
        labels=torch.tensor(labels, dtype=torch.int64),
        ids=ids,
        class_names=classes,
        kind="pixel",
        name=f"imagefolder/{root.name}",
    )
