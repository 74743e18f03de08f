import math

import pytest
import torch

from reed_core import schedules as S


@pytest.mark.parametrize(
    "sched, before, after",
    [
        (S.linear_warmup(10, 20), 0.0, 1.0),
        (S.cosine_warmup(10, 20), 0.0, 1.0),
        (S.linear_decay(10, 20), 1.0, 0.0),
        (S.cosine_decay(10, 20), 1.0, 0.0),
        (S.sigmoid(10, 20), 0.0, 1.0),
    ],
)
def test_flat_before_start_and_clamped_after_end(sched, before, after):
    for p in (-5, 0, 9.999, 10):
        assert sched(p) == before
    for p in (20, 20.001, 100, 1e9):
        assert sched(p) == after
    # strictly between, and monotone
    mids = [sched(p) for p in (11, 13, 15, 17, 19)]
    assert all(min(before, after) < m < max(before, after) for m in mids)
    assert mids == sorted(mids, reverse=before > after)


def test_shapes_at_midpoint():
    assert S.linear_warmup(0, 10)(5) == pytest.approx(0.5)
    assert S.cosine_decay(0, 10)(5) == pytest.approx(0.5)
    assert S.cosine_decay(0, 10)(2.5) == pytest.approx(0.5 * (1 + math.cos(math.pi / 4)))
    assert S.sigmoid(0, 10)(5) == pytest.approx(0.5)


def test_constant_and_piecewise():
    assert S.constant(0.3)(-1) == S.constant(0.3)(1e6) == 0.3
    pw = S.piecewise([(0, 0.0), (10, 1.0), (20, 0.5)])
    assert pw(-1) == 0.0 and pw(5) == pytest.approx(0.5) and pw(15) == pytest.approx(0.75)
    assert pw(1000) == 0.5


def test_product_composes_warmup_and_decay():
    sched = S.Product((S.linear_warmup(0, 10), S.cosine_decay(50, 100)))
    assert sched(0) == 0.0 and sched(10) == 1.0 and sched(100) == 0.0 and sched(200) == 0.0


def test_bad_schedules_name_the_field():
    with pytest.raises(ValueError, match="kind"):
        S.Schedule("exponential")
    with pytest.raises(ValueError, match="before start"):
        S.Schedule("linear", start=10, end=5)
    with pytest.raises(ValueError, match="knots"):
        S.piecewise([(5, 1.0), (1, 0.0)])


@pytest.mark.parametrize(
    "sched",
    [
        S.constant(0.3),
        S.linear_warmup(10, 20),
        S.cosine_decay(10, 20, 0.8, 0.1),
        S.sigmoid(10, 20),
        S.Schedule("linear", 10, 10, 0.2, 0.7),  # a step at 10
        S.piecewise([(0, 0.0), (10, 1.0), (10, 0.4), (20, 0.5)]),
        S.Product((S.linear_warmup(0, 10), S.cosine_decay(15, 25))),
    ],
)
def test_tensor_progress_gives_the_float_schedule(sched):
    # the step on the device inside a recorded CUDA graph: same values as on the host
    points = [-3.0, 0.0, 2.5, 9.999, 10.0, 10.5, 13.0, 15.0, 19.0, 20.0, 24.0, 30.0, 1e6]
    values = sched(torch.tensor(points, dtype=torch.float64))
    assert isinstance(values, torch.Tensor) and values.dtype == torch.float64
    assert values.tolist() == pytest.approx([sched(p) for p in points], abs=1e-12)
