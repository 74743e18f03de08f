"""cuBLASLt plans picked by their kernel time inside training steps, and kept in a file.

Every cuBLASLt GEMM of ``models/cublaslt.py`` has a plan per (shape, epilogue, dtype, pointer
alignment), autotuned on its first call by timing the heuristic's candidates on their own, one
GEMM shape back to back. That pick is noisy and not the step's: on an H100 (SiT-XL/2, batch 64)
the candidates of one shape are often within 1-3% of each other, which candidate wins differs
from process to process, and the per-block GEMM time summed to 2330-2381 us in different
processes against 2283 us for the best of each shape (28 blocks: 1.3-2.7 ms a step at stake).

``tune_in_steps(run_step, rounds)`` picks again, in the training step itself: for every plan made
so far, the same candidates as the autotuner's (``cublaslt.AUTOTUNE_CANDIDATES`` of each heuristic
query, with the workspace and with none) take turns over ``rounds`` x (most candidates) eager
steps: in step ``s`` a plan with ``C`` candidates runs candidate ``(s + offset) mod C`` (a
random offset per plan, so that two plans' candidates do not always meet), and every launch is
timed with CUDA events. Before each timed launch a sleep kernel (``FEED_US``) keeps the GPU busy
while the host enqueues the events and the launch: without it an eager step's host time (it is
slower than the GPU) landed between the events (SiT-XL/2 on an H100: per-launch times 5-10%
high, and picks that did not make the step faster). Each plan keeps the candidate with the least
median time per launch, plus ``cublaslt.MEMSET_PENALTY_US`` where a workspace memset precedes it
(inside a CUDA graph that memset leaves GPU idle time the events do not see, as in graph
autotuning). The GEMMs so see the step's data in L2 and its neighbours; the steps are real
training steps (they update the model).

``save_plans(path)`` writes every plan of the current device as JSON (atomically), with the GPU's
name and cuBLASLt's version; ``load_plans(path)`` installs them before the first call, so that a
process skips autotuning and runs the tuned algorithms. Each algorithm is checked by
``cublasLtMatmulAlgoCheck`` for its shape; a file from another GPU or cuBLASLt version, or with an
algorithm cuBLASLt does not accept, ends in a ``ValueError`` naming the file and the entry.
"""

from __future__ import annotations

import contextlib
import json
import os
import random
import statistics
import tempfile
from pathlib import Path

import torch

from reed_image.models import cublaslt

__all__ = ["PLAN_FORMAT", "load_plans", "save_plans", "tune_in_steps"]

PLAN_FORMAT = "reed-cublaslt-plans/1"
# GPU time (us) slept before each timed launch while tuning, so that the host is ahead of the GPU
FEED_US = 40.0
_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}
_SPEC_FIELDS = ("epilogue", "trans_a", "trans_b", "m", "n", "k")


def _dtype_name(dtype: torch.dtype | None) -> str | None:
    return None if dtype is None else str(dtype).removeprefix("torch.")


def _describe(spec: cublaslt._Spec, align: int) -> str:
    return (
        f"epilogue {spec.epilogue} m={spec.m} n={spec.n} k={spec.k} trans=({spec.trans_a},{spec.trans_b}) "
        f"{_dtype_name(spec.dtype)} align {align}"
    )


def _device_index(device: int | torch.device | None) -> int:
    if device is None:
        return torch.cuda.current_device()
    return torch.device("cuda", device).index if isinstance(device, int) else torch.device(device).index or 0


def _same_algo(plan: cublaslt._Plan, algo: list[int], workspace_limit: int) -> bool:
    return list(plan.algo) == list(algo) and plan.workspace_limit == workspace_limit


# ---------------------------------------------------------------- files


def save_plans(
    path: str | os.PathLike, device: int | torch.device | None = None, notes: dict | None = None
) -> int:
    """Write every plan of ``device`` (default: the current one) to ``path`` (JSON, atomically);
    returns how many. ``notes`` (e.g. how the plans were chosen) is stored beside them."""
    index = _device_index(device)
    entries = []
    for (plan_device, spec, align), plan in sorted(cublaslt._plans.items(), key=lambda kv: repr(kv[0])):
        if plan_device != index:
            continue
        entry = {name: getattr(spec, name) for name in _SPEC_FIELDS}
        entry.update(
            dtype=_dtype_name(spec.dtype),
            bias_dtype=_dtype_name(spec.bias_dtype),
            aux=spec.aux,
            align=align,
            algo=[int(word) for word in plan.algo],
            workspace_size=plan.workspace_size,
            workspace_limit=plan.workspace_limit,
        )
        entries.append(entry)
    document = {
        "format": PLAN_FORMAT,
        "device": torch.cuda.get_device_name(index),
        "cublaslt_version": cublaslt.library_version(),
        "notes": notes or {},
        "plans": entries,
    }
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=path.name + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as fh:
            json.dump(document, fh, indent=1)
            fh.write("\n")
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    return len(entries)


