"""SiT: sizes and parameter counts, shapes for any channels/resolution, adaLN-Zero, taps, errors."""

from __future__ import annotations

import pytest
import torch

from reed_core.taps import FeatureTaps
from reed_image.models.sit import SIZES, SiT, SiT_models, SiTConfig, count_parameters


def expected_params(depth: int, D: int, p: int, C: int, grid: int, classes: int) -> int:
    """Closed form, written independently of the module code (DiT Table 1 layout)."""
    attn = 3 * D * D + 3 * D + D * D + D
    mlp = D * 4 * D + 4 * D + 4 * D * D + D
    ada = D * 6 * D + 6 * D
    block = attn + mlp + ada
    embed = C * p * p * D + D  # patch conv
    t_emb = 256 * D + D + D * D + D
    y_emb = (classes + 1) * D
    final = D * 2 * D + 2 * D + D * p * p * C + p * p * C
    return depth * block + embed + t_emb + y_emb + final


@pytest.mark.parametrize("arch", SiT_models)
def test_every_size_builds_with_the_right_parameter_count(arch):
    cfg = SiTConfig(arch=arch, input_size=32, in_channels=4, num_classes=1000)
    with torch.device("meta"):
        model = SiT(cfg)
    depth, D, heads, p = cfg.resolved()
    assert (depth, D, heads) == SIZES[arch.split("-")[1].split("/")[0]]
    assert count_parameters(model) == expected_params(depth, D, p, 4, 32 // p, 1000)
    assert model.num_tokens == (32 // p) ** 2


@pytest.mark.parametrize(
    "arch, published_M", [("SiT-S/2", 33.0), ("SiT-B/2", 130.0), ("SiT-L/2", 458.0), ("SiT-XL/2", 675.0)]
)
def test_parameter_counts_match_the_papers(arch, published_M):
    with torch.device("meta"):
        model = SiT(SiTConfig(arch=arch, input_size=32, in_channels=4, num_classes=1000))
    assert abs(count_parameters(model) / 1e6 - published_M) / published_M < 0.01


@pytest.mark.parametrize(
    "C, size, patch", [(4, 32, 2), (4, 32, 4), (4, 32, 8), (1, 28, 2), (1, 28, 4), (3, 16, 2)]
)
def test_any_channels_and_resolution(C, size, patch):
    cfg = SiTConfig(
        arch=f"SiT-S/{patch}",
        input_size=size,
        in_channels=C,
        num_classes=10,
        depth=2,
        hidden_size=32,
        num_heads=2,
    )
    model = SiT(cfg)
    torch.nn.init.normal_(model.final_layer.linear.weight)  # leave adaLN-Zero so output is non-zero
    torch.nn.init.normal_(model.final_layer.adaLN_modulation[-1].weight)
    x = torch.randn(3, C, size, size)
    v = model(x, torch.rand(3), torch.tensor([0, 5, 10]))  # 10 = null label
    assert v.shape == x.shape and v.abs().sum() > 0


def test_adaln_zero_initialisation_gives_zero_output_and_identity_blocks():
    model = SiT(
        SiTConfig(
            arch="SiT-S/2", input_size=8, in_channels=2, num_classes=3, depth=2, hidden_size=32, num_heads=2
        )
    )
    x = torch.randn(2, 2, 8, 8)
    assert torch.equal(model(x, torch.rand(2), torch.tensor([0, 1])), torch.zeros_like(x))
    h = torch.randn(2, 16, 32)
    c = torch.randn(2, 32)
    assert torch.equal(model.blocks[0](h, c), h)  # gates are zero at initialisation


def test_wrong_image_size_is_a_clear_error():
    model = SiT(
        SiTConfig(
            arch="SiT-S/2", input_size=32, in_channels=4, num_classes=10, depth=1, hidden_size=32, num_heads=2
        )
    )
    with pytest.raises(ValueError, match=r"expected images \[B, 4, 32, 32\].*got \(2, 4, 28, 28\)"):
        model(torch.randn(2, 4, 28, 28), torch.rand(2), torch.zeros(2, dtype=torch.long))
    with pytest.raises(ValueError, match="not divisible by the patch size"):
        SiTConfig(arch="SiT-S/8", input_size=28, in_channels=1).resolved()
    with pytest.raises(ValueError, match="model.arch"):
        SiTConfig(arch="SiT-M/2").resolved()


def test_taps_read_each_block_output_at_its_own_depth():
    torch.manual_seed(0)
    model = SiT(
        SiTConfig(
            arch="SiT-S/4", input_size=16, in_channels=1, num_classes=10, depth=3, hidden_size=32, num_heads=2
        )
    )
    for block in model.blocks:  # non-zero gates so blocks differ
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.1)
    x, tau, y = torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([1, 2])
    with FeatureTaps(model, {"a": 1, "b": 3}) as taps:
        model(x, tau, y)
        out = taps.pop()
    h = model.x_embedder(x).flatten(2).transpose(1, 2) + model.pos_embed
    c = model.t_embedder(tau) + model.y_embedder(y)
    hs = []
    for block in model.blocks:
        h = block(h, c)
        hs.append(h)
    assert out["a"].shape == (2, 16, 32)
    torch.testing.assert_close(out["a"], hs[0])
    torch.testing.assert_close(out["b"], hs[2])
    assert not torch.allclose(out["a"], out["b"])
    with pytest.raises(ValueError, match="beyond the model"):
        FeatureTaps(model, {"c": 4})


@pytest.mark.parametrize("arch, in_channels", [("SiT-S/2", 4), ("SiT-S/4", 3)])
def test_patch_embedding_as_a_linear_is_the_convolution(arch, in_channels):
    torch.manual_seed(0)
    model = SiT(
        SiTConfig(
            arch=arch,
            input_size=16,
            in_channels=in_channels,
            num_classes=10,
            depth=1,
            hidden_size=32,
            num_heads=2,
        )
    )
    torch.nn.init.normal_(model.x_embedder.bias)
    x = torch.randn(3, in_channels, 16, 16)
    h = model.embed_patches(x)
    conv = model.x_embedder(x).flatten(2).transpose(1, 2)
    assert h.shape == conv.shape == (3, model.num_tokens, 32) and h.is_contiguous()
    torch.testing.assert_close(h, conv)
    dh = torch.randn_like(h)
    grads = torch.autograd.grad(h, (model.x_embedder.weight, model.x_embedder.bias), dh)
    conv_grads = torch.autograd.grad(conv, (model.x_embedder.weight, model.x_embedder.bias), dh)
    for got, want in zip(grads, conv_grads):
        torch.testing.assert_close(got, want)


def test_qk_norm_adds_per_head_norms_and_runs():
    base = SiTConfig(
        arch="SiT-S/4", input_size=16, in_channels=1, num_classes=10, depth=2, hidden_size=32, num_heads=2
    )
    plain, normed = SiT(base), SiT(SiTConfig(**{**base.__dict__, "qk_norm": True}))
    assert count_parameters(normed) - count_parameters(plain) == 2 * 2 * 2 * 16  # 2 blocks x q,k x (w,b)
    assert normed(torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([0, 10])).shape == (2, 1, 16, 16)


@pytest.mark.parametrize("backend", ["math", "efficient", "flash"])
def test_preferred_attention_kernel_gives_the_same_velocity(backend):
    base = SiTConfig(
        arch="SiT-S/4", input_size=16, in_channels=1, num_classes=10, depth=2, hidden_size=32, num_heads=2
    )
    torch.manual_seed(0)
    auto = SiT(base)
    for block in auto.blocks:  # adaLN-Zero starts as the identity: give attention something to do
        torch.nn.init.normal_(block.adaLN_modulation[-1].weight, std=0.5)
    torch.nn.init.normal_(auto.final_layer.linear.weight, std=0.5)
    chosen = SiT(SiTConfig(**{**base.__dict__, "attention": backend}))
    chosen.load_state_dict(auto.state_dict())
    assert chosen.blocks[0].attn.backends[0].name.lower().startswith(backend[:5])
    x, tau, y = torch.randn(3, 1, 16, 16), torch.rand(3), torch.tensor([0, 4, 10])
    v = auto(x, tau, y)
    assert v.abs().mean() > 1e-3
    torch.testing.assert_close(chosen(x, tau, y), v, rtol=1e-4, atol=1e-5)


def plain_and_fused_sits(**fused_flags: bool) -> tuple[SiT, SiT]:
    """A tiny float64 SiT and the same weights with ``fused_flags`` set; the zero-initialised adaLN
    modulations, output layer and fc1 biases are made non-zero so every term counts."""
    base = SiTConfig(
        arch="SiT-S/4", input_size=16, in_channels=1, num_classes=10, depth=2, hidden_size=32, num_heads=2
    )
    torch.manual_seed(0)
    plain = SiT(base).double()
    for linear in [block.adaLN_modulation[-1] for block in plain.blocks] + [
        plain.final_layer.adaLN_modulation[-1]
    ]:
        torch.nn.init.normal_(linear.weight, std=0.5)
        torch.nn.init.normal_(linear.bias, std=0.5)
    for block in plain.blocks:  # (the chained fused blocks add proj's and fc2's biases in the kernels)
        for bias in (block.mlp.fc1.bias, block.mlp.fc2.bias, block.attn.proj.bias):
            torch.nn.init.normal_(bias, std=0.5)
    torch.nn.init.normal_(plain.final_layer.linear.weight, std=0.5)
    fused = SiT(SiTConfig(**{**base.__dict__, **fused_flags})).double()
    assert fused.state_dict().keys() == plain.state_dict().keys()
    fused.load_state_dict(plain.state_dict())
    return plain, fused


def test_fused_adaln_blocks_compute_the_same_velocity_and_gradients():
    """The fused wiring (reference path on the CPU; the Triton kernels are tested in
    test_fused_adaln.py) against the unfused blocks."""
    plain, fused = plain_and_fused_sits(fused_adaln=True)
    x, tau, y = torch.randn(3, 1, 16, 16).double(), torch.rand(3).double(), torch.tensor([0, 4, 10])
    paths = {"first": "blocks.0", "last": "blocks.1"}
    with FeatureTaps(plain, paths) as taps_plain, FeatureTaps(fused, paths) as taps_fused:
        v_plain, v_fused = plain(x, tau, y), fused(x, tau, y)
        tapped_plain, tapped_fused = taps_plain.pop(), taps_fused.pop()
    assert v_plain.abs().mean() > 1e-3
    torch.testing.assert_close(v_fused, v_plain)
    for name in paths:  # the chained blocks hand the taps the block output, not the next LN input
        torch.testing.assert_close(tapped_fused[name], tapped_plain[name], msg=name)
    # gradients through the velocity and through a tapped hidden state (as alignment does)
    ((v_plain**2).sum() + tapped_plain["first"].sin().sum()).backward()
    ((v_fused**2).sum() + tapped_fused["first"].sin().sum()).backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)

    # a fused block called alone, as (x, c), is the plain block too
    h, c = torch.randn(3, 16, 32).double(), torch.randn(3, 32).double()
    torch.testing.assert_close(fused.blocks[1](h, c), plain.blocks[1](h, c))


