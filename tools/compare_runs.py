"""Compare training runs (or benchmark results) variant by variant: a Markdown table and a plot.

Curves of a metric from training runs (``RUN/metrics.jsonl`` and ``RUN/eval.jsonl``, as
``reed_core.train`` and the domain tasks write them; a ``.jsonl`` file is a run too):

    python tools/compare_runs.py vanilla=out/runs/vanilla repa=out/runs/repa reed=out/runs/reed \\
        --metric ema/fd --lower-is-better --log-y --plot image_fd.png
    python tools/compare_runs.py baseline='runs/base-seed*' reed='runs/reed-seed*' \\
        --metric eval/raw/test/recovery --x epoch --reach best --spread std
    python tools/compare_runs.py "1 GPU=runs/single" "2 GPUs DDP=runs/ddp2" --metric loss_gen \\
        --lower-is-better --smooth 8 --gap --log-y --plot core_ddp.png

Each variant is ``NAME=RUN_GLOB``; the runs the glob matches are its seeds. Per variant the table
gives the final value, the best value and where it was reached, and the steps (or epochs) to reach
the baseline's final value (``--reach best``: its best), at the first crossing of the variant's
mean curve, interpolated linearly between the two evaluations around it; the speed-up divides the
baseline's own steps to that crossing by the variant's. ``--also KEY ...`` adds the final values of
more keys, ``--gap`` the relative gap of each mean curve to the baseline's (after ``--smooth N``
records), and the median logged ``steps_per_s`` is shown where the runs logged it. Several seeds give the
mean and, in brackets, their spread: ``--spread range`` (min-max, the default) or ``--spread std``
(the sample standard deviation); the plot draws the mean curve and the spread as a band. Seeds of
a variant are compared at the x values they all reached (``--common-x``: all variants too).

Benchmark results (``--bench``): every JSON file a glob matches is searched for dicts holding the
metric (default ``images_per_s``, as ``tools/bench_image.py --json`` writes it); each is one run.
``FILE#REGEX`` keeps only the runs whose key path in the file matches ``REGEX``:

    python tools/compare_runs.py --bench v1='runs/speed/v1*.json' pr='runs/speed/pr*.json' \\
        --ref "target=600" --plot speed.png
"""

from __future__ import annotations

import argparse
import glob
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass, field
from pathlib import Path

RUN_FILES = ("metrics.jsonl", "eval.jsonl")
EPOCH_KEYS = ("epoch", "eval/epoch")


def fail(message: str) -> None:
    raise SystemExit(f"compare_runs: {message}")


# ----------------------------------------------------------------------------------------- reading


def read_jsonl(path: Path) -> list[dict]:
    """The records of a JSON-lines file; a line that does not parse (a run stopped mid-write) is
    skipped with a warning."""
    if not path.is_file():
        fail(f"no such file: {path}")
    records = []
    for i, line in enumerate(path.read_text().splitlines(), 1):
        if not line.strip():
            continue
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            print(f"compare_runs: {path}:{i}: not JSON, skipped", file=sys.stderr)
    return records


def run_files(run: Path) -> list[Path]:
    if run.is_file():
        return [run]
    if not run.is_dir():
        fail(f"no such file or folder: {run}")
    files = [run / name for name in RUN_FILES if (run / name).is_file()]
    if not files:
        fail(f"{run} holds no run: neither {run / RUN_FILES[0]} nor {run / RUN_FILES[1]} exists")
    return files


def expand(name: str, pattern: str) -> list[Path]:
    paths = sorted(Path(p) for p in glob.glob(pattern))
    if not paths:
        if glob.has_magic(pattern):
            fail(f"variant {name!r}: nothing matches {pattern}")
        fail(f"variant {name!r}: no such file or folder: {pattern}")
    return paths


def parse_variant(spec: str) -> tuple[str, str]:
    name, sep, pattern = spec.partition("=")
    if not sep:  # a plain path: named after it
        return Path(spec.rstrip("/")).stem or spec, spec
    if not name or not pattern:
        fail(f"a variant is NAME=RUN_GLOB, got {spec!r}")
    return name, pattern


