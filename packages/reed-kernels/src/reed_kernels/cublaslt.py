"""A small ctypes binding to cuBLASLt's GELU epilogues, which PyTorch does not expose.

Two primitives on row-major torch tensors (bfloat16 or float16 in and out, float32 accumulation):

    linear_gelu_aux(x [M, K], weight [N, K], bias [N]) -> (out, pre)    (epilogue GELU_AUX_BIAS)
        pre = x W^T + b,  out = gelu_tanh(pre)                                       (both [M, N])

    matmul_dgelu_bgrad(dout [M, N2], weight [N2, N], pre [M, N]) -> (dpre, dbias)  (DGELU, + a gemv)
        dpre = (dout W) * gelu_tanh'(pre)  [M, N],   dbias = sum over rows of dpre  [N]

    matmul(a [M, K], b [K, N], bias=None, sum_a=False) -> (d, a_sum)    (DEFAULT, BIAS or BGRADB)

cuBLASLt is column-major: a row-major ``[R, C]`` tensor is a column-major ``C x R`` matrix with
leading dimension ``C``. So ``out^T (N x M) = op(W) x^T`` with ``A = W`` (stored ``K x N``,
transposed), ``B = x`` (``K x M``), and ``dpre^T (N x M) = W^T dout^T`` with ``A = W`` (stored
``N x N2``, not transposed), ``B = dout`` (``N2 x M``). cuBLASLt's bias (and bias gradient) is per
row of the column-major ``D``, i.e. per output feature ``N``; the aux matrix (``pre``) has ``D``'s
layout (ld = ``N``). cuBLASLt's GELU is the tanh approximation (``nn.GELU(approximate="tanh")``, as
SiT uses; the CUDA tests check it against both forms where they differ, the negative tail). Its
tanh is itself approximate there: up to 3.7% relative error (GELU) and 3.2% (derivative) for
``pre`` below -2.5, where the values are below 1.3e-2 (absolute errors about 2e-5); the erf form
is 3-66% off there (cuBLAS 13.1, H100).

Requirements (checked, ``ValueError`` otherwise): CUDA tensors of one device; ``x``/``dout``,
``weight`` and ``pre`` of one dtype (bfloat16 or float16); ``K``, ``N`` and ``N2`` (every leading
dimension) multiples of 8. Inputs are made contiguous, and copied where their data pointer is not
16-byte aligned (a view at an odd offset); outputs are allocated here. ``bias`` may have the
output's dtype or float32, where cuBLASLt's heuristic has an algorithm for that combination,
otherwise a ``RuntimeError`` says so: cuBLAS 13.1 has none for bfloat16 matrices
(``CUBLAS_STATUS_INVALID_VALUE``), so under autocast the bias is cast to bfloat16 first, as
``F.linear`` does.

Per device: one cuBLASLt handle and one workspace (a torch uint8 tensor, ``WORKSPACE_BYTES``),
made on first use. Per ``(device, epilogue, shapes, dtypes, pointer alignment)``: a cached plan
with the matmul descriptor, the matrix layouts and an algorithm for pointers of that alignment
(256 bytes for fresh torch allocations, down to 16 for offset views): of the heuristic's first
``AUTOTUNE_CANDIDATES``, the fastest on the plan's first call (a few ms once; the heuristic's
first alone for a plan first needed during CUDA-graph capture). Autotuning took SiT-XL/2's
GELU_AUX_BIAS GEMM from 296 to 284 us and the DGELU one from 290 to 260 us (H100); which
algorithm wins may differ between processes (rounding may then differ in the last bit).

The candidates come from two heuristic queries, with the workspace and with none, and each is
timed inside a CUDA graph, after a small kernel, as the training step runs them
(``train.speed.cuda_graph``). The reason: on an H100 (cuBLAS 13.1) most of the heuristic's Hopper
algorithms for SiT's GEMMs ask for 4 bytes of workspace, which cuBLASLt zeroes with a
``cudaMemsetAsync`` before every launch; inside a CUDA graph that memset node costs about 5 us of
idle GPU around it (about 290 of them in a SiT-XL/2 step, ~1.4 ms), while the workspace-free
variants of the same kernels (``ssched``: a static tile schedule) run as fast. Timing with CUDA
events on a stream, among the workspace query's algorithms alone (the earlier autotuner), does not
see that cost: the step measured 0.6 ms of gaps more with it (docs/results/image.md, eighth session).
Every call runs on ``torch.cuda.current_stream()``, so the primitives work inside CUDA-graph
capture (make the plan and workspace in a warm-up call first) and in ``torch.compile``'d code (as
opaque custom ops). The one workspace per device assumes one stream at a time uses these
primitives on a device.
Every cuBLASLt call's status is checked; a failure raises ``RuntimeError`` naming the call.
"""

