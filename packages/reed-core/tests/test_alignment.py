import math

import pytest
import torch

from reed_core.alignment import (
    AlignmentTarget,
    MultiLatentAligner,
    Projector,
    cosine_alignment_loss,
    pool,
)
from reed_core.decomposition import AlphaSpec


def test_cosine_loss_matches_hand_computation():
    h = torch.tensor([[1.0, 0.0], [1.0, 1.0]])
    z = torch.tensor([[0.0, 1.0], [2.0, 2.0]])
    torch.testing.assert_close(cosine_alignment_loss(h, z), torch.tensor([1.0, 0.0]))
    h = torch.tensor([[[3.0, 4.0], [1.0, 0.0]]])  # [1, 2, 2]
    z = torch.tensor([[[4.0, 3.0], [-1.0, 0.0]]])
    expected = ((1 - 24 / 25) + (1 - (-1))) / 2
    assert cosine_alignment_loss(h, z).item() == pytest.approx(expected)


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_cosine_loss_is_finite_in_half_precision(dtype):
    # squared norms of these vectors overflow float16 (max 65504)
    h = (torch.randn(4, 8, 64) * 400).to(dtype)
    z = (torch.randn(4, 8, 64) * 400).to(dtype)
    loss = cosine_alignment_loss(h, z)
    assert loss.dtype == torch.float32 and torch.isfinite(loss).all()
    ref = cosine_alignment_loss(h.double(), z.double())
    torch.testing.assert_close(loss, ref, atol=1e-3, rtol=0)


def test_masked_pooling_ignores_padding():
    f = torch.randn(2, 5, 3)
    mask = torch.tensor([[1, 1, 1, 0, 0], [1, 1, 1, 1, 1]], dtype=torch.bool)
    pooled, _ = pool(f, "mean", mask)
    f2 = f.clone()
    f2[0, 3:] = 1e4  # garbage in the padding
    pooled2, _ = pool(f2, "mean", mask)
    torch.testing.assert_close(pooled, pooled2)
    torch.testing.assert_close(pooled[0], f[0, :3].mean(0))
    summed, _ = pool(f, "sum", mask)
    torch.testing.assert_close(summed[0], f[0, :3].sum(0))


def test_masked_token_loss_ignores_padding_tokens():
    h, z = torch.randn(2, 6, 4), torch.randn(2, 6, 4)
    mask = torch.ones(2, 6, dtype=torch.bool)
    mask[0, 4:] = False
    loss = cosine_alignment_loss(h, z, mask)
    h2 = h.clone()
    h2[0, 4:] = torch.randn(2, 4)
    torch.testing.assert_close(loss, cosine_alignment_loss(h2, z, mask))
    torch.testing.assert_close(loss[0], cosine_alignment_loss(h[:1, :4], z[:1, :4])[0])


def test_edge_pooling_flattens_edges_with_their_mask():
    f = torch.randn(2, 3, 4, 5)
    mask = torch.rand(2, 3, 4) > 0.5
    pooled, m = pool(f, "edge", mask)
    assert pooled.shape == (2, 12, 5) and m.shape == (2, 12)
    torch.testing.assert_close(pooled[1, 4 + 2], f[1, 1, 2])
    assert m[1, 6] == mask[1, 1, 2]


def test_projector_depth_and_activation():
    proj = Projector(8, 3, hidden_dim=16, num_layers=3)
    linears = [m for m in proj.modules() if isinstance(m, torch.nn.Linear)]
    assert [(lin.in_features, lin.out_features) for lin in linears] == [(8, 16), (16, 16), (16, 3)]
    assert sum(isinstance(m, torch.nn.SiLU) for m in proj.modules()) == 2


def test_multi_latent_aligner_one_term_per_target_with_own_alpha():
    targets = [
        AlignmentTarget("vision", depth=2, dim=6, pooling="token", alpha=AlphaSpec("uniform")),
        AlignmentTarget("text", depth=4, dim=5, pooling="mean", alpha=AlphaSpec("window", 0.0, 0.5)),
    ]
    aligner = MultiLatentAligner(targets, {"vision": 8, "text": 8})
    B, N = 3, 7
    hiddens = {"vision": torch.randn(B, N, 8), "text": torch.randn(B, N, 8)}
    z = {"vision": torch.randn(B, N, 6), "text": torch.randn(B, 5)}
    tau = torch.tensor([0.1, 0.4, 0.9])
    terms = aligner(hiddens, z, tau)
    assert set(terms) == {"vision", "text"}
    assert terms["vision"].loss.shape == (B,) and terms["text"].loss.shape == (B,)
    torch.testing.assert_close(terms["text"].alpha, torch.tensor([2.0, 2.0, 0.0]))
    with pytest.raises(ValueError, match="text"):
        aligner(hiddens, {**z, "text": torch.randn(B, 4)}, tau)


def test_bad_targets_name_the_field():
    with pytest.raises(ValueError, match=r"targets\['v'\].weight"):
        AlignmentTarget("v", depth=1, dim=4, weight=-0.5)
    with pytest.raises(ValueError, match="pooling"):
        AlignmentTarget("v", depth=1, dim=4, pooling="max")
    with pytest.raises(ValueError, match="depth"):
        AlignmentTarget("v", depth=0, dim=4)
    assert math.isclose(AlignmentTarget("v", depth=1, dim=4).weight, 1.0)
