"""QM9 (Ramakrishnan et al. 2014) from the PyPI package ``qm9pack``: 130,831 molecules with
B3LYP/6-31G(2df,p) coordinates and explicit hydrogens.

Bonds and formal charges: connectivity from the DFT geometry (RDKit ``DetermineConnectivity``,
covalent radii), then bonds, bond orders and charges copied from the molecule's SMILES through a
subgraph match onto that connectivity. Where the SMILES graph is not such a subgraph (2 of the
130,831 molecules), RDKit's ``DetermineBonds`` (xyz2mol, Kim & Kim 2015) assigns them from the
geometry alone. All 130,831 molecules convert; every one passes RDKit sanitization.

Split: the one of Anderson et al. (2019) used by EDM and later work: a seed-0 permutation of the
130,831 molecules sorted by QM9 index, 100,000 train / 17,748 val / 13,083 test.

    python -m reed_molecule.data.qm9 --out qm9.npz          # writes a compact MoleculeArrays file
"""

from __future__ import annotations

import argparse
import os
from multiprocessing import Pool
from pathlib import Path

import numpy as np

from reed_core.cli import main_guard
from reed_molecule.chem import QM9_VOCAB, mol_to_arrays, smiles_of
from reed_molecule.data.arrays import MoleculeArrays

QM9_SIZE = 130_831
N_TRAIN, N_TEST = 100_000, int(0.1 * QM9_SIZE)  # 13,083; val = the rest (17,748)
CSV_COLUMNS = ["Index", "SMILES", "N_atoms", "Elements", "XYZ_Ang"]


def qm9pack_dir() -> Path:
    import importlib.util

    spec = importlib.util.find_spec("qm9pack")
    if spec is None or not spec.submodule_search_locations:
        raise ImportError("QM9: the PyPI package 'qm9pack' is not installed (pip install qm9pack)")
    return Path(list(spec.submodule_search_locations)[0]) / "data"


def read_qm9pack_csv(data_dir: str | Path | None = None):
    """The three ``qm9_part*.csv`` files of qm9pack as one DataFrame sorted by QM9 index."""
    import pandas as pd

    data_dir = Path(data_dir) if data_dir else qm9pack_dir()
    parts = sorted(data_dir.glob("qm9_part*.csv"))
    if not parts:
        raise FileNotFoundError(f"QM9: no qm9_part*.csv in {data_dir}")
    df = pd.concat([pd.read_csv(p, usecols=CSV_COLUMNS) for p in parts], ignore_index=True)
    return df.sort_values("Index").reset_index(drop=True)


def parse_row(elements: str, xyz: str, n_atoms: int, where: str):
    symbols = [s.strip().strip("'\"") for s in elements.strip("[]").split(",")]
    coords = np.array([float(v) for v in xyz.replace("[", "").replace("]", "").split(",")], dtype=np.float64)
    if len(symbols) != n_atoms or coords.size != 3 * n_atoms:
        raise ValueError(
            f"{where}: N_atoms={n_atoms} but {len(symbols)} elements and {coords.size} coordinates"
        )
    return symbols, coords.reshape(n_atoms, 3)


def mol_from_xyz_and_smiles(symbols, coords, smiles: str, where: str = "molecule"):
    """RDKit mol in XYZ atom order with bonds/charges from ``smiles`` (graph match) or, where the
    SMILES graph disagrees with the geometry, from xyz2mol. Returns ``(mol, source)``."""
    from rdkit import Chem
    from rdkit.Chem import rdDetermineBonds
    from rdkit.Geometry import Point3D

    rw = Chem.RWMol()
    for s in symbols:
        rw.AddAtom(Chem.Atom(s))
    conf = Chem.Conformer(len(symbols))
    for i, p in enumerate(coords):
        conf.SetAtomPosition(i, Point3D(*map(float, p)))
    rw.AddConformer(conf, assignId=True)
    geo = rw.GetMol()
    rdDetermineBonds.DetermineConnectivity(geo)
    tmpl = Chem.MolFromSmiles(smiles)
    if tmpl is not None:
        tmpl = Chem.AddHs(tmpl)
        Chem.Kekulize(tmpl, clearAromaticFlags=True)
        query = Chem.RWMol(tmpl)
        for b in query.GetBonds():
            b.SetBondType(Chem.BondType.SINGLE)
        for at in query.GetAtoms():
            at.SetFormalCharge(0)
            at.SetNoImplicit(True)
        # The SMILES graph must be a subgraph of the distance-based connectivity (strained rings
        # such as bicyclo[1.1.0]butane get extra 1,3 "bonds" from covalent radii alone).
        match = geo.GetSubstructMatch(query.GetMol())
        if len(match) == geo.GetNumAtoms() and geo.GetNumBonds() >= tmpl.GetNumBonds():
            out = Chem.RWMol(geo)
            for b in list(out.GetBonds()):
                out.RemoveBond(b.GetBeginAtomIdx(), b.GetEndAtomIdx())
            for b in tmpl.GetBonds():
                out.AddBond(match[b.GetBeginAtomIdx()], match[b.GetEndAtomIdx()], b.GetBondType())
            for at in tmpl.GetAtoms():
                out.GetAtomWithIdx(match[at.GetIdx()]).SetFormalCharge(at.GetFormalCharge())
            mol = out.GetMol()
            Chem.SanitizeMol(mol)
            return mol, "smiles"
    mol = Chem.Mol(rw.GetMol())
    rdDetermineBonds.DetermineBonds(mol, charge=0)
    Chem.SanitizeMol(mol)
    return mol, "xyz2mol"