@pytest.mark.parametrize("fused_adaln", [False, True])
def test_residual_stream_in_the_autocast_dtype(fused_adaln):
    """model.residual_dtype=autocast: under bf16 autocast every block output (what taps read) is
    bf16, and velocity and gradients stay within bf16 rounding of the float32 residual stream;
    without autocast it changes nothing."""
    reference, model = plain_and_fused_sits(fused_adaln=fused_adaln, residual_dtype="autocast")
    x, tau, y = torch.randn(3, 1, 16, 16).double(), torch.rand(3).double(), torch.tensor([0, 4, 10])
    torch.testing.assert_close(model(x, tau, y), reference(x, tau, y), rtol=1e-12, atol=1e-12)

    reference, model = reference.float(), model.float()
    paths = {"first": "blocks.0", "last": "blocks.1"}
    outputs = {}
    for name, sit in (("float32", reference), ("autocast", model)):
        with FeatureTaps(sit, paths) as taps, torch.autocast("cpu", dtype=torch.bfloat16):
            v = sit(x.float(), tau.float(), y)
            tapped = taps.pop()
            ((v.float() ** 2).sum() + tapped["first"].float().sin().sum()).backward()
        outputs[name] = v.float(), tapped, [p.grad for p in sit.parameters()]
    (v_ref, taps_ref, grads_ref), (v_low, taps_low, grads_low) = outputs["float32"], outputs["autocast"]
    assert {t.dtype for t in taps_ref.values()} == {torch.float32}
    assert {t.dtype for t in taps_low.values()} == {torch.bfloat16}
    assert not torch.equal(v_low, v_ref)  # the rounding of the residual stream shows
    torch.testing.assert_close(v_low, v_ref, rtol=0.05, atol=0.05 * v_ref.abs().max().item())
    for name in paths:
        want = taps_ref[name]
        torch.testing.assert_close(
            taps_low[name].float(), want, rtol=0.05, atol=0.05 * want.abs().max().item()
        )
    for (name, _), g_low, g_ref in zip(reference.named_parameters(), grads_low, grads_ref, strict=True):
        scale = g_ref.abs().max().item()
        torch.testing.assert_close(g_low, g_ref, rtol=0.1, atol=0.05 * scale + 1e-6, msg=name)


