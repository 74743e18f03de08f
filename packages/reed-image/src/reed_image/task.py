"""The image domain's side of reed-core's ``Task`` protocol: data, model, loss, evaluation.

Per step (REED, Wang et al. 2025, Sec. 4; SiT/REPA objective):

    tau ~ p(tau),  eps ~ N(0, I),  x_tau = a(tau) x0 + s(tau) eps,  v = a'(tau) x0 + s'(tau) eps
    L_gen[b]   = mean (v_theta(x_tau, tau, y) - v)^2
    L_align_k[b] = 1 - cos(h_k(pool_k(f^(d_k))), z_k)        (tokens: mean over the SiT grid)
    L = w_diff(p) mean_b L_gen + sum_k w_align_k(p) lambda_k mean_b alpha_k(tau_b) L_align_k[b]

Vision tokens are stored on the encoder's grid and resampled to the SiT grid on the device; caption
embeddings are compared with the mean-pooled hidden state. Labels are replaced by the null label
with probability ``class_dropout`` (classifier-free guidance).
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
import torch.nn as nn

from reed_core.objective import ObjectiveOutput
from reed_core.recipe import TargetConfig, assemble
from reed_core.train import EpochSampler, seed_everything
from reed_image.configs import ImageConfig
from reed_image.data import ImageBatch, ImageSet, load_source, to_unit_range
from reed_image.data.latents import load_vae, sample_posterior
from reed_image.evaluator import build_evaluator
from reed_image.generation import generate
from reed_image.image_io import save_grid
from reed_image.interpolants import Interpolant, TimeSampler, velocity_loss
from reed_image.metrics import Evaluator
from reed_image.models import SiT, build_sit, install_cublaslt_plans
from reed_image.samplers import SamplerConfig
from reed_image.targets.build import TargetTable, encode_tokens, ensure_store, target_encoder
from reed_image.targets.vision import VisionEncoder, resample_tokens


def resolve_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    return torch.device(name)


def check_model_fits_data(cfg: ImageConfig, images: ImageSet) -> None:
    C, H, W = images.shape
    if images.kind == "latent":
        C //= 2  # moments hold (mean, std)
    m = cfg.model
    problems = []
    if H != W or H != m.input_size:
        problems.append(f"model.input_size={m.input_size} but the data are {H}x{W}")
    if C != m.in_channels:
        problems.append(f"model.in_channels={m.in_channels} but the data have {C} channels")
    if images.num_classes > m.num_classes:
        problems.append(f"model.num_classes={m.num_classes} < the {images.num_classes} data classes")
    if problems:
        raise ValueError(f"data {images.name!r} do not fit the model: " + "; ".join(problems))


def online_encoder(name: str, tcfg: TargetConfig, kind: str, device: torch.device) -> VisionEncoder:
    """The frozen vision encoder of a ``location=online`` target, on the training device."""
    if kind != "pixel":
        raise ValueError(
            f"reed.targets.{name}.location: online encodes the training images, and these are "
            f"{kind}s; precompute a store from the pixel images the latents came from"
        )
    return target_encoder(tcfg, device)


def build_denoiser(cfg: ImageConfig) -> SiT:
    return build_sit(cfg.model)  # SiT, or FusedSiT with model.kernels


class ImageTask:
    """``model`` (SiT + projectors in a :class:`ReedModel`), ``batch``, ``loss``, ``evaluate``."""

    def __init__(self, cfg: ImageConfig, build_stores: bool = True):
        self.cfg = cfg
        self.device = resolve_device(cfg.train.device)
        d = cfg.data
        self.images, self.latent_scale = load_source(
            d.source, d.path, d.split, d.resolution, d.fit, d.channels, d.download
        )
        self.images = self.images.subset(d.limit, seed=d.limit_seed)
        check_model_fits_data(cfg, self.images)
        if cfg.model.cublaslt_plans:
            install_cublaslt_plans(cfg.model.cublaslt_plans, self.device)
        self.targets = cfg.reed.enabled
        depth = cfg.model.resolved()[0]
        for name, tcfg in self.targets.items():  # fail before any store is built
            if not 1 <= tcfg.depth <= depth:
                raise ValueError(
                    f"reed.targets.{name}.depth: {tcfg.depth} is outside the model's blocks "
                    f"1..{depth} ({cfg.model.arch})"
                )
        self.tables: dict[str, TargetTable] = {}
        self.encoders: dict[str, VisionEncoder] = {}  # location=online: run on each batch
        for name, tcfg in self.targets.items():
            if tcfg.location == "online":
                self.encoders[name] = online_encoder(name, tcfg, self.images.kind, self.device)
                continue
            if not build_stores and not tcfg.store:
                raise ValueError(f"reed.targets.{name}.store: not set and building is off")
            store = ensure_store(name, tcfg, self.images, cfg.train.run_dir, self.device)
            self.tables[name] = TargetTable(store, self.images.ids, tcfg.location, self.device)
        self._x = self.images.images.to(self.device) if d.on_device else self.images.images
        self._y = self.images.labels.to(self.device) if d.on_device else self.images.labels

        seed_everything(cfg.train.seed)  # the initialisation depends on the run seed only
        self.denoiser = build_denoiser(cfg)
        dims = {name: table.dim for name, table in self.tables.items()}
        dims |= {name: encoder.dim for name, encoder in self.encoders.items()}
        recipe = assemble(self.denoiser, cfg.reed, target_dims=dims)
        self.model, self.curriculum, self.objective = recipe.model, recipe.curriculum, recipe.objective
        self.interpolant = Interpolant(cfg.objective.interpolant)
        self.time_sampler = TimeSampler(
            cfg.objective.time_sampling, cfg.objective.P_mean, cfg.objective.P_std
        )
        self.sampler = EpochSampler(len(self.images), cfg.train.batch_size, cfg.train.seed)
        self.steps_per_epoch = self.sampler.steps_per_epoch
        self._evaluator = None
        self._vae = None

    # -- data ------------------------------------------------------------------------------------
    def _to_device(self, t: torch.Tensor, device: torch.device) -> torch.Tensor:
        if device.type == "cuda" and t.device.type == "cpu":
            t = t.pin_memory()
        return t.to(device, non_blocking=True)

    def batch(self, step: int, rank: int, world: int, device: torch.device) -> ImageBatch:
        index = torch.from_numpy(self.sampler.indices(step, rank, world))
        idx = self._to_device(index, self._x.device) if self._x.device != index.device else index
        x, y = self._x[idx], self._y[idx]
        x, y = self._to_device(x, device), self._to_device(y, device)
        if self.images.kind == "latent":
            x = sample_posterior(x, self.latent_scale)  # (B, C, h, w)
        else:
            x = to_unit_range(x)  # (B, C, H, W) in [-1, 1]
        z = {name: table.gather(index) for name, table in self.tables.items()}
        z |= {name: encode_tokens(encoder, x) for name, encoder in self.encoders.items()}
        return ImageBatch(x=x, y=y, index=index, z=z)

    def z_targets(self, batch: ImageBatch) -> dict[str, torch.Tensor]:
        """Stored targets -> the shapes the aligner compares: tokens on the SiT grid, or ``[B, D]``."""
        out = {}
        for name, tcfg in self.targets.items():
            z = batch.z[name]  # (B, L, D)
            if tcfg.pooling == "token":
                z = resample_tokens(z.float(), self.denoiser.grid)  # (B, N, D)
            else:
                if z.shape[1] != 1:
                    raise ValueError(
                        f"targets[{name!r}]: pooling {tcfg.pooling!r} needs one vector per image, "
                        f"the store holds {z.shape[1]} rows"
                    )
                z = z[:, 0].float()  # (B, D)
            out[name] = z
        return out

    # -- objective -------------------------------------------------------------------------------
    def graph_key(self, step: int) -> tuple:
        """None of ``loss``'s host values depend on ``step``: given the step as a tensor (under
        ``train.speed.cuda_graph``), the curriculum is evaluated on the device."""
        return ()

    def loss(self, model: nn.Module, batch: ImageBatch, step: int) -> ObjectiveOutput:
        x0, y = batch.x, batch.y
        B = x0.shape[0]
        tau = self.time_sampler(B, x0.device)  # (B,)
        eps = torch.randn_like(x0)
        x_tau, v = self.interpolant.interpolate(x0, eps, tau)
        p = self.cfg.objective.class_dropout
        if p > 0:
            drop = torch.rand(B, device=x0.device) < p
            y = torch.where(drop, torch.full_like(y, self.denoiser.null_label), y)
        z_targets = self.z_targets(batch) if self.targets else None
        v_pred, align = model(x_tau, tau, y, tau=tau, z_targets=z_targets)
        gen_loss = velocity_loss(v_pred, v)  # (B,)
        progress = self.curriculum.progress(step, self.steps_per_epoch)
        return self.objective(gen_loss, align, progress)

    # -- sampling and evaluation -----------------------------------------------------------------
    @torch.no_grad()
    def generate(
        self, denoiser: nn.Module, n: int, sampler: SamplerConfig, batch_size: int | None = None
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """``n`` samples (classes in turn) in pixel space [-1, 1], and their labels."""
        vae = None
        if self.images.kind == "latent":
            if self._vae is None:
                if self.cfg.vae is None:
                    raise ValueError("vae: latent data need a VAE (hub name or folder) to decode samples")
                self._vae = load_vae(self.cfg.vae, self.device)
            vae = self._vae
        return generate(
            denoiser,
            self.cfg,
            n,
            sampler,
            self.interpolant,
            self.images.num_classes,
            batch_size or self.cfg.eval.batch_size,
            self.latent_scale,
            vae,
        )

    def evaluator(self) -> Evaluator:
        if self._evaluator is None:
            self._evaluator = build_evaluator(self.cfg, self.device)
        return self._evaluator

    def evaluate(self, model: nn.Module, ema: nn.Module, step: int, run_dir: Path) -> dict[str, float]:
        e = self.cfg.eval
        chosen = {"ema": [("ema", ema)], "raw": [("raw", model)], "both": [("ema", ema), ("raw", model)]}[
            e.weights
        ]
        if e.weights == "both" and e.ema_every and step % e.ema_every:
            chosen = [("raw", model)]
        results: dict[str, float] = {}
        n = e.num_samples if e.metrics else min(e.num_samples, e.grid_size)
        for tag, m in chosen:
            x, _ = self.generate(m.denoiser, n, e.sampler)
            save_grid(
                x[: e.grid_size],
                Path(run_dir) / "samples" / f"{tag}_step{step:07d}.png",
                nrow=self.images.num_classes if e.grid_size % self.images.num_classes == 0 else None,
                scale=2,
            )
            if e.metrics:
                for k, v in self.evaluator()(x).as_dict().items():
                    results[f"{tag}/{k}"] = v
        if results:
            with open(Path(run_dir) / "eval.jsonl", "a") as fh:
                fh.write(json.dumps({"step": step, **results}) + "\n")
        return results
