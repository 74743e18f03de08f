"""Parity of reed-image's REPA-like objective with the formulation of the REPA/REED authors' code.

The reference below is a transcription of REPA's ``SILoss.__call__`` (linear path, velocity
prediction, uniform time) and of its SiT forward (the projector applied to the output of block
``encoder_depth``), written against the same weights. On one batch, with the same time and noise
draws, it must give reed-image's velocity, alignment loss, total loss and every gradient:

    x_t = (1 - t) x0 + t eps,           v = eps - x0
    L_denoise = mean_b mean_{c,h,w} (v_theta(x_t, t, y) - v)^2
    L_proj    = mean_b mean_n -<z_n / |z_n|, h_phi(f_n) / |h_phi(f_n)|>     (f: block d's tokens)
    L_REPA    = L_denoise + lambda L_proj

reed-image writes the alignment term as ``1 - cos`` (a non-negative loss), so its total is
``L_REPA + lambda`` with the same gradients. What else differs in the image path, by design:

* target tokens: the encoder's grid (EfficientNet-Lite0: 8x8 at 256 px) is brought to SiT's 16x16
  token grid by bilinear upsampling (REPA's DINOv2 at 224 px already has 16x16 tokens);
* encoder input: [-1, 1] pixels -> [0, 1] -> grey repeated to RGB -> bicubic resize -> the
  encoder's own mean/std (REPA: /255, ImageNet mean/std, bicubic resize to 224), tested in
  ``test_targets.py``;
* EMA: decay ``min(ema_decay, (1 + t) / (10 + t))`` (warm-up) where REPA uses 0.9999 from step 0;
  evaluations report the raw and the EMA weights.
"""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
import torch.nn.functional as F

from reed_core.curriculum import CurriculumConfig
from reed_core.recipe import ReedConfig
from reed_core.schedules import constant
from reed_image.configs import ObjectiveConfig
from reed_image.targets.vision import resample_tokens
from reed_image.task import ImageTask


def repa_sit_forward(sit, x, t, y, encoder_depth, projector):
    """REPA's ``SiT.forward``: ``(velocity, zs)`` with ``zs = projector(tokens after block d)``."""
    x = sit.x_embedder(x).flatten(2).transpose(1, 2) + sit.pos_embed  # (B, N, D)
    c = sit.t_embedder(t) + sit.y_embedder.embedding_table(y)
    zs = None
    for i, block in enumerate(sit.blocks):
        x = block(x, c)
        if (i + 1) == encoder_depth:
            N, T, D = x.shape
            zs = projector(x.reshape(-1, D)).reshape(N, T, -1)
    x = sit.final_layer(x, c)
    return sit.unpatchify(x), zs


def repa_loss(sit, projector, encoder_depth, proj_coeff, images, y, z, time_input, noises):
    """REPA's ``SILoss.__call__`` for ``path_type="linear"``, ``prediction="v"``, one encoder."""
    t = time_input.view(-1, 1, 1, 1)
    alpha_t, sigma_t, d_alpha_t, d_sigma_t = 1 - t, t, -1, 1
    model_input = alpha_t * images + sigma_t * noises
    model_target = d_alpha_t * images + d_sigma_t * noises
    model_output, z_tilde = repa_sit_forward(sit, model_input, time_input, y, encoder_depth, projector)
    denoising_loss = ((model_output - model_target) ** 2).mean(dim=(1, 2, 3))
    bsz = z.shape[0]
    proj_loss = 0.0
    for z_j, z_tilde_j in zip(z, z_tilde):
        z_tilde_j = F.normalize(z_tilde_j, dim=-1)
        z_j = F.normalize(z_j, dim=-1)
        proj_loss = proj_loss + (-(z_j * z_tilde_j).sum(dim=-1)).mean()
    proj_loss = proj_loss / bsz
    return denoising_loss.mean() + proj_coeff * proj_loss, model_output, proj_loss


