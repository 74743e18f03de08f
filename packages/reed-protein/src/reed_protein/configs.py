"""Experiment configs (frozen dataclasses) and named presets.

Presets: ``baseline`` (diffusion only), ``reed`` (ProteinMPNN structure + pair targets, the
offline default), ``reed_esm`` (adds the per-residue ESM-2 "single" target: the paper's three
targets), ``tiny`` (a CPU smoke test). Budgets are in epochs (``epochs``); the paper's curriculum
(``reed.curriculum``: diffusion warm-up over 50 epochs, cosine alignment decay over 200, unit
epoch) is given in epochs too, and every target weight is scaled by ``reed.align_scale`` = 0.2.

The recipe is reed-core's :class:`reed_core.recipe.ReedConfig`. A target here is
``encoder`` (``proteinmpnn`` | ``esm2``), ``feature`` (what the encoder gives: ProteinMPNN
``structure`` node states or ``pair`` edge states, ESM-2 ``single`` residue embeddings),
``checkpoint`` (ProteinMPNN weights name/path, or ESM-2 hub name / ``.pt`` path), ``store``
(precomputed feature store; "" computes ``z`` online) and ``depth`` (a tap point of the model,
e.g. ``encoder.2.node_out``); a pair target aligns edge states (``*.edge_out``, pooling ``edge``),
a per-residue one node states (``*.node_out``, pooling ``token``).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace

from reed_core.curriculum import CurriculumConfig
from reed_core.recipe import ReedConfig, TargetConfig
from reed_core.schedules import cosine_decay, linear_warmup
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
    # offline sources to assemble (names of reed_protein.data.sources.SOURCES); empty: every one
    # found on this machine. The cache records the list it was built from.
    sources: tuple[str, ...] = ()
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
        if self.sources:
            from reed_protein.data.sources import select

            try:
                select(self.sources)
            except ValueError as err:
                raise ValueError(f"data.sources: {err}") from None
        if not 0.0 < self.identity <= 1.0:
            raise ValueError(f"data.identity: must lie in (0, 1], got {self.identity}")
        if self.max_tokens < self.max_length:
            raise ValueError(
                f"data.max_tokens ({self.max_tokens}) must be >= data.max_length "
                f"({self.max_length}) so that every chain fits a batch"
            )


def check_target(name: str, t: TargetConfig) -> None:
    """A target's encoder, feature, depth and pooling fit together; errors name the key."""
    where = f"reed.targets.{name}"
    if t.encoder not in ENCODERS:
        raise ValueError(f"{where}.encoder: unknown {t.encoder!r}; choose one of {tuple(ENCODERS)}")
    if t.feature not in ENCODERS[t.encoder]:
        raise ValueError(f"{where}.feature: {t.encoder} gives {ENCODERS[t.encoder]}, not {t.feature!r}")
    edge = t.feature == "pair"
    if not isinstance(t.depth, str) or edge != t.depth.endswith("edge_out"):
        raise ValueError(
            f"{where}.depth: a pair target aligns edge states (*.edge_out) and a "
            f"per-residue target node states (*.node_out); got {t.depth!r}"
        )
    if t.pooling != ("edge" if edge else "token"):
        raise ValueError(
            f"{where}.pooling: a {t.feature} target needs pooling {'edge' if edge else 'token'!r}, "
            f"got {t.pooling!r}"
        )


def protein_target(
    encoder: str, checkpoint: str, feature: str, depth: str, weight: float, store: str = ""
) -> TargetConfig:
    """A target of the paper's recipe: lambda ``weight`` (before ``reed.align_scale``), a 3-layer
    projector 512 wide, pooling by feature (edges for ``pair``)."""
    return TargetConfig(
        encoder=encoder,
        feature=feature,
        checkpoint=checkpoint,
        store=store,
        depth=depth,
        pooling="edge" if feature == "pair" else "token",
        weight=weight,
        projector_hidden=512,
        projector_layers=3,
    )