from __future__ import annotations

import ctypes
import functools
import threading
from dataclasses import dataclass, field

import torch

__all__ = [
    "WORKSPACE_BYTES",
    "available",
    "library_version",
    "linear_gelu_aux",
    "matmul",
    "matmul_dgelu_bgrad",
]

WORKSPACE_BYTES = 32 * 1024 * 1024  # as Transformer Engine gives cuBLASLt on Hopper
# a new plan times the heuristic's first this many algorithms of each query (with the workspace
# and without one) on its first call and keeps the fastest; every plan made during CUDA-graph
# capture takes the heuristic's first, untimed. 32 measured no faster (ninth session)
AUTOTUNE_CANDIDATES = 8
# microseconds added to the time of a candidate that needs a workspace (so a memset node before
# each launch). In SiT-XL/2's step profile (H100) each memset node left 3.5-7 us of idle GPU
# around it, more than the autotuning graph (one GEMM shape, back to back) showed: that kept
# picking memset variants of the qkv and fc2 forward GEMMs over workspace-free ones within 1-3 us
MEMSET_PENALTY_US = 4.0

# ---- enum values, from cublasLt.h / cublas_api.h / library_types.h (CUDA 13)
_CUBLAS_STATUS_SUCCESS = 0
_CUBLAS_COMPUTE_32F = 68
_CUDA_R_32F, _CUDA_R_16F, _CUDA_R_16BF = 0, 2, 14
_CUBLAS_OP_N, _CUBLAS_OP_T = 0, 1
# cublasLtMatmulDescAttributes_t
_DESC_TRANSA = 3  # int32_t
_DESC_TRANSB = 4  # int32_t
_DESC_EPILOGUE = 7  # uint32_t
_DESC_BIAS_POINTER = 8  # void *
_DESC_EPILOGUE_AUX_POINTER = 11  # void *
_DESC_EPILOGUE_AUX_LD = 12  # int64_t
_DESC_EPILOGUE_AUX_DATA_TYPE = 22  # int32_t (cudaDataType)
_DESC_BIAS_DATA_TYPE = 26  # int32_t (cudaDataType)
# cublasLtMatmulPreferenceAttributes_t
_PREF_MAX_WORKSPACE_BYTES = 1  # uint64_t
_PREF_MIN_ALIGNMENT_BYTES = (5, 6, 7, 8)  # A, B, C, D; uint32_t
# cublasLtEpilogue_t
EPILOGUE_DEFAULT = 1
EPILOGUE_BIAS = 4
EPILOGUE_GELU_AUX_BIAS = 32 | 128 | 4
EPILOGUE_DGELU = 64 | 128
EPILOGUE_BGRADA = 256
EPILOGUE_BGRADB = 512

_CUDA_DTYPES = {torch.float32: _CUDA_R_32F, torch.float16: _CUDA_R_16F, torch.bfloat16: _CUDA_R_16BF}
_ALIGN_BYTES = 16  # the least alignment accepted (a copy is made below it)
_MAX_ALIGN_BYTES = 256  # the preference's default: algorithms may assume 256-byte aligned matrices


class _HeuristicResult(ctypes.Structure):
    """``cublasLtMatmulHeuristicResult_t``."""

    _fields_ = [
        ("algo", ctypes.c_uint64 * 8),  # cublasLtMatmulAlgo_t
        ("workspaceSize", ctypes.c_size_t),
        ("state", ctypes.c_int),
        ("wavesCount", ctypes.c_float),
        ("reserved", ctypes.c_int * 4),
    ]


_P = ctypes.c_void_p
_SIGNATURES = {
    "cublasLtCreate": [ctypes.POINTER(_P)],
    "cublasLtGetVersion": [],
    "cublasLtGetStatusName": [ctypes.c_int],
    "cublasLtMatmulDescCreate": [ctypes.POINTER(_P), ctypes.c_int, ctypes.c_int],
    "cublasLtMatmulDescSetAttribute": [_P, ctypes.c_int, _P, ctypes.c_size_t],
    "cublasLtMatrixLayoutCreate": [
        ctypes.POINTER(_P),
        ctypes.c_int,
        ctypes.c_uint64,
        ctypes.c_uint64,
        ctypes.c_int64,
    ],
    "cublasLtMatmulPreferenceCreate": [ctypes.POINTER(_P)],
    "cublasLtMatmulPreferenceSetAttribute": [_P, ctypes.c_int, _P, ctypes.c_size_t],
    "cublasLtMatmulPreferenceDestroy": [_P],
    "cublasLtMatmulAlgoGetHeuristic": [
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        ctypes.c_int,
        ctypes.POINTER(_HeuristicResult),
        ctypes.POINTER(ctypes.c_int),
    ],  # fmt: skip
    "cublasLtMatmulAlgoCheck": [
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        ctypes.POINTER(ctypes.c_uint64 * 8),
        ctypes.POINTER(_HeuristicResult),
    ],  # fmt: skip
    "cublasLtMatmul": [
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        _P,
        ctypes.POINTER(ctypes.c_uint64 * 8),
        _P,
        ctypes.c_size_t,
        _P,
    ],  # fmt: skip
}


