import pytest


@pytest.fixture(scope="session")
def qm9_small_path():
    """64 QM9 molecules (48 train, 16 test) shipped with the package as ``packaged:qm9_64``
    (src/reed_molecule/fixtures/qm9_64.npz, made by tools/make_molecule_fixture.py)."""
    from reed_molecule.fixtures import packaged_path

    return packaged_path("qm9_64")


@pytest.fixture(scope="session")
def qm9_small(qm9_small_path):
    """The same 64 molecules in MoleculeArrays form."""
    from reed_molecule.data.arrays import MoleculeArrays

    return MoleculeArrays.load(qm9_small_path)
