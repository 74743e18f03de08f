"""Metrics: ~100% on QM9 ground truth, low on scrambled molecules."""

import numpy as np

from reed_molecule.chem import QM9_VOCAB, arrays_to_mol, mol_to_arrays, smiles_of
from reed_molecule.metrics import atom_stability, evaluate_molecules, mmff_energy_and_strain


def _molecules(arrays):
    return [arrays.get(i) for i in range(len(arrays))]


def test_ground_truth_is_stable_valid_unique(qm9_small):
    train = {qm9_small.smiles[i] for i in qm9_small.split("train")}
    m = evaluate_molecules(_molecules(qm9_small), qm9_small.vocab, train, mmff=True, mmff_max=8)
    assert m["atom_stability"] == 1.0
    assert m["mol_stability"] == 1.0
    assert m["validity"] == 1.0 and m["connected_validity"] == 1.0
    assert m["uniqueness"] > 0.95
    # test molecules are mostly novel w.r.t. the training part; training ones never are
    assert 0.1 < m["novelty"] < 0.5
    assert m["mmff_count"] == 8 and m["mmff_strain_median"] < 10.0  # DFT minima: small strain


def test_scrambled_molecules_score_low(qm9_small):
    rng = np.random.default_rng(0)
    scrambled = []
    for x, a, c, e in _molecules(qm9_small):
        n = len(a)
        e = np.triu(rng.integers(0, 4, size=(n, n)) * (rng.random((n, n)) < 0.2), 1)
        scrambled.append((x, rng.permutation(a), c, e + e.T))
    m = evaluate_molecules(scrambled, qm9_small.vocab, mmff=False)
    assert m["mol_stability"] < 0.05
    assert m["validity"] < 0.2
    assert m["atom_stability"] < 0.5


def test_one_missing_bond_breaks_stability_of_its_atoms(qm9_small):
    x, a, c, e = qm9_small.get(0)
    i, j = np.argwhere(np.triu(e, 1))[0]
    e = e.copy()
    e[i, j] = e[j, i] = 0
    stable = atom_stability(a, c, e, QM9_VOCAB)
    assert not stable[i] and not stable[j] and stable.sum() == len(a) - 2


def test_arrays_mol_round_trip(qm9_small):
    for k in range(len(qm9_small)):
        x, a, c, e = qm9_small.get(k)
        mol = arrays_to_mol(x, a, c, e, QM9_VOCAB)
        assert smiles_of(mol) == qm9_small.smiles[k]
        x2, a2, c2, e2 = mol_to_arrays(mol, QM9_VOCAB, add_hs=False)
        assert (a2 == a).all() and (c2 == c).all() and (e2 == e).all()
        assert np.allclose(x2, x, atol=1e-5)


def test_mmff_strain_is_positive_for_a_distorted_geometry(qm9_small):
    x, a, c, e = qm9_small.get(3)
    relaxed = mmff_energy_and_strain(arrays_to_mol(x, a, c, e, QM9_VOCAB))
    rng = np.random.default_rng(0)
    distorted = mmff_energy_and_strain(
        arrays_to_mol(x + 0.15 * rng.standard_normal(x.shape), a, c, e, QM9_VOCAB)
    )
    assert distorted[1] > relaxed[1] + 5.0
