"""Best checkpoint and early stopping on an evaluation metric.

With ``train.best_metric = m`` the trainer keeps ``RUN_DIR/checkpoints/best.pt``: the training state
at the evaluation where ``m`` was best so far (``train.best_mode``: max or min). With
``train.patience = P > 0`` it stops once ``P`` evaluations in a row brought no new best, the usual
guard against overfitting a small training set. ``best.json`` beside it holds the record
(metric, value, step, evaluations since the best, stopped), written atomically, so a resumed run
goes on counting where it stopped and a stopped run stays stopped.
"""

from __future__ import annotations

import json
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path


@dataclass
class BestRecord:
    metric: str
    mode: str  # max | min
    value: float | None = None
    step: int | None = None
    evals_since_best: int = 0
    stopped: bool = False

    def improves(self, value: float) -> bool:
        if self.value is None:
            return True
        return value > self.value if self.mode == "max" else value < self.value


class BestTracker:
    """``update(results, step)`` after each evaluation -> whether it is a new best."""

    def __init__(
        self, folder: str | Path, metric: str, mode: str = "max", patience: int = 0, resume: bool = True
    ):
        self.path = Path(folder) / "best.json"
        self.checkpoint = Path(folder) / "best.pt"
        self.patience = patience
        self.record = BestRecord(metric, mode)
        if resume and self.path.exists():  # train.resume=false starts the run, and its best, over
            try:
                saved = BestRecord(**json.loads(self.path.read_text()))
            except (json.JSONDecodeError, TypeError) as err:
                raise ValueError(f"{self.path}: not a best-checkpoint record ({err}); delete it") from err
            if (saved.metric, saved.mode) != (metric, mode):
                raise ValueError(
                    f"train.best_metric: {self.path} tracks {saved.metric!r} ({saved.mode}), "
                    f"not {metric!r} ({mode}); use a new run folder or delete that file"
                )
            self.record = saved

    @property
    def stopped(self) -> bool:
        return self.record.stopped

    def update(self, results: dict[str, float], step: int) -> bool:
        r = self.record
        if r.metric not in results:
            raise ValueError(
                f"train.best_metric: {r.metric!r} is not among the evaluation's metrics "
                f"({', '.join(sorted(results)) or 'none'})"
            )
        value = float(results[r.metric])
        improved = math.isfinite(value) and r.improves(value)
        if improved:
            r.value, r.step, r.evals_since_best = value, step, 0
        else:
            r.evals_since_best += 1
        r.stopped = self.patience > 0 and r.evals_since_best >= self.patience
        return improved

    def save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp")
        tmp.write_text(json.dumps(asdict(self.record), indent=1))
        os.replace(tmp, self.path)
