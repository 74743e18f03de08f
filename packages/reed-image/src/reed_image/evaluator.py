"""The sample-quality evaluator of a config: the evaluation classifier (never an alignment target,
trained once by ``python -m reed_image.eval_classifier``) and the reference images of the data
config at ``eval.reference_split`` (:class:`reed_image.metrics.Evaluator`)."""

from __future__ import annotations

from pathlib import Path

import torch

from reed_image.configs import ImageConfig
from reed_image.data import load_source, to_unit_range
from reed_image.eval_classifier import default_classifier_path
from reed_image.metrics import Evaluator, load_classifier


def build_evaluator(cfg: ImageConfig, device: str | torch.device = "cpu") -> Evaluator:
    """Classifier + reference statistics of ``cfg.data`` at ``cfg.eval.reference_split``."""
    d, e = cfg.data, cfg.eval
    if d.source == "latents":
        raise ValueError("eval: reference images must be pixels; evaluate with an image-folder data config")
    path = Path(e.classifier) if e.classifier else default_classifier_path(d.source, d.resolution)
    classifier = load_classifier(path, device)
    ref, _ = load_source(d.source, d.path, e.reference_split, d.resolution, d.fit, d.channels, d.download)
    ref = ref.subset(e.reference_size, seed=0)
    return Evaluator(classifier, to_unit_range(ref.images), batch_size=e.batch_size)