def test_unknown_residual_dtype_is_a_clear_error():
    with pytest.raises(ValueError, match="model.residual_dtype"):
        SiTConfig(residual_dtype="float16").resolved()


@pytest.mark.parametrize("fused_adaln", [False, True])
@pytest.mark.parametrize("mlp_fusion", ["fused_gelu", "fused_mlp"])
def test_fused_mlps_compute_the_same_velocity_and_gradients(mlp_fusion, fused_adaln):
    """The fused MLP wiring (reference paths on the CPU; the kernels are tested in
    test_fused_gelu.py and test_fused_mlp.py) against the unfused MLP."""
    plain, fused = plain_and_fused_sits(**{mlp_fusion: True}, fused_adaln=fused_adaln)
    assert all(getattr(block.mlp, mlp_fusion) for block in fused.blocks)
    x, tau, y = torch.randn(3, 1, 16, 16).double(), torch.rand(3).double(), torch.tensor([0, 4, 10])
    v_plain, v_fused = plain(x, tau, y), fused(x, tau, y)
    assert v_plain.abs().mean() > 1e-3
    torch.testing.assert_close(v_fused, v_plain)
    (v_plain**2).sum().backward()
    (v_fused**2).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)
    assert plain.blocks[0].mlp.fc1.bias.grad.abs().max() > 1e-3


