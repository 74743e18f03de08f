"""The Semla denoiser (``model.arch=semla``): E(3) and permutation equivariance, padding, bf16,
REED taps, memorising a few QM9 molecules, and the train -> sample CLI path. Tiny shapes, CPU."""

import sys
from dataclasses import replace

import numpy as np
import pytest
import torch

from reed_molecule.configs import tiny_semla
from reed_molecule.models import DenoiserConfig, SemlaDenoiser, build_network


def _cfg(**kw) -> DenoiserConfig:
    """The tiny_semla preset's network, with changes."""
    return replace(tiny_semla().model, **kw)


def _self_cond(net, x, seed=1):
    if not net.cfg.self_condition:
        return None
    g = torch.Generator().manual_seed(seed)
    B, N, _ = x.shape
    return (
        x + 0.3 * torch.randn(B, N, 3, generator=g),
        torch.rand(B, N, 5, generator=g),
        torch.rand(B, N, 3, generator=g),
        torch.rand(B, N, N, 4, generator=g),
    )


def _orthogonal(seed: int, reflect: bool = False) -> torch.Tensor:
    g = torch.Generator().manual_seed(seed)
    Q, R = torch.linalg.qr(torch.randn(3, 3, generator=g))
    Q = Q * torch.sign(torch.diagonal(R))
    if torch.det(Q) < 0:
        Q[:, 0] = -Q[:, 0]
    return Q @ torch.diag(torch.tensor([-1.0, 1.0, 1.0])) if reflect else Q


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "self_cond"])
def net(request):
    torch.manual_seed(0)
    net = SemlaDenoiser(_cfg(self_condition=request.param)).eval()
    # the coordinate head starts at zero (x0_hat = x_tau); a trained one is not: test that one
    torch.nn.init.normal_(net.coord_head.weight, std=0.5)
    return net


def test_build_network_picks_the_arch():
    assert isinstance(build_network(_cfg()), SemlaDenoiser)
    with pytest.raises(ValueError, match="model.arch: unknown 'egnn'"):
        _cfg(arch="egnn")
    with pytest.raises(ValueError, match="model.heads: 5 must divide model.scalars"):
        _cfg(heads=5)
    with pytest.raises(ValueError, match="model.cutoff"):
        _cfg(cutoff=5.0)


@pytest.mark.parametrize("reflect", [False, True], ids=["rotation", "reflection"])
def test_rotation_translation_permutation_equivariance(net, reflect, molecule_inputs):
    x, a, c, e, mask, tau = molecule_inputs(n_real=(9, 9, 9))
    sc = _self_cond(net, x)
    Q, t = _orthogonal(3, reflect), torch.tensor([1.0, -2.0, 0.5])
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(5))
    out = net(x, a, c, e, mask, tau, sc)

    def move(y):  # rotate / reflect, translate, permute the atoms
        return (y @ Q.T + t)[:, perm]

    sc_g = None if sc is None else (move(sc[0]), sc[1][:, perm], sc[2][:, perm], sc[3][:, perm][:, :, perm])
    out_g = net(move(x), a[:, perm], c[:, perm], e[:, perm][:, :, perm], mask, tau, sc_g)
    assert torch.allclose(out_g[0], move(out[0]), atol=1e-4)  # x0_hat: equivariant
    for k in (1, 2):  # atom-type and charge logits: invariant (permuted with the atoms)
        assert torch.allclose(out_g[k], out[k][:, perm], atol=1e-4)
    assert torch.allclose(out_g[3], out[3][:, perm][:, :, perm], atol=1e-4)


def test_padding_and_centre_of_mass(net, molecule_inputs):
    x, a, c, e, mask, tau = molecule_inputs(B=1, N=7, n_real=(5,))
    sc = _self_cond(net, x)
    out = net(x, a, c, e, mask, tau, sc)
    pad = 4  # the same molecule with 4 more padded slots holding garbage
    x2 = torch.cat([x, 9 * torch.randn(1, pad, 3)], 1)
    a2 = torch.cat([a, torch.ones(1, pad, dtype=torch.long)], 1)
    c2 = torch.cat([c, torch.ones(1, pad, dtype=torch.long)], 1)
    e2 = torch.ones(1, 7 + pad, 7 + pad, dtype=torch.long)
    e2[:, :7, :7] = e
    mask2 = torch.cat([mask, torch.zeros(1, pad, dtype=torch.bool)], 1)
    sc2 = None
    if sc is not None:
        sc2 = (
            torch.cat([sc[0], torch.randn(1, pad, 3)], 1),
            torch.cat([sc[1], torch.rand(1, pad, 5)], 1),
            torch.cat([sc[2], torch.rand(1, pad, 3)], 1),
            torch.rand(1, 7 + pad, 7 + pad, 4),
        )
        sc2[3][:, :7, :7] = sc[3]
    out2 = net(x2, a2, c2, e2, mask2, tau, sc2)
    n = 5
    for k in range(3):
        assert torch.allclose(out2[k][:, :n], out[k][:, :n], atol=1e-4)
    assert torch.allclose(out2[3][:, :n, :n], out[3][:, :n, :n], atol=1e-4)
    m = mask[..., None].float()  # x0_hat keeps the input's centre of mass
    com_in, com_out = (x * m).sum(1) / m.sum(1), (out[0] * m).sum(1) / m.sum(1)
    assert torch.allclose(com_in, com_out, atol=1e-5)


