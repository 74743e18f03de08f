"""Interpolants, velocity target, noise-level sampling and the per-sample velocity loss."""

from __future__ import annotations

import math

import pytest
import torch

from reed_image.interpolants import Interpolant, TimeSampler, velocity_loss


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_velocity_is_the_time_derivative_of_the_path(kind):
    torch.manual_seed(0)
    path = Interpolant(kind)
    x0, eps = torch.randn(5, 2, 4, 4, dtype=torch.float64), torch.randn(5, 2, 4, 4, dtype=torch.float64)
    tau = torch.rand(5, dtype=torch.float64) * 0.9 + 0.05
    h = 1e-6
    x_plus, _ = path.interpolate(x0, eps, tau + h)
    x_minus, _ = path.interpolate(x0, eps, tau - h)
    _, v = path.interpolate(x0, eps, tau)
    torch.testing.assert_close(v, (x_plus - x_minus) / (2 * h), rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_path_endpoints_and_linear_target(kind):
    path = Interpolant(kind)
    x0, eps = torch.randn(3, 1, 2, 2), torch.randn(3, 1, 2, 2)
    x_clean, _ = path.interpolate(x0, eps, torch.zeros(3))
    x_noise, _ = path.interpolate(x0, eps, torch.ones(3))
    torch.testing.assert_close(x_clean, x0)
    torch.testing.assert_close(x_noise, eps, atol=1e-6, rtol=0)
    if kind == "linear":
        _, v = path.interpolate(x0, eps, torch.rand(3))
        torch.testing.assert_close(v, eps - x0)


@pytest.mark.parametrize("kind", ["linear", "cosine"])
def test_noise_and_score_are_recovered_from_the_velocity(kind):
    path = Interpolant(kind)
    x0, eps = torch.randn(4, 3, dtype=torch.float64), torch.randn(4, 3, dtype=torch.float64)
    tau = torch.tensor([0.1, 0.4, 0.7, 0.95], dtype=torch.float64)
    x_tau, v = path.interpolate(x0, eps, tau)
    torch.testing.assert_close(path.eps_from_velocity(v, x_tau, tau), eps)
    s = path.sigma(tau)[:, None]
    torch.testing.assert_close(path.score_from_velocity(v, x_tau, tau), -eps / s)


def test_time_samplers():
    g = torch.Generator().manual_seed(0)
    u = TimeSampler("uniform")(20000, generator=g)
    assert 0 <= u.min() and u.max() <= 1 and abs(u.mean() - 0.5) < 0.01
    ln = TimeSampler("lognormal", P_mean=-0.4, P_std=1.0)(20000, generator=g)
    assert 0 < ln.min() and ln.max() < 1
    assert abs(ln.median() - 1 / (1 + math.exp(0.4))) < 0.01  # sigmoid(P_mean)
    with pytest.raises(ValueError, match="time_sampling"):
        TimeSampler("beta")
    with pytest.raises(ValueError, match="interpolant"):
        Interpolant("vp")


def test_velocity_loss_is_per_sample():
    v = torch.zeros(3, 2, 2, 2)
    v_pred = v.clone()
    v_pred[1] = 2.0
    loss = velocity_loss(v_pred, v)
    assert loss.shape == (3,)
    torch.testing.assert_close(loss, torch.tensor([0.0, 4.0, 0.0]))
