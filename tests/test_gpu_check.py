"""bench/gpu_check.sh, the one prepared GPU run, end to end on the CPU (DRY_RUN=1: tiny shapes, Triton's
interpreter), so the script is tested before it ever meets a GPU."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.skipif(importlib.util.find_spec("triton") is None, reason="triton is not installed")
def test_the_gpu_check_runs_end_to_end_in_dry_run(tmp_path: Path) -> None:
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable}
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", str(tmp_path)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "all parts passed" in proc.stdout
    for part in ("install", "tests", "kernel", "decode", "determinism"):
        assert (tmp_path / f"{part}.log").is_file(), part
    results = (tmp_path / "RESULTS.md").read_text()
    assert "triton grouped forward" in results and "triton " in results  # the path each row used
    kernel = (tmp_path / "kernel.log").read_text()
    for mode in ("token", "causal", "sequence"):
        assert f"kernel check {mode}: max relative error" in kernel
    assert "two training runs bit-identical: True" in (tmp_path / "determinism.log").read_text()
