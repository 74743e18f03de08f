from dataclasses import dataclass, field

import pytest

from reed_core.alignment import AlignmentTarget
from reed_core.config import ConfigError, load_config, load_config_file, save_config
from reed_core.curriculum import CurriculumConfig
from reed_core.decomposition import AlphaSpec
from reed_core.schedules import Schedule, linear_warmup
from reed_core.train import TrainConfig


@dataclass(frozen=True)
class Experiment:
    train: TrainConfig = field(default_factory=TrainConfig)
    curriculum: CurriculumConfig = field(default_factory=CurriculumConfig)
    targets: tuple[AlignmentTarget, ...] = (AlignmentTarget("vision", depth=8, dim=768),)
    note: str = ""


PRESETS = {"small": lambda: Experiment(train=TrainConfig(steps=10))}


def test_preset_file_and_overrides_compose(tmp_path):
    cfg_file = tmp_path / "exp.toml"
    cfg_file.write_text(
        "[train]\nlr = 3e-4\nbetas = [0.9, 0.95]\n"
        '[curriculum.w_diff]\nkind = "linear"\nend = 50.0\nv_start = 0.0\n'
    )
    cfg = load_config(Experiment, PRESETS, "small", cfg_file, ["train.batch_size=32", "note=hello"])
    assert cfg.train.steps == 10 and cfg.train.lr == 3e-4 and cfg.train.batch_size == 32
    assert cfg.train.betas == (0.9, 0.95) and cfg.note == "hello"
    assert cfg.curriculum.w_diff == Schedule("linear", 0.0, 50.0, 0.0, 1.0)
    assert cfg.targets[0].alpha == AlphaSpec()


def test_resolved_config_round_trips(tmp_path):
    cfg = Experiment(
        curriculum=CurriculumConfig(w_diff=linear_warmup(0, 5), per_target={"vision": linear_warmup(1, 2)}),
        targets=(
            AlignmentTarget("vision", 8, 768, alpha=AlphaSpec("window", 0.2, 0.7)),
            AlignmentTarget("text", "blocks.15", 384, pooling="mean", weight=0.5),
        ),
    )
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config_file(Experiment, path) == cfg


@pytest.mark.parametrize(
    "override, message",
    [
        ("train.lrr=1", "train.lrr: unknown key for TrainConfig"),
        ("train.steps=many", "train.steps: expected an integer, got 'many'"),
        ("train.speed.compile=perhaps", "train.speed.compile: expected true or false"),
        ("train.compile=true", "train.compile was renamed train.speed.compile"),
        ("train.ema_overlap=true", "train.ema_overlap was removed"),
        ("train.batch_size=-4", "train.batch_size: must be > 0"),
        ("curriculum.unit=minute", "curriculum.unit"),
        ("train.speed.compile_mode=fast", "train.speed.compile_mode: unknown 'fast'"),
        ("nested.key=1", "nested: unknown key for Experiment"),
        ("train.steps.x=1", "train.steps: not a table"),
        ("no_equals_sign", "expected key=value"),
    ],
)
def test_bad_overrides_name_the_field(override, message):
    with pytest.raises(ConfigError, match=message.replace("[", r"\[")):
        load_config(Experiment, PRESETS, None, None, [override])


def test_bad_file_entries_name_the_field(tmp_path):
    bad = tmp_path / "bad.yaml"
    bad.write_text("targets:\n  - {name: vision, depth: 8, dim: 768, weight: -1.0}\n")
    with pytest.raises(ConfigError, match=r"targets\[0\]: targets\['vision'\].weight: must be >= 0"):
        load_config(Experiment, file=bad)
    bad.write_text("targets:\n  - {name: vision, depth: 8, dim: 768, colour: red}\n")
    with pytest.raises(ConfigError, match=r"targets\[0\].colour: unknown key"):
        load_config(Experiment, file=bad)
    with pytest.raises(ConfigError, match="does not exist"):
        load_config(Experiment, file=tmp_path / "missing.toml")
    with pytest.raises(ConfigError, match="--preset: unknown 'huge'"):
        load_config(Experiment, PRESETS, "huge")