def x_of(record: dict, x: str, steps_per_epoch: float | None) -> float | None:
    if x == "step":
        return record.get("step")
    for key in EPOCH_KEYS if x == "epoch" else (x,):
        if key in record:
            return record[key]
    if x == "epoch" and steps_per_epoch and "step" in record:
        return record["step"] / steps_per_epoch
    return None


def read_curve(run: Path, metric: str, x: str) -> dict[float, float]:
    """``x -> value`` of ``metric`` in one run (the last record at an x wins)."""
    files = run_files(run)
    records = [r for f in files for r in read_jsonl(f)]
    steps_per_epoch = next(
        (r["step"] / r["epoch"] for r in records if r.get("epoch") and r.get("step")), None
    )
    curve = {}
    for r in records:
        if metric in r and r[metric] is not None:
            xv = x_of(r, x, steps_per_epoch)
            if xv is not None:
                curve[round(float(xv), 9)] = float(r[metric])
    if not curve:
        keys = sorted({k for r in records for k in r})
        fail(
            f"{', '.join(map(str, files))}: no records with {metric!r} and an x ({x!r}); "
            f"keys there: {', '.join(keys[:40])}{' ...' if len(keys) > 40 else ''}"
        )
    return dict(sorted(curve.items()))


def final_of(run: Path, key: str, x: str, at: float) -> float | None:
    """``key`` at ``x == at`` in ``run``, or None where it was not logged there."""
    records = [r for f in run_files(run) for r in read_jsonl(f)]
    steps_per_epoch = next(
        (r["step"] / r["epoch"] for r in records if r.get("epoch") and r.get("step")), None
    )
    hits = [
        r[key]
        for r in records
        if r.get(key) is not None
        and x_of(r, x, steps_per_epoch) is not None
        and round(float(x_of(r, x, steps_per_epoch)), 9) == at
    ]
    return float(hits[-1]) if hits else None


def median_rate(run: Path) -> float | None:
    rates = [r["steps_per_s"] for f in run_files(run) for r in read_jsonl(f) if "steps_per_s" in r]
    return statistics.median(rates) if rates else None


# ------------------------------------------------------------------------------------- statistics


def spread(values: list[float], kind: str) -> tuple[float, float, float]:
    """(mean, low, high): the band is min-max (``range``) or mean -+ the sample std (``std``)."""
    mean = statistics.fmean(values)
    if kind == "std":
        sd = statistics.stdev(values) if len(values) > 1 else 0.0
        return mean, mean - sd, mean + sd
    return mean, min(values), max(values)


def steps_to_reach(xs: list[float], ys: list[float], target: float, lower_is_better: bool):
    """(x interpolated, first evaluated x) where the curve first reaches ``target``, or (None, None):
    linear interpolation between the last evaluation short of it and the first one at or past it."""
    for i, (xv, yv) in enumerate(zip(xs, ys)):
        if (yv <= target) if lower_is_better else (yv >= target):
            if i == 0 or ys[i - 1] == yv:
                return float(xv), xv
            x0, y0 = xs[i - 1], ys[i - 1]
            return x0 + (xv - x0) * (y0 - target) / (y0 - yv), xv
    return None, None


def smooth(ys: list[float], window: int) -> list[float]:
    """Moving average over ``window`` records (valid part only)."""
    if window <= 1 or len(ys) < window:
        return list(ys)
    return [statistics.fmean(ys[i : i + window]) for i in range(len(ys) - window + 1)]


@dataclass
class Variant:
    name: str
    runs: list[Path]
    curves: list[dict[float, float]]
    xs: list[float] = field(default_factory=list)  # the x values every run reached
    stats: list[tuple[float, float, float]] = field(default_factory=list)  # (mean, low, high) per x
    rates: list[float] = field(default_factory=list)

    def align(self, keep: set[float] | None = None) -> None:
        common = set.intersection(*(set(c) for c in self.curves))
        if keep is not None:
            common &= keep
        if not common:
            fail(f"variant {self.name!r}: its runs share no x value ({', '.join(map(str, self.runs))})")
        self.xs = sorted(common)

    def compute(self, kind: str) -> None:
        self.stats = [spread([c[x] for c in self.curves], kind) for x in self.xs]

    @property
    def means(self) -> list[float]:
        return [s[0] for s in self.stats]


