"""Chemistry vocabulary and RDKit conversions: arrays <-> ``rdkit.Chem.Mol``.

A molecule is held as plain arrays (the form the model sees):

    x [N, 3] float   coordinates in Angstrom
    a [N]    int     atom type index into ``vocab.atoms``
    c [N]    int     formal charge index into ``vocab.charges``
    e [N, N] int     bond class: 0 none, 1 single, 2 double, 3 triple (Kekule form, symmetric)

Aromatic bonds are kekulized on the way in; RDKit perceives aromaticity again on the way out.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

BOND_ORDERS = (0, 1, 2, 3)  # bond class -> bond order (class 0 = no bond)
NUM_BOND_CLASSES = len(BOND_ORDERS)


@dataclass(frozen=True)
class Vocab:
    """Atom symbols and formal charges a data set uses (index = class id)."""

    name: str
    atoms: tuple[str, ...]
    charges: tuple[int, ...]

    def atom_index(self, symbol: str, where: str = "molecule") -> int:
        try:
            return self.atoms.index(symbol)
        except ValueError:
            raise ValueError(
                f"{where}: element {symbol!r} is not in the {self.name} vocabulary {self.atoms}"
            ) from None

    def charge_index(self, charge: int, where: str = "molecule") -> int:
        try:
            return self.charges.index(int(charge))
        except ValueError:
            raise ValueError(
                f"{where}: formal charge {charge:+d} is not in the {self.name} vocabulary {self.charges}"
            ) from None


QM9_VOCAB = Vocab("qm9", ("H", "C", "N", "O", "F"), (-1, 0, 1))
# GEOM-drugs elements (Hoogeboom et al. 2022); MOSES uses a subset.
DRUGS_VOCAB = Vocab(
    "drugs",
    ("H", "B", "C", "N", "O", "F", "Al", "Si", "P", "S", "Cl", "As", "Br", "I", "Hg", "Bi"),
    (-2, -1, 0, 1, 2, 3),
)
VOCABS = {"qm9": QM9_VOCAB, "drugs": DRUGS_VOCAB}


def get_vocab(name: str) -> Vocab:
    if name not in VOCABS:
        raise ValueError(f"vocab: unknown {name!r}; choose one of {sorted(VOCABS)}")
    return VOCABS[name]


# Allowed valences (sum of bond orders incl. hydrogens) per element and formal charge; the table
# of MiDi (Vignac et al. 2023) / EDM (Hoogeboom et al. 2022) extended with charged states.
ALLOWED_VALENCE: dict[str, dict[int, tuple[int, ...]]] = {
    "H": {0: (1,)},
    "B": {0: (3,), -1: (4,)},
    "C": {0: (4,), 1: (3,), -1: (3,)},
    "N": {0: (3,), 1: (4,), -1: (2,)},
    "O": {0: (2,), 1: (3,), -1: (1,)},
    "F": {0: (1,)},
    "Al": {0: (3,)},
    "Si": {0: (4,)},
    "P": {0: (3, 5), 1: (4,), -1: (2,)},
    "S": {0: (2, 4, 6), 1: (3,), -1: (1,)},
    "Cl": {0: (1,)},
    "As": {0: (3,)},
    "Br": {0: (1,)},
    "I": {0: (1,)},
    "Hg": {0: (1, 2)},
    "Bi": {0: (3, 5)},
}


def atom_is_stable(symbol: str, charge: int, valence: int) -> bool:
    """``valence`` (sum of bond orders) is one the element allows at this formal charge."""
    return valence in ALLOWED_VALENCE.get(symbol, {}).get(int(charge), ())


def _chem():
    from rdkit import Chem, RDLogger

    RDLogger.DisableLog("rdApp.*")
    return Chem


def mol_to_arrays(
    mol, vocab: Vocab, conf_id: int = -1, where: str = "molecule", add_hs: bool = True, kekulize: bool = True
):
    """RDKit mol with a 3-D conformer -> ``(x, a, c, e)`` arrays.

    ``add_hs``: add missing hydrogens (with coordinates); ``kekulize``: turn aromatic bonds into
    single/double. Generated molecules are read with both off, exactly as written.
    """
    Chem = _chem()
    if mol is None:
        raise ValueError(f"{where}: RDKit could not read the molecule")
    if mol.GetNumConformers() == 0:
        raise ValueError(f"{where}: molecule has no 3-D conformer")
    mol = Chem.Mol(mol)
    if add_hs and any(at.GetNumImplicitHs() > 0 for at in mol.GetAtoms()):
        mol = Chem.AddHs(mol, addCoords=True)
    if kekulize:
        try:
            Chem.Kekulize(mol, clearAromaticFlags=True)
        except Exception as err:  # noqa: BLE001 - RDKit raises several exception types
            raise ValueError(f"{where}: cannot kekulize ({err})") from err
    n = mol.GetNumAtoms()
    if n == 0:
        raise ValueError(f"{where}: molecule has no atoms")
    x = np.asarray(mol.GetConformer(conf_id).GetPositions(), dtype=np.float32)
    a = np.array([vocab.atom_index(at.GetSymbol(), where) for at in mol.GetAtoms()], np.int64)
    c = np.array([vocab.charge_index(at.GetFormalCharge(), where) for at in mol.GetAtoms()], np.int64)
    e = np.zeros((n, n), np.int64)
    for bond in mol.GetBonds():
        order = bond.GetBondTypeAsDouble()
        if order not in (1.0, 2.0, 3.0):
            raise ValueError(f"{where}: unsupported bond type {bond.GetBondType()}")
        i, j = bond.GetBeginAtomIdx(), bond.GetEndAtomIdx()
        e[i, j] = e[j, i] = int(order)
    return x, a, c, e


def arrays_to_mol(x, a, c, e, vocab: Vocab, sanitize: bool = False):
    """``(x, a, c, e)`` -> RDKit mol with one conformer (unsanitized unless ``sanitize``)."""
    Chem = _chem()
    from rdkit.Geometry import Point3D

    x, a, c, e = (np.asarray(v) for v in (x, a, c, e))
    rw = Chem.RWMol()
    for ai, ci in zip(a.tolist(), c.tolist()):
        atom = Chem.Atom(vocab.atoms[ai])
        atom.SetFormalCharge(vocab.charges[ci])
        atom.SetNoImplicit(True)  # every hydrogen is explicit
        rw.AddAtom(atom)
    bond_types = {1: Chem.BondType.SINGLE, 2: Chem.BondType.DOUBLE, 3: Chem.BondType.TRIPLE}
    n = len(a)
    iu, ju = np.triu_indices(n, k=1)
    for i, j in zip(iu.tolist(), ju.tolist()):
        if e[i, j] > 0:
            rw.AddBond(i, j, bond_types[int(e[i, j])])
    conf = Chem.Conformer(n)
    for i in range(n):
        conf.SetAtomPosition(i, Point3D(*map(float, x[i])))
    mol = rw.GetMol()
    mol.AddConformer(conf, assignId=True)
    if sanitize:
        Chem.SanitizeMol(mol)
    return mol


def valences(a, c, e) -> np.ndarray:
    """Sum of bond orders per atom, ``[N]``."""
    return np.asarray(e).sum(-1)


def smiles_of(mol, largest_fragment: bool = False) -> str | None:
    """Canonical heavy-atom SMILES (no stereo tags) of a sanitizable mol, else ``None``.

    Stereo is dropped so that a molecule read from an SDF (stereo perceived from 3-D) and the
    same graph built from arrays (no stereo) give the same string for uniqueness and novelty.
    """
    Chem = _chem()
    try:
        m = Chem.Mol(mol)
        Chem.SanitizeMol(m)
        if largest_fragment:
            frags = Chem.GetMolFrags(m, asMols=True, sanitizeFrags=False)
            m = max(frags, key=lambda f: f.GetNumAtoms())
        return Chem.MolToSmiles(Chem.RemoveHs(m), isomericSmiles=False)
    except Exception:  # noqa: BLE001
        return None
