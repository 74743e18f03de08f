"""Readers for real use: SDF files, GEOM-style pickles, and SMILES with RDKit ETKDG conformers.

Every reader returns a :class:`~reed_molecule.data.arrays.MoleculeArrays` (explicit hydrogens,
Kekule bonds, formal charges) and raises an error naming the file and record it cannot use.

* ``read_sdf(path)``: one molecule per SDF record (hydrogens added with coordinates if absent);
* ``read_geom_pickle(path)``: GEOM (Axelrod & Gomez-Bombarelli 2022) ``rdkit_folder`` pickles,
  ``{"conformers": [{"rd_mol": Mol, "boltzmannweight": w, ...}], ...}``; the ``max_conformers``
  lowest-energy (highest-weight) conformers are kept;
* ``from_smiles(smiles)``: ETKDGv3 embedding + MMFF relaxation (drug-like molecules, e.g. MOSES).
"""

from __future__ import annotations

import pickle
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from reed_molecule.chem import Vocab, get_vocab, mol_to_arrays, smiles_of
from reed_molecule.data.arrays import MoleculeArrays


def _chem():
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return Chem


def _assign_splits(arrays: MoleculeArrays, seed: int = 0, val: float = 0.1, test: float = 0.1):
    perm = np.random.RandomState(seed).permutation(len(arrays))
    n_te, n_va = int(test * len(arrays)), int(val * len(arrays))
    arrays.splits = {
        "test": np.sort(perm[:n_te]),
        "val": np.sort(perm[n_te : n_te + n_va]),
        "train": np.sort(perm[n_te + n_va :]),
    }
    return arrays


def read_sdf(path: str | Path, vocab: Vocab | str = "drugs") -> MoleculeArrays:
    Chem = _chem()
    vocab = get_vocab(vocab) if isinstance(vocab, str) else vocab
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(f"SDF {path}: no such file")
    supplier = Chem.SDMolSupplier(str(path), removeHs=False, sanitize=True)
    mols, ids, smiles = [], [], []
    for k, mol in enumerate(supplier):
        where = f"SDF {path} record {k + 1}"
        if mol is None:
            raise ValueError(f"{where}: RDKit cannot parse this record (bad atom/bond block or valence)")
        mols.append(mol_to_arrays(mol, vocab, where=where))
        ids.append(k)
        smiles.append(smiles_of(mol) or "")
    if not mols:
        raise ValueError(f"SDF {path}: no molecules (is it an SDF / MOL file?)")
    return _assign_splits(MoleculeArrays.from_molecules(mols, vocab, ids, smiles))


def read_geom_pickle(
    paths: Sequence[str | Path] | str | Path, vocab: Vocab | str = "drugs", max_conformers: int = 1
) -> MoleculeArrays:
    _chem()
    vocab = get_vocab(vocab) if isinstance(vocab, str) else vocab
    paths = [paths] if isinstance(paths, (str, Path)) else list(paths)
    mols, ids, smiles = [], [], []
    for path in map(Path, paths):
        try:
            with open(path, "rb") as fh:
                record = pickle.load(fh)
        except (OSError, pickle.UnpicklingError, EOFError) as err:
            raise ValueError(f"GEOM pickle {path}: cannot read ({err})") from err
        if not isinstance(record, dict) or "conformers" not in record:
            raise ValueError(f"GEOM pickle {path}: expected a dict with a 'conformers' list")
        confs = sorted(record["conformers"], key=lambda c: -float(c.get("boltzmannweight", 0.0)))
        for j, conf in enumerate(confs[:max_conformers]):
            where = f"GEOM pickle {path} conformer {j}"
            if "rd_mol" not in conf:
                raise ValueError(f"{where}: no 'rd_mol' entry")
            mols.append(mol_to_arrays(conf["rd_mol"], vocab, where=where))
            ids.append(len(ids))
            smiles.append(smiles_of(conf["rd_mol"]) or record.get("smiles", ""))
    if not mols:
        raise ValueError(f"GEOM pickles {paths}: no conformers")
    return _assign_splits(MoleculeArrays.from_molecules(mols, vocab, ids, smiles))


def embed_smiles(smiles: str, seed: int = 0, where: str = "smiles"):
    """RDKit mol with hydrogens and one ETKDGv3 conformer (MMFF-relaxed where MMFF can type it)."""
    Chem = _chem()
    from rdkit.Chem import AllChem

    mol = Chem.MolFromSmiles(smiles) if isinstance(smiles, str) and smiles else None
    if mol is None:
        raise ValueError(f"{where}: invalid SMILES {smiles!r}")
    mol = Chem.AddHs(mol)
    params = AllChem.ETKDGv3()
    params.randomSeed = seed
    if AllChem.EmbedMolecule(mol, params) != 0:
        raise ValueError(f"{where}: ETKDG could not embed {smiles!r} in 3-D")
    if AllChem.MMFFHasAllMoleculeParams(mol):
        AllChem.MMFFOptimizeMolecule(mol, maxIters=500)
    return mol


def from_smiles(
    smiles: Sequence[str], vocab: Vocab | str = "drugs", seed: int = 0, skip_failures: bool = False
) -> MoleculeArrays:
    vocab = get_vocab(vocab) if isinstance(vocab, str) else vocab
    mols, ids, canon = [], [], []
    for k, s in enumerate(smiles):
        where = f"smiles[{k}]"
        try:
            mol = embed_smiles(s, seed, where)
            mols.append(mol_to_arrays(mol, vocab, where=where))
        except ValueError:
            if skip_failures:
                continue
            raise
        ids.append(k)
        canon.append(smiles_of(mol) or s)
    if not mols:
        raise ValueError("from_smiles: no molecule could be embedded")
    return _assign_splits(MoleculeArrays.from_molecules(mols, vocab, ids, canon))
