import math

import pytest
import torch

from reed_protein.data.batch import collate
from reed_protein.data.datasets import load_files
from reed_protein.data.residues import MASK, NUM_AA, UNK
from reed_protein.metrics import kabsch_rmsd, nelbo, perplexity, pooled_recovery, recovery
from reed_protein.models.mpnn import DiffusionMPNN, ModelConfig
from reed_protein.objective import DiffusionConfig, corrupt, diffusion_loss, sample_tau


def test_corrupt_extremes_and_unknown_residues():
    S = torch.randint(0, NUM_AA, (3, 50))
    S[:, 7] = UNK
    known = S < NUM_AA
    x0, m0 = corrupt(S, known, torch.zeros(3))
    assert torch.equal(x0, S) and not m0.any()
    x1, m1 = corrupt(S, known, torch.ones(3))
    assert (x1[known] == MASK).all() and torch.equal(m1, known)
    assert (x1[:, 7] == UNK).all()  # X is shown, never masked


def test_corrupt_rate_matches_tau():
    S = torch.randint(0, NUM_AA, (4, 20000))
    tau = torch.tensor([0.1, 0.3, 0.6, 0.9])
    _, masked = corrupt(S, torch.ones_like(S, dtype=torch.bool), tau)
    assert torch.allclose(masked.float().mean(1), tau, atol=0.01)


def test_loss_closed_form_uniform_logits():
    """Uniform predictions: L = (n_masked / (tau n)) * log 20 for every sample."""
    B, L = 5, 40
    S = torch.randint(0, NUM_AA, (B, L))
    known = torch.ones(B, L, dtype=torch.bool)
    known[0, 30:] = False  # padding of the first sample
    tau = torch.tensor([0.2, 0.4, 0.5, 0.8, 1.0])
    _, masked = corrupt(S, known, tau)
    loss = diffusion_loss(torch.zeros(B, L, NUM_AA), S, masked, known, tau)
    expect = masked.sum(1) / (tau * known.sum(1)) * math.log(NUM_AA)
    assert loss.shape == (B,)
    assert torch.allclose(loss, expect, atol=1e-5)


def test_loss_perfect_prediction_is_zero():
    S = torch.randint(0, NUM_AA, (2, 30))
    known = torch.ones_like(S, dtype=torch.bool)
    tau = torch.tensor([0.5, 0.9])
    _, masked = corrupt(S, known, tau)
    logits = torch.nn.functional.one_hot(S, NUM_AA).float() * 50
    assert diffusion_loss(logits, S, masked, known, tau).abs().max() < 1e-6


def test_sample_tau_stratified_covers_unit_interval():
    tau = sample_tau(64, DiffusionConfig(), "cpu", torch.Generator().manual_seed(0))
    assert tau.min() >= 1e-3 and tau.max() <= 1.0
    counts = torch.histc(tau, bins=8, min=0, max=1)
    assert (counts == 8).all()  # one sample per 1/64 stratum -> 8 per eighth


def test_uninformed_model_perplexity_near_20(small_pdbs):
    """A model that predicts uniform logits has NELBO ~ log 20 per residue (perplexity ~ 20)."""
    batch = collate(load_files(small_pdbs))
    model = DiffusionMPNN(ModelConfig(hidden=8, encoder_layers=1, decoder_layers=1, k_neighbors=6)).eval()
    torch.nn.init.zeros_(model.W_out.weight)
    torch.nn.init.zeros_(model.W_out.bias)
    nel = nelbo(model, batch, num_tau=16)
    ppl = perplexity(nel, batch.known.sum(1))
    assert ppl == pytest.approx(20.0, rel=0.06)


def test_recovery_per_structure_and_pooled():
    S_true = torch.tensor([[1, 2, 3, 4], [5, 6, 7, 0]])
    S_pred = torch.tensor([[1, 2, 0, 0], [5, 0, 0, 9]])
    known = torch.tensor([[True, True, True, True], [True, True, True, False]])
    assert torch.allclose(recovery(S_pred, S_true, known), torch.tensor([0.5, 1 / 3]))
    assert pooled_recovery(S_pred, S_true, known) == pytest.approx(3 / 7)


def test_kabsch_rmsd_removes_rigid_motion():
    P = torch.randn(30, 3).numpy()
    q, _ = torch.linalg.qr(torch.randn(3, 3))
    q = q * torch.sign(torch.linalg.det(q))
    Q = P @ q.numpy().T + 5.0
    assert kabsch_rmsd(P, Q) < 1e-5
    assert kabsch_rmsd(P, Q + 0.1 * torch.randn(30, 3).numpy()) > 0.05
