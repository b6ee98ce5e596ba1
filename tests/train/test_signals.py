"""SIGTERM under torchrun: a signal that reaches one rank stops every rank after the same step, with one
checkpoint of that step (CPU, gloo, 2 processes)."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from moc.train import checkpoint


def _children(pid: int) -> dict[int, int]:
    """``{RANK: pid}`` of the worker processes started by the torchrun process ``pid``."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) != pid:
                continue
            env = dict(kv.split("=", 1) for kv in (d / "environ").read_text().split("\0") if "=" in kv)
        except (OSError, ValueError):
            continue
        if "RANK" in env:
            out[int(env["RANK"])] = int(d.name)
    return out


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="finds the worker processes through /proc")
def test_sigterm_to_one_rank_stops_all_ranks_after_the_same_step(tiny_cfg, tmp_path: Path) -> None:
    cfg = tiny_cfg("train.max_steps=100000", "train.save_every=0", "train.eval_every=0", out="run")
    cfg.save(tmp_path / "c.yaml")
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "moc", "pretrain",
           str(tmp_path / "c.yaml")]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    metrics = Path(cfg.train.out_dir) / "metrics.jsonl"
    deadline = time.time() + 120
    ranks: dict[int, int] = {}
    try:
        while not (metrics.is_file() and metrics.read_text().count('"kind": "train"') >= 2):
            assert proc.poll() is None and time.time() < deadline, proc.communicate()
            time.sleep(0.1)
        ranks = _children(proc.pid)
        assert sorted(ranks) == [0, 1]
        os.kill(ranks[1], signal.SIGTERM)  # rank 1 only: rank 0 learns it through the all-reduce
        _, err = proc.communicate(timeout=90)
    finally:
        if proc.poll() is None:  # failed: kill every worker (a rank stuck in a collective ignores SIGTERM)
            for pid in [*ranks.values(), proc.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
            proc.wait()
    stops = [line for line in err.splitlines() if line.startswith("moc pretrain: stopped by")]
    assert len(stops) == 1, err[-3000:]  # printed once, by rank 0
    step = int(stops[0].split("after step ")[1].split(";")[0])
    saved = Path(cfg.train.out_dir) / "checkpoints" / checkpoint.step_dir_name(step)
    checkpoint.verify_checkpoint(saved)
    rows = [json.loads(x) for x in metrics.read_text().splitlines()]
    assert max(r["step"] for r in rows if r["kind"] == "train") == step
    assert json.loads((saved / checkpoint.METRICS).read_text())["step"] == step


def test_config_error_under_torchrun_is_printed_once(tmp_path: Path) -> None:
    """Only rank 0 prints the one line; torchrun's failure summary names it as the root cause (its own
    launcher traceback above the summary is torchrun's and cannot be turned off from the workers)."""
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "moc", "pretrain",
           "tiny-moc", "--set", "train.seq_len=1000"]  # fmt: skip
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=120, cwd=tmp_path)
    assert done.returncode != 0
    ours = [line for line in done.stderr.splitlines() if line.startswith("moc pretrain: ")]
    assert len(ours) == 1 and "train.seq_len=1000 is longer than model.max_seq_len" in ours[0], done.stderr
    assert "traceback : moc pretrain: train.seq_len=1000" in done.stderr
