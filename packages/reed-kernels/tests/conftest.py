"""Shared fixtures of the kernel tests: the Triton interpreter's report of a test file."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

torch.set_num_threads(2)


@pytest.fixture(scope="session")
def triton_interpreter_report():
    """``run(test_file)``: the dict that ``interpreter_report()`` of ``test_file`` returns when run in a
    subprocess with ``TRITON_INTERPRET=1`` (the interpreter is chosen when Triton is imported, so the
    Triton-kernel checks of the op tests cannot run in this process)."""
    pytest.importorskip("triton")

    def run(test_file: str | Path) -> dict:
        code = (
            "import importlib.util, json, sys\n"
            f"spec = importlib.util.spec_from_file_location('interpreter_checks', {str(test_file)!r})\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            "print('REPORT ' + json.dumps(module.interpreter_report()))\n"
        )
        env = {**os.environ, "TRITON_INTERPRET": "1", "OMP_NUM_THREADS": "2"}
        proc = subprocess.run(
            [sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=300
        )
        assert proc.returncode == 0, proc.stderr[-4000:]
        report = [line for line in proc.stdout.splitlines() if line.startswith("REPORT ")]
        assert report, proc.stdout[-2000:] + proc.stderr[-2000:]
        return json.loads(report[-1][len("REPORT ") :])

    return run
