import pytest
import torch

from reed_core.decomposition import AlphaSpec, hybrid_logits, hybrid_mean

SPECS = [
    AlphaSpec("uniform"),
    AlphaSpec("rcg"),
    AlphaSpec("window", low=0.2, high=0.6),
    AlphaSpec("linear"),
    AlphaSpec("cosine", low=0.1, high=0.9),
    AlphaSpec("uniform", mass_at_one=0.3),
    AlphaSpec("linear", mass_at_one=0.5),
]


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-m{s.mass_at_one}")
def test_A_is_one_at_zero_non_increasing_and_point_mass_at_one(spec):
    tau = torch.linspace(0, 1, 2001)
    A = spec.A(tau)
    assert A[0].item() == pytest.approx(1.0, abs=1e-6)
    assert (A[1:] <= A[:-1] + 1e-7).all()
    assert A[-1].item() == pytest.approx(spec.point_mass, abs=1e-6)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-m{s.mass_at_one}")
def test_density_integrates_to_continuous_mass_and_matches_A(spec):
    tau = torch.linspace(0, 1, 200001, dtype=torch.float64)
    dens = spec.density(tau.float()).double()
    assert torch.trapezoid(dens, tau).item() == pytest.approx(1 - spec.point_mass, abs=2e-3)
    # A(tau) - A(1) = int_tau^1 density
    for t in (0.15, 0.4, 0.7):
        upper = tau >= t
        tail = torch.trapezoid(dens[upper], tau[upper]).item()
        A = spec.A(torch.tensor([t, 1.0]))
        assert (A[0] - A[1]).item() == pytest.approx(tail, abs=3e-3)


@pytest.mark.parametrize("spec", SPECS, ids=lambda s: f"{s.kind}-m{s.mass_at_one}")
def test_monte_carlo_weight_has_unit_mean_under_uniform_tau(spec):
    tau = torch.linspace(0, 1, 400001)[:-1] + 0.5 / 400000  # midpoint rule
    assert spec.weight(tau).mean().item() == pytest.approx(1.0, abs=5e-3)


def test_rcg_weight_sits_at_the_prior_end():
    spec = AlphaSpec("rcg", rcg_width=0.1)
    w = spec.weight(torch.tensor([0.0, 0.5, 0.89, 0.95, 1.0]))
    assert w.tolist() == pytest.approx([0, 0, 0, 10, 10])


def test_bad_alpha_names_the_field():
    with pytest.raises(ValueError, match="alpha.kind"):
        AlphaSpec("gaussian")
    with pytest.raises(ValueError, match="alpha.low/high"):
        AlphaSpec("window", low=0.7, high=0.2)
    with pytest.raises(ValueError, match="mass_at_one"):
        AlphaSpec(mass_at_one=1.5)


def test_hybrid_mean_is_the_A_weighted_mean_per_sample():
    mu_c, mu_u = torch.randn(3, 4, 5), torch.randn(3, 4, 5)
    A = torch.tensor([0.0, 0.25, 1.0])
    mixed = hybrid_mean(mu_c, mu_u, A)
    for b in range(3):
        torch.testing.assert_close(mixed[b], A[b] * mu_c[b] + (1 - A[b]) * mu_u[b])


def test_hybrid_logits_interpolates_log_probabilities():
    lc, lu = torch.randn(2, 7), torch.randn(2, 7)
    torch.testing.assert_close(hybrid_logits(lc, lu, torch.ones(2)), lc.log_softmax(-1))
    torch.testing.assert_close(hybrid_logits(lc, lu, torch.zeros(2)), lu.log_softmax(-1))
    mid = hybrid_logits(lc, lu, torch.full((2,), 0.5))
    assert torch.allclose(mid.exp().sum(-1), torch.ones(2))
    expected = (0.5 * lc.log_softmax(-1) + 0.5 * lu.log_softmax(-1)).log_softmax(-1)
    torch.testing.assert_close(mid, expected)
