"""The image task on reed-core: feature stores, training steps, vanilla = REED with targets off,
checkpoint reload and seeded sampling, and clear errors for bad input."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch

from reed_core.features import FeatureStore, FeatureStoreError
from reed_core.train import CheckpointError, Trainer, read_metrics
from reed_image.checkpoints import load_denoiser
from reed_image.data import fit_resolution, load_fashion_mnist
from reed_image.generation import generate
from reed_image.interpolants import Interpolant
from reed_image.targets.build import TargetTable, build_caption_store, ensure_store
from reed_image.task import ImageTask


def test_caption_store_from_a_table_and_gathering(make_cfg, fmnist_dir, caption_table_file, tmp_path):
    cfg = make_cfg()
    images = fit_resolution(load_fashion_mnist("train", fmnist_dir), 32)
    store = build_caption_store("caption", cfg.reed.targets["caption"], images, tmp_path / "cap")
    table = np.load(caption_table_file)
    rows = torch.tensor([5, 0, 77])
    want = table["embeddings"][table["index"][rows.numpy()]]
    for location in ("host", "mmap", "device"):
        z = TargetTable(store, images.ids, location, "cpu").gather(rows)
        assert z.shape == (3, 1, 16)
        np.testing.assert_allclose(z[:, 0].float().numpy(), want, rtol=1e-3, atol=1e-3)
    assert (tmp_path / "cap" / "captions.npz").exists()


def test_missing_or_mismatched_feature_shards_are_clear_errors(make_cfg, fmnist_dir, tmp_path):
    cfg = make_cfg()
    images = fit_resolution(load_fashion_mnist("train", fmnist_dir), 32)
    store = ensure_store("vision", cfg.reed.targets["vision"], images, tmp_path / "run")
    assert store.meta.fixed_length == 1 and store.meta.shape == (1280,)
    other = load_fashion_mnist("test", fmnist_dir)  # ids the store does not hold
    with pytest.raises(FeatureStoreError, match=r"no entry for 60 of .*fmnist-test-00000"):
        TargetTable(store, other.ids)
    root = tmp_path / "run" / "features" / "vision"
    np.save(root / "shard_00000.data.npy", np.zeros((120, 64), dtype=np.float16))  # wrong width
    with pytest.raises(FeatureStoreError, match=r"shard_00000.data.npy.*meta.json says"):
        FeatureStore(root)
    (root / "shard_00000.data.npy").unlink()
    with pytest.raises(FeatureStoreError, match="missing shard file"):
        FeatureStore(root)


def test_bad_configs_fail_before_any_work(make_cfg):
    cfg = make_cfg()
    with pytest.raises(ValueError, match=r"model.input_size=28 but the data are 32x32"):
        ImageTask(replace(cfg, model=replace(cfg.model, input_size=28)))
    targets = dict(cfg.reed.targets)
    targets["vision"] = replace(targets["vision"], depth=5)
    with pytest.raises(ValueError, match=r"reed.targets.vision.depth: 5 is outside the model's blocks 1..2"):
        ImageTask(replace(cfg, reed=replace(cfg.reed, targets=targets)))
    targets["vision"] = replace(targets["vision"], depth=1, encoder="no-such-net")
    with pytest.raises(ValueError, match="unknown vision encoder 'no-such-net'"):
        ImageTask(replace(cfg, reed=replace(cfg.reed, targets=targets)))
    targets["vision"] = replace(targets["vision"], encoder="efficientnet-lite0", options={"kind": "depth"})
    with pytest.raises(ValueError, match=r"reed.targets.vision.options.kind: unknown 'depth'"):
        replace(cfg, reed=replace(cfg.reed, targets=targets))
    targets["vision"] = replace(targets["vision"], options={"kind": "vision"}, pooling="mean")
    with pytest.raises(ValueError, match=r"reed.targets.vision.pooling: a vision target is compared"):
        replace(cfg, reed=replace(cfg.reed, targets=targets))


def test_a_bad_cublaslt_plan_file_fails_before_any_work(make_cfg, tmp_path):
    cfg = make_cfg()
    missing = tmp_path / "nope.json"
    with pytest.raises(ValueError, match=r"model.cublaslt_plans: .*nope.json: no such file"):
        ImageTask(replace(cfg, model=replace(cfg.model, cublaslt_plans=str(missing))))
    broken = tmp_path / "plans.json"
    broken.write_text('{"format": "reed-cublaslt-plans/1", "device": "GPU", "plans": []}')
    with pytest.raises(ValueError, match=r"model.cublaslt_plans: .*plans.json: field 'cublaslt_version'"):
        ImageTask(replace(cfg, model=replace(cfg.model, cublaslt_plans=str(broken))))


def _fit(cfg):
    task = ImageTask(cfg)
    result = Trainer(cfg.train, task, experiment_config=cfg).fit()
    return task, result, read_metrics(cfg.train.run_dir)


def test_reed_trains_and_vanilla_is_the_same_code_with_targets_off(make_cfg):
    task, result, metrics = _fit(make_cfg("reed"))
    assert np.isfinite(result["loss"]) and {"align/vision", "align/caption", "cos/caption"} <= set(result)
    assert metrics[0]["w_diff"] < 1.0  # diffusion warm-up
    assert list(Path(task.cfg.train.run_dir).glob("samples/ema_step*.png"))

    _, vanilla, van_metrics = _fit(make_cfg("vanilla", vision=False, caption=False))
    assert not any(k.startswith("align/") for k in vanilla)
    # with every alignment weight at zero, the aligned model follows vanilla's trajectory exactly
    cfg = make_cfg("zero")
    targets = {k: replace(t, weight=0.0) for k, t in cfg.reed.targets.items()}
    _, _, zero_metrics = _fit(replace(cfg, reed=replace(cfg.reed, targets=targets)))
    torch.testing.assert_close(
        [m["loss_gen"] for m in zero_metrics if "loss_gen" in m],
        [m["loss_gen"] for m in van_metrics if "loss_gen" in m],
    )


def test_loss_given_the_step_on_the_device_matches_the_host_step(make_cfg):
    # train.speed.cuda_graph hands loss() the step as a tensor; the curriculum (diffusion warm-up here)
    # must give the same weights, so the recorded step trains as the eager one
    task = ImageTask(make_cfg("tensor-step"))
    assert task.graph_key(0) == task.graph_key(10**6) == ()
    batch = task.batch(0, 0, 1, torch.device("cpu"))
    for step in (0, 1, 3, 10**6):
        torch.manual_seed(0)
        host = task.loss(task.model, batch, step)
        torch.manual_seed(0)
        device = task.loss(task.model, batch, torch.tensor(float(step), dtype=torch.float64))
        assert device.loss.dtype == host.loss.dtype
        torch.testing.assert_close(device.loss, host.loss, rtol=1e-6, atol=1e-7)
        for name in ("w_diff", "w_align/vision", "w_align/caption"):
            assert float(device.terms[name]) == pytest.approx(host.terms[name], abs=1e-7), name
    assert host.terms["w_diff"] == 1.0 and task.loss(task.model, batch, 0).terms["w_diff"] < 1.0


def test_checkpoint_samples_identically_after_reload(make_cfg):
    cfg = make_cfg("ckpt")
    task, _, _ = _fit(cfg)
    ckpt = f"{cfg.train.run_dir}/checkpoints/last.pt"
    cfg2, denoiser, step = load_denoiser(ckpt, "ema")
    assert step == cfg.train.steps and cfg2 == cfg
    path = Interpolant(cfg.objective.interpolant)
    a, labels = generate(denoiser, cfg2, 12, cfg2.sample, path, 10, 5)
    b, _ = generate(load_denoiser(ckpt, "ema")[1], cfg2, 12, cfg2.sample, path, 10, 5)
    assert torch.equal(a, b) and labels.tolist()[:11] == list(range(10)) + [0]
    c, _ = generate(denoiser, cfg2, 12, replace(cfg2.sample, seed=1), path, 10, 5)
    assert not torch.equal(a, c)
    raw = load_denoiser(ckpt, "raw")[1]
    assert not torch.equal(raw.final_layer.linear.weight, denoiser.final_layer.linear.weight)
    # a run saved before the recipe moved into reed.*: its weights load, its config names the rename
    state = torch.load(ckpt, weights_only=False)
    task.model.load_state_dict(state["model"])
    reed = state["config"].pop("reed")
    state["config"]["objective"].update(targets=reed["targets"], curriculum=reed["curriculum"])
    torch.save(state, Path(ckpt).with_name("old.pt"))
    renamed = "objective.curriculum was renamed reed.curriculum; objective.targets was renamed reed.targets"
    with pytest.raises(CheckpointError, match=f"old.pt: its config uses keys of an older version: {renamed}"):
        load_denoiser(Path(ckpt).with_name("old.pt"))
    with open(ckpt, "r+b") as fh:  # truncate: a torn file
        fh.truncate(1000)
    with pytest.raises(CheckpointError, match="corrupt"):
        load_denoiser(ckpt)


def test_evaluation_writes_grid_and_metrics(make_cfg, tmp_path):
    from reed_image.eval_classifier import main as train_classifier

    cfg = make_cfg("eval", caption=False)
    clf = tmp_path / "clf.pt"
    info = train_classifier(
        [
            "--data-path",
            cfg.data.path,
            "--epochs",
            "1",
            "--out",
            str(clf),
            "--device",
            "cpu",
            "--batch-size",
            "32",
        ]
    )
    assert 0.0 <= info["test_accuracy"] <= 1.0
    cfg = replace(
        cfg,
        eval=replace(
            cfg.eval, metrics=True, classifier=str(clf), num_samples=30, reference_split="test", batch_size=15
        ),
    )
    task, result, _ = _fit(cfg)
    assert {"eval/ema/fd", "eval/ema/precision", "eval/ema/recall", "eval/ema/is"} <= set(result)
    line = json.loads((tmp_path / "eval" / "eval.jsonl").read_text().splitlines()[-1])
    assert line["step"] == cfg.train.steps and line["ema/fd"] == result["eval/ema/fd"]
    assert (tmp_path / "eval" / "samples" / f"ema_step{cfg.train.steps:07d}.png").exists()


def test_ema_every_evaluates_the_ema_weights_only_at_its_multiples(make_cfg):
    cfg = make_cfg("ema_every", vision=False, caption=False)
    cfg = replace(
        cfg,
        train=replace(cfg.train, steps=4, eval_every=1),
        eval=replace(cfg.eval, weights="both", ema_every=2),
    )
    task, _, _ = _fit(cfg)
    grids = sorted(p.name for p in (Path(cfg.train.run_dir) / "samples").glob("*_step*.png"))
    assert [g for g in grids if g.startswith("raw_")] == [f"raw_step{s:07d}.png" for s in (1, 2, 3, 4)]
    assert [g for g in grids if g.startswith("ema_")] == [f"ema_step{s:07d}.png" for s in (2, 4)]
    with pytest.raises(ValueError, match="eval.ema_every: must be >= 0"):
        replace(cfg.eval, ema_every=-1)
    with pytest.raises(ValueError, match="eval.weights: unknown 'best'"):
        replace(cfg.eval, weights="best")


def test_data_limit_subset_is_the_same_for_every_run_seed(make_cfg):
    """Seeds of a study train on the same images (and share one feature store); the subset
    changes only with data.limit_seed."""
    cfg = make_cfg("limit", vision=False, caption=False)
    cfg = replace(cfg, data=replace(cfg.data, limit=64))
    ids = {}
    for seed in (0, 1):
        ids[seed] = ImageTask(replace(cfg, train=replace(cfg.train, seed=seed))).images.ids
    assert len(ids[0]) == 64 and ids[0] == ids[1]
    other = ImageTask(replace(cfg, data=replace(cfg.data, limit_seed=1))).images.ids
    assert sorted(other) != sorted(ids[0])


def test_online_vision_target_equals_the_stored_one(make_cfg):
    """location=online runs the encoder on each batch: the same z as the precomputed store, no
    store written; the same loss; and a caption target cannot be online."""
    cfg = make_cfg("stored", caption=False)
    stored = ImageTask(cfg)
    vision = cfg.reed.targets["vision"]
    online_cfg = replace(
        make_cfg("online", caption=False),
        reed=replace(cfg.reed, targets={**cfg.reed.targets, "vision": replace(vision, location="online")}),
    )
    online = ImageTask(online_cfg)
    assert not (Path(online_cfg.train.run_dir) / "features").exists()
    assert online.encoders and not online.tables
    a, b = stored.batch(3, 0, 1, stored.device), online.batch(3, 0, 1, online.device)
    assert b.z["vision"].dtype == a.z["vision"].dtype == torch.float16
    torch.testing.assert_close(b.z["vision"], a.z["vision"], rtol=1e-3, atol=1e-3)
    online.model.load_state_dict(stored.model.state_dict())
    torch.manual_seed(0)
    loss_stored = stored.loss(stored.model, a, 3).loss
    torch.manual_seed(0)
    loss_online = online.loss(online.model, b, 3).loss
    torch.testing.assert_close(loss_online, loss_stored, rtol=1e-3, atol=1e-4)
    caption = replace(cfg.reed.targets["caption"], enabled=True, location="online")
    with pytest.raises(ValueError, match=r"reed.targets.caption.location: online .* vision targets"):
        replace(cfg, reed=replace(cfg.reed, targets={**cfg.reed.targets, "caption": caption}))
