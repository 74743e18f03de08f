"""Frechet distance, precision/recall and the IS-style score against closed forms."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from reed_image.metrics import (
    Evaluator,
    feature_stats,
    frechet_distance,
    inception_style_score,
    load_classifier,
    precision_recall,
)
from reed_image.models.classifier import Classifier, ClassifierConfig


def test_frechet_distance_closed_forms():
    mu1, mu2 = np.array([0.0, 1.0]), np.array([3.0, -1.0])
    s1, s2 = np.diag([1.0, 4.0]), np.diag([9.0, 1.0])
    # diagonal Gaussians: |mu1 - mu2|^2 + sum (sqrt(a) - sqrt(b))^2
    expected = 13.0 + (1 - 3) ** 2 + (2 - 1) ** 2
    assert frechet_distance(mu1, s1, mu2, s2) == pytest.approx(expected)
    assert frechet_distance(mu1, s1, mu1, s1) == pytest.approx(0.0, abs=1e-9)
    g = np.random.default_rng(0)
    a, b = g.standard_normal((20000, 3)), g.standard_normal((20000, 3)) * 2 + 1
    fd = frechet_distance(*feature_stats(a), *feature_stats(b))
    assert fd == pytest.approx(3 * 1.0 + 3 * (2 - 1) ** 2, rel=0.05)


def test_precision_recall_extremes():
    g = np.random.default_rng(0)
    real = g.standard_normal((500, 4))
    p, r = precision_recall(real, real.copy())
    assert p == 1.0 and r == 1.0
    p, r = precision_recall(real, real + 100.0)
    assert p == 0.0 and r == 0.0
    collapsed = np.repeat(real[:1], 500, axis=0) + 1e-3 * g.standard_normal((500, 4))  # one mode
    p, r = precision_recall(real, collapsed)
    assert p > 0.9 and r < 0.05


def test_inception_style_score():
    confident_uniform = np.eye(10)[np.arange(1000) % 10] * 50.0
    assert inception_style_score(confident_uniform) == pytest.approx(10.0, rel=1e-3)
    all_one_class = np.eye(10)[np.zeros(1000, dtype=int)] * 50.0
    assert inception_style_score(all_one_class) == pytest.approx(1.0, rel=1e-3)


def test_evaluator_on_real_data_is_near_zero_and_missing_classifier_is_clear(tmp_path):
    torch.manual_seed(0)
    clf = Classifier(ClassifierConfig(in_channels=1, resolution=8, widths=(4, 8)))
    real = torch.rand(400, 1, 8, 8) * 2 - 1
    ev = Evaluator(clf, real, batch_size=100)
    same = ev(real)
    other = ev(torch.rand(400, 1, 8, 8) * 0.2 - 1)
    assert same.fd < 1e-6 and same.precision == 1.0
    assert other.fd > 100 * max(same.fd, 1e-9)
    with pytest.raises(FileNotFoundError, match="eval_classifier"):
        load_classifier(tmp_path / "none.pt")
    (tmp_path / "bad.pt").write_bytes(b"junk")
    with pytest.raises(ValueError, match="bad.pt"):
        load_classifier(tmp_path / "bad.pt")
