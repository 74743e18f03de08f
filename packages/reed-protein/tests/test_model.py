import math

import numpy as np
import torch

from reed_core.taps import FeatureTaps
from reed_protein.data.batch import collate, token_batches
from reed_protein.data.datasets import load_files
from reed_protein.data.structure import Protein, concat_chains
from reed_protein.models.graph import BackboneGraph, RelativePosition, knn_graph, virtual_cb
from reed_protein.models.mpnn import DiffusionMPNN, ModelConfig

TINY = ModelConfig(hidden=16, encoder_layers=2, decoder_layers=2, k_neighbors=10, dropout=0.0)


def _rotation(seed=0):
    q, _ = np.linalg.qr(np.random.default_rng(seed).normal(size=(3, 3)))
    return torch.tensor(q * np.sign(np.linalg.det(q)), dtype=torch.float32)  # proper rotation


def _inputs(batch, x_tau=None):
    x_tau = batch.S if x_tau is None else x_tau
    tau = torch.full((len(batch),), 0.5)
    return (batch.X, x_tau, tau, batch.mask, batch.residue_index, batch.chain_labels, batch.segment)


def test_virtual_cb_geometry(small_pdbs):
    p = load_files(small_pdbs[:1])[0]
    X = torch.from_numpy(p.X)
    cb = virtual_cb(X)
    d = (cb - X[:, 1]).norm(dim=-1)  # ideal CA-CB bond: 1.52-1.53 A
    assert 1.50 < d.mean() < 1.56 and d.min() > 1.4 and d.max() < 1.7


def test_features_and_model_invariant_to_rigid_motion(small_pdbs):
    proteins = load_files(small_pdbs[:2])
    batch = collate(proteins)
    R, t = _rotation(), torch.tensor([12.0, -7.0, 30.0])
    moved = collate(proteins)
    moved.X = batch.X @ R.T + t
    graph = BackboneGraph(16, k=10).eval()
    E1, idx1, m1 = graph(batch.X, batch.mask, batch.residue_index, batch.chain_labels, batch.segment)
    E2, idx2, m2 = graph(moved.X, moved.mask, moved.residue_index, moved.chain_labels, moved.segment)
    assert torch.equal(idx1, idx2)
    assert torch.allclose(E1, E2, atol=1e-4)
    model = DiffusionMPNN(TINY).eval()
    with torch.no_grad():
        a, b = model(*_inputs(batch)), model(*_inputs(moved))
    real = batch.mask > 0
    assert torch.allclose(a[real], b[real], atol=1e-4)


def test_padding_does_not_change_per_chain_results(small_pdbs):
    proteins = load_files(small_pdbs)
    model = DiffusionMPNN(TINY).eval()
    together = collate(proteins, length=120)  # extra padding beyond the longest chain
    with torch.no_grad():
        out = model(*_inputs(together))
        for b, p in enumerate(proteins):
            alone = collate([p])
            ref = model(*_inputs(alone))[0]
            assert torch.allclose(out[b, : len(p)], ref, atol=1e-5), p.name


def test_knn_puts_padding_last():
    CA = torch.randn(1, 12, 3) * 5
    mask = torch.ones(1, 12)
    mask[0, 9:] = 0
    E_idx, edge_mask = knn_graph(CA, mask, k=12)
    assert (E_idx[0, :9, :9] < 9).all()  # the 9 real residues come first for every real row
    assert edge_mask[0, :9, :9].all() and not edge_mask[0, :9, 9:].any()
    assert not edge_mask[0, 9:].any()


def test_relative_position_marks_breaks_and_chains(small_pdbs):
    p = load_files(small_pdbs[:1])[0]
    a = Protein(p.name, p.X[:40], p.aatype[:40], p.chain_id[:40], p.residue_index[:40], p.segment[:40])
    b = Protein(
        p.name,
        p.X[40:80],
        p.aatype[40:80],
        np.array(["B"] * 40),
        p.residue_index[40:80] - p.residue_index[40],
        p.segment[40:80],
    )
    two = concat_chains([a, b], "two")
    batch = collate([two])
    rel = RelativePosition(4, max_offset=32)
    E_idx = torch.arange(80)[None, None].expand(1, 80, 80)
    seg = batch.segment.clone()
    seg[0, 20:40] += 7  # a chain break inside chain A at residue 20
    w = 2 * 32 + 1
    ri, cl = batch.residue_index, batch.chain_labels
    offset = (ri[:, :, None] - ri[:, None, :]).clamp(-32, 32) + 32
    same_chain = cl[:, :, None] == cl[:, None, :]
    same_seg = seg[:, :, None] == seg[:, None, :]
    expect = torch.where(same_seg, offset, offset + w)
    expect = torch.where(same_chain, expect, torch.full_like(expect, 2 * w))
    emb = rel(ri, cl, seg, E_idx)
    assert torch.allclose(emb, rel.embed(expect))
    assert expect[0, 5, 60] == 2 * w and expect[0, 5, 25] >= w and expect[0, 5, 6] < w


def test_taps_capture_node_and_edge_states(small_pdbs):
    proteins = load_files(small_pdbs[:2])
    batch = collate(proteins)
    model = DiffusionMPNN(TINY).eval()
    assert model.tap_points() == [
        "encoder.0.node_out",
        "encoder.1.node_out",
        "decoder.0.node_out",
        "decoder.1.node_out",
    ]
    with FeatureTaps(model, {"nodes": 4, "edges": "decoder.1.edge_out"}) as taps, torch.no_grad():
        model(*_inputs(batch))
        B, L = batch.S.shape
        assert taps.outputs["nodes"].shape == (B, L, 16)
        assert taps.outputs["edges"].shape == (B, L, 10, 16)


def test_token_batches_respect_budget():
    lengths = [30, 500, 80, 81, 200, 35, 999]
    batches = token_batches(lengths, 1000)
    assert sorted(int(i) for b in batches for i in b) == list(range(len(lengths)))
    for b in batches:
        assert len(b) * max(lengths[i] for i in b) <= 1000 or len(b) == 1


def test_parameter_count_matches_proteinmpnn_scale():
    n = sum(p.numel() for p in DiffusionMPNN().parameters())
    assert 1.5e6 < n < 2.5e6  # ProteinMPNN: 1.66M; ours adds edge updates in the decoder
    assert math.isfinite(n)
