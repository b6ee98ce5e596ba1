"""``moc-lab run NAME --plan``: the iso-FLOP depth comes from the batch-aware FLOP count."""

from __future__ import annotations

import pytest

from moc.accounting import isoflop
from moc_experiments.cli import main
from moc_experiments.experiment import load_experiment
from moc_experiments.experiment.protocol.plan import experiment_plan


def test_paper_plan_uses_the_pretraining_micro_batch() -> None:
    exp = load_experiment("paper", [])
    plan = experiment_plan(exp)
    moc_cfg = exp.moc_config.replace({"model.vocab_size": exp.data.vocab_size})
    micro = exp.pretrain.micro_batch_size or moc_cfg.train.micro_batch_size
    iso = isoflop(moc_cfg, 1024, micro)
    dense = plan["models"]["dense_isoflop"]
    assert dense["n_layers"] == iso["dense_layers"]
    assert dense["n_layers"] < isoflop(moc_cfg, 1024)["dense_layers"]  # batch 1 would over-count
    assert plan["models"]["moc"]["forward_flops_per_seq"] == iso["moc_forward"]
    assert plan["models"]["moc"]["micro_batch_size"] == micro


def test_plan_cli_prints_models_and_trains_nothing(capsys: pytest.CaptureFixture[str]) -> None:
    assert main(["run", "paper", "--plan", "--set", "pretrain.micro_batch_size=16"]) == 0
    out = capsys.readouterr().out
    assert "micro-batch 16" in out and "dense_isoflop" in out and "iso-FLOP mismatch" in out
    assert "28 layers" in out  # causal routing at batch 16 (the target depth)


def test_report_shows_measured_chapters_and_both_mfus() -> None:
    from moc_experiments.experiment.protocol.report import compute_table

    model = {"label": "MoC", "n_layers": 2, "params": {}, "forward_flops_per_seq": 1e9}
    run = {"train_flops": 3e12, "distinct_chapters": 123.5, "mfu": 0.40, "mfu_measured": 0.31}
    results = {"models": {"moc": model}, "runs": [{"seed": 0, "pretrain": {"moc": run}, "ift": {}}]}
    text = compute_table(results)
    assert "123.5 distinct chapters per micro-batch" in text
    assert "MFU 40.0% (expected count), 31.0% (measured)" in text
    run.pop("distinct_chapters")
    assert "distinct chapters per micro-batch measured" not in compute_table(results)
