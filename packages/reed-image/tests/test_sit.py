"""SiT: sizes and parameter counts, shapes for any channels/resolution, adaLN-Zero, taps, errors;
FusedSiT (model.kernels) against SiT: the same parameters, outputs and gradients."""

from __future__ import annotations

import importlib.util
import sys
from dataclasses import replace

import pytest
import torch

from reed_core.config import ConfigError, config_from_dict
from reed_core.taps import FeatureTaps
from reed_image.models import build_sit
from reed_image.models.sit import SIZES, SiT, SiT_models, SiTConfig, count_parameters
from reed_image.models.sit_fused import FusedSiT

FUSED = ("fused", "fused-fa4")


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


def tiny(**changes) -> SiTConfig:
    base = SiTConfig(
        arch="SiT-S/4", input_size=16, in_channels=1, num_classes=10, depth=2, hidden_size=32, num_heads=2
    )
    return replace(base, **changes)


# ---------------------------------------------------------------- the plain SiT


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


@pytest.mark.parametrize("kernels", ("none", *FUSED))
def test_adaln_zero_initialisation_gives_zero_output_and_identity_blocks(kernels):
    model = build_sit(
        SiTConfig(
            arch="SiT-S/2",
            input_size=8,
            in_channels=2,
            num_classes=3,
            depth=2,
            hidden_size=32,
            num_heads=2,
            kernels=kernels,
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


def test_config_errors_name_the_option():
    with pytest.raises(ValueError, match="model.residual_dtype: unknown 'float16'"):
        SiTConfig(residual_dtype="float16").resolved()
    with pytest.raises(ValueError, match=r"model.kernels: unknown 'fa4'; choose from \['none', 'fused'"):
        SiT(tiny(kernels="fa4"))
    with pytest.raises(ValueError, match="model.cublaslt_plans: the plain model"):
        build_sit(tiny(cublaslt_plans="plans.json"))
    tiny(kernels="fused", cublaslt_plans="plans.json").resolved()  # fine with kernels
    with pytest.raises(ValueError, match="FusedSiT: model.kernels must be fused"):
        FusedSiT(tiny())
    # the switches of earlier versions (saved configs, overrides) are named, not silently dropped
    for old in ("fused_adaln", "fused_mlp", "attention"):
        with pytest.raises(ConfigError, match=f"model.{old}"):
            config_from_dict(SiTConfig, {old: True}, "model")


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


def test_qk_norm_adds_per_head_norms_and_runs():
    plain, normed = SiT(tiny()), SiT(tiny(qk_norm=True))
    assert count_parameters(normed) - count_parameters(plain) == 2 * 2 * 2 * 16  # 2 blocks x q,k x (w,b)
    assert normed(torch.randn(2, 1, 16, 16), torch.rand(2), torch.tensor([0, 10])).shape == (2, 1, 16, 16)


def test_positions_are_fixed_and_distinct():
    model = SiT(
        SiTConfig(
            arch="SiT-S/2", input_size=8, in_channels=1, num_classes=2, depth=1, hidden_size=32, num_heads=2
        )
    )
    pos = model.pos_embed[0]  # (16, 32)
    assert "pos_embed" not in dict(model.named_parameters())
    assert torch.cdist(pos, pos).add(torch.eye(16) * 10).min() > 0.1


# ---------------------------------------------------------------- FusedSiT against SiT


def plain_and_fused(kernels: str, dtype=torch.float64, device="cpu", **changes) -> tuple[SiT, SiT]:
    """A tiny SiT and a ``build_sit`` of ``kernels`` loaded with its weights; the zero-initialised
    adaLN modulations, output layer and biases are made non-zero so every term counts."""
    torch.manual_seed(0)
    plain = SiT(tiny(**changes))
    for linear in [block.adaLN_modulation[-1] for block in plain.blocks] + [
        plain.final_layer.adaLN_modulation[-1]
    ]:
        torch.nn.init.normal_(linear.weight, std=0.5)
        torch.nn.init.normal_(linear.bias, std=0.5)
    for block in plain.blocks:  # (the chained fused blocks add proj's and fc2's biases in the kernels)
        for bias in (block.mlp.fc1.bias, block.mlp.fc2.bias, block.attn.proj.bias, block.attn.qkv.bias):
            torch.nn.init.normal_(bias, std=0.5)
    torch.nn.init.normal_(plain.final_layer.linear.weight, std=0.5)
    torch.nn.init.normal_(plain.x_embedder.bias, std=0.5)
    fused = build_sit(tiny(kernels=kernels, **changes))
    fused.load_state_dict(plain.state_dict(), strict=True)
    return plain.to(device, dtype), fused.to(device, dtype)


def inputs(dtype=torch.float64, device="cpu", batch=3, channels=1, size=16):
    g = torch.Generator().manual_seed(1)
    x = torch.randn(batch, channels, size, size, generator=g)
    tau = torch.rand(batch, generator=g)
    y = torch.arange(batch) % 11  # 10 = null label
    return x.to(device, dtype), tau.to(device, dtype), y.to(device)


def velocity_taps_grads(model: SiT, x, tau, y, autocast_dtype=None):
    """Velocity, the tapped block outputs and every parameter gradient of a loss through both (as
    alignment reads them)."""
    paths = {"first": "blocks.0", "last": f"blocks.{len(model.blocks) - 1}"}
    model.zero_grad()
    with FeatureTaps(model, paths) as taps:
        with torch.autocast(
            x.device.type, dtype=autocast_dtype or torch.bfloat16, enabled=bool(autocast_dtype)
        ):
            v = model(x, tau, y)
        tapped = taps.pop()
    ((v.float() ** 2).sum() + tapped["first"].float().sin().sum()).backward()
    return v, tapped, {name: p.grad for name, p in model.named_parameters()}


def assert_same(got: dict, want: dict, kernels: str) -> None:
    """Tensor by tensor: float64 agreement for ``fused``; for ``fused-fa4`` (the packed attention's
    reference computes in float32) within 1e-5 of each tensor's largest value, plus 2e-5 (a
    gradient that is 0 in exact arithmetic, e.g. a key bias's, is float32 noise there)."""
    for name, w in want.items():
        if kernels == "fused":
            torch.testing.assert_close(got[name], w, msg=name)
        else:
            error = (got[name] - w).abs().max().item()
            assert error <= 1e-5 * w.abs().max().item() + 2e-5, (name, error)


def test_build_sit_picks_the_model_and_both_share_parameters():
    assert type(build_sit(tiny())) is SiT
    for kernels in FUSED:
        fused = build_sit(tiny(kernels=kernels))
        assert type(fused) is FusedSiT and isinstance(fused, SiT)
        assert {k: v.shape for k, v in fused.state_dict().items()} == {
            k: v.shape for k, v in SiT(tiny()).state_dict().items()
        }
        assert all(block.packed == (kernels == "fused-fa4") for block in fused.blocks)


@pytest.mark.parametrize("qk_norm", [False, True], ids=["", "qk_norm"])
@pytest.mark.parametrize("kernels", FUSED)
def test_fused_sit_computes_the_same_velocity_taps_and_gradients(kernels, qk_norm):
    """The fused wiring on the CPU (every kernel's PyTorch reference; the kernels themselves are
    tested in reed-kernels) against SiT, float64: velocity, the tapped block outputs (the chained
    blocks hand taps the block output, not the next LayerNorm's input) and every gradient."""
    plain, fused = plain_and_fused(kernels, qk_norm=qk_norm)
    x, tau, y = inputs()
    want, got = velocity_taps_grads(plain, x, tau, y), velocity_taps_grads(fused, x, tau, y)
    assert want[0].abs().mean() > 1e-3
    assert_same({"v": got[0], **got[1]}, {"v": want[0], **want[1]}, kernels)
    assert_same(got[2], want[2], kernels)
    assert want[2]["blocks.0.mlp.fc1.bias"].abs().max() > 1e-3
    if kernels == "fused-fa4" and not qk_norm:  # the key bias's gradient from the attention: exact 0
        D = fused.hidden_size
        assert (got[2]["blocks.0.attn.qkv.bias"][D : 2 * D] == 0).all()


@pytest.mark.parametrize("kernels", FUSED)
def test_each_model_loads_the_others_checkpoint(kernels):
    plain, fused = plain_and_fused(kernels)
    x, tau, y = inputs()
    fresh_plain = SiT(tiny()).double()
    fresh_plain.load_state_dict(fused.state_dict(), strict=True)
    fresh_fused = build_sit(tiny(kernels=kernels)).double()
    fresh_fused.load_state_dict(plain.state_dict(), strict=True)
    with torch.no_grad():
        torch.testing.assert_close(fresh_plain(x, tau, y), plain(x, tau, y), rtol=0, atol=0)
        assert_same({"v": fresh_fused(x, tau, y)}, {"v": plain(x, tau, y)}, kernels)


@pytest.mark.parametrize("kernels", ("none", "fused"))
def test_residual_stream_in_the_autocast_dtype(kernels):
    """model.residual_dtype=autocast: under bf16 autocast every block output (what taps read) is
    bf16, and velocity and gradients stay within bf16 rounding of the float32 residual stream;
    without autocast it changes nothing."""
    reference, _ = plain_and_fused(kernels)
    _, model = plain_and_fused(kernels, residual_dtype="autocast")
    x, tau, y = inputs()
    torch.testing.assert_close(model(x, tau, y), reference(x, tau, y), rtol=1e-12, atol=1e-12)

    reference, model = reference.float(), model.float()
    x, tau = x.float(), tau.float()
    v_ref, taps_ref, grads_ref = velocity_taps_grads(reference, x, tau, y, torch.bfloat16)
    v_low, taps_low, grads_low = velocity_taps_grads(model, x, tau, y, torch.bfloat16)
    assert {t.dtype for t in taps_ref.values()} == {torch.float32}
    assert {t.dtype for t in taps_low.values()} == {torch.bfloat16}
    v_ref, v_low = v_ref.float(), v_low.float()
    assert not torch.equal(v_low, v_ref)  # the rounding of the residual stream shows
    torch.testing.assert_close(v_low, v_ref, rtol=0.05, atol=0.05 * v_ref.abs().max().item())
    for name, want in taps_ref.items():
        torch.testing.assert_close(
            taps_low[name].float(), want, rtol=0.05, atol=0.05 * want.abs().max().item()
        )
    for name, g_ref in grads_ref.items():
        scale = g_ref.abs().max().item()
        torch.testing.assert_close(grads_low[name], g_ref, rtol=0.1, atol=0.05 * scale + 1e-6, msg=name)


def test_fused_sit_runs_its_linears_through_cublaslt(monkeypatch):
    """Each chained block's qkv, proj and the next adaLN Linear are ``cublaslt_linear`` calls."""
    from reed_image.models import sit_fused

    calls = []
    real = sit_fused.cublaslt_linear

    def counting(x, weight, bias=None):
        calls.append(tuple(weight.shape))
        return real(x, weight, bias)

    monkeypatch.setattr(sit_fused, "cublaslt_linear", counting)
    plain, fused = plain_and_fused("fused")
    fused(*inputs())
    D, depth = 32, len(fused.blocks)
    adaln = [(6 * D, D)] * (depth - 1) + [(2 * D, D)]  # the next block's, then the final layer's
    assert sorted(calls) == sorted(sum([[(3 * D, D), (D, D), adaln[i]] for i in range(depth)], []))


def counting_linear_class() -> type:
    """A fresh ``nn.Linear`` subclass (as FP8 conversion swaps in) that counts its forward calls."""

    class CountingLinear(torch.nn.Linear):
        calls = 0

        def forward(self, x):
            CountingLinear.calls += 1
            return super().forward(x)

    return CountingLinear


@pytest.mark.parametrize("kernels", FUSED)
@pytest.mark.parametrize("layer", ["attn.qkv", "attn.proj", "mlp.fc1", "mlp.fc2"])
def test_fused_sit_keeps_a_converted_layer(layer, kernels):
    """A Linear swapped for another class (as FP8 conversion does: reed_core.float8) runs its own
    forward, with its own bias, where the kernels would use its weights; the velocity and the
    gradients stay those of the plain SiT."""
    CountingLinear = counting_linear_class()
    plain, fused = plain_and_fused(kernels)
    parent_name, child = layer.split(".")
    for block in fused.blocks:
        parent = getattr(block, parent_name)
        old = getattr(parent, child)
        new = CountingLinear(old.in_features, old.out_features).double()
        new.weight, new.bias = old.weight, old.bias  # the same parameters, as the conversion keeps
        setattr(parent, child, new)
    x, tau, y = inputs()
    want, got = velocity_taps_grads(plain, x, tau, y), velocity_taps_grads(fused, x, tau, y)
    assert CountingLinear.calls == len(fused.blocks)
    assert_same({"v": got[0], **got[2]}, {"v": want[0], **want[2]}, kernels)


def test_fused_model_without_reed_kernels_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "reed_kernels", None)  # "not installed"
    spec = importlib.util.find_spec("reed_image.models.sit_fused")
    module = importlib.util.module_from_spec(spec)
    with pytest.raises(ImportError, match=r"pip install 'reed-image\[kernels\]'"):
        spec.loader.exec_module(module)


# ---------------------------------------------------------------- FusedSiT on a GPU


def gpu_config(kernels: str) -> SiTConfig:
    """Widths the kernels take (multiples of 8; 64 tokens, 512 rows a batch of 8)."""
    return SiTConfig(
        arch="SiT-S/2", input_size=16, in_channels=4, num_classes=10, depth=2, hidden_size=128, num_heads=2,
        kernels=kernels,
    )  # fmt: skip


@pytest.mark.gpu
@pytest.mark.parametrize("residual_dtype", ["float32", "autocast"])
@pytest.mark.parametrize("kernels", FUSED)
def test_cuda_fused_sit_under_bf16_autocast_matches_sit(kernels, residual_dtype):
    """The kernels (Triton, cuBLASLt; FlashAttention-4 with fused-fa4) against the plain SiT under
    the same bf16 autocast: both within bf16 rounding of a float64 SiT, the fused one no worse than
    twice the plain one's error (plus a floor)."""
    if kernels == "fused-fa4":
        from reed_kernels.flash_attention import flash_attention_available

        if not flash_attention_available():
            pytest.skip("needs FlashAttention-4 and a GPU of compute capability 9+")
    cfg = replace(gpu_config(kernels), residual_dtype=residual_dtype)
    torch.manual_seed(0)
    plain = SiT(replace(cfg, kernels="none"))
    for module in [block.adaLN_modulation[-1] for block in plain.blocks] + [plain.final_layer.linear]:
        torch.nn.init.normal_(module.weight, std=0.05)
    fused = build_sit(cfg)
    fused.load_state_dict(plain.state_dict(), strict=True)
    exact = SiT(replace(cfg, kernels="none"))
    exact.load_state_dict(plain.state_dict(), strict=True)
    plain, fused, exact = plain.cuda(), fused.cuda(), exact.cuda().double()
    x, tau, y = inputs(torch.float32, "cuda", batch=8, channels=4)
    want = velocity_taps_grads(exact, x.double(), tau.double(), y)
    results = {
        name: velocity_taps_grads(model, x, tau, y, torch.bfloat16)
        for name, model in (("plain", plain), ("fused", fused))
    }

    def error(got, reference):
        return ((got.double() - reference).abs().max() / reference.abs().max()).item()

    for name, reference in [("v", want[0])] + [(f"grad {k}", g) for k, g in want[2].items()]:
        pick = (lambda r: r[0]) if name == "v" else (lambda r, k=name[5:]: r[2][k])
        plain_err, fused_err = (
            error(pick(results["plain"]), reference),
            error(pick(results["fused"]), reference),
        )
        assert fused_err <= 2 * plain_err + 2e-2, (name, fused_err, plain_err)


@pytest.mark.gpu
def test_cuda_the_image_task_option_installs_a_plan_file(tmp_path):
    """``model.cublaslt_plans`` (``install_cublaslt_plans``): the plans a FusedSiT step made, saved,
    come back into an empty cache on a CUDA device; on the CPU the file is only read and checked."""
    from reed_image.models import install_cublaslt_plans
    from reed_kernels import cublaslt, cublaslt_plans

    if not cublaslt.available():
        pytest.skip("needs cuBLASLt")
    saved_cache = dict(cublaslt._plans)
    try:
        cublaslt._plans.clear()
        model = build_sit(gpu_config("fused")).cuda()
        x, tau, y = inputs(torch.float32, "cuda", batch=8, channels=4)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            model(x, tau, y).float().square().sum().backward()
        path = tmp_path / "plans.json"
        saved = cublaslt_plans.save_plans(path)
        algos = {key: list(plan.algo) for key, plan in cublaslt._plans.items()}
        assert saved == len(algos) >= 4
        cublaslt._plans.clear()
        assert install_cublaslt_plans(str(path), torch.device("cuda")) == saved
        assert {key: list(plan.algo) for key, plan in cublaslt._plans.items()} == algos
        assert install_cublaslt_plans(str(path), torch.device("cpu")) == 0  # read and checked only
    finally:
        cublaslt._plans.clear()
        cublaslt._plans.update(saved_cache)
