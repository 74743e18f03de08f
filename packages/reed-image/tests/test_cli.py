"""Command lines: --help, presets and config files round-trip, and a tiny end-to-end run
(train -> sample -> evaluate) through the same entry points a user calls."""

from __future__ import annotations

import json
from dataclasses import replace

import numpy as np
import pytest
import yaml

from reed_core.config import config_to_dict, load_config, load_config_file, save_config
from reed_image import evaluate, features, sample, train
from reed_image.configs import PRESETS, ImageConfig


@pytest.mark.parametrize("module", [train, sample, evaluate, features])
def test_help(module, capsys):
    with pytest.raises(SystemExit) as exit_info:
        module.main(["--help"])
    assert exit_info.value.code == 0
    out = capsys.readouterr().out
    assert "--preset" in out and "--config" in out
    if module is train:
        assert "--slurm" in out


@pytest.mark.parametrize("name", sorted(PRESETS))
def test_presets_round_trip_through_a_config_file(name, tmp_path):
    cfg = PRESETS[name]()
    save_config(cfg, tmp_path / "config.yaml")
    assert load_config_file(ImageConfig, tmp_path / "config.yaml") == cfg


def test_presets_differ_only_in_targets_and_curriculum():
    v, r, e = (config_to_dict(PRESETS[f"fmnist-{k}"]()) for k in ("vanilla", "repa", "reed"))
    for cfg in (v, r, e):
        cfg["train"].pop("run_dir")
    assert {k: x for k, x in v.items() if k != "reed"} == {k: x for k, x in e.items() if k != "reed"}
    assert [t["enabled"] for t in v["reed"]["targets"].values()] == [False, False]
    assert [t["enabled"] for t in r["reed"]["targets"].values()] == [True, False]
    assert [t["enabled"] for t in e["reed"]["targets"].values()] == [True, True]


def test_overrides_and_file_errors_name_the_field(tmp_path):
    cfg = load_config(
        ImageConfig, PRESETS, "fmnist-reed", None, ["reed.targets.caption.depth=6", "train.steps=10"]
    )
    assert cfg.reed.targets["caption"].depth == 6 and cfg.train.steps == 10
    (tmp_path / "bad.yaml").write_text(yaml.safe_dump({"reed": {"targets": {"vision": {"depht": 3}}}}))
    with pytest.raises(ValueError, match="reed.targets.vision.depht: unknown key"):
        load_config(ImageConfig, PRESETS, "fmnist-reed", tmp_path / "bad.yaml", [])
    with pytest.raises(ValueError, match="reed.targets.vision.location: unknown 'disk'"):
        load_config(ImageConfig, PRESETS, "fmnist-reed", None, ["reed.targets.vision.location=disk"])
    with pytest.raises(ValueError, match="objective.targets was renamed reed.targets"):
        load_config(ImageConfig, PRESETS, "fmnist-reed", None, ["objective.targets.vision.depth=3"])
    with pytest.raises(ValueError, match="train.compile was renamed train.speed.compile"):
        load_config(ImageConfig, PRESETS, "fmnist-reed", None, ["train.compile=false"])


def test_slurm_dry_run_prints_a_script(tmp_path, capsys):
    script = train.main(
        [
            "--preset",
            "fmnist-reed",
            f"train.run_dir={tmp_path}/run",
            "--slurm",
            "--slurm-dry-run",
            "--slurm-partition",
            "gpu",
        ]
    )
    assert "#SBATCH" in str(script) or "#SBATCH" in capsys.readouterr().out


@pytest.mark.slow
def test_train_sample_evaluate_end_to_end(make_cfg, tmp_path):
    from reed_image.eval_classifier import main as train_classifier

    cfg = make_cfg("e2e")
    stores = {k: replace(t, store=str(tmp_path / "feats" / k)) for k, t in cfg.reed.targets.items()}
    cfg = replace(cfg, reed=replace(cfg.reed, targets=stores))
    save_config(cfg, tmp_path / "cfg.yaml")
    feats = features.main(["--config", str(tmp_path / "cfg.yaml")])
    assert set(feats) == {"vision", "caption"}
    result = train.main(["--config", str(tmp_path / "cfg.yaml"), "train.steps=3"])
    assert np.isfinite(result["loss"])
    ckpt = tmp_path / "e2e" / "checkpoints" / "last.pt"
    grid = sample.main(
        [
            "--checkpoint",
            str(ckpt),
            "--num",
            "20",
            "--out",
            str(tmp_path / "s"),
            "sample.method=sde",
            "sample.steps=4",
            "sample.cfg_scale=1.5",
            "sample.guidance_high=0.7",
        ]
    )
    assert grid.exists() and grid.suffix == ".png"
    npz = grid.with_suffix(".npz")
    with np.load(npz) as f:
        assert f["arr_0"].shape == (20, 32, 32, 3) and f["arr_0"].dtype == np.uint8
        assert f["arr_1"].tolist()[:3] == [0, 1, 2]
    clf = tmp_path / "clf.pt"
    train_classifier(["--data-path", cfg.data.path, "--epochs", "1", "--out", str(clf), "--device", "cpu"])
    out = tmp_path / "metrics.json"
    metrics = evaluate.main(
        [
            "--samples",
            str(npz),
            "--config",
            str(tmp_path / "cfg.yaml"),
            f"eval.classifier={clf}",
            "eval.reference_split=test",
            "--out",
            str(out),
        ]
    )
    assert json.loads(out.read_text()) == metrics and metrics["num_samples"] == 20
    with pytest.raises(SystemExit):
        sample.main(["--checkpoint", str(tmp_path / "nope.pt")])
