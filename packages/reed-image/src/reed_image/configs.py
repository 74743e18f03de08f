"""Experiment configs for reed-image: nested frozen dataclasses and named presets.

One :class:`ImageConfig` holds the model, data, objective (interpolant, time sampling), the REED
recipe (``reed``: alignment targets and curriculum, :class:`reed_core.recipe.ReedConfig`), trainer,
sampler and evaluation settings. Presets are functions; a config file (``--config FILE``) and
``key=value`` overrides apply on top, e.g.::

    python -m reed_image.train --preset fmnist-reed train.steps=4000 reed.targets.caption.depth=8

Vanilla SiT, single-target (REPA-like) and REED training are the same code: the presets differ
only in which targets are enabled and in the curriculum.

A target's ``options`` (strings) say what kind of representation ``z_k`` is:

    kind        vision: ``encoder`` is a vision encoder (``efficientnet-lite0``, ``dinov2-b``, any
                timm name); tokens ``[L, D]`` on the encoder grid, resampled to the SiT token grid,
                compared per token (pooling ``token``). The default.
                caption: ``captioner`` writes a sentence per image, ``encoder`` embeds it
                (``minilm``, a sentence-transformers name, ``hf:<name>``, or ``table:<file.npz>``
                of precomputed sentence embeddings); compared with the mean-pooled hidden state.
    captioner   caption: ``attributes`` (default) or a captioning model (reed_image.targets.captions).
    input_size  vision: side of the encoder's input images (default: the encoder's own).

``store`` is the target's feature-store folder (default ``RUN_DIR/features/<name>``), built once
(``python -m reed_image.features``) when missing; ``dim`` is read from it.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field, replace
from typing import ClassVar

from reed_core.curriculum import CurriculumConfig
from reed_core.recipe import ReedConfig, TargetConfig
from reed_core.schedules import constant, linear_warmup
from reed_core.speed import SpeedConfig
from reed_core.train import TrainConfig
from reed_image.models.sit import SiTConfig
from reed_image.samplers import SamplerConfig

TARGET_KINDS = ("vision", "caption")
TARGET_OPTIONS = ("kind", "captioner", "input_size")
# the token-by-feature matmuls of SiT's blocks: what train.speed.float8 converts (the per-sample
# adaLN linears, embedders, final layer and alignment projectors stay in bf16)
SIT_FLOAT8_MODULES = (
    "denoiser.blocks.*.attn.qkv",
    "denoiser.blocks.*.attn.proj",
    "denoiser.blocks.*.mlp.fc1",
    "denoiser.blocks.*.mlp.fc2",
)


@dataclass(frozen=True)
class DataConfig:
    source: str = "fashion-mnist"  # fashion-mnist | imagefolder | latents
    path: str | None = None  # folder / .npz; None: Debian package path for Fashion-MNIST
    split: str = "train"
    resolution: int = 32  # pixels are padded / resized to this side
    fit: str = "pad"  # pad | resize
    channels: int = 1  # imagefolder: 1 (grey) or 3 (RGB)
    download: bool = False
    limit: int | None = None  # train on a fixed random subset of this size
    limit_seed: int = 0  # picks that subset; not train.seed, so every seed of a study sees the same images
    on_device: bool = True  # keep the whole image set on the training device

    def __post_init__(self) -> None:
        if self.limit is not None and self.limit <= 0:
            raise ValueError(f"data.limit: must be > 0 (or unset: every image), got {self.limit}")


@dataclass(frozen=True)
class ObjectiveConfig:
    interpolant: str = "linear"  # linear | cosine
    time_sampling: str = "uniform"  # uniform | lognormal
    P_mean: float = 0.0
    P_std: float = 1.0
    class_dropout: float = 0.1  # p(y -> null label) for classifier-free guidance

    RENAMED: ClassVar[dict[str, str]] = {"targets": "reed.targets", "curriculum": "reed.curriculum"}


@dataclass(frozen=True)
class EvalConfig:
    num_samples: int = 2000
    batch_size: int = 500
    metrics: bool = True  # False: only write the sample grid
    classifier: str | None = None  # None: the cached default (python -m reed_image.eval_classifier)
    reference_split: str = "train"
    reference_size: int = 10000
    weights: str = "ema"  # ema | raw | both
    # with weights=both: the EMA weights only at steps that are multiples of this (0: at every
    # evaluation). Early EMA weights trail the raw ones, and each evaluation costs num_samples x
    # sampler.steps network calls.
    ema_every: int = 0
    grid_size: int = 100
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(method="euler", steps=50))

    def __post_init__(self) -> None:
        if self.weights not in ("ema", "raw", "both"):
            raise ValueError(f"eval.weights: unknown {self.weights!r}; choose ema, raw or both")
        if self.ema_every < 0:
            raise ValueError(f"eval.ema_every: must be >= 0, got {self.ema_every}")


@dataclass(frozen=True)
class ImageConfig:
    model: SiTConfig = field(default_factory=SiTConfig)
    data: DataConfig = field(default_factory=DataConfig)
    objective: ObjectiveConfig = field(default_factory=ObjectiveConfig)
    reed: ReedConfig = field(default_factory=ReedConfig)
    train: TrainConfig = field(default_factory=TrainConfig)
    sample: SamplerConfig = field(default_factory=SamplerConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)
    vae: str | None = None  # latents: AutoencoderKL (hub name or folder) to decode samples

    def __post_init__(self) -> None:
        for name, t in self.reed.targets.items():
            check_target(name, t)


# ---------------------------------------------------------------------------------------------
# what a target's options mean here (module docstring)


def target_kind(t: TargetConfig) -> str:
    return t.options.get("kind", "vision")


def target_captioner(t: TargetConfig) -> str:
    return t.options.get("captioner", "attributes")


def target_input_size(t: TargetConfig) -> int | None:
    """The vision encoder's input side, ``None`` for the encoder's default."""
    size = t.options.get("input_size", "")
    return int(size) if size else None


def check_target(name: str, t: TargetConfig) -> None:
    """A target's options and pooling fit its kind; errors name ``reed.targets.<name>.<key>``."""
    where = f"reed.targets.{name}"
    unknown = sorted(set(t.options) - set(TARGET_OPTIONS))
    if unknown:
        raise ValueError(f"{where}.options: unknown {unknown}; reed-image reads {TARGET_OPTIONS}")
    kind = target_kind(t)
    if kind not in TARGET_KINDS:
        raise ValueError(f"{where}.options.kind: unknown {kind!r}; choose one of {TARGET_KINDS}")
    size = t.options.get("input_size", "")
    if size and not (size.isdigit() and int(size) > 0):
        raise ValueError(f"{where}.options.input_size: expected a positive integer, got {size!r}")
    pooling = {"vision": ("token",), "caption": ("mean", "sum")}[kind]
    if t.pooling not in pooling:
        raise ValueError(
            f"{where}.pooling: a {kind} target is compared with pooling {' or '.join(pooling)}, "
            f"got {t.pooling!r}"
        )
    if not isinstance(t.depth, int):
        raise ValueError(f"{where}.depth: give SiT's 1-based block index, got {t.depth!r}")
    if t.location == "online" and kind != "vision":
        raise ValueError(
            f"{where}.location: online (the encoder runs on each batch) is for vision targets; "
            f"a {kind} target is read from its store (host, device or mmap)"
        )


