"""Alignment targets: vision encoders (offline EfficientNet-Lite0, timm by name or checkpoint),
token resampling, captions and their embeddings."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reed_image.targets.captions import AttributeCaptioner, build_captioner
from reed_image.targets.text import embed_captions
from reed_image.targets.vision import (
    build_vision_encoder,
    efficientnet_lite0_weights,
    resample_tokens,
)


def test_efficientnet_lite0_loads_the_imagenet_weights_offline():
    enc = build_vision_encoder("efficientnet-lite0", input_size=64)
    stored = torch.load(efficientnet_lite0_weights(), map_location="cpu", weights_only=True)
    for key in ("_conv_stem.weight", "_blocks.5._depthwise_conv.weight", "_bn1.running_var"):
        assert torch.equal(enc.net.state_dict()[key], stored[key])
    x = torch.rand(2, 1, 32, 32) * 2 - 1  # grey, resized to 64 -> 2x2 grid of 1280-d tokens
    z = enc(x)
    assert z.shape == (2, 4, 1280) and enc.grid == (2, 2) and enc.dim == 1280
    enc.train()
    assert not enc.training and not enc.net.training  # frozen: BatchNorm statistics never move


def test_unknown_encoder_name_is_a_clear_error():
    with pytest.raises(ValueError, match=r"unknown vision encoder 'dinov2-bb'.*did you mean.*dinov2-b"):
        build_vision_encoder("dinov2-bb")


def test_timm_encoder_from_a_local_checkpoint(tmp_path):
    kw = dict(input_size=32, patch_size=8, depth=1, embed_dim=48, num_heads=2)
    torch.manual_seed(0)
    random_init = build_vision_encoder("vit_tiny_patch16_224", pretrained=False, **kw)
    torch.save(random_init.net.state_dict(), tmp_path / "vit.pth")
    loaded = build_vision_encoder("timm:vit_tiny_patch16_224", checkpoint=tmp_path / "vit.pth", **kw)
    x = torch.rand(2, 3, 32, 32) * 2 - 1
    z = loaded(x)
    assert z.shape == (2, 16, 48)  # 4x4 patches, prefix (class) token dropped
    torch.testing.assert_close(z, random_init(x))
    (tmp_path / "corrupt.pth").write_bytes(b"not a checkpoint")
    with pytest.raises(ValueError, match="corrupt.pth"):
        build_vision_encoder("vit_tiny_patch16_224", checkpoint=tmp_path / "corrupt.pth", **kw)
    with pytest.raises(FileNotFoundError, match="missing.pth"):
        build_vision_encoder("vit_tiny_patch16_224", checkpoint=tmp_path / "missing.pth", **kw)


def test_resample_tokens_between_grids():
    z = torch.randn(2, 16, 5)  # 4x4 grid
    assert resample_tokens(z, 4) is z
    const = torch.ones(2, 4, 3) * torch.tensor([1.0, -2.0, 3.0])
    torch.testing.assert_close(
        resample_tokens(const, 8), torch.ones(2, 64, 3) * torch.tensor([1.0, -2.0, 3.0])
    )
    down = resample_tokens(z, 2)  # area average of 2x2 blocks, row-major tokens
    grid = z.reshape(2, 4, 4, 5)
    torch.testing.assert_close(down[:, 0], grid[:, :2, :2].mean((1, 2)))
    torch.testing.assert_close(down[:, 3], grid[:, 2:, 2:].mean((1, 2)))
    with pytest.raises(ValueError, match="square grid"):
        resample_tokens(torch.randn(1, 12, 2), 4)


@pytest.mark.parametrize("side, grid", [(8, 16), (3, (7, 5)), (8, 4), (6, 4)])
def test_resample_tokens_equals_interpolating_the_token_grid(side, grid):
    """The matrix form gives F.interpolate's bilinear upsampling / adaptive average pooling of the
    ``[B, D, side, side]`` grid, also under bf16 autocast (which must not lower its precision)."""
    h, w = (grid, grid) if isinstance(grid, int) else grid
    z = torch.randn(3, side * side, 5, dtype=torch.float64)
    f = z.transpose(1, 2).reshape(3, 5, side, side)
    if h >= side and w >= side:
        ref = torch.nn.functional.interpolate(f, size=(h, w), mode="bilinear", align_corners=False)
    else:
        ref = torch.nn.functional.adaptive_avg_pool2d(f, (h, w))
    ref = ref.flatten(2).transpose(1, 2)
    torch.testing.assert_close(resample_tokens(z, grid), ref, rtol=1e-12, atol=1e-12)
    with torch.autocast("cpu", torch.bfloat16):
        out = resample_tokens(z.float(), grid)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out, ref.float(), rtol=1e-5, atol=1e-5)


def test_attribute_captions_describe_measured_properties():
    names = [f"class{i}" for i in range(3)]
    big_bright = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    big_bright[..., 4:28, 4:28] = 250
    small_dark_tall = torch.zeros(1, 1, 32, 32, dtype=torch.uint8)
    small_dark_tall[..., 6:26, 4:9] = 90  # left-aligned: asymmetric
    cap = AttributeCaptioner(names)
    a, b = cap(torch.cat([big_bright, small_dark_tall]), torch.tensor([2, 0]))
    assert a == "a bright, large, square, symmetric, smooth class2"
    assert b.startswith("a dark, small, tall, asymmetric") and b.endswith("class0")
    assert cap(big_bright, torch.tensor([2])) == [a]  # deterministic
    with pytest.raises(ValueError, match="uint8"):
        cap(big_bright.float(), torch.tensor([2]))
    with pytest.raises(ValueError, match="captioner"):
        build_captioner("gpt", names)


def test_embed_captions_embeds_each_distinct_sentence_once():
    seen = []

    def embedder(sentences):
        seen.extend(sentences)
        return np.array([[len(s), 1.0] for s in sentences], dtype=np.float32)

    distinct, emb, index = embed_captions(["bb", "a", "bb", "ccc"], embedder)
    assert sorted(seen) == ["a", "bb", "ccc"] and distinct == ["a", "bb", "ccc"]
    assert emb[index].tolist() == [[2, 1], [1, 1], [2, 1], [3, 1]]


@pytest.mark.slow
def test_minilm_embeds_offline_and_separates_meanings():
    from reed_image.targets.text import SentenceEmbedder

    emb = SentenceEmbedder("minilm")
    z = emb(["a bright large sneaker", "a bright big sneaker", "a dark small handbag"])
    assert z.shape == (3, 384) and emb.dim == 384
    z = z / np.linalg.norm(z, axis=1, keepdims=True)
    assert z[0] @ z[1] > z[0] @ z[2] + 0.1
