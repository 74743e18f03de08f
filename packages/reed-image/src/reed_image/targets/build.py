"""Precompute alignment targets once into reed-core feature stores, and read them back per batch.

A store is keyed by the data set's example ids, so the same store serves pixels and the SD-VAE
latents encoded from them (``encode_latents`` keeps the ImageFolder ids).

vision store:  ``[L, D]`` per image, ``L = h_e * w_e`` tokens on the encoder grid (float16).
caption store: ``[1, D]`` per image, the embedding of its caption; the distinct sentences, their
embeddings and each image's index are also written to ``captions.npz`` in the store folder, which
``encoder="table:<that file>"`` reuses without the text encoder (e.g. on a machine without it).
"""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import torch

from reed_core.features import FeatureStore, FeatureStoreError, FeatureStoreWriter, build_feature_store
from reed_core.recipe import TargetConfig
from reed_image.configs import target_captioner, target_input_size, target_kind
from reed_image.data.batch import ImageSet, to_unit_range
from reed_image.targets.captions import build_captioner
from reed_image.targets.text import SentenceEmbedder, embed_captions
from reed_image.targets.vision import VisionEncoder, build_vision_encoder


def store_root(name: str, tcfg: TargetConfig, run_dir: str | Path) -> Path:
    return Path(tcfg.store) if tcfg.store else Path(run_dir) / "features" / name


def _pixel_images(images: ImageSet, name: str) -> ImageSet:
    if images.kind != "pixel":
        raise ValueError(
            f"targets[{name!r}]: features are computed from pixel images; build the store from the "
            "image folder the latents came from (same ids), then train on the latents"
        )
    return images


def target_encoder(tcfg: TargetConfig, device: str | torch.device = "cpu") -> VisionEncoder:
    """The frozen vision encoder of a target (``encoder``, ``checkpoint``, ``options.input_size``)."""
    return build_vision_encoder(tcfg.encoder, tcfg.checkpoint or None, target_input_size(tcfg)).to(device)


@torch.no_grad()
def encode_tokens(encoder: VisionEncoder, x: torch.Tensor) -> torch.Tensor:
    """``z = E(x0)`` for pixels ``x [B, C, H, W]`` in [-1, 1]: tokens ``[B, L, D]`` in float16, the
    stored dtype (bf16 autocast on a GPU). Stores and ``location=online`` targets both use it."""
    with torch.autocast("cuda", torch.bfloat16, enabled=x.device.type == "cuda"):
        z = encoder(x)
    return z.to(torch.float16)  # no float32 round trip


def build_vision_store(
    name: str,
    tcfg: TargetConfig,
    images: ImageSet,
    root: str | Path,
    device: str | torch.device = "cpu",
    batch_size: int = 256,
    overwrite: bool = False,
) -> FeatureStore:
    images = _pixel_images(images, name)
    encoder = target_encoder(tcfg, device)

    def encode(x_u8: torch.Tensor) -> np.ndarray:
        return encode_tokens(encoder, to_unit_range(x_u8.to(device))).cpu().numpy()

    batches = (
        (images.ids[i : i + batch_size], images.images[i : i + batch_size])
        for i in range(0, len(images), batch_size)
    )
    return build_feature_store(
        encode,
        batches,
        root,
        name,
        (encoder.dim,),
        "float16",
        total=-(-len(images) // batch_size),
        overwrite=overwrite,
    )


def caption_table(
    name: str, tcfg: TargetConfig, images: ImageSet, device: str = "cpu", batch_size: int = 1024
) -> dict[str, np.ndarray]:
    """Captions of every image, embedded once per distinct sentence."""
    images = _pixel_images(images, name)
    captioner = build_captioner(target_captioner(tcfg), images.class_names, device)
    sentences: list[str] = []
    for i in range(0, len(images), batch_size):
        sentences += captioner(images.images[i : i + batch_size], images.labels[i : i + batch_size])
    distinct, emb, index = embed_captions(sentences, SentenceEmbedder(tcfg.encoder, device))
    return {
        "ids": np.array(images.ids),
        "index": index,
        "sentences": np.array(distinct),
        "embeddings": emb.astype(np.float32),
    }


def read_caption_table(path: str | Path) -> dict[str, np.ndarray]:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"caption table {path} does not exist")
    try:
        with np.load(path, allow_pickle=False) as f:
            table = {k: f[k] for k in ("ids", "index", "sentences", "embeddings")}
    except (KeyError, ValueError, OSError) as err:
        raise ValueError(f"caption table {path}: needs ids, index, sentences, embeddings ({err})") from err
    if table["index"].max(initial=0) >= len(table["embeddings"]) or len(table["index"]) != len(table["ids"]):
        raise ValueError(f"caption table {path}: index does not match ids / embeddings")
    return table


