import copy

import pytest
import torch
import torch.nn as nn

from reed_core.alignment import AlignmentTarget
from reed_core.model import ReedModel
from reed_core.taps import FeatureTaps, resolve_depth


class Stack(nn.Module):
    def __init__(self, depth=4, width=8):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(width, width) for _ in range(depth))
        self.head = nn.Linear(width, 2)

    def tap_points(self):
        return [f"blocks.{i}" for i in range(len(self.blocks))]

    def forward(self, x):
        for block in self.blocks:
            x = torch.tanh(block(x))
        return self.head(x)


def test_taps_capture_the_requested_depth():
    torch.manual_seed(0)
    model = Stack()
    x = torch.randn(3, 8)
    with FeatureTaps(model, {"second": 2, "last": "blocks.3"}) as taps:
        model(x)
        captured = taps.pop()
    h = x
    expected = []
    for block in model.blocks:
        expected.append(block(h))
        h = torch.tanh(expected[-1])
    torch.testing.assert_close(captured["second"], expected[1])
    torch.testing.assert_close(captured["last"], expected[3])
    assert not model.blocks[1]._forward_hooks  # removed on exit


def test_depth_beyond_the_model_names_the_depth():
    with pytest.raises(ValueError, match="depth: 9 is beyond the model, which has 4 tap points"):
        resolve_depth(Stack(), 9)
    with pytest.raises(ValueError, match="no module named 'blocks.12'"):
        resolve_depth(Stack(), "blocks.12")
    with pytest.raises(ValueError, match="depth: 7"):
        ReedModel(Stack(), [AlignmentTarget("v", depth=7, dim=3)])


def test_reed_model_aligns_and_an_ema_copy_taps_its_own_modules():
    torch.manual_seed(0)
    model = ReedModel(Stack(), [AlignmentTarget("v", depth=2, dim=3, projector_hidden=16)])
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.add_(1.0)
    x, tau, z = torch.randn(5, 8), torch.rand(5), torch.randn(5, 3)
    out, terms = model(x, tau=tau, z_targets={"v": z})
    assert out.shape == (5, 2) and terms["v"].loss.shape == (5,)
    ema_out, ema_terms = ema(x, tau=tau, z_targets={"v": z})
    assert not torch.allclose(ema_terms["v"].loss, terms["v"].loss)
    # the EMA copy's hidden state is its own block output, not the training model's
    with torch.no_grad():
        h = torch.tanh(ema.denoiser.blocks[0](x))
        expected = ema.aligner.projectors["v"](ema.denoiser.blocks[1](h))
    torch.testing.assert_close(ema_terms["v"].loss, 1 - torch.cosine_similarity(expected, z, dim=-1))
    _, none = model(x)  # sampling: no targets, no alignment, no stale hidden states kept
    assert none == {} and model.taps.outputs == {}


def test_two_targets_on_one_depth_each_get_the_hidden_state():
    model = Stack()
    x = torch.randn(2, 8)
    taps = FeatureTaps(model, {"a": 2, "b": "blocks.1"})
    model(x)
    out = taps.pop()
    assert set(out) == {"a", "b"}
    torch.testing.assert_close(out["a"], out["b"])
    assert taps.pop() == {}  # emptied
    taps.remove()


def test_reed_model_compiles_without_graph_breaks():
    model = ReedModel(Stack(), [AlignmentTarget("v", depth=2, dim=3, projector_hidden=16)])
    x, tau, z = torch.randn(5, 8), torch.rand(5), torch.randn(5, 3)

    def step(x, tau, z):
        out, terms = model(x, tau=tau, z_targets={"v": z})
        return out.sum() + terms["v"].loss.mean()

    explanation = torch._dynamo.explain(step)(x, tau, z)
    assert explanation.graph_break_count == 0, [b.reason for b in explanation.break_reasons]
