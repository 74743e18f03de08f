"""Regenerate packages/reed-molecule/src/reed_molecule/fixtures/qm9_64.npz: 48 train + 16 test QM9
molecules, shipped with the package (``packaged:qm9_64``: the ``tiny`` preset's data and the tests').

python -m reed_molecule.data.qm9 --out qm9.npz
python tools/make_molecule_fixture.py qm9.npz packages/reed-molecule/src/reed_molecule/fixtures/qm9_64.npz
"""

from __future__ import annotations

import sys

import numpy as np

from reed_molecule.data.arrays import MoleculeArrays


def main(src: str, dst: str) -> None:
    full = MoleculeArrays.load(src)
    rng = np.random.RandomState(1)
    rows = np.sort(
        np.concatenate(
            [
                rng.choice(full.split("train"), 48, replace=False),
                rng.choice(full.split("test"), 16, replace=False),
            ]
        )
    )
    sub = full.subset(rows)
    is_train = np.isin(rows, full.split("train"))
    sub.splits = {
        "train": np.nonzero(is_train)[0],
        "val": np.zeros(0, np.int64),
        "test": np.nonzero(~is_train)[0],
    }
    sub.save(dst)
    print(f"{len(sub)} molecules -> {dst}")


if __name__ == "__main__":
    main(*sys.argv[1:3])
