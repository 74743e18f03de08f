import torch

from reed_core.profiling import format_ops, top_ops


def test_top_ops_ranks_the_op_that_takes_the_time_per_step():
    a, b = torch.randn(256, 256), torch.randn(256, 256)
    steps = 3
    with torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]) as prof:
        for _ in range(steps):
            for _ in range(4):
                a @ b  # 4 matmuls a step: the bulk of the time
            a.add(1.0)
    rows = top_ops(prof, steps, cuda=False, k=50)
    names = [r["name"] for r in rows]
    assert names[0] in ("aten::mm", "aten::matmul"), names
    mm = rows[names.index("aten::mm")]
    assert mm["calls_per_step"] == 4 and mm["self_cpu_ms_per_step"] > 0
    ms = [r["self_cpu_ms_per_step"] for r in rows]
    assert ms == sorted(ms, reverse=True)
    assert len(top_ops(prof, steps, cuda=False, k=2)) == 2
    assert top_ops(prof, steps, cuda=True) == []  # no device time on a CPU-only profile
    assert "aten::mm" in format_ops(rows, cuda=False).splitlines()[names.index("aten::mm")]