@pytest.fixture
def repa_task(make_cfg):
    cfg = make_cfg(caption=False)
    targets = dict(cfg.reed.targets)
    targets["vision"] = replace(targets["vision"], depth=2, weight=0.5)
    cfg = replace(
        cfg,
        objective=ObjectiveConfig(class_dropout=0.0),
        reed=ReedConfig(targets=targets, curriculum=CurriculumConfig(w_diff=constant(), w_align=constant())),
    )
    torch.manual_seed(0)
    task = ImageTask(cfg)
    # a non-zero output layer and adaLN (DiT's zero init would hide errors in the blocks' use of c)
    with torch.no_grad():
        for p in task.model.parameters():
            p.add_(0.02 * torch.randn_like(p))
    return task


def test_reed_image_objective_matches_repa_formulation(repa_task):
    task = repa_task
    batch = task.batch(0, 0, 1, torch.device("cpu"))
    B = batch.x.shape[0]
    projector = task.model.aligner.projectors["vision"]
    lam = task.model.targets["vision"].weight

    torch.manual_seed(123)  # ImageTask.loss draws tau then eps, as REPA draws time then noise
    ours = task.loss(task.model, batch, step=3)
    task.model.zero_grad()
    ours.loss.backward()
    grads_ours = {n: p.grad.clone() for n, p in task.model.named_parameters() if p.grad is not None}

    torch.manual_seed(123)
    time_input = torch.rand(B)
    noises = torch.randn_like(batch.x)
    z = resample_tokens(batch.z["vision"].float(), task.denoiser.grid)  # (B, N, D_z)
    task.model.zero_grad()
    ref, v_ref, proj_ref = repa_loss(
        task.denoiser, projector, 2, lam, batch.x, batch.y, z, time_input, noises
    )
    ref.backward()
    grads_ref = {n: p.grad.clone() for n, p in task.model.named_parameters() if p.grad is not None}

    # velocity of the same inputs through reed-core's ReedModel (taps + aligner around SiT)
    x_t = (1 - time_input.view(-1, 1, 1, 1)) * batch.x + time_input.view(-1, 1, 1, 1) * noises
    with torch.no_grad():
        v_ours, terms = task.model(x_t, time_input, batch.y, tau=time_input, z_targets={"vision": z})
    torch.testing.assert_close(v_ours, v_ref.detach(), rtol=1e-5, atol=1e-6)
    # alignment: ours is 1 - cos per sample; REPA's is -cos
    torch.testing.assert_close(terms["vision"].loss.mean() - 1.0, proj_ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.terms["align/vision"] - 1.0, proj_ref.detach(), rtol=1e-5, atol=1e-6)
    torch.testing.assert_close(ours.loss.detach(), ref.detach() + lam, rtol=1e-5, atol=1e-6)

    assert set(grads_ours) == set(grads_ref)
    assert any(n.startswith("aligner.") for n in grads_ours)  # the projector is trained too
    for name in grads_ref:
        torch.testing.assert_close(grads_ours[name], grads_ref[name], rtol=1e-4, atol=1e-6, msg=name)


def test_parity_test_sees_a_wrong_depth(repa_task):
    """The reference is sensitive to what it checks: aligning block 1 instead of block 2 gives other
    gradients (block 2's parameters then get none from the alignment term)."""
    task = repa_task
    batch = task.batch(0, 0, 1, torch.device("cpu"))
    B = batch.x.shape[0]
    projector = task.model.aligner.projectors["vision"]
    z = resample_tokens(batch.z["vision"].float(), task.denoiser.grid)
    torch.manual_seed(123)
    ours = task.loss(task.model, batch, step=3)
    task.model.zero_grad()
    ours.loss.backward()
    grad_ours = task.denoiser.blocks[1].mlp.fc1.weight.grad.clone()
    torch.manual_seed(123)
    time_input, noises = torch.rand(B), torch.randn_like(batch.x)
    task.model.zero_grad()
    wrong, _, _ = repa_loss(task.denoiser, projector, 1, 0.5, batch.x, batch.y, z, time_input, noises)
    wrong.backward()
    grad_wrong = task.denoiser.blocks[1].mlp.fc1.weight.grad
    assert not torch.allclose(grad_ours, grad_wrong, rtol=1e-3, atol=1e-7)
