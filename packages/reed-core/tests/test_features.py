import json

import numpy as np
import pytest
import torch

from reed_core.features import FeatureStore, FeatureStoreError, FeatureStoreWriter, build_feature_store


def write_ragged(root, n=10, shard_size=4):
    rng = np.random.default_rng(0)
    data = {f"ex{i}": rng.standard_normal((i % 3 + 1, 5)).astype(np.float32) for i in range(n)}
    with FeatureStoreWriter(root, "res", shape=(5,), dtype="float32", shard_size=shard_size) as w:
        for key, z in data.items():
            w.add(key, z)
    return data


def test_round_trip_ragged_across_shards(tmp_path):
    data = write_ragged(tmp_path / "s")
    store = FeatureStore.open(tmp_path / "s")
    assert len(store) == 10 and store.meta.shards == (4, 4, 2) and store.meta.fixed_length is None
    for key, z in data.items():
        np.testing.assert_array_equal(store.example(key), z)
    z, mask = store.get(["ex2", "ex0", "ex7"])
    assert z.shape == (3, 3, 5) and mask.sum(1).tolist() == [3, 1, 2]
    np.testing.assert_array_equal(z[2, :2].numpy(), data["ex7"])
    assert (z[1, 1:] == 0).all()


def test_fixed_length_store_and_builder(tmp_path):
    encoder = torch.nn.Linear(3, 4)
    inputs = torch.randn(6, 2, 3)
    batches = [([f"i{j}" for j in range(k, k + 3)], inputs[k : k + 3]) for k in (0, 3)]
    store = build_feature_store(encoder, batches, tmp_path / "f", "enc", shape=(4,), dtype="float16")
    assert store.meta.fixed_length == 2 and store.meta.dtype == "float16"
    expected = encoder(inputs).detach()
    torch.testing.assert_close(store.get_fixed(["i4", "i1"]), expected[[4, 1]], atol=2e-3, rtol=1e-3)
    assert store.as_tensor().shape == (6, 2, 4)


def test_missing_id_and_duplicates_are_named(tmp_path):
    write_ragged(tmp_path / "s")
    store = FeatureStore(tmp_path / "s")
    with pytest.raises(KeyError, match="'nope'"):
        store.example("nope")
    with pytest.raises(FeatureStoreError, match="duplicate example id 'a'"):
        w = FeatureStoreWriter(tmp_path / "d", "x", shape=(2,))
        w.add("a", np.zeros((1, 2)))
        w.add("a", np.zeros((1, 2)))
    with pytest.raises(FeatureStoreError, match=r"rows of shape \(3,\)"):
        FeatureStoreWriter(tmp_path / "e", "x", shape=(2,)).add("a", np.zeros((1, 3)))


def test_shape_and_dtype_checked_on_read(tmp_path):
    write_ragged(tmp_path / "s")
    meta_path = tmp_path / "s" / "meta.json"
    meta = json.loads(meta_path.read_text())
    meta["shape"] = [6]
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FeatureStoreError, match=r"shard_00000.data.npy.*meta.json says float32 \(6,\)"):
        FeatureStore(tmp_path / "s")
    meta["shape"], meta["dtype"] = [5], "float16"
    meta_path.write_text(json.dumps(meta))
    with pytest.raises(FeatureStoreError, match="float16"):
        FeatureStore(tmp_path / "s")


def test_missing_shard_and_unfinished_build(tmp_path):
    write_ragged(tmp_path / "s")
    (tmp_path / "s" / "shard_00001.data.npy").unlink()
    with pytest.raises(FeatureStoreError, match="missing shard file shard_00001.data.npy"):
        FeatureStore(tmp_path / "s")
    # a build that dies before close() leaves no meta.json: the store reads as not built
    w = FeatureStoreWriter(tmp_path / "u", "x", shape=(2,), shard_size=1)
    w.add("a", np.zeros((1, 2)))
    w.add("b", np.zeros((1, 2)))
    with pytest.raises(FileNotFoundError, match="not built"):
        FeatureStore(tmp_path / "u")
    # overwriting an existing store first withdraws its meta.json
    with pytest.raises(FileExistsError):
        FeatureStoreWriter(tmp_path / "s", "x", shape=(5,))


def test_non_finite_features_are_refused(tmp_path):
    with pytest.raises(FeatureStoreError, match="not finite"):
        FeatureStoreWriter(tmp_path / "n", "x", shape=(2,)).add("a", np.array([[np.nan, 0.0]]))