def build_caption_store(
    name: str,
    tcfg: TargetConfig,
    images: ImageSet,
    root: str | Path,
    device: str = "cpu",
    overwrite: bool = False,
) -> FeatureStore:
    root = Path(root)
    if tcfg.encoder.startswith("table:"):
        table = read_caption_table(tcfg.encoder[len("table:") :])
    else:
        table = caption_table(name, tcfg, images, device)
    row_of = {str(i): int(k) for i, k in zip(table["ids"], table["index"])}
    missing = [i for i in images.ids if i not in row_of]
    if missing:
        raise FeatureStoreError(
            f"caption table for target {name!r} has no caption for {len(missing)} images "
            f"(first: {missing[0]!r})"
        )
    emb = table["embeddings"]
    with FeatureStoreWriter(root, name, (emb.shape[1],), "float16", overwrite=overwrite) as w:
        for example_id in images.ids:
            w.add(example_id, emb[row_of[example_id]][None])
    tmp = root / f".captions.tmp{os.getpid()}.npz"
    np.savez(tmp, **table)
    os.replace(tmp, root / "captions.npz")
    return FeatureStore(root)


def ensure_store(
    name: str,
    tcfg: TargetConfig,
    images: ImageSet,
    run_dir: str | Path,
    device: str | torch.device = "cpu",
    rebuild: bool = False,
) -> FeatureStore:
    """Open the target's store, building it first when it does not exist (or ``rebuild``)."""
    root = store_root(name, tcfg, run_dir)
    if (root / "meta.json").exists() and not rebuild:
        return FeatureStore(root)
    if target_kind(tcfg) == "vision":
        return build_vision_store(name, tcfg, images, root, device, overwrite=True)
    return build_caption_store(name, tcfg, images, root, str(device), overwrite=True)


class TargetTable:
    """The ``z_k`` of every example of a data set, in data-set row order, gathered per batch.

    location: ``host`` (one tensor in RAM; each batch is gathered into pinned memory and copied
    asynchronously), ``device`` (the whole table in GPU memory), ``mmap`` (read from the store's
    memory-mapped shards per batch).
    """

    def __init__(
        self, store: FeatureStore, ids: list[str], location: str = "host", device: str | torch.device = "cpu"
    ):
        missing = [i for i in ids if i not in store]
        if missing:
            raise FeatureStoreError(
                f"feature store {store.root} has no entry for {len(missing)} of the data set's "
                f"{len(ids)} examples (first: {missing[0]!r}); rebuild it with "
                "`python -m reed_image.features` for this data set"
            )
        if store.meta.fixed_length is None:
            raise FeatureStoreError(f"feature store {store.root}: examples differ in length")
        self.store, self.ids, self.location = store, list(ids), location
        self.device = torch.device(device)
        self.length, self.dim = int(store.meta.fixed_length), int(store.meta.shape[-1])
        self.table: torch.Tensor | None = None
        if location in ("host", "device"):
            table = store.as_tensor(self.ids)  # (N, L, D) stored dtype
            self.table = table.to(self.device) if location == "device" else table

    def gather(self, index: torch.Tensor) -> torch.Tensor:
        """``z [B, L, D]`` on the training device for data-set rows ``index [B]`` (CPU long)."""
        index = index.cpu()
        if self.location == "device":
            if self.device.type == "cuda":  # a pinned source keeps the copy asynchronous
                index = index.pin_memory()
            return self.table.index_select(0, index.to(self.device, non_blocking=True))
        if self.location == "host":
            pin = self.device.type == "cuda"
            out = torch.empty(
                (len(index),) + tuple(self.table.shape[1:]), dtype=self.table.dtype, pin_memory=pin
            )
            torch.index_select(self.table, 0, index, out=out)
        else:
            out = self.store.as_tensor([self.ids[i] for i in index.tolist()])
            if self.device.type == "cuda":
                out = out.pin_memory()
        return out.to(self.device, non_blocking=True)
