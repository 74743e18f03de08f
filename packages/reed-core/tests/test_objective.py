import pytest
import torch

from reed_core.alignment import AlignmentTarget, AlignmentTerm
from reed_core.curriculum import Curriculum, CurriculumConfig
from reed_core.objective import ReedObjective, per_sample_mean
from reed_core.schedules import constant, cosine_decay, linear_warmup


def make_objective():
    targets = {
        "a": AlignmentTarget("a", depth=1, dim=4, weight=0.5),
        "b": AlignmentTarget("b", depth=2, dim=4, weight=2.0),
    }
    cfg = CurriculumConfig(
        w_diff=linear_warmup(0, 10), w_align=constant(1.0), per_target={"b": cosine_decay(0, 10)}
    )
    return ReedObjective(Curriculum(cfg, list(targets)), targets)


def test_total_loss_matches_hand_computation():
    objective = make_objective()
    gen = torch.tensor([1.0, 3.0])
    terms = {
        "a": AlignmentTerm(loss=torch.tensor([0.2, 0.4]), alpha=torch.tensor([1.0, 0.0])),
        "b": AlignmentTerm(loss=torch.tensor([0.5, 1.0]), alpha=torch.tensor([2.0, 1.0])),
    }
    out = objective(gen, terms, progress=5)
    w_diff, w_b = 0.5, 0.5  # linear warm-up and cosine decay at their midpoints
    expected = w_diff * 2.0 + 1.0 * 0.5 * (0.2 * 1.0 + 0.4 * 0.0) / 2 + w_b * 2.0 * (0.5 * 2 + 1.0 * 1) / 2
    assert out.loss.item() == pytest.approx(expected)
    assert out.terms["w_diff"] == pytest.approx(0.5)
    assert out.terms["w_align/b"] == pytest.approx(0.5)
    assert out.terms["align/a"].item() == pytest.approx(0.1)
    after = objective(gen, terms, progress=50)  # decay clamped at 0 after its end
    assert after.terms["w_align/b"] == 0.0


def test_per_sample_weights_multiply_their_own_sample():
    loss = torch.tensor([1.0, 2.0, 3.0, 4.0])
    alpha = torch.tensor([0.0, 1.0, 0.0, 1.0])
    assert per_sample_mean(loss, alpha).item() == pytest.approx(1.5)
    # a [B,1,1,1] weight would broadcast against a [B] loss into [B,1,1,B]: refuse it
    with pytest.raises(ValueError, match="do not match"):
        per_sample_mean(loss, alpha.view(4, 1, 1, 1))
    with pytest.raises(ValueError, match=r"shape \[B\]"):
        per_sample_mean(loss.view(4, 1))


def test_objective_rejects_terms_without_a_target():
    objective = make_objective()
    term = AlignmentTerm(loss=torch.zeros(2), alpha=torch.ones(2))
    with pytest.raises(KeyError, match="'c'"):
        objective(torch.zeros(2), {"c": term}, 0)


def test_curriculum_per_target_names_must_exist():
    with pytest.raises(ValueError, match="per_target"):
        Curriculum(CurriculumConfig(per_target={"nope": constant()}), ["a"])
    with pytest.raises(ValueError, match="curriculum.unit"):
        CurriculumConfig(unit="minute")


def test_curriculum_progress_in_epochs():
    cur = Curriculum(CurriculumConfig(unit="epoch"))
    assert cur.progress(250, steps_per_epoch=100) == 2.5
    assert Curriculum(CurriculumConfig()).progress(250, 100) == 250
