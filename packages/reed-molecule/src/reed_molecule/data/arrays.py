"""``MoleculeArrays``: a ragged, compact in-memory / on-disk store of 3-D molecules.

Atoms of all molecules are concatenated; molecule ``i`` owns atoms ``atom_ptr[i]:atom_ptr[i+1]``
and bonds ``bond_ptr[i]:bond_ptr[i+1]`` (local atom indices, upper triangle, Kekule orders).
``save`` writes one ``.npz``; coordinates are stored as int16 milli-Angstrom (centred per
molecule; 0.5 mA rounding, far below DFT accuracy) so all of QM9 fits in ~20 MB.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from reed_core.cli import UserError, UserFileError
from reed_molecule.chem import Vocab, get_vocab

SPLITS = ("train", "val", "test")


@dataclass
class MoleculeArrays:
    vocab: Vocab
    atom_ptr: np.ndarray  # [M + 1] int64
    x: np.ndarray  # [A, 3] float32, Angstrom
    a: np.ndarray  # [A] int8 atom type index
    c: np.ndarray  # [A] int8 charge index
    bond_ptr: np.ndarray  # [M + 1] int64
    bond_ij: np.ndarray  # [Bd, 2] int16 local atom indices, i < j
    bond_order: np.ndarray  # [Bd] int8 in {1, 2, 3}
    mol_id: np.ndarray  # [M] int64 source identifier (QM9 index, row number, ...)
    smiles: list[str]  # [M] canonical heavy-atom SMILES
    splits: dict[str, np.ndarray] = field(default_factory=dict)  # name -> row indices

    def __post_init__(self) -> None:
        M = len(self.atom_ptr) - 1
        for name, arr, n in (
            ("bond_ptr", self.bond_ptr, M + 1),
            ("mol_id", self.mol_id, M),
            ("smiles", self.smiles, M),
        ):
            if len(arr) != n:
                raise ValueError(f"MoleculeArrays.{name}: length {len(arr)}, expected {n}")
        if len(self.x) != self.atom_ptr[-1] or len(self.a) != len(self.x) or len(self.c) != len(self.x):
            raise ValueError("MoleculeArrays: atom arrays disagree with atom_ptr")
        for name, idx in self.splits.items():
            if len(idx) and (idx.min() < 0 or idx.max() >= M):
                raise ValueError(f"MoleculeArrays.splits[{name!r}]: index out of range [0, {M})")

    def __len__(self) -> int:
        return len(self.atom_ptr) - 1

    @property
    def num_atoms(self) -> np.ndarray:
        return np.diff(self.atom_ptr)

    def get(self, i: int):
        """Molecule ``i`` as dense ``(x [N,3], a [N], c [N], e [N,N])``."""
        s, t = self.atom_ptr[i], self.atom_ptr[i + 1]
        n = t - s
        e = np.zeros((n, n), np.int64)
        bs, bt = self.bond_ptr[i], self.bond_ptr[i + 1]
        ij = self.bond_ij[bs:bt].astype(np.int64)
        e[ij[:, 0], ij[:, 1]] = self.bond_order[bs:bt]
        e[ij[:, 1], ij[:, 0]] = self.bond_order[bs:bt]
        return self.x[s:t].copy(), self.a[s:t].astype(np.int64), self.c[s:t].astype(np.int64), e

    def split(self, name: str) -> np.ndarray:
        if name not in self.splits:
            raise KeyError(f"MoleculeArrays: no split {name!r}; has {sorted(self.splits)}")
        return self.splits[name]

    def training_rows(self, split: str, limit: int = 0) -> np.ndarray:
        """Rows of ``split``, the first ``limit`` of them when ``limit > 0``."""
        rows = self.split(split)
        return rows[:limit] if limit > 0 else rows

    def to_padded(self, rows: np.ndarray | None = None, n_max: int | None = None):
        """Dense padded arrays for ``rows``: x [M,N,3] f32, a/c [M,N] i8, e [M,N,N] i8, mask [M,N]."""
        rows = np.arange(len(self)) if rows is None else np.asarray(rows)
        counts = self.num_atoms[rows]
        n_max = int(counts.max()) if n_max is None else n_max
        if counts.max() > n_max:
            raise ValueError(f"to_padded: a molecule has {counts.max()} atoms > n_max={n_max}")
        M = len(rows)
        x = np.zeros((M, n_max, 3), np.float32)
        a = np.zeros((M, n_max), np.int8)
        c = np.zeros((M, n_max), np.int8)
        e = np.zeros((M, n_max, n_max), np.int8)
        mask = np.zeros((M, n_max), bool)
        for k, i in enumerate(rows):
            s, t = self.atom_ptr[i], self.atom_ptr[i + 1]
            n = t - s
            x[k, :n], a[k, :n], c[k, :n], mask[k, :n] = self.x[s:t], self.a[s:t], self.c[s:t], True
            bs, bt = self.bond_ptr[i], self.bond_ptr[i + 1]
            ij = self.bond_ij[bs:bt].astype(np.int64)
            e[k, ij[:, 0], ij[:, 1]] = self.bond_order[bs:bt]
            e[k, ij[:, 1], ij[:, 0]] = self.bond_order[bs:bt]
        return x, a, c, e, mask

    def subset(self, rows: np.ndarray) -> MoleculeArrays:
        rows = np.asarray(rows)
        xs, as_, cs, ijs, os_, nat, nb = [], [], [], [], [], [], []
        for i in rows:
            s, t = self.atom_ptr[i], self.atom_ptr[i + 1]
            bs, bt = self.bond_ptr[i], self.bond_ptr[i + 1]
            xs.append(self.x[s:t]), as_.append(self.a[s:t]), cs.append(self.c[s:t])
            ijs.append(self.bond_ij[bs:bt]), os_.append(self.bond_order[bs:bt])
            nat.append(t - s), nb.append(bt - bs)
        return MoleculeArrays(
            vocab=self.vocab,
            atom_ptr=np.concatenate([[0], np.cumsum(nat)]).astype(np.int64),
            x=np.concatenate(xs),
            a=np.concatenate(as_),
            c=np.concatenate(cs),
            bond_ptr=np.concatenate([[0], np.cumsum(nb)]).astype(np.int64),
            bond_ij=np.concatenate(ijs).reshape(-1, 2),
            bond_order=np.concatenate(os_),
            mol_id=self.mol_id[rows],
            smiles=[self.smiles[i] for i in rows],
        )

    @classmethod
    def from_molecules(cls, mols, vocab: Vocab, mol_id, smiles) -> MoleculeArrays:
        """From a list of dense ``(x, a, c, e)`` tuples."""
        xs, as_, cs, ijs, os_, nat, nb = [], [], [], [], [], [], []
        for x, a, c, e in mols:
            iu, ju = np.nonzero(np.triu(e, 1))
            xs.append(np.asarray(x, np.float32)), as_.append(np.asarray(a, np.int8))
            cs.append(np.asarray(c, np.int8))
            ijs.append(np.stack([iu, ju], 1).astype(np.int16)), os_.append(e[iu, ju].astype(np.int8))
            nat.append(len(a)), nb.append(len(iu))
        return cls(
            vocab=vocab,
            atom_ptr=np.concatenate([[0], np.cumsum(nat)]).astype(np.int64),
            x=np.concatenate(xs).reshape(-1, 3),
            a=np.concatenate(as_),
            c=np.concatenate(cs),
            bond_ptr=np.concatenate([[0], np.cumsum(nb)]).astype(np.int64),
            bond_ij=np.concatenate(ijs).reshape(-1, 2),
            bond_order=np.concatenate(os_),
            mol_id=np.asarray(mol_id, np.int64),
            smiles=list(smiles),
        )

    # ---------------------------------------------------------------- disk
    def save(self, path: str | Path) -> Path:
        path = Path(path)
        centred = self.x.copy()
        for i in range(len(self)):
            s, t = self.atom_ptr[i], self.atom_ptr[i + 1]
            centred[s:t] -= centred[s:t].mean(0)
        if np.abs(centred).max() * 1000 > np.iinfo(np.int16).max:
            raise ValueError(f"{path}: a molecule extends beyond 32 Angstrom from its centre")
        blob = {
            "vocab": np.array(self.vocab.name),
            "atom_ptr": self.atom_ptr,
            "x_mA": np.round(centred * 1000).astype(np.int16),
            "a": self.a.astype(np.int8),
            "c": self.c.astype(np.int8),
            "bond_ptr": self.bond_ptr,
            "bond_ij": self.bond_ij.astype(np.int16),
            "bond_order": self.bond_order.astype(np.int8),
            "mol_id": self.mol_id,
            "smiles": np.frombuffer("\n".join(self.smiles).encode(), dtype=np.uint8),
        }
        for name, idx in self.splits.items():
            blob[f"split_{name}"] = np.asarray(idx, np.int64)
        tmp = path.with_name(path.name + ".tmp.npz")
        np.savez_compressed(tmp, **blob)
        tmp.replace(path)
        return path

    @classmethod
    def load(cls, path: str | Path) -> MoleculeArrays:
        """Read a file written by :meth:`save`; ``packaged:NAME`` reads a file shipped with the
        package (:mod:`reed_molecule.fixtures`, e.g. ``packaged:qm9_64``)."""
        from reed_molecule.fixtures import resolve_data_path

        path = resolve_data_path(path)
        if not path.exists():
            raise UserFileError(
                f"molecule arrays {path}: no such file (prepare it with "
                "`python -m reed_molecule.data.qm9 --out FILE`)"
            )
        try:
            z = np.load(path)
            vocab = get_vocab(str(z["vocab"]))
            smiles = bytes(z["smiles"]).decode().split("\n")
            splits = {k[len("split_") :]: z[k] for k in z.files if k.startswith("split_")}
            return cls(
                vocab=vocab,
                atom_ptr=z["atom_ptr"],
                x=z["x_mA"].astype(np.float32) / 1000,
                a=z["a"],
                c=z["c"],
                bond_ptr=z["bond_ptr"],
                bond_ij=z["bond_ij"],
                bond_order=z["bond_order"],
                mol_id=z["mol_id"],
                smiles=smiles,
                splits=splits,
            )
        except (KeyError, ValueError, OSError) as err:
            raise UserError(
                f"molecule arrays {path}: not a MoleculeArrays file ({type(err).__name__}: {err}); prepare "
                "one with `python -m reed_molecule.data.qm9 --out FILE`"
            ) from err
