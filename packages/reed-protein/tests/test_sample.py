import pytest
import torch

from reed_protein.data.batch import collate
from reed_protein.data.datasets import load_files
from reed_protein.data.residues import NUM_AA
from reed_protein.models.mpnn import DiffusionMPNN, ModelConfig
from reed_protein.sample import SamplerConfig, sample

TINY = ModelConfig(hidden=16, encoder_layers=1, decoder_layers=2, k_neighbors=8, dropout=0.0)


@pytest.fixture(scope="module")
def batch(small_pdbs):
    return collate(load_files(small_pdbs))


@pytest.mark.parametrize("order", ["random", "confidence"])
def test_sampler_keeps_fixed_positions(batch, order):
    model = DiffusionMPNN(TINY).eval()
    fixed = torch.zeros_like(batch.mask, dtype=torch.bool)
    fixed[0, :20] = True
    fixed[1, 40:45] = True
    fixed[2, ::3] = True
    d = sample(
        model,
        batch,
        SamplerConfig(steps=7, temperature=1.0, order=order),
        num_designs=3,
        fixed=fixed,
        generator=torch.Generator().manual_seed(0),
    )
    assert d.S.shape == (9, batch.S.shape[1])
    real = (batch.mask > 0).repeat_interleave(3, 0)
    fixed3 = fixed.repeat_interleave(3, 0)
    native = batch.S.repeat_interleave(3, 0)
    assert torch.equal(d.S[fixed3], native[fixed3])
    assert ((d.S[real] >= 0) & (d.S[real] < NUM_AA)).all()  # every designed residue is an amino acid
    assert torch.equal(d.designed, real & ~fixed3)
    assert torch.isfinite(d.score).all() and (d.score > 0).all()
    assert d.ids == [i for i in batch.ids for _ in range(3)]


def test_temperature_zero_is_deterministic_and_high_temperature_diversifies(batch):
    model = DiffusionMPNN(TINY).eval()
    cold = sample(model, batch, SamplerConfig(steps=5, temperature=0.0, order="confidence"), 2)
    assert torch.equal(cold.S[0], cold.S[1])
    hot = sample(
        model, batch, SamplerConfig(steps=5, temperature=5.0), 2, generator=torch.Generator().manual_seed(1)
    )
    real = batch.mask[0] > 0
    assert (hot.S[0][real] != hot.S[1][real]).any()


def test_sampler_recovers_native_from_an_oracle(batch):
    """With a denoiser that always predicts the native sequence, every order and step count
    recovers it exactly: the unmasking bookkeeping loses no position."""

    class Oracle(DiffusionMPNN):
        def decode(self, state, x_tau, tau):
            return (
                torch.nn.functional.one_hot(batch.S.clamp(max=19), NUM_AA)
                .float()
                .repeat_interleave(len(x_tau) // len(batch), 0)
                * 20
            )

    model = Oracle(TINY).eval()
    for steps in (1, 3, 200):
        d = sample(model, batch, SamplerConfig(steps=steps, temperature=0.5), 2)
        real = (batch.mask > 0).repeat_interleave(2, 0)
        known = batch.known.repeat_interleave(2, 0)
        assert torch.equal(d.S[known], batch.S.repeat_interleave(2, 0)[known])
        assert (d.S[real] < NUM_AA).all()


def test_bad_sampler_settings():
    with pytest.raises(ValueError, match="sample.order"):
        SamplerConfig(order="left-to-right")
    with pytest.raises(ValueError, match="sample.steps"):
        SamplerConfig(steps=0)