def test_one_atom_molecule_and_bf16_autocast_stay_finite(net, molecule_inputs):
    x, a, c, e, mask, tau = molecule_inputs(n_real=(9, 1, 2))
    sc = _self_cond(net, x)
    out = net(x, a, c, e, mask, tau, sc)
    assert all(torch.isfinite(o).all() for o in out)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out_bf = net(x, a, c, e, mask, tau, sc)
    assert out_bf[0].dtype == torch.float32  # the coordinate path stays float32
    assert all(torch.isfinite(o.float()).all() for o in out_bf)
    assert (out_bf[0] - out[0])[mask].abs().max() < 0.1  # bf16 invariants: small coordinate error
    assert (out_bf[0] - out[0])[mask].abs().max() > 0  # (the head is not zero: a real comparison)


def test_reed_tap_sees_invariant_features_and_trains_the_layers_below(molecule_inputs):
    from reed_core.alignment import AlignmentTarget
    from reed_core.model import ReedModel

    torch.manual_seed(0)
    denoiser = SemlaDenoiser(_cfg(num_layers=3))
    assert denoiser.tap_points() == ["layers.0.tap", "layers.1.tap", "layers.2.tap"]
    target = AlignmentTarget("z", depth=2, dim=6, pooling="mean", projector_hidden=8)
    model = ReedModel(denoiser, [target])
    x, a, c, e, mask, tau = molecule_inputs()
    z = {"z": torch.randn(3, 6)}
    Q = _orthogonal(7)
    _, terms = model(x, a, c, e, mask, tau, tau=tau, z_targets=z, align_masks={"z": mask})
    _, terms_r = model(x @ Q.T, a, c, e, mask, tau, tau=tau, z_targets=z, align_masks={"z": mask})
    loss = terms["z"].loss
    assert loss.shape == (3,) and torch.isfinite(loss).all()
    assert torch.allclose(loss, terms_r["z"].loss, atol=1e-5)  # the tap is rotation invariant
    loss.mean().backward()

    def grad_norm(module):
        return sum(p.grad.abs().sum() for p in module.parameters() if p.grad is not None)

    assert grad_norm(denoiser.layers[0]) > 0 and grad_norm(denoiser.layers[1]) > 0
    assert grad_norm(denoiser.layers[2]) == 0  # above the tapped depth: no alignment gradient
    assert grad_norm(model.aligner) > 0


def test_memorises_a_few_qm9_molecules(qm9_small):
    """A tiny Semla network fits 4 fixed noisy QM9 molecules: the flow loss falls five-fold in 80 steps."""
    from reed_molecule.chem import NUM_BOND_CLASSES
    from reed_molecule.data.batch import PaddedMolecules
    from reed_molecule.objective import corrupt, per_sample_losses

    torch.manual_seed(0)
    data = PaddedMolecules(qm9_small, qm9_small.split("train")[:4])
    batch = data.batch(np.arange(4), np.random.default_rng(0))
    classes = (len(qm9_small.vocab.atoms), len(qm9_small.vocab.charges), NUM_BOND_CLASSES)
    tau = torch.linspace(0.1, 0.6, 4)
    noisy = corrupt(batch, tau, classes, torch.Generator().manual_seed(0))
    net = SemlaDenoiser(_cfg(scalars=32, vectors=8, edge_dim=16, num_layers=2, message_dim=16))
    opt = torch.optim.Adam(net.parameters(), lr=3e-3)
    losses = []
    for _ in range(80):
        pred = net(noisy.x, noisy.a, noisy.c, noisy.e, batch.mask, tau)
        parts = per_sample_losses(pred, batch)
        loss = (3 * parts["x"] + 0.4 * parts["a"] + parts["c"] + 2 * parts["e"]).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
    assert losses[-1] < 0.2 * losses[0], (losses[0], losses[-1])


def test_cli_trains_resumes_and_samples_with_semla(tmp_path):
    from reed_core.train import read_metrics
    from reed_molecule import sample, train

    run = tmp_path / "semla"
    args = ["--preset", "tiny_semla", "--run-dir", str(run), "model.self_condition=true"]
    train.main([*args, "train.steps=2"])  # REED: ChemNet store built in the run folder, layer 2
    train.main([*args, "train.steps=4"])  # resumes
    rows = [r for r in read_metrics(run) if "loss" in r]
    assert [r["step"] for r in rows] == [2, 4] and all(-1.0 <= r["cos/chemnet"] <= 1.0 for r in rows)
    sdf = tmp_path / "gen.sdf"
    sample.main(["--run-dir", str(run), "--num", "3", "--steps", "3", "--out", str(sdf), "--device", "cpu"])
    assert sdf.read_text().count("$$$$") == 3
    assert (run / "samples" / "step_2.npz").is_file() and (run / "samples" / "step_4.npz").is_file()


def test_samples_as_arrays_are_scored_with_or_without_rdkit(tmp_path, monkeypatch):
    """sample --out X.npz needs no RDKit; evaluate --npz scores the file; without RDKit the
    metrics are the stabilities alone."""
    from reed_molecule import evaluate, sample, train
    from reed_molecule.chem import get_vocab
    from reed_molecule.metrics import evaluate_molecules
    from reed_molecule.sampling import load_npz

    run = tmp_path / "semla"
    train.main(["--preset", "tiny_semla", "--run-dir", str(run), "reed.targets={}", "train.steps=1"])
    npz = tmp_path / "gen.npz"
    sample.main(["--run-dir", str(run), "--num", "5", "--steps", "2", "--out", str(npz), "--device", "cpu"])
    full = evaluate.main(["--npz", str(npz), "--no-mmff"])
    assert full["num_molecules"] == 5 and "validity" in full
    generated, vocab = load_npz(npz)
    monkeypatch.setitem(sys.modules, "rdkit", None)
    bare = evaluate_molecules(list(generated), get_vocab(vocab), set(), mmff=True)
    assert set(bare) == {"atom_stability", "mol_stability", "num_molecules", "rdkit_metrics"}
    assert bare["mol_stability"] == full["mol_stability"] and bare["rdkit_metrics"] == 0.0
