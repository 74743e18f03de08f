"""FP8 matmuls (reed_core.float8, torchao's Float8Linear); the Trainer's option is tested in
test_train.py. torch._scaled_mm runs per-tensor scaling on the CPU, so the "tensorwise" recipe runs
here for real; the per-row recipes need a CUDA device.
"""

import pytest
import torch
import torch.nn as nn
from torchao.float8.float8_linear import Float8Linear

from reed_core.float8 import convert_to_float8, float8_linear_names


def mlp() -> nn.Module:
    torch.manual_seed(0)
    return nn.Sequential(
        nn.Linear(48, 64), nn.GELU(), nn.Sequential(nn.Linear(64, 64), nn.GELU()), nn.Linear(64, 10)
    )


def test_names_follow_the_patterns_and_bad_layers_are_named():
    model = mlp()
    assert float8_linear_names(model, ["0", "2.*"]) == ["0", "2.0"]
    with pytest.raises(ValueError, match=r"layer '3' \(64 -> 10\).*multiples of 16"):
        float8_linear_names(model, ["*"])
    with pytest.raises(ValueError, match=r"no nn.Linear of the model matches \['blocks.\*'\]"):
        float8_linear_names(model, ["blocks.*"])


def test_conversion_keeps_parameters_and_computes_in_float8():
    model = mlp()
    params = dict(model.named_parameters())
    keys = list(model.state_dict())
    x = torch.randn(32, 48)
    reference = model(x)
    assert convert_to_float8(model, "tensorwise", ["0", "2.0"]) == ["0", "2.0"]
    assert isinstance(model[0], Float8Linear) and isinstance(model[2][0], Float8Linear)
    assert type(model[3]) is nn.Linear
    assert list(model.state_dict()) == keys  # checkpoints unchanged
    for name, p in model.named_parameters():
        assert p is params[name]  # the optimizer and EMA pair the same tensors
    out = model(x)
    err = ((out - reference).norm() / reference.norm()).item()
    assert 1e-4 < err < 0.1, err  # e4m3 rounding: close to the fp32 result, yet not equal to it
    out.sum().backward()
    assert all(p.grad is not None and torch.isfinite(p.grad).all() for p in model.parameters())
    with pytest.raises(ValueError, match="train.speed.float8: unknown recipe 'fp8'"):
        convert_to_float8(mlp(), "fp8", ["0"])
