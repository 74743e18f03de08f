"""Fashion-MNIST (Xiao et al., 2017): 60k + 10k grey 28x28 images, 10 classes.

An explicit ``path`` (a folder with the four IDX files, gzipped or not) is the only place looked
at, downloading into it with ``download=True``. Without one: the folder in
``$REED_FASHION_MNIST``, the Debian package ``dataset-fashion-mnist``
(``/usr/share/datasets/fashion-mnist``), the cache folder, then a download into the cache folder
when ``download=True`` and the machine has internet.
"""

from __future__ import annotations

import gzip
import os
import urllib.request
from pathlib import Path

import numpy as np
import torch

from reed_core.cli import UserError, UserFileError
from reed_image.data.batch import ImageSet

CLASS_NAMES = [
    "t-shirt", "trouser", "pullover", "dress", "coat",
    "sandal", "shirt", "sneaker", "bag", "ankle boot",
]  # fmt: skip
DEBIAN_DIR = Path("/usr/share/datasets/fashion-mnist")
URL = "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/"
FILES = {
    "train": ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    "test": ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}


def _find(folder: Path, stem: str) -> Path | None:
    for name in (stem + ".gz", stem):
        if (folder / name).exists():
            return folder / name
    return None


def read_idx(path: Path) -> np.ndarray:
    """Read an IDX file (MNIST format, optionally gzipped) into a numpy array."""
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError) as err:
        raise UserError(f"Fashion-MNIST: cannot read {path} ({err})") from err
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] != 0x08:
        raise UserError(f"Fashion-MNIST: {path} is not an unsigned-byte IDX file")
    ndim = raw[3]
    dims = [int.from_bytes(raw[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim)]
    data = np.frombuffer(raw, dtype=np.uint8, offset=4 + 4 * ndim)
    if data.size != int(np.prod(dims)):
        raise UserError(f"Fashion-MNIST: {path} holds {data.size} bytes, header says {dims}")
    return data.reshape(dims)


def default_cache_dir() -> Path:
    return Path(os.environ.get("REED_CACHE", Path.home() / ".cache" / "reed")) / "fashion-mnist"


def locate(path: str | Path | None = None, download: bool = False) -> Path:
    """The folder holding the Fashion-MNIST IDX files (see module docstring for the order)."""
    if path is not None:  # an explicit folder is the only place looked at (no silent fallback)
        candidates = [Path(path)]
    else:
        env = os.environ.get("REED_FASHION_MNIST")
        candidates = ([Path(env)] if env else []) + [DEBIAN_DIR, default_cache_dir()]
    stems = [s for pair in FILES.values() for s in pair]
    for folder in candidates:
        if all(_find(folder, s) for s in stems):
            return folder
    if download:
        target = Path(path) if path is not None else default_cache_dir()
        target.mkdir(parents=True, exist_ok=True)
        for stem in stems:
            if _find(target, stem) is None:
                urllib.request.urlretrieve(URL + stem + ".gz", target / (stem + ".gz"))
        return target
    if path is not None:
        raise UserFileError(
            f"data.path: no Fashion-MNIST IDX files in {path} (expected {', '.join(stems)}, optionally "
            ".gz); point data.path at the folder that holds them, leave it unset to use the Debian package "
            "dataset-fashion-mnist, or add data.download=true on a machine with internet"
        )
    raise UserFileError(
        "Fashion-MNIST: IDX files not found in "
        + ", ".join(str(c) for c in candidates)
        + "; install the Debian package dataset-fashion-mnist, pass data.path, or set "
        "data.download=true on a machine with internet"
    )


def load_fashion_mnist(
    split: str = "train", path: str | Path | None = None, download: bool = False
) -> ImageSet:
    """``ImageSet`` with uint8 images ``[N, 1, 28, 28]``; ids ``"fmnist-<split>-<index>"``."""
    if split not in FILES:
        raise UserError(f"data.split: unknown {split!r}; choose one of {tuple(FILES)}")
    folder = locate(path, download)
    img_stem, lab_stem = FILES[split]
    images = read_idx(_find(folder, img_stem))  # (N, 28, 28)
    labels = read_idx(_find(folder, lab_stem))  # (N,)
    if images.ndim != 3 or labels.ndim != 1 or len(images) != len(labels):
        raise UserError(f"Fashion-MNIST in {folder}: images {images.shape} / labels {labels.shape}")
    return ImageSet(
        images=torch.from_numpy(images.copy()).unsqueeze(1),
        labels=torch.from_numpy(labels.astype(np.int64)),
        ids=[f"fmnist-{split}-{i:05d}" for i in range(len(images))],
        class_names=list(CLASS_NAMES),
        kind="pixel",
        name=f"fashion-mnist/{split}",
    )
