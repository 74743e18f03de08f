"""Drug-like molecules: MOSES (Polykovskiy et al. 2020) SMILES with RDKit ETKDG conformers.

The SMILES come from the ``molsets`` package's data files, read directly (importing ``moses``
itself would pull in pomegranate, which this workspace overrides away). ``molsets`` is not a
dependency of reed-molecule: its requirement pomegranate==0.12.0 does not build, so install it
without its dependencies, ``pip install --no-deps molsets==0.3.1`` (the uv workspace does this).

    python -m reed_molecule.data.moses --out moses_3d.npz --limit 20000
"""

from __future__ import annotations

import argparse
import gzip
import importlib.util
from pathlib import Path

import numpy as np

from reed_core.cli import UserError, UserFileError, main_guard
from reed_molecule.data.arrays import MoleculeArrays
from reed_molecule.data.sdf import from_smiles

MOSES_SPLITS = {"train": "train.csv.gz", "test": "test.csv.gz", "test_scaffolds": "test_scaffolds.csv.gz"}


def moses_data_dir() -> Path:
    spec = importlib.util.find_spec("moses")
    if spec is None or not spec.submodule_search_locations:
        raise UserError(
            "MOSES: its SMILES come from the data files of the PyPI package molsets, which is not "
            "installed; install it without its dependencies (its pomegranate==0.12.0 does not build): "
            "pip install --no-deps molsets==0.3.1"
        )
    return Path(list(spec.submodule_search_locations)[0]) / "dataset" / "data"


def read_moses_smiles(split: str = "train", limit: int | None = None) -> list[str]:
    if split not in MOSES_SPLITS:
        raise ValueError(f"MOSES split: unknown {split!r}; choose one of {sorted(MOSES_SPLITS)}")
    path = moses_data_dir() / MOSES_SPLITS[split]
    if not path.exists():
        raise UserFileError(f"MOSES: {path} missing from the molsets install; reinstall molsets==0.3.1")
    out = []
    with gzip.open(path, "rt") as fh:
        header = fh.readline().strip().split(",")
        col = header.index("SMILES") if "SMILES" in header else 0
        for line in fh:
            out.append(line.rstrip("\n").split(",")[col])
            if limit is not None and len(out) >= limit:
                break
    return out


def build_moses(limit: int = 10000, seed: int = 0) -> MoleculeArrays:
    smiles = read_moses_smiles("train", limit)
    arrays = from_smiles(smiles, "drugs", seed=seed, skip_failures=True)
    return arrays


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True)
    p.add_argument("--limit", type=int, default=10000, help="number of MOSES train SMILES")
    p.add_argument("--seed", type=int, default=0)
    args = p.parse_args(argv)
    arrays = build_moses(args.limit, args.seed)
    arrays.save(args.out)
    print(
        f"MOSES: {len(arrays)} molecules with ETKDG conformers -> {args.out} "
        f"(atoms per molecule: median {int(np.median(arrays.num_atoms))})"
    )


if __name__ == "__main__":
    main()