# ----------------------------------------------------------------------------------------- output


def fmt(v: float | None, digits: int = 4) -> str:
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return "n/a"
    return f"{v:.{digits}g}" if abs(v) < 10**digits else f"{v:.0f}"


def fmt_stat(values: list[float], kind: str, digits: int = 4) -> str:
    mean, low, high = spread(values, kind)
    if len(values) == 1:
        return fmt(mean, digits)
    if kind == "std":
        return f"{fmt(mean, digits)} ± {fmt(high - mean, 2)}"
    return f"{fmt(mean, digits)} ({fmt(low, digits)}-{fmt(high, digits)})"


def fmt_x(x: float | None) -> str:
    if x is None:
        return "not reached"
    return f"{x:.0f}" if abs(x) >= 100 or float(x).is_integer() else f"{x:.1f}"


def compare(args: argparse.Namespace) -> dict:
    variants = []
    for spec in args.variants:
        name, pattern = parse_variant(spec)
        runs = expand(name, pattern)
        v = Variant(name, runs, [read_curve(r, args.metric, args.x) for r in runs])
        v.rates = [r for r in (median_rate(run) for run in runs) if r is not None]
        variants.append(v)
    names = [v.name for v in variants]
    if len(set(names)) != len(names):
        fail(f"variant names repeat: {names}")
    baseline = args.baseline or names[0]
    if baseline not in names:
        fail(f"--baseline {baseline!r} is not a variant ({', '.join(names)})")
    keep = None
    if args.common_x:
        keep = set.intersection(*(set(c) for v in variants for c in v.curves))
    for v in variants:
        v.align(keep)
        v.compute(args.spread)
    base = variants[names.index(baseline)]
    better = min if args.lower_is_better else max
    target_kind = "final" if args.reach == "final" else "best"
    target = base.means[-1] if args.reach == "final" else better(base.means)
    unit = "steps" if args.x == "step" else ("epochs" if args.x == "epoch" else args.x)
    summary: dict = {
        "metric": args.metric,
        "x": args.x,
        "lower_is_better": args.lower_is_better,
        "spread": "min-max over runs" if args.spread == "range" else "sample std over runs",
        "baseline": baseline,
        f"baseline_{target_kind}": target,
        "variants": {},
    }
    base_x, _ = steps_to_reach(base.xs, base.means, target, args.lower_is_better)
    for v in variants:
        i_best = v.means.index(better(v.means))
        reach, first = steps_to_reach(v.xs, v.means, target, args.lower_is_better)
        per_run = [
            steps_to_reach(v.xs, [c[x] for x in v.xs], target, args.lower_is_better)[0] for c in v.curves
        ]
        s = {
            "runs": [str(r) for r in v.runs],
            "final_x": v.xs[-1],
            "final": [c[v.xs[-1]] for c in v.curves],
            "best": v.means[i_best],
            "best_x": v.xs[i_best],
            "reach_x": reach,
            "reach_first_evaluated_x": first,
            "reach_x_per_run": per_run,
            "speedup": (base_x / reach) if (reach and base_x) else None,
            "also": {k: [final_of(r, k, args.x, v.xs[-1]) for r in v.runs] for k in args.also},
            "median_steps_per_s": v.rates,
            "curve": [{"x": x, "mean": m, "low": lo, "high": hi} for x, (m, lo, hi) in zip(v.xs, v.stats)],
        }
        if args.gap and v is not base:
            common = sorted(set(v.xs) & set(base.xs))
            a = smooth([base.stats[base.xs.index(x)][0] for x in common], args.smooth)
            b = smooth([v.stats[v.xs.index(x)][0] for x in common], args.smooth)
            rel = [abs(q - p) / abs(p) for p, q in zip(a, b) if p]
            s["gap_rel_max"], s["gap_rel_mean"] = (max(rel), statistics.fmean(rel)) if rel else (None, None)
        summary["variants"][v.name] = s
    summary["table"] = table(summary, variants, args, unit, target_kind)
    if args.plot:
        plot(variants, summary, args, unit)
    return summary