def _soname_candidates() -> list[str]:
    major = (torch.version.cuda or "").split(".")[0]
    return ([f"libcublasLt.so.{major}"] if major else []) + ["libcublasLt.so"]


def _loaded_paths() -> list[str]:
    """Paths of cuBLASLt libraries already mapped into this process (torch loads one with cuBLAS)."""
    try:
        with open("/proc/self/maps") as fh:
            return sorted({line.split()[-1] for line in fh if "libcublasLt.so" in line and "/" in line})
    except OSError:
        return []


@functools.cache
def _lib() -> ctypes.CDLL:
    """cuBLASLt, found by soname: the copy torch has loaded once CUDA (and cuBLAS) is initialised."""
    if not torch.cuda.is_available():
        raise RuntimeError("cuBLASLt: no CUDA device")
    torch.cuda.current_blas_handle()  # initialises cuBLAS, which loads cuBLASLt
    errors = []
    for name in _soname_candidates() + _loaded_paths():
        try:
            lib = ctypes.CDLL(name)
            break
        except OSError as err:
            errors.append(str(err))
    else:
        raise RuntimeError("cuBLASLt: cannot load libcublasLt: " + "; ".join(errors))
    for fn_name, argtypes in _SIGNATURES.items():
        fn = getattr(lib, fn_name)
        fn.argtypes = argtypes
        fn.restype = ctypes.c_char_p if fn_name == "cublasLtGetStatusName" else ctypes.c_int
        if fn_name == "cublasLtGetVersion":
            fn.restype = ctypes.c_size_t
    return lib


def available() -> bool:
    """Whether the binding can run (a CUDA device and a loadable cuBLASLt)."""
    try:
        _lib()
    except (RuntimeError, AttributeError):
        return False
    return True


def library_version() -> int:
    """``cublasLtGetVersion()``, e.g. 130100 for 13.1.0."""
    return int(_lib().cublasLtGetVersion())


def _check(status: int, call: str) -> None:
    if status != _CUBLAS_STATUS_SUCCESS:
        try:
            name = _lib().cublasLtGetStatusName(status).decode()
        except Exception:  # pragma: no cover - the name is a courtesy
            name = "?"
        raise RuntimeError(f"cuBLASLt: {call} failed with status {status} ({name})")


def _set(setter, obj: ctypes.c_void_p, attr: int, value, call: str) -> None:
    _check(setter(obj, attr, ctypes.byref(value), ctypes.sizeof(value)), f"{call}({attr})")


def _set_desc(desc, attr: int, value) -> None:
    _set(_lib().cublasLtMatmulDescSetAttribute, desc, attr, value, "cublasLtMatmulDescSetAttribute")


@functools.cache
def _handle(device_index: int) -> ctypes.c_void_p:
    handle = ctypes.c_void_p()
    with torch.cuda.device(device_index):
        _check(_lib().cublasLtCreate(ctypes.byref(handle)), "cublasLtCreate")
    return handle


@functools.cache
def _workspace(device_index: int) -> torch.Tensor:
    return torch.empty(WORKSPACE_BYTES, dtype=torch.uint8, device=torch.device("cuda", device_index))


@dataclass(frozen=True)
class _Spec:
    """One matmul ``D (m x n, column-major, ld m) = op(A) op(B)`` with an epilogue.

    ``A`` is stored ``k x m`` (ld k) when ``trans_a`` is ``T``, else ``m x k`` (ld m); ``B`` is
    stored ``k x n`` (ld k) when ``trans_b`` is ``N``, else ``n x k`` (ld n). The aux matrix
    (``pre``), where ``aux``, has ``D``'s layout and dtype; the bias (gradient) vector, where
    ``bias_dtype`` is set, has ``m`` entries (``n`` for ``BGRADB``).
    """

    epilogue: int
    trans_a: int
    trans_b: int
    m: int
    n: int
    k: int
    dtype: torch.dtype
    bias_dtype: torch.dtype | None
    aux: bool


@dataclass
class _Plan:
    """Descriptors, layouts and the chosen algorithm of one matmul (kept for the process's life)."""

    spec: _Spec
    desc: ctypes.c_void_p
    layouts: tuple[ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p]  # A, B, D (C = D)
    algo: ctypes.Array
    workspace_size: int  # what the algorithm needs (the heuristic's answer)
    waves: float
    workspace_limit: int  # what every launch offers it (the heuristic query's limit)
    lock: threading.Lock = field(default_factory=threading.Lock)  # pointers are set per call