# ---------------------------------------------------------------------------------------------
# targets of the paper's recipe, scaled to the model's depth


def vision_target(
    depth: int, encoder: str = "efficientnet-lite0", input_size: int | None = None, weight: float = 0.5, **kw
) -> TargetConfig:
    """Encoder tokens at SiT block ``depth``, compared per token."""
    options = {"kind": "vision"} | ({"input_size": str(input_size)} if input_size else {})
    return TargetConfig(encoder=encoder, depth=depth, pooling="token", weight=weight, options=options, **kw)


def caption_target(
    depth: int, encoder: str = "minilm", captioner: str = "attributes", weight: float = 0.5, **kw
) -> TargetConfig:
    """The embedding of each image's caption at SiT block ``depth``, compared mean-pooled."""
    options = {"kind": "caption", "captioner": captioner}
    return TargetConfig(encoder=encoder, depth=depth, pooling="mean", weight=weight, options=options, **kw)


# ---------------------------------------------------------------------------------------------
# presets


def imagenet_reed() -> ImageConfig:
    """The paper's ImageNet 256 recipe: SiT-XL/2 on SD-VAE latents, DINOv2-B at block 8, caption
    embedding at block 16 (coefficients 1.0 and 0.5, times 0.5), 50k-step diffusion warm-up,
    constant alignment, AdamW 1e-4, batch 256, EMA 0.9999, SDE sampler with 250 steps."""
    return ImageConfig(
        model=SiTConfig(arch="SiT-XL/2", input_size=32, in_channels=4, num_classes=1000),
        data=DataConfig(source="latents", path="data/imagenet256-latents.npz", on_device=False),
        reed=ReedConfig(
            targets={
                "vision": vision_target(8, encoder="dinov2-b", weight=0.5, input_size=224),
                "caption": caption_target(16, encoder="minilm", weight=0.25),
            },
            curriculum=CurriculumConfig(w_diff=linear_warmup(0, 50_000), w_align=constant()),
        ),
        train=TrainConfig(
            run_dir="runs/imagenet-reed",
            steps=4_000_000,
            batch_size=256,
            lr=1e-4,
            ema_decay=0.9999,
            ema_warmup=False,
            speed=SpeedConfig(compile=True, float8_modules=SIT_FLOAT8_MODULES),
            ckpt_every=10_000,
            log_every=100,
            eval_every=50_000,
        ),
        sample=SamplerConfig(method="sde", steps=250, cfg_scale=1.0),
        eval=EvalConfig(num_samples=50_000, metrics=False),
        vae="stabilityai/sd-vae-ft-ema",
    )


