"""Alignment targets: vision encoders, captioners and caption embedders, feature stores."""

from reed_image.targets.captions import AttributeCaptioner, VLMCaptioner, build_captioner
from reed_image.targets.text import SentenceEmbedder, embed_captions
from reed_image.targets.vision import VisionEncoder, build_vision_encoder, resample_tokens

__all__ = [
    "AttributeCaptioner", "SentenceEmbedder", "VLMCaptioner", "VisionEncoder", "build_captioner",
    "build_vision_encoder", "embed_captions", "resample_tokens",
]  # fmt: skip