# the process's plan cache: (device, spec, alignment) -> plan (autotuned on first use, or installed
# from a plan file by cublaslt_plans.load_plans)
_plans: dict[tuple, _Plan] = {}
_plans_lock = threading.Lock()


def _layout(dtype: torch.dtype, rows: int, cols: int, ld: int) -> ctypes.c_void_p:
    layout = ctypes.c_void_p()
    _check(
        _lib().cublasLtMatrixLayoutCreate(ctypes.byref(layout), _CUDA_DTYPES[dtype], rows, cols, ld),
        "cublasLtMatrixLayoutCreate",
    )
    return layout


def _descriptors(spec: _Spec, align: int):
    """``(make_desc, (A, B, D) layouts)`` of ``spec``: ``make_desc()`` returns a new matmul
    descriptor (bias/aux pointers: stand-ins aligned to ``align`` bytes, set per launch)."""
    lib = _lib()
    a = _layout(spec.dtype, spec.k, spec.m, spec.k) if spec.trans_a == _CUBLAS_OP_T else None
    a = a or _layout(spec.dtype, spec.m, spec.k, spec.m)
    b = _layout(spec.dtype, spec.k, spec.n, spec.k) if spec.trans_b == _CUBLAS_OP_N else None
    b = b or _layout(spec.dtype, spec.n, spec.k, spec.n)
    d = _layout(spec.dtype, spec.m, spec.n, spec.m)

    def make_desc() -> ctypes.c_void_p:
        desc = ctypes.c_void_p()
        _check(
            lib.cublasLtMatmulDescCreate(ctypes.byref(desc), _CUBLAS_COMPUTE_32F, _CUDA_R_32F),
            "cublasLtMatmulDescCreate",
        )
        _set_desc(desc, _DESC_TRANSA, ctypes.c_int32(spec.trans_a))
        _set_desc(desc, _DESC_TRANSB, ctypes.c_int32(spec.trans_b))
        _set_desc(desc, _DESC_EPILOGUE, ctypes.c_uint32(spec.epilogue))
        # the heuristic reads the bias/aux pointers' alignment (it never dereferences them): a
        # stand-in aligned to exactly ``align`` bytes, so the algorithm suits every such tensor
        stand_in = ctypes.c_void_p(align * 0x1001)
        if spec.bias_dtype is not None:
            _set_desc(desc, _DESC_BIAS_DATA_TYPE, ctypes.c_int32(_CUDA_DTYPES[spec.bias_dtype]))
            _set_desc(desc, _DESC_BIAS_POINTER, stand_in)
        if spec.aux:
            _set_desc(desc, _DESC_EPILOGUE_AUX_DATA_TYPE, ctypes.c_int32(_CUDA_DTYPES[spec.dtype]))
            _set_desc(desc, _DESC_EPILOGUE_AUX_LD, ctypes.c_int64(spec.m))
            _set_desc(desc, _DESC_EPILOGUE_AUX_POINTER, stand_in)
        return desc

    return make_desc, (a, b, d)


def _candidates(
    device_index: int, spec: _Spec, align: int, requested: int = 1, max_workspace: int | None = None
) -> list[_Plan]:
    """Plans for the heuristic's first ``requested`` algorithms (best first) for pointers aligned
    to ``align`` bytes (a power of two, 16 to 256) that need at most ``max_workspace`` bytes of
    workspace (default ``WORKSPACE_BYTES``); each plan has its own descriptor. Empty where the
    heuristic has none."""
    lib = _lib()
    make_desc, (a, b, d) = _descriptors(spec, align)
    desc = make_desc()
    pref = ctypes.c_void_p()
    _check(lib.cublasLtMatmulPreferenceCreate(ctypes.byref(pref)), "cublasLtMatmulPreferenceCreate")
    set_pref = lib.cublasLtMatmulPreferenceSetAttribute
    call = "cublasLtMatmulPreferenceSetAttribute"
    max_workspace = WORKSPACE_BYTES if max_workspace is None else min(max_workspace, WORKSPACE_BYTES)
    _set(set_pref, pref, _PREF_MAX_WORKSPACE_BYTES, ctypes.c_uint64(max_workspace), call)
    for attr in _PREF_MIN_ALIGNMENT_BYTES:
        _set(set_pref, pref, attr, ctypes.c_uint32(align), call)
    results, count = (_HeuristicResult * requested)(), ctypes.c_int(0)
    _check(
        lib.cublasLtMatmulAlgoGetHeuristic(
            _handle(device_index), desc, a, b, d, d, pref, requested, results, ctypes.byref(count)
        ),
        "cublasLtMatmulAlgoGetHeuristic",
    )
    lib.cublasLtMatmulPreferenceDestroy(pref)
    found = [r for r in results[: count.value] if r.state == _CUBLAS_STATUS_SUCCESS]
    return [
        _Plan(
            spec,
            desc if i == 0 else make_desc(),
            (a, b, d),
            (ctypes.c_uint64 * 8)(*r.algo),
            int(r.workspaceSize),
            float(r.wavesCount),
            max_workspace,
        )
        for i, r in enumerate(found)
    ]