def _fmnist_targets(vision: bool, caption: bool) -> dict[str, TargetConfig]:
    """Both targets are always listed (so overrides address them); presets switch them on/off."""
    return {
        "vision": vision_target(4, encoder="efficientnet-lite0", input_size=256, weight=0.5, enabled=vision),
        "caption": caption_target(8, encoder="minilm", weight=0.25, enabled=caption),
    }


def fmnist_vanilla() -> ImageConfig:
    """SiT-S/2 on Fashion-MNIST padded to 32x32 (16x16 = 256 tokens), alignment off. The budget
    (2,000 steps of batch 128) fits three variants side by side on one GPU in a few minutes."""
    return ImageConfig(
        model=SiTConfig(arch="SiT-S/2", input_size=32, in_channels=1, num_classes=10),
        data=DataConfig(source="fashion-mnist", resolution=32, fit="pad"),
        reed=ReedConfig(targets=_fmnist_targets(vision=False, caption=False)),
        train=TrainConfig(
            run_dir="runs/fmnist-vanilla",
            steps=2000,
            batch_size=128,
            lr=2e-4,
            ema_decay=0.9999,
            ema_warmup=True,
            speed=SpeedConfig(compile=True, float8_modules=SIT_FLOAT8_MODULES),
            log_every=50,
            ckpt_every=1000,
            eval_every=250,
            grad_clip=1.0,
        ),
        sample=SamplerConfig(method="euler", steps=50),
        eval=EvalConfig(num_samples=1000, sampler=SamplerConfig(method="euler", steps=30)),
    )


def fmnist_repa() -> ImageConfig:
    """One vision target (ImageNet-pretrained EfficientNet-Lite0 head tokens at block 4): REPA-like."""
    cfg = fmnist_vanilla()
    return replace(
        cfg,
        reed=replace(cfg.reed, targets=_fmnist_targets(vision=True, caption=False)),
        train=replace(cfg.train, run_dir="runs/fmnist-repa"),
    )


def fmnist_reed() -> ImageConfig:
    """REED: vision tokens at block 4 + caption embedding at block 8 + curriculum: diffusion
    warm-up over the first 2.5% of the budget (the paper: 50k of 4M steps, 1.25%; a 10% warm-up
    was seen to hurt at a 1.4k-step budget), constant alignment."""
    cfg = fmnist_vanilla()
    curriculum = CurriculumConfig(w_diff=linear_warmup(0, 50), w_align=constant())
    return replace(
        cfg,
        reed=ReedConfig(targets=_fmnist_targets(vision=True, caption=True), curriculum=curriculum),
        train=replace(cfg.train, run_dir="runs/fmnist-reed"),
    )


def quickstart() -> ImageConfig:
    """A few minutes on a 2-core CPU: a narrow SiT (4 blocks of width 128, patch 4 -> 64 tokens)
    on 2,048 Fashion-MNIST images; REED with EfficientNet-Lite0 tokens (64 px input, 2x2 grid) at
    block 2 and an attribute caption embedded by MiniLM at block 3; writes a sample grid PNG."""
    return ImageConfig(
        model=SiTConfig(
            arch="SiT-S/4",
            input_size=32,
            in_channels=1,
            num_classes=10,
            depth=4,
            hidden_size=128,
            num_heads=4,
        ),
        data=DataConfig(source="fashion-mnist", resolution=32, fit="pad", limit=2048),
        reed=ReedConfig(
            targets={
                "vision": vision_target(
                    2, encoder="efficientnet-lite0", input_size=64, weight=0.5, projector_hidden=256
                ),
                "caption": caption_target(3, encoder="minilm", weight=0.25, projector_hidden=256),
            },
            curriculum=CurriculumConfig(w_diff=linear_warmup(0, 20), w_align=constant()),
        ),
        train=TrainConfig(
            run_dir="runs/quickstart",
            steps=600,
            batch_size=32,
            lr=1e-3,
            ema_decay=0.999,
            ema_warmup=True,
            speed=SpeedConfig(compile=False, float8_modules=SIT_FLOAT8_MODULES),
            log_every=50,
            ckpt_every=300,
            eval_every=0,
            tensorboard=False,
        ),
        sample=SamplerConfig(method="heun", steps=20),
        eval=EvalConfig(
            num_samples=100, metrics=False, grid_size=100, sampler=SamplerConfig(method="heun", steps=20)
        ),
    )


PRESETS: dict[str, Callable[[], ImageConfig]] = {
    "quickstart": quickstart,
    "fmnist-vanilla": fmnist_vanilla,
    "fmnist-repa": fmnist_repa,
    "fmnist-reed": fmnist_reed,
    "imagenet-reed": imagenet_reed,
}

__all__ = [
    "DataConfig", "EvalConfig", "ImageConfig", "ObjectiveConfig", "PRESETS", "caption_target",
    "check_target", "target_captioner", "target_input_size", "target_kind", "vision_target",
]  # fmt: skip