def table(summary: dict, variants: list[Variant], args: argparse.Namespace, unit: str, kind: str) -> str:
    m, base = args.metric, summary["baseline"]
    target = summary[f"baseline_{kind}"]
    head = [
        "variant",
        "runs",
        f"final {m}",
        f"best {m} (at {args.x})",
        f"{unit} to reach {base}'s {kind} {fmt(target)} (first evaluation at or past it)",
        "speed-up",
    ]
    head += [f"final {k}" for k in args.also]
    if args.gap:
        smoothed = f", smoothed over {args.smooth}" if args.smooth > 1 else ""
        head.append(f"gap to {base} (relative, max / mean{smoothed})")
    if any(v.rates for v in variants):
        head.append("train steps/s (median)")
    rows = [head, ["---"] * len(head)]
    for v in variants:
        s = summary["variants"][v.name]
        reach = fmt_x(s["reach_x"])
        if s["reach_x"] is not None:
            reach += f" ({fmt_x(s['reach_first_evaluated_x'])})"
            reached = [r for r in s["reach_x_per_run"] if r is not None]
            if len(v.runs) > 1:
                reach += f"; runs: {fmt_stat(reached, args.spread)}" if reached else ""
                reach += f" ({len(reached)} of {len(v.runs)} reached)" if len(reached) < len(v.runs) else ""
        row = [
            v.name,
            str(len(v.runs)),
            f"{fmt_stat(s['final'], args.spread)} ({args.x} {fmt_x(s['final_x'])})",
            f"{fmt(s['best'])} ({fmt_x(s['best_x'])})",
            reach,
            f"{s['speedup']:.2f}x" if s["speedup"] else "n/a",
        ]
        for k in args.also:
            vals = [x for x in s["also"][k] if x is not None]
            row.append(fmt_stat(vals, args.spread) if vals else "n/a")
        if args.gap:
            row.append(
                "-" if v.name == base else f"{100 * s['gap_rel_max']:.2f}% / {100 * s['gap_rel_mean']:.2f}%"
            )
        if any(w.rates for w in variants):
            row.append(fmt_stat(v.rates, args.spread, 3) if v.rates else "n/a")
        rows.append(row)
    lines = ["| " + " | ".join(r) + " |" for r in rows]
    note = (
        f"{m}: {'lower' if args.lower_is_better else 'higher'} is better; several runs: mean "
        f"({'min-max' if args.spread == 'range' else '± sample std'}); best and reach on the mean curve; "
        f"speed-up: the baseline's own {unit} to its first crossing of that value over the variant's."
    )
    return "\n".join(lines) + "\n\n" + note + "\n"


def refs(args: argparse.Namespace) -> list[tuple[str, float]]:
    out = []
    for spec in args.ref:
        label, sep, value = spec.rpartition("=")
        try:
            out.append((label or value, float(value)))
        except ValueError:
            fail(f"--ref is LABEL=VALUE, got {spec!r}")
    return out