@pytest.mark.parametrize("adaln_linears", [True, False])
def test_fused_mlp_routes_attention_and_chained_adaln_linears_through_cublaslt(adaln_linears, monkeypatch):
    """With fused_mlp (and chained fused_adaln) each block's qkv, proj and the next adaLN Linear are
    ``cublaslt_linear`` calls (``CUBLASLT_ADALN_LINEARS`` off: the adaLN ones are not); the
    velocity and gradients stay those of the plain SiT either way."""
    from reed_image.models import sit

    calls = []

    def counting(x, weight, bias=None):
        calls.append(tuple(weight.shape))
        return sit_linear(x, weight, bias)

    sit_linear = sit.cublaslt_linear
    monkeypatch.setattr(sit, "cublaslt_linear", counting)
    monkeypatch.setattr(sit, "CUBLASLT_ADALN_LINEARS", adaln_linears)
    plain, fused = plain_and_fused_sits(fused_mlp=True, fused_adaln=True)
    x, tau, y = torch.randn(3, 1, 16, 16).double(), torch.rand(3).double(), torch.tensor([0, 4, 10])
    v_fused = fused(x, tau, y)
    D, depth = 32, len(fused.blocks)
    adaln = [(6 * D, D)] * (depth - 1) + [(2 * D, D)]  # the next block's, then the final layer's
    want = [[(3 * D, D), (D, D)] + ([adaln[i]] if adaln_linears else []) for i in range(depth)]
    assert sorted(calls) == sorted(sum(want, []))
    torch.testing.assert_close(v_fused, plain(x, tau, y))
    (v_fused**2).sum().backward()
    (plain(x, tau, y) ** 2).sum().backward()
    for (name, p), q in zip(plain.named_parameters(), fused.parameters()):
        torch.testing.assert_close(q.grad, p.grad, msg=name)