def read_plan_file(path: str | os.PathLike) -> dict:
    """The parsed and checked contents of a plan file (no device needed); ``ValueError`` naming
    the file and the field otherwise."""
    path = Path(path)
    try:
        document = json.loads(path.read_text())
    except FileNotFoundError:
        raise FileNotFoundError(f"cuBLASLt plan file {path}: no such file") from None
    except json.JSONDecodeError as err:
        raise ValueError(f"cuBLASLt plan file {path}: not JSON ({err})") from None
    if not isinstance(document, dict) or document.get("format") != PLAN_FORMAT:
        found = document.get("format") if isinstance(document, dict) else type(document).__name__
        raise ValueError(f"cuBLASLt plan file {path}: format must be {PLAN_FORMAT!r}, got {found!r}")
    for name, kind in (("device", str), ("cublaslt_version", int), ("plans", list)):
        if not isinstance(document.get(name), kind):
            raise ValueError(f"cuBLASLt plan file {path}: field {name!r} missing or not a {kind.__name__}")
    for i, entry in enumerate(document["plans"]):
        where = f"cuBLASLt plan file {path}: plans[{i}]"
        if not isinstance(entry, dict):
            raise ValueError(f"{where}: not an object")
        for name in (*_SPEC_FIELDS, "align", "workspace_size", "workspace_limit"):
            if not isinstance(entry.get(name), int) or entry[name] < 0:
                raise ValueError(f"{where}: field {name!r} missing or not a non-negative integer")
        if entry.get("dtype") not in _DTYPES or entry.get("bias_dtype", None) not in (None, *_DTYPES):
            raise ValueError(
                f"{where}: dtype/bias_dtype must be one of {sorted(_DTYPES)} (bias_dtype may be null)"
            )
        if not isinstance(entry.get("aux"), bool):
            raise ValueError(f"{where}: field 'aux' missing or not a boolean")
        algo = entry.get("algo")
        if not (
            isinstance(algo, list) and len(algo) == 8 and all(isinstance(w, int) and w >= 0 for w in algo)
        ):
            raise ValueError(f"{where}: field 'algo' must be a list of 8 non-negative integers")
    return document


def load_plans(path: str | os.PathLike, device: int | torch.device | None = None) -> int:
    """Install the plans of ``path`` for ``device`` (default: the current one); returns how many.
    Plans already made for the same shapes are replaced; shapes not in the file autotune as usual."""
    document = read_plan_file(path)
    index = _device_index(device)
    name, version = torch.cuda.get_device_name(index), cublaslt.library_version()
    if document["device"] != name or document["cublaslt_version"] != version:
        raise ValueError(
            f"cuBLASLt plan file {path}: tuned on {document['device']!r} with cuBLASLt "
            f"{document['cublaslt_version']}, this is {name!r} with cuBLASLt {version}; tune again "
            "(tools/bench_image.py --tune-cublaslt-plans, --save-cublaslt-plans)"
        )
    installed = {}
    for i, entry in enumerate(document["plans"]):
        bias_dtype = entry.get("bias_dtype")
        spec = cublaslt._Spec(
            *(entry[field] for field in _SPEC_FIELDS),
            _DTYPES[entry["dtype"]],
            _DTYPES[bias_dtype] if bias_dtype is not None else None,
            entry["aux"],
        )
        align = entry["align"]
        try:
            with torch.cuda.device(index):
                plan = cublaslt._checked_plan(index, spec, align, entry["algo"], entry["workspace_limit"])
        except RuntimeError as err:
            raise ValueError(
                f"cuBLASLt plan file {path}: plans[{i}] ({_describe(spec, align)}): cuBLASLt does not "
                f"accept its algorithm ({err}); tune again"
            ) from None
        installed[(index, spec, align)] = plan
    with cublaslt._plans_lock:
        cublaslt._plans.update(installed)
    return len(installed)


# ---------------------------------------------------------------- tuning in the step


def _clock_hz(index: int) -> float:
    """The SM clock (Hz) that ``torch.cuda._sleep``'s cycles count; 2 GHz where it is unknown."""
    rate_khz = getattr(torch.cuda.get_device_properties(index), "clock_rate", 0)
    return 1e3 * rate_khz if rate_khz else 2e9


