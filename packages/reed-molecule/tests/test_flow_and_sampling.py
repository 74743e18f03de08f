"""Flow objective (closed-form corner cases, per-sample shapes, padding) and the sampler."""

import numpy as np
import pytest
import torch

from reed_molecule.chem import QM9_VOCAB
from reed_molecule.data.batch import PaddedMolecules
from reed_molecule.models.equivariant import DenoiserConfig, EquivariantDenoiser
from reed_molecule.objective import FlowConfig, MolecularFlow, corrupt, per_sample_losses, sample_tau
from reed_molecule.sampling import AtomCountDistribution, sample_molecules, write_sdf

K = (5, 3, 4)


@pytest.fixture(scope="module")
def data(qm9_small):
    return PaddedMolecules(qm9_small, qm9_small.split("train"))


@pytest.fixture(scope="module")
def net():
    torch.manual_seed(0)
    return EquivariantDenoiser(DenoiserConfig(scalars=16, vectors=4, edge_dim=8, num_layers=2, num_rbf=8))


def test_corrupt_endpoints(data):
    b = data.batch(np.arange(6), np.random.default_rng(0))
    clean = corrupt(b, torch.zeros(6), K)
    assert torch.equal(clean.x, b.x0) and torch.equal(clean.a, b.a) and torch.equal(clean.e, b.e)
    noise = corrupt(b, torch.ones(6), K)
    assert torch.allclose(noise.x, b.x1)
    assert (noise.a == K[0]).all() and (noise.c == K[1]).all()
    off = ~torch.eye(b.e.shape[1], dtype=torch.bool)
    assert (noise.e[:, off] == K[2]).all() and (noise.e.diagonal(dim1=1, dim2=2) == 0).all()
    half = corrupt(b, torch.full((6,), 0.5), K)
    assert (half.e == half.e.transpose(1, 2)).all()  # one draw per atom pair


def test_per_sample_losses_closed_form(data):
    b = data.batch(np.arange(4), np.random.default_rng(0))
    B, N = b.a.shape
    big = 50.0
    perfect = (
        b.x0,
        big * torch.nn.functional.one_hot(b.a, 5).float(),
        big * torch.nn.functional.one_hot(b.c, 3).float(),
        big * torch.nn.functional.one_hot(b.e, 4).float(),
    )
    parts = per_sample_losses(perfect, b)
    for v in parts.values():
        assert v.shape == (B,) and v.max() < 1e-6
    shifted = (b.x0 + torch.tensor([0.0, 0.0, 2.0]), *perfect[1:])
    assert torch.allclose(per_sample_losses(shifted, b)["x"], torch.full((B,), 4.0))
    uniform = (b.x0, torch.zeros(B, N, 5), torch.zeros(B, N, 3), torch.zeros(B, N, N, 4))
    parts = per_sample_losses(uniform, b)
    assert torch.allclose(parts["a"], torch.full((B,), np.log(5.0)), atol=1e-5)
    assert torch.allclose(parts["e"], torch.full((B,), np.log(4.0)), atol=1e-5)


def test_loss_of_a_molecule_does_not_depend_on_its_batch_padding(data, net):
    small, big = int(np.argmin(data.num_atoms)), int(np.argmax(data.num_atoms))
    alone = data.batch(np.array([small]), np.random.default_rng(0))
    padded = data.batch(np.array([small, big]), np.random.default_rng(1))
    n = alone.a.shape[1]
    padded.x1[0] = 0.0
    padded.x1[0, :n] = alone.x1[0]  # same prior sample for the shared molecule
    tau = torch.tensor([0.3, 0.7])
    noisy1 = corrupt(alone, tau[:1], K, generator=torch.Generator().manual_seed(3))
    noisy2 = corrupt(padded, tau, K, generator=torch.Generator().manual_seed(4))
    noisy2.a[0, :n], noisy2.c[0, :n], noisy2.e[0, :n, :n] = noisy1.a[0], noisy1.c[0], noisy1.e[0]
    p1 = net(noisy1.x, noisy1.a, noisy1.c, noisy1.e, alone.mask, tau[:1])
    p2 = net(noisy2.x, noisy2.a, noisy2.c, noisy2.e, padded.mask, tau)
    ref, both = per_sample_losses(p1, alone), per_sample_losses(p2, padded)
    for k in ref:
        assert ref[k].shape == (1,) and both[k].shape == (2,)
        assert torch.allclose(ref[k][0], both[k][0], atol=1e-4), k
    flow = MolecularFlow(FlowConfig(), K)
    out = flow.loss(net, padded)
    assert out.per_sample.shape == (2,) and torch.isfinite(out.per_sample).all()


def test_tau_sampling():
    g = torch.Generator().manual_seed(0)
    u = sample_tau(20000, "uniform", "cpu", g)
    b = sample_tau(20000, "beta", "cpu", g)
    assert 0 <= u.min() and u.max() <= 1 and abs(u.mean() - 0.5) < 0.02
    assert abs(b.mean() - 1 / 3) < 0.02  # Beta(1, 2)
    with pytest.raises(ValueError, match="tau_sampling"):
        FlowConfig(tau_sampling="lognormal")


def test_sampler_outputs_well_formed_molecules(net, tmp_path):
    counts = np.array([3, 9, 5])
    mols = sample_molecules(net, counts, steps=4, num_classes=K, seed=0)
    assert mols.mask.sum(1).tolist() == counts.tolist()
    assert (mols.e == mols.e.transpose(0, 2, 1)).all()
    assert (np.diagonal(mols.e, axis1=1, axis2=2) == 0).all()
    assert mols.a.max() < 5 and mols.c.max() < 3 and mols.e.max() < 4  # no mask token left
    assert np.abs(mols.x[~mols.mask]).max() == 0
    again = sample_molecules(net, counts, steps=4, num_classes=K, seed=0)
    assert np.array_equal(again.a, mols.a) and np.allclose(again.x, mols.x)
    # SDF written and read back unchanged (evaluate's reader keeps what was written)
    from reed_molecule.evaluate import sdf_molecules

    path = tmp_path / "gen.sdf"
    assert write_sdf(mols, QM9_VOCAB, path) == 3
    back = sdf_molecules(str(path), QM9_VOCAB)
    for (x, a, c, e), (x2, a2, c2, e2) in zip(mols, back):
        assert (a == a2).all() and (c == c2).all() and (e == e2).all()
        assert np.allclose(x, x2, atol=1e-3)


def test_impossible_atom_counts_are_clear_errors(qm9_small):
    dist = AtomCountDistribution(qm9_small.num_atoms)
    assert dist.sample(100, np.random.default_rng(0)).min() >= 1
    with pytest.raises(ValueError, match="--num-atoms: impossible atom count 0"):
        dist.check([5, 0])
    with pytest.raises(ValueError, match=rf"impossible atom count 200; .* 1..{dist.n_max}"):
        dist.check([200])
    back = AtomCountDistribution.from_state_dict(dist.state_dict())
    assert np.array_equal(back.counts, dist.counts)
    with pytest.raises(ValueError, match="--steps"):
        sample_molecules(None, np.array([3]), steps=0, num_classes=K)