def _checked_plan(device_index: int, spec: _Spec, align: int, algo: list[int], workspace_limit: int) -> _Plan:
    """A plan running the given algorithm (the 8 words of a ``cublasLtMatmulAlgo_t``, as a plan
    stores them), if ``cublasLtMatmulAlgoCheck`` accepts it for ``spec`` within
    ``workspace_limit`` bytes of workspace; ``RuntimeError`` otherwise."""
    make_desc, layouts = _descriptors(spec, align)
    desc = make_desc()
    a, b, d = layouts
    words = (ctypes.c_uint64 * 8)(*algo)
    result = _HeuristicResult()
    _check(
        _lib().cublasLtMatmulAlgoCheck(
            _handle(device_index), desc, a, b, d, d, ctypes.byref(words), ctypes.byref(result)
        ),
        "cublasLtMatmulAlgoCheck",
    )
    # the answer is the algorithm's need when a workspace is offered; a plan of the workspace-free
    # query (limit 0) runs the same algorithm's variant without one
    if workspace_limit and result.workspaceSize > min(workspace_limit, WORKSPACE_BYTES):
        raise RuntimeError(
            f"cuBLASLt: the algorithm needs {result.workspaceSize} bytes of workspace, "
            f"more than {workspace_limit}"
        )
    workspace_size = int(result.workspaceSize) if workspace_limit else 0
    return _Plan(spec, desc, layouts, words, workspace_size, float(result.wavesCount), workspace_limit)


def _plan(device_index: int, spec: _Spec, align: int, launch) -> _Plan:
    """The cached plan of ``spec``; a new one is autotuned with ``launch(plan)`` (the call at hand)."""
    key = (device_index, spec, align)
    plan = _plans.get(key)
    if plan is None:
        with _plans_lock:
            plan = _plans.get(key)
            if plan is None:
                capturing = torch.cuda.is_current_stream_capturing()
                requested = 1 if capturing else AUTOTUNE_CANDIDATES
                candidates = _candidates(device_index, spec, align, requested)
                if not capturing:
                    # the same algorithms may come back: launched without a workspace they are
                    # other kernels (their static-schedule variants, no memset)
                    try:
                        candidates += _candidates(device_index, spec, align, requested, max_workspace=0)
                    except RuntimeError:  # an epilogue without workspace-free algorithms
                        pass
                if not candidates:
                    raise RuntimeError(
                        f"cuBLASLt: the heuristic found no algorithm for {spec} (align {align})"
                    )
                plan = candidates[0] if len(candidates) == 1 else _fastest_in_graph(candidates, launch)
                _plans[key] = plan
    return plan


def _fastest_in_graph(candidates: list[_Plan], launch, reps: int = 8, replays: int = 5) -> _Plan:
    """The candidate with the least time inside a CUDA graph of ``reps`` launches, each after a
    small kernel (a fill of a few floats), best of ``replays`` replays: a launch's own memset
    nodes and the idle time around them count, as in a captured training step (plus
    ``MEMSET_PENALTY_US`` for a candidate that needs a workspace). One that fails to launch or to
    capture is left out (the first is kept if all do)."""
    device = torch.cuda.current_device()
    filler = torch.empty(64, dtype=torch.float32, device=device)
    stream = torch.cuda.Stream(device)
    stream.wait_stream(torch.cuda.current_stream(device))
    timed = []
    with torch.cuda.stream(stream):
        for plan in candidates:
            try:
                launch(plan)  # outside capture first: cuBLASLt's lazy set-up must not be captured
                # (capture_begin, not torch.cuda.graph: that one synchronises and collects garbage)
                graph = torch.cuda.CUDAGraph()
                graph.capture_begin(capture_error_mode="thread_local")
                try:
                    for _ in range(reps):
                        filler.fill_(0.0)
                        launch(plan)
                finally:
                    graph.capture_end()
            except RuntimeError:
                continue
            graph.replay()  # warm-up
            events = []
            for _ in range(replays):
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                start.record(stream)
                graph.replay()
                end.record(stream)
                events.append((start, end))
            timed.append((plan, graph, events))
    torch.cuda.current_stream(device).wait_stream(stream)
    if not timed:
        return candidates[0]
    stream.synchronize()

    def cost_us(entry) -> float:
        plan, _, events = entry
        per_launch = 1000.0 * min(start.elapsed_time(end) for start, end in events) / reps
        needs_memset = plan.workspace_size > 0 and plan.workspace_limit > 0
        return per_launch + (MEMSET_PENALTY_US if needs_memset else 0.0)

    return min(timed, key=cost_us)[0]


