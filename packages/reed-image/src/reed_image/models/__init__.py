"""Networks only (no noise, no losses): the SiT denoiser and the evaluation classifier."""

from reed_image.models.classifier import Classifier, ClassifierConfig
from reed_image.models.sit import SiT, SiT_models, SiTConfig, count_parameters

__all__ = ["Classifier", "ClassifierConfig", "SiT", "SiTConfig", "SiT_models", "count_parameters"]
