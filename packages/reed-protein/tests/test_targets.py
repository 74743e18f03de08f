from dataclasses import replace

import esm
import numpy as np
import pytest
import torch

from reed_core.features import FeatureStore
from reed_protein.configs import protein_target
from reed_protein.data.batch import collate
from reed_protein.data.datasets import load_files
from reed_protein.data.structure import Protein, concat_chains
from reed_protein.models.graph import knn_graph
from reed_protein.targets import (
    ESM2Targets,
    ProteinMPNNTargets,
    TargetError,
    build_target_stores,
    load_esm2,
    proteinmpnn_weights,
)
from reed_protein.task import TargetSource


@pytest.fixture(scope="module")
def proteins(small_pdbs):
    return load_files(small_pdbs[:2])


@pytest.fixture(scope="module")
def pm():
    return ProteinMPNNTargets("v_48_020")


def test_proteinmpnn_pair_targets_sit_on_our_edges(proteins, pm):
    batch = collate(proteins)
    E_idx, edge_mask = knn_graph(batch.X[:, :, 1], batch.mask, 30)
    z = pm(batch, E_idx)
    B, L = batch.S.shape
    assert z["structure"].shape == (B, L, 128) and z["pair"].shape == (B, L, 30, 128)
    h_V, h_E, E_idx_pm = pm.encode(batch)
    for b, i, k in [(0, 5, 0), (0, 40, 17), (1, 60, 29)]:  # our edge (i, E_idx[b,i,k])
        j = E_idx[b, i, k]
        slot = (E_idx_pm[b, i] == j).nonzero()
        assert len(slot) == 1
        assert torch.allclose(z["pair"][b, i, k], h_E[b, i, slot[0, 0]])
    found = z["pair"].abs().sum(-1) > 0
    assert torch.equal(found, edge_mask.bool())  # every real edge found, padding edges zero


def test_proteinmpnn_weights_resolution(tmp_path):
    assert proteinmpnn_weights("v_48_020").name == "v_48_020.pt"
    assert "soluble" in str(proteinmpnn_weights("soluble/v_48_010"))
    with pytest.raises(TargetError, match="available"):
        proteinmpnn_weights("v_99_999")
    with pytest.raises(TargetError, match="do not exist"):
        proteinmpnn_weights(str(tmp_path / "none.pt"))


def _tiny_esm():
    alphabet = esm.data.Alphabet.from_architecture("ESM-1b")
    model = esm.ESM2(num_layers=2, embed_dim=32, attention_heads=4, alphabet=alphabet)
    return ESM2Targets(model, alphabet)


def test_esm2_per_residue_embeddings_per_chain(proteins):
    enc = _tiny_esm()
    a, b = proteins
    b = Protein(b.name, b.X, b.aatype, np.array(["B"] * len(b)), b.residue_index, b.segment)
    complex_ = concat_chains([a, b], "ab")
    both = enc.embed_protein(complex_)
    assert both.shape == (len(a) + len(b), 32)
    assert torch.allclose(both[: len(a)], enc.embed_sequence(a.sequence), atol=1e-5)
    z = enc([a, b], 100)["single"]
    assert z.shape == (2, 100, 32) and (z[0, len(a) :] == 0).all()


def test_esm2_loading_errors_are_clear(tmp_path):
    with pytest.raises(TargetError, match="cannot load"):
        load_esm2(str(tmp_path / "missing_esm2.pt"))


def test_feature_store_matches_online_targets(proteins, pm, tmp_path):
    paths = build_target_stores(proteins, pm, tmp_path / "pm", k=30, batch_size=1)
    store = FeatureStore.open(paths["pair"])
    assert store.meta.shape == (30, 128) and len(store) == 2
    pair = protein_target("proteinmpnn", "v_48_020", "pair", "decoder.1.edge_out", 1.0)
    online = TargetSource({"pair": pair})
    stored = TargetSource({"pair": replace(pair, store=str(paths["pair"]))})
    batch = collate(proteins)
    E_idx, edge_mask = knn_graph(batch.X[:, :, 1], batch.mask, 30)
    z1, m1 = online(proteins, batch, E_idx, edge_mask)
    z2, m2 = stored(proteins, batch, E_idx, edge_mask)
    assert torch.equal(m1["pair"], m2["pair"])
    assert torch.allclose(z1["pair"], z2["pair"], atol=2e-2)  # float16 storage
    esm_paths = build_target_stores(proteins, _tiny_esm(), tmp_path / "esm")
    single = FeatureStore.open(esm_paths["single"])
    assert single.example(proteins[0].name).shape == (len(proteins[0]), 32)
    assert np.isfinite(np.asarray(single.example(proteins[1].name))).all()
