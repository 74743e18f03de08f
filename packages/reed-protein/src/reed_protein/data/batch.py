"""Padded batches of proteins for the model: a typed dataclass, never a tuple."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields, replace

import numpy as np
import torch

from reed_protein.data.residues import NUM_AA
from reed_protein.data.structure import Protein


@dataclass
class ProteinBatch:
    """B proteins padded to length L.

    X: ``[B, L, 4, 3]`` N, CA, C, O. S: ``[B, L]`` native tokens (``0..19``, 20 unknown).
    mask: ``[B, L]`` 1 for a residue, 0 for padding. residue_index, chain_labels, segment:
    ``[B, L]`` long (see :class:`Protein`). ids: the protein names.
    """

    X: torch.Tensor
    S: torch.Tensor
    mask: torch.Tensor
    residue_index: torch.Tensor
    chain_labels: torch.Tensor
    segment: torch.Tensor
    ids: list[str]

    @property
    def known(self) -> torch.Tensor:
        """``[B, L]`` bool: real residues whose amino acid is known (training and metric targets)."""
        return (self.mask > 0) & (self.S < NUM_AA)

    def to(self, device: torch.device | str, non_blocking: bool = False) -> ProteinBatch:
        moved = {
            f.name: getattr(self, f.name).to(device, non_blocking=non_blocking)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def pin_memory(self) -> ProteinBatch:
        moved = {
            f.name: getattr(self, f.name).pin_memory()
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, **moved)

    def repeat(self, n: int) -> ProteinBatch:
        """Each protein ``n`` times in a row (``[B, ...] -> [B * n, ...]``), e.g. several designs."""
        moved = {
            f.name: getattr(self, f.name).repeat_interleave(n, 0)
            for f in fields(self)
            if isinstance(getattr(self, f.name), torch.Tensor)
        }
        return replace(self, ids=[i for i in self.ids for _ in range(n)], **moved)

    def __len__(self) -> int:
        return len(self.ids)


def collate(proteins: Sequence[Protein], length: int | None = None) -> ProteinBatch:
    """Pad ``proteins`` to a common length (the longest, or ``length``)."""
    if not proteins:
        raise ValueError("collate: no proteins")
    L = max(len(p) for p in proteins) if length is None else length
    if any(len(p) > L for p in proteins):
        raise ValueError(f"collate: a protein is longer than length={L}")
    B = len(proteins)
    X = np.zeros((B, L, 4, 3), dtype=np.float32)
    S = np.zeros((B, L), dtype=np.int64)
    mask = np.zeros((B, L), dtype=np.float32)
    residue_index = np.zeros((B, L), dtype=np.int64)
    chain_labels = np.zeros((B, L), dtype=np.int64)
    segment = np.zeros((B, L), dtype=np.int64)
    for b, p in enumerate(proteins):
        n = len(p)
        X[b, :n] = p.X
        S[b, :n] = p.aatype
        mask[b, :n] = 1.0
        residue_index[b, :n] = p.residue_index
        chain_labels[b, :n] = p.chain_labels
        segment[b, :n] = p.segment
    return ProteinBatch(
        X=torch.from_numpy(X),
        S=torch.from_numpy(S),
        mask=torch.from_numpy(mask),
        residue_index=torch.from_numpy(residue_index),
        chain_labels=torch.from_numpy(chain_labels),
        segment=torch.from_numpy(segment),
        ids=[p.name for p in proteins],
    )


def crop(p: Protein, max_length: int, rng: np.random.Generator) -> Protein:
    """A random contiguous window of ``max_length`` residues (the protein itself if shorter)."""
    if len(p) <= max_length:
        return p
    start = int(rng.integers(0, len(p) - max_length + 1))
    sl = slice(start, start + max_length)
    return Protein(p.name, p.X[sl], p.aatype[sl], p.chain_id[sl], p.residue_index[sl], p.segment[sl], p.notes)


def token_batches(lengths: Sequence[int], max_tokens: int) -> list[np.ndarray]:
    """Indices grouped by length so that ``len(batch) * max_len <= max_tokens`` (ProteinMPNN's
    StructureLoader rule); fixed for the run, visited in a new order every epoch."""
    order = np.argsort(np.asarray(lengths), kind="stable")
    batches, current = [], []
    for i in order:
        if current and (len(current) + 1) * lengths[i] > max_tokens:
            batches.append(np.array(current))
            current = []
        current.append(int(i))
    if current:
        batches.append(np.array(current))
    return batches
