"""E(3) equivariance and permutation equivariance of the denoiser (to 1e-4), padding invariance."""

import pytest
import torch
from e3nn import o3

from reed_molecule.models.equivariant import DenoiserConfig, EquivariantDenoiser


def _rotation(seed):
    torch.manual_seed(seed)
    return o3.rand_matrix()


@pytest.fixture(scope="module", params=[False, True], ids=["plain", "self_cond"])
def net(request):
    torch.manual_seed(0)
    cfg = DenoiserConfig(
        scalars=16, vectors=8, edge_dim=16, num_layers=3, num_rbf=8, self_condition=request.param
    )
    return EquivariantDenoiser(cfg).eval()


def _self_cond(net, x, mask, seed=1):
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


def test_rotation_translation_equivariance(net, molecule_inputs):
    x, a, c, e, mask, tau = molecule_inputs()
    sc = _self_cond(net, x, mask)
    R = _rotation(3)
    t = torch.tensor([1.0, -2.0, 0.5])
    out = net(x, a, c, e, mask, tau, sc)
    xr = x @ R.T + t
    sc_r = None if sc is None else (sc[0] @ R.T + t, *sc[1:])
    out_r = net(xr, a, c, e, mask, tau, sc_r)
    m = mask[..., None]
    assert torch.allclose((out_r[0] * m), ((out[0] @ R.T + t) * m), atol=1e-4)
    for k in (1, 2):  # atom types, charges: invariant
        assert torch.allclose(out_r[k][mask], out[k][mask], atol=1e-4)
    pair = mask[:, :, None] & mask[:, None, :]
    assert torch.allclose(out_r[3][pair], out[3][pair], atol=1e-4)


def test_reflection_is_equivariant_for_coordinates(net, molecule_inputs):
    # e3nn irreps 1o are parity-odd vectors: a mirror image gives the mirrored prediction
    x, a, c, e, mask, tau = molecule_inputs()
    sc = _self_cond(net, x, mask)
    P = torch.diag(torch.tensor([-1.0, 1.0, 1.0]))
    out = net(x, a, c, e, mask, tau, sc)
    out_p = net(x @ P, a, c, e, mask, tau, None if sc is None else (sc[0] @ P, *sc[1:]))
    assert torch.allclose(out_p[0][mask], (out[0] @ P)[mask], atol=1e-4)


def test_permutation_equivariance(net, molecule_inputs):
    x, a, c, e, mask, tau = molecule_inputs(n_real=(9, 9, 9))
    sc = _self_cond(net, x, mask)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(5))
    out = net(x, a, c, e, mask, tau, sc)
    sc_p = (
        None if sc is None else (sc[0][:, perm], sc[1][:, perm], sc[2][:, perm], sc[3][:, perm][:, :, perm])
    )
    out_p = net(x[:, perm], a[:, perm], c[:, perm], e[:, perm][:, :, perm], mask, tau, sc_p)
    for k in range(3):
        assert torch.allclose(out_p[k], out[k][:, perm], atol=1e-4)
    assert torch.allclose(out_p[3], out[3][:, perm][:, :, perm], atol=1e-4)


def test_padding_does_not_change_real_atoms(net, molecule_inputs):
    x, a, c, e, mask, tau = molecule_inputs(B=1, N=7, n_real=(5,))
    out = net(x, a, c, e, mask, tau)
    # same molecule with 4 more padded slots holding garbage
    pad = 4
    x2 = torch.cat([x, 9 * torch.randn(1, pad, 3)], 1)
    a2 = torch.cat([a, torch.ones(1, pad, dtype=torch.long)], 1)
    c2 = torch.cat([c, torch.ones(1, pad, dtype=torch.long)], 1)
    e2 = torch.ones(1, 7 + pad, 7 + pad, dtype=torch.long)
    e2[:, :7, :7] = e
    mask2 = torch.cat([mask, torch.zeros(1, pad, dtype=torch.bool)], 1)
    out2 = net(x2, a2, c2, e2, mask2, tau)
    n = 5
    for k in range(3):
        assert torch.allclose(out2[k][:, :n], out[k][:, :n], atol=1e-4)
    assert torch.allclose(out2[3][:, :n, :n], out[3][:, :n, :n], atol=1e-4)


def test_prediction_keeps_centre_of_mass(molecule_inputs):
    torch.manual_seed(0)
    net = EquivariantDenoiser(DenoiserConfig(scalars=8, vectors=4, edge_dim=8, num_layers=2, num_rbf=4))
    x, a, c, e, mask, tau = molecule_inputs()
    m = mask[..., None].float()
    x = x - (x * m).sum(1, keepdim=True) / m.sum(1, keepdim=True)
    x = x * m
    x0 = net(x, a, c, e, mask, tau)[0]
    com = (x0 * m).sum(1) / m.sum(1)
    assert com.abs().max() < 1e-5


def test_tap_points_see_invariant_scalars(molecule_inputs):
    from reed_core.taps import FeatureTaps

    torch.manual_seed(0)
    net = EquivariantDenoiser(DenoiserConfig(scalars=8, vectors=4, edge_dim=8, num_layers=3, num_rbf=4))
    assert net.tap_points() == ["layers.0.tap", "layers.1.tap", "layers.2.tap"]
    x, a, c, e, mask, tau = molecule_inputs()
    R = _rotation(1)
    with FeatureTaps(net, {"h": 2}) as taps:
        net(x, a, c, e, mask, tau)
        h = taps.pop()["h"]
        net(x @ R.T, a, c, e, mask, tau)
        h_r = taps.pop()["h"]
    assert h.shape == (3, 9, 8)
    assert torch.allclose(h[mask], h_r[mask], atol=1e-4)