def paper_reed(targets: dict[str, TargetConfig] | None = None) -> ReedConfig:
    """The paper's protein curriculum (w_diff: 0 -> 1 over 50 epochs; w_align: cosine 1 -> 0 over
    200 epochs) and overall factor 0.2 on the target weights."""
    return ReedConfig(
        targets=dict(targets or {}),
        curriculum=CurriculumConfig(w_diff=linear_warmup(0, 50), w_align=cosine_decay(0, 200), unit="epoch"),
        align_scale=0.2,
    )


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
    reed: ReedConfig = field(default_factory=paper_reed)
    eval: EvalConfig = field(default_factory=EvalConfig)

    def __post_init__(self) -> None:
        if isinstance(self.epochs, int) and self.epochs < 0:
            raise ValueError(f"epochs: must be >= 0 (0: train for train.steps steps), got {self.epochs}")
        for name, t in self.reed.targets.items():
            check_target(name, t)


def proteinmpnn_targets(store_root: str = "") -> dict[str, TargetConfig]:
    """Paper recipe with ProteinMPNN features: encoder output -> structure (weight 1.0), decoder
    layer 2 edge states -> pair (weight 2.0)."""
    store = (lambda name: f"{store_root}/{name}") if store_root else (lambda name: "")
    return {
        "structure": protein_target(
            "proteinmpnn", "v_48_020", "structure", "encoder.2.node_out", 1.0, store("structure")
        ),
        "pair": protein_target("proteinmpnn", "v_48_020", "pair", "decoder.1.edge_out", 2.0, store("pair")),
    }


def baseline() -> ProteinConfig:
    """Diffusion only: no targets, constant weights."""
    cfg = ProteinConfig()
    return replace(
        cfg,
        train=replace(cfg.train, run_dir="runs/protein/baseline"),
        reed=ReedConfig(curriculum=CurriculumConfig(unit="epoch"), align_scale=0.2),
    )


def reed() -> ProteinConfig:
    return ProteinConfig(reed=paper_reed(proteinmpnn_targets()))


def reed_esm() -> ProteinConfig:
    """The paper's three targets: decoder layer 2 nodes -> single (ESM-2, weight 0.5)."""
    single = protein_target("esm2", "esm2_t33_650M_UR50D", "single", "decoder.1.node_out", 0.5)
    cfg = ProteinConfig(reed=paper_reed({"single": single, **proteinmpnn_targets()}))
    return replace(cfg, train=replace(cfg.train, run_dir="runs/protein/reed_esm"))


def tiny() -> ProteinConfig:
    """Seconds on a CPU: a 16-wide model, 2 epochs."""
    cfg = reed()
    targets = cfg.reed.targets
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
            targets={
                "structure": replace(targets["structure"], depth="encoder.1.node_out", projector_hidden=32),
                "pair": replace(targets["pair"], projector_hidden=32),
            },
            curriculum=replace(cfg.reed.curriculum, w_diff=linear_warmup(0, 1), w_align=cosine_decay(0, 2)),
        ),
        eval=EvalConfig(every_epochs=1, sampler=SamplerConfig(steps=4), num_tau=2),
    )


def small() -> ProteinConfig:
    """The shipped pretrained checkpoint's recipe (``reed_protein/weights/reed_small.pt``): the
    ``reed`` targets on a 64-wide model with k = 16 neighbours (0.52 M parameters) and 128-wide
    projectors, 20 epochs of batches of <= 2,000 residues on a CPU, the curriculum scaled to that
    budget (diffusion warm-up over 3 epochs, alignment decay over 13); validation recovery of the
    EMA weights every 5 epochs."""
    cfg = reed()
    targets = cfg.reed.targets
    return replace(
        cfg,
        epochs=20,
        train=replace(
            cfg.train,
            run_dir="runs/protein/small",
            lr_warmup_steps=30,
            ckpt_every=50,
            progress_bar=False,
            tensorboard=False,
        ),
        model=ModelConfig(hidden=64, encoder_layers=3, decoder_layers=3, k_neighbors=16),
        data=replace(cfg.data, max_tokens=2000),
        reed=replace(
            cfg.reed,
            targets={name: replace(t, projector_hidden=128) for name, t in targets.items()},
            curriculum=replace(cfg.reed.curriculum, w_diff=linear_warmup(0, 3), w_align=cosine_decay(0, 13)),
        ),
        eval=EvalConfig(every_epochs=5, splits=("validation",), weights=("ema",)),
    )


PRESETS = {"baseline": baseline, "reed": reed, "reed_esm": reed_esm, "tiny": tiny, "small": small}