def _convert(row):
    index, smiles, n_atoms, elements, xyz = row
    where = f"QM9 index {index}"
    try:
        symbols, coords = parse_row(elements, xyz, int(n_atoms), where)
        mol, source = mol_from_xyz_and_smiles(symbols, coords, smiles, where)
        if any(at.GetNumImplicitHs() for at in mol.GetAtoms()):
            raise ValueError("bond assignment left implicit hydrogens (radical geometry)")
        arrays = mol_to_arrays(mol, QM9_VOCAB, where=where)
        return index, arrays, smiles_of(mol), source, None
    except Exception as err:  # noqa: BLE001 - report and keep going
        return index, None, None, None, f"{where}: {err}"


def customary_split(num: int = QM9_SIZE, seed: int = 0) -> dict[str, np.ndarray]:
    """Anderson et al. (2019) / EDM: ``np.random.seed(0); permutation(N)``, 100k / rest / 10%."""
    perm = np.random.RandomState(seed).permutation(num)
    n_val = num - N_TRAIN - N_TEST
    return {
        "train": np.sort(perm[:N_TRAIN]),
        "val": np.sort(perm[N_TRAIN : N_TRAIN + n_val]),
        "test": np.sort(perm[N_TRAIN + n_val : N_TRAIN + n_val + N_TEST]),
    }


def build_qm9(
    data_dir: str | Path | None = None, limit: int | None = None, workers: int | None = None
) -> tuple[MoleculeArrays, dict]:
    df = read_qm9pack_csv(data_dir)
    if limit is not None:
        df = df.iloc[:limit]
    rows = list(df[CSV_COLUMNS].itertuples(index=False, name=None))
    workers = workers or min(8, os.cpu_count() or 1)
    with Pool(workers) as pool:
        results = pool.map(_convert, rows, chunksize=256)
    kept = [r for r in results if r[1] is not None]
    failed = [r[4] for r in results if r[1] is None]
    sources = [r[3] for r in kept]
    arrays = MoleculeArrays.from_molecules(
        [r[1] for r in kept], QM9_VOCAB, mol_id=[r[0] for r in kept], smiles=[r[2] or "" for r in kept]
    )
    if limit is None and len(df) == QM9_SIZE:
        split = customary_split()
        keep = np.isin(df["Index"].to_numpy(), arrays.mol_id)
        new_row = np.cumsum(keep) - 1  # row in `arrays` of each CSV row that was kept
        arrays.splits = {k: new_row[v[keep[v]]] for k, v in split.items()}
    else:
        perm = np.random.RandomState(0).permutation(len(arrays))
        n_tr, n_te = int(0.76 * len(arrays)), max(1, int(0.1 * len(arrays)))
        arrays.splits = {
            "train": np.sort(perm[:n_tr]),
            "val": np.sort(perm[n_tr:-n_te]),
            "test": np.sort(perm[-n_te:]),
        }
    report = {
        "molecules": len(df),
        "kept": len(kept),
        "failed": failed,
        "bonds_from_smiles": sources.count("smiles"),
        "bonds_from_xyz2mol": sources.count("xyz2mol"),
    }
    return arrays, report


@main_guard
def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="output .npz (MoleculeArrays)")
    p.add_argument("--data-dir", default=None, help="folder with qm9_part*.csv (default: qm9pack)")
    p.add_argument("--limit", type=int, default=None, help="first N molecules only (for tests)")
    p.add_argument("--workers", type=int, default=None)
    args = p.parse_args(argv)
    arrays, report = build_qm9(args.data_dir, args.limit, args.workers)
    arrays.save(args.out)
    print(
        f"QM9: {report['kept']}/{report['molecules']} molecules -> {args.out} "
        f"(bonds from SMILES match: {report['bonds_from_smiles']}, from xyz2mol: "
        f"{report['bonds_from_xyz2mol']}); splits "
        + ", ".join(f"{k} {len(v)}" for k, v in arrays.splits.items())
    )
    for line in report["failed"][:20]:
        print("  dropped:", line)


if __name__ == "__main__":
    main()
