"""One REED recipe (reed_core.recipe): the ``reed`` config section and assemble()."""

from dataclasses import dataclass, field

import pytest
import torch
import torch.nn as nn

from reed_core.alignment import AlignmentTarget
from reed_core.config import ConfigError, load_config, load_config_file, save_config
from reed_core.curriculum import Curriculum, CurriculumConfig
from reed_core.decomposition import AlphaSpec
from reed_core.model import ReedModel
from reed_core.objective import ReedObjective
from reed_core.recipe import ReedConfig, TargetConfig, assemble
from reed_core.schedules import Schedule, constant, cosine_decay, linear_warmup, step_down


@dataclass(frozen=True)
class Domain:
    reed: ReedConfig = field(
        default_factory=lambda: ReedConfig(
            targets={
                "vision": TargetConfig(encoder="dinov2-b", depth=2, pooling="token", weight=0.5),
                "caption": TargetConfig(
                    encoder="minilm", depth=3, pooling="mean", weight=0.25, options={"kind": "caption"}
                ),
            },
            curriculum=CurriculumConfig(w_diff=linear_warmup(0, 10), w_align=constant()),
        )
    )


class Net(nn.Module):
    """``[B, N, 8] -> [B, N, 8]`` through 4 tappable blocks."""

    def __init__(self):
        super().__init__()
        self.blocks = nn.ModuleList(nn.Linear(8, 8) for _ in range(4))

    def tap_points(self):
        return [f"blocks.{i}" for i in range(4)]

    def forward(self, x):
        for block in self.blocks:
            x = x + block(x).tanh()
        return x


def test_config_round_trips_and_takes_dotted_overrides(tmp_path):
    cfg = Domain(
        reed=ReedConfig(
            targets={
                "vision": TargetConfig(
                    encoder="dinov2-b",
                    checkpoint="weights.pth",
                    store="feats/vision",
                    location="device",
                    depth=8,
                    alpha=AlphaSpec("window", 0.2, 0.7),
                    options={"input_size": "224"},
                ),
                "pair": TargetConfig(depth="decoder.1.edge_out", dim=128, pooling="edge", enabled=False),
            },
            curriculum=CurriculumConfig(
                w_diff=linear_warmup(0, 50), w_align=cosine_decay(0, 200), unit="epoch"
            ),
            align_scale=0.2,
        )
    )
    path = save_config(cfg, tmp_path / "run" / "config.yaml")
    assert load_config_file(Domain, path) == cfg

    over = load_config(
        Domain,
        overrides=[
            "reed.curriculum.w_align.kind=cosine",
            "reed.curriculum.w_align.end=100",
            "reed.curriculum.w_align.v_end=0",
            "reed.curriculum.unit=epoch",
            "reed.targets.vision.depth=blocks.1",
            "reed.targets.caption.options.captioner=vlm",
            "reed.targets.extra.depth=1",  # a new target from the command line
            "reed.align_scale=0.5",
        ],
    )
    assert over.reed.curriculum.w_align == Schedule("cosine", 0.0, 100.0, 1.0, 0.0)
    assert over.reed.curriculum.unit == "epoch"
    assert over.reed.targets["vision"].depth == "blocks.1"
    assert over.reed.targets["caption"].options == {"kind": "caption", "captioner": "vlm"}
    assert over.reed.targets["extra"] == TargetConfig(depth=1)
    assert over.reed.align_scale == 0.5


@pytest.mark.parametrize(
    "override, message",
    [
        ("reed.targets.vision.pooling=max", "reed.targets.vision.pooling: unknown 'max'"),
        ("reed.targets.vision.location=disk", "reed.targets.vision.location: unknown 'disk'"),
        ("reed.targets.vision.depth=0", "reed.targets.vision.depth: must be >= 1"),
        ("reed.targets.vision.weight=-1", "reed.targets.vision.weight: must be >= 0"),
        ("reed.targets.vision.alpha.kind=bell", "reed.targets.vision.alpha.kind: unknown 'bell'"),
        ("reed.targets.vision.colour=red", "reed.targets.vision.colour: unknown key for TargetConfig"),
        ("reed.curriculum.unit=minute", "reed.curriculum.unit: unknown 'minute'"),
        ("reed.curriculum.w_align.kind=bell", "reed.curriculum.w_align.kind: unknown schedule 'bell'"),
        ("reed.curriculum.per_target.text.kind=linear", "reed.curriculum.per_target: no target named"),
        ("reed.align_scale=-1", "reed.align_scale: must be >= 0"),
        ("reed.align_decay_epochs=200", "reed.align_decay_epochs was renamed reed.curriculum.w_align"),
    ],
)
def test_config_errors_name_the_dotted_key(override, message):
    with pytest.raises(ConfigError, match=message):
        load_config(Domain, overrides=[override])


