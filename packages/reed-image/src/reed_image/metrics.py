"""Sample-quality metrics on the features of a network that is not an alignment target.

Frechet distance (Heusel et al., 2017) between Gaussians fitted to real and generated features:

    FD = |mu_r - mu_g|^2 + Tr(S_r + S_g - 2 (S_r S_g)^(1/2))

Precision / recall (Kynkaanniemi et al., 2019): a generated sample is "precise" when it falls in
the union of k-NN balls around real features; recall swaps the roles.

IS-style score (Salimans et al., 2016) on the classifier's softmax: ``exp E_x KL(p(y|x) || p(y))``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import scipy.linalg
import torch

from reed_image.models.classifier import Classifier


def feature_stats(features: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    f = np.asarray(features, dtype=np.float64)
    return f.mean(0), np.cov(f, rowvar=False)


def frechet_distance(
    mu1: np.ndarray, sigma1: np.ndarray, mu2: np.ndarray, sigma2: np.ndarray, eps: float = 1e-6
) -> float:
    """Frechet distance between ``N(mu1, sigma1)`` and ``N(mu2, sigma2)``."""
    diff = mu1 - mu2
    covmean = scipy.linalg.sqrtm(sigma1 @ sigma2)
    if not np.isfinite(covmean).all():
        offset = np.eye(sigma1.shape[0]) * eps
        covmean = scipy.linalg.sqrtm((sigma1 + offset) @ (sigma2 + offset))
    covmean = np.real(covmean)
    return float(diff @ diff + np.trace(sigma1) + np.trace(sigma2) - 2 * np.trace(covmean))


def _knn_radii(x: torch.Tensor, k: int, chunk: int = 2048) -> torch.Tensor:
    """Distance of each row of ``x`` to its k-th nearest other row."""
    radii = []
    for i in range(0, len(x), chunk):
        d = torch.cdist(x[i : i + chunk], x)  # (c, N)
        radii.append(d.kthvalue(k + 1, dim=1).values)  # k+1: skip the point itself
    return torch.cat(radii)


def _covered(
    points: torch.Tensor, centres: torch.Tensor, radii: torch.Tensor, chunk: int = 2048
) -> torch.Tensor:
    out = []
    for i in range(0, len(points), chunk):
        d = torch.cdist(points[i : i + chunk], centres)  # (c, M)
        out.append((d <= radii[None]).any(1))
    return torch.cat(out)


def precision_recall(real: np.ndarray, fake: np.ndarray, k: int = 3) -> tuple[float, float]:
    r = torch.as_tensor(np.asarray(real), dtype=torch.float32)
    f = torch.as_tensor(np.asarray(fake), dtype=torch.float32)
    precision = _covered(f, r, _knn_radii(r, k)).float().mean().item()
    recall = _covered(r, f, _knn_radii(f, k)).float().mean().item()
    return precision, recall


def inception_style_score(logits: np.ndarray) -> float:
    """``exp E_x KL(p(y|x) || p(y))`` from classifier logits ``[N, K]`` (one split)."""
    logp = torch.as_tensor(np.asarray(logits), dtype=torch.float64).log_softmax(-1)
    p = logp.exp()
    log_marginal = p.mean(0).log()
    kl = (p * (logp - log_marginal[None])).sum(-1)
    return float(kl.mean().exp())


@dataclass
class EvalResult:
    fd: float
    precision: float
    recall: float
    is_score: float
    num_samples: int

    def as_dict(self) -> dict[str, float]:
        return {
            "fd": self.fd,
            "precision": self.precision,
            "recall": self.recall,
            "is": self.is_score,
            "num_samples": self.num_samples,
        }


def load_classifier(path: str | Path, device: str | torch.device = "cpu") -> Classifier:
    path = Path(path)
    if not path.exists():
        raise FileNotFoundError(
            f"evaluation classifier {path} does not exist; train it once with "
            "`python -m reed_image.eval_classifier --out <path>`"
        )
    try:
        ckpt = torch.load(path, map_location="cpu", weights_only=True)
        model = Classifier.from_checkpoint(ckpt)
    except Exception as err:  # noqa: BLE001 - unreadable or wrong file
        raise ValueError(f"evaluation classifier {path} is unreadable ({type(err).__name__}: {err})") from err
    return model.to(device)


class Evaluator:
    """Real-set statistics of the classifier's features, computed once, and metrics for samples."""

    def __init__(
        self,
        classifier: Classifier,
        real_images: torch.Tensor,
        batch_size: int = 500,
        k: int = 3,
        max_pr: int = 5000,
    ):
        self.classifier = classifier.eval()
        self.batch_size, self.k, self.max_pr = batch_size, k, max_pr
        feats, _ = self.embed(real_images)
        self.mu_r, self.sigma_r = feature_stats(feats)
        self.real_pr = feats[:max_pr]

    @torch.no_grad()
    def embed(self, images: torch.Tensor) -> tuple[np.ndarray, np.ndarray]:
        """Images in [-1, 1] (any device) -> ``(features [N, F], logits [N, K])`` as numpy."""
        device = next(self.classifier.parameters()).device
        feats, logits = [], []
        for i in range(0, len(images), self.batch_size):
            x = images[i : i + self.batch_size].to(device).float()
            f, lg = self.classifier(x)
            feats.append(f.double().cpu())
            logits.append(lg.double().cpu())
        return torch.cat(feats).numpy(), torch.cat(logits).numpy()

    def __call__(self, samples: torch.Tensor) -> EvalResult:
        feats, logits = self.embed(samples)
        mu, sigma = feature_stats(feats)
        fd = frechet_distance(self.mu_r, self.sigma_r, mu, sigma)
        precision, recall = precision_recall(self.real_pr, feats[: self.max_pr], self.k)
        return EvalResult(fd, precision, recall, inception_style_score(logits), len(samples))