def _run(plan: _Plan, device_index: int, a_ptr: int, b_ptr: int, d_ptr: int, bias_ptr=None, aux_ptr=None):
    """``cublasLtMatmul`` with alpha = 1, beta = 0 (C = D) on the current stream."""
    lib = _lib()
    alpha, beta = ctypes.c_float(1.0), ctypes.c_float(0.0)
    a, b, d = plan.layouts
    stream = torch.cuda.current_stream(device_index).cuda_stream
    workspace = _workspace(device_index)
    with plan.lock:
        if plan.spec.bias_dtype is not None:
            _set_desc(plan.desc, _DESC_BIAS_POINTER, ctypes.c_void_p(bias_ptr))
        if plan.spec.aux:
            _set_desc(plan.desc, _DESC_EPILOGUE_AUX_POINTER, ctypes.c_void_p(aux_ptr))
        _check(
            lib.cublasLtMatmul(
                _handle(device_index),
                plan.desc,
                ctypes.byref(alpha),
                a_ptr,
                a,
                b_ptr,
                b,
                ctypes.byref(beta),
                d_ptr,
                d,
                d_ptr,
                d,
                ctypes.byref(plan.algo),
                workspace.data_ptr(),
                # an algorithm may run another kernel with a workspace than without one (its
                # Hopper GEMMs: a dynamic tile schedule whose counter is memset before each launch)
                min(plan.workspace_limit, WORKSPACE_BYTES),
                stream,
            ),
            "cublasLtMatmul",
        )


# ---------------------------------------------------------------- checks


def _prepared(t: torch.Tensor) -> torch.Tensor:
    """Contiguous, with a 16-byte aligned data pointer (copied where a view starts off alignment)."""
    t = t.contiguous()
    if t.data_ptr() % _ALIGN_BYTES:
        t = t.clone()
    return t


def _alignment(*tensors: torch.Tensor) -> int:
    """The largest power of two (16 to 256) that divides every tensor's data pointer."""
    align = _MAX_ALIGN_BYTES
    for t in tensors:
        ptr = t.data_ptr()
        align = min(align, ptr & -ptr) if ptr else align
    return align


def _check_inputs(name: str, tensors: dict[str, torch.Tensor], dims: dict[str, int]) -> torch.dtype:
    """Device and dtype agreement, and leading dimensions multiples of 8 (cuBLASLt's 16 bytes)."""
    for dim_name, size in dims.items():
        if size % 8:
            raise ValueError(
                f"{name}: {dim_name} = {size} is not a multiple of 8; cuBLASLt needs leading dimensions "
                "of 16 bytes (8 bfloat16/float16 elements)"
            )
    devices = {t.device for t in tensors.values()}
    if len(devices) != 1 or next(iter(devices)).type != "cuda":
        found = {k: str(t.device) for k, t in tensors.items()}
        raise ValueError(f"{name}: needs CUDA tensors of one device, got {found}")
    dtypes = {t.dtype for t in tensors.values()}
    dtype = next(iter(dtypes))
    if len(dtypes) != 1 or dtype not in (torch.bfloat16, torch.float16):
        found = {k: str(t.dtype) for k, t in tensors.items()}
        raise ValueError(f"{name}: needs {'/'.join(tensors)} all bfloat16 or all float16, got {found}")
    return dtype


