"""Samplers on a Gaussian data distribution with a known velocity field; CFG guidance interval;
seeded determinism."""

from __future__ import annotations

import pytest
import torch

from reed_image.interpolants import Interpolant
from reed_image.samplers import SamplerConfig, sample

MU, STD = 1.5, 0.5


def gaussian_velocity(path: Interpolant):
    """Exact ``E[v | x_tau]`` for ``x0 ~ N(MU, STD^2 I)``: the field a perfect model learns."""

    def v(x, tau, y):
        a, s, da, ds = (path._expand(c, x) for c in path.coefficients(tau))
        var = a**2 * STD**2 + s**2
        r = x - a * MU
        return da * (MU + a * STD**2 / var * r) + ds * (s / var * r)

    return v


@pytest.mark.parametrize("kind", ["linear", "cosine"])
@pytest.mark.parametrize("method", ["euler", "heun", "sde"])
def test_samplers_land_on_the_data_mean_and_variance(kind, method):
    path = Interpolant(kind)
    y = torch.zeros(4000, dtype=torch.long)
    x = sample(gaussian_velocity(path), (4000, 1, 2, 2), y, SamplerConfig(method=method, steps=60), path)
    assert abs(x.mean().item() - MU) < 0.03
    assert abs(x.std().item() - STD) < 0.03


def test_heun_is_more_accurate_than_euler_at_few_steps():
    path = Interpolant("linear")
    y = torch.zeros(4000, dtype=torch.long)
    err = {}
    for method in ("euler", "heun"):
        x = sample(gaussian_velocity(path), (4000, 1, 1, 1), y, SamplerConfig(method=method, steps=4))
        err[method] = abs(x.std().item() - STD)
    assert err["heun"] < err["euler"] / 2


@pytest.mark.parametrize("low, high", [(0.0, 1.0), (0.3, 0.6), (0.0, 0.25)])
def test_guidance_applies_only_inside_the_interval(low, high):
    calls = []

    def model(x, tau, y):  # v_y = +1, v_null = -1 everywhere
        calls.append((tau[0].item(), bool((y == 10).any())))
        return torch.where((y == 10)[:, None, None, None], -1.0, 1.0).expand_as(x).clone()

    steps, scale = 10, 3.0
    cfg = SamplerConfig(method="euler", steps=steps, cfg_scale=scale, guidance_low=low, guidance_high=high)
    g = torch.Generator().manual_seed(0)
    x1 = torch.randn((2, 1, 1, 1), generator=torch.Generator().manual_seed(cfg.seed))
    x0 = sample(model, (2, 1, 1, 1), torch.tensor([1, 2]), cfg, null_label=10, generator=g)
    taus = torch.linspace(1, 0, steps + 1).tolist()[:-1]
    guided = [low <= t <= high for t in taus]
    assert [c[1] for c in calls] == guided  # the null label is evaluated exactly inside the interval
    v_inside = -1.0 + scale * (1.0 - (-1.0))
    displacement = sum((v_inside if gd else 1.0) / steps for gd in guided)
    torch.testing.assert_close(x0, x1 - displacement)


def test_seeded_sampling_is_repeatable():
    path = Interpolant("linear")
    y = torch.arange(8) % 2
    v = gaussian_velocity(path)
    a = sample(v, (8, 1, 2, 2), y, SamplerConfig(method="sde", steps=5, seed=3))
    b = sample(v, (8, 1, 2, 2), y, SamplerConfig(method="sde", steps=5, seed=3))
    c = sample(v, (8, 1, 2, 2), y, SamplerConfig(method="sde", steps=5, seed=4))
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_sampler_config_errors():
    with pytest.raises(ValueError, match="sample.method"):
        SamplerConfig(method="dpm")
    with pytest.raises(ValueError, match="cfg_scale"):
        SamplerConfig(cfg_scale=0.5)
    with pytest.raises(ValueError, match="guidance_low/high"):
        SamplerConfig(guidance_low=0.7, guidance_high=0.2)
