"""The ops a few profiled steps spend their time in, per step: the table every ``profile_step``
script prints (``experiments/*/profile_step.py``)."""

from __future__ import annotations

import torch


def top_ops(prof: torch.profiler.profile, steps: int, cuda: bool, k: int = 20) -> list[dict]:
    """The ``k`` ops of largest self time per step, on the device when ``cuda`` (else the CPU),
    from a profiler that ran ``steps`` steps. Each row: ``name``, ``calls_per_step``,
    ``self_device_ms_per_step``, ``self_cpu_ms_per_step``; ops with no such time are left out."""
    rows = []
    for evt in prof.key_averages():
        self_device = getattr(evt, "self_device_time_total", None)
        if self_device is None:  # torch < 2.4
            self_device = getattr(evt, "self_cuda_time_total", 0.0)
        rows.append(
            {
                "name": evt.key,
                "calls_per_step": evt.count / steps,
                "self_device_ms_per_step": self_device / 1000.0 / steps,
                "self_cpu_ms_per_step": evt.self_cpu_time_total / 1000.0 / steps,
            }
        )
    key = "self_device_ms_per_step" if cuda else "self_cpu_ms_per_step"
    rows = [r for r in rows if r[key] > 0]
    return sorted(rows, key=lambda r: -r[key])[:k]


def format_ops(rows: list[dict], cuda: bool, indent: str = "  ") -> str:
    """``top_ops`` rows as lines: milliseconds per step, calls per step, op name."""
    key = "self_device_ms_per_step" if cuda else "self_cpu_ms_per_step"
    return "\n".join(f"{indent}{r[key]:9.3f} ms  x{r['calls_per_step']:<6.0f} {r['name'][:90]}" for r in rows)