def plot(variants: list[Variant], summary: dict, args: argparse.Namespace, unit: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    keys = [args.metric] + [k for k in args.plot_also if k != args.metric]
    fig, axes = plt.subplots(1, len(keys), figsize=(6.4 * len(keys), 4.2), dpi=120, squeeze=False)
    for ax, key in zip(axes[0], keys):
        for i, v in enumerate(variants):
            colour = plt.get_cmap("tab10")(i % 10)
            if key == args.metric:
                xs, stats = v.xs, v.stats
            else:
                curves = [read_curve(r, key, args.x) for r in v.runs]
                xs = sorted(set.intersection(*(set(c) for c in curves)))
                if args.common_x:
                    xs = [x for x in xs if x in set(v.xs)]
                stats = [spread([c[x] for c in curves], args.spread) for x in xs]
            ax.plot(
                xs, [s[0] for s in stats], marker="o", ms=3, color=colour, label=f"{v.name} ({len(v.runs)})"
            )
            if len(v.runs) > 1:
                ax.fill_between(xs, [s[1] for s in stats], [s[2] for s in stats], color=colour, alpha=0.2)
        if key == args.metric:
            kind = "final" if args.reach == "final" else "best"
            ax.axhline(
                summary[f"baseline_{kind}"],
                color="grey",
                lw=0.8,
                ls="--",
                label=f"{summary['baseline']} {kind}",
            )
        for label, value in refs(args):
            ax.axhline(value, color="tab:red", lw=1, ls=":", label=label)
        ax.set_xlabel(args.xlabel or args.x)
        ax.set_ylabel(key)
        if args.log_y and key == args.metric:
            ax.set_yscale("log")
        ax.grid(alpha=0.3)
    axes[0][0].legend(fontsize=8)
    band = "min-max" if args.spread == "range" else "mean ± std"
    fig.suptitle(
        args.title or f"{args.metric} by {args.x} (runs per variant in brackets; band: {band})", fontsize=10
    )
    fig.tight_layout()
    Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.plot)


# ------------------------------------------------------------------------------------------ bench


def bench_runs(value, metric: str, path: str = "") -> list[tuple[str, dict]]:
    """Every dict under ``value`` that holds ``metric``, with its key path."""
    if isinstance(value, dict):
        if metric in value and isinstance(value[metric], (int, float)):
            return [(path, value)]
        return [r for k, v in value.items() for r in bench_runs(v, metric, f"{path}/{k}" if path else str(k))]
    if isinstance(value, list):
        return [r for i, v in enumerate(value) for r in bench_runs(v, metric, f"{path}[{i}]")]
    return []


def compare_bench(args: argparse.Namespace) -> dict:
    metric = args.metric
    variants: dict[str, list[tuple[str, dict]]] = {}
    for spec in args.variants:
        name, pattern = parse_variant(spec)
        pattern, _, regex = pattern.partition("#")
        found = []
        for path in expand(name, pattern):
            if not path.is_file():
                fail(f"variant {name!r}: {path} is not a file (--bench reads JSON files)")
            try:
                data = json.loads(path.read_text())
            except json.JSONDecodeError as e:
                fail(f"{path}: not JSON ({e})")
            runs = bench_runs(data, metric)
            found += [
                (f"{path}:{k}" if k else str(path), r) for k, r in runs if not regex or re.search(regex, k)
            ]
        if not found:
            matching = f" matching {regex!r}" if regex else ""
            fail(f"variant {name!r}: no result with {metric!r} in {pattern}{matching}")
        variants[name] = found
    baseline = args.baseline or next(iter(variants))
    if baseline not in variants:
        fail(f"--baseline {baseline!r} is not a variant ({', '.join(variants)})")
    base_mean = statistics.fmean(r[metric] for _, r in variants[baseline])
    summary: dict = {"metric": metric, "baseline": baseline, "variants": {}}
    head = ["variant", "runs", f"{metric}", "step (ms)", f"vs {baseline}", "device"]
    rows = [head, ["---"] * len(head)]
    for name, runs in variants.items():
        values = [r[metric] for _, r in runs]
        steps = [r["step_ms"] for _, r in runs if isinstance(r.get("step_ms"), (int, float))]
        devices = sorted({str(r["device"]) for _, r in runs if r.get("device")})
        mean = statistics.fmean(values)
        summary["variants"][name] = {
            "runs": [k for k, _ in runs],
            "values": values,
            "mean": mean,
            "step_ms": steps,
            "devices": devices,
        }
        rows.append(
            [
                name,
                str(len(values)),
                fmt_stat(values, args.spread),
                fmt_stat(steps, args.spread) if steps else "n/a",
                f"{mean / base_mean:.3f}x",
                ", ".join(devices) or "n/a",
            ]
        )
    note = f"several runs: mean ({'min-max' if args.spread == 'range' else '± sample std'})"
    summary["table"] = "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n\n" + note + "\n"
    if args.plot:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(1.6 + 1.4 * len(variants), 4.4), dpi=120)
        names = list(variants)
        for i, name in enumerate(names):
            mean, low, high = spread(summary["variants"][name]["values"], args.spread)
            ax.bar([i], [mean], color="tab:blue", alpha=0.8)
            ax.annotate(f"{fmt(mean)}", (i, high), textcoords="offset points", xytext=(0, 4), ha="center")
            if low != high:
                ax.errorbar([i], [mean], yerr=[[mean - low], [high - mean]], color="black", capsize=4)
            vals = summary["variants"][name]["values"]
            ax.scatter([i] * len(vals), vals, color="black", s=8, zorder=3)
        for label, value in refs(args):
            ax.axhline(value, color="tab:red", ls="--", label=label)
        ax.set_xticks(range(len(names)), names)
        ax.set_ylabel(metric)
        if args.ref:
            ax.legend(loc="lower right")
        band = "min-max" if args.spread == "range" else "mean ± std"
        ax.set_title(args.title or f"{metric}: bars the mean, whiskers {band}, dots the runs", fontsize=9)
        fig.tight_layout()
        Path(args.plot).parent.mkdir(parents=True, exist_ok=True)
        fig.savefig(args.plot)
    return summary


