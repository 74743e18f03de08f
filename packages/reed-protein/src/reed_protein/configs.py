"""Experiment configs (frozen dataclasses) and named presets.

Presets: ``baseline`` (diffusion only), ``reed`` (ProteinMPNN structure + pair targets, the
offline default), ``reed_esm`` (adds the per-residue ESM-2 "single" target: the paper's three
targets), ``tiny`` (a CPU smoke test). Budgets are in epochs (``epochs``); the paper's curriculum
(diffusion warm-up 50 epochs, cosine alignment decay over 200) is given in epochs too.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from reed_core.train import TrainConfig
from reed_protein.models.mpnn import ModelConfig
from reed_protein.objective import DiffusionConfig
from reed_protein.sample import SamplerConfig

SOURCES = ("offline", "npz", "directory", "cath")
ENCODERS = {"proteinmpnn": ("structure", "pair"), "esm2": ("single",)}


@dataclass(frozen=True)
class DataConfig:
    source: str = "offline"  # offline | npz | directory | cath
    path: str = ""  # npz file, structure directory, or CATH chain_set.jsonl
    splits: str = ""  # CATH chain_set_splits.json
    cache: str = "data/protein/offline.npz"  # parsed offline set (built on first use)
    identity: float = 0.3  # sequence-identity threshold of the cluster split
    split_seed: int = 0
    min_length: int = 30
    max_length: int = 1000
    max_tokens: int = 6000  # padded residues per training batch (B * L_max)

    def __post_init__(self) -> None:
        if self.source not in SOURCES:
            raise ValueError(f"data.source: unknown {self.source!r}; choose one of {SOURCES}")
        if self.source in ("npz", "directory", "cath") and not self.path:
            raise ValueError(f"data.path: required for data.source={self.source!r}")
        if self.source == "cath" and not self.splits:
            raise ValueError("data.splits: required for data.source='cath' (chain_set_splits.json)")
        if not 0.0 < self.identity <= 1.0:
            raise ValueError(f"data.identity: must lie in (0, 1], got {self.identity}")
        if self.max_tokens < self.max_length:
            raise ValueError(
                f"data.max_tokens ({self.max_tokens}) must be >= data.max_length "
                f"({self.max_length}) so that every chain fits a batch"
            )


@dataclass(frozen=True)
class TargetConfig:
    """One alignment target: which encoder output is ``z`` and which tap of the model aligns to it."""

    name: str = "structure"
    encoder: str = "proteinmpnn"  # proteinmpnn | esm2
    checkpoint: str = "v_48_020"  # ProteinMPNN weights name/path, or ESM-2 hub name / .pt path
    feature: str = "structure"  # proteinmpnn: structure | pair; esm2: single
    depth: str = "encoder.2.node_out"  # tap point (module path) of the model
    weight: float = 1.0  # lambda_k before reed.align_scale
    store: str = ""  # precomputed feature store folder; "" computes z online

    def __post_init__(self) -> None:
        where = f"reed.targets[{self.name!r}]"
        if self.encoder not in ENCODERS:
            raise ValueError(f"{where}.encoder: unknown {self.encoder!r}; choose one of {tuple(ENCODERS)}")
        if self.feature not in ENCODERS[self.encoder]:
            raise ValueError(
                f"{where}.feature: {self.encoder} gives {ENCODERS[self.encoder]}, not {self.feature!r}"
            )
        if (self.feature == "pair") != self.depth.endswith("edge_out"):
            raise ValueError(
                f"{where}.depth: a pair target aligns edge states (*.edge_out) and a "
                f"per-residue target node states (*.node_out); got {self.depth!r}"
            )

    @property
    def pooling(self) -> str:
        return "edge" if self.feature == "pair" else "token"


@dataclass(frozen=True)
class ReedConfig:
    targets: tuple[TargetConfig, ...] = ()
    align_scale: float = 0.2  # the paper's overall factor on the target weights
    diffusion_warmup_epochs: float = 50.0  # w_diff: 0 -> 1 linearly (0: none)
    align_decay_epochs: float = 200.0  # w_align: cosine 1 -> 0 (0: constant)
    projector_hidden: int = 512
    projector_layers: int = 3


@dataclass(frozen=True)
class EvalConfig:
    every_epochs: int = 10
    splits: tuple[str, ...] = ("validation", "test")
    sampler: SamplerConfig = field(default_factory=lambda: SamplerConfig(steps=20))
    num_tau: int = 4  # noise levels of the perplexity (NELBO) estimate
    max_tokens: int = 12000
    weights: tuple[str, ...] = ("ema", "raw")  # which weights to evaluate ("raw/" metric prefix)

    def __post_init__(self) -> None:
        bad = [w for w in self.weights if w not in ("ema", "raw")]
        if bad or not self.weights:
            raise ValueError(f"eval.weights: choose from ('ema', 'raw'), got {self.weights}")


@dataclass(frozen=True)
class ProteinConfig:
    train: TrainConfig = field(
        default_factory=lambda: TrainConfig(
            run_dir="runs/protein/reed",
            lr=1e-3,
            lr_warmup_steps=100,
            batch_size=1,
            ema_decay=0.999,
            grad_clip=1.0,
            log_every=20,
            ckpt_every=500,
        )
    )
    epochs: int = 300  # budget; sets train.steps = epochs * steps_per_epoch (0: use train.steps)
    model: ModelConfig = field(default_factory=ModelConfig)
    diffusion: DiffusionConfig = field(default_factory=DiffusionConfig)
    data: DataConfig = field(default_factory=DataConfig)
    reed: ReedConfig = field(default_factory=ReedConfig)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if isinstance(self.epochs, int) and self.epochs < 0:
            raise ValueError(f"epochs: must be >= 0 (0: train for train.steps steps), got {self.epochs}")


def proteinmpnn_targets(store_root: str = "") -> tuple[TargetConfig, ...]:
    """Paper recipe with ProteinMPNN features: encoder output -> structure (weight 1.0), decoder
    layer 2 edge states -> pair (weight 2.0)."""
    store = (lambda name: f"{store_root}/{name}") if store_root else (lambda name: "")
    return (
        TargetConfig(
            "structure", "proteinmpnn", "v_48_020", "structure", "encoder.2.node_out", 1.0, store("structure")
        ),
        TargetConfig("pair", "proteinmpnn", "v_48_020", "pair", "decoder.1.edge_out", 2.0, store("pair")),
    )


def baseline() -> ProteinConfig:
    cfg = ProteinConfig()
    return replace(
        cfg,
        train=replace(cfg.train, run_dir="runs/protein/baseline"),
        reed=ReedConfig(targets=(), diffusion_warmup_epochs=0, align_decay_epochs=0),
    )


def reed() -> ProteinConfig:
    return ProteinConfig(reed=ReedConfig(targets=proteinmpnn_targets()))


def reed_esm() -> ProteinConfig:
    """The paper's three targets: decoder layer 2 nodes -> single (ESM-2, weight 0.5)."""
    single = TargetConfig("single", "esm2", "esm2_t33_650M_UR50D", "single", "decoder.1.node_out", 0.5)
    cfg = ProteinConfig(reed=ReedConfig(targets=(single,) + proteinmpnn_targets()))
    return replace(cfg, train=replace(cfg.train, run_dir="runs/protein/reed_esm"))


def tiny() -> ProteinConfig:
    """Seconds on a CPU: a 16-wide model, 2 epochs."""
    cfg = reed()
    return replace(
        cfg,
        epochs=2,
        train=replace(
            cfg.train,
            run_dir="runs/protein/tiny",
            lr_warmup_steps=0,
            log_every=1,
            progress_bar=False,
            tensorboard=False,
        ),
        model=ModelConfig(hidden=16, encoder_layers=2, decoder_layers=2, k_neighbors=8),
        reed=replace(
            cfg.reed,
            targets=(replace(cfg.reed.targets[0], depth="encoder.1.node_out"), cfg.reed.targets[1]),
            diffusion_warmup_epochs=1,
            align_decay_epochs=2,
            projector_hidden=32,
        ),
        eval=EvalConfig(every_epochs=1, sampler=SamplerConfig(steps=4), num_tau=2),
    )


PRESETS = {"baseline": baseline, "reed": reed, "reed_esm": reed_esm, "tiny": tiny}