def _candidate_pool(index: int, spec: cublaslt._Spec, align: int) -> list[cublaslt._Plan]:
    """The autotuner's candidates (graph method) that launch on scratch tensors of ``spec``."""
    requested = max(1, cublaslt.AUTOTUNE_CANDIDATES)
    pool = cublaslt._candidates(index, spec, align, requested)
    with contextlib.suppress(RuntimeError):  # e.g. DGELU_BGRAD: not supported without a workspace
        pool += cublaslt._candidates(index, spec, align, requested, max_workspace=0)
    device = torch.device("cuda", index)
    a = torch.zeros(spec.m * spec.k, dtype=spec.dtype, device=device)
    b = torch.zeros(spec.k * spec.n, dtype=spec.dtype, device=device)
    d = torch.empty(spec.m * spec.n, dtype=spec.dtype, device=device)
    vector_len = spec.n if spec.epilogue == cublaslt.EPILOGUE_BGRADB else spec.m
    bias = torch.zeros(vector_len, dtype=spec.bias_dtype, device=device) if spec.bias_dtype else None
    aux = torch.zeros(spec.m * spec.n, dtype=spec.dtype, device=device) if spec.aux else None
    ptrs = (a.data_ptr(), b.data_ptr(), d.data_ptr(), bias.data_ptr() if bias is not None else None)
    ptrs += (aux.data_ptr() if aux is not None else None,)
    launchable = []
    for plan in pool:
        try:
            cublaslt._run(plan, index, *ptrs)
        except RuntimeError:
            continue
        launchable.append(plan)
    torch.cuda.synchronize(device)
    return launchable


def tune_in_steps(
    run_step, rounds: int = 3, device: int | torch.device | None = None, seed: int = 0
) -> list[dict]:
    """Re-pick the algorithm of every plan made so far by its mean kernel time in whole steps.

    ``run_step()`` runs one eager training step (no CUDA-graph replay: its launches are timed);
    it is called ``rounds`` x (the most candidates of any plan) times. The winners are installed
    in place of the plans. Returns one record per plan: its shape, the candidates' mean times
    (median us per launch, with the memset penalty), which one was the autotuner's pick and which won.
    """
    if rounds < 1:
        raise ValueError(f"tune_in_steps: rounds must be >= 1, got {rounds}")
    index = _device_index(device)
    keys = [key for key in cublaslt._plans if key[0] == index]
    if not keys:
        raise RuntimeError("tune_in_steps: no cuBLASLt plans on this device yet; run a step first")
    with torch.cuda.device(index):
        pools = {key: _candidate_pool(index, key[1], key[2]) or [cublaslt._plans[key]] for key in keys}
    previous = {key: cublaslt._plans[key] for key in keys}
    owner = {id(plan): (key, i) for key, pool in pools.items() for i, plan in enumerate(pool)}
    times = {key: [[] for _ in pool] for key, pool in pools.items()}
    feed_cycles = int(FEED_US * 1e-6 * _clock_hz(index))
    rng = random.Random(seed)
    offsets = {key: rng.randrange(len(pool)) for key, pool in pools.items()}
    events: list[tuple[tuple, int, torch.cuda.Event, torch.cuda.Event]] = []

    @contextlib.contextmanager
    def timer(plan):
        if id(plan) not in owner:  # a plan made during tuning (a new shape): not timed
            yield
            return
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        torch.cuda._sleep(feed_cycles)
        start.record()
        yield
        end.record()
        events.append((*owner[id(plan)], start, end))

    steps = rounds * max(len(pool) for pool in pools.values())
    cublaslt._launch_timer = timer
    try:
        for step in range(steps):
            with cublaslt._plans_lock:
                for key, pool in pools.items():
                    cublaslt._plans[key] = pool[(step + offsets[key]) % len(pool)]
            run_step()
            torch.cuda.synchronize(index)
            for key, i, start, end in events:
                times[key][i].append(1000.0 * start.elapsed_time(end))
            events.clear()
    except BaseException:
        with cublaslt._plans_lock:
            cublaslt._plans.update(previous)
        raise
    finally:
        cublaslt._launch_timer = None

    report = []
    with cublaslt._plans_lock:
        for key, pool in pools.items():
            costs = []
            for i, plan in enumerate(pool):
                if not times[key][i]:
                    costs.append(float("inf"))
                    continue
                needs_memset = plan.workspace_size > 0 and plan.workspace_limit > 0
                penalty = cublaslt.MEMSET_PENALTY_US if needs_memset else 0.0
                costs.append(statistics.median(times[key][i]) + penalty)
            best = min(range(len(pool)), key=costs.__getitem__)
            if costs[best] == float("inf"):  # the shape did not run in the tuning steps
                cublaslt._plans[key] = previous[key]
                continue
            cublaslt._plans[key] = pool[best]
            old = previous[key]
            autotuned = next(
                (i for i, plan in enumerate(pool) if _same_algo(plan, list(old.algo), old.workspace_limit)),
                None,
            )
            report.append(
                {
                    "shape": _describe(key[1], key[2]),
                    "launches_per_step": round(sum(map(len, times[key])) / steps, 2),
                    "us": [round(c, 2) for c in costs],
                    "autotuned": autotuned,
                    "chosen": best,
                    "saved_us_per_step": round(
                        (costs[autotuned] - costs[best]) * sum(map(len, times[key])) / steps, 1
                    )
                    if autotuned is not None
                    else None,
                }
            )
    return report
