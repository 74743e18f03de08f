"""cuBLASLt plans kept in a file: the same GEMM algorithms in every process that loads it.

Every cuBLASLt GEMM of ``cublaslt.py`` has a plan per (shape, epilogue, dtype, pointer
alignment), autotuned on its first call by timing the heuristic's candidates. Which candidate
wins differs from process to process where candidates are within a few percent of each other
(SiT-XL/2 on an H100), and another algorithm may round the last bit differently. A plan file
pins them: ``save_plans(path)`` writes every plan of a device as JSON (atomically), with the GPU's
name and cuBLASLt's version; ``load_plans(path)`` installs them before the first call, so that a
process that loads it first (a benchmark repeat, a resumed run: reed-image's ``model.cublaslt_plans``)
runs those algorithms without autotuning. Each algorithm is checked by
``cublasLtMatmulAlgoCheck`` for its shape; a file from another GPU or cuBLASLt version, or with
an algorithm cuBLASLt does not accept, ends in a ``ValueError`` naming the file and the entry.
Shapes not in the file autotune as usual.
"""

from __future__ import annotations

import contextlib
import json
import os
import tempfile
from pathlib import Path

import torch

from reed_kernels import cublaslt

__all__ = ["PLAN_FORMAT", "load_plans", "read_plan_file", "save_plans"]

PLAN_FORMAT = "reed-cublaslt-plans/1"
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
    if isinstance(device, int):
        return device
    index = torch.device(device).index
    return torch.cuda.current_device() if index is None else index


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
            f"cuBLASLt plan file {path}: saved on {document['device']!r} with cuBLASLt "
            f"{document['cublaslt_version']}, this is {name!r} with cuBLASLt {version}; save the plans "
            "again on this machine (save_plans; e.g. tools/bench_image.py --save-cublaslt-plans)"
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
                f"accept its algorithm ({err}); save the plans again"
            ) from None
        installed[(index, spec, align)] = plan
    with cublaslt._plans_lock:
        cublaslt._plans.update(installed)
    return len(installed)