# ------------------------------------------------------------------------------------------- main


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("variants", nargs="+", help="NAME=RUN_GLOB (a run: a folder or a .jsonl file)")
    p.add_argument(
        "--metric", default=None, help="the key compared (default: loss; images_per_s with --bench)"
    )
    p.add_argument("--x", default="step", help="step, epoch, or another key of the records (default step)")
    p.add_argument("--lower-is-better", action="store_true", help="for FD, loss and other costs")
    p.add_argument(
        "--baseline", default=None, help="the variant others are measured against (default: first)"
    )
    p.add_argument(
        "--reach", choices=("final", "best"), default="final", help="the baseline's value to reach"
    )
    p.add_argument(
        "--spread", choices=("range", "std"), default="range", help="min-max or sample std over runs"
    )
    p.add_argument(
        "--common-x", action="store_true", help="compare every variant at the x values all reached"
    )
    p.add_argument("--also", nargs="+", default=[], metavar="KEY", help="more keys: their final values")
    p.add_argument("--plot-also", nargs="+", default=[], metavar="KEY", help="more plot panels, one a key")
    p.add_argument("--smooth", type=int, default=1, help="moving-average window (records) for --gap")
    p.add_argument("--gap", action="store_true", help="the relative gap of each mean curve to the baseline's")
    p.add_argument(
        "--bench", action="store_true", help="variants are benchmark JSON files (FILE_GLOB[#REGEX])"
    )
    p.add_argument("--ref", action="append", default=[], metavar="LABEL=VALUE", help="a reference line")
    p.add_argument("--plot", type=Path, default=None, help="write the plot (PNG)")
    p.add_argument("--log-y", action="store_true")
    p.add_argument("--title", default=None)
    p.add_argument("--xlabel", default=None)
    p.add_argument("--md", type=Path, default=None, help="write the table here too")
    p.add_argument("--json", type=Path, default=None, help="write the summary (with the mean curves)")
    args = p.parse_args(argv)
    if args.metric is None:
        args.metric = "images_per_s" if args.bench else "loss"
    if args.smooth < 1:
        p.error("--smooth is at least 1")
    return args


def main(argv: list[str] | None = None) -> dict:
    args = parse_args(argv)
    summary = compare_bench(args) if args.bench else compare(args)
    print(summary["table"], end="")
    if args.md:
        args.md.parent.mkdir(parents=True, exist_ok=True)
        args.md.write_text(summary["table"])
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(summary, indent=1, default=str) + "\n")
    return summary


if __name__ == "__main__":
    main()
