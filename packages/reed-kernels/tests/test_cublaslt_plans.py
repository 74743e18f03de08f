"""``cublaslt_plans``: plan files (checked on the CPU) and, on a GPU, a save/load round trip that
runs the same algorithms bit for bit, and files cuBLASLt cannot use refused by name."""

from __future__ import annotations

import json

import pytest
import torch
import torch.nn.functional as F

from reed_kernels import cublaslt, cublaslt_plans
from reed_kernels.cublaslt_linear import cublaslt_linear

GOOD_ENTRY = {
    "epilogue": 1,
    "trans_a": 1,
    "trans_b": 0,
    "m": 64,
    "n": 32,
    "k": 16,
    "dtype": "bfloat16",
    "bias_dtype": None,
    "aux": False,
    "align": 256,
    "algo": [1, 2, 3, 4, 5, 6, 7, 8],
    "workspace_size": 0,
    "workspace_limit": 0,
}


def write(tmp_path, document) -> str:
    path = tmp_path / "plans.json"
    path.write_text(document if isinstance(document, str) else json.dumps(document))
    return str(path)


def plan_file(**changes) -> dict:
    entry = {**GOOD_ENTRY, **changes.pop("entry", {})}
    document = {"format": cublaslt_plans.PLAN_FORMAT, "device": "GPU", "cublaslt_version": 130100}
    return {**document, "plans": [entry], **changes}


def test_a_good_plan_file_reads_back(tmp_path):
    document = cublaslt_plans.read_plan_file(write(tmp_path, plan_file()))
    assert document["plans"][0]["algo"] == GOOD_ENTRY["algo"]


@pytest.mark.parametrize(
    "document, message",
    [
        ("{not json", "not JSON"),
        (plan_file(format="other/1"), "format must be"),
        (plan_file(cublaslt_version="13.1"), "'cublaslt_version'"),
        (plan_file(entry={"m": -1}), r"plans\[0\]: field 'm'"),
        (plan_file(entry={"dtype": "int8"}), r"plans\[0\]: dtype"),
        (plan_file(entry={"aux": 1}), r"plans\[0\]: field 'aux'"),
        (plan_file(entry={"algo": [1, 2, 3]}), r"plans\[0\]: field 'algo'"),
    ],
)
def test_a_bad_plan_file_names_the_file_and_field(tmp_path, document, message):
    path = write(tmp_path, document)
    with pytest.raises(ValueError, match=message) as err:
        cublaslt_plans.read_plan_file(path)
    assert path in str(err.value)


def test_a_missing_plan_file_is_named(tmp_path):
    with pytest.raises(FileNotFoundError, match="nope.json"):
        cublaslt_plans.read_plan_file(tmp_path / "nope.json")


needs_cublaslt = pytest.mark.skipif(
    not (torch.cuda.is_available() and cublaslt.available()), reason="needs CUDA and cuBLASLt"
)


@pytest.fixture
def fresh_plans():
    """An empty plan cache for the test; the process's plans come back afterwards."""
    saved = dict(cublaslt._plans)
    cublaslt._plans.clear()
    yield cublaslt._plans
    cublaslt._plans.clear()
    cublaslt._plans.update(saved)


def mlp_inputs(seed=0):
    g = torch.Generator(device="cuda").manual_seed(seed)
    x = torch.randn(512, 256, generator=g, device="cuda", dtype=torch.bfloat16)
    w1 = torch.randn(1024, 256, generator=g, device="cuda", dtype=torch.bfloat16) / 16
    b1 = torch.randn(1024, generator=g, device="cuda", dtype=torch.bfloat16)
    w2 = torch.randn(256, 1024, generator=g, device="cuda", dtype=torch.bfloat16) / 32
    return x, w1, b1, w2


def mlp_step(x, w1, b1, w2):
    """Forward and backward of two cuBLASLt Linears: four GEMM shapes (plus the epilogues')."""
    leaves = [t.detach().clone().requires_grad_() for t in (x, w1, b1, w2)]
    out = cublaslt_linear(F.gelu(cublaslt_linear(leaves[0], leaves[1], leaves[2])), leaves[3], None)
    grads = torch.autograd.grad(out.float().square().sum(), leaves)
    return (out, *grads)


@pytest.mark.gpu
@needs_cublaslt
def test_saved_plans_load_into_a_fresh_cache_and_run_the_same_algorithms(tmp_path, fresh_plans):
    inputs = mlp_inputs()
    want = mlp_step(*inputs)
    algos = {key: list(plan.algo) for key, plan in fresh_plans.items()}
    assert len(algos) >= 4
    path = tmp_path / "plans.json"
    assert cublaslt_plans.save_plans(path) == len(algos)

    fresh_plans.clear()
    assert cublaslt_plans.load_plans(path) == len(algos)
    assert {key: list(plan.algo) for key, plan in fresh_plans.items()} == algos
    got = mlp_step(*inputs)
    assert len(fresh_plans) == len(algos)  # nothing autotuned again
    for g, w in zip(got, want, strict=True):
        torch.testing.assert_close(g, w, rtol=0, atol=0)  # the same algorithms: the same bits


@pytest.mark.gpu
@needs_cublaslt
def test_a_plan_file_from_another_gpu_or_version_is_refused(tmp_path, fresh_plans):
    mlp_step(*mlp_inputs())
    path = tmp_path / "plans.json"
    cublaslt_plans.save_plans(path)
    document = json.loads(path.read_text())
    document["cublaslt_version"] += 1
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match="save the plans again on this machine"):
        cublaslt_plans.load_plans(path)
    document["cublaslt_version"] -= 1
    document["plans"][0]["algo"] = [7] * 8  # no algorithm cuBLASLt has
    path.write_text(json.dumps(document))
    with pytest.raises(ValueError, match=r"plans\[0\].*does not accept"):
        cublaslt_plans.load_plans(path)
