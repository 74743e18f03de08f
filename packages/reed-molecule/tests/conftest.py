import pytest
import torch


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


def _molecule_inputs(B=3, N=9, n_real=(9, 7, 5), seed=0):
    """A padded batch of random molecules: coordinates, atom types, charges, symmetric bonds,
    the real-atom mask (``n_real`` atoms each, coordinates zero beyond) and tau."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(B, N, 3, generator=g) * 1.5
    a = torch.randint(0, 6, (B, N), generator=g)
    c = torch.randint(0, 4, (B, N), generator=g)
    e = torch.triu(torch.randint(0, 5, (B, N, N), generator=g), 1)
    e = e + e.transpose(1, 2)
    mask = torch.arange(N)[None] < torch.tensor(n_real)[:, None]
    x = x * mask[..., None]
    tau = torch.rand(B, generator=g)
    return x, a, c, e, mask, tau


@pytest.fixture(scope="session")
def molecule_inputs():
    """``molecule_inputs(B, N, n_real, seed)``: the denoiser tests' random padded batch."""
    return _molecule_inputs
