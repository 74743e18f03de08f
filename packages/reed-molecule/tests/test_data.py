"""Data: QM9 conversion from XYZ + SMILES, compact storage, readers and their errors."""

import pickle

import numpy as np
import pytest

from reed_molecule.chem import QM9_VOCAB, arrays_to_mol
from reed_molecule.data.arrays import MoleculeArrays
from reed_molecule.data.batch import PaddedMolecules
from reed_molecule.data.qm9 import customary_split, mol_from_xyz_and_smiles, parse_row
from reed_molecule.data.sdf import from_smiles, read_geom_pickle, read_sdf


def test_customary_split_sizes_and_disjoint():
    s = customary_split()
    assert [len(s[k]) for k in ("train", "val", "test")] == [100_000, 17_748, 13_083]
    allrows = np.concatenate(list(s.values()))
    assert len(np.unique(allrows)) == 130_831


def test_bonds_from_xyz_and_smiles_match_stored_graph(qm9_small):
    # rebuild each molecule from its coordinates and SMILES alone, shuffled atom order
    rng = np.random.default_rng(0)
    for k in range(0, len(qm9_small), 4):
        x, a, c, e = qm9_small.get(k)
        perm = rng.permutation(len(a))
        symbols = [QM9_VOCAB.atoms[i] for i in a[perm]]
        mol, source = mol_from_xyz_and_smiles(symbols, x[perm].astype(np.float64), qm9_small.smiles[k])
        assert source == "smiles"
        from reed_molecule.chem import mol_to_arrays

        _, a2, c2, e2 = mol_to_arrays(mol, QM9_VOCAB, add_hs=False)
        assert (a2 == a[perm]).all() and (c2 == c[perm]).all()
        assert (e2 == e[perm][:, perm]).all()


def test_strained_ring_gets_smiles_bonds_not_distance_bonds():
    # bicyclo[1.1.0]butane: covalent radii alone bond the bridgeheads' 1,3 neighbours too
    from rdkit import Chem
    from rdkit.Chem import AllChem

    mol = Chem.AddHs(Chem.MolFromSmiles("C1C2CC12"))
    AllChem.EmbedMolecule(mol, randomSeed=0)
    x = mol.GetConformer().GetPositions()
    symbols = [at.GetSymbol() for at in mol.GetAtoms()]
    out, source = mol_from_xyz_and_smiles(symbols, x, "C1C2CC12")
    assert source == "smiles" and out.GetNumBonds() == mol.GetNumBonds()


def test_parse_row_checks_counts():
    with pytest.raises(ValueError, match="N_atoms=3"):
        parse_row("['C','H']", "[[0,0,0],[1,0,0]]", 3, "QM9 index 7")


def test_save_load_round_trip(qm9_small, tmp_path):
    path = qm9_small.save(tmp_path / "m.npz")
    back = MoleculeArrays.load(path)
    assert back.smiles == qm9_small.smiles and (back.mol_id == qm9_small.mol_id).all()
    for k in (0, 17, 63):
        for u, v in zip(back.get(k), qm9_small.get(k)):
            assert np.allclose(u, v, atol=1e-3)
    assert {k: len(v) for k, v in back.splits.items()} == {"train": 48, "val": 0, "test": 16}