def counting_linear_class() -> type:
    """A fresh ``nn.Linear`` subclass (as FP8 conversion swaps in) that counts its forward calls."""

    class CountingLinear(torch.nn.Linear):
        calls = 0

        def forward(self, x):
            CountingLinear.calls += 1
            return super().forward(x)

    return CountingLinear


def test_fused_gelu_mlp_keeps_a_converted_fc1_layer():
    """An fc1 swapped for another Linear class (as FP8 conversion does) runs its own forward."""
    from reed_image.models.sit import Mlp

    CountingLinear = counting_linear_class()
    torch.manual_seed(0)
    plain, fused = Mlp(8, 32), Mlp(8, 32, fused_gelu=True)
    fused.load_state_dict(plain.state_dict())
    x = torch.randn(2, 3, 8)
    torch.testing.assert_close(fused(x), plain(x))
    fused.fc1 = CountingLinear(8, 32)
    fused.fc1.load_state_dict(plain.fc1.state_dict())
    torch.testing.assert_close(fused(x), plain(x))
    assert CountingLinear.calls == 1


@pytest.mark.parametrize("backend", ["auto", "fa4"])
def test_attention_with_cublaslt_gemms_keeps_a_converted_qkv_layer(backend):
    """A qkv Linear swapped for another class (as FP8 conversion does) runs its own forward, also
    where the plain layers would go through ``cublaslt_linear``; the output is unchanged."""
    from reed_image.models.sit import Attention

    CountingLinear = counting_linear_class()
    torch.manual_seed(0)
    plain = Attention(16, 2, backend=backend).double()
    fast = Attention(16, 2, backend=backend, cublaslt_gemms=True).double()
    fast.load_state_dict(plain.state_dict())
    x = torch.randn(2, 8, 16).double()
    torch.testing.assert_close(fast(x), plain(x))
    fast.qkv = CountingLinear(16, 48).double()
    fast.qkv.load_state_dict(plain.qkv.state_dict())
    torch.testing.assert_close(fast(x), plain(x))
    assert CountingLinear.calls == 1


def test_unknown_attention_kernel_is_a_clear_error():
    with pytest.raises(ValueError, match="model.attention: unknown 'fast'"):
        SiT(SiTConfig(arch="SiT-S/4", input_size=16, attention="fast"))


def test_positions_are_fixed_and_distinct():
    model = SiT(
        SiTConfig(
            arch="SiT-S/2", input_size=8, in_channels=1, num_classes=2, depth=1, hidden_size=32, num_heads=2
        )
    )
    pos = model.pos_embed[0]  # (16, 32)
    assert "pos_embed" not in dict(model.named_parameters())
    assert torch.cdist(pos, pos).add(torch.eye(16) * 10).min() > 0.1
