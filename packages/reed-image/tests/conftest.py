"""Shared fixtures: a tiny Fashion-MNIST-format data set, a caption table, tiny configs."""

from __future__ import annotations

import gzip
from pathlib import Path

import numpy as np
import pytest
import torch

from reed_core.curriculum import CurriculumConfig
from reed_core.recipe import ReedConfig
from reed_core.schedules import constant, linear_warmup
from reed_core.train import TrainConfig
from reed_image.configs import DataConfig, EvalConfig, ImageConfig, caption_target, vision_target
from reed_image.models.sit import SiTConfig
from reed_image.samplers import SamplerConfig

torch.set_num_threads(2)


def write_idx(path: Path, array: np.ndarray) -> None:
    header = bytes([0, 0, 0x08, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as fh:
        fh.write(header + array.astype(np.uint8).tobytes())


def synthetic_images(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """Class ``k`` draws a filled rectangle whose width grows with ``k`` (plus noise)."""
    g = np.random.default_rng(seed)
    labels = np.arange(n) % 10
    images = np.zeros((n, 28, 28), dtype=np.uint8)
    for i, k in enumerate(labels):
        w = 3 + 2 * k // 2
        top = int(g.integers(2, 8))
        images[i, top : top + 16, 14 - w // 2 : 14 + (w + 1) // 2] = 120 + 12 * k
    images = np.clip(images + g.integers(0, 20, images.shape), 0, 255).astype(np.uint8)
    return images, labels


@pytest.fixture(scope="session")
def fmnist_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("fmnist")
    for split, n, seed in (("train", 120, 0), ("t10k", 60, 1)):
        images, labels = synthetic_images(n, seed)
        write_idx(root / f"{split}-images-idx3-ubyte.gz", images)
        write_idx(root / f"{split}-labels-idx1-ubyte.gz", labels)
    return root


@pytest.fixture(scope="session")
def caption_table_file(fmnist_dir, tmp_path_factory) -> Path:
    """A caption table as ``image_prepare_carry`` writes it, with random 16-d sentence embeddings."""
    from reed_image.data import fit_resolution, load_fashion_mnist
    from reed_image.targets.captions import AttributeCaptioner

    images = fit_resolution(load_fashion_mnist("train", fmnist_dir), 32)
    sentences = AttributeCaptioner(images.class_names)(images.images, images.labels)
    distinct = sorted(set(sentences))
    emb = np.random.default_rng(0).standard_normal((len(distinct), 16)).astype(np.float32)
    index = np.array([distinct.index(s) for s in sentences])
    path = tmp_path_factory.mktemp("captions") / "captions.npz"
    np.savez(path, ids=np.array(images.ids), index=index, sentences=np.array(distinct), embeddings=emb)
    return path


def tiny_config(
    fmnist_dir: Path,
    run_dir: Path,
    caption_table: Path | None = None,
    vision: bool = True,
    caption: bool = True,
    steps: int = 4,
) -> ImageConfig:
    """SiT with 2 blocks of width 32 (patch 4: 8x8 tokens); EfficientNet-Lite0 at 32 px (1 token)."""
    targets = {
        "vision": vision_target(
            1,
            encoder="efficientnet-lite0",
            input_size=32,
            weight=0.5,
            projector_hidden=32,
            enabled=vision,
            location="host",
        ),
        "caption": caption_target(
            2,
            encoder=f"table:{caption_table}",
            weight=0.25,
            projector_hidden=32,
            enabled=caption and caption_table is not None,
        ),
    }
    return ImageConfig(
        model=SiTConfig(
            arch="SiT-S/4", input_size=32, in_channels=1, num_classes=10, depth=2, hidden_size=32, num_heads=2
        ),
        data=DataConfig(source="fashion-mnist", path=str(fmnist_dir), resolution=32),
        reed=ReedConfig(
            targets=targets,
            curriculum=CurriculumConfig(w_diff=linear_warmup(0, 2), w_align=constant()),
        ),
        train=TrainConfig(
            run_dir=str(run_dir),
            steps=steps,
            batch_size=8,
            lr=1e-3,
            log_every=2,
            ckpt_every=steps,
            device="cpu",
            progress_bar=False,
            tensorboard=False,
            ema_decay=0.9,
        ),
        sample=SamplerConfig(method="euler", steps=3),
        eval=EvalConfig(
            num_samples=10,
            batch_size=10,
            metrics=False,
            grid_size=10,
            sampler=SamplerConfig(method="euler", steps=3),
        ),
    )


@pytest.fixture
def tiny_cfg(fmnist_dir, caption_table_file, tmp_path) -> ImageConfig:
    return tiny_config(fmnist_dir, tmp_path / "run", caption_table_file)


@pytest.fixture
def make_cfg(fmnist_dir, caption_table_file, tmp_path):
    """``make_cfg(name, **kw)``: a tiny config whose run folder is ``tmp_path / name``."""

    def make(name: str = "run", **kw) -> ImageConfig:
        return tiny_config(fmnist_dir, tmp_path / name, caption_table_file, **kw)

    return make


@pytest.fixture
def idx_writer():
    return write_idx