def test_load_errors_name_the_file(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.npz"):
        MoleculeArrays.load(tmp_path / "nope.npz")
    bad = tmp_path / "bad.npz"
    np.savez(bad, something=np.zeros(3))
    with pytest.raises(ValueError, match="bad.npz"):
        MoleculeArrays.load(bad)


def test_padded_batch_is_centred_and_aligned(qm9_small):
    data = PaddedMolecules(qm9_small, qm9_small.split("train"))
    b = data.batch(np.arange(8), np.random.default_rng(0))
    n = b.mask.sum(1)
    assert b.x0.shape[1] == int(n.max())
    m = b.mask[..., None].float()
    assert (b.x0 * m).sum(1).abs().max() < 1e-3 and (b.x1 * m).sum(1).abs().max() < 1e-4
    assert (b.e == b.e.transpose(1, 2)).all()


def test_bad_smiles_is_a_clear_error():
    with pytest.raises(ValueError, match=r"smiles\[1\]: invalid SMILES 'C1CC'"):
        from_smiles(["CCO", "C1CC"], "qm9")
    from reed_molecule.targets import check_smiles

    with pytest.raises(ValueError, match=r"smiles\[0\]"):
        check_smiles(["not a smiles"])


def test_smiles_etkdg_gives_3d_molecules():
    arrays = from_smiles(["CCO", "c1ccccc1O"], "qm9")
    assert len(arrays) == 2 and arrays.num_atoms.tolist() == [9, 13]
    x, a, c, e = arrays.get(1)
    heavy = x[a != 0] - x[a != 0].mean(0)
    assert np.linalg.svd(heavy, compute_uv=False)[-1] < 0.1  # phenol's heavy atoms are planar


def test_sdf_reader_and_bad_sdf(qm9_small, tmp_path):
    from rdkit import Chem

    path = tmp_path / "ok.sdf"
    w = Chem.SDWriter(str(path))
    for k in range(3):
        w.write(arrays_to_mol(*qm9_small.get(k), QM9_VOCAB, sanitize=True))
    w.close()
    arrays = read_sdf(path, "qm9")
    assert len(arrays) == 3 and arrays.smiles == qm9_small.smiles[:3]
    bad = tmp_path / "bad.sdf"
    bad.write_text("garbage\n\n\n  2  1  0  0  0  0            999 V2000\nnot an atom line\n$$$$\n")
    with pytest.raises(ValueError, match="bad.sdf record 1"):
        read_sdf(bad, "qm9")
    with pytest.raises(FileNotFoundError, match="missing.sdf"):
        read_sdf(tmp_path / "missing.sdf")
    uranium = tmp_path / "u.sdf"
    mol = Chem.AddHs(Chem.MolFromSmiles("[U]"))
    mol.AddConformer(Chem.Conformer(mol.GetNumAtoms()))
    Chem.MolToMolFile(mol, str(uranium))
    with pytest.raises(ValueError, match="element 'U'"):
        read_sdf(uranium, "qm9")


def test_geom_pickle_reader(qm9_small, tmp_path):
    confs = [
        {"rd_mol": arrays_to_mol(*qm9_small.get(k), QM9_VOCAB, sanitize=True), "boltzmannweight": w}
        for k, w in ((5, 0.2), (6, 0.8))
    ]
    path = tmp_path / "mol.pickle"
    path.write_bytes(pickle.dumps({"conformers": confs, "smiles": "x"}))
    arrays = read_geom_pickle(path, "qm9", max_conformers=1)
    assert arrays.smiles == [qm9_small.smiles[6]]  # the highest Boltzmann weight first
    (tmp_path / "junk.pickle").write_bytes(b"junk")
    with pytest.raises(ValueError, match="junk.pickle"):
        read_geom_pickle(tmp_path / "junk.pickle")


def test_moses_smiles_are_read_from_molsets():
    from reed_molecule.data.moses import read_moses_smiles

    smiles = read_moses_smiles("train", limit=5)
    assert len(smiles) == 5 and all(isinstance(s, str) and s for s in smiles)
    with pytest.raises(ValueError, match="MOSES split"):
        read_moses_smiles("nope")


def test_size_bucket_sampler_covers_each_epoch_with_less_padding():
    from reed_core.train import EpochSampler
    from reed_molecule.data.batch import SizeBucketSampler

    rng = np.random.default_rng(0)
    num_atoms = rng.integers(3, 30, size=1000)
    s = SizeBucketSampler(num_atoms, batch_size=32, seed=1, chunk=8)
    assert s.steps_per_epoch == 31
    epoch = np.concatenate([s.indices(i) for i in range(31)])
    assert len(np.unique(epoch)) == len(epoch) == 31 * 32  # each molecule at most once per epoch
    fresh = SizeBucketSampler(num_atoms, batch_size=32, seed=1, chunk=8)
    assert np.array_equal(fresh.indices(40), s.indices(40))  # a pure function of the step
    assert np.array_equal(
        np.sort(np.concatenate([s.indices(5, r, 2) for r in (0, 1)])), np.sort(s.indices(5))
    )

    def padded_pairs(sampler):
        return sum(32 * num_atoms[sampler.indices(i)].max() ** 2 for i in range(31))

    assert padded_pairs(s) < 0.7 * padded_pairs(EpochSampler(1000, 32, seed=1))
