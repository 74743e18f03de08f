"""On-disk store of precomputed target representations ``z``, keyed by example id.

An encoder runs once over a data set; training then reads ``z`` from memory-mapped shards instead
of running the encoder every step. Each example is an array ``[L_i, *shape]`` (``L_i`` rows: patch
tokens, residues, edges, or 1 for a global vector). Layout of a store folder::

    meta.json                 name, shape, dtype, shards, num_examples   (written last)
    ids.json                  example ids in storage order
    shard_00000.data.npy      rows of all examples in the shard        [R, *shape]
    shard_00000.offsets.npy   example i owns rows offsets[i]:offsets[i+1]   [n + 1] int64

Every file is written to a temporary name and moved into place with ``os.replace``, and
``meta.json`` goes last (and an overwritten store loses its old ``meta.json`` first), so a build
that dies midway leaves a store that reads as "not built", never a torn one.
Reads check the shard shapes and dtype against ``meta.json`` and name the file that disagrees.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from tqdm.auto import tqdm

META = "meta.json"
FORMAT_VERSION = 1


def _atomic_write_bytes(path: Path, write: Callable[[Any], None]) -> None:
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    with open(tmp, "wb") as fh:
        write(fh)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


class FeatureStoreError(ValueError):
    pass


@dataclass(frozen=True)
class StoreMeta:
    name: str
    shape: tuple[int, ...]  # trailing shape of each row
    dtype: str
    shards: tuple[int, ...]  # examples per shard
    num_examples: int
    fixed_length: int | None  # L when every example has the same number of rows
    version: int = FORMAT_VERSION


class FeatureStoreWriter:
    """Append examples ``(id, z[L, *shape])`` and write shards atomically.

    >>> with FeatureStoreWriter(root, "vision", shape=(768,), dtype="float16") as w:
    ...     w.add("img_0001", z)
    """

    def __init__(
        self,
        root: str | Path,
        name: str,
        shape: Sequence[int],
        dtype: str = "float16",
        shard_size: int = 4096,
        overwrite: bool = False,
    ):
        self.root = Path(root)
        if (self.root / META).exists() and not overwrite:
            raise FileExistsError(f"feature store {self.root} exists; pass overwrite=True to replace it")
        self.root.mkdir(parents=True, exist_ok=True)
        (self.root / META).unlink(missing_ok=True)
        self.name, self.shape, self.dtype = name, tuple(int(s) for s in shape), np.dtype(dtype)
        self.shard_size = shard_size
        self._ids: list[str] = []
        self._seen: set[str] = set()
        self._buffer: list[np.ndarray] = []
        self._shards: list[int] = []
        self._lengths: set[int] = set()

    def add(self, example_id: str, z: np.ndarray | torch.Tensor) -> None:
        example_id = str(example_id)
        if example_id in self._seen:
            raise FeatureStoreError(f"feature store {self.root}: duplicate example id {example_id!r}")
        if isinstance(z, torch.Tensor):
            z = z.detach().float().cpu().numpy()
        z = np.asarray(z)
        if z.ndim == len(self.shape):
            z = z[None]
        if tuple(z.shape[1:]) != self.shape:
            raise FeatureStoreError(
                f"feature store {self.root}: example {example_id!r} has rows of shape "
                f"{tuple(z.shape[1:])}, the store holds {self.shape}"
            )
        if not np.isfinite(z).all():
            raise FeatureStoreError(f"feature store {self.root}: example {example_id!r} is not finite")
        self._seen.add(example_id)
        self._ids.append(example_id)
        self._buffer.append(z.astype(self.dtype))
        self._lengths.add(z.shape[0])
        if len(self._buffer) >= self.shard_size:
            self._flush()

    def _flush(self) -> None:
        if not self._buffer:
            return
        index = len(self._shards)
        lengths = np.array([len(z) for z in self._buffer], dtype=np.int64)
        offsets = np.concatenate([[0], np.cumsum(lengths)]).astype(np.int64)
        data = np.concatenate(self._buffer, axis=0)
        _atomic_write_bytes(self.root / f"shard_{index:05d}.data.npy", lambda fh: np.save(fh, data))
        _atomic_write_bytes(self.root / f"shard_{index:05d}.offsets.npy", lambda fh: np.save(fh, offsets))
        self._shards.append(len(self._buffer))
        self._buffer = []

    def close(self) -> Path:
        self._flush()
        fixed = next(iter(self._lengths)) if len(self._lengths) == 1 else None
        meta = {
            "name": self.name,
            "shape": list(self.shape),
            "dtype": self.dtype.name,
            "shards": self._shards,
            "num_examples": len(self._ids),
            "fixed_length": fixed,
            "version": FORMAT_VERSION,
        }
        ids_blob = json.dumps(self._ids).encode()
        _atomic_write_bytes(self.root / "ids.json", lambda fh: fh.write(ids_blob))
        meta_blob = json.dumps(meta, indent=1).encode()
        _atomic_write_bytes(self.root / META, lambda fh: fh.write(meta_blob))
        return self.root

    def __enter__(self) -> FeatureStoreWriter:
        return self

    def __exit__(self, exc_type, *exc: object) -> None:
        if exc_type is None:
            self.close()


class FeatureStore:
    """Read side: memory-mapped shards, batched lookups by example id."""

    def __init__(self, root: str | Path):
        self.root = Path(root)
        meta_path = self.root / META
        if not meta_path.exists():
            raise FileNotFoundError(
                f"feature store {self.root}: no {META} (not built, or the build did not finish)"
            )
        try:
            raw = json.loads(meta_path.read_text())
            self.meta = StoreMeta(
                name=raw["name"],
                shape=tuple(raw["shape"]),
                dtype=raw["dtype"],
                shards=tuple(raw["shards"]),
                num_examples=int(raw["num_examples"]),
                fixed_length=raw.get("fixed_length"),
                version=int(raw.get("version", 1)),
            )
        except (json.JSONDecodeError, KeyError, TypeError) as err:
            raise FeatureStoreError(f"feature store {meta_path}: unreadable metadata ({err})") from err
        self.ids: list[str] = json.loads((self.root / "ids.json").read_text())
        if len(self.ids) != self.meta.num_examples:
            raise FeatureStoreError(
                f"feature store {self.root}: ids.json lists {len(self.ids)} examples, "
                f"meta.json says {self.meta.num_examples}"
            )
        self._data: list[np.ndarray] = []
        self._offsets: list[np.ndarray] = []
        for index, count in enumerate(self.meta.shards):
            data_path = self.root / f"shard_{index:05d}.data.npy"
            offs_path = self.root / f"shard_{index:05d}.offsets.npy"
            for path in (data_path, offs_path):
                if not path.exists():
                    raise FeatureStoreError(f"feature store {self.root}: missing shard file {path.name}")
            data = np.load(data_path, mmap_mode="r")
            offsets = np.load(offs_path)
            if data.dtype != np.dtype(self.meta.dtype) or tuple(data.shape[1:]) != self.meta.shape:
                raise FeatureStoreError(
                    f"feature store {data_path}: holds {data.dtype} rows of shape "
                    f"{tuple(data.shape[1:])}, meta.json says {self.meta.dtype} {self.meta.shape}"
                )
            if len(offsets) != count + 1 or offsets[-1] != len(data):
                raise FeatureStoreError(f"feature store {offs_path}: offsets do not match the shard")
            self._data.append(data)
            self._offsets.append(offsets)
        self._where: dict[str, tuple[int, int]] = {}
        i = 0
        for shard, count in enumerate(self.meta.shards):
            for row in range(count):
                self._where[self.ids[i]] = (shard, row)
                i += 1

    @classmethod
    def open(cls, root: str | Path) -> FeatureStore:
        return cls(root)

    def __len__(self) -> int:
        return self.meta.num_examples

    def __contains__(self, example_id: str) -> bool:
        return str(example_id) in self._where

    def example(self, example_id: str) -> np.ndarray:
        """``z[L, *shape]`` of one example (a memory-mapped view)."""
        key = str(example_id)
        if key not in self._where:
            raise KeyError(f"feature store {self.root}: no example with id {key!r}")
        shard, row = self._where[key]
        offsets = self._offsets[shard]
        return self._data[shard][offsets[row] : offsets[row + 1]]

    def get(
        self, ids: Iterable[str], dtype: torch.dtype = torch.float32
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """Padded batch ``z [B, L_max, *shape]`` and validity mask ``[B, L_max]``."""
        arrays = [self.example(i) for i in ids]
        L_max = max(len(a) for a in arrays)
        z = np.zeros((len(arrays), L_max, *self.meta.shape), dtype=np.float32)
        mask = np.zeros((len(arrays), L_max), dtype=bool)
        for b, a in enumerate(arrays):
            z[b, : len(a)] = a
            mask[b, : len(a)] = True
        return torch.from_numpy(z).to(dtype), torch.from_numpy(mask)

    def get_fixed(self, ids: Iterable[str], dtype: torch.dtype = torch.float32) -> torch.Tensor:
        """Batch ``z [B, L, *shape]`` for stores whose examples all have ``L`` rows."""
        if self.meta.fixed_length is None:
            raise FeatureStoreError(f"feature store {self.root}: examples differ in length; use get()")
        return torch.from_numpy(np.stack([self.example(i) for i in ids]).astype(np.float32)).to(dtype)

    def as_tensor(self, ids: Sequence[str] | None = None) -> torch.Tensor:
        """All (or ``ids``) fixed-length examples as one tensor in the stored dtype, for pinning."""
        if self.meta.fixed_length is None:
            raise FeatureStoreError(f"feature store {self.root}: examples differ in length")
        ids = self.ids if ids is None else ids
        return torch.from_numpy(np.stack([np.asarray(self.example(i)) for i in ids]))


def build_feature_store(
    encode: Callable[[Any], torch.Tensor | list[torch.Tensor]],
    batches: Iterable[tuple[Sequence[str], Any]],
    root: str | Path,
    name: str,
    shape: Sequence[int],
    dtype: str = "float16",
    total: int | None = None,
    shard_size: int = 4096,
    overwrite: bool = False,
) -> FeatureStore:
    """Run ``encode(inputs)`` once per ``(ids, inputs)`` batch and store each example's ``z``.

    ``encode`` returns ``[B, L, *shape]`` (or a list of ``[L_i, *shape]`` for ragged outputs).
    """
    with (
        torch.inference_mode(),
        FeatureStoreWriter(root, name, shape, dtype, shard_size, overwrite) as writer,
    ):
        for ids, inputs in tqdm(batches, total=total, desc=f"features:{name}", unit="batch"):
            z = encode(inputs)
            if len(z) != len(ids):
                raise FeatureStoreError(f"encoder returned {len(z)} outputs for {len(ids)} ids")
            for example_id, z_i in zip(ids, z):
                writer.add(example_id, z_i)
    return FeatureStore(root)