def linear_gelu_aux(
    x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(out, pre)`` with ``pre = x W^T + b`` and ``out = gelu_tanh(pre)``, one cuBLASLt matmul.

    ``x [M, K]``, ``weight [N, K]`` of one dtype (bfloat16/float16), ``bias [N]`` in that dtype or
    float32; ``out`` and ``pre`` are ``[M, N]`` in ``x``'s dtype (``pre`` is the epilogue's aux
    output, rounded from the float32 value the GELU was taken of).
    """
    if x.dim() != 2 or weight.dim() != 2 or bias.dim() != 1:
        raise ValueError(
            "linear_gelu_aux: expected x [M, K], weight [N, K], bias [N], got "
            f"{tuple(x.shape)}, {tuple(weight.shape)}, {tuple(bias.shape)}"
        )
    (M, K), N = x.shape, weight.shape[0]
    if weight.shape[1] != K or bias.shape[0] != N:
        raise ValueError(
            f"linear_gelu_aux: shapes do not agree: x {tuple(x.shape)}, weight {tuple(weight.shape)}, "
            f"bias {tuple(bias.shape)}"
        )
    dtype = _check_inputs("linear_gelu_aux", {"x": x, "weight": weight}, {"K": K, "N": N})
    if bias.device != x.device or bias.dtype not in (dtype, torch.float32):
        raise ValueError(f"linear_gelu_aux: bias must be {dtype} or float32 on {x.device}, got {bias.dtype}")
    out = x.new_empty((M, N))
    pre = x.new_empty((M, N))
    if M == 0:
        return out, pre
    if K == 0:  # a matmul without a reduction; cuBLASLt refuses k = 0
        pre.copy_(bias.expand(M, N))
        return torch.nn.functional.gelu(pre.float(), approximate="tanh").to(dtype), pre
    x, weight, bias = _prepared(x), _prepared(weight), _prepared(bias)
    index = x.device.index
    spec = _Spec(EPILOGUE_GELU_AUX_BIAS, _CUBLAS_OP_T, _CUBLAS_OP_N, N, M, K, dtype, bias.dtype, True)
    ptrs = (weight.data_ptr(), x.data_ptr(), out.data_ptr(), bias.data_ptr(), pre.data_ptr())
    with torch.cuda.device(index):
        plan = _plan(index, spec, _alignment(x, weight, bias, out, pre), lambda p: _run(p, index, *ptrs))
        _run(plan, index, *ptrs)
    return out, pre


def matmul_dgelu_bgrad(
    dout: torch.Tensor, weight: torch.Tensor, pre: torch.Tensor, dbias_dtype: torch.dtype | None = None
) -> tuple[torch.Tensor, torch.Tensor]:
    """``(dpre, dbias)``: ``dpre = (dout W) * gelu_tanh'(pre)``, ``dbias`` = its column sums.

    ``dout [M, N2]``, ``weight [N2, N]``, ``pre [M, N]`` of one dtype (bfloat16/float16). ``dpre``
    ``[M, N]`` has that dtype; ``dbias [N]`` has ``dbias_dtype`` (default: the same dtype).

    ``dpre`` comes from one cuBLASLt matmul with the DGELU epilogue; ``dbias`` sums the rounded
    ``dpre`` afterwards as ``dpre^T 1`` (a matrix-vector product, float32 accumulation). On an
    H100 with cuBLAS 13.1 the DGELU_BGRAD epilogue, which would sum ``dbias`` in the GEMM, is no
    fused kernel: a plain GEMM and then a separate epilogue kernel of 0.61 ms for SiT-XL/2's
    [16384, 4608] (the whole MLP forward + backward: 2.4 ms of kernels), while the DGELU epilogue
    runs inside the GEMM (+50 us over the plain GEMM); the sum then takes 60 us as a gemv (a
    split-K cuBLAS kernel) and 70 us as ``dpre.sum(0)``.
    """
    if dout.dim() != 2 or weight.dim() != 2 or pre.dim() != 2:
        raise ValueError(
            "matmul_dgelu_bgrad: expected dout [M, N2], weight [N2, N], pre [M, N], got "
            f"{tuple(dout.shape)}, {tuple(weight.shape)}, {tuple(pre.shape)}"
        )
    (M, N2), N = dout.shape, weight.shape[1]
    if weight.shape[0] != N2 or tuple(pre.shape) != (M, N):
        raise ValueError(
            f"matmul_dgelu_bgrad: shapes do not agree: dout {tuple(dout.shape)}, weight "
            f"{tuple(weight.shape)}, pre {tuple(pre.shape)}"
        )
    dtype = _check_inputs(
        "matmul_dgelu_bgrad", {"dout": dout, "weight": weight, "pre": pre}, {"N": N, "N2": N2}
    )
    dbias_dtype = dbias_dtype or dtype
    if dbias_dtype not in (dtype, torch.float32):
        raise ValueError(f"matmul_dgelu_bgrad: dbias_dtype must be {dtype} or float32, got {dbias_dtype}")
    dpre = pre.new_empty((M, N))
    if M == 0 or N2 == 0:
        return dpre.zero_(), pre.new_zeros((N,), dtype=dbias_dtype)
    dout, weight, pre = _prepared(dout), _prepared(weight), _prepared(pre)
    index = dout.device.index
    spec = _Spec(EPILOGUE_DGELU, _CUBLAS_OP_N, _CUBLAS_OP_N, N, M, N2, dtype, None, True)
    ptrs = (weight.data_ptr(), dout.data_ptr(), dpre.data_ptr(), None, pre.data_ptr())
    with torch.cuda.device(index):
        plan = _plan(index, spec, _alignment(dout, weight, pre, dpre), lambda p: _run(p, index, *ptrs))
        _run(plan, index, *ptrs)
        dbias = torch.mv(dpre.t(), dpre.new_ones((M,))).to(dbias_dtype)
    return dpre, dbias


def _operand(t: torch.Tensor) -> torch.Tensor:
    """``t`` if it is row-major or the transpose of a row-major tensor, else a contiguous copy;
    copied (same layout) where its data pointer is not 16-byte aligned."""
    if not (t.is_contiguous() or t.t().is_contiguous()):
        t = t.contiguous()
    if t.data_ptr() % _ALIGN_BYTES:
        t = t.clone()
    return t


def matmul(
    a: torch.Tensor, b: torch.Tensor, bias: torch.Tensor | None = None, sum_a: bool = False
) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``(d, a_sum)`` with ``d = a @ b (+ bias)`` and, with ``sum_a``, ``a_sum = a.sum(1)``.

    ``a [M, K]``, ``b [K, N]`` of one dtype (bfloat16/float16), each row-major or the transpose
    of a row-major tensor (``w.t()``, ``dy.t()``: no copy); leading dimensions multiples of 8.
    ``bias [N]`` is added to every row (epilogue BIAS). ``sum_a`` has the epilogue sum ``a`` over
    ``K`` (BGRADB): for a weight-gradient GEMM ``dW = dy^T x`` (``a = dy.t()``) that is the bias
    gradient ``dy.sum(0)``, formed while ``dy`` is read for the GEMM. Only that layout of ``a`` is
    accepted: with a row-major ``a`` the GPU test of this call failed (cuBLAS 13.1, H100; not
    investigated). One autotuned cuBLASLt matmul, as the other primitives; ``d`` is ``[M, N]`` in
    the inputs' dtype.

    Column-major: ``d^T (N x M) = op(b^T) op(a^T)``: cuBLASLt's ``A`` is ``b`` (not transposed
    when ``b`` is row-major), its ``B`` is ``a`` (likewise).
    """
    if a.dim() != 2 or b.dim() != 2 or a.shape[1] != b.shape[0]:
        raise ValueError(f"matmul: expected a [M, K], b [K, N], got {tuple(a.shape)}, {tuple(b.shape)}")
    if bias is not None and sum_a:
        raise ValueError("matmul: one epilogue at a time (bias or sum_a)")
    a_transposed = not a.is_contiguous() and a.t().is_contiguous()
    if sum_a and not a_transposed:
        # BGRADB with a row-major a failed its GPU test (cuBLAS 13.1, H100); dy.t() passes
        raise ValueError("matmul: sum_a needs a to be the transpose of a row-major tensor (dy.t())")
    (M, K), N = a.shape, b.shape[1]
    b_transposed = not b.is_contiguous() and b.t().is_contiguous()
    leading = {"N (ld of b and d)" if not b_transposed else "N (ld of d)": N}
    if a_transposed:
        leading["M (ld of a)"] = M
    if not a_transposed or b_transposed:
        leading["K (ld of a or b)"] = K
    dtype = _check_inputs("matmul", {"a": a, "b": b}, leading)
    if bias is not None and (bias.shape != (N,) or bias.dtype != dtype or bias.device != a.device):
        raise ValueError(
            f"matmul: bias must be [{N}] {dtype} on {a.device}, got {tuple(bias.shape)} {bias.dtype}"
        )
    d = a.new_empty((M, N))
    a_sum = a.new_empty((M,)) if sum_a else None
    if M == 0 or N == 0 or K == 0:
        d.zero_()
        if bias is not None:
            d += bias
        return d, a_sum.zero_() if sum_a else None
    a, b = _operand(a), _operand(b)
    bias = _prepared(bias) if bias is not None else None
    trans_a = _CUBLAS_OP_N if b.is_contiguous() else _CUBLAS_OP_T
    trans_b = _CUBLAS_OP_N if a.is_contiguous() else _CUBLAS_OP_T
    epilogue = EPILOGUE_BIAS if bias is not None else EPILOGUE_BGRADB if sum_a else EPILOGUE_DEFAULT
    vector = bias if bias is not None else a_sum
    spec = _Spec(epilogue, trans_a, trans_b, N, M, K, dtype, dtype if vector is not None else None, False)
    ptrs = (b.data_ptr(), a.data_ptr(), d.data_ptr(), vector.data_ptr() if vector is not None else None)
    index = a.device.index
    with torch.cuda.device(index):
        aligned = (a, b, d) + ((vector,) if vector is not None else ())
        plan = _plan(index, spec, _alignment(*aligned), lambda p: _run(p, index, *ptrs))
        _run(plan, index, *ptrs)
    return d, a_sum