def test_step_down_holds_then_stops():
    s = step_down(5)
    assert [s(p) for p in (0, 5, 5.5, 9)] == [1.0, 1.0, 0.0, 0.0]
    assert s(torch.tensor([0.0, 5.0, 5.5, 9.0], dtype=torch.float64)).tolist() == [1.0, 1.0, 0.0, 0.0]


def _data(B=6, N=5):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(B, N, 8, generator=g)
    tau = torch.rand(B, generator=g)
    z = {"vision": torch.randn(B, N, 16, generator=g), "caption": torch.randn(B, 4, generator=g)}
    return x, tau, z


def test_assemble_gives_the_loss_of_the_hand_built_chain():
    cfg = Domain().reed
    torch.manual_seed(0)
    built = assemble(Net(), cfg, target_dims={"vision": 16, "caption": 4})
    torch.manual_seed(0)
    targets = [
        AlignmentTarget("vision", 2, 16, "token", 0.5),
        AlignmentTarget("caption", 3, 4, "mean", 0.25),
    ]
    model = ReedModel(Net(), targets)
    curriculum = Curriculum(CurriculumConfig(w_diff=linear_warmup(0, 10)), ["vision", "caption"])
    objective = ReedObjective(curriculum, {t.name: t for t in targets})
    assert built.targets == targets
    assert list(built.model.state_dict()) == list(model.state_dict())  # checkpoints keep their keys
    x, tau, z = _data()
    for progress in (0.0, 4.0, 20.0):
        out_a, align_a = built.model(x, tau=tau, z_targets=z)
        out_b, align_b = model(x, tau=tau, z_targets=z)
        gen = (out_a - x).pow(2).mean((1, 2))
        a = built.objective(gen, align_a, built.curriculum.progress(progress, 1))
        b = objective((out_b - x).pow(2).mean((1, 2)), align_b, curriculum.progress(progress, 1))
        torch.testing.assert_close(a.loss, b.loss, rtol=0, atol=0)


def test_assemble_drops_disabled_targets_and_scales_the_weights():
    base = Domain().reed
    cfg = ReedConfig(
        targets={**base.targets, "caption": TargetConfig(depth=3, pooling="mean", enabled=False)},
        curriculum=CurriculumConfig(per_target={"caption": cosine_decay(0, 5)}),
        align_scale=0.2,
    )
    built = assemble(Net(), cfg, target_dims={"vision": 16})  # no width needed for a disabled target
    assert [t.name for t in built.targets] == ["vision"]
    assert built.targets[0].weight == pytest.approx(0.2 * 0.5)
    assert list(built.model.aligner.projectors) == ["vision"]
    assert built.curriculum.cfg.per_target == {}
    x, tau, z = _data()
    _, align = built.model(x, tau=tau, z_targets={"vision": z["vision"]})
    out = built.objective(torch.zeros(6), align, 0.0)
    torch.testing.assert_close(out.loss, 0.1 * (align["vision"].alpha * align["vision"].loss).mean())

    nothing = assemble(Net(), ReedConfig(targets={"v": TargetConfig(dim=16, enabled=False)}))
    assert nothing.targets == [] and nothing.model.aligner is None


def test_assemble_errors_name_the_key():
    cfg = Domain().reed
    bad = ReedConfig(targets={**cfg.targets, "vision": TargetConfig(depth=9)})
    with pytest.raises(ConfigError, match=r"reed.targets.vision.depth: 9 is beyond the model, which has 4"):
        assemble(Net(), bad, target_dims={"vision": 16, "caption": 4})
    bad = ReedConfig(targets={**cfg.targets, "vision": TargetConfig(depth="blocks.12")})
    with pytest.raises(ConfigError, match=r"reed.targets.vision.depth: model Net has no module named"):
        assemble(Net(), bad, target_dims={"vision": 16, "caption": 4})
    with pytest.raises(ConfigError, match=r"reed.targets.caption.dim: 0 \(read from the store or encoder\)"):
        assemble(Net(), cfg, target_dims={"vision": 16})
    fixed = ReedConfig(targets={"vision": TargetConfig(depth=2, dim=32)})
    with pytest.raises(ConfigError, match=r"reed.targets.vision.dim: is 32, but its store or encoder gives"):
        assemble(Net(), fixed, target_dims={"vision": 16})
