"""Molecule metrics (RDKit), with the definitions of EDM / MiDi for predicted bonds:

* atom stability: fraction of atoms whose valence (sum of bond orders, hydrogens explicit) is one
  the element allows at its formal charge (:data:`reed_molecule.chem.ALLOWED_VALENCE`);
* molecule stability: fraction of molecules whose atoms are all stable;
* validity: fraction of molecules RDKit sanitizes; connected validity: valid and one fragment;
* uniqueness: distinct canonical SMILES (largest fragment) / valid molecules;
* novelty: distinct valid SMILES not in the training set / distinct valid SMILES;
* MMFF94 energy of the generated geometry and strain = E(generated) - E(MMFF-relaxed), kcal/mol
  (medians over valid connected molecules MMFF can type);
* FCD (Preuer et al. 2018): Frechet distance of ChemNet activations to a reference set. If ChemNet
  is also the alignment target of the run being scored, say so next to the number.
"""

from __future__ import annotations

from collections.abc import Iterable

import numpy as np

from reed_molecule.chem import Vocab, arrays_to_mol, atom_is_stable, smiles_of


def atom_stability(a, c, e, vocab: Vocab) -> np.ndarray:
    """Boolean ``[N]``: is each atom's valence allowed for its element and charge."""
    val = np.asarray(e).sum(-1)
    return np.array(
        [
            atom_is_stable(vocab.atoms[ai], vocab.charges[ci], int(v))
            for ai, ci, v in zip(np.asarray(a).tolist(), np.asarray(c).tolist(), val.tolist())
        ],
        dtype=bool,
    )


def rdkit_available() -> bool:
    try:
        import rdkit  # noqa: F401
    except ImportError:
        return False
    return True


def mmff_energy_and_strain(mol, max_iters: int = 500) -> tuple[float, float] | None:
    """``(E_generated, E_generated - E_relaxed)`` in kcal/mol, or ``None`` if MMFF cannot type it."""
    from rdkit import Chem
    from rdkit.Chem import AllChem

    try:
        m = Chem.Mol(mol)
        Chem.SanitizeMol(m)
        props = AllChem.MMFFGetMoleculeProperties(m)
        if props is None:
            return None
        ff = AllChem.MMFFGetMoleculeForceField(m, props)
        if ff is None:
            return None
        e_gen = ff.CalcEnergy()
        ff.Minimize(maxIts=max_iters)
        e_min = ff.CalcEnergy()
        if not (np.isfinite(e_gen) and np.isfinite(e_min)):
            return None
        return float(e_gen), float(e_gen - e_min)
    except Exception:  # noqa: BLE001
        return None


def evaluate_molecules(
    molecules: Iterable,
    vocab: Vocab,
    train_smiles: set[str] | None = None,
    mmff: bool = True,
    mmff_max: int = 200,
) -> dict[str, float]:
    """Metrics of dense ``(x, a, c, e)`` molecules; returns fractions in [0, 1] and medians.
    Without RDKit only the stabilities are computed (``rdkit_metrics`` 0 says so)."""
    use_rdkit = rdkit_available()
    n_mols = n_atoms = n_stable_atoms = n_stable_mols = n_valid = n_connected = 0
    valid_smiles: list[str] = []
    energies, strains = [], []
    for x, a, c, e in molecules:
        n_mols += 1
        stable = atom_stability(a, c, e, vocab)
        n_atoms += len(stable)
        n_stable_atoms += int(stable.sum())
        n_stable_mols += int(stable.all())
        if not use_rdkit:
            continue
        mol = arrays_to_mol(x, a, c, e, vocab)
        smi = smiles_of(mol)
        if smi is None:
            continue
        n_valid += 1
        connected = "." not in smi
        n_connected += int(connected)
        valid_smiles.append(smi if connected else smiles_of(mol, largest_fragment=True))
        if mmff and connected and len(energies) < mmff_max:
            res = mmff_energy_and_strain(mol)
            if res is not None:
                energies.append(res[0])
                strains.append(res[1])
    if n_mols == 0:
        raise ValueError("metrics: no molecules to evaluate")
    if not use_rdkit:
        return {
            "atom_stability": n_stable_atoms / max(n_atoms, 1),
            "mol_stability": n_stable_mols / n_mols,
            "num_molecules": float(n_mols),
            "rdkit_metrics": 0.0,
        }
    unique = set(valid_smiles)
    out = {
        "atom_stability": n_stable_atoms / max(n_atoms, 1),
        "mol_stability": n_stable_mols / n_mols,
        "validity": n_valid / n_mols,
        "connected_validity": n_connected / n_mols,
        "uniqueness": len(unique) / max(n_valid, 1),
        "num_molecules": float(n_mols),
    }
    if train_smiles is not None:
        out["novelty"] = len(unique - train_smiles) / max(len(unique), 1)
    if mmff:
        out["mmff_energy_median"] = float(np.median(energies)) if energies else float("nan")
        out["mmff_strain_median"] = float(np.median(strains)) if strains else float("nan")
        out["mmff_count"] = float(len(energies))
    return out


def valid_smiles_of(molecules: Iterable, vocab: Vocab) -> list[str]:
    out = []
    for x, a, c, e in molecules:
        smi = smiles_of(arrays_to_mol(x, a, c, e, vocab), largest_fragment=True)
        if smi is not None:
            out.append(smi)
    return out


def frechet_chemnet_distance(
    gen_smiles: list[str], ref: list[str] | dict, device: str = "cpu", chemnet=None
) -> float:
    """FCD between generated SMILES and reference SMILES (or precomputed ``{'mu', 'sigma'}``)."""
    from reed_molecule.targets import ChemNet, frechet_distance

    if len(gen_smiles) < 2:
        return float("nan")
    chemnet = chemnet or ChemNet(device)
    pref = ref if isinstance(ref, dict) else chemnet.stats(ref)
    pgen = chemnet.stats(gen_smiles)
    return frechet_distance(pgen["mu"], pgen["sigma"], pref["mu"], pref["sigma"])
