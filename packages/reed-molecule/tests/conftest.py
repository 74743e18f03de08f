from pathlib import Path

import pytest

DATA = Path(__file__).parent / "data"


@pytest.fixture(scope="session")
def qm9_small():
    """64 QM9 molecules (48 train, 16 test) in MoleculeArrays form (tools/make_molecule_fixture.py)."""
    from reed_molecule.data.arrays import MoleculeArrays

    return MoleculeArrays.load(DATA / "qm9_64.npz")


@pytest.fixture(scope="session")
def qm9_small_path():
    return DATA / "qm9_64.npz"
