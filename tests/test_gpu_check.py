"""bench/gpu_check.sh, the one prepared GPU run, end to end on the CPU (DRY_RUN=1: tiny shapes, Triton's
interpreter), so the script is tested before it ever meets a GPU: its parts, the counted targets, the
negative control, and the budget that ends it with a summary."""

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
    for part in ("install", "counted", "negative", "kernel", "tests", "determinism", "bench", "decode"):
        assert (tmp_path / f"{part}.log").is_file(), part
    assert "== summary" in proc.stdout
    counted = (tmp_path / "counted.log").read_text()
    assert "counted targets (temporaries <= 1 GB, bytes moved <= 1.5x the bound): all met" in counted
    assert "PREDICTION" in counted  # the roofline is labelled as a prediction
    # the negative control: zeroed outputs and gradients fail the kernel check, each by name
    assert "each fail the kernel check, as they must" in (tmp_path / "negative.log").read_text()
    results = (tmp_path / "RESULTS.md").read_text()
    assert "triton grouped forward" in results and "triton " in results  # the path each row used
    kernel = (tmp_path / "kernel.log").read_text()
    for mode in ("token", "causal", "sequence"):
        assert f"kernel check {mode}: max relative error" in kernel
    assert "two training runs bit-identical: True" in (tmp_path / "determinism.log").read_text()


def test_the_gpu_check_stops_at_its_budget_and_still_prints_the_summary(tmp_path: Path) -> None:
    """With no time left, every part is skipped, named as failed, and the summary is printed."""
    env = {**os.environ, "DRY_RUN": "1", "PYTHON": sys.executable, "BUDGET_S": "5"}
    proc = subprocess.run(
        ["bash", "bench/gpu_check.sh", str(tmp_path)], cwd=ROOT, env=env, capture_output=True, text=True,
        timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1, proc.stdout[-2000:]
    assert "SKIPPED (the 5 s budget is spent)" in proc.stdout
    assert "gpu_check: FAILED: install(no time)" in proc.stdout and "== summary" in proc.stdout
