"""Typed molecule batches (dense, padded; real atoms are a prefix of each row)."""

from __future__ import annotations

from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from reed_molecule.data.arrays import MoleculeArrays
from reed_molecule.ot import align_prior, centre, centred_gaussian


@dataclass
class MoleculeBatch:
    """``x0`` data and, for training, ``x1`` the OT-aligned prior sample.

    x0 [B, N, 3] float (centred on real atoms)   a [B, N] long    c [B, N] long
    e  [B, N, N] long (symmetric, 0 = no bond)    mask [B, N] bool
    x1 [B, N, 3] float or None                    index [B] long: position in the split
    """

    x0: torch.Tensor
    a: torch.Tensor
    c: torch.Tensor
    e: torch.Tensor
    mask: torch.Tensor
    index: torch.Tensor
    x1: torch.Tensor | None = None

    def to(self, device, non_blocking: bool = True) -> MoleculeBatch:
        moved = {f.name: getattr(self, f.name) for f in fields(self)}
        moved = {
            k: (v.to(device, non_blocking=non_blocking) if isinstance(v, torch.Tensor) else v)
            for k, v in moved.items()
        }
        return replace(self, **moved)

    @property
    def num_atoms(self) -> torch.Tensor:
        return self.mask.sum(-1)

    def __len__(self) -> int:
        return self.x0.shape[0]


class PaddedMolecules:
    """A split held as dense padded arrays (all of QM9 train is ~60 MB), batched by index.

    ``batch(rows, rng)`` gathers rows, trims padding to the batch's largest molecule, samples the
    centred Gaussian prior and aligns it to the data by equivariant OT (:mod:`reed_molecule.ot`).
    """

    def __init__(self, arrays: MoleculeArrays, rows: np.ndarray | None = None, n_max: int | None = None):
        self.rows = np.arange(len(arrays)) if rows is None else np.asarray(rows)
        if len(self.rows) == 0:
            raise ValueError("PaddedMolecules: the split is empty")
        self.x, self.a, self.c, self.e, self.mask = arrays.to_padded(self.rows, n_max)
        self.x = centre(self.x, self.mask)
        self.num_atoms = self.mask.sum(-1)
        self.mol_id = arrays.mol_id[self.rows]  # source ids, for feature-store lookups
        self.vocab = arrays.vocab

    def __len__(self) -> int:
        return len(self.rows)

    def batch(
        self,
        idx: np.ndarray,
        rng: np.random.Generator | None = None,
        prior_sigma: float = 1.0,
        ot: str = "permutation+rotation",
    ) -> MoleculeBatch:
        idx = np.asarray(idx)
        n = int(self.num_atoms[idx].max())
        x0, mask = self.x[idx, :n], self.mask[idx, :n]
        x1 = None
        if rng is not None:
            x1 = align_prior(centred_gaussian(mask, prior_sigma, rng), x0, mask, ot)
        t = torch.from_numpy
        return MoleculeBatch(
            x0=t(np.ascontiguousarray(x0)),
            a=t(self.a[idx, :n].astype(np.int64)),
            c=t(self.c[idx, :n].astype(np.int64)),
            e=t(self.e[idx, :n, :n].astype(np.int64)),
            mask=t(np.ascontiguousarray(mask)),
            index=t(idx.astype(np.int64)),
            x1=None if x1 is None else t(x1),
        )


class SizeBucketSampler:
    """Batches of molecules of similar size, a drop-in for reed-core's ``EpochSampler``.

    A step's cost grows with the padded atom pairs ``B * N_max^2`` of its batch, while the useful
    work is ``sum_b n_b^2``; a batch of random QM9 molecules pads to near the largest molecule.
    Here each epoch draws a seeded permutation of the split (as ``EpochSampler``), cuts it into
    chunks of ``chunk`` batches, sorts each chunk by atom count, cuts the sorted chunk into
    batches and shuffles the epoch's batches. Every molecule is seen once per epoch, the batch
    size is constant, and ``indices(step, rank, world)`` is a pure function of its arguments (a
    resumed run draws the same data); rank ``r`` takes every ``world``-th molecule of the batch.
    """

    def __init__(self, num_atoms: np.ndarray, batch_size: int, seed: int = 0, chunk: int = 64):
        num_atoms = np.asarray(num_atoms)
        if len(num_atoms) < batch_size:
            raise ValueError(f"batch_size {batch_size} exceeds the {len(num_atoms)} examples")
        if chunk < 1:
            raise ValueError(f"data.bucket_chunk: must be >= 1, got {chunk}")
        self.num_atoms, self.batch_size, self.seed, self.chunk = num_atoms, batch_size, seed, chunk
        self.steps_per_epoch = len(num_atoms) // batch_size
        self._epoch, self._batches = -1, np.zeros((0, batch_size), np.int64)

    def _epoch_batches(self, epoch: int) -> np.ndarray:
        rng = np.random.default_rng([self.seed, epoch])
        B, S = self.batch_size, self.steps_per_epoch
        perm = rng.permutation(len(self.num_atoms))[: S * B]
        batches = []
        for start in range(0, S * B, self.chunk * B):
            part = perm[start : start + self.chunk * B]
            part = part[np.argsort(self.num_atoms[part], kind="stable")]
            batches.append(part.reshape(-1, B))
        batches = np.concatenate(batches)  # [S, B]
        return batches[rng.permutation(S)]

    def indices(self, step: int, rank: int = 0, world: int = 1) -> np.ndarray:
        epoch, i = divmod(step, self.steps_per_epoch)
        if epoch != self._epoch:
            self._epoch, self._batches = epoch, self._epoch_batches(epoch)
        return self._batches[i][rank::world]


def training_sampler(batching: str, num_atoms: np.ndarray, batch_size: int, seed: int, chunk: int = 64):
    """The sampler of ``data.batching``: ``random`` (reed-core's ``EpochSampler``) or ``size``
    (:class:`SizeBucketSampler`)."""
    from reed_core.train import EpochSampler

    if batching == "size":
        return SizeBucketSampler(num_atoms, batch_size, seed, chunk)
    if batching == "random":
        return EpochSampler(len(num_atoms), batch_size, seed)
    raise ValueError(f"data.batching: unknown {batching!r}; choose random or size")
