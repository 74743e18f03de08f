import copy

import pytest
import torch
import torch.nn as nn

from reed_core.optim import FusedUpdate, clip_coefficient


def net(seed=0):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(5, 16), nn.GELU(), nn.Linear(16, 16), nn.LayerNorm(16), nn.Linear(16, 3))


def reference_step(model, ema, opt, lr, decay, max_norm):
    for group in opt.param_groups:
        group["lr"] = lr
    norm = nn.utils.clip_grad_norm_(model.parameters(), max_norm) if max_norm > 0 else None
    opt.step()
    with torch.no_grad():
        torch._foreach_lerp_(list(ema.parameters()), list(model.parameters()), 1.0 - decay)
    return norm


def set_grads(models, step):
    g = torch.Generator().manual_seed(100 + step)
    for params in zip(*(m.parameters() for m in models)):
        grad = torch.randn(params[0].shape, generator=g) * (5.0 if step % 2 else 0.01)
        for p in params:
            p.grad = grad.clone()


@pytest.mark.parametrize("max_norm,weight_decay", [(1.0, 0.0), (1.0, 0.05), (0.0, 0.05)])
def test_fused_update_is_clip_then_adamw_then_ema(max_norm, weight_decay):
    ref, fused = net(), net()
    ref_ema, fused_ema = copy.deepcopy(ref), copy.deepcopy(fused)
    kw = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=weight_decay)
    ref_opt = torch.optim.AdamW(ref.parameters(), **kw)
    fused_opt = torch.optim.AdamW(fused.parameters(), **kw)
    update = FusedUpdate(fused_opt, list(fused_ema.parameters()), max_grad_norm=max_norm)
    for step in range(6):  # large gradients on odd steps: clipping acts on those only
        set_grads([ref, fused], step)
        lr, decay = 1e-3 * (step + 1), min(0.999, (1 + step) / (10 + step))
        ref_norm = reference_step(ref, ref_ema, ref_opt, lr, decay, max_norm)
        fused_norm = update.step(lr, decay)
        if max_norm > 0:
            torch.testing.assert_close(fused_norm, ref_norm)
        else:
            assert fused_norm is None
    for a, b in zip(ref.parameters(), fused.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    for a, b in zip(ref_ema.parameters(), fused_ema.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    ref_state, fused_state = ref_opt.state_dict()["state"], fused_opt.state_dict()["state"]
    assert ref_state.keys() == fused_state.keys()
    for k in ref_state:
        for name in ("step", "exp_avg", "exp_avg_sq"):
            torch.testing.assert_close(fused_state[k][name], ref_state[k][name], rtol=1e-6, atol=1e-9)


def test_parameter_without_gradient_is_not_stepped_but_its_ema_follows_it():
    model = net()
    ema = copy.deepcopy(model)
    with torch.no_grad():
        for p in ema.parameters():
            p.zero_()
    opt = torch.optim.AdamW(model.parameters(), lr=1e-2, weight_decay=0.1)
    update = FusedUpdate(opt, list(ema.parameters()), max_grad_norm=1.0)
    frozen = model[0].weight
    before = frozen.detach().clone()
    set_grads([model], 0)
    frozen.grad = None
    update.step(1e-2, 0.5)
    torch.testing.assert_close(frozen, before, rtol=0, atol=0)  # no weight decay, no step
    assert frozen not in opt.state or not opt.state[frozen]
    torch.testing.assert_close(ema[0].weight, 0.5 * before)
    assert not torch.equal(model[2].weight, net()[2].weight)  # the others did move


def test_clip_coefficient_matches_clip_grad_norm():
    grads = [torch.randn(7, 3) * 4, torch.randn(11)]
    norm, coef = clip_coefficient(grads, 2.0)
    torch.testing.assert_close(norm, torch.linalg.vector_norm(torch.cat([g.flatten() for g in grads])))
    torch.testing.assert_close(coef, 2.0 / (norm + 1e-6))
    _, coef = clip_coefficient([g * 1e-4 for g in grads], 2.0)
    assert coef.item() == 1.0


def test_fused_update_refuses_what_it_does_not_implement():
    model = net()
    with pytest.raises(ValueError, match="amsgrad"):
        FusedUpdate(torch.optim.AdamW(model.parameters(), amsgrad=True), list(model.parameters()))
    with pytest.raises(ValueError, match="EMA parameters"):
        FusedUpdate(torch.optim.AdamW(model.parameters()), list(model.parameters())[:2])


def test_fused_update_with_masters_is_adamw_on_the_masters_rounded_into_bf16_params():
    """bf16 parameters and gradients, float32 masters: the masters follow float32 AdamW fed the
    same (bf16) gradients, the EMA follows the masters, and the parameters are the rounded masters."""
    ref, low = net(), net()
    ref_ema, low_ema = copy.deepcopy(ref), copy.deepcopy(low)
    masters = [p.detach().clone() for p in low.parameters()]
    low.to(torch.bfloat16)
    kw = dict(lr=1e-3, betas=(0.9, 0.95), eps=1e-8, weight_decay=0.05)
    ref_opt = torch.optim.AdamW(ref.parameters(), **kw)
    low_opt = torch.optim.AdamW(low.parameters(), **kw)
    update = FusedUpdate(low_opt, list(low_ema.parameters()), max_grad_norm=1.0, master_params=masters)
    for step in range(6):
        set_grads([ref], step)
        for p, q in zip(ref.parameters(), low.parameters()):
            q.grad = p.grad.to(torch.bfloat16)
            p.grad = q.grad.float()  # the same bf16 values
        lr, decay = 1e-3 * (step + 1), min(0.999, (1 + step) / (10 + step))
        ref_norm = reference_step(ref, ref_ema, ref_opt, lr, decay, 1.0)
        torch.testing.assert_close(update.step(lr, decay), ref_norm)
    for a, m, p in zip(ref.parameters(), masters, low.parameters()):
        torch.testing.assert_close(m, a, rtol=1e-6, atol=1e-7)
        assert p.dtype == torch.bfloat16 and torch.equal(p, m.to(torch.bfloat16))
    for a, b in zip(ref_ema.parameters(), low_ema.parameters()):
        torch.testing.assert_close(b, a, rtol=1e-6, atol=1e-7)
    moments = [v for s in low_opt.state.values() for k, v in s.items() if k.startswith("exp_avg")]
    assert moments and all(v.dtype == torch.float32 for v in moments)
    with pytest.raises(ValueError, match="master_params must be float32"):
        FusedUpdate(low_opt, list(low_ema.parameters()), master_params=[m.half() for m in masters])
