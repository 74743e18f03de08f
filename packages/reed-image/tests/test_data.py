"""Data sources: Fashion-MNIST IDX files (fixture, Debian package), ImageFolder, SD-VAE latents."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch
from PIL import Image

from reed_image.data import fit_resolution, load_fashion_mnist, load_image_folder, load_source
from reed_image.data.fashion_mnist import DEBIAN_DIR
from reed_image.data.latents import decode_latents, encode_latents, load_latents, load_vae, sample_posterior


def test_fashion_mnist_from_an_explicit_path(fmnist_dir):
    train = load_fashion_mnist("train", fmnist_dir)
    test = load_fashion_mnist("test", fmnist_dir)
    assert train.images.shape == (120, 1, 28, 28) and train.images.dtype == torch.uint8
    assert test.images.shape == (60, 1, 28, 28)
    assert train.labels.tolist()[:12] == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert train.ids[3] == "fmnist-train-00003" and train.num_classes == 10


def test_missing_and_corrupt_files_are_clear_errors(tmp_path, fmnist_dir):
    with pytest.raises(FileNotFoundError, match="dataset-fashion-mnist"):
        load_fashion_mnist("train", tmp_path / "nowhere")
    bad = tmp_path / "bad"
    bad.mkdir()
    for f in fmnist_dir.iterdir():
        (bad / f.name).write_bytes(f.read_bytes())
    with gzip.open(bad / "train-images-idx3-ubyte.gz", "wb") as fh:
        fh.write(b"\x00\x00\x08\x03" + (5).to_bytes(4, "big") * 3 + b"\x01" * 10)  # truncated body
    with pytest.raises(ValueError, match="train-images-idx3-ubyte.gz"):
        load_fashion_mnist("train", bad)
    with pytest.raises(ValueError, match="data.split"):
        load_fashion_mnist("val", fmnist_dir)


@pytest.mark.skipif(not DEBIAN_DIR.exists(), reason="Debian package dataset-fashion-mnist not installed")
def test_debian_package_is_found_without_a_path():
    test = load_fashion_mnist("test")
    assert test.images.shape == (10000, 1, 28, 28)
    assert torch.bincount(test.labels).tolist() == [1000] * 10


def test_pad_to_32_keeps_every_pixel(fmnist_dir):
    raw = load_fashion_mnist("train", fmnist_dir)
    padded = fit_resolution(raw, 32, "pad")
    assert padded.shape == (1, 32, 32)
    assert torch.equal(padded.images[:, :, 2:30, 2:30], raw.images)
    assert padded.images[:, :, :2].sum() == 0 and padded.images[:, :, :, 30:].sum() == 0
    resized = fit_resolution(raw, 32, "resize")
    assert resized.shape == (1, 32, 32) and resized.images.dtype == torch.uint8
    with pytest.raises(ValueError, match="smaller than the images"):
        fit_resolution(raw, 16, "pad")


def _write_folder(root, sizes=((40, 30), (20, 50))):
    g = np.random.default_rng(0)
    for cls, (w, h) in zip(("cat", "dog"), sizes):
        (root / cls).mkdir(parents=True)
        for i in range(3):
            Image.fromarray(g.integers(0, 255, (h, w, 3), dtype=np.uint8)).save(root / cls / f"{i}.png")


def test_image_folder(tmp_path):
    _write_folder(tmp_path / "imgs")
    (tmp_path / "imgs" / "cat" / "notes.txt").write_text("ignored")
    ds = load_image_folder(tmp_path / "imgs", 16, channels=3)
    assert ds.images.shape == (6, 3, 16, 16) and ds.class_names == ["cat", "dog"]
    assert ds.labels.tolist() == [0, 0, 0, 1, 1, 1] and ds.ids[0] == "cat/0.png"
    grey, _ = load_source("imagefolder", tmp_path / "imgs", "train", 8, channels=1)
    assert grey.images.shape == (6, 1, 8, 8)
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no class sub-folders"):
        load_image_folder(tmp_path / "empty", 16)


def test_sd_vae_latents_with_a_tiny_random_vae(tmp_path):
    from diffusers import AutoencoderKL

    torch.manual_seed(0)
    AutoencoderKL(
        in_channels=3,
        out_channels=3,
        latent_channels=4,
        block_out_channels=(8, 16),
        down_block_types=("DownEncoderBlock2D",) * 2,
        up_block_types=("UpDecoderBlock2D",) * 2,
        norm_num_groups=8,
        sample_size=16,
        layers_per_block=1,
    ).save_pretrained(tmp_path / "vae")
    vae = load_vae(str(tmp_path / "vae"))
    _write_folder(tmp_path / "imgs")
    images = load_image_folder(tmp_path / "imgs", 16, channels=3)
    path = encode_latents(vae, images, tmp_path / "latents.npz", batch_size=4, name="tiny")
    latents, scale = load_latents(path)
    assert latents.kind == "latent" and latents.images.shape == (6, 8, 8, 8)  # 2C moments, 16/2
    assert latents.ids == images.ids and scale == pytest.approx(vae.config.scaling_factor)
    z = sample_posterior(latents.images[:2], scale, torch.Generator().manual_seed(0))
    mean = latents.images[:2, :4].float() * scale
    assert z.shape == (2, 4, 8, 8) and not torch.equal(z, mean)
    assert decode_latents(vae, z, scale).shape == (2, 3, 16, 16)
    with pytest.raises(ValueError, match="cannot load AutoencoderKL"):
        load_vae(str(tmp_path / "no-vae"))
    with pytest.raises(FileNotFoundError, match="latent file"):
        load_latents(tmp_path / "missing.npz")
