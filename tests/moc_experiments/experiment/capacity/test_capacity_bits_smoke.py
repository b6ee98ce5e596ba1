"""`moc-lab run capacity-bits-smoke`: the compositional world end to end (packed training, bits, the
saturation runs, routing spread, full and gentle IFT, the report and its plots)."""

from __future__ import annotations

import contextlib
import io
import json
import math
from pathlib import Path

import pytest

from moc_experiments.cli import main
from moc_experiments.experiment.capacity import load_capacity


@pytest.fixture(scope="module")
def bits_smoke(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    out = tmp_path_factory.mktemp("bits") / "run"
    with contextlib.redirect_stdout(io.StringIO()):
        assert main(["run", "capacity-bits-smoke", "--out", str(out), "--quiet"]) == 0
    return out, json.loads((out / "results.json").read_text())


def test_bits_smoke_records(bits_smoke: tuple[Path, dict]) -> None:
    _, results = bits_smoke
    exp = load_capacity("capacity-bits-smoke")
    world = results["world"]
    assert world["kind"] == "compositional" and world["bits"] == 60 * 3 * 3.0
    steps = math.ceil(exp.train.exposures * 60 / exp.train.batch_size)
    for key, runs in results["runs"].items():
        is_moc = "memory" in results["models"][key]
        assert [r["seed"] for r in runs] == exp.seed_list
        for r in runs:
            assert r["steps"] == steps and r["exposures"] == steps * exp.train.batch_size / 60
            # packed rows carry every biography whole: real tokens = documents x biography length
            assert r["tokens"] == steps * exp.train.batch_size * (2 * 3 + 5)
            b = r["bits"]
            assert 0 <= b["total"] <= world["bits"] and len(b["per_attribute"]) == 3
            assert b["total"] == pytest.approx(sum(b["per_attribute"]))
            assert ("bits_shuffled" in r) == ("bits_memory_off" in r) == ("routing_spread" in r) == is_moc
            variants = (
                {"frozen", "low_lr", "gentle_frozen", "gentle_low_lr"} if is_moc else {"full", "gentle_full"}
            )
            assert set(r["ift"]) == variants and all("bits" in v for v in r["ift"].values())
            if is_moc:
                assert r["ift"]["gentle_frozen"]["bank_max_change"] == 0.0
                assert r["ift"]["gentle_low_lr"]["bank_max_change"] > 0
    # the saturation check: the first seed again at half the run length, no IFT
    assert set(results["saturation"]) == set(results["runs"])
    for (r,) in results["saturation"].values():
        assert r["seed"] == exp.seed and r["steps"] == steps // 2 and "ift" not in r


def test_bits_smoke_report_and_resume(bits_smoke: tuple[Path, dict]) -> None:
    out, results = bits_smoke
    report = (out / "report.md").read_text()
    for name in ("bits_vs_flops.png", "bits_vs_params.png"):
        assert (out / name).is_file() and f"]({name})" in report
    assert "Saturation check" in report and "Rule for every comparison" in report
    buf = io.StringIO()
    with contextlib.redirect_stdout(buf):
        assert main(["run", "capacity-bits-smoke", "--out", str(out), "--plan"]) == 0
    n = len(results["runs"]) * 3  # 2 seeds + 1 saturation run per model
    assert f"{n} already run" in buf.getvalue() and "0 to train" in buf.getvalue()
